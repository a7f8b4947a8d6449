//! Waiting until nobody holds a lock file's OS lock, on Windows.
//!
//! The wait opens its own overlapped handle to the file and asks `LockFileEx` for a shared lock
//! on the ownership byte (`LOCK_OFFSET`), without `LOCKFILE_FAIL_IMMEDIATELY`: the request stays
//! pending until the holder's exclusive lock goes, and its event is signalled then. The thread
//! waits for that event, a wake-up event that `Cancel` sets, and the deadline together; a request
//! still pending when the wait ends is cancelled with `CancelIoEx` and waited for before its
//! `OVERLAPPED` goes away. A granted shared lock is dropped at once.
//!
//! Wine (8) has no asynchronous lock waits: a pending `LockFileEx` is never completed. Under
//! Wine, and wherever a waiting `LockFileEx` is refused at once instead of pending, the wait falls
//! back to polling (`poll_until_free`). Either way a wait lasts at most the slice its
//! caller gives it (see `wait.rs`), so no answer of the system can make it hang.

use std::fs::File;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use windows_sys::Win32::Foundation::{
    ERROR_IO_PENDING, ERROR_LOCK_VIOLATION, HANDLE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    LockFileEx, UnlockFileEx, FILE_FLAG_OVERLAPPED, LOCKFILE_FAIL_IMMEDIATELY,
};
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Threading::{CreateEventW, SetEvent, WaitForMultipleObjects};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::poll_until_free;
use super::windows::{options, overlapped_at, refuse_reparse_point, LOCK_LEN, LOCK_OFFSET};
use crate::cancel::Cancel;
use crate::cancel::Woke;

/// Opens the file at the lock path for waiting on its lock: read-only (a shared lock needs no
/// more), overlapped, never through a reparse point.
pub fn open_for_wait(path: &Path) -> io::Result<File> {
    refuse_reparse_point(options(FILE_FLAG_OVERLAPPED).read(true).open(path)?)
}

/// A manual-reset event, not signalled.
fn event() -> io::Result<OwnedHandle> {
    // SAFETY: default security, no name; the handle is owned from here on.
    let h = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    if h.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle nobody else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(h) })
}

/// `OVERLAPPED` for the ownership byte, completing through `event`.
fn request(event: &OwnedHandle) -> OVERLAPPED {
    let mut ov = overlapped_at(LOCK_OFFSET);
    ov.hEvent = event.as_raw_handle() as HANDLE;
    ov
}

/// Drops the shared lock this handle was granted.
fn unlock(file: &File) -> io::Result<()> {
    let done = event()?;
    let mut ov = request(&done);
    let h = file.as_raw_handle() as HANDLE;
    // SAFETY: `ov` and its event live until the request has completed (waited for below).
    unsafe {
        if UnlockFileEx(h, 0, LOCK_LEN as u32, (LOCK_LEN >> 32) as u32, &mut ov) == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_IO_PENDING as i32) {
                return Err(e);
            }
            let mut n = 0;
            if GetOverlappedResult(h, &ov, &mut n, 1) == 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether a waiting `LockFileEx` on an overlapped handle is ever completed: not under Wine,
/// whose ntdll exports `wine_get_version`.
fn overlapped_lock_waits() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        let name: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
        // SAFETY: a NUL-terminated module name and symbol name; nothing is loaded or called.
        unsafe {
            let ntdll = GetModuleHandleW(name.as_ptr());
            ntdll.is_null() || GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_none()
        }
    })
}

/// Blocks until the file's lock is free, `until` has passed, or `cancel` interrupts the wait
/// that saw `seen` nudges. `file` must come from `open_for_wait`.
pub fn wait_unlocked(file: &File, until: Instant, cancel: &Cancel, seen: u64) -> io::Result<Woke> {
    let granted = event()?;
    let wake = event()?;
    let wake_raw = wake.as_raw_handle() as usize;
    // Registered before the first look at the reasons; removed (dropped) before `wake` closes.
    let _hook = cancel.on_wake(Box::new(move || {
        // SAFETY: the event outlives the hook (see above).
        unsafe { SetEvent(wake_raw as HANDLE) };
    }));
    if !overlapped_lock_waits() {
        if try_shared(file)? {
            return Ok(Woke::Free { blocked: false });
        }
        return poll_until_free(until, cancel, seen, || try_shared(file));
    }
    let h = file.as_raw_handle() as HANDLE;
    let mut ov = request(&granted);
    // SAFETY: `ov` and `granted` stay in place until the request completes: every path below
    // either sees it complete or cancels it and waits for the cancellation to finish.
    let ok = unsafe { LockFileEx(h, 0, 0, LOCK_LEN as u32, (LOCK_LEN >> 32) as u32, &mut ov) };
    if ok != 0 {
        unlock(file)?;
        return Ok(Woke::Free { blocked: false });
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
        return poll_until_free(until, cancel, seen, || try_shared(file));
    }
    if e.raw_os_error() != Some(ERROR_IO_PENDING as i32) {
        return Err(e);
    }
    let handles = [
        granted.as_raw_handle() as HANDLE,
        wake.as_raw_handle() as HANDLE,
    ];
    let outcome = loop {
        if let Some(reason) = cancel.stop_reason(until, seen) {
            break Ok(reason);
        }
        let left = until.saturating_duration_since(Instant::now());
        // Rounded up, and below INFINITE.
        let ms = u32::try_from(left.as_micros().div_ceil(1000))
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1);
        // SAFETY: two valid handles, owned above.
        let r = unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, ms) };
        if r == WAIT_OBJECT_0 {
            let mut n = 0;
            // SAFETY: the request has completed: its event is signalled.
            if unsafe { GetOverlappedResult(h, &ov, &mut n, 0) } != 0 {
                unlock(file)?;
                return Ok(Woke::Free { blocked: true });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
                // Completed as refused (Wine): no waiting request here.
                return poll_until_free(until, cancel, seen, || try_shared(file));
            }
            return Err(e);
        }
        if r == WAIT_FAILED {
            break Err(io::Error::last_os_error());
        }
        // WAIT_OBJECT_0 + 1 (woken) or WAIT_TIMEOUT: the reasons are looked at again.
        debug_assert!(r == WAIT_OBJECT_0 + 1 || r == WAIT_TIMEOUT);
    };
    // Still pending: cancel it and wait until the system is done with `ov`.
    let mut n = 0;
    // SAFETY: `ov` is the pending request of this handle.
    let granted_meanwhile = unsafe {
        CancelIoEx(h, &ov);
        GetOverlappedResult(h, &ov, &mut n, 1) != 0
    };
    if granted_meanwhile {
        // Closing the handle (the caller does, at once) drops the lock anyway.
        let _ = unlock(file);
    }
    outcome
}

/// A shared lock if it can be had at once (dropped again at once).
fn try_shared(file: &File) -> io::Result<bool> {
    let done = event()?;
    let mut ov = request(&done);
    let h = file.as_raw_handle() as HANDLE;
    // SAFETY: `ov` and its event live until the request has completed (waited for below).
    let granted = unsafe {
        if LockFileEx(
            h,
            LOCKFILE_FAIL_IMMEDIATELY,
            0,
            LOCK_LEN as u32,
            (LOCK_LEN >> 32) as u32,
            &mut ov,
        ) != 0
        {
            true
        } else {
            let mut e = io::Error::last_os_error();
            let mut n = 0;
            if e.raw_os_error() == Some(ERROR_IO_PENDING as i32) {
                if GetOverlappedResult(h, &ov, &mut n, 1) != 0 {
                    return unlock(file).map(|()| true);
                }
                e = io::Error::last_os_error();
            }
            if e.raw_os_error() != Some(ERROR_LOCK_VIOLATION as i32) {
                return Err(e);
            }
            false
        }
    };
    if granted {
        unlock(file)?;
    }
    Ok(granted)
}
