//! `processlock check`: every lock file in the directory and its state, or whether one lock is
//! held (for health checks and deploy scripts: the exit status says it).
//!
//! Whatever a lock file says reaches the terminal only through `printable`: a record or a file
//! name with escape sequences or newlines cannot rewrite the operator's screen.

use std::io::IsTerminal;
use std::path::Path;

use processlock::report::printable;
use processlock::{
    check_dir, identify, parse_iso8601_ms, Backend, FileBackend, Identified, Listed, LockName,
    LockState, LockTarget, Result,
};
use serde_json::Value;

use crate::display::{errln, json_text, now_ms, opt_str, ordered_object, print, table, uptime};

/// Exit statuses of `check <type>`.
pub const HELD: i32 = 0;
pub const NOT_HELD: i32 = 1;
/// The lock file could not be looked at (I/O error, something other than a file at its path).
pub const UNKNOWN: i32 = 3;

/// One lock as both outputs show it.
pub struct Row {
    pub file: String,
    pub file_name: String,
    pub process_type: Option<String>,
    pub trade_side: Option<String>,
    pub state: LockState,
    pub pid: Option<u32>,
    pub started: Option<String>,
    pub uptime_ms: Option<u64>,
    pub process_name: Option<String>,
    pub hostname: Option<String>,
    /// The record's host when it is not this one.
    pub other_host: Option<String>,
    pub problem: Option<String>,
    /// The holder's fencing token (a held lock whose holder minted one).
    pub fencing_token: Option<String>,
}

pub fn row(status: Listed, now_ms: i64) -> Row {
    let file = status.place;
    let file_name = Path::new(&file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    let record = status.holding.as_ref().map(|h| &h.record);
    let process_type = status
        .name
        .as_ref()
        .map(|n| n.process_type().to_string())
        .or_else(|| record.and_then(|r| r.process_type.clone()));
    let trade_side = match &status.name {
        Some(n) => n.trade_side().map(str::to_string),
        None => record.and_then(|r| r.trade_side.clone()),
    };
    let pid = record.map(|r| r.pid).filter(|&p| p != 0);
    let started = record.map(|r| r.started.clone()).filter(|s| !s.is_empty());
    let uptime_ms = match (status.state, &started) {
        (LockState::Held, Some(s)) => parse_iso8601_ms(s).map(|t| (now_ms - t).max(0) as u64),
        _ => None,
    };
    let mut problem = status.problem.clone();
    if status.state == LockState::Held && problem.is_none() {
        problem = match record.map(|r| (r.pid, identify(r))) {
            Some((_, Identified::Nobody)) => Some(format!(
                "held by a process that wrote no record; find it with: fuser -v {file}"
            )),
            Some((pid, Identified::Gone)) => Some(format!(
                "PID {pid} is not running, but a process it started still holds the lock; find it with: fuser -v {file}"
            )),
            Some((pid, Identified::PidOnly)) => Some(format!(
                "its record holds only a PID (the older format): PID {pid} runs, but nothing proves it is the process that wrote the file; see what it is: ps -p {pid} -o args="
            )),
            _ => None,
        };
    }
    Row {
        file,
        file_name,
        process_type,
        trade_side,
        state: status.state,
        pid,
        started,
        uptime_ms,
        process_name: record
            .map(|r| r.process_name.clone())
            .filter(|n| !n.is_empty()),
        hostname: record.and_then(|r| r.hostname.clone()),
        other_host: record.and_then(|r| r.other_host()).map(str::to_string),
        problem,
        fencing_token: status
            .holding
            .as_ref()
            .and_then(|h| h.fencing_token.clone()),
    }
}

/// Every lock in the directory, as the listings show them.
pub fn list(files: &FileBackend) -> Result<Vec<Row>> {
    warn_if_unsafe(files.dir());
    let now = now_ms();
    let listing = files.list()?;
    Ok(listing.locks.into_iter().map(|l| row(l, now)).collect())
}

/// Lists every lock in the directory, as a table or (`json`) an array. Exit status 0 whatever
/// their states: listing is not a verdict (`check <type>` is).
pub fn run(files: &FileBackend, json: bool) -> Result<i32> {
    let rows = list(files)?;
    let text = if json {
        to_json(&rows)
    } else {
        to_text(
            files.dir(),
            &rows,
            std::io::stdout().is_terminal() && color_allowed(),
        )
    };
    print(&text);
    Ok(0)
}

/// Whether the lock `name` is held: exit status `HELD`, `NOT_HELD` (no file, a stale one, or a
/// file that is not a lock record) or `UNKNOWN`.
pub fn run_one(files: &FileBackend, name: LockName, json: bool) -> i32 {
    warn_if_unsafe(files.dir());
    let status = match files.status(&name) {
        Ok(status) => status,
        Err(e) => {
            errln!("processlock: {}", printable(&e.to_string()));
            return UNKNOWN;
        }
    };
    let target = files.target(&name);
    let held = status.as_ref().is_some_and(|s| s.state == LockState::Held);
    let row = status.map(|s| row(s, now_ms()));
    let text = if json {
        one_json(&target, row.as_ref(), held)
    } else {
        one_text(&target, row.as_ref())
    };
    print(&text);
    if held {
        HELD
    } else {
        NOT_HELD
    }
}

/// A lock directory others could tamper with is refused by `run` and `clear`; looking at it is
/// harmless, but the operator should know.
fn warn_if_unsafe(dir: &Path) {
    if let Err(e) = check_dir(dir) {
        errln!("processlock: warning: {}", printable(&e.to_string()));
    }
}

/// `backend (SHORT): held by PID 51172 (trader-short-backend) since ..., up 4m 12s`, and the
/// file, which names the directory the command looked in.
fn one_text(target: &LockTarget, row: Option<&Row>) -> String {
    let lock = target.name.display();
    let file = printable(&target.path.to_string_lossy()).into_owned();
    let Some(r) = row else {
        return format!("{lock}: not held (no lock file)\n  file: {file}\n");
    };
    let mut line = match r.state {
        LockState::Held => {
            let mut s = match r.pid {
                Some(pid) => format!("{lock}: held by PID {pid}"),
                None => format!("{lock}: held by a process that wrote no record"),
            };
            if let Some(host) = &r.other_host {
                s.push_str(&format!(" on host {}", printable(host)));
            }
            if let Some(name) = &r.process_name {
                s.push_str(&format!(" ({})", printable(name)));
            }
            if let Some(started) = &r.started {
                s.push_str(&format!(" since {}", printable(started)));
            }
            if let Some(ms) = r.uptime_ms {
                s.push_str(&format!(", up {}", uptime(ms)));
            }
            if let Some(token) = &r.fencing_token {
                s.push_str(&format!(", fencing token {token}"));
            }
            s
        }
        LockState::Stale => match r.pid {
            Some(pid) => format!("{lock}: not held (stale: PID {pid} is not running)"),
            None => format!("{lock}: not held (stale)"),
        },
        LockState::Invalid => format!("{lock}: not held (not a lock record)"),
    };
    line.push_str(&format!("\n  file: {file}\n"));
    if let Some(problem) = &r.problem {
        line.push_str(&format!("  {}\n", printable(problem)));
    }
    line
}

/// The listing's object for one lock (`state` `"absent"` when there is no file), with `held`.
fn one_json(target: &LockTarget, row: Option<&Row>, held: bool) -> String {
    let fields = match row {
        Some(r) => json_fields(r),
        None => vec![
            ("file", Value::from(target.path.to_string_lossy().as_ref())),
            ("processType", Value::from(target.name.process_type())),
            ("tradeSide", opt_str(target.name.trade_side())),
            ("state", Value::from("absent")),
            ("pid", Value::Null),
            ("started", Value::Null),
            ("uptimeMs", Value::Null),
            ("processName", Value::Null),
            ("hostname", Value::Null),
            ("fencingToken", Value::Null),
            ("problem", Value::Null),
        ],
    };
    let mut fields = fields;
    fields.insert(4, ("held", Value::from(held)));
    format!("{}\n", json_text(&ordered_object(&fields)))
}

fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

fn json_fields(r: &Row) -> Vec<(&'static str, Value)> {
    vec![
        ("file", Value::from(r.file.as_str())),
        ("processType", opt_str(r.process_type.as_deref())),
        ("tradeSide", opt_str(r.trade_side.as_deref())),
        ("state", Value::from(r.state.as_str())),
        ("pid", r.pid.map_or(Value::Null, Value::from)),
        ("started", opt_str(r.started.as_deref())),
        ("uptimeMs", r.uptime_ms.map_or(Value::Null, Value::from)),
        ("processName", opt_str(r.process_name.as_deref())),
        ("hostname", opt_str(r.hostname.as_deref())),
        ("fencingToken", opt_str(r.fencing_token.as_deref())),
        ("problem", opt_str(r.problem.as_deref())),
    ]
}

pub fn to_json(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "[]\n".to_string();
    }
    let objects: Vec<String> = rows
        .iter()
        .map(|r| format!("  {}", ordered_object(&json_fields(r))))
        .collect();
    json_text(&format!("[\n{}\n]\n", objects.join(",\n")))
}

pub fn to_text(dir: &Path, rows: &[Row], color: bool) -> String {
    let shown = printable(&dir.to_string_lossy()).into_owned();
    if rows.is_empty() {
        return if dir.is_dir() {
            format!("No locks in {shown}\n")
        } else {
            format!("No locks: {shown} does not exist (yet)\n")
        };
    }
    let dash = || "-".to_string();
    let text = |s: &Option<String>| {
        s.as_deref()
            .map_or_else(dash, |s| printable(s).into_owned())
    };
    // A HOST column only when some holder runs elsewhere: the usual table stays as it was.
    let hosts = rows.iter().any(|r| r.other_host.is_some());
    // A TOKEN column only when some holder has one (holders of older versions mint none).
    let tokens = rows.iter().any(|r| r.fencing_token.is_some());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                text(&r.process_type),
                text(&r.trade_side),
                r.pid.map_or_else(dash, |p| p.to_string()),
                text(&r.started),
                r.uptime_ms.map_or_else(dash, uptime),
                r.state.as_str().to_string(),
                text(&r.process_name),
            ];
            if tokens {
                cells.push(text(&r.fencing_token));
            }
            if hosts {
                // Blank for this host, so the ones elsewhere stand out.
                cells.push(
                    r.other_host
                        .as_ref()
                        .map_or_else(dash, |h| printable(h).into_owned()),
                );
            }
            cells.push(printable(&r.file_name).into_owned());
            cells
        })
        .collect();
    const STATE: usize = 5;
    let paint = |row: usize, col: usize, cell: &str| {
        if !color || col != STATE {
            return cell.to_string();
        }
        let code = match rows[row].state {
            LockState::Held => "32",
            LockState::Stale => "33",
            LockState::Invalid => "31",
        };
        format!("\x1b[{code}m{cell}\x1b[0m")
    };
    let mut out = format!("Locks in {shown}:\n\n");
    let mut header = vec![
        "TYPE", "SIDE", "PID", "STARTED", "UPTIME", "STATE", "PROCESS",
    ];
    if tokens {
        header.push("TOKEN");
    }
    if hosts {
        header.push("HOST");
    }
    header.push("FILE");
    out.push_str(&table(&header, &cells, paint));
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            Some(format!(
                "  {}: {}",
                printable(&r.file_name),
                printable(r.problem.as_deref()?)
            ))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    let stale = rows.iter().filter(|r| r.state == LockState::Stale).count();
    let invalid = rows
        .iter()
        .filter(|r| r.state == LockState::Invalid)
        .count();
    if stale > 0 {
        out.push_str(&format!(
            "\n{stale} lock file(s) belong to no running process: the next start removes them, or run: processlock clear\n"
        ));
    }
    if invalid > 0 {
        out.push_str(&format!(
            "\n{invalid} file(s) are not lock records: processlock clear keeps them (another program may use them); remove them by hand if nothing does\n"
        ));
    }
    out
}
