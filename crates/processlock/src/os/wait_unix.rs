//! Waiting until nobody holds a lock file's OS lock, on Unix.
//!
//! The wait asks for a shared `flock` on the file, blocking: the kernel grants it the moment the
//! holder's exclusive lock goes. A blocked `flock` can only be cut short by a signal, so on Linux
//! the waiting thread gets a real-time signal from a timer of its own (see `linux`). Elsewhere
//! (macOS has no real-time signals), or when Linux cannot give us a signal or a timer, the wait
//! falls back to polling (`poll_until_free`).

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Instant;

use super::{poll_until_free, try_lock, unlock};
use crate::cancel::Cancel;
use crate::cancel::Woke;

/// Opens the file at the lock path for waiting on its lock. A shared lock needs no write access.
pub fn open_for_wait(path: &Path) -> io::Result<File> {
    super::open_for_probe(path)
}

/// Blocks until the file's lock is free, `until` has passed, or `cancel` interrupts the wait
/// that saw `seen` nudges. Never keeps a lock: a granted shared lock is dropped at once.
pub fn wait_unlocked(file: &File, until: Instant, cancel: &Cancel, seen: u64) -> io::Result<Woke> {
    if free_now(file)? {
        return Ok(Woke::Free { blocked: false });
    }
    #[cfg(target_os = "linux")]
    if let Some(woke) = linux::wait(file, until, cancel, seen) {
        return woke;
    }
    poll_until_free(until, cancel, seen, || free_now(file))
}

/// Whether a shared lock can be had at once (dropped again at once).
fn free_now(file: &File) -> io::Result<bool> {
    if !try_lock(file, false)? {
        return Ok(false);
    }
    unlock(file)?;
    Ok(true)
}

#[cfg(target_os = "linux")]
mod linux {
    //! Interrupting a blocked `flock` on Linux.
    //!
    //! * The signal: one real-time signal, chosen among those whose disposition is the default
    //!   (so nobody else uses it), gets a handler that does nothing, installed without
    //!   `SA_RESTART` so that a blocked `flock` returns `EINTR`. SIGINT, SIGTERM, SIGHUP,
    //!   SIGUSR1/2 and every other signal stay untouched. The handler is installed when a wait
    //!   begins while no other wait is in progress, and the default disposition is restored when
    //!   the last wait in progress ends (a count under a mutex): a process that is not waiting
    //!   has no handler of ours. `PROCESSLOCK_WAIT_SIGNAL=none` forbids it (waits then poll).
    //! * The timer: each wait creates a POSIX timer that delivers that signal to the waiting
    //!   thread only (`SIGEV_THREAD_ID`). It is armed for the end of the wait and then fires every
    //!   `REFIRE`, so a signal that arrives between the last look at the clock and the `flock`
    //!   call is followed by another one. Cancelling and nudging re-arm it to fire at once. The
    //!   timer is removed, under the `Cancel` lock, before the wait returns: nothing signals the
    //!   thread afterwards.
    //! * The waiting thread unblocks the signal for the time of the wait (a tokio or libuv thread
    //!   may have inherited a mask that blocks it) and restores its mask afterwards.

    use std::fs::File;
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::os::raw::c_int;
    use std::ptr;
    use std::sync::{Mutex, MutexGuard, OnceLock};
    use std::time::{Duration, Instant};

    use crate::cancel::Cancel;
    use crate::cancel::Woke;
    use crate::os::unlock;

    /// `none`: never install a signal handler; waits poll.
    const SIGNAL_ENV: &str = "PROCESSLOCK_WAIT_SIGNAL";
    /// How often the timer fires again once it has fired, until the wait is over.
    const REFIRE: Duration = Duration::from_millis(1);

    /// The signal and how many waits use it; `signal` is `None` when no wait is in progress.
    struct Users {
        count: usize,
        signal: Option<c_int>,
    }

    static USERS: Mutex<Users> = Mutex::new(Users {
        count: 0,
        signal: None,
    });
    static FORBIDDEN: OnceLock<bool> = OnceLock::new();

    extern "C" fn wake_only(_signal: c_int) {}

    fn handler_address() -> libc::sighandler_t {
        wake_only as extern "C" fn(c_int) as libc::sighandler_t
    }

    fn users() -> MutexGuard<'static, Users> {
        // Every update is a single assignment after the system calls: a poisoned count is
        // still the count.
        USERS.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The right to our signal for one wait. The last one dropped restores the default
    /// disposition, so drop it only once no timer of this wait can signal any more.
    struct Lease(c_int);

    impl Lease {
        /// `None`: no signal can be had, or someone has replaced our handler (a timer signal
        /// could then kill the process): the wait polls instead.
        fn take() -> Option<Lease> {
            if *FORBIDDEN.get_or_init(|| std::env::var_os(SIGNAL_ENV).is_some_and(|v| v == "none"))
            {
                return None;
            }
            let mut users = users();
            if users.count == 0 {
                users.signal = install();
            }
            let signal = users.signal?;
            if !is_ours(signal) {
                if users.count == 0 {
                    users.signal = None;
                }
                return None;
            }
            users.count += 1;
            Some(Lease(signal))
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            let mut users = users();
            users.count -= 1;
            if users.count == 0 {
                uninstall(self.0);
                users.signal = None;
            }
        }
    }

    fn disposition(signal: c_int) -> Option<libc::sighandler_t> {
        // SAFETY: a query of the current disposition into a zeroed struct.
        unsafe {
            let mut old: libc::sigaction = zeroed();
            if libc::sigaction(signal, ptr::null(), &mut old) != 0 {
                return None;
            }
            Some(old.sa_sigaction)
        }
    }

    fn is_ours(signal: c_int) -> bool {
        disposition(signal) == Some(handler_address())
    }

    /// Installs our handler on a real-time signal nobody handles; which one it is.
    fn install() -> Option<c_int> {
        let (low, high) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        // From the top down, leaving both ends of the range (the ones other software picks
        // first) alone.
        for signal in (low + 2..=high - 3).rev() {
            if disposition(signal) != Some(libc::SIG_DFL) {
                continue;
            }
            // SAFETY: sigaction with a zeroed struct; the handler is async-signal-safe (empty).
            unsafe {
                let mut action: libc::sigaction = zeroed();
                action.sa_sigaction = handler_address();
                // No SA_RESTART: the point is that a blocked flock returns EINTR.
                action.sa_flags = 0;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, ptr::null_mut()) == 0 {
                    return Some(signal);
                }
            }
        }
        None
    }

    /// Gives the signal back its default disposition, unless someone else has taken it since.
    fn uninstall(signal: c_int) {
        if !is_ours(signal) {
            return;
        }
        // SAFETY: sigaction with zeroed structs. Between the check above and this swap another
        // library would have to install a handler for the very signal we hold: if it did, the
        // swap hands its handler back to it.
        unsafe {
            let mut default: libc::sigaction = zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut default.sa_mask);
            let mut old: libc::sigaction = zeroed();
            if libc::sigaction(signal, &default, &mut old) == 0
                && old.sa_sigaction != handler_address()
            {
                libc::sigaction(signal, &old, ptr::null_mut());
            }
        }
    }

    /// The kernel's `struct sigevent` (64 bytes), used through the raw system calls so that
    /// glibc and musl behave the same.
    #[repr(C)]
    struct KernelSigevent {
        value: usize,
        signo: c_int,
        notify: c_int,
        tid: c_int,
        pad: [c_int; SIGEVENT_PAD],
    }
    const SIGEVENT_PAD: usize = (64 - size_of::<usize>() - 3 * size_of::<c_int>()) / 4;

    /// A POSIX timer that signals one thread; deleted on drop.
    struct Timer(c_int);

    impl Timer {
        fn for_this_thread(signal: c_int) -> io::Result<Timer> {
            // SAFETY: plain system calls with valid pointers to our own stack.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as c_int;
                let mut event = KernelSigevent {
                    value: 0,
                    signo: signal,
                    notify: libc::SIGEV_THREAD_ID,
                    tid,
                    pad: [0; SIGEVENT_PAD],
                };
                let mut id: c_int = 0;
                let rc = libc::syscall(
                    libc::SYS_timer_create,
                    libc::CLOCK_MONOTONIC,
                    &mut event as *mut KernelSigevent,
                    &mut id as *mut c_int,
                );
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Timer(id))
            }
        }
    }

    /// Fires `first` from now (at least 1 ns: zero would disarm), then every `REFIRE`.
    fn arm(id: c_int, first: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(REFIRE),
            it_value: timespec(first.max(Duration::from_nanos(1))),
        };
        // SAFETY: a valid timer id (the caller keeps it alive) and a pointer to our spec.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_timer_settime,
                id,
                0,
                &spec as *const libc::itimerspec,
                ptr::null_mut::<libc::itimerspec>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn timespec(d: Duration) -> libc::timespec {
        libc::timespec {
            // `as _`: time_t's width differs between libcs (and naming it warns on musl).
            tv_sec: d.as_secs().min(i32::MAX as u64) as _,
            tv_nsec: d.subsec_nanos() as _,
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            // SAFETY: deleting our own timer once.
            unsafe { libc::syscall(libc::SYS_timer_delete, self.0) };
        }
    }

    /// Unblocks the signal in this thread until dropped.
    struct Unblocked {
        old: libc::sigset_t,
    }

    impl Unblocked {
        fn new(signal: c_int) -> Unblocked {
            // SAFETY: sigset operations on zeroed sets owned here.
            unsafe {
                let mut set: libc::sigset_t = zeroed();
                let mut old: libc::sigset_t = zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, signal);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, &mut old);
                Unblocked { old }
            }
        }
    }

    impl Drop for Unblocked {
        fn drop(&mut self) {
            // SAFETY: restoring the mask saved in `new`.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, ptr::null_mut()) };
        }
    }

    /// `None`: no signal or no timer here; the caller polls instead.
    pub(super) fn wait(
        file: &File,
        until: Instant,
        cancel: &Cancel,
        seen: u64,
    ) -> Option<io::Result<Woke>> {
        let lease = Lease::take()?;
        let signal = lease.0;
        // Dropped in reverse order: the hook first (no one arms the timer any more), then the
        // timer (a signal it sent before is delivered, unblocked, as `timer_delete` returns),
        // then the mask, then the lease (the handler may go: nothing can signal this wait now).
        let _unblocked = Unblocked::new(signal);
        let timer = Timer::for_this_thread(signal).ok()?;
        let id = timer.0;
        let _hook = cancel.on_wake(Box::new(move || {
            let _ = arm(id, Duration::ZERO);
        }));
        arm(id, until.saturating_duration_since(Instant::now())).ok()?;
        Some(block(file, until, cancel, seen))
    }

    fn block(file: &File, until: Instant, cancel: &Cancel, seen: u64) -> io::Result<Woke> {
        loop {
            if let Some(reason) = cancel.stop_reason(until, seen) {
                return Ok(reason);
            }
            // std's `lock_shared` is one `flock(LOCK_SH)` and gives EINTR back as `Interrupted`
            // rather than retrying: that is how our timer ends the wait.
            match file.lock_shared() {
                Ok(()) => {
                    unlock(file)?;
                    return Ok(Woke::Free { blocked: true });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // Our timer, or any other signal: look at the reasons again.
        }
    }
}
