//! Waiting until nobody holds a lock file's OS lock, on Unix.
//!
//! The wait asks for a shared `flock` on the file, blocking: the kernel grants it the moment the
//! holder's exclusive lock goes. A blocked `flock` can only be cut short by a signal, so on Linux
//! the waiting thread gets a real-time signal from a timer of its own (see `linux`). Elsewhere
//! (macOS has no real-time signals), or when Linux cannot give us a signal or a timer, the wait
//! falls back to a non-blocking attempt every `POLL`.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{try_lock, unlock, Woke};
use crate::wait::Cancel;

/// The polling interval of the fallback.
const POLL: Duration = Duration::from_millis(1);

/// Opens the file at the lock path for waiting on its lock. A shared lock needs no write access.
pub fn open_for_wait(path: &Path) -> io::Result<File> {
    super::open_for_probe(path)
}

/// Blocks until the file's lock is free, `until` has passed, or `cancel` interrupts the wait
/// that saw `seen` nudges. Never keeps a lock: a granted shared lock is dropped at once.
pub fn wait_unlocked(file: &File, until: Instant, cancel: &Cancel, seen: u64) -> io::Result<Woke> {
    if try_lock(file, false)? {
        unlock(file)?;
        return Ok(Woke::Free { blocked: false });
    }
    #[cfg(target_os = "linux")]
    if let Some(woke) = linux::wait(file, until, cancel, seen) {
        return woke;
    }
    poll(file, until, cancel, seen)
}

fn poll(file: &File, until: Instant, cancel: &Cancel, seen: u64) -> io::Result<Woke> {
    loop {
        if let Some(reason) = cancel.stop_reason(until, seen) {
            return Ok(reason);
        }
        cancel.sleep(
            POLL.min(until.saturating_duration_since(Instant::now())),
            seen,
        );
        if try_lock(file, false)? {
            unlock(file)?;
            return Ok(Woke::Free { blocked: true });
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! Interrupting a blocked `flock` on Linux.
    //!
    //! * The signal: one real-time signal, chosen once per process among those whose disposition
    //!   is still the default (so nobody else uses it), gets a handler that does nothing, installed
    //!   without `SA_RESTART` so that a blocked `flock` returns `EINTR`. SIGINT, SIGTERM, SIGHUP,
    //!   SIGUSR1/2 and every other signal stay untouched. `PROCESSLOCK_WAIT_SIGNAL=none` forbids
    //!   it (waits then poll).
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
    use std::os::unix::io::AsRawFd;
    use std::ptr;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::Woke;
    use crate::os::unlock;
    use crate::wait::Cancel;

    /// `none`: never install a signal handler; waits poll.
    const SIGNAL_ENV: &str = "PROCESSLOCK_WAIT_SIGNAL";
    /// How often the timer fires again once it has fired, until the wait is over.
    const REFIRE: Duration = Duration::from_millis(1);

    static SIGNAL: OnceLock<Option<c_int>> = OnceLock::new();

    extern "C" fn wake_only(_signal: c_int) {}

    fn handler_address() -> libc::sighandler_t {
        wake_only as extern "C" fn(c_int) as libc::sighandler_t
    }

    /// Our signal, if we have one and its handler is still ours.
    fn signal() -> Option<c_int> {
        let signal = (*SIGNAL.get_or_init(choose_signal))?;
        // Someone may have replaced our handler since: then a timer signal could kill the
        // process, so poll instead.
        // SAFETY: a query of the current disposition into a zeroed struct.
        let current = unsafe {
            let mut old: libc::sigaction = zeroed();
            if libc::sigaction(signal, ptr::null(), &mut old) != 0 {
                return None;
            }
            old.sa_sigaction
        };
        (current == handler_address()).then_some(signal)
    }

    fn choose_signal() -> Option<c_int> {
        if std::env::var_os(SIGNAL_ENV).is_some_and(|v| v == "none") {
            return None;
        }
        let (low, high) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        // From the top down, leaving both ends of the range (the ones other software picks
        // first) alone.
        for signal in (low + 2..=high - 3).rev() {
            // SAFETY: sigaction with zeroed structs; the handler is async-signal-safe (empty).
            unsafe {
                let mut old: libc::sigaction = zeroed();
                if libc::sigaction(signal, ptr::null(), &mut old) != 0
                    || old.sa_sigaction != libc::SIG_DFL
                {
                    continue;
                }
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
        let signal = signal()?;
        // Dropped in reverse order: the hook first (no one arms the timer any more), then the
        // timer, then the mask (after the last signal the timer could have sent).
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
        let fd = file.as_raw_fd();
        loop {
            if let Some(reason) = cancel.stop_reason(until, seen) {
                return Ok(reason);
            }
            // SAFETY: flock on a descriptor we own for the duration of the borrow.
            if unsafe { libc::flock(fd, libc::LOCK_SH) } == 0 {
                unlock(file)?;
                return Ok(Woke::Free { blocked: true });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            // Our timer, or any other signal: look at the reasons again.
        }
    }
}
