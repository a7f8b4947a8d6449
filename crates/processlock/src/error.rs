//! Errors with stable codes. Every caller (JS layer, command) maps on `code()`, never on text.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::record::Record;
use crate::text::printable;

pub type Result<T> = std::result::Result<T, Error>;

/// Another live process holds the lock.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// How the requester named the lock, e.g. `backend (SHORT)`.
    pub lock: String,
    pub holder: Record,
    pub path: PathBuf,
    /// How long the caller waited before giving up (0 when it did not wait).
    pub waited_ms: u64,
    /// Something wrong with the holder's hold: it runs, but does not hold the OS lock.
    pub problem: Option<String>,
}

/// The stable code of an error: what callers (the JS layer, the command, scripts reading its
/// output) branch on. The binding and the JS layer's error classes are checked against this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Conflict,
    InvalidName,
    InvalidOption,
    NotAFile,
    Unsupported,
    Io,
    Aborted,
    UnsafeDir,
    Lost,
    /// A write refused by a fenced database (raised by the database and the JS fence, never
    /// by the native code; listed so that every code lives in this one list).
    Fenced,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Conflict => "LOCK_CONFLICT",
            ErrorCode::InvalidName => "LOCK_INVALID_NAME",
            ErrorCode::InvalidOption => "LOCK_INVALID_OPTION",
            ErrorCode::NotAFile => "LOCK_NOT_A_FILE",
            ErrorCode::Unsupported => "LOCK_UNSUPPORTED",
            ErrorCode::Io => "LOCK_IO",
            ErrorCode::Aborted => "LOCK_ABORTED",
            ErrorCode::UnsafeDir => "LOCK_UNSAFE_DIR",
            ErrorCode::Lost => "LOCK_LOST",
            ErrorCode::Fenced => "LOCK_FENCED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug)]
pub enum Error {
    /// A process type or trade side outside `[A-Za-z0-9_-]{1,max}`. Nothing was touched.
    InvalidName {
        field: &'static str,
        value: String,
        max: usize,
    },
    Conflict(Box<Conflict>),
    /// Something other than a regular file sits at the lock path. It is left alone.
    NotAFile {
        path: PathBuf,
        found: &'static str,
    },
    /// The file system cannot hold the kind of lock the protocol relies on.
    Unsupported {
        path: PathBuf,
        syscall: &'static str,
        source: io::Error,
    },
    Io {
        syscall: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A waiting acquisition was cancelled by its caller.
    Aborted,
    /// An option value that cannot be used (say, a process name with control characters).
    /// Nothing was touched.
    InvalidOption {
        option: &'static str,
        problem: String,
    },
    /// The lock directory lets someone else remove or replace the lock files in it. Nothing in
    /// it was touched.
    UnsafeDir {
        path: PathBuf,
        why: DirProblem,
    },
    /// A lock this process held is no longer its own: its file was removed or replaced by
    /// someone else, or (on a server) its session ended or fell silent past the lease.
    Lost {
        lock: String,
        reason: String,
    },
}

/// Why a lock directory is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirProblem {
    /// Every user may create entries in it (`mode`): without the sticky bit they may delete
    /// ours too; with it they may still plant files at the paths a lock relies on.
    WritableByOthers { mode: u32 },
    /// It belongs to a user (`owner`) other than the one running this process (`me`) and
    /// other than root.
    OwnedByOther { owner: u32, me: u32 },
    /// A directory above it (`at`) lets its group or every user rename what is in it, and is
    /// not sticky: the lock directory could be moved away or replaced by a link.
    ParentWritable { at: PathBuf, mode: u32 },
    /// A directory above it (`at`) belongs to another user, who could do the same.
    ParentOwnedByOther { at: PathBuf, owner: u32, me: u32 },
    /// A symbolic link on the way (`at`) belongs to another user in a sticky directory (such
    /// as `/tmp`), who could point it at another directory.
    LinkOwnedByOther { at: PathBuf, owner: u32, me: u32 },
}

impl Error {
    pub fn io(syscall: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            syscall,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A failed `flock` (Windows: `LockFileEx`) on `path`: `Unsupported` when its file system
    /// has no such locks, an I/O error otherwise.
    pub(crate) fn flock(path: &Path, source: io::Error) -> Self {
        if crate::os::is_unsupported(&source) {
            Error::Unsupported {
                path: path.to_path_buf(),
                syscall: "flock",
                source,
            }
        } else {
            Error::io("flock", path, source)
        }
    }

    /// The file at `path` was replaced under us round after round (`MAX_ROUNDS`): a safety net
    /// against livelock, never reached by a real race.
    pub(crate) fn kept_changing(syscall: &'static str, path: &Path) -> Self {
        Error::io(
            syscall,
            path,
            io::Error::other("the lock file kept changing; gave up after many rounds"),
        )
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidName { .. } => ErrorCode::InvalidName,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::NotAFile { .. } => ErrorCode::NotAFile,
            Error::Unsupported { .. } => ErrorCode::Unsupported,
            Error::Io { .. } => ErrorCode::Io,
            Error::Aborted => ErrorCode::Aborted,
            Error::InvalidOption { .. } => ErrorCode::InvalidOption,
            Error::UnsafeDir { .. } => ErrorCode::UnsafeDir,
            Error::Lost { .. } => ErrorCode::Lost,
        }
    }

    /// The OS error behind it, if any: `(errno, symbolic name)`.
    pub fn os_error(&self) -> Option<(i32, &'static str)> {
        match self {
            Error::Io { source, .. } | Error::Unsupported { source, .. } => {
                let n = source.raw_os_error()?;
                Some((n, errno_name(n)))
            }
            _ => None,
        }
    }

    pub fn syscall(&self) -> Option<&'static str> {
        match self {
            Error::Io { syscall, .. } | Error::Unsupported { syscall, .. } => Some(syscall),
            _ => None,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::Unsupported { path, .. }
            | Error::NotAFile { path, .. }
            | Error::UnsafeDir { path, .. } => Some(path),
            Error::Conflict(c) => Some(&c.path),
            _ => None,
        }
    }
}

/// `<lock> is already running (PID: N)`, or `... on host H (PID: N)` when the holder's record
/// names another host: how every backend's conflict message names the holder.
pub fn already_running(lock: &str, holder: &Record) -> String {
    match holder.other_host() {
        None => format!("{lock} is already running (PID: {})", holder.pid),
        Some(host) => format!(
            "{lock} is already running on host {} (PID: {})",
            printable(host),
            holder.pid
        ),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            Error::InvalidName { field, value, .. }
                if *field == "tradeSide" && value.trim().is_empty() =>
            {
                write!(
                    f,
                    "{code}: invalid {field} {value:?}: an empty side is not \"no side\"; leave the side out to use $TRADE_SIDE, or ask for a lock without a side (tradeSide: null; for the command, an empty TRADE_SIDE: TRADE_SIDE= processlock ...)"
                )
            }
            Error::InvalidName { field, value, max } => write!(
                f,
                "{code}: invalid {field} {value:?}: use 1 to {max} letters, digits, '-' or '_'"
            ),
            Error::Conflict(c) => {
                write!(f, "{code}: {}", already_running(&c.lock, &c.holder))?;
                if let Some(problem) = &c.problem {
                    write!(f, "; {problem}")?;
                }
                if c.waited_ms > 0 {
                    write!(f, "; gave up after waiting {} ms", c.waited_ms)?;
                }
                Ok(())
            }
            Error::NotAFile { path, found } => write!(
                f,
                "{code}: {} is a {found}, not a lock file; it was left untouched, remove it by hand if it is not needed",
                path.display()
            ),
            Error::Unsupported { path, syscall, source } => write!(
                f,
                "{code}: the file system of {} does not support file locks ({syscall}: {source}); put the lock directory on a local file system",
                path.display()
            ),
            Error::Io { syscall, path, source } => {
                write!(f, "{code}: {syscall} {} failed: {source}", path.display())
            }
            Error::Aborted => write!(f, "{code}: waiting for the lock was aborted"),
            Error::InvalidOption { option, problem } => write!(f, "{code}: {option} {problem}"),
            Error::UnsafeDir { path, why } => unsafe_dir_message(f, code, path, why),
            Error::Lost { lock, reason } => {
                write!(f, "{code}: the lock of {lock} was lost: {}", printable(reason))
            }
        }
    }
}

/// Says why the directory is refused and how to fix it, in the manner of a database server that
/// refuses a data directory with loose permissions.
fn unsafe_dir_message(
    f: &mut fmt::Formatter<'_>,
    code: ErrorCode,
    path: &Path,
    why: &DirProblem,
) -> fmt::Result {
    let shown = |p: &Path| printable(&p.to_string_lossy()).into_owned();
    let dir = shown(path);
    match why {
        DirProblem::WritableByOthers { mode } if mode & 0o1000 != 0 => write!(
            f,
            "{code}: lock directory {dir} is shared by every user ({:04o}, like /tmp): anyone \
             may create files in it, and so plant a file at this lock's path or at its removal \
             guard that blocks the service, or that a replace would trust; keep the locks in a \
             directory of your own inside it: mkdir -m 0750 '{dir}/<service>' and set \
             PROCESSLOCK_DIR to it",
            mode & 0o7777
        ),
        DirProblem::WritableByOthers { mode } => write!(
            f,
            "{code}: lock directory {dir} has unsafe permissions ({:04o}): every user may delete \
             files in it, so anyone could remove a running service's lock file and start a second \
             instance; fix it with: chmod o-w '{dir}'",
            mode & 0o7777
        ),
        DirProblem::OwnedByOther { owner, me } => write!(
            f,
            "{code}: lock directory {dir} is owned by uid {owner}, not by this process's user \
             (uid {me}) or root: that user could remove or replace the lock files in it; fix it \
             with: chown {me} '{dir}', or run this process as uid {owner}, or use a directory \
             of your own (PROCESSLOCK_DIR)"
        ),
        DirProblem::ParentWritable { at, mode } => {
            let at = shown(at);
            write!(
                f,
                "{code}: lock directory {dir} is below {at}, which its group or every user may \
                 change ({:04o}, not sticky): they could move the lock directory away or put a \
                 link to another directory in its place, and a second instance would start \
                 beside the running one; fix it with: chmod go-w '{at}', or keep the locks in a \
                 directory whose every parent only root or this user may change \
                 (PROCESSLOCK_DIR)",
                mode & 0o7777
            )
        }
        DirProblem::ParentOwnedByOther { at, owner, me } => {
            let at = shown(at);
            write!(
                f,
                "{code}: lock directory {dir} is below {at}, which is owned by uid {owner}, not \
                 by this process's user (uid {me}) or root: that user could move the lock \
                 directory away or put a link to another directory in its place, and a second \
                 instance would start beside the running one; fix it with: chown {me} '{at}', \
                 or keep the locks in a directory whose every parent belongs to root or uid {me} \
                 (PROCESSLOCK_DIR)"
            )
        }
        DirProblem::LinkOwnedByOther { at, owner, me } => {
            let at = shown(at);
            write!(
                f,
                "{code}: the path to lock directory {dir} goes through the symbolic link {at}, \
                 which belongs to uid {owner} (not to this process's user, uid {me}, or root) in \
                 a directory every user may write: that user could point it at another \
                 directory; name the lock directory by a path without it (PROCESSLOCK_DIR)"
            )
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Unsupported { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The POSIX name of an errno, as Node reports it in `err.code` of its own fs errors.
pub fn errno_name(n: i32) -> &'static str {
    #[cfg(unix)]
    {
        match n {
            libc::EACCES => "EACCES",
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EEXIST => "EEXIST",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::ELOOP => "ELOOP",
            libc::EROFS => "EROFS",
            libc::ENOSPC => "ENOSPC",
            libc::EDQUOT => "EDQUOT",
            libc::ENOLCK => "ENOLCK",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            #[cfg(target_os = "macos")]
            libc::ENOTSUP => "ENOTSUP",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::EMLINK => "EMLINK",
            libc::EXDEV => "EXDEV",
            libc::EIO => "EIO",
            libc::EINVAL => "EINVAL",
            libc::EMFILE => "EMFILE",
            libc::ENFILE => "ENFILE",
            libc::EBUSY => "EBUSY",
            _ => "EUNKNOWN",
        }
    }
    #[cfg(windows)]
    {
        // Win32 error codes, named as libuv names them in Node's own fs errors on Windows, except
        // ERROR_DIRECTORY, which this crate reports for "not a directory".
        use windows_sys::Win32::Foundation as w;
        let Ok(code) = u32::try_from(n) else {
            return "EUNKNOWN";
        };
        match code {
            w::ERROR_ACCESS_DENIED | w::ERROR_CANT_ACCESS_FILE => "EACCES",
            w::ERROR_PRIVILEGE_NOT_HELD => "EPERM",
            w::ERROR_FILE_NOT_FOUND
            | w::ERROR_PATH_NOT_FOUND
            | w::ERROR_INVALID_DRIVE
            | w::ERROR_INVALID_NAME
            | w::ERROR_BAD_PATHNAME => "ENOENT",
            w::ERROR_FILE_EXISTS | w::ERROR_ALREADY_EXISTS => "EEXIST",
            w::ERROR_DIRECTORY => "ENOTDIR",
            w::ERROR_DIRECTORY_NOT_SUPPORTED | w::ERROR_INVALID_FUNCTION => "EISDIR",
            w::ERROR_STOPPED_ON_SYMLINK | w::ERROR_CANT_RESOLVE_FILENAME => "ELOOP",
            w::ERROR_WRITE_PROTECT => "EROFS",
            w::ERROR_DISK_FULL | w::ERROR_HANDLE_DISK_FULL => "ENOSPC",
            w::ERROR_SHARING_VIOLATION | w::ERROR_LOCK_VIOLATION => "EBUSY",
            w::ERROR_NOT_SUPPORTED => "ENOTSUP",
            w::ERROR_INVALID_PARAMETER => "EINVAL",
            w::ERROR_FILENAME_EXCED_RANGE => "ENAMETOOLONG",
            w::ERROR_TOO_MANY_LINKS => "EMLINK",
            w::ERROR_NOT_SAME_DEVICE => "EXDEV",
            w::ERROR_TOO_MANY_OPEN_FILES => "EMFILE",
            _ => "EUNKNOWN",
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = n;
        "EUNKNOWN"
    }
}
