//! Letting go of what a holder still holds when it ends: a worker thread's JavaScript
//! environment, or the whole process.
//!
//! Apps take the lock first thing and add their own `'exit'` hooks later, and Node calls `'exit'`
//! listeners in the order they were added: a release in a listener of ours would run before the
//! app's hooks, and a waiter would own the lock while the old process still writes. So no
//! JavaScript listener releases anything. The release happens here, once no JavaScript of the
//! ending thread can run any more:
//!
//! * `process.exit()`, an uncaught exception, an unhandled rejection (and the PID 1 signal path,
//!   which calls `process.exit`): a libc `atexit` hook. It runs after every `'exit'` listener,
//!   also ones the app added while `'exit'` was being emitted (which Node does not call).
//! * The natural end of the main thread, and the end of a worker thread (natural, its
//!   `process.exit()`, `worker.terminate()`): the clean-up hook of the holder's Node environment
//!   (`open_holder`), which Node runs after that thread's `'exit'` listeners. On the main thread
//!   the `atexit` hook comes after it and finds nothing left.
//! * A signal that nobody in the app listens to: the JS layer releases before it re-raises the
//!   signal, which ends the process without any `'exit'` listener.
//!
//! Lock files are removed as the last thing this hook does; locks on a server are released
//! first, each within `SERVER_PATIENCE`: past that, the session ends with the process (its socket
//! closes), which frees the lock on the server all the same.
//!
//! No JavaScript can run here, so the log lines of these releases are written by this module,
//! right after each release, to where the hold's `log` option sends them: with the console (the
//! default), `[PROCESS_LOCK_RELEASED]` to stdout and `[PROCESS_LOCK_RELEASE_FAILED]` to stderr,
//! as `console.log` and `console.error` would; with a function, which can no longer be called,
//! only a failure, to stderr; silent, nothing.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::Duration;

use napi_derive::napi;
use processlock::{FileBackend, LockTarget, Released};

use crate::holders::{self, ended_sink};
use crate::lock::released;
use crate::{path_string, pg, ReleaseOutcome};

/// How long the end of the process waits for another thread that is inside the table of lock files (a wait
/// thread that meets a stopped remover's guard): past that, the kernel drops the locks when the
/// process is gone, and the next acquirer takes the files over as stale.
const FILES_PATIENCE: Duration = Duration::from_secs(1);

/// How long the end of a holder waits for a server to confirm a release. A server on loopback
/// answers in about a millisecond and one across a continent in a few hundred; past this, the
/// session ends with the process, which frees the lock too. It also leaves room, within the
/// 1.6 s that PM2 gives a process between SIGINT and SIGKILL, for the app's own shutdown.
const SERVER_PATIENCE: Duration = Duration::from_secs(1);

/// Where the log lines of a hold go, as the `log` option of the call that took it says
/// (`holders.rs` keeps it for each hold).
#[napi]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum LogTo {
    /// stdout, and stderr for failures (the JS layer: `console.log`, `console.error`).
    #[default]
    Console = 0,
    /// A function of the app's.
    Function = 1,
    /// Nowhere.
    Silent = 2,
}

/// Registers the `atexit` hook, once per process, at the first use of the addon.
pub(crate) fn install_at_exit() {
    static ONCE: Once = Once::new();
    extern "C" fn at_exit() {
        // A panic must not unwind out of a C callback (that aborts): whatever was not released
        // is dropped by the kernel when the process is gone.
        let _ = panic::catch_unwind(end_of_process);
    }
    // SAFETY: `at_exit` is a plain `extern "C"` function without arguments that lives as long
    // as the process (Node never unloads an addon); registering it has no other precondition.
    ONCE.call_once(|| unsafe {
        libc::atexit(at_exit);
    });
}

/// The process ends: everything still held is let go of.
fn end_of_process() {
    for out in pg::release_ended(None, SERVER_PATIENCE) {
        say_ended(out);
    }
    for (target, how) in FileBackend::let_go_all(None, FILES_PATIENCE) {
        say_ended(file_outcome(&target, how));
    }
}

/// The JavaScript environment of `holder` (a worker thread, or the main thread at its natural
/// end) is gone: what it alone held is let go of. Called by the environment's clean-up hook.
pub(crate) fn holder_ended(holder: u32) {
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        for out in pg::release_ended(Some(holder), SERVER_PATIENCE) {
            say_ended(out);
        }
        for (target, how) in FileBackend::let_go_all(Some(holder), FILES_PATIENCE) {
            say_ended(file_outcome(&target, how));
        }
        // Its holds of locks that others in the process keep are over too.
        holders::gone(holder);
    }));
    drop(result);
}

/// The outcome of letting go of a lock file at the end, as a release call would report it.
fn file_outcome(target: &LockTarget, how: Released<processlock::Error>) -> ReleaseOutcome {
    released::<FileBackend>(&target.name, path_string(&target.path), how, false)
}

/// Writes the lines of a release that no JavaScript can report any more.
fn say_ended(out: ReleaseOutcome) {
    let to = ended_sink(out.lock_file.as_deref().unwrap_or_default());
    match (&out.error, to) {
        (_, LogTo::Silent) => {}
        (None, LogTo::Console) => write_lines(Stream::Out, &out.lines),
        (None, LogTo::Function) => {}
        (Some(failure), _) => write_lines(Stream::Err, &failure.lines),
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// How long a line may wait for a full pipe (a log reader that stopped reading).
#[cfg(unix)]
const WRITE_PATIENCE: Duration = Duration::from_millis(500);

fn write_lines(stream: Stream, lines: &[String]) {
    for line in lines {
        write_line(stream, &format!("{line}\n"));
    }
}

/// Writes to the descriptor itself: Node's streams cannot run any more, and Node may have made
/// a pipe non-blocking, so a full pipe is waited for, within `WRITE_PATIENCE`.
#[cfg(unix)]
fn write_line(stream: Stream, text: &str) {
    let fd = match stream {
        Stream::Out => libc::STDOUT_FILENO,
        Stream::Err => libc::STDERR_FILENO,
    };
    let deadline = std::time::Instant::now() + WRITE_PATIENCE;
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer of `rest.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n >= 0 {
            rest = &rest[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return;
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
                // SAFETY: one valid `pollfd`, and its count.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            _ => return,
        }
    }
}

#[cfg(not(unix))]
fn write_line(stream: Stream, text: &str) {
    use std::io::Write;
    let _ = match stream {
        Stream::Out => std::io::stdout().write_all(text.as_bytes()),
        Stream::Err => std::io::stderr().write_all(text.as_bytes()),
    };
}
