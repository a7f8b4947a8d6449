//! Replacing a running holder on purpose (`processlock run --replace`, `acquireLock` with
//! `replace`): the safe version of `kill $(cat service.pid)`. A holder is signalled only when its
//! record proves who it is: it runs on this host, and the process with its PID has the start
//! token the record holds (so a PID reused by another process is never signalled). It is checked
//! again right before each signal, so a holder that changed meanwhile (another replacer won, a
//! new instance started) is never signalled. SIGTERM first, then the handover is awaited through
//! the caller's event-driven wait; SIGKILL once the grace period is over.

use std::fmt;
#[cfg(unix)]
use std::time::{Duration, Instant};

#[cfg(unix)]
use crate::error::{Conflict, Error};
use crate::liveness::{foreign_host, start_token};
#[cfg(unix)]
use crate::name::LockName;
use crate::os::current_pid;
use crate::record::Record;
#[cfg(unix)]
use crate::report::printable;

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
/// caller's wait. A holder that cannot be verified (another host, no start token, a reused PID)
/// is never signalled: the conflict is returned as it was.
#[cfg(unix)]
pub fn replace_holder<T>(
    name: &LockName,
    conflict: Box<Conflict>,
    grace: Duration,
    how: &mut dyn Replacing<T>,
) -> crate::Result<T> {
    let lock = name.display();
    let holder = conflict.holder.clone();
    if let Err(why) = signal_holder(&holder, libc::SIGTERM) {
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
    if let Err(why) = signal_holder(&holder, libc::SIGKILL) {
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

/// Sends `signal` to the holder after `check_replaceable`, checked again right before.
#[cfg(unix)]
pub fn signal_holder(holder: &Record, signal: libc::c_int) -> Result<(), Refusal> {
    check_replaceable(holder)?;
    let pid = libc::pid_t::try_from(holder.pid).map_err(|_| Refusal::NotTheRecordedProcess)?;
    // SAFETY: kill(2) on a PID we just verified by its start token.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(Refusal::NotTheRecordedProcess);
    }
    Ok(())
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
            signal_holder(&elsewhere, libc::SIGTERM),
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

        assert_eq!(signal_holder(&record, libc::SIGTERM), Ok(()));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(
            check_replaceable(&record),
            Err(Refusal::NotTheRecordedProcess)
        );
    }
}
