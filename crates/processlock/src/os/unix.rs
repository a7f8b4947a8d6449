use std::fs::{File, TryLockError};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{DirFacts, Entry, FileId, Pid};

/// A new file that did not exist before (never through a symlink), of `mode` at most (the umask
/// can only take bits away): anyone who can open a lock file can lock it and block every
/// takeover, so `mode` gives nothing to others (`DirFacts::file_mode`).
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens the file at the lock path without following a symlink (ELOOP) and without blocking on
/// a FIFO. Read-write when permitted, because NFS grants exclusive locks only on writable
/// descriptors; read-only otherwise (another user's lock in a shared directory).
pub fn open_existing(path: &Path) -> io::Result<File> {
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
    };
    match open(true) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EROFS | libc::EPERM)
            ) =>
        {
            open(false)
        }
        other => other,
    }
}

/// Opens the removal guard of a lock directory (`guard.rs`), creating it if needed, never through
/// a symlink. Every remover in the directory must be able to open it, nobody else may: it has the
/// mode of the directory's lock files (`DirFacts::file_mode`: readable by the group only where
/// the group shares the directory, and then of the directory's group), whatever the umask, and
/// belongs to the directory's owner even when root made it. One made by an older version with
/// more access is brought down to that mode. Opened read-only where we may not write it: a lock
/// works on any open descriptor.
pub fn open_guard(path: &Path, facts: DirFacts) -> io::Result<File> {
    let mode = facts.file_mode();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_existing(path)?,
        Err(e) => return Err(e),
    };
    // Best effort: a remover that cannot open the guard fails with a clear error.
    let _ = fit_guard(&file, facts);
    Ok(file)
}

/// Gives the guard the owner, group and mode `open_guard` describes, where we may.
fn fit_guard(file: &File, facts: DirFacts) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let owner = (me == 0 && m.uid() != facts.owner).then_some(facts.owner);
    let group = (facts.shared_with_group && m.gid() != facts.group).then_some(facts.group);
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::fchown(file, owner, group)?;
    }
    if m.mode() & 0o777 != facts.file_mode() && (me == 0 || m.uid() == me) {
        file.set_permissions(std::fs::Permissions::from_mode(facts.file_mode()))?;
    }
    Ok(())
}

/// Opens for reading only, for probes that must not need write permission.
pub fn open_for_probe(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

/// `Ok(true)`: locked; `Ok(false)`: someone else holds a conflicting lock.
///
/// std's lock calls are `flock(2)` on Unix, which is what the protocol needs: the lock belongs to
/// the open file description, so it is released however the owner dies, and a descriptor
/// passed to a child keeps it. std reserves the right to change that mapping; per-process
/// `fcntl` locks would let a second open in the same process through, which the core's tests
/// of a second acquire in one process would catch.
pub fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    loop {
        let tried = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match tried {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

pub fn unlock(file: &File) -> io::Result<()> {
    file.unlock()
}

/// Whether an error from `try_lock` means "this file system has no such locks".
pub fn is_unsupported(e: &io::Error) -> bool {
    // macOS answers ENOTSUP (45, not EOPNOTSUPP 102 there) for file systems without advisory
    // locks; on Linux the two are the same number.
    e.raw_os_error() == Some(libc::ENOTSUP)
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        )
        // std's answer on a Unix where it does not implement file locks.
        || e.kind() == io::ErrorKind::Unsupported
}

pub fn file_id(file: &File) -> io::Result<FileId> {
    let m = file.metadata()?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Who owns a file, and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

pub fn owner(file: &File) -> io::Result<Owner> {
    let m = file.metadata()?;
    Ok(Owner {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
    })
}

/// The effective user this process runs as.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn is_regular(file: &File) -> io::Result<bool> {
    Ok(file.metadata()?.file_type().is_file())
}

pub fn entry(path: &Path) -> io::Result<Entry> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            Ok(if t.is_file() {
                Entry::File(FileId {
                    dev: m.dev(),
                    ino: m.ino(),
                })
            } else if t.is_symlink() {
                Entry::Symlink
            } else if t.is_dir() {
                Entry::Directory
            } else {
                Entry::Other
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Missing),
        Err(e) => Err(e),
    }
}

/// `link(2)`: fails with `AlreadyExists` when `dst` exists, never replaces it.
pub fn hard_link(src: &Path, dst: &Path) -> io::Result<()> {
    std::fs::hard_link(src, dst)
}

/// Removes the name at `path` (a symlink itself, never its target).
pub fn remove(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)
}

/// `pread(2)`: reads at `offset` without moving the descriptor's cursor, which forks share.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.read_at(buf, offset)
}

/// `pwrite(2)`: writes at `offset` without moving the descriptor's cursor.
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.write_at(buf, offset)
}

/// The file system (or the user's quota on it) has no room: no free block or no free inode.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// `kill(pid, 0)`: EPERM proves the process exists (it belongs to another user).
pub fn pid_state(pid: u32) -> Pid {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return Pid::Gone;
    };
    if p <= 0 {
        return Pid::Gone;
    }
    // SAFETY: signal 0 sends nothing, it only checks that `p` exists and may be signalled; `p`
    // is positive, so it names one process, never a group.
    if unsafe { libc::kill(p, 0) } == 0 {
        return Pid::Running;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => Pid::RunningOtherUser,
        _ => Pid::Gone,
    }
}

pub fn current_pid() -> u32 {
    std::process::id()
}

pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which lives across the call; a name that
    // does not fit is truncated, and the search for NUL below stops at the end of `buf` anyway.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// A pipe whose two ends are closed on `exec` (the claim token of a handed-over lock, the
/// command's own handshakes).
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        // SAFETY: fds has room for two descriptors. A fork in another thread before the
        // flags are set would leak a copy into that child, closed at its exec; `run`
        // forks from this same thread, later.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for fd in fds {
            // SAFETY: fcntl flag updates on a descriptor just created and owned here.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
