//! Taking, holding and letting go of a lock. Each held lock has a native thread of its own that
//! runs a single-threaded Tokio runtime with the lock's dedicated session: it takes the lock,
//! then heartbeats until the lock is released or lost. Nothing the caller's thread does (a
//! blocked event loop, a long computation) can delay a heartbeat or the loss deadline.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use processlock::{Cancel, LockName, LockTarget, Record};
use tokio::sync::oneshot;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_postgres::error::SqlState;

use crate::clock::Stamp;
use crate::error::{Error, Lost, Result};
use crate::loss::{LossWatch, OnLost};
use crate::options::{PgOptions, Settings};
use crate::probe::Probe;
use crate::request::{self, OnReplaceRequest, ReplaceRequest, Requests};
use crate::session::Session;
use crate::table::{self, Access, Holder, Ready};

/// The longest single server-side wait. A waiting statement holds a snapshot, which holds back
/// vacuum on the whole server; restarting it now and then lets the horizon move.
const WAIT_SLICE: Duration = Duration::from_secs(30);
/// How often a wait looks at its `Cancel` (which has no way to wake an async task).
const CANCEL_POLL: Duration = Duration::from_millis(20);
/// Attempts at naming the holder of a lock we could not take: between our attempt and our look
/// it may have let go (try again) or not have written its record yet (look again).
const CONFLICT_ATTEMPTS: u32 = 5;

/// Takes the lock or fails at once with `Error::Conflict` naming the holder.
pub fn acquire(opts: &PgOptions, name: &LockName) -> Result<PgHeld> {
    start(opts, name, None)
}

/// Takes the lock, waiting in the server for its holder to let go until `deadline` (`None`: for
/// as long as it takes). The wait ends the moment the holder's session ends. At the deadline:
/// `Error::Conflict` with `waited_ms`. When cancelled: `Error::Aborted`, within about 20 ms
/// plus a round trip to the server.
///
/// Once the server has been reached, the wait rides out the server going away (a restart, a
/// failover, a broken connection): it connects again, backing off up to a second between
/// attempts, and goes on waiting. If the server is still away at the deadline, the last error
/// is returned (`Error::Io`). An error of the first connection (a wrong URL or password, a
/// server that is not there) is returned at once, as by `acquire`.
pub fn acquire_wait(
    opts: &PgOptions,
    name: &LockName,
    deadline: Option<Instant>,
    cancel: &Cancel,
) -> Result<PgHeld> {
    acquire_wait_noting(opts, name, deadline, cancel, Arc::new(|_: &WaitNotice| {}))
}

/// `acquire_wait`, telling `notices` (on the lock's own thread) when the server goes away
/// during the wait and when it is back.
pub fn acquire_wait_noting(
    opts: &PgOptions,
    name: &LockName,
    deadline: Option<Instant>,
    cancel: &Cancel,
    notices: OnWaitNotice,
) -> Result<PgHeld> {
    let wait = Wait {
        deadline,
        cancel: cancel.clone(),
        started: Instant::now(),
        notices,
        request: None,
    };
    start(opts, name, Some(wait))
}

/// `acquire_wait_noting`, waiting in a session named `request`: a request to the holder to let
/// go (see `request.rs`).
pub(crate) fn acquire_requesting(
    opts: &PgOptions,
    name: &LockName,
    deadline: Option<Instant>,
    cancel: &Cancel,
    notices: OnWaitNotice,
    request: String,
) -> Result<PgHeld> {
    let wait = Wait {
        deadline,
        cancel: cancel.clone(),
        started: Instant::now(),
        notices,
        request: Some(request),
    };
    start(opts, name, Some(wait))
}

/// What a wait says while it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitNotice {
    /// The server went away (said once per outage); the wait goes on, connecting again.
    ServerAway { reason: String },
    /// The server answers again, after `away`; the wait goes on there.
    ServerBack { away: Duration },
}

impl WaitNotice {
    /// The `[PROCESS_LOCK_WAIT]` line that says it, for the lock `name`.
    pub fn line(&self, name: &LockName) -> String {
        match self {
            WaitNotice::ServerAway { reason } => format!(
                "[PROCESS_LOCK_WAIT] {}: the server went away ({reason}); still waiting, connecting again",
                name.display()
            ),
            WaitNotice::ServerBack { away } => format!(
                "[PROCESS_LOCK_WAIT] {}: the server is back after {} ms; still waiting",
                name.display(),
                away.as_millis()
            ),
        }
    }
}

/// Called with each `WaitNotice`, on the lock's own thread; it should be quick.
pub type OnWaitNotice = Arc<dyn Fn(&WaitNotice) + Send + Sync>;

/// A lock held through a server session of its own.
pub struct PgHeld {
    lock: String,
    key: i64,
    record: Record,
    fencing_token: String,
    backend_pid: i32,
    watch: Arc<LossWatch>,
    /// Told when a replacer asks this holder to let go.
    requests: Arc<Requests>,
    /// The session's socket as this thread can see it (see `probe.rs`).
    probe: Arc<Probe>,
    release: Option<oneshot::Sender<()>>,
    released: mpsc::Receiver<Result<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHeld")
            .field("lock", &self.lock)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl PgHeld {
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// A decimal number that is larger for every new holder of this lock: pass it along with
    /// every write the lock protects, and have the store refuse tokens older than the newest
    /// it has seen.
    pub fn fencing_token(&self) -> &str {
        &self.fencing_token
    }

    /// The advisory lock key (see `lock_key`).
    pub fn key(&self) -> i64 {
        self.key
    }

    /// The server process of the session that holds the lock.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the lock is lost. Check it before every action the lock protects; it turns true
    /// before the server can give the lock to anyone else: when the lease runs out unconfirmed,
    /// and when the server has said its last word to the session, which it does before it lets
    /// go of the lock (looked at here, on the caller's thread, not only by the lock's own).
    pub fn is_lost(&self) -> bool {
        self.watch.is_lost() || self.probe.heard_unasked()
    }

    pub fn lost(&self) -> Option<Lost> {
        self.watch.lost()
    }

    /// Runs `hook` once when the lock is lost (at once, here, if it already is). Hooks run on
    /// the lock's own thread and should be quick: the session is closed after they return.
    pub fn on_lost(&self, hook: OnLost) {
        self.watch.on_lost(hook)
    }

    /// Runs `hook`, on the lock's own thread, each time a replacer asks this holder to let go
    /// (once per asking session; see `request.rs`). Without a hook, requests are not answered:
    /// the replacer's wait ends in a conflict. `stop_this_process` is what the addon and the
    /// command do.
    pub fn on_replace_request(&self, hook: OnReplaceRequest) {
        self.requests.add(hook)
    }

    /// Until when the lock is certainly this process's: the loss deadline, moved on by every
    /// confirmed heartbeat. Past it, or once `is_lost`, assume nothing.
    pub fn guaranteed_until(&self) -> Instant {
        self.watch.until().mono
    }

    /// Blocks until the lock is lost or `timeout` passes (`None`: no limit).
    pub fn wait_lost(&self, timeout: Option<Duration>) -> Option<Lost> {
        self.watch.wait(timeout)
    }

    /// Clears the record and lets go of the lock. `Ok(false)`: it was already lost. An error
    /// means the server did not confirm; it ends the session anyway, which frees the lock.
    pub fn release(mut self) -> Result<bool> {
        self.finish()
    }

    fn finish(&mut self) -> Result<bool> {
        let Some(release) = self.release.take() else {
            return Ok(false);
        };
        let result = if release.send(()).is_ok() {
            // The thread answers unless the lock was lost first (then it drops the sender).
            self.released.recv().unwrap_or(Ok(false))
        } else {
            Ok(false)
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// How an acquisition waits.
struct Wait {
    deadline: Option<Instant>,
    cancel: Cancel,
    /// When the caller started waiting.
    started: Instant,
    notices: OnWaitNotice,
    /// The session waits under this `application_name`: a request to the holder to let go.
    request: Option<String>,
}

/// The first pause before connecting again to a server that went away, and the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// A server that went away during a wait: since when, and the pause before the next attempt.
struct Outage {
    since: Instant,
    pause: Duration,
}

impl Outage {
    fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(RECONNECT_MAX);
        pause
    }
}

struct Granted {
    key: i64,
    fencing_token: i64,
    backend_pid: i32,
    probe: Arc<Probe>,
}

fn start(opts: &PgOptions, name: &LockName, wait: Option<Wait>) -> Result<PgHeld> {
    let s = Settings::new(opts)?;
    let record = processlock::own_record(
        &LockTarget::new("", name.clone()),
        s.process_name.as_deref(),
    );
    let (granted_tx, granted_rx) = mpsc::sync_channel(1);
    let (release_tx, release_rx) = oneshot::channel();
    let (released_tx, released_rx) = mpsc::sync_channel(1);
    // Replaced by the real deadline before the caller sees the lock.
    let watch = Arc::new(LossWatch::new(Stamp::now()));
    let requests = request::new_requests();
    let server = s.server.clone();
    let job = Job {
        s,
        ready: std::sync::OnceLock::new(),
        lock: name.display(),
        name: name.clone(),
        record: record.clone(),
        watch: Arc::clone(&watch),
        requests: Arc::clone(&requests),
    };
    let thread = std::thread::Builder::new()
        .name("processlock-pg".into())
        .spawn(move || job.run(wait, granted_tx, release_rx, released_tx))
        .map_err(|e| Error::io_msg("connect", &server, format!("cannot start a thread: {e}")))?;
    match granted_rx.recv() {
        Ok(Ok(g)) => Ok(PgHeld {
            lock: name.display(),
            key: g.key,
            record,
            fencing_token: g.fencing_token.to_string(),
            backend_pid: g.backend_pid,
            watch,
            requests,
            probe: g.probe,
            release: Some(release_tx),
            released: released_rx,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::io_msg(
                "lock",
                &server,
                "the lock's thread ended unexpectedly",
            ))
        }
    }
}

/// Runs `f` on a new thread with a runtime of its own: callers may be inside another runtime.
pub(crate) fn on_own_runtime<T, F, Fut>(s: &Settings, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Settings) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let settings = s.clone();
    let server = s.server.clone();
    std::thread::Builder::new()
        .name("processlock-pg".into())
        .spawn(move || {
            let server = settings.server.clone();
            runtime(&server)?.block_on(f(settings))
        })
        .map_err(|e| Error::io_msg("connect", &server, format!("cannot start a thread: {e}")))?
        .join()
        .unwrap_or_else(|_| Err(Error::io_msg("inspect", &server, "the thread panicked")))
}

pub(crate) fn runtime(server: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io_msg("connect", server, format!("cannot start a runtime: {e}")))
}

/// What ended the holding.
enum Outcome {
    Release,
    Lost(String),
}

/// Everything the lock's thread needs.
struct Job {
    s: Settings,
    /// The tables and the lock's key, known once the first session has read the salt.
    ready: std::sync::OnceLock<(Ready, i64)>,
    lock: String,
    name: LockName,
    record: Record,
    watch: Arc<LossWatch>,
    requests: Arc<Requests>,
}

impl Job {
    fn run(
        self,
        wait: Option<Wait>,
        granted: mpsc::SyncSender<Result<Granted>>,
        release: oneshot::Receiver<()>,
        released: mpsc::SyncSender<Result<bool>>,
    ) {
        let rt = match runtime(&self.s.server) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = granted.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let (session, token, confirmed_sent) = match self.take(wait).await {
                Ok(taken) => taken,
                Err(e) => {
                    let _ = granted.send(Err(e));
                    return;
                }
            };
            let reply = Granted {
                key: self.key(),
                fencing_token: token,
                backend_pid: session.backend_pid,
                probe: Arc::clone(&session.probe),
            };
            self.watch.extend(confirmed_sent.plus(self.s.lost_after()));
            // The claim is answered: from now on the server has nothing to say unasked.
            session.probe.asking(false);
            if granted.send(Ok(reply)).is_err() {
                // Nobody is waiting for this lock any more.
                let _ = self.release_now(&session).await;
                return;
            }
            let requests =
                request::request_sql(self.key(), &token.to_string(), session.backend_pid);
            match self
                .hold(&session, confirmed_sent, release, &requests)
                .await
            {
                Outcome::Release if session.probe.heard_unasked() => {
                    // The caller saw the loss on the socket (`is_lost`) before this thread did:
                    // there is nothing left to release, the loss is declared as any other.
                    let why = timeout(self.s.connect_timeout, session.ended())
                        .await
                        .unwrap_or_else(|_| "it spoke to the session unasked".into());
                    self.watch.declare(Lost {
                        lock: self.lock.clone(),
                        fencing_token: token.to_string(),
                        reason: session_ended(&why),
                    });
                    drop(session);
                    let _ = released.send(Ok(false));
                }
                Outcome::Release => {
                    let result = self.release_now(&session).await;
                    drop(session);
                    let _ = released.send(result);
                }
                Outcome::Lost(reason) => {
                    // Flag and hooks first, then the session: nobody can be granted the lock
                    // before this process has been told it is no longer its own.
                    self.watch.declare(Lost {
                        lock: self.lock.clone(),
                        fencing_token: token.to_string(),
                        reason,
                    });
                    drop(session);
                }
            }
        });
    }

    /// Connects, takes the lock and writes the record. Returns the session, the fencing token
    /// and when the last statement the server confirmed was sent.
    async fn take(&self, wait: Option<Wait>) -> Result<(Session, i64, Stamp)> {
        let Some(wait) = wait else {
            let session = Session::open(&self.s).await?;
            self.prepare(&session).await?;
            self.try_once(&session, 0).await?;
            let (token, sent) = self.claim(&session).await?;
            return Ok((session, token, sent));
        };
        let mut outage: Option<Outage> = None;
        let mut reached = false;
        loop {
            let error = match self.wait_in_session(&wait, &mut reached, &mut outage).await {
                Ok(taken) => return Ok(taken),
                Err(e) if reached && e.server_went_away() => e,
                Err(e) => return Err(e),
            };
            let o = outage.get_or_insert_with(|| {
                (wait.notices)(&WaitNotice::ServerAway {
                    reason: away_reason(&error),
                });
                Outage {
                    since: Instant::now(),
                    pause: RECONNECT_FIRST,
                }
            });
            let mut pause = o.next_pause();
            if let Some(d) = wait.deadline {
                let now = Instant::now();
                if d <= now {
                    return Err(error);
                }
                pause = pause.min(d - now);
            }
            tokio::select! {
                _ = sleep(pause) => {}
                _ = cancelled(&wait.cancel) => return Err(Error::Aborted),
            }
        }
    }

    /// One session of a wait: connects, waits for the lock and claims it. `reached`: the server
    /// has answered this wait before; `outage`: it is away, since when.
    async fn wait_in_session(
        &self,
        wait: &Wait,
        reached: &mut bool,
        outage: &mut Option<Outage>,
    ) -> Result<(Session, i64, Stamp)> {
        let deadline = async {
            match (wait.deadline, outage.is_some()) {
                // While the server is away, the deadline also bounds each attempt to connect.
                (Some(d), true) => sleep_until(d.into()).await,
                _ => std::future::pending().await,
            }
        };
        let session = tokio::select! {
            s = Session::open(&self.s) => s?,
            _ = cancelled(&wait.cancel) => return Err(Error::Aborted),
            _ = deadline => return Err(Error::io_msg(
                "connect",
                &self.s.server,
                format!("the server was still away when the wait ran out after {} ms", waited_ms(wait.started)),
            )),
        };
        *reached = true;
        if let Some(o) = outage.take() {
            (wait.notices)(&WaitNotice::ServerBack {
                away: o.since.elapsed(),
            });
        }
        self.prepare(&session).await?;
        if let Some(request) = &wait.request {
            // `request_name` keeps it free of quotes.
            let sql = format!("SET application_name = '{request}'; SELECT 1");
            session.simple_row(&self.s, "lock", &sql).await?;
        }
        self.wait_for(&session, wait).await?;
        let (token, sent) = self.claim(&session).await?;
        if wait.request.is_some() {
            // Held now, the session asks nothing of anyone: its name goes back to the one it
            // connected with. A failure leaves only the name (a waiter's request needs a wait).
            let _ = session.client.simple_query("RESET application_name").await;
        }
        Ok((session, token, sent))
    }

    /// Bumps the fencing token and writes the record of a session that has just been granted
    /// the lock. Returns the token and when the claim was sent: the server keeps the lock at
    /// least a lease after it answered the claim, which must be answered in time for the
    /// holder to have any of it left.
    async fn claim(&self, session: &Session) -> Result<(i64, Stamp)> {
        let sent = Stamp::now();
        let claim = table::claim(
            session,
            &self.s,
            self.ready()?,
            self.key(),
            &self.name,
            &self.record,
        );
        match timeout(self.s.lost_after(), claim).await {
            Ok(Ok(token)) => Ok((token, sent)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::io_msg(
                "record",
                &self.s.server,
                format!(
                    "writing the holder record took longer than {} ms; the lock was let go",
                    self.s.lost_after().as_millis()
                ),
            )),
        }
    }

    async fn try_lock(&self, session: &Session) -> Result<bool> {
        let row = session
            .simple_row(&self.s, "lock", &table::try_lock_sql(self.key()))
            .await?;
        Ok(row.first().map(String::as_str) == Some("t"))
    }

    async fn try_once(&self, session: &Session, waited_ms: u64) -> Result<()> {
        let mut last = None;
        for _ in 0..CONFLICT_ATTEMPTS {
            if self.try_lock(session).await? {
                return Ok(());
            }
            match table::holder(session, &self.s, self.ready()?, self.key()).await? {
                // A record, or one that is there but too large to read: looking again
                // changes nothing.
                Some(h) if h.record.pid != 0 || h.record_too_large => {
                    return Err(self.conflict(h, waited_ms))
                }
                Some(h) => {
                    last = Some(h);
                    sleep(Duration::from_millis(10)).await;
                }
                // Let go in between, or only waiters passing through (`wait_free_sql`).
                None => sleep(Duration::from_millis(1)).await,
            }
        }
        let holder = last.unwrap_or(Holder::unknown(0));
        Err(self.conflict(holder, waited_ms))
    }

    fn conflict(&self, h: Holder, waited_ms: u64) -> Error {
        Error::Conflict(Box::new(h.conflict(self.lock.clone(), waited_ms)))
    }

    /// Finds and checks the tables in `session` and reads the salt: the lock's key. Every
    /// session of one acquisition must find the same key.
    async fn prepare(&self, session: &Session) -> Result<()> {
        let ready = table::prepare(session, &self.s, Access::Hold)
            .await?
            .ok_or_else(|| {
                Error::io_msg("lock", &self.s.server, "the holder tables are missing")
            })?;
        let key = ready.key(&self.s, &self.name);
        // During an upgrade: an instance of the older version holds this lock by its old key.
        if let Some(older) = table::older_holder(session, &self.s, &ready, &self.name).await? {
            return Err(self.conflict(older, 0));
        }
        let (_, kept) = self.ready.get_or_init(|| (ready, key));
        if *kept != key {
            return Err(Error::io_msg(
                "lock",
                &self.s.server,
                "the database's salt changed during the wait (was the secret table dropped?); locks taken before and after it do not exclude each other",
            ));
        }
        Ok(())
    }

    /// The lock's key; only asked for once `prepare` has succeeded.
    fn key(&self) -> i64 {
        self.ready.get().map_or(0, |(_, key)| *key)
    }

    fn ready(&self) -> Result<&Ready> {
        self.ready
            .get()
            .map(|(ready, _)| ready)
            .ok_or_else(|| Error::io_msg("lock", &self.s.server, "the tables were not looked at"))
    }

    /// Takes the lock in `session`, waiting until it is free. The waiting statement takes
    /// nothing (`wait_free_sql`); only this running process, answered, takes the lock, so a
    /// waiter frozen in the meantime never holds up the others.
    async fn wait_for(&self, session: &Session, wait: &Wait) -> Result<()> {
        loop {
            if wait.cancel.is_cancelled() {
                return Err(Error::Aborted);
            }
            if self.try_lock(session).await? {
                return Ok(());
            }
            let now = Instant::now();
            let slice = match wait.deadline {
                Some(d) if d <= now => {
                    return self.try_once(session, waited_ms(wait.started)).await
                }
                Some(d) => (d - now).min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            let sql = table::wait_free_sql(self.key(), slice.as_millis());
            let query = session.client.simple_query(&sql);
            tokio::pin!(query);
            // The server ends the statement at lock_timeout; this only guards against an
            // answer that never comes (a cut network the kernel has not noticed yet).
            let guard = slice + self.s.lease + self.s.connect_timeout;
            let woke = tokio::select! {
                r = &mut query => Woke::Answer(r),
                _ = cancelled(&wait.cancel) => Woke::Cancelled,
                _ = sleep(guard) => Woke::Silent,
            };
            match woke {
                // Free now, or the slice ran out: try again.
                Woke::Answer(Ok(_)) => {}
                Woke::Answer(Err(e)) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {}
                Woke::Answer(Err(e)) => return Err(Error::io("lock", &self.s.server, &e)),
                Woke::Silent => {
                    return Err(Error::io_msg(
                        "lock",
                        &self.s.server,
                        format!(
                            "no answer from the server for {} ms while waiting",
                            guard.as_millis()
                        ),
                    ))
                }
                Woke::Cancelled => {
                    // Nothing is held whatever the answer: the waiting statement takes nothing
                    // that outlives it. The protocol's cancel request ends it in the server
                    // before the session is closed.
                    let limit = self.s.connect_timeout;
                    let token = session.client.cancel_token();
                    let _ = timeout(limit, crate::connect::cancel(&self.s, &token)).await;
                    let _ = timeout(limit, &mut query).await;
                    return Err(Error::Aborted);
                }
            }
        }
    }

    /// Heartbeats until released or lost. `confirmed_sent`: when the last statement the server
    /// answered was sent; the lock is lost `lost_after` later unless a heartbeat sent since is
    /// answered before then.
    async fn hold(
        &self,
        session: &Session,
        mut confirmed_sent: Stamp,
        mut release: oneshot::Receiver<()>,
        request_sql: &str,
    ) -> Outcome {
        let beat_sql = table::still_held_sql(self.key());
        // The sessions whose request this holder has answered: each is answered once.
        let mut answered: Vec<i32> = Vec::new();
        let every = self.s.heartbeat_every();
        let lost_after = self.s.lost_after();
        let mut last_sent = confirmed_sent.mono;
        let silent = || {
            format!(
                "no heartbeat was confirmed for {} ms (lease {} ms); the server may give the lock to another holder",
                lost_after.as_millis(),
                self.s.lease.as_millis()
            )
        };
        loop {
            let deadline = confirmed_sent.plus(lost_after);
            // `biased`: after a freeze, when every timer is due at once, the deadline wins.
            tokio::select! {
                biased;
                _ = sleep_until(deadline.mono.into()) => return Outcome::Lost(silent()),
                why = session.ended() => return Outcome::Lost(session_ended(&why)),
                _ = &mut release => return Outcome::Release,
                _ = sleep_until((last_sent + every).into()) => {}
            }
            if deadline.passed() {
                // The machine slept through it.
                return Outcome::Lost(silent());
            }
            if session.probe.heard_unasked() {
                // Already told to the caller by `is_lost`: the loss is declared too.
                return Outcome::Lost(
                    "the server spoke to the session unasked, as it does when it ends it".into(),
                );
            }
            session.probe.asking(true);
            let sent = Stamp::now();
            last_sent = sent.mono;
            let answer = tokio::select! {
                biased;
                _ = sleep_until(deadline.mono.into()) => return Outcome::Lost(silent()),
                why = session.ended() => return Outcome::Lost(session_ended(&why)),
                _ = &mut release => return Outcome::Release,
                r = async {
                    // One round trip: the server answers both in order, each on its own, so a
                    // look for requests that fails never fails the heartbeat.
                    tokio::join!(
                        session.simple_row(&self.s, "heartbeat", &beat_sql),
                        session.simple_row(&self.s, "heartbeat", request_sql)
                    )
                } => r,
            };
            let (answer, request) = answer;
            if deadline.passed() {
                // Answered, but too late to count: the process was frozen in between.
                return Outcome::Lost(silent());
            }
            match answer {
                Ok(row) if row.first().map(String::as_str) == Some("1") => {
                    session.probe.asking(false);
                    confirmed_sent = sent;
                    self.watch.extend(sent.plus(lost_after));
                    if let Some(r) = asked(request, &answered) {
                        answered.push(r.backend_pid);
                        self.requests.tell(&r);
                    }
                }
                Ok(_) => {
                    return Outcome::Lost(
                        "the server no longer lists the lock as held by this session".into(),
                    )
                }
                // The session is gone, and the lock with it.
                Err(e) if session.client.is_closed() => {
                    let why = match e {
                        Error::Io { message, .. } => message,
                        other => other.to_string(),
                    };
                    return Outcome::Lost(session_ended(&why));
                }
                // The session lives (a statement cancelled by an administrator, say): try again
                // at the next beat; the deadline still stands.
                Err(_) => session.probe.asking(false),
            }
        }
    }

    /// Lets go of the lock and clears the record, both sent at once, the release first.
    async fn release_sql(&self, session: &Session) -> Result<bool> {
        session.probe.asking(true);
        let unlock = table::unlock_sql(self.key());
        let clear = match self.ready() {
            Ok(ready) => table::clear_sql(&ready.tables.holders, self.key()),
            Err(_) => String::new(),
        };
        let (unlocked, _) = tokio::join!(
            session.simple_row(&self.s, "release", &unlock),
            session.client.simple_query(&clear)
        );
        Ok(unlocked?.first().map(String::as_str) == Some("t"))
    }

    async fn release_now(&self, session: &Session) -> Result<bool> {
        let limit = self.s.connect_timeout;
        match timeout(limit, self.release_sql(session)).await {
            Ok(r) => r,
            Err(_) => Err(Error::io_msg(
                "release",
                &self.s.server,
                format!(
                    "no answer within {} ms; the session is closed, and the server frees the lock within the lease",
                    limit.as_millis()
                ),
            )),
        }
    }
}

/// A request found with a heartbeat that this holder has not answered yet.
fn asked(found: Result<Vec<String>>, answered: &[i32]) -> Option<ReplaceRequest> {
    let column = found.ok()?.into_iter().next()?;
    request::parse_request(&column).filter(|r| !answered.contains(&r.backend_pid))
}

fn session_ended(why: &str) -> String {
    format!("the server session ended ({why})")
}

/// What a `[PROCESS_LOCK_WAIT]` line says of why the server went away.
fn away_reason(e: &Error) -> String {
    match e {
        Error::Io { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

enum Woke {
    Answer(std::result::Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>),
    Cancelled,
    Silent,
}

async fn cancelled(cancel: &Cancel) {
    while !cancel.is_cancelled() {
        sleep(CANCEL_POLL).await;
    }
}

/// Rounded up, so that a wait that ran to its deadline never reports less than it waited.
fn waited_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}
