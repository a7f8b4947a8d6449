//! Locks on a PostgreSQL server behind the core's backend seam (`processlock::Backend`): one
//! server and namespace, the holds this process has there, and their loss notices.
//!
//! A hold is either a session of this process's own, or the hold of the `processlock run` this
//! process runs under, adopted once on the server's word (see the core's `inherit/server.rs`):
//! `run` keeps that lock in its own session, and stops its command when it is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use processlock::{
    claim_server_lock, Backend, Hold, HoldId, Holding, Holds, Listed, Listing, LockName, LockState,
    LossHook, LossNotice, Record, Released, ServerHold, Wait,
};

use crate::admin;
use crate::admin::inspect;
use crate::error::{Error, Lost, Result};
use crate::lock::{acquire, acquire_wait_noting, OnWaitNotice, PgHeld, WaitNotice};
use crate::options::PgOptions;

/// What this process holds on servers, by lock id.
static HOLDS: Holds<PgHold> = Holds::new();

/// How this process holds a lock on a server.
pub enum PgHold {
    /// In a session of its own.
    Session(PgHeld),
    /// Handed down by the `processlock run` this process runs under. This process cannot watch
    /// that session; it sees only that `run` has ended.
    Adopted(ServerHold),
}

impl Hold for PgHold {
    fn record(&self) -> &Record {
        match self {
            PgHold::Session(pg) => pg.record(),
            PgHold::Adopted(hold) => &hold.holder,
        }
    }

    fn fencing_token(&self) -> Option<&str> {
        Some(match self {
            PgHold::Session(pg) => pg.fencing_token(),
            PgHold::Adopted(hold) => &hold.fencing_token,
        })
    }

    /// For an adopted hold, only what can be seen from here: `run` has ended.
    fn is_lost(&self) -> bool {
        match self {
            PgHold::Session(pg) => pg.is_lost(),
            PgHold::Adopted(hold) => !hold.holder_is_running(),
        }
    }
}

/// The locks of one namespace on one server.
pub struct PgBackend {
    opts: PgOptions,
}

impl PgBackend {
    pub fn new(opts: PgOptions) -> Self {
        Self { opts }
    }

    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// Lets go of the holds `holder` was the last holder of (all of them for `None`: the
    /// process ends), each with its id; for the caller to let go of, on threads of its own if it
    /// must bound the time the server takes to answer.
    pub fn ended(holder: Option<processlock::Holder>) -> Vec<(String, PgHold)> {
        match holder {
            Some(h) => HOLDS.release_holder(h),
            None => HOLDS.drain(),
        }
    }

    /// `acquire`, but a holder on any host is asked through the server to stop, and the lock is
    /// taken once it has let go, within `grace` (`replace::acquire_replacing`); never a lock
    /// file, never a kill.
    pub fn acquire_replacing(
        &self,
        name: &LockName,
        place: &str,
        holder: processlock::Holder,
        wait: &Wait,
        grace: std::time::Duration,
        lines: &mut dyn FnMut(String, bool),
    ) -> Result<processlock::Taken> {
        if let Some(joined) = HOLDS.join(place, holder) {
            return Ok(joined);
        }
        if let Some(hold) = claim_server_lock(place, |hold| self.holds_now(name, hold)) {
            return Ok(HOLDS.insert(place, holder, PgHold::Adopted(hold), Vec::new()));
        }
        let held = self.take_replacing(name, wait, grace, lines)?;
        Ok(HOLDS.insert(place, holder, self.session(name, held), Vec::new()))
    }

    /// A session of this process's own that holds `name`, taken at once or with `wait`; never
    /// a hold handed down by a `processlock run` above this process. What `take` does when
    /// there is no such hold to adopt, and what `processlock run` holds for its command.
    pub fn take_session(
        &self,
        name: &LockName,
        process_name: Option<&str>,
        wait: Option<&Wait>,
    ) -> Result<PgHeld> {
        let mut opts = self.opts.clone();
        opts.process_name = process_name.map(str::to_string);
        match wait {
            None => acquire(&opts, name),
            Some(w) => acquire_wait_noting(&opts, name, w.deadline, w.cancel, noting(name, w)),
        }
    }

    /// `take_session`, but a holder on any host is asked through the server to stop, and the
    /// lock is taken once it has let go, within `grace` (`replace::acquire_replacing`). What
    /// `acquire_replacing` does when there is no hold to join or adopt, and what
    /// `processlock run --replace` holds for its command.
    pub fn take_replacing(
        &self,
        name: &LockName,
        wait: &Wait,
        grace: std::time::Duration,
        lines: &mut dyn FnMut(String, bool),
    ) -> Result<PgHeld> {
        crate::replace::acquire_replacing(
            &self.opts,
            name,
            grace,
            wait.cancel,
            noting(name, wait),
            lines,
        )
    }

    /// A session hold of `name`, which stops this process when another asks to replace it.
    fn session(&self, name: &LockName, held: PgHeld) -> PgHold {
        let asked = name.clone();
        held.on_replace_request(Box::new(move |request| {
            crate::request::stop_this_process(&asked, request)
        }));
        PgHold::Session(held)
    }

    /// Whether the server says, now, that this lock is held with exactly `hold`'s record and
    /// fencing token: a hold is adopted on the server's word, never on a variable's.
    fn holds_now(&self, name: &LockName, hold: &ServerHold) -> bool {
        matches!(
            inspect(&self.opts, name),
            Ok(Some(h)) if h.record == hold.holder
                && h.fencing_token.as_deref() == Some(hold.fencing_token.as_str())
        )
    }

    /// A holder's record, or for a holder whose record cannot be read here (not written yet,
    /// or kept where this role does not read: another role's schema, another `table`) what is
    /// known all the same: PID 0 (unknown), and the lock's type and side. The server's lock
    /// manager, which every role may read, says it is held.
    fn known(name: &LockName, record: Record) -> Record {
        if record.pid != 0 {
            return record;
        }
        Record {
            trade_side: name.trade_side().map(str::to_string),
            process_type: Some(name.process_type().to_string()),
            ..record
        }
    }
}

/// Lets go of a hold whose last holder let go.
pub fn release_hold(hold: PgHold) -> Released<Error> {
    match hold {
        PgHold::Session(pg) => {
            let pid = pg.record().pid;
            match pg.release() {
                Ok(true) => Released::Released { pid, removed: true },
                Ok(false) => Released::Lost { pid },
                Err(error) => Released::Failed { pid, error },
            }
        }
        // Nothing to do on the server: the lock stays with `run` until its command ends.
        PgHold::Adopted(hold) => Released::KeptByOthers {
            run_pid: Some(hold.holder.pid),
            running: hold.holder_is_running(),
        },
    }
}

/// What a wait has to say (a server gone away, and back), kept in the wait's lines.
fn noting(name: &LockName, wait: &Wait) -> OnWaitNotice {
    let (said, lock) = (Arc::clone(&wait.said), name.clone());
    Arc::new(move |n: &WaitNotice| locked(&said).push(n.line(&lock)))
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend for PgBackend {
    type Hold = PgHold;
    type Error = Error;
    const KIND: &'static str = "postgres";
    const AFTER_FAILED_RELEASE: &'static str =
        "the session has ended, which frees the lock on the server";

    fn holds(&self) -> &'static Holds<PgHold> {
        &HOLDS
    }

    fn place(&self, name: &LockName) -> Result<String> {
        self.opts.lock_id(name)
    }

    fn take(
        &self,
        name: &LockName,
        process_name: Option<&str>,
        wait: Option<&Wait>,
    ) -> Result<(PgHold, Vec<String>)> {
        let id = self.place(name)?;
        if let Some(hold) = claim_server_lock(&id, |hold| self.holds_now(name, hold)) {
            return Ok((PgHold::Adopted(hold), Vec::new()));
        }
        let held = self.take_session(name, process_name, wait)?;
        Ok((self.session(name, held), Vec::new()))
    }

    fn let_go(&self, _name: &LockName, hold: PgHold) -> Released<Error> {
        release_hold(hold)
    }

    fn inspect(&self, name: &LockName) -> Result<Option<Holding>> {
        if let Some(ours) = HOLDS.current(&self.place(name)?) {
            return Ok(Some(Holding {
                record: ours.record,
                fencing_token: ours.fencing_token,
            }));
        }
        Ok(inspect(&self.opts, name)?.map(|h| Holding {
            record: Self::known(name, h.record),
            fencing_token: h.fencing_token,
        }))
    }

    /// Our own hold is released; anyone else's session is ended by the server
    /// (`pg_terminate_backend`), which frees the lock at once. The holder hears of it at once
    /// (its connection closes). A hold adopted from `processlock run` is `run`'s session: it is
    /// ended, and `run` stops its command.
    fn force_remove(&self, name: &LockName) -> Result<bool> {
        if let Some(PgHold::Session(pg)) = HOLDS.take(&self.place(name)?) {
            if let Ok(true) = pg.release() {
                return Ok(true);
            }
        }
        Ok(admin::terminate_holder(&self.opts, name)?.is_some())
    }

    fn list(&self) -> Result<Listing> {
        let locks = admin::list(&self.opts)?;
        let server = self.opts.check()?;
        let locks = locks
            .into_iter()
            .filter_map(|l| {
                let (state, holding) = match (l.holder, l.stale) {
                    (Some(h), _) => (
                        LockState::Held,
                        Holding {
                            record: h.record,
                            fencing_token: h.fencing_token,
                        },
                    ),
                    (None, Some(record)) => (
                        LockState::Stale,
                        Holding {
                            record,
                            fencing_token: None,
                        },
                    ),
                    (None, None) => return None,
                };
                Some(Listed {
                    place: self.opts.lock_id_on(&server, &l.lock_name),
                    name: l.name,
                    state,
                    holding: Some(holding),
                    problem: None,
                })
            })
            .collect();
        Ok(Listing {
            scope: format!("{server}#{}", self.opts.namespace),
            locks,
        })
    }

    fn watch_loss(&self, place: &str, id: HoldId, hook: LossHook<Error>) {
        // A hold already lost calls its hook at once, on this thread, which still has the table
        // locked: such a notice is kept and delivered once the table is free.
        let hook = Arc::new(Mutex::new(Some(hook)));
        let registering = Arc::new(AtomicBool::new(true));
        let early = Arc::new(Mutex::new(None));
        let deliver = {
            let (hook, registering, early) = (hook.clone(), registering.clone(), early.clone());
            move |notice: LossNotice<Error>| {
                if registering.load(Ordering::SeqCst) {
                    *locked(&early) = Some(notice);
                } else if let Some(hook) = locked(&hook).take() {
                    hook(notice);
                }
            }
        };
        let at = place.to_string();
        HOLDS.with(place, id, move |hold| match hold {
            PgHold::Session(pg) => {
                let pid = pg.record().pid;
                pg.on_lost(Box::new(move |lost: &Lost| {
                    deliver(LossNotice {
                        place: at,
                        id,
                        pid,
                        reason: lost.reason.clone(),
                        error: Error::Lost(lost.clone()),
                    })
                }));
            }
            PgHold::Adopted(hold) => {
                let (pid, token) = (hold.holder.pid, hold.fencing_token.clone());
                let lock = name_of(&at);
                hold.watch_holder(Box::new(move || {
                    let reason = format!("processlock run (PID {pid}) that held it is gone");
                    let lost = Lost {
                        lock,
                        fencing_token: token,
                        reason: reason.clone(),
                    };
                    deliver(LossNotice {
                        place: at,
                        id,
                        pid,
                        reason,
                        error: Error::Lost(lost),
                    })
                }));
            }
        });
        registering.store(false, Ordering::SeqCst);
        let notice = locked(&early).take();
        if let Some(notice) = notice {
            let hook = locked(&hook).take();
            if let Some(hook) = hook {
                hook(notice);
            }
        }
    }

    fn watched_from_the_start(&self) -> bool {
        true
    }

    fn conflict_lines(&self, error: &Error, name: &LockName) -> Vec<String> {
        match error {
            Error::Conflict(c) => c.lines(name),
            _ => Vec::new(),
        }
    }
}

/// How people name the lock a lock id names (`backend (SHORT)`), from the id's last part.
fn name_of(id: &str) -> String {
    id.rsplit('/')
        .next()
        .and_then(LockName::from_file_name)
        .map_or_else(|| id.to_string(), |n| n.display())
}
