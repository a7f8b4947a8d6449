//! The seam below both front doors (the Node addon and the `processlock` command): what any place
//! that keeps locks (lock files, a PostgreSQL server, ...) must do, and the rules every backend
//! shares, written once here.
//!
//! A backend takes a lock once (`take`, waiting if asked), lets go of it (`let_go`), says who
//! holds one (`inspect`, `list`), removes one by force, and tells of the loss of a hold
//! (`watch_loss`). What a process holds is kept in the backend's `Holds` table, whose rule of
//! joining an existing hold is the same for all; the provided `acquire` and `release` go
//! through it. The file protocol is `FileBackend` (`files.rs`); the PostgreSQL backend lives in
//! the `processlock-pg` crate.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::cancel::Cancel;
use crate::holds::{Hold, HoldId, Holder, Holds, Release, Taken};
use crate::list::LockState;
use crate::name::LockName;
use crate::record::Record;

/// How long an acquisition waits: until `deadline` (`None`: for as long as it takes), unless
/// `cancel` ends it first (with the backend's `LOCK_ABORTED`).
pub struct Wait<'a> {
    pub deadline: Option<Instant>,
    pub cancel: &'a Cancel,
    /// What the wait has to say while it lasts (a server gone away, and back), as log lines:
    /// kept here, so that they reach the caller also when the wait fails.
    pub said: Arc<Mutex<Vec<String>>>,
}

/// Who holds a lock, as far as the backend can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub record: Record,
    pub fencing_token: Option<String>,
}

/// One lock a backend knows of (`Backend::list`).
#[derive(Debug, Clone)]
pub struct Listed {
    /// Where it is: the lock file's path, or the lock's id on its server.
    pub place: String,
    /// `None` when the place names no valid lock (a stray file).
    pub name: Option<LockName>,
    pub state: LockState,
    pub holding: Option<Holding>,
    /// Why it is not plainly held, for people.
    pub problem: Option<String>,
}

/// The locks of one directory or namespace.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The directory, or the server and namespace.
    pub scope: String,
    pub locks: Vec<Listed>,
}

/// How letting go of a hold ended (`Backend::release`).
#[derive(Debug)]
pub enum Released<E> {
    /// This holder did not hold the lock.
    NotHeld,
    /// Others still hold it: holders of this process, or the command of the `processlock run`
    /// the hold was handed down by (`running`: that `run` is still there). Nothing was let go.
    KeptByOthers { run_pid: Option<u32>, running: bool },
    /// The lock was let go of. `removed`: it was still ours (false: it was lost meanwhile).
    Released { pid: u32, removed: bool },
    /// The hold was lost before it was let go of: its loss was told instead.
    Lost { pid: u32 },
    /// Letting go failed (`Backend::after_failed_release` says what becomes of the lock).
    Failed { pid: u32, error: E },
}

/// A hold was lost: where, which hold, and the error that says why.
pub struct LossNotice<E> {
    pub place: String,
    pub id: HoldId,
    pub pid: u32,
    pub reason: String,
    pub error: E,
}

/// Called once, on a thread of the backend's, when a watched hold is lost.
pub type LossHook<E> = Box<dyn FnOnce(LossNotice<E>) + Send>;

/// A place that keeps locks. See the module comment.
pub trait Backend: Sync {
    type Hold: Hold + 'static;
    /// Its failures, each with a stable code.
    type Error: std::fmt::Debug + Send + 'static;

    /// What results call this backend: `file`, `postgres`.
    const KIND: &'static str;

    /// What becomes of a lock whose release failed, for the log line that says so.
    const AFTER_FAILED_RELEASE: &'static str;

    /// What this process holds here: a table for the life of the process.
    fn holds(&self) -> &'static Holds<Self::Hold>;

    /// Where the lock named `name` is: its key in `holds` and in results.
    fn place(&self, name: &LockName) -> Result<String, Self::Error>;

    /// Takes the lock once for this process, or waits for it with `wait`; what happened on the
    /// way, as log lines. Never joins a hold of this process: `acquire` does.
    fn take(
        &self,
        name: &LockName,
        process_name: Option<&str>,
        wait: Option<&Wait>,
    ) -> Result<(Self::Hold, Vec<String>), Self::Error>;

    /// Lets go of a hold whose last holder let go.
    fn let_go(&self, name: &LockName, hold: Self::Hold) -> Released<Self::Error>;

    /// Who holds the lock now (this process included); `None`: nobody.
    fn inspect(&self, name: &LockName) -> Result<Option<Holding>, Self::Error>;

    /// The lock `name` as `list` shows it (its state, holder and problem); `None`: there is
    /// none. A backend that keeps nothing but holds says held or nothing.
    fn status(&self, name: &LockName) -> Result<Option<Listed>, Self::Error> {
        let Some(holding) = self.inspect(name)? else {
            return Ok(None);
        };
        Ok(Some(Listed {
            place: self.place(name)?,
            name: Some(name.clone()),
            state: LockState::Held,
            holding: Some(holding),
            problem: None,
        }))
    }

    /// Removes the lock whoever holds it: our own hold is let go of, anyone else's ended.
    /// `true`: something was removed.
    fn force_remove(&self, name: &LockName) -> Result<bool, Self::Error>;

    /// Every lock of the directory or namespace.
    fn list(&self) -> Result<Listing, Self::Error>;

    /// Calls `hook` once when hold `id` of `place` is lost, for as long as it is this process's.
    fn watch_loss(&self, place: &str, id: HoldId, hook: LossHook<Self::Error>);

    /// Whether a hold's loss is found whatever anyone asks (a server session that ends), so
    /// that it is watched from the moment it is taken; otherwise (a lock file, looked at by a
    /// thread) only once someone asks to hear of it.
    fn watched_from_the_start(&self) -> bool {
        false
    }

    /// The log lines that name the holder of a conflict, for a failed acquisition of `name`.
    fn conflict_lines(&self, error: &Self::Error, name: &LockName) -> Vec<String>;

    /// Takes the lock `name` (at `place`, as `place` says) for `holder`, or joins this
    /// process's hold of it (see `Holds`).
    fn acquire(
        &self,
        name: &LockName,
        place: &str,
        process_name: Option<&str>,
        holder: Holder,
        wait: Option<&Wait>,
    ) -> Result<Taken, Self::Error> {
        if let Some(joined) = self.holds().join(place, holder) {
            return Ok(joined);
        }
        let (hold, lines) = self.take(name, process_name, wait)?;
        Ok(self.holds().insert(place, holder, hold, lines))
    }

    /// Lets go of `holder`'s hold of `name` at `place`; the lock goes with its last holder.
    fn release(&self, name: &LockName, place: &str, holder: Holder) -> Released<Self::Error> {
        match self.holds().release(place, holder) {
            Release::NotHeld => Released::NotHeld,
            Release::KeptByOthers => Released::KeptByOthers {
                run_pid: None,
                running: false,
            },
            Release::Last(hold) => self.let_go(name, hold),
        }
    }

    /// Whether `holder` holds the lock, and its hold is not lost.
    fn is_held_by(&self, place: &str, holder: Holder) -> bool {
        self.holds().is_holder(place, holder) && self.holds().holds(place)
    }
}
