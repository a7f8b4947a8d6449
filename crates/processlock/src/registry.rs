//! The locks this process holds, by path. It makes `acquire` idempotent inside one process
//! (a second open file description would conflict with our own lock) and lets every lock be
//! released at exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::Result;
use crate::protocol::{acquire, Event, HeldLock, LockTarget};
use crate::record::Record;

#[derive(Default)]
pub struct Registry {
    held: Mutex<Option<HashMap<PathBuf, HeldLock>>>,
}

/// The result of `Registry::acquire`.
#[derive(Debug)]
pub struct Taken {
    pub record: Record,
    pub events: Vec<Event>,
    /// This process already held the lock; nothing was done.
    pub already_held: bool,
}

impl Registry {
    pub const fn new() -> Self {
        Self {
            held: Mutex::new(None),
        }
    }

    fn map(&self) -> MutexGuard<'_, Option<HashMap<PathBuf, HeldLock>>> {
        // A panic while holding the guard cannot leave the map half-updated (inserts and
        // removes are single calls), so a poisoned map is still a correct map.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn acquire(&self, target: &LockTarget, process_name: Option<&str>) -> Result<Taken> {
        let mut map = self.map();
        let map = map.get_or_insert_with(HashMap::new);
        if let Some(held) = map.get(&target.path) {
            return Ok(Taken {
                record: held.record().clone(),
                events: Vec::new(),
                already_held: true,
            });
        }
        let acquired = acquire(target, process_name)?;
        let record = acquired.lock.record().clone();
        map.insert(target.path.clone(), acquired.lock);
        Ok(Taken {
            record,
            events: acquired.events,
            already_held: false,
        })
    }

    pub fn get(&self, path: &Path) -> Option<Record> {
        self.map().as_ref()?.get(path).map(|l| l.record().clone())
    }

    pub fn holds(&self, path: &Path) -> bool {
        self.map().as_ref().is_some_and(|m| m.contains_key(path))
    }

    /// `None`: this process does not hold it. `Some(removed)`: released; `removed` tells whether
    /// the file was still ours to remove.
    pub fn release(&self, path: &Path) -> Option<(Record, Result<bool>)> {
        let lock = self.map().as_mut()?.remove(path)?;
        let record = lock.record().clone();
        Some((record, lock.release()))
    }

    /// Drops our hold without removing anything (after a forced removal of our own file).
    pub fn forget(&self, path: &Path) -> bool {
        self.map().as_mut().and_then(|m| m.remove(path)).is_some()
    }

    pub fn release_all(&self) -> Vec<(Record, Result<bool>)> {
        let locks: Vec<HeldLock> = match self.map().as_mut() {
            Some(m) => m.drain().map(|(_, l)| l).collect(),
            None => return Vec::new(),
        };
        locks
            .into_iter()
            .map(|l| {
                let record = l.record().clone();
                (record, l.release())
            })
            .collect()
    }

    /// For exit hooks: never blocks. If another thread is inside the registry at exit, the
    /// kernel still drops our locks when the process dies and the files are taken over as stale.
    pub fn try_release_all(&self) -> usize {
        let Ok(mut guard) = self.held.try_lock() else {
            return 0;
        };
        let locks: Vec<HeldLock> = match guard.as_mut() {
            Some(m) => m.drain().map(|(_, l)| l).collect(),
            None => return 0,
        };
        drop(guard);
        let n = locks.len();
        for l in locks {
            let _ = l.release();
        }
        n
    }
}
