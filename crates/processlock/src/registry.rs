//! The locks this process holds, by path: the one place that knows what this process owns.
//!
//! It makes `acquire` idempotent inside one process (a second open file description would
//! conflict with our own lock) and lets every lock be released at exit.
//!
//! Several holders inside one process may take the same lock (the addon: each JavaScript module
//! instance, one per worker thread, is a holder). The process owns one lock file for all of
//! them; it is released when the last holder lets go, or when the process ends.
//!
//! "We hold it" always means the lock path still names the inode we hold: after the file was
//! removed by force or replaced, or its directory moved, the hold is not counted as ours.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::protocol::{acquire, Event, HeldLock, LockTarget};
use crate::record::Record;

/// Who takes a lock on the process's behalf: any number the caller chooses, one per party that
/// must let go on its own (the addon uses one per JavaScript module instance).
pub type Holder = u64;

struct Entry {
    lock: HeldLock,
    /// Never empty: the entry goes when its last holder does.
    holders: Vec<Holder>,
}

type Map = HashMap<PathBuf, Entry>;

#[derive(Default)]
pub struct Registry {
    held: Mutex<Option<Map>>,
}

/// The result of `Registry::acquire`.
#[derive(Debug)]
pub struct Taken {
    pub record: Record,
    pub events: Vec<Event>,
    /// This holder already held the lock; nothing was done.
    pub already_held: bool,
    /// A lock file was taken now (not only joined by another holder of this process).
    pub file_taken: bool,
}

/// A lock let go of with its last holder (`Registry::release_holder`, `release_all`): where it
/// was, who held it, and whether its file was removed (`Ok(true)`) or the path no longer named it.
#[derive(Debug)]
pub struct Ended {
    pub target: LockTarget,
    pub record: Record,
    pub result: Result<bool>,
}

impl Ended {
    fn of(lock: HeldLock) -> Self {
        let target = lock.target().clone();
        let record = lock.record().clone();
        Self {
            target,
            record,
            result: lock.release(),
        }
    }
}

/// The result of `Registry::release`.
#[derive(Debug)]
pub enum Release {
    /// This holder did not hold the lock.
    NotHeld,
    /// This holder let go, but others still hold it: in this process, or the command of the
    /// `processlock run` it was claimed from. The lock and its file stay.
    KeptByOthers,
    /// The last holder let go: the lock was released. `Ok(true)`: its file was removed (it was
    /// still ours).
    Released(Box<Record>, Result<bool>),
}

impl Registry {
    pub const fn new() -> Self {
        Self {
            held: Mutex::new(None),
        }
    }

    fn map(&self) -> MutexGuard<'_, Option<Map>> {
        // A panic while holding the guard cannot leave the map half-updated (inserts and
        // removes are single calls), so a poisoned map is still a correct map.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock for `holder`, or joins this process's hold of it. A hold whose file is no
    /// longer at the path is dropped first and the lock taken anew: it may then conflict with
    /// whoever holds the path now.
    pub fn acquire(
        &self,
        target: &LockTarget,
        process_name: Option<&str>,
        holder: Holder,
    ) -> Result<Taken> {
        let mut map = self.map();
        let map = map.get_or_insert_with(HashMap::new);
        let mut holders = Vec::new();
        if let Some(entry) = map.get_mut(&target.path) {
            if entry.lock.still_linked() {
                let already_held = entry.holders.contains(&holder);
                if !already_held {
                    entry.holders.push(holder);
                }
                return Ok(Taken {
                    record: entry.lock.record().clone(),
                    events: Vec::new(),
                    already_held,
                    file_taken: false,
                });
            }
            // Lost: closing it touches nothing at the path, which names another file or none.
            // The other holders of this process keep their claim on the lock taken anew.
            let lost = map.remove(&target.path).expect("just found");
            holders = lost.holders;
            holders.retain(|h| *h != holder);
        }
        let acquired = acquire(target, process_name)?;
        let record = acquired.lock.record().clone();
        holders.push(holder);
        map.insert(
            target.path.clone(),
            Entry {
                lock: acquired.lock,
                holders,
            },
        );
        Ok(Taken {
            record,
            events: acquired.events,
            already_held: false,
            file_taken: true,
        })
    }

    /// The record of our lock at `path`, if the path still names it.
    pub fn get(&self, path: &Path) -> Option<Record> {
        let map = self.map();
        let entry = map.as_ref()?.get(path)?;
        entry
            .lock
            .still_linked()
            .then(|| entry.lock.record().clone())
    }

    /// Whether this process holds the lock file that is at `path` now.
    pub fn holds(&self, path: &Path) -> bool {
        self.map()
            .as_ref()
            .and_then(|m| m.get(path))
            .is_some_and(|e| e.lock.still_linked())
    }

    /// Whether `holder` has a hold on `path` (whether or not its file is still there).
    pub fn is_holder(&self, path: &Path, holder: Holder) -> bool {
        self.map()
            .as_ref()
            .and_then(|m| m.get(path))
            .is_some_and(|e| e.holders.contains(&holder))
    }

    /// Lets go of `holder`'s hold; the lock itself goes with its last holder.
    pub fn release(&self, path: &Path, holder: Holder) -> Release {
        let mut guard = self.map();
        let Some(map) = guard.as_mut() else {
            return Release::NotHeld;
        };
        let Some(entry) = map.get_mut(path) else {
            return Release::NotHeld;
        };
        let before = entry.holders.len();
        entry.holders.retain(|h| *h != holder);
        if entry.holders.len() == before {
            return Release::NotHeld;
        }
        if !entry.holders.is_empty() {
            return Release::KeptByOthers;
        }
        let lock = map.remove(path).expect("just found").lock;
        drop(guard);
        if lock.kept_by_run() {
            // The lock stays with `processlock run`'s command: nothing was released.
            return Release::KeptByOthers;
        }
        let record = Box::new(lock.record().clone());
        Release::Released(record, lock.release())
    }

    /// Lets go of every hold of `holder` (it ended); the locks it was the last holder of are
    /// released.
    pub fn release_holder(&self, holder: Holder) -> Vec<Ended> {
        let mut ended = Vec::new();
        if let Some(map) = self.map().as_mut() {
            let paths: Vec<PathBuf> = map
                .iter_mut()
                .filter_map(|(path, entry)| {
                    entry.holders.retain(|h| *h != holder);
                    entry.holders.is_empty().then(|| path.clone())
                })
                .collect();
            ended.extend(paths.iter().filter_map(|p| map.remove(p)).map(|e| e.lock));
        }
        released(ended)
    }

    /// Takes the lock at `path` out of the registry whoever holds it, for a forced removal:
    /// the caller removes the file while still holding its lock (`HeldLock::release`), so that
    /// nobody can have taken the lock in between.
    pub fn take(&self, path: &Path) -> Option<HeldLock> {
        Some(self.map().as_mut()?.remove(path)?.lock)
    }

    pub fn release_all(&self) -> Vec<Ended> {
        let locks: Vec<HeldLock> = match self.map().as_mut() {
            Some(m) => m.drain().map(|(_, e)| e.lock).collect(),
            None => return Vec::new(),
        };
        released(locks)
    }

    /// `release_all` for the end of the process, which must never hang: when another thread
    /// keeps the registry busy for longer than `patience` (a wait thread stuck on a stopped
    /// remover's guard), nothing is released, and the kernel drops the locks when the process
    /// is gone; the next acquirer takes the files over as stale.
    pub fn release_all_within(&self, patience: Duration) -> Vec<Ended> {
        let deadline = Instant::now() + patience;
        let mut guard = loop {
            match self.held.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => return Vec::new(),
            }
        };
        let locks: Vec<HeldLock> = match guard.as_mut() {
            Some(m) => m.drain().map(|(_, e)| e.lock).collect(),
            None => return Vec::new(),
        };
        drop(guard);
        released(locks)
    }
}

/// Releases `locks`; how each one that was released ended. A hold claimed from `processlock run`
/// is let go without a word: the lock stays with the command.
fn released(locks: Vec<HeldLock>) -> Vec<Ended> {
    locks
        .into_iter()
        .filter_map(|l| {
            let kept = l.kept_by_run();
            let ended = Ended::of(l);
            (!kept).then_some(ended)
        })
        .collect()
}
