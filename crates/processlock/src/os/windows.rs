//! The OS layer on Windows: the same operations as `unix.rs`, with Win32 semantics.
//!
//! * Every open shares read, write and delete, so that others can read a held lock's record and
//!   a holder (or a stale-lock remover) can delete the file while rivals have it open.
//! * The lock path is never followed through a reparse point (symbolic link, junction, ...):
//!   files are opened with `FILE_FLAG_OPEN_REPARSE_POINT`, which opens the link itself, and a
//!   reparse point found that way is refused like `O_NOFOLLOW` refuses a symlink.
//! * The ownership lock is `LockFileEx` on one byte far beyond the end of the record (see
//!   `LOCK_OFFSET`). Windows byte-range locks are mandatory: a lock over the record would make
//!   every reader's `ReadFile` fail with `ERROR_LOCK_VIOLATION`.
//! * A lock is held by a handle and dropped by the OS when the last handle to it closes, however
//!   the process ends, as `flock` is on Unix.
//! * A record is published at the lock path by a rename that never replaces (`hard_link`), and a
//!   name is removed so that it is free at once even while the file is open (`remove`).

use super::ProcessStart;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::{FileExt, OpenOptionsExt};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_DIRECTORY_NOT_SUPPORTED, ERROR_FILE_EXISTS,
    ERROR_INVALID_FUNCTION, ERROR_INVALID_LOCK_RANGE, ERROR_INVALID_PARAMETER,
    ERROR_LOCK_VIOLATION, ERROR_MORE_DATA, ERROR_NOT_SUPPORTED, ERROR_STOPPED_ON_SYMLINK,
    ERROR_WRITE_PROTECT, FILETIME, HANDLE, STILL_ACTIVE, WAIT_OBJECT_0,
};
use windows_sys::Win32::Storage::FileSystem::{
    FileDispositionInfo, FileDispositionInfoEx, FileRenameInfo, GetFileInformationByHandle,
    GetFileType, LockFileEx, SetFileInformationByHandle, UnlockFileEx, BY_HANDLE_FILE_INFORMATION,
    DELETE, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT, FILE_DISPOSITION_FLAG_DELETE,
    FILE_DISPOSITION_FLAG_IGNORE_READONLY_ATTRIBUTE, FILE_DISPOSITION_FLAG_POSIX_SEMANTICS,
    FILE_DISPOSITION_INFO, FILE_DISPOSITION_INFO_EX, FILE_FLAG_BACKUP_SEMANTICS,
    FILE_FLAG_OPEN_REPARSE_POINT, FILE_READ_ATTRIBUTES, FILE_RENAME_INFO, FILE_SHARE_DELETE,
    FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_TYPE_DISK, LOCKFILE_EXCLUSIVE_LOCK,
    LOCKFILE_FAIL_IMMEDIATELY,
};
use windows_sys::Win32::System::SystemInformation::{ComputerNameDnsHostname, GetComputerNameExW};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, WaitForSingleObject,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{Entry, FileId, Pid};

const SHARE_ALL: u32 = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;

/// The byte that stands for ownership. Any offset past the largest record would do; this one is
/// as far out as a signed 64-bit offset goes, because Samba and Wine map Windows byte-range locks
/// onto POSIX `fcntl` locks, whose offsets are signed. Nobody ever reads or writes there, so the
/// mandatory lock never gets in a reader's way.
pub(super) const LOCK_OFFSET: u64 = i64::MAX as u64 - 1;
pub(super) const LOCK_LEN: u64 = 1;

fn handle(file: &File) -> HANDLE {
    file.as_raw_handle()
}

fn win_error(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
}

fn is_code(e: &io::Error, codes: &[u32]) -> bool {
    e.raw_os_error()
        .is_some_and(|n| codes.iter().any(|&c| c as i32 == n))
}

/// `OpenOptions` that share everything and open a reparse point itself instead of its target.
pub(super) fn options(extra_flags: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.share_mode(SHARE_ALL)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | extra_flags);
    o
}

fn info(file: &File) -> io::Result<BY_HANDLE_FILE_INFORMATION> {
    // SAFETY: plain data (integers and FILETIMEs), for which all zero bytes are a valid value.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is valid for the borrow of `file`; the call fills in `info`, which
    // lives across it.
    if unsafe { GetFileInformationByHandle(handle(file), &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// What `O_NOFOLLOW` does on Unix: an open that landed on a reparse point fails.
pub(super) fn refuse_reparse_point(file: File) -> io::Result<File> {
    if info(&file)?.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        return Err(win_error(ERROR_STOPPED_ON_SYMLINK));
    }
    Ok(file)
}

/// A new file that did not exist before. `CREATE_NEW` fails on any existing name, a link
/// included, so nothing is ever created through a link.
/// `mode` is a Unix permission: Windows files take their directory's ACL.
pub fn create_new(path: &Path, _mode: u32) -> io::Result<File> {
    options(0)
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

/// Opens the file at the lock path without following a reparse point. Read-write when permitted
/// (like on Unix, for network file systems that want a writable handle for exclusive locks);
/// read-only otherwise (another user's lock, a read-only attribute or medium).
pub fn open_existing(path: &Path) -> io::Result<File> {
    let file = match options(0).read(true).write(true).open(path) {
        Err(e) if is_code(&e, &[ERROR_ACCESS_DENIED, ERROR_WRITE_PROTECT]) => {
            options(0).read(true).open(path)?
        }
        other => other?,
    };
    refuse_reparse_point(file)
}

/// Opens the removal guard of a lock directory (`guard.rs`), creating it if needed, never
/// through a reparse point; read-only where we may not write it.
pub fn open_guard(path: &Path, _facts: super::DirFacts) -> io::Result<File> {
    let file = match options(0).read(true).write(true).create(true).open(path) {
        Err(e) if is_code(&e, &[ERROR_ACCESS_DENIED, ERROR_WRITE_PROTECT]) => {
            options(0).read(true).open(path)?
        }
        other => other?,
    };
    refuse_reparse_point(file)
}

/// Opens for reading only, for probes that must not need write permission.
pub fn open_for_probe(path: &Path) -> io::Result<File> {
    refuse_reparse_point(options(0).read(true).open(path)?)
}

pub(super) fn overlapped_at(offset: u64) -> OVERLAPPED {
    let mut ov = OVERLAPPED::default();
    ov.Anonymous.Anonymous.Offset = offset as u32;
    ov.Anonymous.Anonymous.OffsetHigh = (offset >> 32) as u32;
    ov
}

/// `Ok(true)`: locked; `Ok(false)`: another handle holds a conflicting lock. Never waits.
pub fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    let mut flags = LOCKFILE_FAIL_IMMEDIATELY;
    if exclusive {
        flags |= LOCKFILE_EXCLUSIVE_LOCK;
    }
    let mut ov = overlapped_at(LOCK_OFFSET);
    // SAFETY: a synchronous handle (std never opens with FILE_FLAG_OVERLAPPED), so the call
    // completes before it returns and `ov` outlives it.
    let ok = unsafe {
        LockFileEx(
            handle(file),
            flags,
            0,
            LOCK_LEN as u32,
            (LOCK_LEN >> 32) as u32,
            &mut ov,
        )
    };
    if ok != 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if is_code(&e, &[ERROR_LOCK_VIOLATION]) {
        Ok(false)
    } else {
        Err(e)
    }
}

pub fn unlock(file: &File) -> io::Result<()> {
    let mut ov = overlapped_at(LOCK_OFFSET);
    // SAFETY: as in `try_lock`.
    let ok = unsafe {
        UnlockFileEx(
            handle(file),
            0,
            LOCK_LEN as u32,
            (LOCK_LEN >> 32) as u32,
            &mut ov,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an error from `try_lock` means "this file system has no such locks" (some network
/// redirectors and FUSE-like drivers), or refuses our lock offset.
pub fn is_unsupported(e: &io::Error) -> bool {
    is_code(
        e,
        &[
            ERROR_NOT_SUPPORTED,
            ERROR_INVALID_FUNCTION,
            ERROR_INVALID_LOCK_RANGE,
        ],
    )
}

/// The file index, which is unique per volume (ReFS has 128-bit file ids; the 64-bit index it
/// reports here is still unique per volume in practice).
///
/// `dev` stays 0: every comparison of ids is between a handle and a path in the same directory,
/// so on the same volume, and the volume serial number is not reliable for a handle whose name
/// changed since it was opened (Wine derives it from that name: after the rename that publishes
/// a lock file, it reports 0 for the held handle and the real serial for the path).
pub fn file_id(file: &File) -> io::Result<FileId> {
    let i = info(file)?;
    Ok(FileId {
        dev: 0,
        ino: (u64::from(i.nFileIndexHigh) << 32) | u64::from(i.nFileIndexLow),
    })
}

/// A file on disk: not a directory, not a reparse point, not a pipe or device.
pub fn is_regular(file: &File) -> io::Result<bool> {
    // SAFETY: the handle is valid for the borrow.
    if unsafe { GetFileType(handle(file)) } != FILE_TYPE_DISK {
        return Ok(false);
    }
    let attrs = info(file)?.dwFileAttributes;
    Ok(attrs & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT) == 0)
}

/// What sits at `path`, without following a reparse point. Every reparse point counts as a
/// symbolic link: whatever it redirects to, the lock path must not be it.
pub fn entry(path: &Path) -> io::Result<Entry> {
    // Access 0 asks for attributes only: it never conflicts with anyone's share mode. Backup
    // semantics let the call open directories too.
    let file = match options(FILE_FLAG_BACKUP_SEMANTICS)
        .access_mode(0)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entry::Missing),
        Err(e) => return Err(e),
    };
    let i = info(&file)?;
    // SAFETY: the handle is valid while `file` is open, which it is until the end of this
    // function.
    let on_disk = || unsafe { GetFileType(handle(&file)) } == FILE_TYPE_DISK;
    Ok(if i.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        Entry::Symlink
    } else if i.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
        Entry::Directory
    } else if !on_disk() {
        Entry::Other
    } else {
        file_id(&file).map(Entry::File)?
    })
}

/// Publishes the temp file `src` at `dst`: fails with `AlreadyExists` when `dst` exists, never
/// replaces it. This is what `link(2)` gives the protocol on Unix; Windows can do it with a
/// rename that refuses to replace (atomic, like `link`), which Unix cannot. The rename is better
/// here than `CreateHardLinkW`: it works on volumes without hard links (FAT, exFAT), and it
/// leaves no second name behind that would have to be deleted while the file is held open.
/// Afterwards `src` is gone, so the caller's removal of the temp name finds nothing.
pub fn hard_link(src: &Path, dst: &Path) -> io::Result<()> {
    let file = options(0).access_mode(DELETE).open(src)?;
    rename_handle(&file, &absolute(dst)?, false)
}

/// Removes the name at `path` (a reparse point itself, never its target) so that the name is
/// free at once, even while other processes still have the file open.
///
/// Classic Windows deletion only marks an open file "delete pending": its name stays in the
/// directory until the last handle closes, and meanwhile creating or linking a file of that name
/// fails with `ERROR_ACCESS_DENIED`. A rival that has the old lock file open (to test its lock
/// or read its record) would then make the name unusable for everyone for a moment, and a
/// released lock could not be taken again at once. So:
/// 1. POSIX delete semantics (`FILE_DISPOSITION_FLAG_POSIX_SEMANTICS`, Windows 10 1607 and
///    later, on NTFS) unlink the name immediately, as `unlink(2)` does; open handles keep working.
/// 2. Where those are not available (older Windows, FAT, some network file systems), the file is
///    first renamed to a unique hidden name in the same directory, then marked for deletion. The
///    lock path is free at once; the hidden name goes away when the last handle closes.
pub fn remove(path: &Path) -> io::Result<()> {
    remove_with(path, true)
}

fn remove_with(path: &Path, try_posix: bool) -> io::Result<()> {
    let file = options(FILE_FLAG_BACKUP_SEMANTICS)
        .access_mode(DELETE | FILE_READ_ATTRIBUTES)
        .open(path)?;
    let attrs = info(&file)?.dwFileAttributes;
    if attrs & FILE_ATTRIBUTE_DIRECTORY != 0 && attrs & FILE_ATTRIBUTE_REPARSE_POINT == 0 {
        // A real directory: `unlink(2)` refuses those too.
        return Err(win_error(ERROR_DIRECTORY_NOT_SUPPORTED));
    }
    let posix = FILE_DISPOSITION_INFO_EX {
        Flags: FILE_DISPOSITION_FLAG_DELETE
            | FILE_DISPOSITION_FLAG_POSIX_SEMANTICS
            | FILE_DISPOSITION_FLAG_IGNORE_READONLY_ATTRIBUTE,
    };
    let posix_result = if try_posix {
        set_info(&file, FileDispositionInfoEx, &posix)
    } else {
        Err(win_error(ERROR_NOT_SUPPORTED))
    };
    match posix_result {
        Ok(()) => return Ok(()),
        // Older systems reject the information class or the flags; FAT and others answer
        // "not supported".
        Err(e)
            if is_code(
                &e,
                &[
                    ERROR_INVALID_PARAMETER,
                    ERROR_INVALID_FUNCTION,
                    ERROR_NOT_SUPPORTED,
                ],
            ) => {}
        Err(e) => return Err(e),
    }
    // If the rename fails, deleting still works, only without freeing the name at once.
    let aside = rename_aside(&file, path);
    let delete = FILE_DISPOSITION_INFO { DeleteFile: true };
    match set_info(&file, FileDispositionInfo, &delete) {
        Ok(()) => Ok(()),
        Err(e) => {
            if aside.is_ok() {
                // Put the name back (never over a file that took its place meanwhile).
                let _ = rename_handle(&file, &absolute(path)?, false);
            }
            Err(e)
        }
    }
}

static ASIDE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Renames the open file to `.<name>.<pid>.<n>.removed` in its directory. Hidden from listings
/// (leading dot, and it does not end in `.lock`) and never taken for an acquirer's temp file.
fn rename_aside(file: &File, path: &Path) -> io::Result<()> {
    let path = absolute(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = win_error(ERROR_ALREADY_EXISTS);
    for _ in 0..16 {
        let n = ASIDE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let aside = path.with_file_name(format!(".{name}.{}.{n}.removed", std::process::id()));
        match rename_handle(file, &aside, false) {
            Ok(()) => return Ok(()),
            Err(e) if is_code(&e, &[ERROR_ALREADY_EXISTS, ERROR_FILE_EXISTS]) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn absolute(path: &Path) -> io::Result<PathBuf> {
    std::path::absolute(path)
}

/// `SetFileInformationByHandle(FileRenameInfo)` with a full path (a bare name would be taken
/// relative to the working directory, not to the file's directory).
fn rename_handle(file: &File, to: &Path, replace: bool) -> io::Result<()> {
    let name: Vec<u16> = to.as_os_str().encode_wide().collect();
    let name_bytes = name.len() * 2;
    let name_at = std::mem::offset_of!(FILE_RENAME_INFO, FileName);
    // The structure, the name and a terminating NUL, in a buffer aligned for the structure
    // (it holds a handle-sized field).
    let size = name_at + name_bytes + 2;
    let mut buf = vec![0u64; size.div_ceil(8)];
    let rename = buf.as_mut_ptr().cast::<FILE_RENAME_INFO>();
    // SAFETY: `buf` is zeroed, aligned to 8 and at least `size` bytes long; the name is copied
    // into the bytes that follow the structure's fixed part, all inside `buf`.
    unsafe {
        (*rename).Anonymous.ReplaceIfExists = replace;
        (*rename).RootDirectory = std::ptr::null_mut();
        (*rename).FileNameLength =
            u32::try_from(name_bytes).map_err(|_| io::Error::other("name too long"))?;
        std::ptr::copy_nonoverlapping(
            name.as_ptr(),
            buf.as_mut_ptr().cast::<u8>().add(name_at).cast::<u16>(),
            name.len(),
        );
    }
    // SAFETY: the buffer is valid for `size` bytes for the duration of the call.
    let ok = unsafe {
        SetFileInformationByHandle(
            handle(file),
            FileRenameInfo,
            buf.as_ptr().cast(),
            size as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_info<T>(file: &File, class: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid, fully initialised structure of the size passed.
    let ok = unsafe {
        SetFileInformationByHandle(
            handle(file),
            class,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A positioned read. On Windows it moves the handle's file pointer; nothing here depends on it
/// (a record is written once, before it is linked).
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.seek_read(buf, offset)
}

/// Writes at `offset` (the handle's position moves, but nothing here relies on it).
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    file.seek_write(buf, offset)
}

/// The volume (or the user's quota on it) has no room.
pub fn is_out_of_space(e: &io::Error) -> bool {
    const ERROR_HANDLE_DISK_FULL: u32 = 39;
    const ERROR_DISK_FULL: u32 = 112;
    const ERROR_DISK_QUOTA_EXCEEDED: u32 = 1295;
    is_code(
        e,
        &[
            ERROR_HANDLE_DISK_FULL,
            ERROR_DISK_FULL,
            ERROR_DISK_QUOTA_EXCEEDED,
        ],
    )
}

/// A handle to a process that can ask its times and exit status, and wait on it when allowed.
fn open_process(pid: u32) -> io::Result<OwnedHandle> {
    let open = |access: u32| {
        // SAFETY: no pointers; a null return means failure.
        let h = unsafe { OpenProcess(access, 0, pid) };
        if h.is_null() {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a fresh handle that nothing else owns.
            Ok(unsafe { OwnedHandle::from_raw_handle(h) })
        }
    };
    match open(PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE) {
        Err(e) if is_code(&e, &[ERROR_ACCESS_DENIED]) => open(PROCESS_QUERY_LIMITED_INFORMATION),
        other => other,
    }
}

/// Whether the process has exited (its object lives on while someone holds a handle to it:
/// the Windows counterpart of a zombie).
fn has_exited(process: &OwnedHandle) -> bool {
    let h = process.as_raw_handle();
    let mut code = 0u32;
    // SAFETY: valid handle and out pointer.
    if unsafe { GetExitCodeProcess(h, &mut code) } != 0 && code != STILL_ACTIVE as u32 {
        return true;
    }
    // STILL_ACTIVE (259) is also a legal exit code: the process object's signal state is the
    // real answer, when we were granted SYNCHRONIZE (otherwise this fails: assume running).
    // SAFETY: valid handle; a zero timeout never blocks.
    unsafe { WaitForSingleObject(h, 0) == WAIT_OBJECT_0 }
}

/// `OpenProcess`: `ERROR_ACCESS_DENIED` proves the process exists (protected, or another
/// user's); `ERROR_INVALID_PARAMETER` means no process has that id.
pub fn pid_state(pid: u32) -> Pid {
    if pid == 0 {
        // The System Idle Process: never a lock holder.
        return Pid::Gone;
    }
    match open_process(pid) {
        Ok(h) if has_exited(&h) => Pid::Gone,
        Ok(_) => Pid::Running,
        Err(e) if is_code(&e, &[ERROR_ACCESS_DENIED]) => Pid::RunningOtherUser,
        Err(_) => Pid::Gone,
    }
}

pub fn current_pid() -> u32 {
    std::process::id()
}

/// The DNS host name, as Node's `os.hostname()` reports it.
pub fn hostname() -> Option<String> {
    let mut buf = vec![0u16; 256];
    for _ in 0..2 {
        let mut size = buf.len() as u32;
        // SAFETY: `size` is the buffer's length in characters.
        let ok =
            unsafe { GetComputerNameExW(ComputerNameDnsHostname, buf.as_mut_ptr(), &mut size) };
        if ok != 0 {
            return String::from_utf16(&buf[..size as usize]).ok();
        }
        if !is_code(&io::Error::last_os_error(), &[ERROR_MORE_DATA]) {
            return None;
        }
        // `size` now holds the length needed, terminating NUL included.
        buf.resize(size as usize + 1, 0);
    }
    None
}

/// 100 ns intervals between 1601-01-01 (the `FILETIME` epoch) and 1970-01-01.
const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// The creation time from `GetProcessTimes`: an absolute time in 100 ns units, so it tells
/// apart any two processes that had the same id, across reboots too. (Its real resolution is
/// the system timer's, which is fine: an id is only reused after its process has ended.)
pub fn process_start(pid: u32) -> Option<ProcessStart> {
    if pid == 0 {
        return None;
    }
    let process = open_process(pid).ok()?;
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: valid handle and four valid out pointers.
    let ok = unsafe {
        GetProcessTimes(
            process.as_raw_handle(),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    if ok == 0 {
        return None;
    }
    let ticks = (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime);
    let wall_ms = i64::try_from(ticks)
        .ok()
        .map(|t| (t - FILETIME_UNIX_EPOCH).div_euclid(10_000));
    Some(ProcessStart {
        token: format!("windows:{ticks}"),
        wall_ms,
        zombie: has_exited(&process),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::name::LockName;
    use crate::os::read_all;
    use crate::protocol::{acquire, inspect, Event, Inspection, LockTarget};
    use crate::test_support::assert_own_start_is_sane;
    use std::io::Write;

    fn scratch(tag: &str) -> PathBuf {
        let n = ASIDE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pl-win-{tag}-{}-{n}", std::process::id()));
        // Process ids come back soon on Windows: clear what a failed earlier run left.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_lock_excludes_other_handles_but_not_readers() {
        let dir = scratch("lock");
        let path = dir.join("a.lock");
        let mut owner = create_new(&path, 0o600).unwrap();
        assert!(try_lock(&owner, true).unwrap());
        owner.write_all(b"{\"pid\":1}").unwrap();

        let rival = open_existing(&path).unwrap();
        assert!(!try_lock(&rival, true).unwrap());
        assert!(!try_lock(&rival, false).unwrap());
        // The mandatory lock sits far beyond the record: reading it is never refused.
        assert_eq!(read_all(&rival, 1024).unwrap(), b"{\"pid\":1}");
        assert_eq!(
            read_all(&open_for_probe(&path).unwrap(), 1024).unwrap(),
            b"{\"pid\":1}"
        );

        drop(owner);
        assert!(try_lock(&rival, true).unwrap());
        unlock(&rival).unwrap();
        let probe = open_for_probe(&path).unwrap();
        assert!(try_lock(&probe, false).unwrap());
        assert!(try_lock(&rival, false).unwrap(), "shared locks coexist");
        drop((rival, probe));
        crate::guard::remove_test_dir(&dir).unwrap();
    }

    #[test]
    fn remove_frees_the_name_at_once_while_the_file_is_open() {
        let dir = scratch("remove");
        let path = dir.join("a.lock");
        let mut first = create_new(&path, 0o600).unwrap();
        first.write_all(b"old").unwrap();
        let reader = open_existing(&path).unwrap();
        assert!(try_lock(&first, true).unwrap());

        remove(&path).unwrap();
        assert_eq!(entry(&path).unwrap(), Entry::Missing);
        // A new file of the same name, while both old handles are still open.
        let second = create_new(&path, 0o600).unwrap();
        assert!(try_lock(&second, true).unwrap(), "a new file, a new lock");
        assert_eq!(read_all(&reader, 64).unwrap(), b"old");
        assert_eq!(
            entry(&path).unwrap(),
            Entry::File(file_id(&second).unwrap())
        );
        assert_ne!(file_id(&first).unwrap(), file_id(&second).unwrap());
        assert!(matches!(remove(&path), Ok(())));
        assert_eq!(remove(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
        drop((first, second, reader));
        crate::guard::remove_test_dir(&dir).unwrap();
    }

    #[test]
    fn without_posix_deletion_the_name_is_freed_by_renaming_aside() {
        let dir = scratch("aside");
        let path = dir.join("a.lock");
        let mut first = create_new(&path, 0o600).unwrap();
        first.write_all(b"old").unwrap();
        let reader = open_existing(&path).unwrap();

        remove_with(&path, false).unwrap();
        assert_eq!(entry(&path).unwrap(), Entry::Missing);
        let second = create_new(&path, 0o600).unwrap();
        assert_eq!(read_all(&reader, 64).unwrap(), b"old");
        let names = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let during = names(&dir);
        assert_eq!(during.len(), 2, "{during:?}");
        assert!(during[0].starts_with(".a.lock.") && during[0].ends_with(".removed"));
        drop((first, reader));
        assert_eq!(
            names(&dir),
            ["a.lock"],
            "the renamed file went with its last handle"
        );
        drop(second);
        crate::guard::remove_test_dir(&dir).unwrap();
    }

    #[test]
    fn links_entries_and_ids() {
        let dir = scratch("entry");
        let temp = dir.join(".a.lock.1.1.tmp");
        let path = dir.join("a.lock");
        let file = create_new(&temp, 0o600).unwrap();
        assert!(is_regular(&file).unwrap());
        // Asked while the file still has its first name (Wine cannot tell the volume of a file
        // whose every name it opened it by is gone).
        let id = file_id(&file).unwrap();
        assert_eq!(
            create_new(&temp, 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        hard_link(&temp, &path).unwrap();
        assert_eq!(
            entry(&temp).unwrap(),
            Entry::Missing,
            "published by renaming"
        );
        assert_eq!(remove(&temp).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(entry(&path).unwrap(), Entry::File(id));
        let other = dir.join(".a.lock.1.2.tmp");
        let other_file = create_new(&other, 0o600).unwrap();
        assert_eq!(
            hard_link(&other, &path).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(entry(&path).unwrap(), Entry::File(id), "never replaced");
        assert_eq!(
            entry(&other).unwrap(),
            Entry::File(file_id(&other_file).unwrap())
        );
        drop(other_file);
        remove(&other).unwrap();
        assert_eq!(entry(&dir.join("none")).unwrap(), Entry::Missing);
        assert_eq!(entry(&dir).unwrap(), Entry::Directory);
        assert!(open_existing(&dir).is_err());
        assert!(remove(&dir).is_err(), "a directory is never removed");

        // Creating symbolic links needs a privilege or developer mode: test them where allowed
        // (Wine 8 answers success and creates nothing).
        let link = dir.join("b.lock");
        if std::os::windows::fs::symlink_file(&path, &link).is_ok()
            && std::fs::symlink_metadata(&link).is_ok()
        {
            assert_eq!(entry(&link).unwrap(), Entry::Symlink);
            assert!(open_existing(&link).is_err());
            assert!(open_for_probe(&link).is_err());
            assert_eq!(
                create_new(&link, 0o600).unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
            remove(&link).unwrap();
            assert_eq!(entry(&link).unwrap(), Entry::Missing);
            assert_eq!(entry(&path).unwrap(), Entry::File(id));
        }
        drop(file);
        crate::guard::remove_test_dir(&dir).unwrap();
    }

    #[test]
    fn processes_live_exit_and_keep_their_start() {
        let me = current_pid();
        assert_eq!(pid_state(me), Pid::Running);
        assert_eq!(pid_state(0), Pid::Gone);
        assert_eq!(process_start(me), process_start(me));
        let a = assert_own_start_is_sane(process_start(me));

        // This test binary, asked to run no test, exits at once.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "no-such-test"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pid_state(pid) != Pid::Gone {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Exited, its process object kept alive by our handle: the zombie of Windows.
        let start = process_start(pid).unwrap();
        assert!(start.zombie);
        assert_ne!(start.token, a.token);
        child.wait().unwrap();
        assert!(hostname().is_some_and(|h| !h.is_empty()));
    }

    #[test]
    fn the_protocol_end_to_end() {
        let dir = scratch("protocol");
        let target = LockTarget::new(&dir, LockName::new("svc", Some("SHORT")).unwrap());
        let held = acquire(&target, None).unwrap().lock;
        assert!(
            matches!(inspect(&target.path).unwrap(), Inspection::Held(r) if r.pid == current_pid())
        );
        match acquire(&target, None) {
            Err(Error::Conflict(c)) => assert_eq!(c.holder.pid, current_pid()),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(held.release().unwrap());
        assert_eq!(entry(&target.path).unwrap(), Entry::Missing);

        // A holder that vanished without releasing: its file stays, its lock does not.
        let again = acquire(&target, None).unwrap().lock;
        drop(again);
        assert!(matches!(
            inspect(&target.path).unwrap(),
            Inspection::Stale(_)
        ));
        let taken = acquire(&target, None).unwrap();
        assert!(taken
            .events
            .iter()
            .any(|e| matches!(e, Event::StaleRemoved { pid } if *pid == current_pid())));
        assert!(taken.lock.release().unwrap());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != crate::guard::GUARD_FILE)
            .filter(|e| !crate::fencing::is_generation_file(&e.file_name()))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        crate::guard::remove_test_dir(&dir).unwrap();
    }
    const HOLD_ENV: &str = "PROCESSLOCK_TEST_HOLD_DIR";

    /// Not a test of its own: the lock holder that `a_killed_holder_is_replaced_at_once` runs in
    /// a child process (this test binary again). Without the variable it does nothing.
    #[test]
    fn hold_for_parent() {
        let Some(dir) = std::env::var_os(HOLD_ENV) else {
            return;
        };
        let target = LockTarget::new(PathBuf::from(dir), LockName::new("svc", None).unwrap());
        let held = acquire(&target, None).unwrap().lock;
        println!("held");
        std::io::stdout().flush().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
        drop(held);
    }

    #[test]
    fn a_killed_holder_is_replaced_at_once() {
        use std::io::BufRead;
        let dir = scratch("killed");
        let target = LockTarget::new(&dir, LockName::new("svc", None).unwrap());
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "os::windows::tests::hold_for_parent",
                "--nocapture",
            ])
            .env(HOLD_ENV, &dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("held") {
            line.clear();
            assert_ne!(
                out.read_line(&mut line).unwrap(),
                0,
                "the holder ended early"
            );
        }
        match acquire(&target, None) {
            Err(Error::Conflict(c)) => assert_eq!(c.holder.pid, child.id()),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(
            matches!(inspect(&target.path).unwrap(), Inspection::Held(r) if r.pid == child.id())
        );

        child.kill().unwrap(); // TerminateProcess: nothing of the holder runs any more
        child.wait().unwrap();
        let taken = acquire(&target, None).unwrap();
        assert!(taken
            .events
            .iter()
            .any(|e| matches!(e, Event::StaleRemoved { pid } if *pid == child.id())));
        assert!(taken.lock.release().unwrap());
        crate::guard::remove_test_dir(&dir).unwrap();
    }
}
