//! The log lines operators know from the seed document, word for word, in one place for the
//! addon and the command alike.

use std::path::Path;

use crate::name::LockName;
use crate::protocol::Event;
use crate::record::Record;

/// A JavaScript-style single-quoted string, as Node's `util.inspect` prints one.
fn js_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

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

/// The three conflict lines.
pub fn conflict(name: &LockName, holder: &Record, path: &Path) -> Vec<String> {
    let mut lines = vec![format!(
        "[PROCESS_LOCK_CONFLICT] Another {} is already running!",
        name.display()
    )];
    if holder.pid == 0 {
        lines.push(format!(
            "[PROCESS_LOCK_CONFLICT] Existing process: unknown (it holds {} but wrote no record)",
            path.display()
        ));
        lines.push(format!(
            "[PROCESS_LOCK_CONFLICT] To find it, run: fuser -v {}",
            path.display()
        ));
    } else {
        lines.push(format!(
            "[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {}, started: {} }}",
            holder.pid,
            js_str(&holder.started)
        ));
        lines.push(format!(
            "[PROCESS_LOCK_CONFLICT] To force restart, run: kill {}",
            holder.pid
        ));
    }
    lines
}

/// The line for something that happened while acquiring.
pub fn event(event: &Event, path: &Path) -> String {
    match event {
        Event::StaleRemoved { pid } => {
            format!("[PROCESS_LOCK_STALE] Found stale lock file for PID {pid}, removing...")
        }
        Event::InvalidRemoved { reason } => format!(
            "[PROCESS_LOCK_STALE] Found unreadable lock file {} ({reason}) held by no process, removing...",
            path.display()
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
            pid: 51172,
            started: "2025-10-18T22:38:49Z".into(),
            trade_side: Some("SHORT".into()),
            process_name: String::new(),
            process_type: None,
            hostname: None,
            start_token: None,
            protocol: None,
        }
    }

    #[test]
    fn the_seed_lines_exactly() {
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        assert_eq!(
            acquired(&n, 51172),
            "[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: 51172 }"
        );
        assert_eq!(
            conflict(&n, &holder(), Path::new("x")),
            vec![
                "[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!",
                "[PROCESS_LOCK_CONFLICT] Existing process: { pid: 51172, started: '2025-10-18T22:38:49Z' }",
                "[PROCESS_LOCK_CONFLICT] To force restart, run: kill 51172",
            ]
        );
        assert_eq!(
            event(&Event::StaleRemoved { pid: 12345 }, Path::new("x")),
            "[PROCESS_LOCK_STALE] Found stale lock file for PID 12345, removing..."
        );
        let none = LockName::new("worker", None).unwrap();
        assert_eq!(
            released(&none, 7),
            "[PROCESS_LOCK_RELEASED] { processType: 'worker', tradeSide: null, pid: 7 }"
        );
    }
}
