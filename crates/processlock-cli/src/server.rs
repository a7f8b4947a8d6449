//! `check` and `clear` for locks held on a PostgreSQL server (`--url`, `$PROCESSLOCK_URL`):
//! the same questions as for a lock directory, answered by the server's lock manager through
//! `processlock-pg` (see `backend.rs`).

use processlock::report::printable;
use processlock::LockName;
use serde_json::Value;

use crate::backend::{Listed, Server, ServerError};
use crate::check::{HELD, NOT_HELD, UNKNOWN};
use crate::display::{
    errln, json_text, now_ms, opt_str, ordered_object, outln, print, table, uptime,
};

fn fail(e: &ServerError) -> i32 {
    errln!("processlock: {}", printable(&e.to_string()));
    1
}

pub(crate) fn state(l: &Listed) -> &'static str {
    match (&l.holder, &l.stale) {
        (Some(_), _) => "held",
        (None, Some(_)) => "stale",
        (None, None) => "free",
    }
}

/// The most locks the table of `check --url` shows; `--json` lists every one.
const MAX_TABLE_ROWS: usize = 1000;

/// Every lock of the namespace that is held or has a record left behind, read a page at a
/// time: `--json` is written as it is read, the table shows the first `MAX_TABLE_ROWS`. Exit
/// status 0.
pub fn check(server: &Server, json: bool) -> i32 {
    let now = now_ms();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut more = 0usize;
    let mut first = true;
    let listed = server.list_pages(|page| {
        for l in page.iter().filter(|l| state(l) != "free") {
            if json {
                let sep = if first { "[" } else { ", " };
                first = false;
                print(&format!("{sep}{}", json_text(&item_json(l, now))));
            } else if rows.len() < MAX_TABLE_ROWS {
                rows.push(row(l, now));
            } else {
                more += 1;
            }
        }
        true
    });
    if let Err(e) = listed {
        if json && !first {
            print("]\n");
        }
        return fail(&e);
    }
    let text = if json {
        if first { "[]\n" } else { "]\n" }.to_string()
    } else if rows.is_empty() {
        format!("No locks held on {}\n", printable(server.shown()))
    } else {
        let mut text = table(
            &[
                "LOCK", "STATE", "PID", "HOST", "STARTED", "UPTIME", "TOKEN", "CLIENT",
            ],
            &rows,
            |_, _, s| s.to_string(),
        );
        if more > 0 {
            text.push_str(&format!(
                "... and {more} more (the first {MAX_TABLE_ROWS} by name are shown; --json lists every one)\n"
            ));
        }
        text
    };
    print(&text);
    0
}

/// The locks held now (at most one per server session, so never many).
fn held_locks(server: &Server) -> Result<Vec<Listed>, ServerError> {
    let mut held = Vec::new();
    server.list_pages(|page| {
        held.extend(page.into_iter().filter(|l| l.holder.is_some()));
        true
    })?;
    Ok(held)
}

pub(crate) fn record_of(l: &Listed) -> Option<&processlock::Record> {
    match &l.holder {
        Some(h) if h.record.pid != 0 => Some(&h.record),
        Some(_) => None,
        None => l.stale.as_ref(),
    }
}

fn row(l: &Listed, now: i64) -> Vec<String> {
    let r = record_of(l);
    let dash = || "-".to_string();
    let started = r.map(|r| r.started.clone()).filter(|s| !s.is_empty());
    let up = match (&l.holder, &started) {
        (Some(_), Some(s)) => processlock::parse_iso8601_ms(s)
            .map(|t| uptime((now - t).max(0) as u64))
            .unwrap_or_else(dash),
        _ => dash(),
    };
    vec![
        printable(&l.lock_name).into_owned(),
        state(l).to_string(),
        r.map_or_else(dash, |r| r.pid.to_string()),
        r.and_then(|r| r.hostname.as_deref())
            .map_or_else(dash, |h| printable(h).into_owned()),
        started.map_or_else(dash, |s| printable(&s).into_owned()),
        up,
        l.holder
            .as_ref()
            .and_then(|h| h.fencing_token.clone())
            .unwrap_or_else(|| l.fencing_token.clone()),
        l.holder
            .as_ref()
            .and_then(|h| h.client_addr.as_deref())
            .map_or_else(dash, |a| printable(a).into_owned()),
    ]
}

fn item_json(l: &Listed, now: i64) -> String {
    let r = record_of(l);
    let started = r.map(|r| r.started.as_str()).filter(|s| !s.is_empty());
    let uptime_ms = match (&l.holder, started) {
        (Some(_), Some(s)) => processlock::parse_iso8601_ms(s).map(|t| (now - t).max(0)),
        _ => None,
    };
    ordered_object(&[
        ("lock", Value::from(l.lock_name.as_str())),
        (
            "processType",
            opt_str(l.name.as_ref().map(|n| n.process_type())),
        ),
        (
            "tradeSide",
            opt_str(l.name.as_ref().and_then(|n| n.trade_side())),
        ),
        ("state", Value::from(state(l))),
        ("pid", r.map_or(Value::Null, |r| Value::from(r.pid))),
        ("started", opt_str(started)),
        ("uptimeMs", uptime_ms.map_or(Value::Null, Value::from)),
        ("processName", opt_str(r.map(|r| r.process_name.as_str()))),
        ("hostname", opt_str(r.and_then(|r| r.hostname.as_deref()))),
        ("fencingToken", Value::from(l.fencing_token.as_str())),
        (
            "serverPid",
            l.holder
                .as_ref()
                .map_or(Value::Null, |h| Value::from(h.backend_pid)),
        ),
        (
            "clientAddr",
            opt_str(l.holder.as_ref().and_then(|h| h.client_addr.as_deref())),
        ),
    ])
}

/// Whether `name` is held on the server: `HELD`, `NOT_HELD` or `UNKNOWN`.
pub fn check_one(server: &Server, name: LockName, json: bool) -> i32 {
    let holder = match server.inspect(&name) {
        Ok(h) => h,
        Err(e) => {
            fail(&e);
            return UNKNOWN;
        }
    };
    let lock = name.display();
    if json {
        let r = holder.as_ref().map(|h| &h.record).filter(|r| r.pid != 0);
        outln!(
            "{}",
            json_text(&ordered_object(&[
                ("held", Value::from(holder.is_some())),
                (
                    "state",
                    Value::from(if holder.is_some() { "held" } else { "free" })
                ),
                ("pid", r.map_or(Value::Null, |r| Value::from(r.pid))),
                ("hostname", opt_str(r.and_then(|r| r.hostname.as_deref()))),
                (
                    "fencingToken",
                    opt_str(holder.as_ref().and_then(|h| h.fencing_token.as_deref()))
                ),
            ]))
        );
    } else {
        match &holder {
            None => outln!("{lock}: not held"),
            Some(h) if h.record.pid == 0 => {
                let role = h
                    .role
                    .as_deref()
                    .map(|r| format!(" of role {}", printable(&format!("{r:?}"))))
                    .unwrap_or_default();
                let why = if h.record_too_large {
                    "its record is too large to be read"
                } else {
                    "no record of it can be read here"
                };
                outln!(
                    "{lock}: held by server process {}{role} ({why})",
                    h.backend_pid
                )
            }
            Some(h) => outln!(
                "{lock}: held by PID {} on {} since {}, fencing token {}",
                h.record.pid,
                printable(h.record.hostname.as_deref().unwrap_or("?")),
                printable(&h.record.started),
                h.fencing_token.as_deref().unwrap_or("?")
            ),
        }
    }
    if holder.is_some() {
        HELD
    } else {
        NOT_HELD
    }
}

/// Clears the records no live session stands behind; with `force`, first ends the session of
/// every holder (`pg_terminate_backend`), which frees its lock at once. Exit status 0, or 1 when
/// something could not be done.
pub fn clear(server: &Server, force: bool) -> i32 {
    let mut status = 0;
    if force {
        let locks = match held_locks(server) {
            Ok(l) => l,
            Err(e) => return fail(&e),
        };
        for l in &locks {
            let shown = printable(&l.lock_name).into_owned();
            let Some(name) = &l.name else {
                outln!("kept            {shown} (not a lock name this tool writes)");
                continue;
            };
            match server.terminate_holder(name) {
                Ok(Some(h)) => outln!(
                    "ended session   {shown} (server process {}; PID {} on {} is told at once that its lock is lost)",
                    h.backend_pid,
                    h.record.pid,
                    printable(h.record.hostname.as_deref().unwrap_or("?"))
                ),
                Ok(None) => {}
                Err(e) => status = status.max(fail(&e)),
            }
        }
    }
    match server.clear_stale() {
        Ok(cleared) => {
            for name in &cleared {
                outln!("removed stale   {} (its session is gone)", printable(name));
            }
            if cleared.is_empty() && status == 0 {
                outln!("Nothing to clear");
            }
        }
        Err(e) => status = status.max(fail(&e)),
    }
    if !force {
        if let Ok(locks) = held_locks(server) {
            for l in &locks {
                let pid = record_of(l).map_or_else(|| "?".to_string(), |r| r.pid.to_string());
                outln!(
                    "kept            {} (held by PID {pid}; --force ends its session)",
                    printable(&l.lock_name)
                );
            }
        }
    }
    status
}
