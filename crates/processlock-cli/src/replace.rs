//! `processlock run --replace`: stop the instance that holds the lock and take its place.
//!
//! The holder is signalled only when its record proves it is a process of this host with the
//! recorded start token (the core's `check_replaceable`), and checked again before each signal,
//! so that a holder that changed meanwhile (another replacer won, a new instance started) is
//! never signalled. SIGTERM first, then the handover is awaited through the normal event-driven
//! wait; SIGKILL once the grace period is over. Each step is logged.

use std::time::{Duration, Instant};

use processlock::{report, signal_holder, Acquired, Conflict, Error, LockTarget, Record};

use crate::run::wait_sliced;
use crate::signals;

/// After SIGKILL the kernel drops the lock at once, unless a process the holder started
/// inherited it: this long, then it is a conflict.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Replaces the holder named in `conflict`, then takes the lock through `attempt`.
pub fn replace(
    target: &LockTarget,
    conflict: Box<Conflict>,
    grace: Duration,
    attempt: &mut dyn FnMut() -> processlock::Result<Acquired>,
    quiet: bool,
) -> processlock::Result<Acquired> {
    let name = target.name.display();
    let holder = conflict.holder.clone();
    let log = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    if let Err(why) = signal_holder(&holder, libc::SIGTERM) {
        eprintln!(
            "[PROCESS_LOCK_REPLACE] Not replacing {name} (PID {}): {why}",
            holder.pid
        );
        return Err(Error::Conflict(conflict));
    }
    log(format!(
        "[PROCESS_LOCK_REPLACE] Sent SIGTERM to {name} (PID {}, started '{}'); SIGKILL in {} ms if it still holds the lock",
        holder.pid,
        report::printable(&holder.started),
        grace.as_millis()
    ));
    let asked = Instant::now();
    let c = match wait_sliced(target, grace, &mut *attempt, |_| {}) {
        Err(Error::Conflict(c)) => c,
        Ok(acquired) => {
            log(format!(
                "[PROCESS_LOCK_REPLACE] PID {} let go of {name} after {} ms",
                holder.pid,
                asked.elapsed().as_millis()
            ));
            return Ok(acquired);
        }
        other => return other,
    };
    if signals::first_received().is_some() || !same_process(&c.holder, &holder) {
        // Interrupted, or someone else holds it now: that one was never asked to go.
        return Err(Error::Conflict(c));
    }
    if let Err(why) = signal_holder(&holder, libc::SIGKILL) {
        eprintln!(
            "[PROCESS_LOCK_REPLACE] PID {} still holds {name} after {} ms but cannot be killed: {why}",
            holder.pid,
            grace.as_millis()
        );
        return Err(Error::Conflict(c));
    }
    log(format!(
        "[PROCESS_LOCK_REPLACE] PID {} still held {name} after {} ms; sent SIGKILL",
        holder.pid,
        grace.as_millis()
    ));
    wait_sliced(target, AFTER_KILL, attempt, |_| {})
}

fn same_process(a: &Record, b: &Record) -> bool {
    a.pid == b.pid && a.start_token == b.start_token && a.hostname == b.hostname
}
