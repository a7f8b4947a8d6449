//! The Node binding: translates between JavaScript values and the `processlock` core.
//!
//! Expected failures (a conflict, a bad name, an I/O error) come back as plain result objects,
//! not as thrown errors: errors created here would belong to another realm under jest, so the
//! JS layer builds real `Error` subclasses from these objects instead.

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::Object;
use napi::{Env, JsDeferred};
use napi_derive::napi;

mod ending;
mod lock;
mod losses;
mod pg;

pub use ending::LogTo;
pub use losses::{listen_losses, LostEvent};

use lock::{Lock, On};
use processlock::{
    app_default_dir, real_dir, resolve_dir_or, Backend, Cancel, Error, FileBackend, Listing,
    LockName, Record, Taken,
};
use processlock_pg::PgBackend;

/// What every call on a lock is given besides the process type. The binding takes these as
/// positional arguments (`dir, trade_side, process_name, log, holder, server`, in this order):
/// an options object would be read property by property on every call, which cost more than the
/// system calls of an acquire and release.
#[derive(Default)]
pub(crate) struct LockOptions {
    pub dir: Option<String>,
    pub trade_side: Option<String>,
    pub process_name: Option<String>,
    /// Where the log lines go (`ending.rs` writes those of a release at the end).
    pub log: LogTo,
    /// Nobody reads the log lines: do not build them.
    pub quiet: bool,
    /// The JS module instance that takes or lets go of the lock (`open_holder`); 0 if absent.
    pub holder: u32,
    /// The lock is held on this server instead of in a file.
    pub server: Option<ServerOptions>,
}

impl LockOptions {
    fn new(
        dir: Option<String>,
        trade_side: Option<String>,
        process_name: Option<String>,
        log: Option<LogTo>,
        holder: Option<u32>,
        server: Option<ServerOptions>,
    ) -> Self {
        let log = log.unwrap_or_default();
        Self {
            dir,
            trade_side,
            process_name,
            log,
            quiet: log == LogTo::Silent,
            holder: holder.unwrap_or(0),
            server,
        }
    }
}

/// The PostgreSQL server a lock is held on; given only with a URL.
#[napi(object)]
pub struct ServerOptions {
    pub url: String,
    pub lease_ms: Option<f64>,
    pub connect_timeout_ms: Option<f64>,
    pub namespace: Option<String>,
    pub table: Option<String>,
    /// What the native side does when the lock is lost: `exit` (default) or `notify`.
    pub on_lost: Option<String>,
}

/// A holder id for a JS module instance (each worker thread loads its own). When its thread's
/// Node environment goes away (a worker ends, even by `terminate()`; the main thread's natural
/// end), after that thread's `'exit'` listeners, its holds go with it, and only its own: the lock
/// stays while another thread of the process still holds it (`ending.rs`).
#[napi(catch_unwind)]
pub fn open_holder(env: Env) -> napi::Result<u32> {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    ending::install_at_exit();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    env.add_env_cleanup_hook(id, |id| {
        ending::holder_ended(id);
        losses::forget_holder(id);
    })?;
    Ok(id)
}

static APP_ENTRY: OnceLock<PathBuf> = OnceLock::new();

/// The application's entry script, from which the default lock directory is found. The first
/// one given in the process counts; the directory itself is fixed the first time it is needed.
#[napi(catch_unwind)]
pub fn set_app_entry(entry: String) {
    if !entry.is_empty() {
        let _ = APP_ENTRY.set(PathBuf::from(entry));
    }
}

#[napi(object)]
#[derive(Clone)]
pub struct LockRecord {
    pub pid: u32,
    pub started: String,
    pub trade_side: Option<String>,
    pub process_name: String,
    pub process_type: Option<String>,
    pub hostname: Option<String>,
    pub start_token: Option<String>,
    pub protocol: Option<String>,
    /// Larger for every new holder of the lock (decimal); none where the holder minted none.
    pub fencing_token: Option<String>,
    /// `file` or `postgres`.
    pub backend: String,
}

impl From<Record> for LockRecord {
    fn from(r: Record) -> Self {
        Self {
            pid: r.pid,
            started: r.started,
            trade_side: r.trade_side,
            process_name: r.process_name,
            process_type: r.process_type,
            hostname: r.hostname,
            start_token: r.start_token,
            protocol: r.protocol,
            fencing_token: r.fencing_token,
            backend: "file".to_string(),
        }
    }
}

/// The stable code of a failure, as the core names it (`processlock::ErrorCode`).
#[napi(string_enum)]
#[derive(Clone, Copy)]
pub enum ErrorCode {
    #[napi(value = "LOCK_CONFLICT")]
    Conflict,
    #[napi(value = "LOCK_INVALID_NAME")]
    InvalidName,
    #[napi(value = "LOCK_INVALID_OPTION")]
    InvalidOption,
    #[napi(value = "LOCK_NOT_A_FILE")]
    NotAFile,
    #[napi(value = "LOCK_UNSUPPORTED")]
    Unsupported,
    #[napi(value = "LOCK_IO")]
    Io,
    #[napi(value = "LOCK_ABORTED")]
    Aborted,
    #[napi(value = "LOCK_UNSAFE_DIR")]
    UnsafeDir,
    #[napi(value = "LOCK_LOST")]
    Lost,
    #[napi(value = "LOCK_FENCED")]
    Fenced,
}

impl From<processlock::ErrorCode> for ErrorCode {
    fn from(code: processlock::ErrorCode) -> Self {
        use processlock::ErrorCode as Core;
        match code {
            Core::Conflict => Self::Conflict,
            Core::InvalidName => Self::InvalidName,
            Core::InvalidOption => Self::InvalidOption,
            Core::NotAFile => Self::NotAFile,
            Core::Unsupported => Self::Unsupported,
            Core::Io => Self::Io,
            Core::Aborted => Self::Aborted,
            Core::UnsafeDir => Self::UnsafeDir,
            Core::Lost => Self::Lost,
            Core::Fenced => Self::Fenced,
        }
    }
}

/// Everything the JS layer needs to build an `Error` subclass.
#[napi(object)]
#[derive(Clone)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    /// Negative, as in Node's own system errors.
    pub errno: Option<i32>,
    pub os_code: Option<String>,
    pub syscall: Option<String>,
    pub path: Option<String>,
    pub holder: Option<LockRecord>,
    pub waited_ms: Option<f64>,
    pub lines: Vec<String>,
    /// The SQLSTATE a PostgreSQL server answered with (`28P01`: wrong password...).
    pub sqlstate: Option<String>,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (holder, waited_ms) = match &e {
            Error::Conflict(c) => (
                Some(LockRecord::from(c.holder.clone())),
                Some(c.waited_ms as f64),
            ),
            _ => (None, None),
        };
        Self {
            code: e.code().into(),
            message: e.to_string(),
            errno: e.os_error().map(|(n, _)| -n),
            os_code: e.os_error().map(|(_, s)| s.to_string()),
            syscall: e.syscall().map(str::to_string),
            path: e.path().map(path_string),
            holder,
            waited_ms,
            lines: Vec::new(),
            sqlstate: None,
        }
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The lock files of the directory `options` names, and the lock `process_type` there.
fn file_lock(process_type: &str, options: &LockOptions) -> processlock::Result<On<FileBackend>> {
    // The JavaScript layer has read `$TRADE_SIDE` already: `None` here is "no side".
    let name = LockName::new(process_type, options.trade_side.as_deref())?;
    let backend = FileBackend::new(lock_dir(options.dir.as_deref())?);
    let place = backend.place(&name)?;
    Ok(On {
        backend,
        name,
        place,
    })
}

/// The lock directory, as its real path: the table of holds knows a lock by it, so the same directory
/// reached through a symlink or `..` is the same lock. The default directory is resolved once per
/// process, so a later `process.chdir` does not move it.
fn lock_dir(explicit: Option<&str>) -> processlock::Result<PathBuf> {
    static DEFAULT: OnceLock<PathBuf> = OnceLock::new();
    let dir = resolve_dir_or(explicit.map(Path::new), |cwd| {
        Ok(DEFAULT
            .get_or_init(|| app_default_dir(APP_ENTRY.get().map(PathBuf::as_path), cwd))
            .clone())
    })?;
    Ok(real_dir_cached(dir))
}

/// `real_dir`, remembered once the directory exists (it is made at the first acquire).
fn real_dir_cached(dir: PathBuf) -> PathBuf {
    static KNOWN: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);
    let known = || KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(real) = known().as_ref().and_then(|m| m.get(&dir)) {
        return real.clone();
    }
    let (real, exists) = real_dir(&dir);
    if exists {
        known()
            .get_or_insert_with(HashMap::new)
            .insert(dir, real.clone());
    }
    real
}

#[napi(object)]
#[derive(Default)]
pub struct AcquireOutcome {
    pub info: Option<LockRecord>,
    pub lock_file: Option<String>,
    /// The calling holder already held the lock.
    pub already_held: bool,
    /// The calling holder holds the lock after this call (also after a failure: a hold whose
    /// file was lost is dropped).
    pub held: bool,
    /// Log lines, in order, for the JS layer's logger.
    pub lines: Vec<String>,
    pub error: Option<Failure>,
}

/// The lock that `process_type` and `options` name: on the server of `options.server` when
/// there is one, else in a file. The one place that chooses a backend.
fn select(process_type: &str, options: &LockOptions) -> Result<Box<dyn Lock>, Box<Failure>> {
    match options
        .server
        .as_ref()
        .and_then(|s| pg::options(s, options.process_name.clone()))
    {
        Some(opts) => {
            let fail = |e: Error| Box::new(Failure::from(e));
            let name = LockName::new(process_type, options.trade_side.as_deref()).map_err(fail)?;
            let backend = PgBackend::new(opts);
            let place = backend
                .place(&name)
                .map_err(|e| Box::new(Failure::from(e)))?;
            Ok(Box::new(On {
                backend,
                name,
                place,
            }))
        }
        None => Ok(Box::new(
            file_lock(process_type, options).map_err(|e| Box::new(Failure::from(e)))?,
        )),
    }
}

/// A napi function on one named lock: the lock's positional arguments (see `LockOptions`), the
/// lock selected by them (a file, or a server with `server`), and `body` run on it; a name or
/// option that selects nothing is the outcome's `error`. Say what a function does in a `//`
/// comment above it: napi-derive would copy a doc comment passed through here into
/// binding.d.ts in its raw-string form.
macro_rules! lock_fn {
    (fn $name:ident($lock:ident, $options:ident) -> $out:ident $body:block) => {
        #[napi(catch_unwind)]
        pub fn $name(
            process_type: String,
            dir: Option<String>,
            trade_side: Option<String>,
            process_name: Option<String>,
            log: Option<LogTo>,
            holder: Option<u32>,
            server: Option<ServerOptions>,
        ) -> $out {
            let $options = LockOptions::new(dir, trade_side, process_name, log, holder, server);
            match select(&process_type, &$options) {
                Ok($lock) => $body,
                Err(f) => $out {
                    error: Some(*f),
                    ..Default::default()
                },
            }
        }
    };
}

/// How long an acquisition waits: until `deadline` (`None`: no limit), cancelled through the
/// wait registered under `key`.
pub(crate) struct Waiting {
    pub deadline: Option<Instant>,
    pub key: u64,
}

lock_fn! {
    fn acquire(lock, options) -> AcquireOutcome {
        kept(lock.acquire(&options, None), &options)
    }
}

/// An acquisition's outcome, once the log sink of a new hold is noted for the end of its holder
/// (`ending.rs`).
fn kept(out: AcquireOutcome, options: &LockOptions) -> AcquireOutcome {
    if out.held && out.error.is_none() && !out.already_held {
        if let Some(place) = &out.lock_file {
            ending::remember(place, options.holder, options.log);
        }
    }
    out
}

/// Like `acquire`, but waits up to `wait_ms` for the holder to let go (its release, exit or
/// death): blocks the calling thread. At the deadline: `LOCK_CONFLICT` with `waitedMs`.
#[napi(catch_unwind)]
#[allow(clippy::too_many_arguments)] // positional on purpose: see `LockOptions`
pub fn acquire_wait(
    process_type: String,
    dir: Option<String>,
    trade_side: Option<String>,
    process_name: Option<String>,
    log: Option<LogTo>,
    holder: Option<u32>,
    server: Option<ServerOptions>,
    wait_ms: f64,
) -> AcquireOutcome {
    let options = LockOptions::new(dir, trade_side, process_name, log, holder, server);
    let key = WAITS.internal_key();
    acquire_waiting(&process_type, &options, duration_ms(Some(wait_ms)), key)
}

/// Settles the Promise of an `acquire_async` on the JS thread.
type Settle = Box<dyn FnOnce(Env) -> napi::Result<AcquireOutcome> + Send>;

/// The Promise form of `acquire_wait`. The wait blocks a thread of its own, started for it and
/// ended with it, never one of libuv's pool (whose 4 threads `fs` and `dns` calls share); a
/// process that never waits this way has no such thread. `timeout_ms`: `None` (or infinite)
/// waits until the lock is ours or `cancel_wait(wait_id)` is called, which ends it with
/// `LOCK_ABORTED`. `wait_id` is chosen by the caller and unique among its pending waits.
#[napi(ts_return_type = "Promise<AcquireOutcome>", catch_unwind)]
#[allow(clippy::too_many_arguments)] // positional on purpose: see `LockOptions`
pub fn acquire_async<'env>(
    env: &'env Env,
    process_type: String,
    dir: Option<String>,
    trade_side: Option<String>,
    process_name: Option<String>,
    log: Option<LogTo>,
    holder: Option<u32>,
    server: Option<ServerOptions>,
    timeout_ms: Option<f64>,
    wait_id: u32,
) -> napi::Result<Object<'env>> {
    let options = LockOptions::new(dir, trade_side, process_name, log, holder, server);
    let wait = duration_ms(timeout_ms);
    let key = u64::from(wait_id);
    let (deferred, promise) = env.create_deferred::<AcquireOutcome, Settle>()?;
    let (give, take) = mpsc::channel::<JsDeferred<AcquireOutcome, Settle>>();
    let spawned = std::thread::Builder::new()
        .name("processlock-wait".into())
        .spawn(move || {
            let waited = panic::catch_unwind(AssertUnwindSafe(|| {
                acquire_waiting(&process_type, &options, wait, key)
            }));
            let outcome = waited.unwrap_or_else(|_| {
                // The wait panicked (a bug): its entry must not stay behind.
                WAITS.end(key);
                wait_failed("the waiting thread failed")
            });
            if let Ok(deferred) = take.recv() {
                deferred.resolve(Box::new(move |_| Ok(outcome)));
            }
        });
    match spawned {
        Ok(_) => {
            // The thread takes it whenever it is done; it cannot be gone before that.
            let _ = give.send(deferred);
        }
        Err(e) => {
            WAITS.end(key);
            let outcome = wait_failed(&format!("no thread could be started to wait: {e}"));
            deferred.resolve(Box::new(move |_| Ok(outcome)));
        }
    }
    Ok(promise)
}

fn wait_failed(problem: &str) -> AcquireOutcome {
    AcquireOutcome {
        error: Some(Error::io("wait", "", std::io::Error::other(problem.to_string())).into()),
        ..Default::default()
    }
}

/// A `wait_id` for `acquire_async` that no other wait of this process has: every copy of the
/// module loaded from this addon (each worker thread's, each jest test file's) shares this
/// counter, as it shares `WAITS`, so one copy's cancel never reaches another copy's wait. Never 0.
#[napi(catch_unwind)]
pub fn new_wait_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

/// Cancels the pending `acquire_async` with this `wait_id` (also one that has not started yet).
/// True when a wait was found running.
#[napi(catch_unwind)]
pub fn cancel_wait(wait_id: u32) -> bool {
    WAITS.cancel(u64::from(wait_id))
}

/// `None`: no limit (absent, NaN, infinite, or too long for a `Duration`: `Number.MAX_VALUE`
/// is a common way to say "forever"). Negative counts as 0.
fn duration_ms(ms: Option<f64>) -> Option<Duration> {
    Duration::try_from_secs_f64(ms?.max(0.0) / 1000.0).ok()
}

/// When a wait of `wait` from now ends; `None` (no end) for no limit, and for a wait so long
/// that its end cannot be told on this system's clock.
fn deadline_in(wait: Option<Duration>) -> Option<Instant> {
    Instant::now().checked_add(wait?)
}

fn acquire_waiting(
    process_type: &str,
    options: &LockOptions,
    wait: Option<Duration>,
    key: u64,
) -> AcquireOutcome {
    let deadline = deadline_in(wait);
    match select(process_type, options) {
        Ok(lock) => kept(
            lock.acquire(options, Some(Waiting { deadline, key })),
            options,
        ),
        Err(f) => {
            WAITS.end(key);
            AcquireOutcome {
                error: Some(*f),
                ..Default::default()
            }
        }
    }
}

/// Like `acquire`, but a live holder of this host is replaced: SIGTERM, a wait of up to
/// `grace_ms` (default 10 s) for the handover, then SIGKILL (the core's `replace_holder`, the same steps as
/// `processlock run --replace`). Blocks the calling thread for up to `grace_ms` plus a few
/// seconds after a SIGKILL. With a server, a holder on any host is asked through the server to
/// stop, and waited for up to `grace_ms`; never killed (`processlock_pg::acquire_replacing`).
#[napi(catch_unwind)]
#[allow(clippy::too_many_arguments)] // positional on purpose: see `LockOptions`
pub fn acquire_replacing(
    process_type: String,
    dir: Option<String>,
    trade_side: Option<String>,
    process_name: Option<String>,
    log: Option<LogTo>,
    holder: Option<u32>,
    server: Option<ServerOptions>,
    grace_ms: Option<f64>,
) -> AcquireOutcome {
    let options = LockOptions::new(dir, trade_side, process_name, log, holder, server);
    // A lock on a server is replaced through the server, wherever its holder runs: never in a
    // lock file of this host.
    if options.server.as_ref().is_some_and(|s| !s.url.is_empty()) {
        let taken = match (select(&process_type, &options), grace(grace_ms)) {
            (Ok(lock), Ok(wait)) => lock.acquire_replacing(&options, wait),
            (Err(f), _) => AcquireOutcome {
                error: Some(*f),
                ..Default::default()
            },
            (_, Err(e)) => AcquireOutcome {
                error: Some(e.into()),
                ..Default::default()
            },
        };
        return kept(taken, &options);
    }
    let found = file_lock(&process_type, &options).and_then(|l| Ok((l, grace(grace_ms)?)));
    let (lock, grace) = match found {
        Ok(found) => found,
        Err(e) => {
            return AcquireOutcome {
                error: Some(e.into()),
                ..Default::default()
            }
        }
    };
    let mut steps = Vec::new();
    let name = options.process_name.as_deref();
    let result = match lock
        .backend
        .acquire(&lock.name, &lock.place, name, options.holder, None)
    {
        Err(Error::Conflict(conflict)) => {
            replace_in_process(&lock, conflict, grace, &options, &mut steps)
        }
        other => other,
    };
    let mut out = lock.outcome(result, Vec::new(), &options);
    // The replacement's lines come before the acquired (or conflict) lines.
    let lines = match out.error.as_mut() {
        Some(failure) => &mut failure.lines,
        None => &mut out.lines,
    };
    steps.append(lines);
    *lines = steps;
    out
}

/// How long a replaced holder is given before SIGKILL: `grace_ms`, else the default. A grace
/// with no end is refused: `replace` exists to end in a bounded time, and a SIGKILL that never
/// comes would be a plain wait.
fn grace(grace_ms: Option<f64>) -> processlock::Result<Duration> {
    let Some(ms) = grace_ms else {
        return Ok(processlock::DEFAULT_GRACE);
    };
    match duration_ms(Some(ms)) {
        Some(grace) if deadline_in(Some(grace)).is_some() => Ok(grace),
        _ => Err(Error::InvalidOption {
            option: "waitMs",
            problem: format!(
                "is, with replace, how long the holder is given before SIGKILL: {ms} ms has no end; give a finite number of milliseconds"
            ),
        }),
    }
}

#[cfg(unix)]
fn replace_in_process(
    lock: &On<FileBackend>,
    conflict: Box<processlock::Conflict>,
    grace: Duration,
    options: &LockOptions,
    lines: &mut Vec<String>,
) -> processlock::Result<Taken> {
    struct InProcess<'a> {
        lock: &'a On<FileBackend>,
        options: &'a LockOptions,
        lines: &'a mut Vec<String>,
    }
    impl processlock::Replacing<Taken> for InProcess<'_> {
        fn wait(&mut self, wait: Duration) -> processlock::Result<Taken> {
            let key = WAITS.internal_key();
            let cancel = WAITS.begin(key, &self.lock.place);
            let wait = processlock::Wait {
                deadline: deadline_in(Some(wait)),
                cancel: &cancel,
                said: Default::default(),
            };
            let name = self.options.process_name.as_deref();
            let (lock, holder) = (self.lock, self.options.holder);
            let result = lock
                .backend
                .acquire(&lock.name, &lock.place, name, holder, Some(&wait));
            WAITS.end(key);
            result
        }

        fn line(&mut self, line: String, always: bool) {
            if always || !self.options.quiet {
                self.lines.push(line);
            }
        }
    }
    let mut how = InProcess {
        lock,
        options,
        lines,
    };
    processlock::replace_holder(&lock.name, conflict, grace, &mut how)
}

#[cfg(not(unix))]
fn replace_in_process(
    _lock: &On<FileBackend>,
    _conflict: Box<processlock::Conflict>,
    _grace: Duration,
    _options: &LockOptions,
    _lines: &mut Vec<String>,
) -> processlock::Result<Taken> {
    Err(Error::InvalidOption {
        option: "replace",
        problem: "is not supported on Windows yet: stop the holder, then start".into(),
    })
}

pub(crate) static WAITS: Waits = Waits::new();

/// The waits in progress in this process, by key: the `wait_id` of an async wait (below 2^32),
/// or an internal key for a blocking one.
pub(crate) struct Waits {
    state: Mutex<Option<WaitState>>,
    next_internal: AtomicU64,
}

#[derive(Default)]
struct WaitState {
    active: HashMap<u64, Pending>,
    /// Keys of recently finished waits: a cancel that arrives just after its wait ended must
    /// not leave an entry behind for a wait that will never start.
    finished: VecDeque<u64>,
}

struct Pending {
    /// `None` until the wait starts (it was cancelled before).
    place: Option<String>,
    cancel: Cancel,
}

const FINISHED_KEPT: usize = 256;

impl Waits {
    const fn new() -> Self {
        Self {
            state: Mutex::new(None),
            next_internal: AtomicU64::new(1 << 32),
        }
    }

    fn state(&self) -> MutexGuard<'_, Option<WaitState>> {
        // Single map operations under the lock: a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn internal_key(&self) -> u64 {
        self.next_internal.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a wait for `path`; its token may already be cancelled.
    pub(crate) fn begin(&self, key: u64, place: &str) -> Cancel {
        let mut state = self.state();
        let state = state.get_or_insert_with(WaitState::default);
        state.finished.retain(|k| *k != key);
        let entry = state.active.entry(key).or_insert_with(|| Pending {
            place: None,
            cancel: Cancel::new(),
        });
        entry.place = Some(place.to_string());
        entry.cancel.clone()
    }

    pub(crate) fn end(&self, key: u64) {
        let mut state = self.state();
        let state = state.get_or_insert_with(WaitState::default);
        if state.active.remove(&key).is_some() {
            if state.finished.len() == FINISHED_KEPT {
                state.finished.pop_front();
            }
            state.finished.push_back(key);
        }
    }

    fn cancel(&self, key: u64) -> bool {
        let mut state = self.state();
        let state = state.get_or_insert_with(WaitState::default);
        if let Some(p) = state.active.get(&key) {
            p.cancel.cancel();
            return p.place.is_some();
        }
        if !state.finished.contains(&key) {
            // Not started yet: it will find its token cancelled.
            let cancel = Cancel::new();
            cancel.cancel();
            state.active.insert(
                key,
                Pending {
                    place: None,
                    cancel,
                },
            );
        }
        false
    }

    /// Makes every wait for `path` look again (this process has just taken that lock).
    pub(crate) fn nudge(&self, place: &str) {
        let state = self.state();
        let Some(state) = state.as_ref() else { return };
        for p in state.active.values() {
            if p.place.as_deref() == Some(place) {
                p.cancel.nudge();
            }
        }
    }
}

#[napi(object)]
#[derive(Default)]
pub struct ReleaseOutcome {
    /// The lock file was ours and was removed.
    pub removed: bool,
    pub lock_file: Option<String>,
    pub lines: Vec<String>,
    pub error: Option<Failure>,
}

lock_fn! {
    fn release(lock, options) -> ReleaseOutcome {
        let out = lock.release(&options);
        if let Some(place) = &out.lock_file {
            ending::forget(place, options.holder);
        }
        out
    }
}

#[napi(object)]
#[derive(Default)]
pub struct InfoOutcome {
    pub info: Option<LockRecord>,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
}

lock_fn! {
    fn lock_info(lock, options) -> InfoOutcome {
        lock.info()
    }
}

#[napi(object)]
#[derive(Default)]
pub struct RemoveOutcome {
    pub removed: bool,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
}

lock_fn! {
    fn force_remove_lock(lock, options) -> RemoveOutcome {
        lock.force_remove()
    }
}

#[napi(string_enum = "lowercase")]
pub enum LockState {
    Held,
    Stale,
    Invalid,
}

impl From<processlock::LockState> for LockState {
    fn from(state: processlock::LockState) -> Self {
        match state {
            processlock::LockState::Held => Self::Held,
            processlock::LockState::Stale => Self::Stale,
            processlock::LockState::Invalid => Self::Invalid,
        }
    }
}

#[napi(object)]
pub struct ListedLock {
    pub file: String,
    pub process_type: Option<String>,
    pub trade_side: Option<String>,
    pub state: LockState,
    pub record: Option<LockRecord>,
    pub problem: Option<String>,
    /// This process is the holder.
    pub is_own: bool,
}

#[napi(object)]
#[derive(Default)]
pub struct ListOutcome {
    pub dir: Option<String>,
    pub locks: Vec<ListedLock>,
    pub error: Option<Failure>,
}

/// The locks of a directory, or with `options.url`, of a server.
#[napi(catch_unwind)]
pub fn list(dir: Option<String>, server: Option<ServerOptions>) -> ListOutcome {
    match server.as_ref().and_then(|s| pg::options(s, None)) {
        Some(opts) => listing(&PgBackend::new(opts)),
        None => match lock_dir(dir.as_deref()) {
            Ok(d) => listing(&FileBackend::new(d)),
            Err(e) => failed_listing(e.into()),
        },
    }
}

fn failed_listing(failure: Failure) -> ListOutcome {
    ListOutcome {
        error: Some(failure),
        ..Default::default()
    }
}

fn listing<B: Backend>(backend: &B) -> ListOutcome
where
    B::Error: Into<Failure>,
{
    let Listing { scope, locks } = match backend.list() {
        Ok(listing) => listing,
        Err(e) => return failed_listing(e.into()),
    };
    let holds = backend.holds();
    ListOutcome {
        dir: Some(scope),
        locks: locks
            .into_iter()
            .map(|l| ListedLock {
                is_own: l.state == processlock::LockState::Held && holds.holds(&l.place),
                process_type: l.name.as_ref().map(|n| n.process_type().to_string()),
                trade_side: l
                    .name
                    .as_ref()
                    .and_then(|n| n.trade_side().map(str::to_string)),
                state: l.state.into(),
                record: l.holding.map(|h| LockRecord {
                    fencing_token: h.fencing_token,
                    backend: B::KIND.to_string(),
                    ..LockRecord::from(h.record)
                }),
                problem: l.problem,
                file: l.place,
            })
            .collect(),
        error: None,
    }
}

#[napi(object)]
#[derive(Default)]
pub struct HeldOutcome {
    pub held: bool,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
}

// Whether this holder holds the lock: for a file, the file that is at the lock path now (one
// `lstat`); on a server, a hold not found lost.
lock_fn! {
    fn is_held(lock, options) -> HeldOutcome {
        lock.is_held(&options)
    }
}

// Where the lock is (its file's path, or its server and name), without touching anything.
lock_fn! {
    fn lock_path(lock, options) -> InfoOutcome {
        InfoOutcome {
            info: None,
            lock_file: Some(lock.place()),
            error: None,
        }
    }
}

// Reports the loss of this holder's hold of the lock to its `listen_losses` callback. A server
// lock is watched anyway; a lock file is looked at every 200 ms by a native thread that runs
// only while some lock file is watched.
lock_fn! {
    fn watch_lost(lock, options) -> HeldOutcome {
        lock.watch_lost(&options);
        lock.is_held(&options)
    }
}
