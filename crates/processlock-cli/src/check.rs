//! `processlock check`: every lock file in the directory and its state.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use processlock::{judge_pid, list_locks, parse_iso8601_ms, LockState, LockStatus, Result};
use serde_json::Value;

use crate::display::{opt_str, ordered_object, table, uptime};

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
    pub problem: Option<String>,
}

pub fn row(status: LockStatus, now_ms: i64) -> Row {
    let file = status.path.to_string_lossy().into_owned();
    let file_name = status
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    let record = status.record.as_ref();
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
        problem = match record {
            Some(r) if r.pid == 0 => Some(format!(
                "held by a process that wrote no record; find it with: fuser -v {file}"
            )),
            Some(r) if !judge_pid(r).is_alive() => Some(format!(
                "PID {} is not running, but a process it started still holds the lock; find it with: fuser -v {file}",
                r.pid
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
        problem,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn run(dir: &Path, json: bool) -> Result<i32> {
    let now = now_ms();
    let rows: Vec<Row> = list_locks(dir)?.into_iter().map(|s| row(s, now)).collect();
    let mut out = std::io::stdout().lock();
    let text = if json {
        to_json(&rows)
    } else {
        to_text(
            dir,
            &rows,
            std::io::stdout().is_terminal() && color_allowed(),
        )
    };
    // A closed pipe (`processlock check | head -1`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(0)
}

fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

pub fn to_json(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "[]\n".to_string();
    }
    let objects: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {}",
                ordered_object(&[
                    ("file", Value::from(r.file.as_str())),
                    ("processType", opt_str(r.process_type.as_deref())),
                    ("tradeSide", opt_str(r.trade_side.as_deref())),
                    ("state", Value::from(r.state.as_str())),
                    ("pid", r.pid.map_or(Value::Null, Value::from)),
                    ("started", opt_str(r.started.as_deref())),
                    ("uptimeMs", r.uptime_ms.map_or(Value::Null, Value::from)),
                    ("processName", opt_str(r.process_name.as_deref())),
                    ("hostname", opt_str(r.hostname.as_deref())),
                    ("problem", opt_str(r.problem.as_deref())),
                ])
            )
        })
        .collect();
    format!("[\n{}\n]\n", objects.join(",\n"))
}

pub fn to_text(dir: &Path, rows: &[Row], color: bool) -> String {
    let shown = dir.display();
    if rows.is_empty() {
        return if dir.is_dir() {
            format!("No locks in {shown}\n")
        } else {
            format!("No locks: {shown} does not exist (yet)\n")
        };
    }
    let dash = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.process_type.clone().unwrap_or_else(dash),
                r.trade_side.clone().unwrap_or_else(dash),
                r.pid.map_or_else(dash, |p| p.to_string()),
                r.started.clone().unwrap_or_else(dash),
                r.uptime_ms.map_or_else(dash, uptime),
                r.state.as_str().to_string(),
                r.process_name.clone().unwrap_or_else(dash),
                r.file_name.clone(),
            ]
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
    out.push_str(&table(
        &[
            "TYPE", "SIDE", "PID", "STARTED", "UPTIME", "STATE", "PROCESS", "FILE",
        ],
        &cells,
        paint,
    ));
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("  {}: {}", r.file_name, r.problem.as_deref()?)))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    let stale = rows.iter().filter(|r| r.state != LockState::Held).count();
    if stale > 0 {
        out.push_str(&format!(
            "\n{stale} lock file(s) belong to no running process: the next start removes them, or run: processlock clear\n"
        ));
    }
    out
}
