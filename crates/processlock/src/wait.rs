//! Waiting acquisition: when the lock is held, wait until its holder lets go, then race for it
//! again.
//!
//! The wait is told, not polled. Ownership is an exclusive OS lock on the file at the lock path
//! (see `protocol.rs`), so a waiter opens that file (never through a symlink) and asks for a
//! *shared* lock on it, blocking. The kernel grants it to every waiter the moment the holder's
//! exclusive lock goes, however it goes: `release`, the end of the process, SIGKILL. Each waiter
//! drops its shared lock at once and goes back to `acquire`, where `link` lets exactly one of
//! them win; the others find the winner's new file and wait on it.
//!
//! A blocked `flock` ends only when the lock is granted or a signal interrupts it, so a waiting
//! thread must be interruptible for its deadline and for cancellation (`os::wait_unlocked`):
//! * Linux: a real-time signal with a no-op handler (chosen among those nobody handles, and
//!   handled only while waits are in progress), delivered to the waiting thread by a per-wait
//!   POSIX timer (`SIGEV_THREAD_ID`). The timer
//!   is armed for the deadline and re-fires every millisecond after it, so a signal that lands
//!   just before the thread enters `flock` is followed by another; cancelling re-arms it to fire
//!   at once.
//! * Windows: `LockFileEx` on an overlapped handle, waited for together with a cancel event and
//!   the deadline, then `CancelIoEx`.
//! * Elsewhere (macOS has no real-time signals), or when no signal can be had: a non-blocking
//!   attempt every millisecond.
//!
//! Each blocking wait lasts at most `RECHECK`: then the waiter tries again even if it was told
//! nothing, which bounds the cost of anything that could hide a release from it (the file was
//! removed by force while its holder kept running, a PID-only holder without an OS lock).

use std::time::{Duration, Instant};

use crate::cancel::{Cancel, Woke};
use crate::error::{Conflict, Error, Result};
use crate::os;
use crate::protocol::{acquire, names_same_file, open_lock_file, Acquired, LockTarget};

/// The longest a waiter blocks without trying the lock again.
const RECHECK: Duration = Duration::from_secs(1);
/// A holder that blocks nobody while `acquire` still says "held" is a PID-only writer's file
/// (no OS lock to wait on), or one that changes hands very fast: back off from this ...
const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// ... doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Takes the lock, waiting for its holder to let go until `deadline` (`None`: for as long as
/// it takes). At the deadline: `Error::Conflict` naming the holder, with `waited_ms`. When
/// cancelled: `Error::Aborted`. While waiting this process holds no file in the lock directory
/// other than an open descriptor of the holder's lock file, and creates nothing there.
pub fn acquire_wait(
    target: &LockTarget,
    process_name: Option<&str>,
    deadline: Option<Instant>,
    cancel: &Cancel,
) -> Result<Acquired> {
    wait_for(target, deadline, cancel, || acquire(target, process_name))
}

/// The waiting loop around any way of taking the lock at `target` (`acquire`, a pending lock's
/// commit, a table of holds' idempotent acquire): `attempt` is called until it returns anything but
/// `Error::Conflict`, waiting for the holder to let go after each conflict.
pub fn wait_for<T>(
    target: &LockTarget,
    deadline: Option<Instant>,
    cancel: &Cancel,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    let mut backoff = Duration::ZERO;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Aborted);
        }
        let seen = cancel.nudges();
        let conflict = match attempt() {
            Err(Error::Conflict(c)) => c,
            other => return other,
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(gave_up(conflict, started));
        }
        let until = deadline.map_or(now + RECHECK, |d| d.min(now + RECHECK));
        match wait_turn(target, until, cancel, seen)? {
            Turn::Waited | Turn::Changed => backoff = Duration::ZERO,
            Turn::Immediate if backoff.is_zero() => backoff = BACKOFF_MIN,
            Turn::Immediate => {
                // Nothing to wait on, twice in a row: sleep, doubling, until something changes.
                cancel.sleep(backoff.min(until.saturating_duration_since(now)), seen);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Turn::Cancelled => return Err(Error::Aborted),
        }
    }
}

/// The conflict as reported at the deadline, with the time waited (rounded up, so that a wait of
/// `N` ms that ran to its deadline never reports less than `N`).
fn gave_up(mut conflict: Box<Conflict>, started: Instant) -> Error {
    let waited = started.elapsed();
    conflict.waited_ms = u64::try_from(waited.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
    Error::Conflict(conflict)
}

enum Turn {
    /// We waited and were told: the holder let go, the slice ended, or we were nudged.
    Waited,
    /// The lock path no longer names the file that was held: look again at once.
    Changed,
    /// The file at the path blocks nobody (see `BACKOFF_MIN`).
    Immediate,
    Cancelled,
}

/// Waits until the file at the lock path is unlocked, `until`, or an interruption.
fn wait_turn(target: &LockTarget, until: Instant, cancel: &Cancel, seen: u64) -> Result<Turn> {
    let path = &target.path;
    let Some(file) = open_lock_file(path, os::open_for_wait)? else {
        return Ok(Turn::Changed);
    };
    if !names_same_file(path, &file)? {
        return Ok(Turn::Changed);
    }
    let woke = os::wait_unlocked(&file, until, cancel, seen).map_err(|e| Error::flock(path, e))?;
    Ok(match woke {
        Woke::Free { blocked: false } => Turn::Immediate,
        Woke::Free { blocked: true } | Woke::Expired | Woke::Nudged => Turn::Waited,
        Woke::Cancelled => Turn::Cancelled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::target;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_free_lock_is_taken_at_once() {
        let t = target("wait-free");
        let a = acquire_wait(&t, None, Some(Instant::now()), &Cancel::new()).unwrap();
        assert!(a.lock.release().unwrap());
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }

    #[test]
    fn a_held_lock_times_out_with_the_time_waited() {
        let t = target("wait-timeout");
        let held = acquire(&t, None).unwrap();
        let started = Instant::now();
        let err = acquire_wait(
            &t,
            None,
            Some(started + Duration::from_millis(120)),
            &Cancel::new(),
        )
        .unwrap_err();
        let Error::Conflict(c) = err else {
            panic!("expected a conflict, got {err:?}")
        };
        assert!(c.waited_ms >= 120, "waited {} ms", c.waited_ms);
        assert!(started.elapsed() >= Duration::from_millis(120));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(c.holder.pid, std::process::id());
        assert!(held.lock.release().unwrap());
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }

    #[test]
    fn a_release_in_another_thread_hands_the_lock_over() {
        let t = target("wait-thread");
        let held = acquire(&t, None).unwrap();
        let t2 = t.clone();
        let waiter = std::thread::spawn(move || {
            let a = acquire_wait(&t2, None, None, &Cancel::new()).unwrap();
            (Instant::now(), a)
        });
        std::thread::sleep(Duration::from_millis(50));
        let released = Instant::now();
        assert!(held.lock.release().unwrap());
        let (got, a) = waiter.join().unwrap();
        assert!(got >= released);
        assert!(
            got - released < Duration::from_millis(500),
            "handover took {:?}",
            got - released
        );
        assert!(a.lock.release().unwrap());
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }

    #[test]
    fn cancel_ends_a_blocked_wait_promptly() {
        let t = target("wait-cancel");
        let held = acquire(&t, None).unwrap();
        let cancel = Cancel::new();
        let t2 = t.clone();
        let c2 = cancel.clone();
        let waiter = std::thread::spawn(move || acquire_wait(&t2, None, None, &c2));
        std::thread::sleep(Duration::from_millis(50));
        let asked = Instant::now();
        cancel.cancel();
        let err = waiter.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Aborted), "{err:?}");
        assert!(asked.elapsed() < Duration::from_millis(500));
        // An already cancelled token fails before trying.
        let err = acquire_wait(&t, None, None, &cancel).unwrap_err();
        assert!(matches!(err, Error::Aborted));
        assert!(held.lock.release().unwrap());
        // Only the removal guard is left (and the lock's generation file).
        let left: Vec<_> = std::fs::read_dir(&t.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !crate::fencing::is_generation_file(n))
            .collect();
        assert_eq!(left, [crate::guard::GUARD_FILE]);
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }

    #[test]
    fn a_nudge_makes_a_blocked_wait_look_again() {
        let t = target("wait-nudge");
        let held = acquire(&t, None).unwrap();
        let cancel = Cancel::new();
        let attempts = Arc::new(AtomicU64::new(0));
        let (t2, c2, n2) = (t.clone(), cancel.clone(), Arc::clone(&attempts));
        let waiter = std::thread::spawn(move || {
            wait_for(&t2, None, &c2, || {
                if n2.fetch_add(1, Ordering::SeqCst) == 1 {
                    return Ok("nudged");
                }
                acquire(&t2, None).map(|_| "acquired")
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        cancel.nudge();
        assert_eq!(waiter.join().unwrap().unwrap(), "nudged");
        assert!(held.lock.release().unwrap());
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }
}
