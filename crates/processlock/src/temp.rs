//! Temporary files: where a record is written in full before it is linked at the lock path, and
//! the clean-up of ones left by acquirers that died half-way.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::os;
use crate::os::DirFacts;
use crate::perms::check_dir_once;

/// A temp file older than this with nobody locking it was abandoned: its creator locks it within
/// microseconds of creating it.
const ORPHAN_AGE: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `.backend.short.lock.51172.3.tmp`: hidden, so listings skip it, and naming its creator, so an
/// orphan can be recognised.
fn temp_name(lock_file_name: &str, pid: u32, n: u64) -> String {
    format!(".{lock_file_name}.{pid}.{n}.tmp")
}

/// Parses `temp_name`'s output back into (lock file name, pid).
fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, _n) = inner.rsplit_once('.')?;
    let (lock, pid) = rest.rsplit_once('.')?;
    lock.ends_with(".lock").then_some(())?;
    Some((lock, pid.parse().ok()?))
}

/// A fresh, exclusively locked temp file holding `content`.
pub struct Temp {
    pub path: PathBuf,
    pub file: File,
}

impl Temp {
    /// Refuses (`Error::UnsafeDir`) a directory where others could remove our files, before
    /// anything is created in it. The directory must exist.
    pub fn create(dir: &Path, lock_file_name: &str, content: &[u8]) -> Result<Temp> {
        let facts = checked_dir(dir)?;
        Self::create_in_checked(dir, lock_file_name, content, facts)
    }

    /// `create` in a directory that has passed `check_dir_once` with `facts`.
    pub(crate) fn create_in_checked(
        dir: &Path,
        lock_file_name: &str,
        content: &[u8],
        facts: DirFacts,
    ) -> Result<Temp> {
        let pid = os::current_pid();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(temp_name(lock_file_name, pid, n));
            let mut file = match os::create_new(&path, facts.file_mode()) {
                Ok(f) => f,
                // Left by an earlier process that had our PID: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("open", &path, e)),
            };
            // A new inode nobody else can know yet: the lock cannot be contended.
            let setup = match os::try_lock(&file, true) {
                Ok(true) => file
                    .write_all(content)
                    .map_err(|e| Error::io("write", &path, e)),
                Ok(false) => Err(Error::io("flock", &path, io::ErrorKind::WouldBlock.into())),
                // Named by the directory: the temp file is removed below, its file system stays.
                Err(e) => Err(Error::flock(dir, e)),
            };
            return match setup {
                Ok(()) => Ok(Temp { path, file }),
                Err(e) => {
                    let _ = os::remove(&path);
                    Err(e)
                }
            };
        }
    }

    /// Removes the temp name. The inode lives on if it was linked at the lock path.
    pub fn discard(self) -> File {
        let _ = os::remove(&self.path);
        self.file
    }
}

/// The facts of an existing directory that passed its check (`check_dir_once`); a directory that
/// cannot be looked at is not used.
pub(crate) fn checked_dir(dir: &Path) -> Result<DirFacts> {
    check_dir_once(dir)?.ok_or_else(|| {
        Error::io(
            "stat",
            dir,
            io::Error::new(
                io::ErrorKind::NotFound,
                "the lock directory is missing, or cannot be looked at from / down",
            ),
        )
    })
}

/// Removes temp files in `dir` that their creator abandoned (it died, or nobody has locked the
/// file for `ORPHAN_AGE`), for one lock file name or for all. Returns what it removed.
pub fn sweep_orphan_temps(dir: &Path, lock_file_name: Option<&str>) -> Result<Vec<PathBuf>> {
    let me = os::current_pid();
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io("scandir", dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((lock, pid)) = parse_temp_name(name) else {
            continue;
        };
        if lock_file_name.is_some_and(|want| want != lock) || pid == me {
            continue;
        }
        let path = entry.path();
        if remove_if_orphan(&path, pid).unwrap_or(false) {
            removed.push(path);
        }
    }
    Ok(removed)
}

fn remove_if_orphan(path: &Path, pid: u32) -> io::Result<bool> {
    let file = os::open_existing(path)?;
    if !os::is_regular(&file)? {
        return Ok(false);
    }
    // Judge by creator and age before touching the lock: a live creator locks its new temp
    // file a moment after creating it, and its acquire fails if we hold that lock even briefly.
    let creator_gone = os::pid_state(pid) == os::Pid::Gone;
    let old = file
        .metadata()?
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > ORPHAN_AGE);
    if !(creator_gone || old)
        || !os::try_lock(&file, true)?
        || os::entry(path)? != os::Entry::File(os::file_id(&file)?)
    {
        return Ok(false);
    }
    os::remove(path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_round_trip() {
        let n = temp_name("backend.short.lock", 51172, 3);
        assert_eq!(n, ".backend.short.lock.51172.3.tmp");
        assert_eq!(parse_temp_name(&n), Some(("backend.short.lock", 51172)));
        assert_eq!(parse_temp_name(".x.tmp"), None);
        assert_eq!(parse_temp_name("backend.lock"), None);
        assert_eq!(parse_temp_name(".backend.lock.abc.1.tmp"), None);
    }
}
