//! Operator clean-up (`processlock clear`): removing lock files nobody holds, by the same rules an
//! acquirer follows when it takes over a dead holder's file.
//!
//! Only files it recognises as lock records (ours, or the older PID-only format) are removed. A
//! `*.lock` file it cannot read as one may belong to another program sharing the directory
//! (`/run/lock`): it is reported as unknown and kept, held or not.
//!
//! A file is removed only while we hold its exclusive lock and after checking that the path still
//! names the inode we locked. So a file that a live process holds is never removed, nor is a file
//! that a rival linked an instant ago in place of the stale one
//! (`docs/PROTOCOL.md`: *one owner* and *only your own file*).

use std::path::Path;

use crate::error::{Error, Result};
use crate::os;
use crate::protocol::{judge, unknown_holder, Verdict, MAX_ROUNDS};
use crate::record::Record;

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
    /// Not a lock record (empty, garbage, another program's file): kept. Says why.
    Unknown(String),
}

/// Removes the lock file at `path` if nobody holds it, judged exactly as an acquirer judges it,
/// and if it is a lock record at all. Something other than a regular file at the path is an
/// `Error::NotAFile` and is left alone.
pub fn remove_if_stale(path: &Path) -> Result<Removal> {
    for _ in 0..MAX_ROUNDS {
        match judge(path)? {
            Verdict::Gone => match os::entry(path).map_err(|e| Error::io("lstat", path, e))? {
                os::Entry::Missing => return Ok(Removal::Absent),
                // Replaced since we opened it: judge the new file.
                _ => continue,
            },
            Verdict::Held(r, _) if r == unknown_holder() => {
                return Ok(Removal::Unknown(
                    "not a lock record, and a process holds a lock on it".into(),
                ))
            }
            Verdict::Held(r, _) => return Ok(Removal::Held(r)),
            Verdict::Stale(stale) => {
                let removal = match &stale.said {
                    Ok(r) => Removal::RemovedStale(r.clone()),
                    // Dropping it lets its lock go and leaves the file where it is.
                    Err(reason) => return Ok(Removal::Unknown(reason.clone())),
                };
                // False: replaced since we judged it; judge the new file.
                if stale.remove(path)? {
                    return Ok(removal);
                }
            }
        }
    }
    Err(Error::kept_changing("unlink", path))
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
        let mut runs = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&alive, format!("{}\n", runs.id())).unwrap();
        assert!(matches!(
            remove_if_stale(&alive).unwrap(),
            Removal::Held(r) if r.pid == runs.id()
        ));
        assert!(alive.exists());
        runs.kill().unwrap();
        runs.wait().unwrap();

        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keeps_files_that_are_not_lock_records() {
        let d = dir("unknown");
        let garbage = d.join("other.lock");
        std::fs::write(&garbage, "some other program's state\n").unwrap();
        let empty = d.join("x.lock");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            remove_if_stale(&garbage).unwrap(),
            Removal::Unknown(why) if why.starts_with("not a lock record")
        ));
        assert!(matches!(
            remove_if_stale(&empty).unwrap(),
            Removal::Unknown(why) if why == "empty file"
        ));
        // Held by its owner (another program's flock): still unknown, still kept.
        let owner = std::fs::File::open(&garbage).unwrap();
        assert!(crate::os::try_lock(&owner, true).unwrap());
        assert!(matches!(
            remove_if_stale(&garbage).unwrap(),
            Removal::Unknown(_)
        ));
        drop(owner);
        assert_eq!(
            std::fs::read(&garbage).unwrap(),
            b"some other program's state\n"
        );
        assert!(empty.exists());
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
