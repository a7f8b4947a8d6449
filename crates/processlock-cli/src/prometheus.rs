//! `processlock check --format prometheus`: the locks in Prometheus' text exposition format
//! (version 0.0.4), for node_exporter's textfile collector.
//!
//! One series per lock and metric, labelled `type`, `side` (empty when the lock has none), `host`
//! (the holder's host as its record names it; empty when there is no record) and `backend`
//! (`file` for a lock directory, `postgres` for a server). Every lock gets
//! `processlock_lock_held` (1 held, 0 not: a stale or unreadable lock file, or a server record no
//! live session stands behind); a held lock also gets its holder's PID and uptime, and its
//! fencing token where the holder has one. A lock that is not there at all (released lock files are
//! removed) has no series: alert with `absent(processlock_lock_held{...} == 1)`.

use std::fmt::Write as _;

use processlock::report::printable;
use processlock::LockState;

use crate::backend::{Listed, Server};
use crate::check::Row;
use crate::display::{now_ms, print};

/// Where the locks are: the `backend` label.
#[derive(Clone, Copy)]
pub enum Backend {
    File,
    Postgres,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Postgres => "postgres",
        }
    }
}

/// One lock, as the metrics show it.
pub struct Lock {
    pub process_type: String,
    pub side: Option<String>,
    pub host: Option<String>,
    pub backend: Backend,
    pub held: bool,
    pub pid: Option<u32>,
    pub uptime_ms: Option<u64>,
    pub fencing_token: Option<String>,
}

/// A lock file as `check` lists it.
pub fn from_row(r: &Row) -> Lock {
    let held = r.state == LockState::Held;
    Lock {
        // A file whose name is not a lock name is shown by its file name.
        process_type: r
            .process_type
            .clone()
            .unwrap_or_else(|| r.file_name.clone()),
        side: r.trade_side.clone(),
        host: r.hostname.clone(),
        backend: Backend::File,
        held,
        pid: r.pid.filter(|_| held),
        uptime_ms: r.uptime_ms.filter(|_| held),
        fencing_token: r.fencing_token.clone().filter(|_| held),
    }
}

/// A lock on a server as `check --url` lists it (held, or with a record left behind).
pub fn from_listed(l: &Listed, now_ms: i64) -> Lock {
    let holder = l.holder.as_ref();
    let record = crate::server::record_of(l);
    let uptime_ms = match (holder, record) {
        (Some(_), Some(r)) => {
            processlock::parse_iso8601_ms(&r.started).map(|t| (now_ms - t).max(0) as u64)
        }
        _ => None,
    };
    Lock {
        process_type: l
            .name
            .as_ref()
            .map_or_else(|| l.lock_name.clone(), |n| n.process_type().to_string()),
        side: l
            .name
            .as_ref()
            .and_then(|n| n.trade_side().map(str::to_string)),
        host: record.and_then(|r| r.hostname.clone()),
        backend: Backend::Postgres,
        held: holder.is_some(),
        pid: record.filter(|_| holder.is_some()).map(|r| r.pid),
        uptime_ms,
        fencing_token: holder.map(|h| {
            h.fencing_token
                .clone()
                .unwrap_or_else(|| l.fencing_token.clone())
        }),
    }
}

/// `check --format prometheus` on a lock directory: every lock file in it. Exit status 0.
pub fn check_files(files: &processlock::FileBackend) -> processlock::Result<i32> {
    let rows = crate::check::list(files)?;
    print(&render(&rows.iter().map(from_row).collect::<Vec<_>>()));
    Ok(0)
}

/// `check --url URL --format prometheus`: every lock on the server that is held or has a record
/// left behind. Exit status 0; 1 (and nothing on stdout) when the server cannot be asked, so that
/// `processlock check ... > tmp && mv tmp file.prom` keeps the last good file.
pub fn check_server(server: &Server) -> i32 {
    let locks = match server.list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("processlock: {}", printable(&e.to_string()));
            return 1;
        }
    };
    let now = now_ms();
    let shown: Vec<Lock> = locks
        .iter()
        .filter(|l| crate::server::state(l) != "free")
        .map(|l| from_listed(l, now))
        .collect();
    print(&render(&shown));
    0
}

/// A metric family: its name, help text, and the value of a lock, if it has one.
struct Family {
    name: &'static str,
    help: &'static str,
    value: fn(&Lock) -> Option<String>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "processlock_lock_held",
        help: "Whether a running process holds the lock (1) or not (0: a stale or unreadable lock file, a record no live session stands behind).",
        value: |l| Some(if l.held { "1" } else { "0" }.to_string()),
    },
    Family {
        name: "processlock_holder_pid",
        help: "The process ID of the lock's holder, as its lock record names it.",
        value: |l| l.pid.map(|p| p.to_string()),
    },
    Family {
        name: "processlock_holder_uptime_seconds",
        help: "Seconds since the holder took the lock (the start time in its lock record).",
        value: |l| l.uptime_ms.map(|ms| format!("{}.{:03}", ms / 1000, ms % 1000)),
    },
    Family {
        name: "processlock_fencing_token",
        help: "The fencing token of the lock's holder: it only grows from one holder to the next.",
        value: |l| l.fencing_token.clone(),
    },
];

/// The exposition text: every family with a HELP and a TYPE line, then its samples, together.
pub fn render(locks: &[Lock]) -> String {
    let mut out = String::new();
    for f in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for lock in locks {
            if let Some(v) = (f.value)(lock) {
                let _ = writeln!(out, "{}{{{}}} {v}", f.name, labels(lock));
            }
        }
    }
    out
}

fn labels(l: &Lock) -> String {
    let pairs = [
        ("type", l.process_type.as_str()),
        ("side", l.side.as_deref().unwrap_or("")),
        ("host", l.host.as_deref().unwrap_or("")),
        ("backend", l.backend.label()),
    ];
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A label value: backslash, double quote and line feed escaped, as the format requires.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(held: bool) -> Lock {
        Lock {
            process_type: "backend".into(),
            side: Some("SHORT".into()),
            host: Some("trader-1".into()),
            backend: Backend::File,
            held,
            pid: held.then_some(4242),
            uptime_ms: held.then_some(61_005),
            fencing_token: None,
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("a\nb"), r"a\nb");
        assert_eq!(escape_label("plain-é"), "plain-é");
        assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");
    }

    #[test]
    fn every_family_has_help_and_type_then_its_samples_together() {
        let mut other = lock(false);
        other.side = None;
        other.host = Some("h\"x\\\n".into());
        let text = render(&[lock(true), other]);
        let expected = "\
# HELP processlock_lock_held Whether a running process holds the lock (1) or not (0: a stale or unreadable lock file, a record no live session stands behind).
# TYPE processlock_lock_held gauge
processlock_lock_held{type=\"backend\",side=\"SHORT\",host=\"trader-1\",backend=\"file\"} 1
processlock_lock_held{type=\"backend\",side=\"\",host=\"h\\\"x\\\\\\n\",backend=\"file\"} 0
# HELP processlock_holder_pid The process ID of the lock's holder, as its lock record names it.
# TYPE processlock_holder_pid gauge
processlock_holder_pid{type=\"backend\",side=\"SHORT\",host=\"trader-1\",backend=\"file\"} 4242
# HELP processlock_holder_uptime_seconds Seconds since the holder took the lock (the start time in its lock record).
# TYPE processlock_holder_uptime_seconds gauge
processlock_holder_uptime_seconds{type=\"backend\",side=\"SHORT\",host=\"trader-1\",backend=\"file\"} 61.005
# HELP processlock_fencing_token The fencing token of the lock's holder: it only grows from one holder to the next.
# TYPE processlock_fencing_token gauge
";
        assert_eq!(text, expected);
    }

    #[test]
    fn no_locks_still_describes_every_family() {
        let text = render(&[]);
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 4);
        assert!(text.lines().all(|l| l.starts_with('#')));
    }
}
