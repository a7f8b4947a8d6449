//! The PostgreSQL backend: the same lock, held through a server session (`processlock-pg`).
//! Nothing here runs, and no thread or connection exists, until a call names a URL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use processlock::{claim_server_lock, report, Cancel, LockName, ServerHold};
use processlock_pg::{Error as PgError, Lost, PgHeld, PgOptions, WaitNotice};

use crate::losses::{self, LOST_EXIT_STATUS};
use crate::{
    AcquireOutcome, Failure, HeldOutcome, InfoOutcome, ListOutcome, ListedLock, Lock, LockOptions,
    LockRecord, LockState, ReleaseOutcome, RemoveOutcome, ServerOptions, Waiting, WAITS,
};

/// The PostgreSQL options of a call on `server`, unless its URL is empty.
pub(crate) fn options(server: &ServerOptions, process_name: Option<String>) -> Option<PgOptions> {
    if server.url.is_empty() {
        return None;
    }
    let mut pg = PgOptions::new(&server.url);
    if let Some(ms) = server.lease_ms {
        pg.lease = ms_duration(ms);
    }
    if let Some(ms) = server.connect_timeout_ms {
        pg.connect_timeout = ms_duration(ms);
    }
    if let Some(ns) = &server.namespace {
        pg.namespace = ns.clone();
    }
    if let Some(table) = &server.table {
        pg.table = table.clone();
    }
    pg.process_name = process_name;
    Some(pg)
}

fn ms_duration(ms: f64) -> Duration {
    // NaN (refused by the JS layer) must not panic either.
    Duration::try_from_secs_f64(ms.clamp(0.0, 1e12) / 1000.0).unwrap_or_default()
}

/// One lock on a server. `id` stands where a lock file's path stands for the file backend:
/// it names the lock in results, errors and this process's table of holds.
pub(crate) struct PgLock {
    opts: PgOptions,
    name: LockName,
    id: String,
}

impl PgLock {
    pub fn new(opts: PgOptions, name: LockName) -> Result<Self, Box<Failure>> {
        let id = opts
            .lock_id(&name)
            .map_err(|e| Box::new(Failure::from(e)))?;
        Ok(Self { opts, name, id })
    }

    /// A failure of a call on this lock: a conflict also brings the log lines that name the
    /// holder.
    fn failure(&self, e: PgError) -> Failure {
        let lines = match &e {
            PgError::Conflict(c) => c.lines(&self.name),
            _ => Vec::new(),
        };
        Failure { lines, ..e.into() }
    }
}

/// What this process holds on servers, by lock id. A `PgHeld` is never dropped while this map
/// is locked: dropping one joins its thread, whose loss hook may be waiting for the map.
static HELD: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

struct Entry {
    held: Hold,
    /// The JS module instances (worker threads) that hold it; shared with the loss hook.
    holders: Arc<Mutex<Vec<u32>>>,
}

/// How this process holds a lock on a server.
enum Hold {
    /// In a session of its own.
    Session(PgHeld),
    /// Handed down by the `processlock run` this process runs under, which keeps it in its own
    /// session (see the core's `inherit/server.rs`). This process cannot watch that session:
    /// `run` stops its command when the lock is lost.
    Adopted(ServerHold),
}

impl Hold {
    /// For an adopted hold, only what can be seen from here: `run` has ended (killed with
    /// SIGKILL, a process it started lives on).
    fn is_lost(&self) -> bool {
        match self {
            Hold::Session(pg) => pg.is_lost(),
            Hold::Adopted(hold) => !hold.holder_is_running(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Hold::Session(pg) => pg.record().pid,
            Hold::Adopted(hold) => hold.holder.pid,
        }
    }

    fn info(&self) -> LockRecord {
        match self {
            Hold::Session(pg) => record(pg),
            Hold::Adopted(hold) => LockRecord {
                fencing_token: Some(hold.fencing_token.clone()),
                ..LockRecord::postgres(hold.holder.clone())
            },
        }
    }
}

fn held() -> MutexGuard<'static, Option<HashMap<String, Entry>>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_vec<T>(v: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    v.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(held: &PgHeld) -> LockRecord {
    LockRecord {
        fencing_token: Some(held.fencing_token().to_string()),
        ..LockRecord::postgres(held.record().clone())
    }
}

impl Lock for PgLock {
    fn place(&self) -> String {
        self.id.clone()
    }

    fn acquire(&self, options: &LockOptions, wait: Option<Waiting>) -> AcquireOutcome {
        let holder = options.holder;
        if let Some(out) = self
            .join_existing(holder, options)
            .or_else(|| self.adopt(holder, options))
        {
            if let Some(w) = &wait {
                WAITS.end(w.key);
            }
            return out;
        }
        // What the wait said while the server was away. The log sink is JavaScript's, which
        // this thread cannot call: the lines come with the outcome, first.
        let said = Arc::new(Mutex::new(Vec::new()));
        let result = match &wait {
            None => processlock_pg::acquire(&self.opts, &self.name),
            Some(w) => {
                let cancel: Cancel = WAITS.begin(w.key, &PathBuf::from(&self.id));
                let (name, said) = (self.name.clone(), Arc::clone(&said));
                let notices = Arc::new(move |n: &WaitNotice| lock_vec(&said).push(n.line(&name)));
                let r = processlock_pg::acquire_wait_noting(
                    &self.opts, &self.name, w.deadline, &cancel, notices,
                );
                WAITS.end(w.key);
                r
            }
        };
        let said = if options.quiet {
            Vec::new()
        } else {
            std::mem::take(&mut *lock_vec(&said))
        };
        self.kept(result, said, options)
    }

    fn release(&self, options: &LockOptions) -> ReleaseOutcome {
        let holder = options.holder;
        let taken = {
            let mut map = held();
            let Some(entry) = map.as_mut().and_then(|m| m.get_mut(&self.id)) else {
                return ReleaseOutcome {
                    lock_file: Some(self.id.clone()),
                    ..Default::default()
                };
            };
            let mut holders = lock_vec(&entry.holders);
            let was = holders.len();
            holders.retain(|h| *h != holder);
            if holders.len() == was {
                return ReleaseOutcome {
                    lock_file: Some(self.id.clone()),
                    ..Default::default()
                };
            }
            if !holders.is_empty() {
                return ReleaseOutcome {
                    lock_file: Some(self.id.clone()),
                    ..Default::default()
                };
            }
            drop(holders);
            map.as_mut().and_then(|m| m.remove(&self.id))
        };
        let Some(entry) = taken else {
            return ReleaseOutcome::default();
        };
        let pg = match entry.held {
            Hold::Session(pg) => pg,
            // Nothing to do on the server: the lock stays with `run` until its command ends.
            Hold::Adopted(hold) => {
                return ReleaseOutcome {
                    removed: false,
                    lock_file: Some(self.id.clone()),
                    // Once `run` is gone there is nothing it keeps.
                    lines: if options.quiet || !hold.holder_is_running() {
                        Vec::new()
                    } else {
                        vec![report::released_to_run(&self.name, hold.holder.pid)]
                    },
                    error: None,
                };
            }
        };
        let pid = pg.record().pid;
        match pg.release() {
            Ok(removed) => ReleaseOutcome {
                removed,
                lock_file: Some(self.id.clone()),
                // A lost lock was not released: its loss was reported instead.
                lines: if removed && !options.quiet {
                    vec![report::released(&self.name, pid)]
                } else {
                    Vec::new()
                },
                error: None,
            },
            Err(e) => {
                let reason =
                    format!("{e}; the session has ended, which frees the lock on the server");
                ended_failure(self.id.clone(), Some(&self.name), pid, e.into(), &reason)
            }
        }
    }

    fn info(&self, _options: &LockOptions) -> InfoOutcome {
        if let Some(entry) = held().as_ref().and_then(|m| m.get(&self.id)) {
            if !entry.held.is_lost() {
                return InfoOutcome {
                    info: Some(entry.held.info()),
                    lock_file: Some(self.id.clone()),
                    error: None,
                };
            }
        }
        match processlock_pg::inspect(&self.opts, &self.name) {
            Ok(holder) => InfoOutcome {
                info: holder.map(|h| LockRecord {
                    fencing_token: h.fencing_token,
                    ..LockRecord::postgres(self.known(h.record))
                }),
                lock_file: Some(self.id.clone()),
                error: None,
            },
            Err(e) => InfoOutcome {
                error: Some(self.failure(e)),
                ..Default::default()
            },
        }
    }

    /// Our own hold is released; anyone else's session is ended by the server
    /// (`pg_terminate_backend`), which frees the lock at once. The holder hears of it at once
    /// (its connection closes). A hold adopted from `processlock run` is `run`'s session: it is ended, and
    /// `run` stops its command.
    fn force_remove(&self, _options: &LockOptions) -> RemoveOutcome {
        let ours = held().as_mut().and_then(|m| m.remove(&self.id));
        if let Some(Entry {
            held: Hold::Session(pg),
            ..
        }) = ours
        {
            if let Ok(true) = pg.release() {
                return RemoveOutcome {
                    removed: true,
                    lock_file: Some(self.id.clone()),
                    error: None,
                };
            }
        }
        match processlock_pg::terminate_holder(&self.opts, &self.name) {
            Ok(holder) => RemoveOutcome {
                removed: holder.is_some(),
                lock_file: Some(self.id.clone()),
                error: None,
            },
            Err(e) => RemoveOutcome {
                error: Some(self.failure(e)),
                ..Default::default()
            },
        }
    }

    fn is_held(&self, options: &LockOptions) -> HeldOutcome {
        let holder = options.holder;
        let held = held()
            .as_ref()
            .and_then(|m| m.get(&self.id))
            .is_some_and(|e| !e.held.is_lost() && lock_vec(&e.holders).contains(&holder));
        HeldOutcome {
            held,
            lock_file: Some(self.id.clone()),
            error: None,
        }
    }

    fn watch_lost(&self, _options: &LockOptions) {
        // Every held lock on a server is watched from the moment it is taken.
    }
}

impl PgLock {
    /// Takes the lock as `acquireLock` with `replace` does (see `processlock_pg::acquire_replacing`):
    /// a holder on any host is asked through the server to stop, and the lock is taken once it
    /// has let go, within `wait`; never a lock file.
    pub(crate) fn acquire_replacing(
        &self,
        options: &LockOptions,
        wait: Duration,
    ) -> AcquireOutcome {
        let holder = options.holder;
        if let Some(out) = self
            .join_existing(holder, options)
            .or_else(|| self.adopt(holder, options))
        {
            return out;
        }
        let key = WAITS.internal_key();
        let cancel: Cancel = WAITS.begin(key, &PathBuf::from(&self.id));
        let said = Arc::new(Mutex::new(Vec::new()));
        let (name, heard) = (self.name.clone(), Arc::clone(&said));
        let notices = Arc::new(move |n: &WaitNotice| lock_vec(&heard).push(n.line(&name)));
        let mut lines = Vec::new();
        let quiet = options.quiet;
        let result = processlock_pg::acquire_replacing(
            &self.opts,
            &self.name,
            wait,
            &cancel,
            notices,
            &mut |line, always| {
                if always || !quiet {
                    lines.push(line)
                }
            },
        );
        WAITS.end(key);
        if !quiet {
            lines.append(&mut lock_vec(&said));
        }
        self.kept(result, lines, options)
    }

    /// Keeps a lock just taken (or says why not), after the lines `said` while taking it.
    fn kept(
        &self,
        result: Result<PgHeld, PgError>,
        said: Vec<String>,
        options: &LockOptions,
    ) -> AcquireOutcome {
        let pg = match result {
            Ok(pg) => pg,
            Err(e) => {
                let failure = self.failure(e);
                return AcquireOutcome {
                    lock_file: Some(self.id.clone()),
                    error: Some(Failure {
                        lines: [said, failure.lines.clone()].concat(),
                        ..failure
                    }),
                    ..Default::default()
                };
            }
        };
        let holders = Arc::new(Mutex::new(vec![options.holder]));
        self.watch_loss(&pg, Arc::clone(&holders), options);
        let mut out = self.taken(Hold::Session(pg), holders, options);
        out.lines.splice(0..0, said);
        out
    }

    /// A holder's record, or for a holder whose record cannot be read here (not written yet,
    /// or kept where this role does not read: another role's schema, another `table`) what is
    /// known all the same: PID 0 (unknown), and the lock's type and side. The server's lock
    /// manager, which every role may read, says it is held.
    fn known(&self, record: processlock::Record) -> processlock::Record {
        if record.pid != 0 {
            return record;
        }
        processlock::Record {
            trade_side: self.name.trade_side().map(str::to_string),
            process_type: Some(self.name.process_type().to_string()),
            ..record
        }
    }

    /// A hold this process already has, shared with one more holder; `None` when there is none
    /// (a lost one is dropped here).
    fn join_existing(&self, holder: u32, options: &LockOptions) -> Option<AcquireOutcome> {
        let stale = {
            let mut map = held();
            let entry = map.as_mut()?.get(&self.id)?;
            if entry.held.is_lost() {
                map.as_mut().and_then(|m| m.remove(&self.id))
            } else {
                let mut holders = lock_vec(&entry.holders);
                let already = holders.contains(&holder);
                if !already {
                    holders.push(holder);
                }
                return Some(AcquireOutcome {
                    info: Some(entry.held.info()),
                    lock_file: Some(self.id.clone()),
                    already_held: already,
                    held: true,
                    lines: if already || options.quiet {
                        Vec::new()
                    } else {
                        vec![report::acquired(&self.name, entry.held.pid())]
                    },
                    error: None,
                });
            }
        };
        drop(stale);
        None
    }

    /// Keeps a new hold of this lock for `holders`; the outcome that says it was taken.
    fn taken(
        &self,
        hold: Hold,
        holders: Arc<Mutex<Vec<u32>>>,
        options: &LockOptions,
    ) -> AcquireOutcome {
        let out = AcquireOutcome {
            info: Some(hold.info()),
            lock_file: Some(self.id.clone()),
            already_held: false,
            held: true,
            lines: if options.quiet {
                Vec::new()
            } else {
                vec![report::acquired(&self.name, hold.pid())]
            },
            error: None,
        };
        held().get_or_insert_with(HashMap::new).insert(
            self.id.clone(),
            Entry {
                held: hold,
                holders,
            },
        );
        out
    }

    /// The hold of the `processlock run` this process runs under, if it handed this very lock
    /// down and this process is the one of its command that claims it; `None` otherwise.
    fn adopt(&self, holder: u32, options: &LockOptions) -> Option<AcquireOutcome> {
        let hold = claim_server_lock(&self.id, |hold| self.holds_now(hold))?;
        let holders = Arc::new(Mutex::new(vec![holder]));
        self.watch_run(&hold, Arc::clone(&holders), options);
        Some(self.taken(Hold::Adopted(hold), holders, options))
    }

    /// An adopted hold is lost the moment its `processlock run` is gone (killed with SIGKILL:
    /// its session went with it): then the same happens as for a lost lock of our own, if this
    /// adoption (`holders`) still stands.
    fn watch_run(&self, hold: &ServerHold, holders: Arc<Mutex<Vec<u32>>>, options: &LockOptions) {
        let (name, id) = (self.name.clone(), self.id.clone());
        let (pid, token) = (hold.holder.pid, hold.fencing_token.clone());
        let on_lost = options.server.as_ref().and_then(|s| s.on_lost.as_deref());
        let exit = on_lost != Some("notify");
        hold.watch_holder(Box::new(move || {
            let current = held()
                .as_ref()
                .and_then(|m| m.get(&id))
                .is_some_and(|e| Arc::ptr_eq(&e.holders, &holders));
            if !current {
                return;
            }
            let lost = Lost {
                lock: name.display(),
                fencing_token: token,
                reason: format!("processlock run (PID {pid}) that held it is gone"),
            };
            let line = report::lost(&name, pid, &lost.reason);
            if exit {
                losses::exit_now(&line, LOST_EXIT_STATUS);
            }
            let failure = Failure::from(PgError::Lost(lost.clone()));
            for holder in lock_vec(&holders).iter() {
                losses::notify(*holder, &id, Some(&lost.fencing_token), &failure, &line);
            }
        }));
    }

    /// Whether the server says, now, that this lock is held with exactly `hold`'s record and
    /// fencing token: a hold is adopted on the server's word, never on a variable's.
    fn holds_now(&self, hold: &ServerHold) -> bool {
        matches!(
            processlock_pg::inspect(&self.opts, &self.name),
            Ok(Some(h)) if h.record == hold.holder
                && h.fencing_token.as_deref() == Some(hold.fencing_token.as_str())
        )
    }

    /// What happens on loss, decided once at acquisition: `exit` is done here, natively,
    /// whatever JavaScript is doing; otherwise the holders' module instances are told.
    fn watch_loss(&self, pg: &PgHeld, holders: Arc<Mutex<Vec<u32>>>, options: &LockOptions) {
        let name = self.name.clone();
        let id = self.id.clone();
        let pid = pg.record().pid;
        let on_lost = options.server.as_ref().and_then(|s| s.on_lost.as_deref());
        let exit = on_lost != Some("notify");
        let asked = self.name.clone();
        pg.on_replace_request(Box::new(move |request| {
            processlock_pg::stop_this_process(&asked, request)
        }));
        pg.on_lost(Box::new(move |lost: &Lost| {
            let line = report::lost(&name, pid, &lost.reason);
            if exit {
                losses::exit_now(&line, LOST_EXIT_STATUS);
            }
            let failure = Failure::from(PgError::Lost(lost.clone()));
            for holder in lock_vec(&holders).iter() {
                losses::notify(*holder, &id, Some(&lost.fencing_token), &failure, &line);
            }
        }));
    }
}

/// Every lock of the namespace on the server, held or with a record left behind.
pub(crate) fn list(opts: &PgOptions) -> ListOutcome {
    match processlock_pg::list(opts) {
        Ok(locks) => {
            let map = held();
            let server = opts.check().unwrap_or_default();
            ListOutcome {
                dir: Some(format!("{server}#{}", opts.namespace)),
                locks: locks
                    .into_iter()
                    .filter_map(|l| {
                        let id = opts.lock_id_on(&server, &l.lock_name);
                        let is_own = map
                            .as_ref()
                            .and_then(|m| m.get(&id))
                            .is_some_and(|e| !e.held.is_lost());
                        let (state, record) = match (l.holder, l.stale) {
                            (Some(h), _) => (
                                LockState::Held,
                                LockRecord {
                                    fencing_token: h.fencing_token,
                                    ..LockRecord::postgres(h.record)
                                },
                            ),
                            (None, Some(r)) => (LockState::Stale, LockRecord::postgres(r)),
                            (None, None) => return None,
                        };
                        Some(ListedLock {
                            file: id,
                            process_type: l.name.as_ref().map(|n| n.process_type().to_string()),
                            trade_side: l
                                .name
                                .as_ref()
                                .and_then(|n| n.trade_side().map(str::to_string)),
                            state,
                            record: Some(record),
                            problem: None,
                            is_own,
                        })
                    })
                    .collect(),
                error: None,
            }
        }
        Err(e) => ListOutcome {
            error: Some(e.into()),
            ..Default::default()
        },
    }
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Self {
        let (holder, waited_ms) = match &e {
            PgError::Conflict(c) => (
                Some(LockRecord {
                    fencing_token: c.fencing_token.clone(),
                    ..LockRecord::postgres(c.holder.clone())
                }),
                Some(c.waited_ms as f64),
            ),
            _ => (None, None),
        };
        // `errno` and `osCode` as for a lock file's system call, when one failed (a refused
        // connection); the server's own error code goes in `sqlstate`. `syscall` says what we
        // were doing (`connect`, `lock`, `record`...).
        let os_error = e.os_error();
        Self {
            code: e.code().into(),
            message: e.to_string(),
            errno: os_error.map(|(n, _)| -n),
            os_code: os_error.map(|(_, name)| name.to_string()),
            syscall: e.op().map(str::to_string),
            path: None,
            holder,
            waited_ms,
            lines: Vec::new(),
            sqlstate: e.sqlstate().map(str::to_string),
        }
    }
}

/// Lets go of the holds that end with `holder` (all of them for `None`: the process ends), for
/// `ending.rs`, which reports the outcomes. Each release waits for the server for at most
/// `patience`, all at once: one that has not answered by then is reported as not confirmed, and
/// the session ends with the process, which frees the lock on the server all the same.
pub(crate) fn release_ended(holder: Option<u32>, patience: Duration) -> Vec<ReleaseOutcome> {
    let ended: Vec<(String, Entry)> = {
        let mut map = held();
        let Some(map) = map.as_mut() else {
            return Vec::new();
        };
        let ids: Vec<String> = map
            .iter()
            .filter(|(_, entry)| {
                let mut holders = lock_vec(&entry.holders);
                holders.retain(|h| Some(*h) != holder);
                holder.is_none() || holders.is_empty()
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| map.remove(&id).map(|entry| (id, entry)))
            .collect()
    };
    let deadline = std::time::Instant::now() + patience;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut outcomes = Vec::new();
    let mut waiting = Vec::new();
    for (id, entry) in ended {
        let name = entry_name(entry.held.info());
        let pid = entry.held.pid();
        let pg = match entry.held {
            Hold::Session(pg) => pg,
            Hold::Adopted(hold) => {
                let lines = match &name {
                    Some(name) if hold.holder_is_running() => {
                        vec![report::released_to_run(name, hold.holder.pid)]
                    }
                    _ => Vec::new(),
                };
                outcomes.push(ReleaseOutcome {
                    lock_file: Some(id),
                    lines,
                    ..Default::default()
                });
                continue;
            }
        };
        let tx = tx.clone();
        let place = id.clone();
        let release = move || {
            let _ = tx.send((place, pg.release()));
        };
        // Without a thread, the hold is dropped here, which releases it within the connect
        // timeout, and it is reported as not confirmed.
        let _ = std::thread::Builder::new()
            .name("processlock-end".into())
            .spawn(release);
        waiting.push((id, name, pid));
    }
    drop(tx);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((id, result)) = rx.recv_timeout(left) else {
            break;
        };
        let Some(i) = waiting.iter().position(|(w, _, _)| *w == id) else {
            continue;
        };
        let (id, name, pid) = waiting.swap_remove(i);
        outcomes.push(match result {
            Ok(removed) => ReleaseOutcome {
                removed,
                lock_file: Some(id),
                // A lost lock was not released: its loss was reported instead.
                lines: match &name {
                    Some(name) if removed => vec![report::released(name, pid)],
                    _ => Vec::new(),
                },
                error: None,
            },
            Err(e) => {
                let reason =
                    format!("{e}; the session has ended, which frees the lock on the server");
                ended_failure(id, name.as_ref(), pid, Failure::from(e), &reason)
            }
        });
    }
    for (id, name, pid) in waiting {
        let ms = patience.as_millis();
        let failure = Failure {
            code: crate::ErrorCode::Io,
            message: format!("LOCK_IO: release of {id}: no answer within {ms} ms"),
            errno: None,
            os_code: None,
            syscall: Some("release".to_string()),
            path: None,
            holder: None,
            waited_ms: None,
            lines: Vec::new(),
            sqlstate: None,
        };
        let reason = format!(
            "the server did not confirm the release within {ms} ms; the session ends with the process, which frees the lock on the server"
        );
        outcomes.push(ended_failure(id, name.as_ref(), pid, failure, &reason));
    }
    outcomes
}

/// The name of a held lock, from its record (taken by this process: always a valid one).
fn entry_name(info: LockRecord) -> Option<LockName> {
    LockName::new(info.process_type.as_deref()?, info.trade_side.as_deref()).ok()
}

fn ended_failure(
    id: String,
    name: Option<&LockName>,
    pid: u32,
    failure: Failure,
    reason: &str,
) -> ReleaseOutcome {
    ReleaseOutcome {
        lock_file: Some(id),
        error: Some(Failure {
            lines: name
                .map(|n| report::release_failed(n, pid, reason))
                .into_iter()
                .collect(),
            ..failure
        }),
        ..Default::default()
    }
}
