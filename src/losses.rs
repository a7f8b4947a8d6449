//! Telling JavaScript that a lock is lost, and ending the process when that is what it asked.
//!
//! Losses are found on native threads (a server lock's heartbeat thread, the lock file
//! watcher) and reach each JS module instance through a threadsafe function it registers the
//! first time it asks to hear of them; no JS timer is involved, so a busy event loop only delays
//! the callback, never the finding. The threadsafe functions are weak: they never keep the
//! process alive.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use processlock::{report, Error, Holder, LockName};

use crate::{Failure, REGISTRY};

pub(crate) use processlock::report::LOST_EXIT_STATUS;

/// How often the lock file watcher looks at the files it watches (one `lstat` each).
const FILE_WATCH_EVERY: Duration = Duration::from_millis(200);

#[napi(object)]
pub struct LostEvent {
    /// The lock, as `lockFile` names it in the results of acquire.
    pub lock_file: String,
    /// The lost hold's fencing token (server locks): a hold of the same lock taken since then has
    /// another, and must not be taken for the lost one.
    pub fencing_token: Option<String>,
    pub error: Failure,
    pub lines: Vec<String>,
}

type Listener = ThreadsafeFunction<LostEvent, (), LostEvent, Status, false, true>;

static LISTENERS: Mutex<Option<HashMap<u32, Listener>>> = Mutex::new(None);

fn listeners() -> MutexGuard<'static, Option<HashMap<u32, Listener>>> {
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the losses of `holder`'s locks go from now on.
#[napi(catch_unwind)]
pub fn listen_losses(holder: u32, callback: Listener) {
    listeners()
        .get_or_insert_with(HashMap::new)
        .insert(holder, callback);
}

/// The holder's module instance is gone (its worker ended).
pub(crate) fn forget_holder(holder: u32) {
    if let Some(map) = listeners().as_mut() {
        map.remove(&holder);
    }
    if let Some(watched) = watched().as_mut() {
        watched.retain(|w| w.holder != holder);
    }
}

pub(crate) fn notify(
    holder: u32,
    lock_file: &str,
    fencing_token: Option<&str>,
    failure: &Failure,
    line: &str,
) {
    let map = listeners();
    let Some(listener) = map.as_ref().and_then(|m| m.get(&holder)) else {
        return;
    };
    let event = LostEvent {
        lock_file: lock_file.to_string(),
        fencing_token: fencing_token.map(str::to_string),
        error: failure.clone(),
        lines: vec![line.to_string()],
    };
    listener.call(event, ThreadsafeFunctionCallMode::NonBlocking);
}

/// Writes `line` to stderr, lets go of this process's lock files, and ends the process with
/// `status` at once, without running JavaScript or static destructors: JS may be stuck in a
/// loop, and Node's own exit path must not run on this thread. No `'exit'` listener runs, so
/// there is nothing the release could come before.
pub(crate) fn exit_now(line: &str, status: i32) -> ! {
    // Rust's stderr is unbuffered: the line is out before the process ends.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
    REGISTRY.release_all_within(EXIT_PATIENCE);
    end_process(status)
}

/// How long `exit_now` waits for another thread that is inside the registry: past that, the
/// kernel drops the locks when the process is gone.
const EXIT_PATIENCE: Duration = Duration::from_secs(1);

#[cfg(unix)]
fn end_process(status: i32) -> ! {
    // SAFETY: `_exit` ends the process; it has no preconditions.
    unsafe { libc::_exit(status) }
}

#[cfg(not(unix))]
fn end_process(status: i32) -> ! {
    std::process::exit(status)
}

/// A lock file watched for its loss on behalf of one holder.
struct Watched {
    path: PathBuf,
    holder: u32,
    name: LockName,
    pid: u32,
}

static WATCHED: Mutex<Option<Vec<Watched>>> = Mutex::new(None);

fn watched() -> MutexGuard<'static, Option<Vec<Watched>>> {
    WATCHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches a lock file this holder holds until it is released or lost. The watcher thread
/// exists only while something is watched.
pub(crate) fn watch_file(path: PathBuf, holder: u32, name: LockName, pid: u32) {
    let mut list = watched();
    let list_ref = list.get_or_insert_with(Vec::new);
    if list_ref
        .iter()
        .any(|w| w.path == path && w.holder == holder)
    {
        return;
    }
    let start = list_ref.is_empty();
    list_ref.push(Watched {
        path,
        holder,
        name,
        pid,
    });
    drop(list);
    if start {
        let spawned = std::thread::Builder::new()
            .name("processlock-watch".into())
            .spawn(watch_files);
        if spawned.is_err() {
            // Without a thread nothing can be watched: forget it rather than pretend.
            *watched() = None;
        }
    }
}

fn watch_files() {
    loop {
        std::thread::sleep(FILE_WATCH_EVERY);
        let (lost, done) = {
            let mut list = watched();
            let Some(items) = list.as_mut() else { return };
            let mut lost = Vec::new();
            items.retain_mut(|w| {
                let holder = Holder::from(w.holder);
                if !REGISTRY.is_holder(&w.path, holder) {
                    return false;
                }
                if REGISTRY.holds(&w.path) {
                    return true;
                }
                lost.push(Watched {
                    path: std::mem::take(&mut w.path),
                    holder: w.holder,
                    name: w.name.clone(),
                    pid: w.pid,
                });
                false
            });
            let done = items.is_empty();
            if done {
                // A watch added from now on starts a thread of its own.
                *list = None;
            }
            (lost, done)
        };
        for w in &lost {
            let reason = format!(
                "its lock file {} was removed or replaced by someone else",
                w.path.display()
            );
            let line = report::lost(&w.name, w.pid, &reason);
            let e = Error::Lost {
                lock: w.name.display(),
                reason,
            };
            let failure = Failure::from(e);
            notify(w.holder, &w.path.to_string_lossy(), None, &failure, &line);
        }
        if done {
            return;
        }
    }
}
