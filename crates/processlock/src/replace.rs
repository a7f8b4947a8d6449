//! Replacing a running holder on purpose (`processlock run --replace`, `acquireLock` with
//! `replace`): the safe version of `kill $(cat service.pid)`. A lock file is only a claim, and
//! anyone who can put a file at the lock path can name any process in it (the start token of a
//! process is world-readable in `/proc/<pid>/stat`): a replacer running as root would kill
//! whatever another user names. So a holder is signalled only when it is proven, right before
//! each signal (`prove`):
//!
//! * the lock directory, and the path to it, can be changed by nobody but root and the
//!   directory's owner (`perms.rs`, and no group or other write on the directory itself): nobody
//!   else can have put the file there;
//! * the OS lock of the file at the lock path is held now: the file is a lock, not a claim;
//! * the file belongs to the user the named process runs as, or to the caller: it was written by
//!   that process (or its user), or by us;
//! * its record names the holder being replaced, that process runs on this host with the start
//!   token the record holds (so a PID reused by another process is never signalled), and it is
//!   not this process. On Linux the process is pinned by a pidfd before this last check, and the
//!   signal goes through that pidfd: the PID cannot be reused in between.
//!
//! A holder that changed meanwhile (another replacer won, a new instance started) is never
//! signalled. SIGTERM first, then the handover is awaited through the caller's event-driven wait;
//! SIGKILL once the grace period is over.

use std::fmt;
#[cfg(unix)]
use std::time::{Duration, Instant};

#[cfg(unix)]
use crate::error::{Conflict, Error};
use crate::liveness::{foreign_host, start_token};
#[cfg(unix)]
use crate::name::LockName;
#[cfg(unix)]
use crate::os;
use crate::os::current_pid;
use crate::record::Record;
#[cfg(unix)]
use crate::report::printable;
#[cfg(unix)]
use std::path::Path;

/// How long a replaced holder may take to exit after SIGTERM when the caller does not say.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// After SIGKILL the kernel drops the lock at once, unless a process the holder started
/// inherited it: this long, then it is a conflict.
#[cfg(unix)]
const AFTER_KILL: Duration = Duration::from_secs(5);

/// How a replacement waits and reports, supplied by its caller (the command, the addon).
#[cfg(unix)]
pub trait Replacing<T> {
    /// Waits up to `wait` for the lock; `Error::Conflict` (with the holder then) at the end.
    fn wait(&mut self, wait: Duration) -> crate::Result<T>;
    /// A line for the operator. `always`: printed even when the caller is quiet (a refusal).
    fn line(&mut self, line: String, always: bool);
    /// Whether the caller was told to stop meanwhile (a signal to the command).
    fn interrupted(&self) -> bool {
        false
    }
}

/// Replaces the holder named in `conflict` for the lock `name`, then takes the lock through the
/// caller's wait. A holder that cannot be proven (see the top of this file) is never signalled:
/// the conflict is returned as it was, after a line that says why.
#[cfg(unix)]
pub fn replace_holder<T>(
    name: &LockName,
    conflict: Box<Conflict>,
    grace: Duration,
    how: &mut dyn Replacing<T>,
) -> crate::Result<T> {
    let lock = name.display();
    let holder = conflict.holder.clone();
    if let Err(why) = signal_holder(&conflict.path, &holder, libc::SIGTERM) {
        how.line(
            format!(
                "[PROCESS_LOCK_REPLACE] Not replacing {lock} (PID {}): {why}",
                holder.pid
            ),
            true,
        );
        return Err(Error::Conflict(conflict));
    }
    how.line(
        format!(
            "[PROCESS_LOCK_REPLACE] Sent SIGTERM to {lock} (PID {}, started '{}'); SIGKILL in {} ms if it still holds the lock",
            holder.pid,
            printable(&holder.started),
            grace.as_millis()
        ),
        false,
    );
    let asked = Instant::now();
    let c = match how.wait(grace) {
        Err(Error::Conflict(c)) => c,
        Ok(taken) => {
            how.line(
                format!(
                    "[PROCESS_LOCK_REPLACE] PID {} let go of {lock} after {} ms",
                    holder.pid,
                    asked.elapsed().as_millis()
                ),
                false,
            );
            return Ok(taken);
        }
        other => return other,
    };
    if how.interrupted() || !same_process(&c.holder, &holder) {
        // Interrupted, or someone else holds it now: that one was never asked to go.
        return Err(Error::Conflict(c));
    }
    if let Err(why) = signal_holder(&c.path, &holder, libc::SIGKILL) {
        how.line(
            format!(
                "[PROCESS_LOCK_REPLACE] PID {} still holds {lock} after {} ms but cannot be killed: {why}",
                holder.pid,
                grace.as_millis()
            ),
            true,
        );
        return Err(Error::Conflict(c));
    }
    how.line(
        format!(
            "[PROCESS_LOCK_REPLACE] PID {} still held {lock} after {} ms; sent SIGKILL",
            holder.pid,
            grace.as_millis()
        ),
        false,
    );
    how.wait(AFTER_KILL)
}

#[cfg(unix)]
fn same_process(a: &Record, b: &Record) -> bool {
    a.pid == b.pid && a.start_token == b.start_token && a.hostname == b.hostname
}

/// Why a holder may not be signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The record names another host (or container), and its start token is not this
    /// machine's: its PID means nothing here.
    OtherHost(String),
    /// No start token in the record (an older writer): the PID alone proves nothing.
    NoStartToken,
    /// The PID is not running, or runs another process than the record's (a reused PID): the
    /// lock is held by something the record does not name (e.g. a process it started).
    NotTheRecordedProcess,
    /// The holder is this very process: it holds the lock through another path to the lock
    /// directory or another copy of the module.
    ThisProcess,
    /// The lock directory (or the path to it) can be changed by other users: anyone of them
    /// could have written the lock file. Says how.
    UnsafeDirectory(String),
    /// Nobody holds the OS lock of the file at the lock path: the file claims a holder, but no
    /// process holds the lock through it (a stale file, or one written by hand).
    NotLocked,
    /// The lock file belongs to a user (`owner`) other than the one the named process runs as
    /// (`runs_as`, real and effective) and than the caller (`me`).
    ForeignFile {
        owner: u32,
        runs_as: Option<(u32, u32)>,
        me: u32,
    },
    /// The file at the lock path is not the one whose record named the holder (replaced
    /// meanwhile), or could not be looked at. Says why.
    Unverified(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherHost(h) => write!(
                f,
                "the holder runs on host '{}', not on this host; stop it there",
                crate::report::printable(h)
            ),
            Refusal::NoStartToken => {
                f.write_str("the holder's record has no start token to verify its PID with")
            }
            Refusal::NotTheRecordedProcess => f.write_str(
                "the recorded process is not running (a process it started may hold the lock)",
            ),
            Refusal::ThisProcess => f.write_str(
                "the holder is this very process (through another path to the lock directory or another copy of this module)",
            ),
            Refusal::UnsafeDirectory(why) => write!(
                f,
                "other users can change the lock directory, so anyone of them could have written this lock file and named any process in it ({why}); stop the holder by hand, and keep the locks in a directory only root or the service's user can change",
            ),
            Refusal::NotLocked => f.write_str(
                "nobody holds the OS lock of its lock file, so the file proves nothing about that process (a stale file, or one written by hand); it was not signalled: stop it by hand if it is the service",
            ),
            Refusal::ForeignFile {
                owner,
                runs_as,
                me,
            } => {
                let runs_as = match runs_as {
                    Some((real, effective)) if real == effective => format!("uid {real}"),
                    Some((real, effective)) => format!("uid {effective} (real uid {real})"),
                    None => "a user this system does not tell".to_string(),
                };
                write!(
                    f,
                    "its lock file belongs to uid {owner}, but that process runs as {runs_as} and this one as uid {me}: the process did not write it, and another user may have, to have it killed; it was not signalled: look at the file's owner, and stop the holder by hand if it is the service"
                )
            }
            Refusal::Unverified(why) => write!(
                f,
                "its lock file could not be verified ({why}); it was not signalled"
            ),
        }
    }
}

/// Whether the process `holder` names may be signalled: the very process that wrote the record
/// runs on this machine (its start token matches), and it is not this one. The host name the
/// record carries does not decide (a renamed host, a process with its own host name): the token
/// does.
// Only `signal_holder` asks, and there is none on Windows.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn check_replaceable(holder: &Record) -> Result<(), Refusal> {
    if let Some(h) = foreign_host(holder) {
        return Err(Refusal::OtherHost(h.to_string()));
    }
    let recorded = holder.start_token.as_deref().ok_or(Refusal::NoStartToken)?;
    if holder.pid == 0 || start_token(holder.pid).as_deref() != Some(recorded) {
        return Err(Refusal::NotTheRecordedProcess);
    }
    if holder.pid == current_pid() {
        return Err(Refusal::ThisProcess);
    }
    Ok(())
}

/// Sends `signal` to the holder that the lock file at `path` names, once `prove` says it may.
#[cfg(unix)]
pub fn signal_holder(path: &Path, holder: &Record, signal: libc::c_int) -> Result<(), Refusal> {
    prove_file(path, holder)?;
    let pid = libc::pid_t::try_from(holder.pid).map_err(|_| Refusal::NotTheRecordedProcess)?;
    let pinned = Pinned::open(pid);
    // Checked once the process is pinned: the pidfd names this process until it is closed,
    // whatever happens to its PID.
    check_replaceable(holder)?;
    if pinned.signal(pid, signal) {
        Ok(())
    } else {
        Err(Refusal::NotTheRecordedProcess)
    }
}

/// Whether the lock file at `path` proves its holder (see the top of this file), apart from the
/// record's own checks (`check_replaceable`).
#[cfg(unix)]
fn prove_file(path: &Path, holder: &Record) -> Result<(), Refusal> {
    use crate::protocol::{dir_of, open_lock_file, read_record, try_lock};
    use crate::record::Parsed;
    let unverified = |e: Error| Refusal::Unverified(e.to_string());
    let dir = dir_of(path);
    if let Err(e) = crate::perms::check_dir(dir) {
        return Err(Refusal::UnsafeDirectory(e.to_string()));
    }
    let opened = open_lock_file(path, os::open_for_probe).map_err(unverified)?;
    let file = opened.ok_or_else(|| Refusal::Unverified("it was removed meanwhile".into()))?;
    let shared = crate::perms::group_or_others_may_write(dir)
        .map_err(|e| Refusal::Unverified(e.to_string()))?;
    if let Some(mode) = shared {
        return Err(Refusal::UnsafeDirectory(format!(
            "the directory has mode {:04o}: its group may create and rename files in it",
            mode & 0o7777
        )));
    }
    if try_lock(&file, true, path).map_err(unverified)? {
        let _ = os::unlock(&file);
        return Err(Refusal::NotLocked);
    }
    match read_record(&file, path).map_err(unverified)? {
        Parsed::Ours(r) | Parsed::Legacy(r) if same_process(&r, holder) => {}
        _ => {
            return Err(Refusal::Unverified(
                "the file at the lock path no longer names that process".into(),
            ))
        }
    }
    let owner = os::owner(&file)
        .map_err(|e| Refusal::Unverified(e.to_string()))?
        .uid;
    let me = os::effective_uid();
    let runs_as = os::process_uids(holder.pid);
    let written_by_its_user =
        runs_as.is_some_and(|(real, effective)| owner == real || owner == effective);
    if owner != me && !written_by_its_user {
        return Err(Refusal::ForeignFile { owner, runs_as, me });
    }
    Ok(())
}

/// A process held by a pidfd where the system has them (Linux 5.3 and later), so that a signal
/// reaches the process that was checked and not a later one with its PID.
#[cfg(unix)]
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
struct Pinned(Option<std::os::fd::OwnedFd>);

#[cfg(unix)]
impl Pinned {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn open(pid: libc::pid_t) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Pinned(None);
        }
        // SAFETY: a descriptor the kernel just gave us and nothing else owns.
        Pinned(Some(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int)
        }))
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn open(_pid: libc::pid_t) -> Self {
        Pinned(None)
    }

    /// Sends `signal`: through the pidfd when there is one, else by PID.
    fn signal(&self, pid: libc::pid_t, signal: libc::c_int) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(fd) = &self.0 {
            use std::os::fd::AsRawFd;
            // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo (the kernel fills
            // in what kill(2) would) and no flags.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            return rc == 0;
        }
        // SAFETY: kill(2) on a PID verified by its start token just before.
        unsafe { libc::kill(pid, signal) == 0 }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::name::LockName;
    use crate::protocol::{record_for, LockTarget};

    fn record_of(pid: u32) -> Record {
        let t = LockTarget::new("/nonexistent", LockName::new("backend", None).unwrap());
        record_for(&t, pid, None)
    }

    #[test]
    fn only_a_verified_process_of_this_host_is_replaceable() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let record = record_of(child.id());
        assert_eq!(check_replaceable(&record), Ok(()));

        let mut elsewhere = record.clone();
        elsewhere.hostname = Some("elsewhere.invalid".into());
        elsewhere.start_token = Some("linux:another-boot:1".into());
        assert_eq!(
            check_replaceable(&elsewhere),
            Err(Refusal::OtherHost("elsewhere.invalid".into()))
        );
        // Another host name, but this machine's start token of the running process: the host
        // was renamed after the record was written. It is the recorded process.
        let mut renamed = record.clone();
        renamed.hostname = Some("before-the-rename.invalid".into());
        assert_eq!(check_replaceable(&renamed), Ok(()));
        // This very process is never signalled.
        assert_eq!(
            check_replaceable(&record_of(std::process::id())),
            Err(Refusal::ThisProcess)
        );
        let mut reused = record.clone();
        reused.start_token = Some("linux:another-boot:1".into());
        assert_eq!(
            check_replaceable(&reused),
            Err(Refusal::NotTheRecordedProcess)
        );
        let mut older = record.clone();
        older.start_token = None;
        assert_eq!(check_replaceable(&older), Err(Refusal::NoStartToken));
        // Nothing above signalled it.
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            check_replaceable(&record),
            Err(Refusal::NotTheRecordedProcess)
        );
    }

    /// A lock file that names a running process is not enough: its OS lock must be held. Once
    /// it is (by a descriptor the named process holds), the process is signalled.
    #[test]
    fn a_holder_is_signalled_only_while_its_file_is_locked() {
        let t = crate::test_support::target("replace-locked");
        std::fs::create_dir_all(&t.dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let record = record_for(&t, child.id(), None);
        std::fs::write(&t.path, record.to_json()).unwrap();
        assert_eq!(
            signal_holder(&t.path, &record, libc::SIGTERM),
            Err(Refusal::NotLocked)
        );
        assert_eq!(child.try_wait().unwrap(), None);
        let lock = std::fs::File::open(&t.path).unwrap();
        assert!(os::try_lock(&lock, true).unwrap());
        assert_eq!(signal_holder(&t.path, &record, libc::SIGTERM), Ok(()));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        drop(lock);
        std::fs::remove_dir_all(&t.dir).unwrap();
    }

    /// A locked lock file that names a root process but belongs to another user proves nothing:
    /// that user wrote it (needs root, to give the file away).
    #[test]
    fn a_file_of_another_user_naming_our_process_is_refused() {
        if os::effective_uid() != 0 {
            eprintln!("skipped: needs root to give a file to another user");
            return;
        }
        let t = crate::test_support::target("replace-foreign");
        std::fs::create_dir_all(&t.dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let record = record_for(&t, child.id(), None);
        std::fs::write(&t.path, record.to_json()).unwrap();
        std::os::unix::fs::chown(&t.path, Some(65534), Some(65534)).unwrap();
        let lock = std::fs::File::open(&t.path).unwrap();
        assert!(os::try_lock(&lock, true).unwrap());
        let refused = signal_holder(&t.path, &record, libc::SIGTERM).unwrap_err();
        assert_eq!(
            refused,
            Refusal::ForeignFile {
                owner: 65534,
                runs_as: Some((0, 0)),
                me: 0
            }
        );
        assert!(refused
            .to_string()
            .starts_with("its lock file belongs to uid 65534, but that process runs as uid 0 and this one as uid 0"));
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        drop(lock);
        std::fs::remove_dir_all(&t.dir).unwrap();
    }
}
