//! Lock files behind the backend seam (`backend.rs`): the protocol of `protocol.rs` in one
//! directory, the waits of `wait.rs`, and a watcher that tells of a lost lock file.
//!
//! "We hold it" always means the lock path still names the inode we hold: after the file was
//! removed by force or replaced, or its directory moved, the hold is lost.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::backend::{Backend, Holding, Listed, Listing, LossHook, LossNotice, Released, Wait};
use crate::error::{Error, Result};
use crate::fencing::token_of;
use crate::holds::{Hold, HoldId, Holder, Holds, Taken};
use crate::list::{list_locks, lock_status, LockStatus};
use crate::name::LockName;
use crate::protocol::{acquire, force_remove, inspect, Acquired, HeldLock, Inspection, LockTarget};
use crate::record::Record;
use crate::report;
use crate::wait::{acquire_wait, wait_for};

/// What this process holds in lock files, whatever their directory.
static HOLDS: Holds<HeldLock> = Holds::new();

/// How often the loss watcher looks at the files it watches (one `lstat` each).
const WATCH_EVERY: Duration = Duration::from_millis(200);

impl Hold for HeldLock {
    fn record(&self) -> &Record {
        HeldLock::record(self)
    }

    fn fencing_token(&self) -> Option<&str> {
        HeldLock::fencing_token(self)
    }

    fn is_lost(&self) -> bool {
        !self.still_linked()
    }
}

/// The lock files of one directory (given as its real path: the table knows a lock by its path,
/// so the same directory reached through a symlink or `..` must be the same lock).
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn target(&self, name: &LockName) -> LockTarget {
        LockTarget::new(&self.dir, name.clone())
    }

    /// Lets go of what this process holds in lock files: the holds `holder` was the last
    /// holder of (all of them for `None`: the process ends), each with its name and how it
    /// ended. Locks handed down by `processlock run` stay with its command, without a word.
    /// At the end of the process another thread may keep the table busy (a wait stuck on a
    /// stopped remover's guard): after `patience`, nothing is let go of here, and the kernel
    /// drops the locks when the process is gone.
    pub fn let_go_all(
        holder: Option<Holder>,
        patience: Duration,
    ) -> Vec<(LockTarget, Released<Error>)> {
        let holds = match holder {
            Some(h) => HOLDS.release_holder(h),
            None => HOLDS.drain_within(patience),
        };
        holds
            .into_iter()
            .filter(|(_, lock)| !lock.kept_by_run())
            .map(|(_, lock)| (lock.target().clone(), let_go(lock)))
            .collect()
    }
}

fn place_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn listed(l: LockStatus) -> Listed {
    Listed {
        place: place_of(&l.path),
        name: l.name,
        state: l.state,
        holding: l.record.map(|record| Holding {
            record,
            fencing_token: l.fencing_token,
        }),
        problem: l.problem,
    }
}

fn let_go(lock: HeldLock) -> Released<Error> {
    if lock.kept_by_run() {
        // The lock stays with `processlock run`'s command: nothing was released.
        return Released::KeptByOthers {
            run_pid: None,
            running: false,
        };
    }
    let pid = lock.record().pid;
    match lock.release() {
        Ok(removed) => Released::Released { pid, removed },
        Err(error) => Released::Failed { pid, error },
    }
}

fn taken_lines(acquired: Acquired, path: &Path) -> (HeldLock, Vec<String>) {
    let lines = acquired
        .events
        .iter()
        .map(|ev| report::event(ev, path))
        .collect();
    (acquired.lock, lines)
}

impl Backend for FileBackend {
    type Hold = HeldLock;
    type Error = Error;
    const KIND: &'static str = "file";
    const AFTER_FAILED_RELEASE: &'static str =
        "the lock is free, and its file stays until the next start takes it over as stale";

    fn holds(&self) -> &'static Holds<HeldLock> {
        &HOLDS
    }

    fn place(&self, name: &LockName) -> Result<String> {
        Ok(place_of(&self.dir.join(name.file_name())))
    }

    fn take(
        &self,
        name: &LockName,
        process_name: Option<&str>,
        wait: Option<&Wait>,
    ) -> Result<(HeldLock, Vec<String>)> {
        let target = self.target(name);
        let acquired = match wait {
            None => acquire(&target, process_name)?,
            Some(w) => acquire_wait(&target, process_name, w.deadline, w.cancel)?,
        };
        Ok(taken_lines(acquired, &target.path))
    }

    /// Joins or takes the lock with the table locked (an attempt is quick), so that two threads
    /// of this process join one hold; a wait tries that again each time the holder lets go.
    fn acquire(
        &self,
        name: &LockName,
        place: &str,
        process_name: Option<&str>,
        holder: Holder,
        wait: Option<&Wait>,
    ) -> Result<Taken> {
        let target = self.target(name);
        let attempt = || {
            HOLDS.acquire_with(place, holder, || {
                acquire(&target, process_name).map(|a| taken_lines(a, &target.path))
            })
        };
        match wait {
            None => attempt(),
            Some(w) => wait_for(&target, w.deadline, w.cancel, attempt),
        }
    }

    fn let_go(&self, _name: &LockName, hold: HeldLock) -> Released<Error> {
        let_go(hold)
    }

    fn inspect(&self, name: &LockName) -> Result<Option<Holding>> {
        let path = self.target(name).path;
        if let Some(ours) = HOLDS.current(&place_of(&path)) {
            return Ok(Some(Holding {
                record: ours.record,
                fencing_token: ours.fencing_token,
            }));
        }
        Ok(match inspect(&path)? {
            Inspection::Held(r) | Inspection::HeldUnlocked(r, _) if r.pid != 0 => Some(Holding {
                fencing_token: token_of(&path, &r).map(|t| t.to_string()),
                record: r,
            }),
            _ => None,
        })
    }

    /// Our own lock is removed by its holder, which keeps its OS lock until the file is gone:
    /// removing it by name after letting go could delete the file of a waiter that took the lock
    /// in between. Every holder in this process loses it.
    fn force_remove(&self, name: &LockName) -> Result<bool> {
        let path = self.target(name).path;
        if let Some(lock) = HOLDS.take(&place_of(&path)) {
            if lock.release()? {
                return Ok(true);
            }
        }
        force_remove(&path)
    }

    fn list(&self) -> Result<Listing> {
        let locks = list_locks(&self.dir)?.into_iter().map(listed).collect();
        Ok(Listing {
            scope: place_of(&self.dir),
            locks,
        })
    }

    /// What the lock file says, also when nobody holds it: stale, or not a lock record.
    fn status(&self, name: &LockName) -> Result<Option<Listed>> {
        let path = self.target(name).path;
        Ok(lock_status(path, Some(name.clone()))?.map(listed))
    }

    /// Whether this process holds the file at the lock path now (one `lstat`), whichever of its
    /// holders asks: a lock file is the process's, and `isLockHeld` has always said so.
    fn is_held_by(&self, place: &str, _holder: Holder) -> bool {
        HOLDS.holds(place)
    }

    fn watch_loss(&self, place: &str, id: HoldId, hook: LossHook<Error>) {
        watch(place, id, hook);
    }

    fn conflict_lines(&self, error: &Error, name: &LockName) -> Vec<String> {
        match error {
            Error::Conflict(c) => report::conflict(name, &c.holder, &c.path),
            _ => Vec::new(),
        }
    }
}

/// A hold watched for its loss.
struct Watched {
    place: String,
    id: HoldId,
    hook: LossHook<Error>,
}

static WATCHED: Mutex<Option<Vec<Watched>>> = Mutex::new(None);

fn watched() -> MutexGuard<'static, Option<Vec<Watched>>> {
    WATCHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches hold `id` of `place` until it is let go of or lost. The watcher thread exists only
/// while something is watched.
fn watch(place: &str, id: HoldId, hook: LossHook<Error>) {
    let mut list = watched();
    let items = list.get_or_insert_with(Vec::new);
    if items.iter().any(|w| w.id == id) {
        return;
    }
    let start = items.is_empty();
    items.push(Watched {
        place: place.to_string(),
        id,
        hook,
    });
    drop(list);
    if start {
        let spawned = std::thread::Builder::new()
            .name("processlock-watch".into())
            .spawn(watch_files);
        if spawned.is_err() {
            // Without a thread nothing can be watched: forget it rather than pretend.
            *watched() = None;
        }
    }
}

fn watch_files() {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let (lost, done) = {
            let mut list = watched();
            let Some(items) = list.as_mut() else { return };
            let mut lost = Vec::new();
            let mut kept = Vec::new();
            for w in items.drain(..) {
                if !HOLDS.knows(&w.place, w.id) {
                    continue;
                }
                if HOLDS.current(&w.place).is_some_and(|t| t.id == w.id) {
                    kept.push(w);
                } else {
                    lost.push(w);
                }
            }
            *items = kept;
            let done = items.is_empty();
            if done {
                // A watch added from now on starts a thread of its own.
                *list = None;
            }
            (lost, done)
        };
        for w in lost {
            let reason = format!(
                "its lock file {} was removed or replaced by someone else",
                w.place
            );
            let name = Path::new(&w.place)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(LockName::from_file_name);
            let pid = HOLDS.record_of(&w.place, w.id).map_or(0, |r| r.pid);
            let lock = name.map_or_else(|| w.place.clone(), |n| n.display());
            (w.hook)(LossNotice {
                place: w.place,
                id: w.id,
                pid,
                reason: reason.clone(),
                error: Error::Lost { lock, reason },
            });
        }
        if done {
            return;
        }
    }
}
