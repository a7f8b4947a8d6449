//! Taking a lock on behalf of another process: the `processlock run` command's child.
//!
//! The record should name the process that holds the lock for as long as it lives (the wrapped
//! command), so that `check` and conflict messages point at it, even after the wrapper itself was
//! killed. That PID exists only once the child is forked, while the descriptor the child inherits
//! must exist before the fork. So the lock is taken in two steps:
//!
//! 1. `PendingLock::create` makes the fresh, exclusively locked temp file of the protocol, still
//!    empty and not linked at the lock path: nobody can mistake it for a lock.
//! 2. The caller forks a child that inherits a duplicate of `PendingLock::file` and waits.
//! 3. `PendingLock::commit` writes the record naming the child (`record_for`) and links the file
//!    at the lock path exactly as `acquire` does (same take-over of dead holders' files). The
//!    record is complete before the link, so readers never see it half-written.
//!
//! Whatever happens to the caller afterwards, the child's descriptor keeps the lock held.

use std::fs::File;

use crate::dir::ensure_dir;
use crate::error::{Error, Result};
use crate::protocol::{adopt_linked, link_or_take_over, Acquired, LockTarget};
use crate::record::Record;
use crate::temp::Temp;

/// A lock file made and locked but not yet visible at the lock path. Dropping it removes the
/// temp file (the inode lives on while an inherited descriptor is open).
pub struct PendingLock {
    target: LockTarget,
    temp: Option<Temp>,
}

impl PendingLock {
    /// Creates the lock directory if needed and a fresh, locked, empty temp file in it.
    pub fn create(target: &LockTarget) -> Result<Self> {
        ensure_dir(&target.dir)?;
        let temp = Temp::create(&target.dir, &target.name.file_name(), b"")?;
        Ok(Self {
            target: target.clone(),
            temp: Some(temp),
        })
    }

    pub fn target(&self) -> &LockTarget {
        &self.target
    }

    /// The locked file. Every process that holds a duplicate of this descriptor (inherited across
    /// `fork` and `exec`) shares the lock: it is released only when the last one is closed.
    pub fn file(&self) -> &File {
        &self.temp.as_ref().expect("present until commit").file
    }

    /// Writes `record` and links the file at the lock path. On `Error::Conflict` nothing is
    /// visible at the lock path and the temp file is gone; the inode dies with its descriptors.
    pub fn commit(mut self, record: Record) -> Result<Acquired> {
        // On failure, dropping `self` removes the temp file.
        self.try_commit(record)
    }

    /// Like `commit`, but a failed attempt keeps the pending lock as it was (the temp file and
    /// its lock, which a child may share), so that the caller can wait for the holder and try
    /// again, e.g. through `wait_for`. After a success the pending lock is spent: `file` panics.
    pub fn try_commit(&mut self, record: Record) -> Result<Acquired> {
        let temp = self.temp.as_ref().expect("present until committed");
        write_record(&temp.file, record.to_json().as_bytes())
            .map_err(|e| Error::io("write", &temp.path, e))?;
        let mut events = Vec::new();
        link_or_take_over(&self.target, &temp.path, &mut events)?;
        let temp = self.temp.take().expect("present until committed");
        adopt_linked(&self.target, temp, record, events)
    }
}

impl Drop for PendingLock {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            drop(temp.discard());
        }
    }
}

/// Writes the whole record from offset 0, without using the descriptor's shared cursor (a child
/// may share it), and cuts off what an earlier, longer attempt left after it.
fn write_record(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(bytes, 0)?;
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < bytes.len() {
            match file.seek_write(&bytes[done..], done as u64)? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => done += n,
            }
        }
    }
    file.set_len(bytes.len() as u64)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::liveness::start_token;
    use crate::protocol::{inspect, record_for, Inspection};
    use crate::record::{parse_record, Parsed};
    use crate::test_support::target;

    #[test]
    fn nothing_is_visible_until_commit_and_the_record_names_the_given_pid() {
        let t = target("handoff-commit");
        let pending = PendingLock::create(&t).unwrap();
        assert_eq!(pending.target().path, t.path);
        assert_eq!(inspect(&t.path).unwrap(), Inspection::Absent);
        let me = std::process::id();
        let record = record_for(&t, me, Some("svc"));
        assert_eq!(record.start_token, start_token(me));
        let acquired = pending.commit(record.clone()).unwrap();
        assert_eq!(inspect(&t.path).unwrap(), Inspection::Held(record.clone()));
        assert_eq!(
            parse_record(&std::fs::read(&t.path).unwrap()),
            Parsed::Ours(record)
        );
        // The temp name is gone; only the lock file is left.
        assert_eq!(lock_dir_entries(&t.dir), [t.name.file_name().as_str()]);
        assert!(acquired.lock.release().unwrap());
        std::fs::remove_dir_all(&t.dir).unwrap();
    }

    /// What a lock directory holds besides its removal guard (made by the first acquire there)
    /// and the generation files of its locks (kept on purpose: `fencing.rs`).
    fn lock_dir_entries(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != crate::guard::GUARD_FILE && !crate::fencing::is_generation_file(n))
            .collect()
    }

    #[test]
    fn a_commit_against_a_live_holder_conflicts_and_leaves_nothing() {
        let t = target("handoff-conflict");
        let first = crate::protocol::acquire(&t, None).unwrap();
        let pending = PendingLock::create(&t).unwrap();
        let err = pending
            .commit(record_for(&t, std::process::id(), None))
            .unwrap_err();
        assert_eq!(err.code(), "LOCK_CONFLICT");
        let names = lock_dir_entries(&t.dir);
        assert_eq!(names.len(), 1, "only the holder's file: {names:?}");
        assert!(first.lock.release().unwrap());
        std::fs::remove_dir_all(&t.dir).unwrap();
    }

    #[test]
    fn a_failed_try_keeps_the_pending_lock_for_the_next_one() {
        let t = target("handoff-retry");
        let first = crate::protocol::acquire(&t, None).unwrap();
        let mut pending = PendingLock::create(&t).unwrap();
        let me = std::process::id();
        let mut long = record_for(&t, me, Some(&"x".repeat(300)));
        long.started = "2000-01-01T00:00:00.000Z".into();
        let err = pending.try_commit(long).unwrap_err();
        assert_eq!(err.code(), "LOCK_CONFLICT");
        // Still there and still locked by us: the temp file and the holder's file.
        assert_eq!(lock_dir_entries(&t.dir).len(), 2);
        assert!(first.lock.release().unwrap());
        let short = record_for(&t, me, Some("svc"));
        let acquired = pending.try_commit(short.clone()).unwrap();
        // The shorter record replaced the longer one entirely.
        assert_eq!(
            parse_record(&std::fs::read(&t.path).unwrap()),
            Parsed::Ours(short)
        );
        drop(pending);
        // Only the lock file.
        assert_eq!(lock_dir_entries(&t.dir).len(), 1);
        assert!(acquired.lock.release().unwrap());
        std::fs::remove_dir_all(&t.dir).unwrap();
    }

    #[test]
    fn dropping_an_uncommitted_lock_removes_its_temp_file() {
        let t = target("handoff-drop");
        drop(PendingLock::create(&t).unwrap());
        assert_eq!(std::fs::read_dir(&t.dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&t.dir).unwrap();
    }
}
