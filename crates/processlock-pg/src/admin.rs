//! What operators do to locks they do not hold: look at one, list them, clear records that no
//! live session stands behind, and end a holder's session.
//!
//! Listings read only the rows that matter (a record is there, or the lock is held now), in
//! pages of `PAGE_ROWS`, and never a record larger than a record may be: what one listing holds
//! in memory is bounded by the page, whatever the tables hold.

use std::time::{Duration, Instant};

use processlock::{LockName, Record};
use tokio::time::sleep;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::error::{Error, Result};
use crate::lock::{on_own_runtime, runtime};
use crate::options::{PgOptions, Settings};
use crate::session::Session;
use crate::table::{self, capped_record, held_key, lock_row_matches, to_record, Access, Holder};

/// The rows one page of a listing reads.
pub const PAGE_ROWS: i64 = 500;

/// A lock of the namespace that is held now or has a record left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// As lock files are named: `backend.short.lock`.
    pub lock_name: String,
    /// The name, when `lock_name` is one this crate writes.
    pub name: Option<LockName>,
    /// The last token handed out (the holder's, when held).
    pub fencing_token: String,
    /// `None` when no session holds the lock now.
    pub holder: Option<Holder>,
    /// A record left by a holder that is gone without releasing (`clear_stale` removes it);
    /// PID 0 when it is larger than a record may be.
    pub stale: Option<Record>,
}

/// Who holds the lock, as the server's lock manager says; `None` when nobody does.
pub fn inspect(opts: &PgOptions, name: &LockName) -> Result<Option<Holder>> {
    let name = name.clone();
    on_own_runtime(&Settings::new(opts)?, move |s| async move {
        let session = Session::open_plain(&s).await?;
        let Some(ready) = table::prepare(&session, &s, Access::Look).await? else {
            return Ok(None);
        };
        table::holder(&session, &s, &ready, ready.key(&s, &name)).await
    })
}

/// Every lock of the namespace that is held or has a record left behind, by name.
pub fn list(opts: &PgOptions) -> Result<Vec<Listed>> {
    let mut all = Vec::new();
    list_pages(opts, |page| {
        all.extend(page);
        true
    })?;
    Ok(all)
}

/// `list`, a page at a time: `page` is called with each (at most `PAGE_ROWS` locks, in name
/// order) and returns whether to go on.
pub fn list_pages(opts: &PgOptions, page: impl FnMut(Vec<Listed>) -> bool + Send) -> Result<()> {
    let s = Settings::new(opts)?;
    std::thread::scope(|scope| {
        let run = scope.spawn(|| runtime(&s.server)?.block_on(visit(&s, page)));
        run.join()
            .unwrap_or_else(|_| Err(Error::io_msg("list", &s.server, "the thread panicked")))
    })
}

fn page_sql(holders: &str) -> String {
    format!(
        "SELECT h.lock_name, h.lock_key, h.token::text, {}, h.record IS NOT NULL, h.backend_pid,
                l.pid, host(a.client_addr), pg_get_userbyid(a.usesysid)::text
         FROM {holders} h
         LEFT JOIN pg_locks l ON {}
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE h.namespace = $1
           AND (h.record IS NOT NULL OR h.lock_key IN (
                SELECT {} FROM pg_locks k
                WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
                  AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())))
           AND (h.lock_name, h.lock_key) > ($2, $3)
         ORDER BY h.lock_name, h.lock_key
         LIMIT {PAGE_ROWS}",
        capped_record("h"),
        lock_row_matches("h.lock_key"),
        held_key("k"),
    )
}

async fn visit(s: &Settings, mut page: impl FnMut(Vec<Listed>) -> bool) -> Result<()> {
    let session = Session::open_plain(s).await?;
    let Some(ready) = table::prepare(&session, s, Access::Look).await? else {
        return Ok(());
    };
    let sql = page_sql(&ready.tables.holders);
    let (mut after_name, mut after_key) = (String::new(), i64::MIN);
    loop {
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&s.namespace, Type::TEXT),
            (&after_name, Type::TEXT),
            (&after_key, Type::INT8),
        ];
        let rows = session
            .client
            .query_typed(&sql, &params)
            .await
            .map_err(|e| Error::io("list", &s.server, &e))?;
        let full = rows.len() as i64 == PAGE_ROWS;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        (after_name, after_key) = (last.get(0), last.get(1));
        let items = rows.iter().map(listed).collect();
        if !page(items) || !full {
            return Ok(());
        }
    }
}

fn listed(row: &tokio_postgres::Row) -> Listed {
    let lock_name: String = row.get(0);
    let json: Option<String> = row.get(3);
    let present: bool = row.get(4);
    let record_too_large = present && json.is_none();
    let record = present.then(|| {
        json.as_deref()
            .map_or_else(|| Record::pid_only(0), to_record)
    });
    let written_by: Option<i32> = row.get(5);
    let held_by: Option<i32> = row.get(6);
    let ours = held_by.is_some() && held_by == written_by;
    Listed {
        name: LockName::from_file_name(&lock_name),
        lock_name,
        fencing_token: row.get(2),
        holder: held_by.map(|pid| Holder {
            record: record
                .clone()
                .filter(|_| ours)
                .unwrap_or_else(|| Record::pid_only(0)),
            fencing_token: ours.then(|| row.get(2)),
            backend_pid: pid,
            client_addr: row.get(7),
            role: row.get(8),
            record_too_large: ours && record_too_large,
        }),
        stale: record.filter(|_| !ours),
    }
}

/// Clears the records of the namespace that no session holding their lock stands behind (left
/// by holders that died without releasing). The rows and their tokens stay. Returns the lock
/// names cleared.
pub fn clear_stale(opts: &PgOptions) -> Result<Vec<String>> {
    on_own_runtime(&Settings::new(opts)?, |s| async move {
        let session = Session::open_plain(&s).await?;
        let Some(ready) = table::prepare(&session, &s, Access::Tend).await? else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "UPDATE {} h SET record = NULL, backend_pid = NULL
             WHERE h.namespace = $1 AND h.record IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE {} AND l.pid = h.backend_pid)
             RETURNING h.lock_name",
            ready.tables.holders,
            lock_row_matches("h.lock_key")
        );
        session
            .client
            .query_typed(&sql, &[(&s.namespace, Type::TEXT)])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .map_err(|e| Error::io("clear", &s.server, &e))
    })
}

/// Ends the session that holds `name` (`pg_terminate_backend`: the role needs the right to
/// signal it) and waits, up to the connect timeout, until the server has freed the lock.
/// Returns who held it, `None` when nobody did. The holder hears of it at once: its connection
/// closes.
pub fn terminate_holder(opts: &PgOptions, name: &LockName) -> Result<Option<Holder>> {
    let name = name.clone();
    on_own_runtime(&Settings::new(opts)?, move |s| async move {
        let session = Session::open_plain(&s).await?;
        let Some(ready) = table::prepare(&session, &s, Access::Look).await? else {
            return Ok(None);
        };
        let key = ready.key(&s, &name);
        let Some(holder) = table::holder(&session, &s, &ready, key).await? else {
            return Ok(None);
        };
        let pid = holder.backend_pid;
        session
            .client
            .query_typed("SELECT pg_terminate_backend($1)", &[(&pid, Type::INT4)])
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                    let role = holder.role.as_deref().unwrap_or("?");
                    Error::io_msg(
                        "terminate",
                        &s.server,
                        format!(
                            "this role may not end server process {pid} of role {role:?}, which holds the lock: a role ends only sessions of roles it is a member of, or any non-superuser's as a member of pg_signal_backend; a superuser can run SELECT pg_terminate_backend({pid})"
                        ),
                    )
                    .with_sqlstate(&e)
                } else {
                    Error::io("terminate", &s.server, &e)
                }
            })?;
        let until = Instant::now() + s.connect_timeout;
        loop {
            match table::holder(&session, &s, &ready, key).await? {
                Some(h) if h.backend_pid == pid => {}
                _ => return Ok(Some(holder)),
            }
            if Instant::now() >= until {
                return Err(Error::io_msg(
                    "terminate",
                    &s.server,
                    format!("server process {pid} still holds the lock after it was told to end"),
                ));
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
}
