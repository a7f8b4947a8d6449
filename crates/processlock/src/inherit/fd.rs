//! Descriptor facts and flags the hand-over checks and sets.

use std::io;
use std::os::fd::RawFd;

pub(crate) fn set_flag(
    fd: RawFd,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fcntl flag queries and updates on a descriptor number; an invalid one fails.
    unsafe {
        let flags = libc::fcntl(fd, get);
        if flags == -1 || libc::fcntl(fd, set, flags | flag) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) fn stat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat into a zeroed struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

pub(crate) fn inode(fd: RawFd) -> io::Result<u64> {
    #[allow(clippy::unnecessary_cast)] // ino_t is not u64 everywhere
    stat(fd).map(|st| st.st_ino as u64)
}

pub(crate) fn is_fifo(fd: RawFd) -> bool {
    stat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
}
