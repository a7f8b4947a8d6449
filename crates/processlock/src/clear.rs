//! Operator clean-up (`processlock clear`): removing lock files nobody holds, by the same rules an
//! acquirer follows when it takes over a dead holder's file.
//!
//! A file is removed only while we hold its exclusive lock and after checking that the path still
//! names the inode we locked. So a file that a live process holds is never removed, nor is a file
//! that a rival linked an instant ago in place of the stale one (invariants 1 and 5).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::liveness::judge_pid;
use crate::os;
use crate::protocol::{
    is_young, names_same_file, open_lock_file, read_record, try_lock, unknown_holder,
    BUSY_PATIENCE, REREAD_DELAY,
};
use crate::record::{Parsed, Record};

/// Far above anything real: each round means the file at the path was replaced meanwhile.
const MAX_ROUNDS: u32 = 1_000;

/// What `remove_if_stale` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Nothing is at the path.
    Absent,
    /// A live process holds it (or, for a PID-only file, its PID runs): left alone. A holder that
    /// wrote no readable record is reported with PID 0.
    Held(Record),
    /// Nobody held it and its record names a dead or recycled process: removed.
    RemovedStale(Record),
    /// Nobody held it and it names nobody (empty, garbage): removed.
    RemovedInvalid(String),
}

/// Removes the lock file at `path` if nobody holds it. Something other than a regular file at the
/// path is an `Error::NotAFile` and is left alone.
pub fn remove_if_stale(path: &Path) -> Result<Removal> {
    let started = Instant::now();
    for _ in 0..MAX_ROUNDS {
        let Some(file) = open_lock_file(path, os::open_existing)? else {
            return Ok(Removal::Absent);
        };
        if !try_lock(&file, true, path)? {
            match read_record(&file, path)? {
                Parsed::Ours(r) | Parsed::Legacy(r) => {
                    if !judge_pid(&r).is_alive() && started.elapsed() < BUSY_PATIENCE {
                        // A probe or an acquirer is busy with a dead holder's file: look again.
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    return Ok(Removal::Held(r));
                }
                Parsed::Invalid(_) => return Ok(Removal::Held(unknown_holder())),
            }
        }
        if !names_same_file(path, &file)? {
            // Replaced since we opened it: judge the new file.
            continue;
        }
        let mut parsed = read_record(&file, path)?;
        if matches!(parsed, Parsed::Invalid(_)) && is_young(&file) {
            // Perhaps a PID-only writer between its truncation and its write.
            std::thread::sleep(REREAD_DELAY);
            parsed = read_record(&file, path)?;
        }
        let removal = match parsed {
            Parsed::Legacy(r) if judge_pid(&r).is_alive() => return Ok(Removal::Held(r)),
            Parsed::Ours(r) | Parsed::Legacy(r) => Removal::RemovedStale(r),
            Parsed::Invalid(reason) => Removal::RemovedInvalid(reason),
        };
        match os::remove(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("unlink", path, e)),
        }
        // Only now let the lock go: nobody could take the file over while we removed it.
        drop(file);
        return Ok(removal);
    }
    Err(Error::io(
        "unlink",
        path,
        std::io::Error::other("the lock file kept changing; gave up after many rounds"),
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::name::LockName;
    use crate::protocol::{acquire, LockTarget};

    fn dir(label: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pl-clear-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn keeps_held_removes_stale_and_invalid() {
        let d = dir("states");
        let t = LockTarget::new(&d, LockName::new("backend", Some("SHORT")).unwrap());
        let held = acquire(&t, None).unwrap();
        // Another open file description of the same file conflicts with our own lock.
        assert_eq!(
            remove_if_stale(&t.path).unwrap(),
            Removal::Held(held.lock.record().clone())
        );
        assert!(t.path.exists());

        // The holder's descriptor closes without a release: the file stays, nobody holds it.
        let record = held.lock.record().clone();
        drop(held);
        assert_eq!(
            remove_if_stale(&t.path).unwrap(),
            Removal::RemovedStale(record)
        );
        assert!(!t.path.exists());
        assert_eq!(remove_if_stale(&t.path).unwrap(), Removal::Absent);

        let legacy = d.join("worker.lock");
        std::fs::write(&legacy, format!("{}\n", dead_pid())).unwrap();
        assert!(matches!(
            remove_if_stale(&legacy).unwrap(),
            Removal::RemovedStale(_)
        ));
        let alive = d.join("alive.lock");
        std::fs::write(&alive, format!("{}\n", std::process::id())).unwrap();
        assert!(matches!(
            remove_if_stale(&alive).unwrap(),
            Removal::Held(r) if r.pid == std::process::id()
        ));
        assert!(alive.exists());

        let garbage = d.join("garbage.lock");
        std::fs::write(&garbage, "not json").unwrap();
        assert!(matches!(
            remove_if_stale(&garbage).unwrap(),
            Removal::RemovedInvalid(_)
        ));
        assert!(!garbage.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn leaves_symlinks_and_directories_alone() {
        let d = dir("notfile");
        let outside = d.join("outside.txt");
        std::fs::write(&outside, "x").unwrap();
        let link = d.join("link.lock");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert_eq!(
            remove_if_stale(&link).unwrap_err().code(),
            "LOCK_NOT_A_FILE"
        );
        let sub = d.join("sub.lock");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(remove_if_stale(&sub).unwrap_err().code(), "LOCK_NOT_A_FILE");
        assert!(link.symlink_metadata().is_ok() && sub.is_dir());
        assert_eq!(std::fs::read(&outside).unwrap(), b"x");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
