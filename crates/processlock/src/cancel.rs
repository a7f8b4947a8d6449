//! Cancelling a wait from another thread: the token a waiting acquisition watches, and how a
//! wait ended. Below the OS layer, whose blocking waits it interrupts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a wait for a lock file to be unlocked ended (`wait_unlocked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Nobody holds the file's lock any more (a shared lock was granted, and dropped at once).
    /// `blocked`: we had to wait for it; false when it was free at the first look.
    Free { blocked: bool },
    /// The time given ran out.
    Expired,
    /// The wait was cancelled.
    Cancelled,
    /// The wait was asked to stop and let the caller look again.
    Nudged,
}

type Hook = Box<dyn Fn() + Send>;

/// Cancels a waiting acquisition, from any thread. Cheap to clone: clones share one state.
///
/// `cancel` makes the wait end with `Error::Aborted` as soon as it can (at once when it is
/// blocked; after the attempt in progress otherwise). `nudge` only makes it look again now,
/// for a caller that may have taken the lock by another path in the same process.
#[derive(Clone, Default)]
pub struct Cancel {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    cancelled: AtomicBool,
    nudges: AtomicU64,
    /// Wake-up hooks of the waits in progress. They run under this mutex, and a wait removes
    /// its hook under it too, so no hook ever runs after its wait has ended.
    hooks: Mutex<Hooks>,
    /// For waits that sleep instead of blocking in the OS.
    wake: Condvar,
}

#[derive(Default)]
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
struct Hooks {
    next_id: u64,
    list: Vec<(u64, Hook)>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the waits that use this token with `Error::Aborted`. Never blocks for long: it
    /// only wakes the waiting threads up.
    pub fn cancel(&self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Makes the waits that use this token try the lock again now.
    pub fn nudge(&self) {
        self.shared.nudges.fetch_add(1, Ordering::SeqCst);
        self.wake_all();
    }

    pub(crate) fn nudges(&self) -> u64 {
        self.shared.nudges.load(Ordering::SeqCst)
    }

    /// Whether the wait that started when `nudges()` was `seen` must stop blocking.
    pub(crate) fn interrupted(&self, seen: u64) -> bool {
        self.is_cancelled() || self.nudges() != seen
    }

    fn hooks(&self) -> MutexGuard<'_, Hooks> {
        // Hooks are pushed and removed whole: a poisoned list is still a correct list.
        self.shared.hooks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        let hooks = self.hooks();
        for (_, hook) in &hooks.list {
            hook();
        }
        self.shared.wake.notify_all();
    }

    /// Registers `hook` to be run by `cancel` and `nudge` until the guard is dropped. Register
    /// before checking `interrupted`, so that an interruption after the check runs the hook.
    #[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
    pub(crate) fn on_wake(&self, hook: Hook) -> HookGuard<'_> {
        let mut hooks = self.hooks();
        let id = hooks.next_id;
        hooks.next_id += 1;
        hooks.list.push((id, hook));
        HookGuard { cancel: self, id }
    }

    /// Why a blocking wait that saw `seen` nudges and may last `until` must end now, if it must.
    pub(crate) fn stop_reason(&self, until: Instant, seen: u64) -> Option<Woke> {
        if self.is_cancelled() {
            Some(Woke::Cancelled)
        } else if self.nudges() != seen {
            Some(Woke::Nudged)
        } else if Instant::now() >= until {
            Some(Woke::Expired)
        } else {
            None
        }
    }

    /// Sleeps for `dur` or until the wait that saw `seen` nudges is interrupted.
    pub(crate) fn sleep(&self, dur: Duration, seen: u64) {
        let guard = self.hooks();
        let _ = self
            .shared
            .wake
            .wait_timeout_while(guard, dur, |_| !self.interrupted(seen));
    }
}

/// Removes a wake-up hook when dropped; after the drop the hook is never run again.
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
pub(crate) struct HookGuard<'a> {
    cancel: &'a Cancel,
    id: u64,
}

impl Drop for HookGuard<'_> {
    fn drop(&mut self) {
        self.cancel.hooks().list.retain(|(id, _)| *id != self.id);
    }
}
