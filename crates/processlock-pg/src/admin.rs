//! What operators do to locks they do not hold: list them, clear records that no live session
//! stands behind, and end a holder's session.

use std::time::{Duration, Instant};

use processlock::{LockName, Record};
use tokio::time::sleep;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::error::{Error, Result};
use crate::key::lock_key;
use crate::lock::on_own_runtime;
use crate::options::{PgOptions, Settings};
use crate::session::Session;
use crate::table::{self, lock_row_matches, to_record, Holder};

/// A lock of the namespace that has ever been taken.
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
    /// A record left by a holder that is gone without releasing (`clear_stale` removes it).
    pub stale: Option<Record>,
}

/// Every lock of the namespace in the holder table, held or not, by name.
pub fn list(opts: &PgOptions) -> Result<Vec<Listed>> {
    on_own_runtime(&Settings::new(opts)?, |s| async move {
        let session = Session::open_plain(&s).await?;
        let sql = format!(
            "SELECT h.lock_name, h.token::text, h.record::text, h.backend_pid, l.pid, host(a.client_addr)
             FROM {} h
             LEFT JOIN pg_locks l ON {}
             LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE h.namespace = $1
             ORDER BY h.lock_name",
            s.table,
            lock_row_matches("h.lock_key")
        );
        let rows = match session
            .client
            .query_typed(&sql, &[(&s.namespace, Type::TEXT)])
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
            other => other.map_err(|e| Error::io("list", &s.server, &e))?,
        };
        Ok(rows
            .iter()
            .map(|row| {
                let lock_name: String = row.get(0);
                let record = row.get::<_, Option<String>>(2).map(|j| to_record(&j));
                let written_by: Option<i32> = row.get(3);
                let held_by: Option<i32> = row.get(4);
                let ours = held_by.is_some() && held_by == written_by;
                Listed {
                    name: LockName::from_file_name(&lock_name),
                    lock_name,
                    fencing_token: row.get(1),
                    holder: held_by.map(|pid| Holder {
                        record: record
                            .clone()
                            .filter(|_| ours)
                            .unwrap_or_else(|| Record::pid_only(0)),
                        fencing_token: ours.then(|| row.get(1)),
                        backend_pid: pid,
                        client_addr: row.get(5),
                    }),
                    stale: record.filter(|_| !ours),
                }
            })
            .collect())
    })
}

/// Clears the records of the namespace that no session holding their lock stands behind (left
/// by holders that died without releasing). The rows and their tokens stay. Returns the lock
/// names cleared.
pub fn clear_stale(opts: &PgOptions) -> Result<Vec<String>> {
    on_own_runtime(&Settings::new(opts)?, |s| async move {
        let session = Session::open_plain(&s).await?;
        let sql = format!(
            "UPDATE {} h SET record = NULL, backend_pid = NULL
             WHERE h.namespace = $1 AND h.record IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE {} AND l.pid = h.backend_pid)
             RETURNING h.lock_name",
            s.table,
            lock_row_matches("h.lock_key")
        );
        match session
            .client
            .query_typed(&sql, &[(&s.namespace, Type::TEXT)])
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
            Err(e) => Err(Error::io("clear", &s.server, &e)),
            Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
        }
    })
}

/// Ends the session that holds `name` (`pg_terminate_backend`: the role needs the right to
/// signal it) and waits, up to the connect timeout, until the server has freed the lock.
/// Returns who held it, `None` when nobody did. The holder hears of it at once: its connection
/// closes.
pub fn terminate_holder(opts: &PgOptions, name: &LockName) -> Result<Option<Holder>> {
    let s = Settings::new(opts)?;
    let key = lock_key(&s.namespace, name);
    on_own_runtime(&s, move |s| async move {
        let session = Session::open_plain(&s).await?;
        let Some(holder) = table::holder(&session, &s, key).await? else {
            return Ok(None);
        };
        let pid = holder.backend_pid;
        session
            .client
            .query_typed("SELECT pg_terminate_backend($1)", &[(&pid, Type::INT4)])
            .await
            .map_err(|e| Error::io("terminate", &s.server, &e))?;
        let until = Instant::now() + s.connect_timeout;
        loop {
            match table::holder(&session, &s, key).await? {
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
