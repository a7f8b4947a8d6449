//! How `run` waits for a lock file's holder to let go (`--wait`, and `--replace` once the holder
//! was told to stop): by the core's `wait_for`, in slices a signal can end.

use std::time::{Duration, Instant};

use processlock::{wait_for, Acquired, Cancel, Error, LockTarget, Record};

use crate::signals;

/// A waiting `run` looks for signals (to give up) this often.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// `attempt` until it succeeds or fails otherwise than by a conflict, for up to `wait` or until
/// a signal arrives. `announce` is called with the holder at the first conflict.
pub fn wait_sliced(
    target: &LockTarget,
    wait: Duration,
    mut attempt: impl FnMut() -> processlock::Result<Acquired>,
    announce: impl FnOnce(&Record),
) -> processlock::Result<Acquired> {
    let started = Instant::now();
    let deadline = started + wait;
    let cancel = Cancel::new();
    let mut announce = Some(announce);
    loop {
        // Short slices, so that a signal (which cannot cancel from its handler) ends the wait
        // within one of them.
        let slice_end = deadline.min(Instant::now() + WAIT_SLICE);
        match wait_for(target, Some(slice_end), &cancel, &mut attempt) {
            Err(Error::Conflict(mut c)) => {
                if Instant::now() >= deadline || signals::first_received().is_some() {
                    c.waited_ms = started.elapsed().as_millis() as u64;
                    return Err(Error::Conflict(c));
                }
                if let Some(announce) = announce.take() {
                    announce(&c.holder);
                }
            }
            other => return other,
        }
    }
}
