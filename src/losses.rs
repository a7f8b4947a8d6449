//! Telling JavaScript that a lock is lost, and ending the process when that is what it asked.
//!
//! Losses are found on native threads (a server lock's heartbeat thread, the core's lock file
//! watcher) and reach each JS module instance through a threadsafe function it registers the
//! first time it asks to hear of them (kept in `holders.rs`); no JS timer is involved, so a busy
//! event loop only delays the callback, never the finding. The threadsafe functions are weak:
//! they never keep the process alive.

use std::time::Duration;

use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use processlock::{FileBackend, HoldId};

use crate::holders::{self, Listener};
use crate::Failure;

pub(crate) use processlock::report::LOST_EXIT_STATUS;

#[napi(object)]
pub struct LostEvent {
    /// The lock, as `lockFile` names it in the results of acquire.
    pub lock_file: String,
    /// The lost hold (`hold` of the acquire outcome): a hold of the same lock taken since then
    /// has another, and is not the one lost.
    pub hold: f64,
    pub error: Failure,
    pub lines: Vec<String>,
}

/// Where the losses of `holder`'s locks go from now on.
#[napi(catch_unwind)]
pub fn listen_losses(holder: u32, callback: Listener) {
    holders::listen(holder, callback);
}

pub(crate) fn notify(holder: u32, lock_file: &str, hold: HoldId, failure: &Failure, line: &str) {
    holders::with_listener(holder, |listener| {
        let event = LostEvent {
            lock_file: lock_file.to_string(),
            hold: crate::lock::hold_number(hold),
            error: failure.clone(),
            lines: vec![line.to_string()],
        };
        listener.call(event, ThreadsafeFunctionCallMode::NonBlocking);
    });
}

/// Writes `line` to stderr, lets go of this process's lock files, and ends the process with
/// `status` at once, without running JavaScript or static destructors: JS may be stuck in a
/// loop, and Node's own exit path must not run on this thread. No `'exit'` listener runs, so
/// there is nothing the release could come before.
pub(crate) fn exit_now(line: &str, status: i32) -> ! {
    // Rust's stderr is unbuffered: the line is out before the process ends.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
    FileBackend::let_go_all(None, EXIT_PATIENCE);
    end_process(status)
}

/// How long `exit_now` waits for another thread that is inside the table of lock files: past that, the
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
