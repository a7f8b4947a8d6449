//! Who may change the lock directory.
//!
//! A lock is only as safe as the directory that holds its file: whoever may delete entries in
//! it can remove a running holder's file and let a second instance start beside it. So the
//! directories we create give no write access to group or others, and a directory that lets
//! other users delete files in it is refused before anything is created there:
//!
//! * writable by others without the sticky bit (with it, as in `/tmp`, users may delete only
//!   their own files);
//! * owned by a user other than the one running this process and other than root. This holds
//!   for root too: a directory owned by a service account lets that account remove root's lock
//!   files, so root is refused there as well (run as the owner, or chown the directory).
//!
//! Only the lock directory itself is looked at, not its parents, and only once per directory and
//! process (a later `chmod` is not noticed): the check must cost nothing per acquire.

use std::path::Path;

use crate::error::Result;
#[cfg(unix)]
use crate::error::{DirProblem, Error};

/// The mode of the directories we create (parents included), before the umask.
#[cfg(unix)]
pub(crate) const DIR_MODE: u32 = 0o750;

/// Refuses a lock directory that lets other users delete files in it (`Error::UnsafeDir`).
/// A missing directory (or one that cannot be looked at) passes: creating files in it fails
/// with its own, clearer error.
#[cfg(unix)]
pub fn check_dir(dir: &Path) -> Result<()> {
    match examine(dir) {
        Found::Unsafe(why) => Err(Error::UnsafeDir {
            path: dir.to_path_buf(),
            why,
        }),
        Found::Safe | Found::Unknown => Ok(()),
    }
}

/// `check_dir`, remembered per directory for the life of the process once it passed.
#[cfg(unix)]
pub(crate) fn check_dir_once(dir: &Path) -> Result<()> {
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::sync::Mutex;
    static PASSED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut passed = PASSED.lock().unwrap_or_else(|p| p.into_inner());
    let passed = passed.get_or_insert_with(HashSet::new);
    if passed.contains(dir) {
        return Ok(());
    }
    match examine(dir) {
        Found::Safe => {
            passed.insert(dir.to_path_buf());
            Ok(())
        }
        // Not there yet: it is looked at again once it has been created.
        Found::Unknown => Ok(()),
        Found::Unsafe(why) => Err(Error::UnsafeDir {
            path: dir.to_path_buf(),
            why,
        }),
    }
}

#[cfg(unix)]
enum Found {
    Safe,
    Unsafe(DirProblem),
    /// Missing, not a directory, or not visible to us.
    Unknown,
}

#[cfg(unix)]
fn examine(dir: &Path) -> Found {
    use std::os::unix::fs::MetadataExt;
    const OTHERS_WRITE: u32 = 0o002;
    const STICKY: u32 = 0o1000;
    let Ok(m) = std::fs::metadata(dir) else {
        return Found::Unknown;
    };
    if !m.is_dir() {
        return Found::Unknown;
    }
    let mode = m.mode();
    if mode & OTHERS_WRITE != 0 && mode & STICKY == 0 {
        return Found::Unsafe(DirProblem::WritableByOthers { mode });
    }
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me && m.uid() != 0 {
        return Found::Unsafe(DirProblem::OwnedByOther { owner: m.uid(), me });
    }
    Found::Safe
}

/// Windows directories are protected by ACLs, which these rules do not describe: no check.
#[cfg(not(unix))]
pub fn check_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_dir_once(_dir: &Path) -> Result<()> {
    Ok(())
}
