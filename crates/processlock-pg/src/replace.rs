//! Replacing a holder that may run on another host: the replacer asks it, through the server, to
//! stop as a local replace would stop it (SIGTERM on its own host, where its graceful shutdown
//! runs), and takes the lock once it has let go.
//!
//! The request itself, and how a holder sees and answers it, are in `request.rs`.
//!
//! # No SIGKILL across hosts
//! The holder is asked once and never killed from here: only its own host could, and a process
//! that ignores SIGTERM (one that will not stop in the middle of something) keeps its lock; the
//! replacer's wait ends in a conflict. The holder does not kill itself either: it cannot tell a
//! process that is still draining from one that refuses, and a lock on a server stays exclusive
//! whatever it does, so the conflict is the honest answer.

use std::time::{Duration, Instant};

use processlock::report::printable;
use processlock::{Cancel, LockName};

use crate::error::{Error, Result};
use crate::lock::{self, OnWaitNotice};
use crate::options::PgOptions;
use crate::request::{request_name, target};

/// Where a replacement's lines go. `always`: said even when the caller is quiet (a refusal).
pub type ReplaceLines<'a> = &'a mut dyn FnMut(String, bool);

/// Takes the lock; if someone holds it, asks that holder, through the server, to let go (see
/// `request.rs`), and waits up to `wait` for the lock. A holder that has not let go by then
/// is `Error::Conflict`, with the lines that say so: it was not killed.
pub fn acquire_replacing(
    opts: &PgOptions,
    name: &LockName,
    wait: Duration,
    cancel: &Cancel,
    notices: OnWaitNotice,
    lines: ReplaceLines<'_>,
) -> Result<lock::PgHeld> {
    let conflict = match lock::acquire(opts, name) {
        Err(Error::Conflict(c)) => c,
        other => return other,
    };
    let holder = conflict.holder.clone();
    let who = describe(holder.pid, holder.hostname.as_deref(), conflict.backend_pid);
    let lock = name.display();
    let me = processlock::own_record(&processlock::LockTarget::new("", name.clone()), None);
    let request = request_name(
        &target(conflict.fencing_token.as_deref(), conflict.backend_pid),
        me.pid,
        me.hostname.as_deref().unwrap_or(""),
    );
    lines(
        format!(
            "[PROCESS_LOCK_REPLACE] Asked {lock} ({who}, started '{}') through the server to stop: it sends itself SIGTERM at its next heartbeat; waiting up to {} ms for it to let go (never killed from another host)",
            printable(&holder.started),
            wait.as_millis()
        ),
        false,
    );
    let asked = Instant::now();
    let deadline = asked.checked_add(wait);
    match lock::acquire_requesting(opts, name, deadline, cancel, notices, request) {
        Ok(held) => {
            lines(
                format!(
                    "[PROCESS_LOCK_REPLACE] {who} let go of {lock} after {} ms",
                    asked.elapsed().as_millis()
                ),
                false,
            );
            Ok(held)
        }
        Err(Error::Conflict(c)) => {
            let now = describe(c.holder.pid, c.holder.hostname.as_deref(), c.backend_pid);
            let line = if c.backend_pid == conflict.backend_pid {
                format!(
                    "[PROCESS_LOCK_REPLACE] {who} still holds {lock} after {} ms; it was not killed: only its own host can kill it",
                    wait.as_millis()
                )
            } else {
                format!(
                    "[PROCESS_LOCK_REPLACE] {who} let go of {lock}, but {now} took it first; that one was not asked to go"
                )
            };
            lines(line, true);
            Err(Error::Conflict(c))
        }
        Err(e) => Err(e),
    }
}

/// `PID 123 on host 'db1'`, or the server process when the holder wrote no record here.
fn describe(pid: u32, host: Option<&str>, backend_pid: Option<i32>) -> String {
    match (pid, backend_pid) {
        (0, Some(server)) => format!("server process {server}"),
        (0, None) => "a server session".to_string(),
        (pid, _) => format!(
            "PID {pid} on host '{}'",
            printable(host.unwrap_or("unknown"))
        ),
    }
}
