//! The calling thread's `errno`, for code that cannot go through `io::Error` alone: a signal
//! handler must give back the value it found, and a forked child looks at it between calls.

use std::io;
use std::os::raw::c_int;

/// The thread's `errno` now. Allocates nothing: fine in a signal handler and after `fork`.
pub fn get() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sets the thread's `errno` (std reads it but cannot write it).
pub fn set(value: c_int) {
    // SAFETY: the location is this thread's own errno, valid for the thread's lifetime.
    unsafe { *location() = value }
}

#[cfg(any(
    target_os = "linux",
    target_os = "emscripten",
    target_os = "hurd",
    target_os = "redox",
    target_os = "dragonfly"
))]
fn location() -> *mut c_int {
    // SAFETY: no preconditions; returns the calling thread's errno.
    unsafe { libc::__errno_location() }
}

#[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
fn location() -> *mut c_int {
    // SAFETY: no preconditions; returns the calling thread's errno.
    unsafe { libc::__error() }
}

#[cfg(any(
    target_os = "android",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "cygwin"
))]
fn location() -> *mut c_int {
    // SAFETY: no preconditions; returns the calling thread's errno.
    unsafe { libc::__errno() }
}

#[cfg(any(target_os = "solaris", target_os = "illumos"))]
fn location() -> *mut c_int {
    // SAFETY: no preconditions; returns the calling thread's errno.
    unsafe { libc::___errno() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_what_get_and_std_read() {
        set(libc::EINTR);
        assert_eq!(get(), libc::EINTR);
        assert_eq!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::Interrupted
        );
        set(libc::ENOENT);
        assert_eq!(get(), libc::ENOENT);
    }
}
