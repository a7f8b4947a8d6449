//! How a holder learns that its lock is lost: a flag to check before acting, callbacks run at
//! the moment of loss, and a blocking wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::Stamp;
use crate::error::Lost;

/// Called once, on the holder's heartbeat thread (or at once on the caller's thread when the
/// lock is already lost). It must not block for long: the session is closed after it returns.
pub type OnLost = Box<dyn FnOnce(&Lost) + Send>;

pub(crate) struct LossWatch {
    lost: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    /// The loss deadline: until then the lock is certainly ours.
    until: Mutex<Stamp>,
}

#[derive(Default)]
struct State {
    lost: Option<Lost>,
    hooks: Vec<OnLost>,
}

impl LossWatch {
    pub fn new(until: Stamp) -> Self {
        Self {
            lost: AtomicBool::new(false),
            state: Mutex::default(),
            changed: Condvar::new(),
            until: Mutex::new(until),
        }
    }

    pub fn until(&self) -> Stamp {
        *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn extend(&self, until: Stamp) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Hooks are taken out before they run, so a panicking hook leaves a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Declared lost, or past the deadline (which a suspended machine notices here before its
    /// timers fire).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.until().passed()
    }

    pub fn lost(&self) -> Option<Lost> {
        self.state().lost.clone()
    }

    pub fn on_lost(&self, hook: OnLost) {
        let mut state = self.state();
        match state.lost.clone() {
            Some(lost) => {
                drop(state);
                hook(&lost);
            }
            None => state.hooks.push(hook),
        }
    }

    /// Records the loss (once), then runs the hooks outside the lock.
    pub fn declare(&self, lost: Lost) {
        let hooks = {
            let mut state = self.state();
            if state.lost.is_some() {
                return;
            }
            self.lost.store(true, Ordering::SeqCst);
            // A loss found by a failed heartbeat (the server went away) can come before the
            // deadline: the guarantee ended no later than now.
            let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
            *until = until.min(Stamp::now());
            drop(until);
            state.lost = Some(lost.clone());
            std::mem::take(&mut state.hooks)
        };
        self.changed.notify_all();
        for hook in hooks {
            hook(&lost);
        }
    }

    pub fn wait(&self, timeout: Option<Duration>) -> Option<Lost> {
        let state = self.state();
        let state = match timeout {
            Some(t) => {
                self.changed
                    .wait_timeout_while(state, t, |s| s.lost.is_none())
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self
                .changed
                .wait_while(state, |s| s.lost.is_none())
                .unwrap_or_else(|p| p.into_inner()),
        };
        state.lost.clone()
    }
}
