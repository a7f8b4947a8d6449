//! What the binding says of the PostgreSQL backend (`processlock-pg`), and the one addon file
//! that names its crate: the backend a URL opens, its errors, how it replaces a holder, and the
//! end of its holds, which must not wait long for a server. Nothing here runs, and no thread or
//! connection exists, until a call names a URL.

use std::time::Duration;

use processlock::{report, Hold, Holder, LockName, Record, Taken, Wait};
use processlock_pg::{release_hold, Error as PgError, PgBackend, PgOptions};

use crate::lock::{released, Replacing};
use crate::{Failure, LockRecord, ReleaseOutcome, ServerOptions};

/// The server backend a call on `server` names, unless its URL is empty.
pub(crate) fn backend(server: &ServerOptions, process_name: Option<String>) -> Option<PgBackend> {
    options(server, process_name).map(PgBackend::new)
}

fn options(server: &ServerOptions, process_name: Option<String>) -> Option<PgOptions> {
    if server.url.is_empty() {
        return None;
    }
    let mut pg = PgOptions::new(&server.url);
    if let Some(ms) = server.lease_ms {
        pg.lease = ms_duration(ms);
    }
    if let Some(ms) = server.connect_timeout_ms {
        pg.connect_timeout = ms_duration(ms);
    }
    if let Some(ns) = &server.namespace {
        pg.namespace = ns.clone();
    }
    if let Some(table) = &server.table {
        pg.table = table.clone();
    }
    pg.process_name = process_name;
    Some(pg)
}

fn ms_duration(ms: f64) -> Duration {
    // NaN (refused by the JS layer) must not panic either.
    Duration::try_from_secs_f64(ms.clamp(0.0, 1e12) / 1000.0).unwrap_or_default()
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Self {
        let (holder, waited_ms) = match &e {
            PgError::Conflict(c) => (
                Some(LockRecord {
                    fencing_token: c.fencing_token.clone(),
                    backend: "postgres".to_string(),
                    ..LockRecord::from(c.holder.clone())
                }),
                Some(c.waited_ms as f64),
            ),
            _ => (None, None),
        };
        // `errno` and `osCode` as for a lock file's system call, when one failed (a refused
        // connection); the server's own error code goes in `sqlstate`. `syscall` says what we
        // were doing (`connect`, `lock`, `record`...).
        let os_error = e.os_error();
        Self {
            code: e.code().into(),
            message: e.to_string(),
            errno: os_error.map(|(n, _)| -n),
            os_code: os_error.map(|(_, name)| name.to_string()),
            syscall: e.op().map(str::to_string),
            path: None,
            holder,
            waited_ms,
            lines: Vec::new(),
            sqlstate: e.sqlstate().map(str::to_string),
        }
    }
}

/// Lets go of the holds that end with `holder` (all of them for `None`: the process ends), for
/// `ending.rs`, which reports the outcomes. Each release waits for the server for at most
/// `patience`, all at once: one that has not answered by then is reported as not confirmed, and
/// the session ends with the process, which frees the lock on the server all the same.
pub(crate) fn release_ended(holder: Option<u32>, patience: Duration) -> Vec<ReleaseOutcome> {
    let ended = PgBackend::ended(holder);
    let deadline = std::time::Instant::now() + patience;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut waiting = Vec::new();
    for (id, hold) in ended {
        let name = name_of(hold.record());
        let pid = hold.record().pid;
        let tx = tx.clone();
        let place = id.clone();
        let release = move || {
            let _ = tx.send((place, release_hold(hold)));
        };
        // Without a thread, the hold is dropped here, which releases it within the connect
        // timeout, and it is reported as not confirmed.
        let _ = std::thread::Builder::new()
            .name("processlock-end".into())
            .spawn(release);
        waiting.push((id, name, pid));
    }
    drop(tx);
    let mut outcomes = Vec::new();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((id, how)) = rx.recv_timeout(left) else {
            break;
        };
        let Some(i) = waiting.iter().position(|(w, _, _)| *w == id) else {
            continue;
        };
        let (id, name, _) = waiting.swap_remove(i);
        let Some(name) = name else { continue };
        outcomes.push(released::<PgBackend>(&name, id, how, false));
    }
    for (id, name, pid) in waiting {
        let ms = patience.as_millis();
        let failure = Failure {
            code: crate::ErrorCode::Io,
            message: format!("LOCK_IO: release of {id}: no answer within {ms} ms"),
            errno: None,
            os_code: None,
            syscall: Some("release".to_string()),
            path: None,
            holder: None,
            waited_ms: None,
            lines: Vec::new(),
            sqlstate: None,
        };
        let reason = format!(
            "the server did not confirm the release within {ms} ms; the session ends with the process, which frees the lock on the server"
        );
        outcomes.push(ReleaseOutcome {
            lock_file: Some(id),
            error: Some(Failure {
                lines: name
                    .map(|n| report::release_failed(&n, pid, &reason))
                    .into_iter()
                    .collect(),
                ..failure
            }),
            ..Default::default()
        });
    }
    outcomes
}

/// The name of a held lock, from its record (taken by this process: always a valid one).
fn name_of(record: &Record) -> Option<LockName> {
    LockName::new(
        record.process_type.as_deref()?,
        record.trade_side.as_deref(),
    )
    .ok()
}

/// A holder on any host is asked through the server to stop, and waited for up to `grace`;
/// never killed.
impl Replacing for PgBackend {
    fn acquire_replacing(
        &self,
        name: &LockName,
        place: &str,
        _process_name: Option<&str>,
        holder: Holder,
        wait: &Wait,
        grace: Duration,
        lines: &mut dyn FnMut(String, bool),
    ) -> Result<Taken, Self::Error> {
        self.acquire_replacing(name, place, holder, wait, grace, lines)
    }
}
