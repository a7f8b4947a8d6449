//! The log lines operators know from earlier versions, word for word, in one place for the
//! addon and the command alike.
//!
//! Records are written by whoever could create a file in the lock directory: every field taken
//! from one goes through `printable` (or `js_str`) before it reaches a terminal or a log, so a
//! record cannot move the cursor, clear the screen or forge a line of its own.

use std::path::Path;

use crate::liveness::{host_name, identify, Identified};
use crate::name::LockName;
use crate::protocol::Event;
use crate::record::Record;

use crate::text::js_str;
pub use crate::text::printable;

fn js_opt(s: Option<&str>) -> String {
    s.map(js_str).unwrap_or_else(|| "null".to_string())
}

/// `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: 51172 }`
pub fn acquired(name: &LockName, pid: u32) -> String {
    format!(
        "[PROCESS_LOCK_ACQUIRED] {{ processType: {}, tradeSide: {}, pid: {pid} }}",
        js_str(name.process_type()),
        js_opt(name.trade_side())
    )
}

/// `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: 51172 }`
pub fn released(name: &LockName, pid: u32) -> String {
    acquired(name, pid).replacen("ACQUIRED", "RELEASED", 1)
}

/// `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: 51172, keptBy: 'processlock run until its command ends' }`:
/// a process let go of the lock that `processlock run` (`pid`) handed it, and `run` keeps the
/// lock on the server for as long as its command runs.
pub fn released_to_run(name: &LockName, pid: u32) -> String {
    let line = released(name, pid);
    let open = line.strip_suffix(" }").unwrap_or(&line);
    format!("{open}, keptBy: 'processlock run until its command ends' }}")
}

/// `[PROCESS_LOCK_RELEASE_FAILED] { processType: 'backend', tradeSide: 'SHORT', pid: 51172, reason: '...' }`:
/// a release did not finish: the reason says what failed and where that leaves the lock (a lock
/// file left behind for the next start to take over as stale; a server lock freed when the
/// session ends).
pub fn release_failed(name: &LockName, pid: u32, reason: &str) -> String {
    lost(name, pid, reason).replacen("LOST", "RELEASE_FAILED", 1)
}

/// The exit status of a process that ends because it lost its lock (the addon's
/// `onLost: 'exit'`, `processlock run` on a server): 75, the `EX_TEMPFAIL` of sysexits.h ("try
/// again later"), which neither a crash (1), a start-up conflict (1) nor a signal (128 + n)
/// gives. A supervisor restarts the process, and the new instance waits for the lock like any
/// other.
pub const LOST_EXIT_STATUS: i32 = 75;

/// `[PROCESS_LOCK_LOST] { processType: 'backend', tradeSide: 'SHORT', pid: 51172, reason: '...' }`:
/// the lock is no longer this process's, and whatever it protects must stop.
pub fn lost(name: &LockName, pid: u32, reason: &str) -> String {
    format!(
        "[PROCESS_LOCK_LOST] {{ processType: {}, tradeSide: {}, pid: {pid}, reason: {} }}",
        js_str(name.process_type()),
        js_opt(name.trade_side()),
        js_str(reason)
    )
}

/// The three conflict lines. What the operator is told to do depends on who the holder is
/// (`identify`): `kill` is advised only for the very process that took the lock, found running
/// on this machine. A holder elsewhere (another host, or another container with its own host
/// name) is named with its host; a PID-only record, whose PID may now name any process, gets
/// the way to remove its file instead; this very process is told apart from another.
pub fn conflict(name: &LockName, holder: &Record, path: &Path) -> Vec<String> {
    let lock = name.display();
    let mut lines = vec![format!(
        "[PROCESS_LOCK_CONFLICT] Another {lock} is already running!"
    )];
    let shown = printable(&path.to_string_lossy()).into_owned();
    let pid = holder.pid;
    let started = js_str(&holder.started);
    // The record's host, when it is not this one's name (a renamed host, a process with a host
    // name of its own): said, so that the operator is not surprised by it.
    let named_host = holder
        .hostname
        .as_deref()
        .filter(|h| host_name().is_some_and(|ours| ours != *h));
    let existing = match named_host {
        Some(host) => format!(
            "[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {pid}, started: {started}, hostname: {} }}",
            js_str(host)
        ),
        None => format!("[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {pid}, started: {started} }}"),
    };
    match identify(holder) {
        Identified::Nobody => {
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] Existing process: unknown (it holds {shown} but wrote no record)"
            ));
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] To find it, run: fuser -v {shown}"
            ));
        }
        Identified::Elsewhere(host) => {
            lines.push(existing);
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] It runs on host {}, not on this one: stop it there (its PID means nothing here)",
                js_str(host)
            ));
        }
        Identified::ThisProcess => {
            lines.push(existing);
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] That is this very process: it already holds {lock} through another path to the lock directory (a bind mount, a second mount) or another copy of this module; take the lock through one path and one copy"
            ));
        }
        Identified::Running => {
            lines.push(existing);
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] To force restart, run: kill {pid}"
            ));
        }
        Identified::PidOnly => {
            lines.push(existing);
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] Its lock file holds only a PID (the older format): see what PID {pid} runs first (ps -p {pid} -o args=). If it is {lock}, to force restart, run: kill {pid}; if not, the PID was reused: remove the file (rm {})",
                shell_quoted(&shown)
            ));
        }
        Identified::Gone => {
            // Its PID is gone or names a later process: `kill` would be a lie. A lock file's
            // holder can be found by the file; a lock on a server (whose "path" is the lock's
            // name) by listing the server's locks.
            lines.push(format!(
                "[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {pid}, started: {started} }} has exited, but a process it started still holds the lock"
            ));
            let find = if path.is_absolute() {
                format!("fuser -v {shown}")
            } else {
                "processlock check --url <URL>".to_string()
            };
            lines.push(format!("[PROCESS_LOCK_CONFLICT] To find it, run: {find}"));
        }
    }
    lines
}

/// `s` in single quotes for a POSIX shell, so that a path with spaces or `*` names one file.
fn shell_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The line for something that happened while acquiring.
pub fn event(event: &Event, path: &Path) -> String {
    match event {
        Event::StaleRemoved { pid } => {
            format!("[PROCESS_LOCK_STALE] Found stale lock file for PID {pid}, removing...")
        }
        Event::InvalidRemoved { reason } => format!(
            "[PROCESS_LOCK_STALE] Found unreadable lock file {} ({}) held by no process, removing...",
            printable(&path.to_string_lossy()),
            printable(reason)
        ),
        Event::OrphansRemoved { paths } => format!(
            "[PROCESS_LOCK_STALE] Removed {} temporary file(s) left by acquirers that died",
            paths.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Record {
        Record {
            started: "2025-10-18T22:38:49Z".into(),
            trade_side: Some("SHORT".into()),
            ..Record::pid_only(51172)
        }
    }

    /// A record of our format for a running child process (a holder on this machine).
    #[cfg(unix)]
    fn running_holder() -> (std::process::Child, Record) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let t = crate::protocol::LockTarget::new(
            "/nonexistent",
            LockName::new("backend", Some("SHORT")).unwrap(),
        );
        let record = Record {
            started: "2025-10-18T22:38:49Z".into(),
            ..crate::protocol::record_for(&t, child.id(), None)
        };
        (child, record)
    }

    #[cfg(unix)]
    #[test]
    fn the_operator_lines_exactly() {
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        assert_eq!(
            acquired(&n, 51172),
            "[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: 51172 }"
        );
        let (mut child, running) = running_holder();
        let pid = child.id();
        assert_eq!(
            conflict(&n, &running, Path::new("x")),
            vec![
                "[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!".to_string(),
                format!("[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {pid}, started: '2025-10-18T22:38:49Z' }}"),
                format!("[PROCESS_LOCK_CONFLICT] To force restart, run: kill {pid}"),
            ]
        );
        // A record that names no host reads exactly the same.
        let mut nameless = running.clone();
        nameless.hostname = None;
        assert_eq!(
            conflict(&n, &nameless, Path::new("x")),
            conflict(&n, &running, Path::new("x"))
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            event(&Event::StaleRemoved { pid: 12345 }, Path::new("x")),
            "[PROCESS_LOCK_STALE] Found stale lock file for PID 12345, removing..."
        );
        let none = LockName::new("worker", None).unwrap();
        assert_eq!(
            released(&none, 7),
            "[PROCESS_LOCK_RELEASED] { processType: 'worker', tradeSide: null, pid: 7 }"
        );
        assert_eq!(
            released_to_run(&none, 7),
            "[PROCESS_LOCK_RELEASED] { processType: 'worker', tradeSide: null, pid: 7, keptBy: 'processlock run until its command ends' }"
        );
        assert_eq!(
            lost(&n, 7, "the session ended\n"),
            "[PROCESS_LOCK_LOST] { processType: 'backend', tradeSide: 'SHORT', pid: 7, reason: 'the session ended\\n' }"
        );
    }

    /// `kill` is advised for the recorded process found running here, and for nothing else.
    #[cfg(unix)]
    #[test]
    fn who_the_holder_is_decides_the_advice() {
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        let path = Path::new("/srv/app/shared/runtime/locks/it's here.lock");
        let (mut child, running) = running_holder();
        let pid = child.id();

        // A host renamed since the record was written: its start token is this machine's.
        let mut renamed = running.clone();
        renamed.hostname = Some("before-the-rename".into());
        assert_eq!(
            conflict(&n, &renamed, path)[1..],
            [
                format!("[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {pid}, started: '2025-10-18T22:38:49Z', hostname: 'before-the-rename' }}"),
                format!("[PROCESS_LOCK_CONFLICT] To force restart, run: kill {pid}"),
            ]
        );

        // The older PID-only format: the PID runs, but nothing says it wrote the file.
        let pid_only = Record {
            started: "2025-10-18T22:38:49Z".into(),
            ..Record::pid_only(pid)
        };
        assert_eq!(
            conflict(&n, &pid_only, path)[2],
            format!("[PROCESS_LOCK_CONFLICT] Its lock file holds only a PID (the older format): see what PID {pid} runs first (ps -p {pid} -o args=). If it is backend (SHORT), to force restart, run: kill {pid}; if not, the PID was reused: remove the file (rm '/srv/app/shared/runtime/locks/it'\\''s here.lock')")
        );

        // This very process, through another path or another copy of the module.
        let t = crate::protocol::LockTarget::new("/nonexistent", n.clone());
        let own = crate::protocol::own_record(&t, None);
        assert_eq!(
            conflict(&n, &own, path)[2],
            "[PROCESS_LOCK_CONFLICT] That is this very process: it already holds backend (SHORT) through another path to the lock directory (a bind mount, a second mount) or another copy of this module; take the lock through one path and one copy"
        );

        // The recorded process is gone: its PID must not be killed.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            conflict(&n, &running, path)[1..],
            [
                format!("[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {pid}, started: '2025-10-18T22:38:49Z' }} has exited, but a process it started still holds the lock"),
                "[PROCESS_LOCK_CONFLICT] To find it, run: fuser -v /srv/app/shared/runtime/locks/it's here.lock".to_string(),
            ]
        );
        // A lock on a server is named, not a path.
        assert!(conflict(&n, &running, Path::new("backend (SHORT)"))[2]
            .ends_with("To find it, run: processlock check --url <URL>"));
    }

    #[test]
    fn a_holder_on_another_host_is_named_and_no_kill_is_advised() {
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        let mut there = holder();
        there.hostname = Some("trader-2.other-host".into());
        assert_eq!(
            conflict(&n, &there, Path::new("x")),
            vec![
                "[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!",
                "[PROCESS_LOCK_CONFLICT] Existing process: { pid: 51172, started: '2025-10-18T22:38:49Z', hostname: 'trader-2.other-host' }",
                "[PROCESS_LOCK_CONFLICT] It runs on host 'trader-2.other-host', not on this one: stop it there (its PID means nothing here)",
            ]
        );
    }

    #[test]
    fn record_fields_cannot_forge_lines_or_move_the_cursor() {
        assert_eq!(printable("plain é text"), "plain é text");
        assert_eq!(
            printable("a\u{1b}[2J\n[FATAL] x\r\t\u{7f}\u{9b}\u{0}"),
            "a\\x1B[2J\\n[FATAL] x\\r\\t\\x7F\\x9B\\x00"
        );
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        let mut forged = holder();
        forged.started = "\u{1b}[2J\n[FATAL] forged 'quote' \\".into();
        forged.hostname = Some("evil\n[PROCESS_LOCK_ACQUIRED]\u{1b}]0;x\u{7}".into());
        let lines = conflict(&n, &forged, Path::new("dir\n/x.lock"));
        assert_eq!(lines.len(), 3);
        for line in &lines {
            assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        }
        assert_eq!(
            lines[1],
            "[PROCESS_LOCK_CONFLICT] Existing process: { pid: 51172, started: '\\x1B[2J\\n[FATAL] forged \\'quote\\' \\\\', hostname: 'evil\\n[PROCESS_LOCK_ACQUIRED]\\x1B]0;x\\x07' }"
        );
        let reason = "bad\nline".to_string();
        let line = event(&Event::InvalidRemoved { reason }, Path::new("p\u{1b}"));
        assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
    }

    #[test]
    fn a_failed_release_names_the_lock_and_says_why() {
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        assert_eq!(
            release_failed(&n, 7, "no space left; 'x'"),
            "[PROCESS_LOCK_RELEASE_FAILED] { processType: 'backend', tradeSide: 'SHORT', pid: 7, reason: 'no space left; \\'x\\'' }"
        );
    }
}
