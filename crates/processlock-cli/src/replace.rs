//! `processlock run --replace`: stop the instance that holds the lock and take its place, by the
//! core's `replace_holder`. The command's part is how it waits (in slices a signal can end) and
//! where the lines go (stderr).

use std::time::Duration;

use processlock::{replace_holder, Acquired, Conflict, LockTarget, Replacing};

use crate::display::errln;
use crate::signals;
use crate::wait::wait_sliced;

/// Replaces the holder named in `conflict`, then takes the lock through `attempt`.
pub fn replace(
    target: &LockTarget,
    conflict: Box<Conflict>,
    grace: Duration,
    attempt: &mut dyn FnMut() -> processlock::Result<Acquired>,
    quiet: bool,
) -> processlock::Result<Acquired> {
    let mut how = Command {
        target,
        attempt,
        quiet,
    };
    replace_holder(&target.name, conflict, grace, &mut how)
}

struct Command<'a> {
    target: &'a LockTarget,
    attempt: &'a mut dyn FnMut() -> processlock::Result<Acquired>,
    quiet: bool,
}

impl Replacing<Acquired> for Command<'_> {
    fn wait(&mut self, wait: Duration) -> processlock::Result<Acquired> {
        wait_sliced(self.target, wait, &mut *self.attempt, |_| {})
    }

    fn line(&mut self, line: String, always: bool) {
        if always || !self.quiet {
            errln!("{line}");
        }
    }

    fn interrupted(&self) -> bool {
        signals::first_received().is_some()
    }
}
