//! Replacing a running holder on purpose (`processlock run --replace`): the safe version of
//! `kill $(cat service.pid)`. A holder is signalled only when its record proves who it is: it
//! runs on this host, and the process with its PID has the start token the record holds (so a
//! PID reused by another process is never signalled). The caller then waits for the handover
//! through the normal event-driven wait.

use std::fmt;

use crate::liveness::{host_name, start_token};
use crate::record::Record;

/// Why a holder may not be signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The record names another host (or container): its PID means nothing here.
    OtherHost(String),
    /// The record names no host, or this host's name is unknown: nothing proves it is ours.
    UnknownHost,
    /// No start token in the record (an older writer): the PID alone proves nothing.
    NoStartToken,
    /// The PID is not running, or runs another process than the record's (a reused PID): the
    /// lock is held by something the record does not name (e.g. a process it started).
    NotTheRecordedProcess,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherHost(h) => write!(
                f,
                "the holder runs on host '{}', not on this host; stop it there",
                crate::report::printable(h)
            ),
            Refusal::UnknownHost => {
                f.write_str("the holder's record does not say which host it runs on")
            }
            Refusal::NoStartToken => {
                f.write_str("the holder's record has no start token to verify its PID with")
            }
            Refusal::NotTheRecordedProcess => f.write_str(
                "the recorded process is not running (a process it started may hold the lock)",
            ),
        }
    }
}

/// Whether the process `holder` names may be signalled: same host, same process.
// Only `signal_holder` asks, and there is none on Windows.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn check_replaceable(holder: &Record) -> Result<(), Refusal> {
    let ours = host_name().ok_or(Refusal::UnknownHost)?;
    match holder.hostname.as_deref() {
        Some(h) if h == ours => {}
        Some(h) => return Err(Refusal::OtherHost(h.to_string())),
        None => return Err(Refusal::UnknownHost),
    }
    let recorded = holder.start_token.as_deref().ok_or(Refusal::NoStartToken)?;
    if holder.pid == 0 || start_token(holder.pid).as_deref() != Some(recorded) {
        return Err(Refusal::NotTheRecordedProcess);
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
        assert_eq!(
            signal_holder(&elsewhere, libc::SIGTERM),
            Err(Refusal::OtherHost("elsewhere.invalid".into()))
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
