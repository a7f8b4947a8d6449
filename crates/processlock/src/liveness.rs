//! Whether the process a record names still runs. Used for files without an OS lock holder that
//! older writers left (their only evidence is a PID), and to tell a live holder from a brief
//! probe of a dead one's file.

use crate::clock::parse_iso8601_ms;
use crate::os;
use crate::record::Record;

/// Tolerance for comparing a record's `started` with the OS's process start time: boot time is
/// known to the second and clocks drift a little.
const START_SLACK_MS: i64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidState {
    /// The recorded process runs (perhaps as another user).
    Alive,
    /// No process has that PID, or only its zombie is left.
    Dead,
    /// A process has that PID, but a later one than the holder: the PID was reused.
    Recycled,
    /// The record comes from another host: its PID means nothing here.
    Remote,
}

impl PidState {
    pub fn is_alive(self) -> bool {
        matches!(self, PidState::Alive | PidState::Remote)
    }
}

/// The start token of a running process (see `Record::start_token`).
pub fn start_token(pid: u32) -> Option<String> {
    // Our own token never changes, and every acquire writes it: read /proc once, not per lock.
    // Keyed by PID so that a forked child does not inherit its parent's token.
    static OWN: std::sync::Mutex<Option<(u32, Option<String>)>> = std::sync::Mutex::new(None);
    if pid == os::current_pid() {
        let mut own = OWN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_pid, token)) = own.as_ref() {
            if *cached_pid == pid {
                return token.clone();
            }
        }
        let token = os::process_start(pid).map(|s| s.token);
        *own = Some((pid, token.clone()));
        return token;
    }
    os::process_start(pid).map(|s| s.token)
}

pub fn judge_pid(record: &Record) -> PidState {
    judge_pid_taken(record, parse_iso8601_ms(&record.started))
}

/// How a file of an older, PID-only writer is judged (it holds no OS lock: the PID is all the
/// evidence). `written_ms` is the file's modification time: a bare PID says nothing else, and
/// a process that started after the file was written cannot have written it.
///
/// A file naming our own PID was not written by us (we write records of our own format): the PID
/// was reused, as in containers where every service is PID 1.
pub(crate) fn judge_legacy(record: &Record, written_ms: Option<i64>) -> PidState {
    let remote = record
        .hostname
        .as_deref()
        .is_some_and(|theirs| host_name().is_some_and(|ours| theirs != ours));
    if !remote && record.pid == os::current_pid() {
        return PidState::Recycled;
    }
    judge_pid_taken(record, parse_iso8601_ms(&record.started).or(written_ms))
}

/// Whether a record of our format names a process of this host, other than us, that runs and is
/// the very process that wrote it (same start token). Such a holder is alive even when nobody
/// holds the file's OS lock: it closed its descriptor, or the directory is reached through
/// mounts that do not share locks. Only exact evidence counts: another host, a missing token or a
/// process we cannot look at is not enough to keep a file no OS lock protects.
pub(crate) fn runs_as_recorded(record: &Record) -> bool {
    if record.pid == os::current_pid() {
        return false;
    }
    let same_host = matches!(
        (record.hostname.as_deref(), host_name()),
        (Some(theirs), Some(ours)) if theirs == ours
    );
    let Some(token) = record.start_token.as_deref().filter(|_| same_host) else {
        return false;
    };
    let runs =
        || matches!(os::process_start(record.pid), Some(now) if !now.zombie && now.token == token);
    // A holder killed an instant ago has already lost its OS lock (the kernel closes its files
    // early in the exit) while it may not look ended yet. Linux says so at once (the exiting
    // flag, read with the start token); where nothing says it, such a holder gets a moment to
    // end, and one that really runs without its lock is still there after it.
    if ENDING_PATIENCE.is_zero() {
        return runs();
    }
    let deadline = std::time::Instant::now() + ENDING_PATIENCE;
    while runs() {
        if std::time::Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

/// How long a recorded holder without its OS lock gets to finish ending before it counts as a
/// holder that runs on without it. Not needed where the process state tells an ending process:
/// Linux (the exiting flag) and Windows (the exit code, set as termination begins).
#[cfg(all(unix, not(target_os = "linux")))]
const ENDING_PATIENCE: std::time::Duration = std::time::Duration::from_millis(20);
#[cfg(not(all(unix, not(target_os = "linux"))))]
const ENDING_PATIENCE: std::time::Duration = std::time::Duration::ZERO;

/// `taken_ms`: when the lock was taken, for records without a start token.
fn judge_pid_taken(record: &Record, taken_ms: Option<i64>) -> PidState {
    if let (Some(theirs), Some(ours)) = (record.hostname.as_deref(), host_name()) {
        if theirs != ours {
            return PidState::Remote;
        }
    }
    if os::pid_state(record.pid) == os::Pid::Gone {
        return PidState::Dead;
    }
    let Some(now) = os::process_start(record.pid) else {
        // Another user's process on a system that hides its details: it exists, that is all
        // we can know.
        return PidState::Alive;
    };
    if now.zombie {
        return PidState::Dead;
    }
    if let Some(token) = &record.start_token {
        return if *token == now.token {
            PidState::Alive
        } else {
            PidState::Recycled
        };
    }
    // A record without a token (the legacy format): a process that started after the lock was
    // taken cannot be the process that took it.
    if let (Some(taken), Some(began)) = (taken_ms, now.wall_ms) {
        if began > taken + START_SLACK_MS {
            return PidState::Recycled;
        }
    }
    PidState::Alive
}

pub(crate) fn host_name() -> Option<&'static str> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(os::hostname).as_deref()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn record(pid: u32) -> Record {
        Record {
            started: crate::clock::now_iso8601(),
            ..Record::pid_only(pid)
        }
    }

    #[test]
    fn live_dead_recycled_remote() {
        let me = std::process::id();
        assert_eq!(judge_pid(&record(me)), PidState::Alive);

        let mut tokened = record(me);
        tokened.start_token = start_token(me);
        assert_eq!(judge_pid(&tokened), PidState::Alive);
        tokened.start_token = Some("linux:other-boot:1".into());
        assert_eq!(judge_pid(&tokened), PidState::Recycled);

        let mut old = record(me);
        old.started = "2001-01-01T00:00:00.000Z".into();
        assert_eq!(
            judge_pid(&old),
            PidState::Recycled,
            "process started after the record"
        );

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(judge_pid(&record(pid)), PidState::Dead);

        let mut remote = record(me);
        remote.hostname = Some("surely-not-this-host.invalid".into());
        assert_eq!(judge_pid(&remote), PidState::Remote);
    }

    #[test]
    fn a_zombie_is_dead() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200)); // exited, not reaped
        assert_eq!(judge_pid(&record(pid)), PidState::Dead);
        drop(child);
    }
}
