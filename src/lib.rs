//! The Node binding: translates between JavaScript values and the `processlock` core.
//!
//! JavaScript opens a lock once for a type and its options (`handle.rs`: `openLock` answers a
//! `NativeLock`, whose methods are the calls on that lock); `lock.rs` turns any backend's answers
//! into the outcome objects and log lines below; `pg.rs` reads the PostgreSQL options and errors;
//! `losses.rs` tells JavaScript of a lost hold, and `ending.rs` lets go of what a holder still
//! holds when it ends; `holders.rs` is what both keep for each JavaScript module instance.
//!
//! Expected failures (a conflict, a bad name, an I/O error) come back as plain result objects,
//! not as thrown errors: errors created here would belong to another realm under jest, so the
//! JS layer builds real `Error` subclasses from these objects instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use napi::Env;
use napi_derive::napi;

mod ending;
mod handle;
mod holders;
mod lock;
mod losses;
mod pg;

pub use ending::LogTo;
pub use handle::{open_lock, LockSpec, NativeLock, NativeWait};
pub use losses::{listen_losses, LostEvent};

use processlock::{
    app_default_dir, real_dir, resolve_dir_or, Backend, Cancel, Error, FileBackend, Listing, Record,
};

/// How the calls on one lock are made, resolved once when it is opened (`handle.rs`).
pub(crate) struct LockOptions {
    pub process_name: Option<String>,
    /// Where the log lines go (`ending.rs` writes those of a release at the end).
    pub log: LogTo,
    /// Nobody reads the log lines: do not build them.
    pub quiet: bool,
    /// The JS module instance that takes or lets go of the lock (`open_holder`).
    pub holder: u32,
    /// A loss of the lock ends the process (a server lock's `onLost: 'exit'`, its default).
    pub exit_on_loss: bool,
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

/// The lock directory, as its real path: the table of holds knows a lock by it, so the same
/// directory reached through a symlink or `..` is the same lock. The default directory is
/// resolved once per process, so a later `process.chdir` does not move it.
fn lock_dir(explicit: Option<&str>) -> processlock::Result<PathBuf> {
    static DEFAULT: OnceLock<PathBuf> = OnceLock::new();
    let dir = resolve_dir_or(explicit.map(Path::new), |cwd| {
        Ok(DEFAULT
            .get_or_init(|| app_default_dir(APP_ENTRY.get().map(PathBuf::as_path), cwd))
            .clone())
    })?;
    Ok(real_dir(&dir).0)
}

#[napi(object)]
#[derive(Default)]
pub struct AcquireOutcome {
    pub info: Option<LockRecord>,
    pub lock_file: Option<String>,
    /// Which hold of the lock the calling holder has (`HoldId`): the loss notices of this hold
    /// name it, and a hold taken after this one was lost has another.
    pub hold: Option<f64>,
    /// The calling holder already held the lock.
    pub already_held: bool,
    /// The calling holder holds the lock after this call (also after a failure: a hold whose
    /// file was lost is dropped).
    pub held: bool,
    /// Log lines, in order, for the JS layer's logger.
    pub lines: Vec<String>,
    pub error: Option<Failure>,
}

/// How long an acquisition waits: until `deadline` (`None`: no limit), unless `cancel` ends it.
pub(crate) struct Waiting {
    pub deadline: Option<Instant>,
    pub cancel: Cancel,
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

#[napi(object)]
#[derive(Default)]
pub struct ReleaseOutcome {
    /// The lock file was ours and was removed.
    pub removed: bool,
    pub lock_file: Option<String>,
    pub lines: Vec<String>,
    pub error: Option<Failure>,
}

#[napi(object)]
#[derive(Default)]
pub struct InfoOutcome {
    pub info: Option<LockRecord>,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
}

#[napi(object)]
#[derive(Default)]
pub struct RemoveOutcome {
    pub removed: bool,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
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
    match server.as_ref().and_then(|s| pg::backend(s, None)) {
        Some(server) => listing(&server),
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
