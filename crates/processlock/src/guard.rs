//! The removal guard: one lock per lock directory that every remover of a lock file holds from
//! the moment it checks what the lock path names until its unlink is done.
//!
//! A lock file is unlinked by name: `unlink(path)` removes whatever is linked there at that
//! instant, not the inode that was checked a moment before. Release, the takeover of a dead
//! holder's file, `clear` and forced removal all unlink, so without a common lock one of them can
//! check "still the file I hold", lose the CPU while another removes that file and a new holder
//! links its own, and then delete the new holder's file. Under the guard no other remover can
//! unlink anything in the directory, and an acquirer's `link` cannot replace an existing file,
//! so the path keeps naming the checked inode until the guarded unlink
//! (`docs/PROTOCOL.md`: *one remover at a time*).
//!
//! Acquirers do not take the guard: `link` only ever adds a name where there was none.
//!
//! The guard is the file `.processlock.guard` in the lock directory: a dot-file that listings, the
//! orphan sweep and `clear` never take for a lock. It is locked with the same OS lock as lock
//! files, never the directory itself (anyone who can read a directory could lock it and stop
//! every removal). The guard file is never removed: a remover that finds it replaced (someone
//! deleted it by hand) opens the new one.
//!
//! OS locks belong to an open file description, which threads of one process share, so a
//! process-wide mutex per directory orders its own threads first. The descriptor is kept open
//! (for the few directories used last), so a release costs two lock calls and one `lstat` more,
//! not an `open` and a `close` more.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::os::DirFacts;
use crate::os::{self, Entry, FileId};
use crate::temp::checked_dir;

pub(crate) const GUARD_FILE: &str = ".processlock.guard";

/// Removers hold the guard for microseconds. One that waits this long finds a remover that is
/// stopped (SIGSTOP, a debugger) or someone else holding the guard's lock on purpose, and gives
/// up rather than hang: see `RemovalGuard::hold`.
pub(crate) const GUARD_PATIENCE: Duration = Duration::from_secs(3);

/// The guard file of one directory as this process has it open.
#[derive(Default)]
struct DirGuard {
    open: Mutex<Option<(File, FileId)>>,
}

/// How many directories' guards a process keeps open. A service uses one or two lock
/// directories; a process that goes through many (a test suite, a benchmark) must not collect a
/// descriptor for each.
const CACHED_DIRS: usize = 4;

/// The guards this process keeps open (see `dir_guard`).
static GUARDS: Mutex<Vec<(PathBuf, Arc<DirGuard>)>> = Mutex::new(Vec::new());

/// Removes a test's lock directory after closing our cached guard in it. Where an open file
/// cannot be unlinked at once (Windows without POSIX delete semantics: FAT, older systems,
/// Wine), the guard's name would stay until that handle closes and keep the directory non-empty.
#[cfg(test)]
pub(crate) fn remove_test_dir(dir: &Path) -> io::Result<()> {
    let mut cache = GUARDS.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|(d, _)| d != dir);
    drop(cache);
    std::fs::remove_dir_all(dir)
}

/// The guard of `dir`, most recently used first. An evicted guard's descriptor closes when its
/// last user is done; a remover that opens the guard again meanwhile gets a second open file
/// description, whose lock excludes the first one's like another process's would.
fn dir_guard(dir: &Path) -> Arc<DirGuard> {
    let mut cache = GUARDS.lock().unwrap_or_else(|p| p.into_inner());
    // The directory used last, as in a loop of acquire and release: nothing to move.
    if let Some((_, guard)) = cache.first().filter(|(d, _)| d == dir) {
        return Arc::clone(guard);
    }
    let guard = match cache.iter().position(|(d, _)| d == dir) {
        Some(i) => cache.remove(i).1,
        None => Arc::default(),
    };
    cache.insert(0, (dir.to_path_buf(), Arc::clone(&guard)));
    cache.truncate(CACHED_DIRS);
    guard
}

/// Makes sure the guard file of `dir` exists, and keeps it open: called when a lock is taken in
/// `dir`, so that the guard is made while the file system still has room for it. Without this a
/// release on a file system that filled up since (no free inode, no free block) could not make
/// it, and would leave its lock file behind. Best effort: an acquire does not need the guard,
/// and the removal that does says why it could not have it. Nothing is done when the guard is
/// already open in this process.
pub(crate) fn prepare(dir: &Path, facts: DirFacts) {
    let guard = dir_guard(dir);
    let mut open = guard.open.lock().unwrap_or_else(|p| p.into_inner());
    if open.is_none() {
        *open = open_guard(&dir.join(GUARD_FILE), facts).ok();
    }
}

/// Runs `remove` while holding the removal guard of `dir`, and only then lets the guard go.
///
/// Fails with `LOCK_IO` without running `remove` when the guard cannot be had within
/// `GUARD_PATIENCE`, or cannot be opened.
pub(crate) fn while_guarded<T>(dir: &Path, remove: impl FnOnce() -> Result<T>) -> Result<T> {
    let guard = dir_guard(dir);
    // The mutex is held only around one guarded removal, so a poisoned one is still consistent;
    // the cached descriptor is checked before every use anyway.
    let mut open = guard.open.lock().unwrap_or_else(|p| p.into_inner());
    let path = dir.join(GUARD_FILE);
    let deadline = Instant::now() + GUARD_PATIENCE;
    let mut pause = Duration::from_micros(20);
    loop {
        if open.is_none() {
            // Opened (and perhaps made) only in a directory that passed its check.
            *open = Some(open_guard(&path, checked_dir(dir)?)?);
        }
        let (file, id) = open.as_ref().expect("just opened");
        if os::try_lock(file, true).map_err(|e| Error::io("flock", &path, e))? {
            // Locked: but is it still the guard everyone else locks?
            if os::entry(&path).map_err(|e| Error::io("lstat", &path, e))? == Entry::File(*id) {
                let result = remove();
                let _ = os::unlock(file);
                return result;
            }
            let _ = os::unlock(file);
            *open = None;
            continue;
        }
        if Instant::now() >= deadline {
            let (file, _) = open.as_ref().expect("just opened");
            return Err(Error::io(
                "flock",
                &path,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} has held this lock directory's removal guard for more than {} s: a stopped process, or one that locks the guard file on purpose (it is {}, and whoever can open it can hold it); stop that process, and removals go on",
                        holders_text(file),
                        GUARD_PATIENCE.as_secs(),
                        file_owner_text(file)
                    ),
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

fn open_guard(path: &Path, facts: DirFacts) -> Result<(File, FileId)> {
    let file = os::open_guard(path, facts).map_err(|e| Error::io("open", path, e))?;
    if !os::is_regular(&file).map_err(|e| Error::io("fstat", path, e))? {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
            found: os::entry(path).unwrap_or(Entry::Other).describe(),
        });
    }
    let id = os::file_id(&file).map_err(|e| Error::io("fstat", path, e))?;
    Ok((file, id))
}

/// `PID 4321 (uid 1001)`, or `another process` where the system does not tell.
pub(crate) fn holders_text(file: &File) -> String {
    let pids = os::file_id(file).map(os::lock_holders).unwrap_or_default();
    let mine = os::current_pid();
    let named: Vec<String> = pids
        .into_iter()
        .filter(|pid| *pid != mine)
        .map(|pid| match process_uid(pid) {
            Some(uid) => format!("PID {pid} (uid {uid})"),
            None => format!("PID {pid}"),
        })
        .collect();
    if named.is_empty() {
        "another process".to_string()
    } else {
        named.join(", ")
    }
}

#[cfg(unix)]
fn process_uid(pid: u32) -> Option<u32> {
    os::process_uids(pid).map(|(_, effective)| effective)
}

#[cfg(not(unix))]
fn process_uid(_pid: u32) -> Option<u32> {
    None
}

/// `owned by uid 0, group 0, mode 0640`: who else can open the file.
#[cfg(unix)]
pub(crate) fn file_owner_text(file: &File) -> String {
    match os::owner(file) {
        Ok(o) => format!(
            "owned by uid {}, group {}, mode {:04o}",
            o.uid, o.gid, o.mode
        ),
        Err(_) => "whose owner could not be read".to_string(),
    }
}

#[cfg(not(unix))]
pub(crate) fn file_owner_text(_file: &File) -> String {
    "on a file system that tells no owner here".to_string()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pl-guard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Threads of one process exclude each other (they share the cached descriptor, whose OS
    /// lock alone would let them all in), also while other directories push it out of the cache.
    #[test]
    fn threads_take_turns_even_when_the_cache_turns_over() {
        let dir = scratch("threads");
        let others: Vec<PathBuf> = (0..CACHED_DIRS + 2)
            .map(|i| {
                let d = dir.join(format!("other-{i}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            })
            .collect();
        let inside = Arc::new(AtomicU32::new(0));
        let overlaps = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (dir, others) = (dir.clone(), others.clone());
                let (inside, overlaps) = (Arc::clone(&inside), Arc::clone(&overlaps));
                std::thread::spawn(move || {
                    for i in 0..300 {
                        while_guarded(&dir, || {
                            if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        if (i + t) % 7 == 0 {
                            while_guarded(&others[(i + t) % others.len()], || Ok(())).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        // One guard file per directory, readable by the group at most.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(GUARD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o027, 0, "{mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A guard file replaced by hand is noticed: the next remover locks the new one (and so
    /// waits for whoever holds it), not the old one it still has open.
    #[test]
    fn a_replaced_guard_file_is_opened_again() {
        let dir = scratch("replaced");
        while_guarded(&dir, || Ok(())).unwrap();
        std::fs::remove_file(dir.join(GUARD_FILE)).unwrap();
        std::fs::write(dir.join(GUARD_FILE), "").unwrap();
        // Another open file description holds the new guard's lock.
        let rival = std::fs::File::open(dir.join(GUARD_FILE)).unwrap();
        assert!(os::try_lock(&rival, true).unwrap());
        let let_go = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&let_go);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::SeqCst);
            drop(rival);
        });
        let entered_after = while_guarded(&dir, || Ok(let_go.load(Ordering::SeqCst))).unwrap();
        releaser.join().unwrap();
        assert!(entered_after, "got in while another holder had the guard");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
