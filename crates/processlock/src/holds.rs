//! The locks this process holds, for one backend: the one place that knows what this process owns.
//!
//! Several holders inside one process may take the same lock (the addon: each JavaScript module
//! instance, one per worker thread, is a holder). The process owns the lock once for all of them
//! (a second lock file descriptor, or a second server session, would conflict with its own
//! lock); it is let go of when the last holder lets go, or when the process ends.
//!
//! One rule for every backend: a holder that asks for a lock this process holds joins the hold,
//! unless the hold is lost (its file removed or replaced, its session ended); a lost hold is
//! dropped, for all its holders, and the lock is taken anew for the one that asks. Each hold
//! has an identity of its own (`HoldId`), which its loss notice carries: a notice about a hold
//! that has since been replaced by a new one names the old one, and is not taken for the new.
//!
//! A wait of this process for a lock is known here too (`waiting`): a hold taken by one holder
//! makes the waits of the others for that lock look again, and join it, instead of waiting for a
//! lock their own process holds.
//!
//! A hold is never dropped while the table is locked: dropping one may wait for a thread (a
//! server lock's), whose loss hook may be waiting for the table.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;

use crate::record::Record;

/// Who takes a lock on the process's behalf: any number the caller chooses, one per party that
/// must let go on its own (the addon uses one per JavaScript module instance).
pub type Holder = u32;

/// One taking of one lock by this process, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(u64);

impl HoldId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// A lock held by this process, as a backend holds it.
pub trait Hold: Send {
    /// The holder record the lock was taken with.
    fn record(&self) -> &Record;
    /// Larger for every new holder of the lock, where the backend hands such tokens out.
    fn fencing_token(&self) -> Option<&str> {
        None
    }
    /// The lock is no longer this hold's (its file was removed or replaced, its session ended).
    fn is_lost(&self) -> bool;
}

/// What an acquisition through the table gave the holder.
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: HoldId,
    pub record: Record,
    pub fencing_token: Option<String>,
    /// This holder already held the lock; nothing was done.
    pub already_held: bool,
    /// The lock was taken now (not only joined by another holder of this process).
    pub newly_taken: bool,
    /// What happened while taking it, as log lines (a stale file removed, a server away).
    pub lines: Vec<String>,
}

/// The result of `Holds::release`.
pub enum Release<H> {
    /// This holder did not hold the lock.
    NotHeld,
    /// This holder let go, but others of this process still hold it.
    KeptByOthers,
    /// The last holder let go: the hold is the caller's to let go of.
    Last(H),
}

struct Entry<H> {
    id: HoldId,
    hold: H,
    /// Never empty: the entry goes when its last holder does.
    holders: Vec<Holder>,
}

impl<H: Hold> Entry<H> {
    fn taken(&self, already_held: bool, newly_taken: bool, lines: Vec<String>) -> Taken {
        Taken {
            id: self.id,
            record: self.hold.record().clone(),
            fencing_token: self.hold.fencing_token().map(str::to_string),
            already_held,
            newly_taken,
            lines,
        }
    }
}

type Map<H> = HashMap<String, Entry<H>>;

/// The holds of one backend, by place (a lock file's path, a server lock's id).
pub struct Holds<H> {
    map: Mutex<Option<Map<H>>>,
    /// Holds taken out of the table because they were lost and the lock was asked for again,
    /// with their holders: the loss notice of such a hold may come only as it is let go of
    /// (after the new hold took its place), and must still reach them.
    retired: Mutex<VecDeque<Retired>>,
    /// The waits in progress for a lock, by place, each with its own number.
    waits: Mutex<Vec<(u64, String, Cancel)>>,
    next_wait: AtomicU64,
}

/// A wait for a lock, known to the table until it is dropped (`Holds::waiting`).
pub struct Waiting<'a> {
    waits: &'a Mutex<Vec<(u64, String, Cancel)>>,
    number: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock_list(self.waits).retain(|(n, _, _)| *n != self.number);
    }
}

fn lock_list<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single pushes and removals: a poisoned list is still a correct list.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Retired {
    place: String,
    id: HoldId,
    holders: Vec<Holder>,
}

/// How many lost holds' holders are remembered for their notices.
const RETIRED_KEPT: usize = 64;

impl<H: Hold> Default for Holds<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Hold> Holds<H> {
    pub const fn new() -> Self {
        Self {
            map: Mutex::new(None),
            retired: Mutex::new(VecDeque::new()),
            waits: Mutex::new(Vec::new()),
            next_wait: AtomicU64::new(1),
        }
    }

    /// Makes a wait for `place` whose token is `cancel` look again whenever this process takes
    /// that lock, until the returned guard is dropped.
    pub fn waiting(&self, place: &str, cancel: &Cancel) -> Waiting<'_> {
        let number = self.next_wait.fetch_add(1, Ordering::Relaxed);
        lock_list(&self.waits).push((number, place.to_string(), cancel.clone()));
        Waiting {
            waits: &self.waits,
            number,
        }
    }

    /// A hold of `place` was just taken: this process's waits for it look again.
    fn taken_at(&self, place: &str) {
        for (_, at, cancel) in lock_list(&self.waits).iter() {
            if at == place {
                cancel.nudge();
            }
        }
    }

    fn map(&self) -> MutexGuard<'_, Option<Map<H>>> {
        // Inserts and removes are single calls: a poisoned map is still a correct map.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the holders of a lost hold taken out of the table, for its loss notice.
    fn retire(&self, place: &str, entry: Entry<H>) -> H {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        if retired.len() == RETIRED_KEPT {
            retired.pop_front();
        }
        retired.push_back(Retired {
            place: place.to_string(),
            id: entry.id,
            holders: entry.holders,
        });
        entry.hold
    }

    /// Joins this process's hold of `place` for `holder`. `Err`: there is none to join, with
    /// the lost hold that was there, for the caller to drop once it no longer holds the table.
    fn join_in(&self, map: &mut Map<H>, place: &str, holder: Holder) -> Result<Taken, Option<H>> {
        let Some(entry) = map.get_mut(place) else {
            return Err(None);
        };
        if entry.hold.is_lost() {
            return Err(map.remove(place).map(|e| self.retire(place, e)));
        }
        let already_held = entry.holders.contains(&holder);
        if !already_held {
            entry.holders.push(holder);
        }
        Ok(entry.taken(already_held, false, Vec::new()))
    }

    fn insert_in(
        map: &mut Map<H>,
        place: &str,
        holder: Holder,
        hold: H,
        lines: Vec<String>,
    ) -> Taken {
        let entry = Entry {
            id: HoldId::next(),
            hold,
            holders: vec![holder],
        };
        let taken = entry.taken(false, true, lines);
        map.insert(place.to_string(), entry);
        taken
    }

    /// The hold of `place` joined by `holder`, if this process has one that is not lost.
    pub fn join(&self, place: &str, holder: Holder) -> Option<Taken> {
        let mut map = self.map();
        let joined = self.join_in(map.get_or_insert_with(HashMap::new), place, holder);
        drop(map);
        joined.ok()
    }

    /// Keeps a hold just taken, for `holder`. A hold this process had of the same place is
    /// replaced (it was lost: nobody can take a lock this process holds).
    pub fn insert(&self, place: &str, holder: Holder, hold: H, lines: Vec<String>) -> Taken {
        let mut guard = self.map();
        let map = guard.get_or_insert_with(HashMap::new);
        let old = map.remove(place).map(|e| self.retire(place, e));
        let taken = Self::insert_in(map, place, holder, hold, lines);
        drop(guard);
        drop(old);
        self.taken_at(place);
        taken
    }

    /// `join`, else `take` and `insert`, all with the table locked: for a backend whose attempt
    /// is quick and never waits, so that two threads of this process asking at once join one
    /// hold instead of conflicting with each other.
    pub fn acquire_with<E>(
        &self,
        place: &str,
        holder: Holder,
        take: impl FnOnce() -> Result<(H, Vec<String>), E>,
    ) -> Result<Taken, E> {
        let mut guard = self.map();
        let map = guard.get_or_insert_with(HashMap::new);
        let lost = match self.join_in(map, place, holder) {
            Ok(taken) => return Ok(taken),
            Err(lost) => lost,
        };
        let result = take().map(|(hold, lines)| Self::insert_in(map, place, holder, hold, lines));
        drop(guard);
        drop(lost);
        if result.is_ok() {
            self.taken_at(place);
        }
        result
    }

    /// The hold of `place` if it is not lost: its identity, record and fencing token.
    pub fn current(&self, place: &str) -> Option<Taken> {
        let map = self.map();
        let entry = map.as_ref()?.get(place)?;
        (!entry.hold.is_lost()).then(|| entry.taken(false, false, Vec::new()))
    }

    /// Whether this process holds `place` and the hold is not lost.
    pub fn holds(&self, place: &str) -> bool {
        self.map()
            .as_ref()
            .and_then(|m| m.get(place))
            .is_some_and(|e| !e.hold.is_lost())
    }

    /// Whether `holder` has a hold of `place` (lost or not).
    pub fn is_holder(&self, place: &str, holder: Holder) -> bool {
        self.map()
            .as_ref()
            .and_then(|m| m.get(place))
            .is_some_and(|e| e.holders.contains(&holder))
    }

    /// The holders of hold `id` of `place`, if that hold is still this process's, or was taken
    /// out of the table lost: a loss notice goes to them (once), and to nobody when the hold has
    /// since been let go of.
    pub fn holders_of(&self, place: &str, id: HoldId) -> Option<Vec<Holder>> {
        let map = self.map();
        if let Some(entry) = map.as_ref().and_then(|m| m.get(place)) {
            if entry.id == id {
                return Some(entry.holders.clone());
            }
        }
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let at = retired
            .iter()
            .position(|r| r.id == id && r.place == place)?;
        retired.remove(at).map(|r| r.holders)
    }

    /// Whether hold `id` of `place` is still this process's, or was taken out of the table lost
    /// and its holders were not told yet: what `holders_of` would find, without using it up.
    pub fn knows(&self, place: &str, id: HoldId) -> bool {
        let map = self.map();
        if map
            .as_ref()
            .and_then(|m| m.get(place))
            .is_some_and(|e| e.id == id)
        {
            return true;
        }
        drop(map);
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.iter().any(|r| r.id == id && r.place == place)
    }

    /// `f` on hold `id` of `place`, if that hold is still this process's. The table is locked
    /// meanwhile: `f` must not call back into it.
    pub fn with<R>(&self, place: &str, id: HoldId, f: impl FnOnce(&H) -> R) -> Option<R> {
        let map = self.map();
        let entry = map.as_ref()?.get(place)?;
        (entry.id == id).then(|| f(&entry.hold))
    }

    /// The record of hold `id` of `place`, if that hold is still this process's (lost or not).
    pub fn record_of(&self, place: &str, id: HoldId) -> Option<Record> {
        let map = self.map();
        let entry = map.as_ref()?.get(place)?;
        (entry.id == id).then(|| entry.hold.record().clone())
    }

    /// Lets go of `holder`'s hold; the lock itself goes with its last holder.
    pub fn release(&self, place: &str, holder: Holder) -> Release<H> {
        let mut guard = self.map();
        let Some(map) = guard.as_mut() else {
            return Release::NotHeld;
        };
        let Some(entry) = map.get_mut(place) else {
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
        Release::Last(map.remove(place).expect("just found").hold)
    }

    /// Lets go of every hold of `holder` (it ended): the holds it was the last holder of, by
    /// place.
    pub fn release_holder(&self, holder: Holder) -> Vec<(String, H)> {
        let mut guard = self.map();
        let Some(map) = guard.as_mut() else {
            return Vec::new();
        };
        let places: Vec<String> = map
            .iter_mut()
            .filter_map(|(place, entry)| {
                entry.holders.retain(|h| *h != holder);
                entry.holders.is_empty().then(|| place.clone())
            })
            .collect();
        places
            .into_iter()
            .filter_map(|p| map.remove(&p).map(|e| (p, e.hold)))
            .collect()
    }

    /// Takes the hold of `place` out of the table whoever holds it (a forced removal).
    pub fn take(&self, place: &str) -> Option<H> {
        Some(self.map().as_mut()?.remove(place)?.hold)
    }

    /// Every hold, out of the table.
    pub fn drain(&self) -> Vec<(String, H)> {
        match self.map().as_mut() {
            Some(m) => m.drain().map(|(p, e)| (p, e.hold)).collect(),
            None => Vec::new(),
        }
    }

    /// Every hold, out of the table, for the end of the process, which must never hang: when
    /// another thread keeps the table busy for longer than `patience`, nothing is returned, and
    /// the locks go with the process.
    pub fn drain_within(&self, patience: Duration) -> Vec<(String, H)> {
        let deadline = Instant::now() + patience;
        let mut guard = loop {
            match self.map.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => return Vec::new(),
            }
        };
        match guard.as_mut() {
            Some(m) => m.drain().map(|(p, e)| (p, e.hold)).collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A hold that is lost when the test says so.
    struct Fake {
        record: Record,
        lost: Arc<AtomicBool>,
    }

    fn fake(pid: u32) -> (Fake, Arc<AtomicBool>) {
        let lost = Arc::new(AtomicBool::new(false));
        let hold = Fake {
            record: Record::pid_only(pid),
            lost: Arc::clone(&lost),
        };
        (hold, lost)
    }

    impl Hold for Fake {
        fn record(&self) -> &Record {
            &self.record
        }

        fn is_lost(&self) -> bool {
            self.lost.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn a_holder_joins_the_hold_of_its_process_and_the_last_one_lets_go() {
        let holds = Holds::new();
        let (hold, _) = fake(7);
        let first = holds.insert("a", 1, hold, vec!["line".into()]);
        assert!(first.newly_taken && !first.already_held && first.lines == ["line"]);
        let joined = holds.join("a", 2).unwrap();
        assert_eq!(joined.id, first.id);
        assert!(!joined.newly_taken && !joined.already_held);
        assert!(holds.join("a", 2).unwrap().already_held);
        assert!(matches!(holds.release("a", 3), Release::NotHeld));
        assert!(matches!(holds.release("a", 1), Release::KeptByOthers));
        assert!(matches!(holds.release("a", 2), Release::Last(_)));
        assert!(!holds.holds("a"));
    }

    #[test]
    fn a_lost_hold_ends_for_all_its_holders_and_a_new_one_has_an_identity_of_its_own() {
        let holds = Holds::new();
        let (hold, lost) = fake(7);
        let old = holds.insert("a", 1, hold, Vec::new()).id;
        holds.join("a", 2).unwrap();
        lost.store(true, Ordering::SeqCst);
        assert!(!holds.holds("a") && holds.current("a").is_none());
        // The loss notice of the old hold finds its holders while it is in the table...
        assert_eq!(holds.holders_of("a", old), Some(vec![1, 2]));
        assert!(holds.join("a", 1).is_none());
        let (hold, _) = fake(8);
        let new = holds.insert("a", 1, hold, Vec::new()).id;
        assert_ne!(new, old);
        // ...and once more after a new hold took its place (its notice may come only as it is
        // let go of, after that), then no more; looking whether it is known uses nothing up.
        assert!(holds.knows("a", old) && holds.knows("a", old));
        assert_eq!(holds.holders_of("a", old), Some(vec![1, 2]));
        assert_eq!(holds.holders_of("a", old), None);
        assert!(!holds.knows("a", old) && holds.knows("a", new));
        assert_eq!(holds.holders_of("a", new), Some(vec![1]));
        assert!(!holds.is_holder("a", 2));
    }

    #[test]
    fn a_holder_that_ends_lets_go_of_what_it_alone_held() {
        let holds = Holds::new();
        for place in ["a", "b"] {
            let (hold, _) = fake(7);
            holds.insert(place, 1, hold, Vec::new());
        }
        holds.join("b", 2).unwrap();
        let ended: Vec<String> = holds
            .release_holder(1)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(ended, ["a"]);
        assert!(holds.is_holder("b", 2) && !holds.is_holder("b", 1));
        assert_eq!(holds.drain().len(), 1);
    }
}
