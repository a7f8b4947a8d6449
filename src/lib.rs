//! The Node binding: translates between JavaScript values and the `processlock` core.
//!
//! Expected failures (a conflict, a bad name, an I/O error) come back as plain result objects,
//! not as thrown errors: errors created here would belong to another realm under jest, so the
//! JS layer builds real `Error` subclasses from these objects instead.

use std::path::{Path, PathBuf};
use std::sync::Once;

use napi_derive::napi;
use processlock::{
    force_remove, inspect, report, resolve_dir, Error, Inspection, LockName, LockState, LockTarget,
    Record, Registry,
};

static REGISTRY: Registry = Registry::new();

#[napi(object)]
#[derive(Default)]
pub struct LockOptions {
    pub dir: Option<String>,
    pub trade_side: Option<String>,
    pub process_name: Option<String>,
}

#[napi(object)]
pub struct LockRecord {
    pub pid: u32,
    pub started: String,
    pub trade_side: Option<String>,
    pub process_name: String,
    pub process_type: Option<String>,
    pub hostname: Option<String>,
    pub start_token: Option<String>,
    pub protocol: Option<String>,
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
        }
    }
}

/// Everything the JS layer needs to build an `Error` subclass.
#[napi(object)]
pub struct Failure {
    pub code: String,
    pub message: String,
    /// Negative, as in Node's own system errors.
    pub errno: Option<i32>,
    pub os_code: Option<String>,
    pub syscall: Option<String>,
    pub path: Option<String>,
    pub holder: Option<LockRecord>,
    pub waited_ms: Option<f64>,
    pub lines: Vec<String>,
}

impl Failure {
    fn from_error(e: Error, name: Option<&LockName>) -> Self {
        let (holder, waited_ms, lines) = match &e {
            Error::Conflict(c) => (
                Some(LockRecord::from(c.holder.clone())),
                Some(c.waited_ms as f64),
                name.map(|n| report::conflict(n, &c.holder, &c.path))
                    .unwrap_or_default(),
            ),
            _ => (None, None, Vec::new()),
        };
        Self {
            code: e.code().to_string(),
            message: e.to_string(),
            errno: e.os_error().map(|(n, _)| -n),
            os_code: e.os_error().map(|(_, s)| s.to_string()),
            syscall: e.syscall().map(str::to_string),
            path: e.path().map(path_string),
            holder,
            waited_ms,
            lines,
        }
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn target(process_type: &str, options: &LockOptions) -> processlock::Result<LockTarget> {
    let name = LockName::from_env(process_type, options.trade_side.as_deref())?;
    let dir = resolve_dir(options.dir.as_deref().map(Path::new))?;
    Ok(LockTarget::new(dir, name))
}

#[napi(object)]
pub struct AcquireOutcome {
    pub info: Option<LockRecord>,
    pub lock_file: Option<String>,
    pub already_held: bool,
    /// Log lines, in order, for the JS layer's logger.
    pub lines: Vec<String>,
    pub error: Option<Failure>,
}

#[napi]
pub fn acquire(process_type: String, options: Option<LockOptions>) -> AcquireOutcome {
    let options = options.unwrap_or_default();
    let target = match target(&process_type, &options) {
        Ok(t) => t,
        Err(e) => return acquire_failure(e, None, None),
    };
    install_exit_backstop();
    match REGISTRY.acquire(&target, options.process_name.as_deref()) {
        Ok(taken) => {
            let mut lines: Vec<String> = taken
                .events
                .iter()
                .map(|ev| report::event(ev, &target.path))
                .collect();
            if !taken.already_held {
                lines.push(report::acquired(&target.name, taken.record.pid));
            }
            AcquireOutcome {
                info: Some(taken.record.into()),
                lock_file: Some(path_string(&target.path)),
                already_held: taken.already_held,
                lines,
                error: None,
            }
        }
        Err(e) => acquire_failure(e, Some(&target.name), Some(&target.path)),
    }
}

fn acquire_failure(e: Error, name: Option<&LockName>, path: Option<&PathBuf>) -> AcquireOutcome {
    AcquireOutcome {
        info: None,
        lock_file: path.map(|p| path_string(p)),
        already_held: false,
        lines: Vec::new(),
        error: Some(Failure::from_error(e, name)),
    }
}

#[napi(object)]
pub struct ReleaseOutcome {
    /// The lock file was ours and was removed.
    pub removed: bool,
    /// This process held the lock (whether or not its file was still there).
    pub held: bool,
    pub lines: Vec<String>,
    pub error: Option<Failure>,
}

#[napi]
pub fn release(process_type: String, options: Option<LockOptions>) -> ReleaseOutcome {
    let options = options.unwrap_or_default();
    let target = match target(&process_type, &options) {
        Ok(t) => t,
        Err(e) => return release_failure(e),
    };
    match REGISTRY.release(&target.path) {
        None => ReleaseOutcome {
            removed: false,
            held: false,
            lines: Vec::new(),
            error: None,
        },
        Some((record, Ok(removed))) => ReleaseOutcome {
            removed,
            held: true,
            lines: vec![report::released(&target.name, record.pid)],
            error: None,
        },
        Some((_, Err(e))) => release_failure(e),
    }
}

fn release_failure(e: Error) -> ReleaseOutcome {
    ReleaseOutcome {
        removed: false,
        held: false,
        lines: Vec::new(),
        error: Some(Failure::from_error(e, None)),
    }
}

/// Releases every lock this process holds; the log lines of what was released.
#[napi]
pub fn release_all() -> Vec<String> {
    REGISTRY
        .release_all()
        .into_iter()
        .filter_map(|(record, result)| {
            result.ok()?;
            let name = LockName::new(
                record.process_type.as_deref().unwrap_or("lock"),
                record.trade_side.as_deref(),
            )
            .ok()?;
            Some(report::released(&name, record.pid))
        })
        .collect()
}

#[napi(object)]
pub struct InfoOutcome {
    pub info: Option<LockRecord>,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
}

#[napi]
pub fn lock_info(process_type: String, options: Option<LockOptions>) -> InfoOutcome {
    let options = options.unwrap_or_default();
    let result = target(&process_type, &options).and_then(|t| {
        if let Some(record) = REGISTRY.get(&t.path) {
            return Ok((Some(record), t));
        }
        match inspect(&t.path)? {
            Inspection::Held(r) if r.pid != 0 => Ok((Some(r), t)),
            _ => Ok((None, t)),
        }
    });
    match result {
        Ok((record, t)) => InfoOutcome {
            info: record.map(Into::into),
            lock_file: Some(path_string(&t.path)),
            error: None,
        },
        Err(e) => InfoOutcome {
            info: None,
            lock_file: None,
            error: Some(Failure::from_error(e, None)),
        },
    }
}

#[napi(object)]
pub struct RemoveOutcome {
    pub removed: bool,
    pub lock_file: Option<String>,
    pub error: Option<Failure>,
}

#[napi]
pub fn force_remove_lock(process_type: String, options: Option<LockOptions>) -> RemoveOutcome {
    let options = options.unwrap_or_default();
    let result = target(&process_type, &options).and_then(|t| {
        // Our own hold goes too: the file it protected is gone.
        REGISTRY.forget(&t.path);
        Ok((force_remove(&t.path)?, t))
    });
    match result {
        Ok((removed, t)) => RemoveOutcome {
            removed,
            lock_file: Some(path_string(&t.path)),
            error: None,
        },
        Err(e) => RemoveOutcome {
            removed: false,
            lock_file: None,
            error: Some(Failure::from_error(e, None)),
        },
    }
}

#[napi(object)]
pub struct ListedLock {
    pub file: String,
    pub process_type: Option<String>,
    pub trade_side: Option<String>,
    pub state: String,
    pub record: Option<LockRecord>,
    pub problem: Option<String>,
    /// This process is the holder.
    pub is_own: bool,
}

#[napi(object)]
pub struct ListOutcome {
    pub dir: Option<String>,
    pub locks: Vec<ListedLock>,
    pub error: Option<Failure>,
}

#[napi]
pub fn list(dir: Option<String>) -> ListOutcome {
    let result = resolve_dir(dir.as_deref().map(Path::new))
        .and_then(|d| Ok((processlock::list_locks(&d)?, d)));
    match result {
        Ok((locks, d)) => ListOutcome {
            dir: Some(path_string(&d)),
            locks: locks
                .into_iter()
                .map(|l| ListedLock {
                    is_own: l.state == LockState::Held && REGISTRY.holds(&l.path),
                    file: path_string(&l.path),
                    process_type: l.name.as_ref().map(|n| n.process_type().to_string()),
                    trade_side: l
                        .name
                        .as_ref()
                        .and_then(|n| n.trade_side().map(str::to_string)),
                    state: l.state.as_str().to_string(),
                    record: l.record.map(Into::into),
                    problem: l.problem,
                })
                .collect(),
            error: None,
        },
        Err(e) => ListOutcome {
            dir: None,
            locks: Vec::new(),
            error: Some(Failure::from_error(e, None)),
        },
    }
}

/// The lock file path for a name, without touching the disk.
#[napi]
pub fn lock_path(process_type: String, options: Option<LockOptions>) -> InfoOutcome {
    match target(&process_type, &options.unwrap_or_default()) {
        Ok(t) => InfoOutcome {
            info: None,
            lock_file: Some(path_string(&t.path)),
            error: None,
        },
        Err(e) => InfoOutcome {
            info: None,
            lock_file: None,
            error: Some(Failure::from_error(e, None)),
        },
    }
}

/// A libc `atexit` hook: it runs on `process.exit()`, uncaught exceptions and unhandled
/// rejections even if the app removed our JS 'exit' listener. It never runs on signals or
/// SIGKILL; there the kernel drops the lock and the next acquirer removes the file.
fn install_exit_backstop() {
    static ONCE: Once = Once::new();
    extern "C" fn at_exit() {
        REGISTRY.try_release_all();
    }
    ONCE.call_once(|| unsafe {
        libc::atexit(at_exit);
    });
}
