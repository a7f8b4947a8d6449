//! A lock handed down to this process: `processlock run` starts its command with the lock's
//! descriptor inherited and names it in `$PROCESSLOCK_INHERITED` (`<fd>:<lock file>`). When the
//! command takes the same lock itself (`acquireLock('backend')` under
//! `processlock run backend -- node server.js`), it must find that it already owns it, not report
//! a conflict with itself.
//!
//! The variable alone proves nothing (any process can set it), so the claim is checked: the
//! descriptor must be the file linked at the lock path now, and taking its exclusive lock without
//! blocking must succeed. A descriptor that shares the holder's open file description already
//! holds that lock, so the request succeeds; any other descriptor of the same file is refused,
//! because the holder's lock conflicts with it.

use crate::protocol::{HeldLock, LockTarget};

/// The variable `processlock run` sets for its command.
pub const INHERITED_ENV: &str = "PROCESSLOCK_INHERITED";

/// The held lock for `target` if this process inherited it; `None` otherwise.
#[cfg(unix)]
pub(crate) fn claim_inherited(target: &LockTarget) -> Option<HeldLock> {
    use std::os::unix::io::{FromRawFd, RawFd};

    let value = std::env::var(INHERITED_ENV).ok()?;
    let fd: RawFd = value.split_once(':')?.0.parse().ok()?;
    // A duplicate of our own, so that the caller's descriptor stays untouched whatever we do.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return None;
    }
    let file = unsafe { std::fs::File::from_raw_fd(dup) };
    HeldLock::adopt_inherited(file, target)
}

#[cfg(not(unix))]
pub(crate) fn claim_inherited(_target: &LockTarget) -> Option<HeldLock> {
    None
}
