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
    if foreign_host(record).is_none() && record.pid == os::current_pid() {
        return PidState::Recycled;
    }
    judge_pid_taken(record, parse_iso8601_ms(&record.started).or(written_ms))
}

/// Whether a record of our format names a process of this machine, other than us, that runs and
/// is the very process that wrote it (same start token). Such a holder is alive even when nobody
/// holds the file's OS lock: it closed its descriptor, or the directory is reached through
/// mounts that do not share locks. Only exact evidence counts: a missing token or a process we
/// cannot look at is not enough to keep a file no OS lock protects. The token is that evidence
/// whatever host name the record carries (see `foreign_host`).
pub(crate) fn runs_as_recorded(record: &Record) -> bool {
    if record.pid == os::current_pid() {
        return false;
    }
    let Some(token) = record.start_token.as_deref() else {
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

/// The host a record names when its PID means nothing here: another machine, or another
/// container (another PID namespace) on this one. `None` when the PID is this machine's.
///
/// The host name alone does not decide: a host renamed after the record was written, or a
/// process that runs with another host name (its own UTS namespace), still writes PIDs of this
/// machine. The start token tells better. On Linux it holds the boot id (and the PID namespace
/// outside the machine's own): a token of this boot names a process here, running or ended.
/// macOS and Windows tokens are the start instant of the process, with no boot id: one is known
/// as ours while the process with its PID runs with exactly that token.
pub(crate) fn foreign_host(record: &Record) -> Option<&str> {
    let theirs = record.hostname.as_deref()?;
    if host_name()? == theirs {
        return None;
    }
    let ours = record.start_token.as_deref().is_some_and(|token| {
        os::token_is_local(token) || start_token(record.pid).as_deref() == Some(token)
    });
    (!ours).then_some(theirs)
}

impl Record {
    /// The host named in the record when the holder runs elsewhere (another machine, or a
    /// container with its own host name and PIDs): its PID means nothing here. A record whose
    /// start token is this machine's is not elsewhere, whatever host name it carries (see
    /// `foreign_host`).
    pub fn other_host(&self) -> Option<&str> {
        foreign_host(self)
    }
}

/// `taken_ms`: when the lock was taken, for records without a start token.
fn judge_pid_taken(record: &Record, taken_ms: Option<i64>) -> PidState {
    if foreign_host(record).is_some() {
        return PidState::Remote;
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
    // taken cannot be the process that took it. Only where the OS stored the process's start as
    // a date (macOS, Windows): a date computed from a time since boot (Linux) moves with every
    // step of the wall clock, and a step forward would make the very holder look younger than
    // its record. There a live PID is a live holder: nothing but the PID can be checked, and a
    // conflict is the answer when in doubt, never a takeover.
    if let (Some(taken), Some(began)) = (taken_ms, now.wall_ms) {
        if began > taken + START_SLACK_MS {
            return PidState::Recycled;
        }
    }
    PidState::Alive
}

/// Who the holder named in a conflict is, as far as this machine can tell: what the operator
/// is told to do about it depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identified<'a> {
    /// The holder wrote no record (PID 0).
    Nobody,
    /// This very process (same PID, same start token): it holds the lock already, through
    /// another path to the lock directory or another copy of the module.
    ThisProcess,
    /// Another machine, or another container on this one: its PID means nothing here.
    Elsewhere(&'a str),
    /// The recorded process runs here: its start token matches (or, where the OS gives no
    /// token, its PID runs and the OS lock is held).
    Running,
    /// A PID-only record (the older format) whose PID runs here: whether that process wrote
    /// it, nothing can tell.
    PidOnly,
    /// The recorded process no longer runs here (its PID is gone or names a later process): the
    /// lock is held by something else, such as a process it started.
    Gone,
}

/// Identifies the holder `record` names (see `Identified`).
pub fn identify(record: &Record) -> Identified<'_> {
    if record.pid == 0 {
        return Identified::Nobody;
    }
    if let Some(host) = foreign_host(record) {
        return Identified::Elsewhere(host);
    }
    if record.is_ours()
        && record.pid == os::current_pid()
        && record.start_token == start_token(record.pid)
    {
        return Identified::ThisProcess;
    }
    match judge_pid(record) {
        PidState::Alive if !record.is_ours() && record.start_token.is_none() => Identified::PidOnly,
        PidState::Alive | PidState::Remote => Identified::Running,
        PidState::Dead | PidState::Recycled => Identified::Gone,
    }
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

        // A PID-only record written long before this process started. Linux tells a start only
        // as time since boot, and a date computed from it moves with every step of the clock:
        // nothing tells this PID from its writer, and a live PID is a live holder.
        let mut old = record(me);
        old.started = "2001-01-01T00:00:00.000Z".into();
        assert_eq!(judge_pid(&old), PidState::Alive);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(judge_pid(&record(pid)), PidState::Dead);

        let mut remote = record(me);
        remote.hostname = Some("surely-not-this-host.invalid".into());
        assert_eq!(judge_pid(&remote), PidState::Remote);
        remote.start_token = Some("linux:another-boot:1".into());
        assert_eq!(judge_pid(&remote), PidState::Remote);
        // Another host name with a start token of this machine: a renamed host, judged here.
        remote.start_token = start_token(me);
        assert_eq!(foreign_host(&remote), None);
        assert_eq!(judge_pid(&remote), PidState::Alive);
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
