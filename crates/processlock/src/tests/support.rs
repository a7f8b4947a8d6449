//! What the unit tests of several modules share. Integration tests have their own in
//! `tests/support`: they see only the public API.

use std::path::PathBuf;

use crate::name::LockName;
#[cfg(windows)]
use crate::os::ProcessStart;
use crate::protocol::LockTarget;

pub(crate) use crate::fuzz::Xorshift;

/// An empty directory of its own under the system temp directory, named after the test.
pub(crate) fn fresh_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pl-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The `backend (SHORT)` lock in a directory that does not exist yet (acquiring makes it).
pub(crate) fn target(label: &str) -> LockTarget {
    LockTarget::new(
        fresh_dir(label),
        LockName::new("backend", Some("SHORT")).unwrap(),
    )
}

/// What the OS tells of this process's start: the same twice, not a zombie, and a wall-clock
/// start in the last hour. Returns it.
#[cfg(windows)]
pub(crate) fn assert_own_start_is_sane(start: Option<ProcessStart>) -> ProcessStart {
    let a = start.expect("the OS tells when this process started");
    assert!(!a.zombie);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let wall = a.wall_ms.unwrap();
    assert!(
        wall <= now + 2000 && wall > now - 3_600_000,
        "{wall} vs {now}"
    );
    a
}
