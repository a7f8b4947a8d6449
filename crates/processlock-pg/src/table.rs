//! The holder table: one row per lock ever taken, keyed by the advisory key. The row outlives
//! its holders because it carries the fencing counter, which must never go back; the holder's
//! record and session are cleared on release. Who holds a lock is decided by `pg_locks`, never
//! by this table: a row is only believed when its session still holds the lock.

use processlock::{parse_record, LockName, Parsed, Record};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::error::{Error, Result};
use crate::key::key_literal;
use crate::options::Settings;
use crate::session::Session;

/// The holder of a lock as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `pid` 0 when the holding session has not written its record (it has just been granted
    /// the lock, or it was taken by something other than this crate).
    pub record: Record,
    pub fencing_token: Option<String>,
    pub backend_pid: i32,
    pub client_addr: Option<String>,
}

pub fn create_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            lock_key bigint PRIMARY KEY,
            namespace text NOT NULL,
            lock_name text NOT NULL,
            token bigint NOT NULL,
            backend_pid integer,
            record jsonb,
            acquired_at timestamptz
        )"
    )
}

/// Bumps the fencing counter and writes the record, in one statement, by a session that has
/// just been granted the lock.
pub fn claim_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} AS h (lock_key, namespace, lock_name, token, backend_pid, record, acquired_at)
         VALUES ($1, $2, $3, 1, pg_backend_pid(), $4::jsonb, now())
         ON CONFLICT (lock_key) DO UPDATE SET token = h.token + 1, namespace = EXCLUDED.namespace,
             lock_name = EXCLUDED.lock_name, backend_pid = EXCLUDED.backend_pid,
             record = EXCLUDED.record, acquired_at = EXCLUDED.acquired_at
         RETURNING token"
    )
}

/// Writes `record` as the holder of `key` and returns the new fencing token.
pub(crate) async fn claim(
    session: &Session,
    s: &Settings,
    key: i64,
    name: &LockName,
    record: &Record,
) -> Result<i64> {
    let sql = claim_sql(&s.table);
    let lock_name = name.file_name();
    let json = record.to_json();
    let run = || async {
        session
            .client
            .query_typed_one(
                &sql,
                &[
                    (&key, Type::INT8),
                    (&s.namespace, Type::TEXT),
                    (&lock_name, Type::TEXT),
                    (&json, Type::TEXT),
                ],
            )
            .await
    };
    let row = match run().await {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            create(session, s).await?;
            run().await
        }
        other => other,
    }
    .map_err(|e| Error::io("record", &s.server, &e))?;
    Ok(row.get(0))
}

/// Creates the table if it is missing. Two sessions creating it at once can both pass the
/// `IF NOT EXISTS` check; the loser's error means the table now exists.
async fn create(session: &Session, s: &Settings) -> Result<()> {
    match session.client.batch_execute(&create_sql(&s.table)).await {
        Ok(()) => Ok(()),
        Err(e)
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || e.code() == Some(&SqlState::DUPLICATE_TABLE) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io("record", &s.server, &e)),
    }
}

/// Takes the lock if it is free, without waiting.
pub fn try_lock_sql(key: i64) -> String {
    format!("SELECT pg_try_advisory_lock({})", key_literal(key))
}

/// Clears our record and lets go of the lock, in one round trip.
pub fn release_sql(table: &str, key: i64) -> String {
    let key = key_literal(key);
    format!(
        "UPDATE {table} SET backend_pid = NULL, record = NULL WHERE lock_key = {key} AND backend_pid = pg_backend_pid(); \
         SELECT pg_advisory_unlock({key})"
    )
}

/// Whether this session holds the lock `key`, as the server's lock manager says.
pub(crate) fn still_held_sql(key: i64) -> String {
    format!(
        "SELECT count(*) FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid()",
        lock_row_matches(&key_literal(key))
    )
}

/// Matches the `pg_locks` row (alias `l`) of a granted session advisory lock whose key is the
/// bigint SQL expression `key`, in the current database. `pg_locks` shows a bigint key as its
/// high half in `classid` and its low half in `objid`, both unsigned.
pub(crate) fn lock_row_matches(key: &str) -> String {
    format!(
        "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
         AND l.classid::text::int8 = (({key}) >> 32) & 4294967295
         AND l.objid::text::int8 = ({key}) & 4294967295"
    )
}

fn holder_sql(table: Option<&str>) -> String {
    let (join, cols) = match table {
        Some(t) => (
            format!("LEFT JOIN {t} h ON h.lock_key = $1 AND h.backend_pid = l.pid"),
            "h.record::text, h.token::text",
        ),
        None => (String::new(), "NULL::text, NULL::text"),
    };
    format!(
        "SELECT l.pid, {cols}, host(a.client_addr)
         FROM pg_locks l {join}
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE {}",
        lock_row_matches("$1")
    )
}

/// Who holds `key` now, if anyone.
pub(crate) async fn holder(session: &Session, s: &Settings, key: i64) -> Result<Option<Holder>> {
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] = [(&key, Type::INT8)];
    let rows = match session
        .client
        .query_typed(&holder_sql(Some(&s.table)), &params)
        .await
    {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            session.client.query_typed(&holder_sql(None), &params).await
        }
        other => other,
    }
    .map_err(|e| Error::io("inspect", &s.server, &e))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let backend_pid: i32 = row.get(0);
    let json: Option<String> = row.get(1);
    let record = json
        .as_deref()
        .map_or_else(|| Record::pid_only(0), to_record);
    Ok(Some(Holder {
        record,
        fencing_token: row.get(2),
        backend_pid,
        client_addr: row.get(3),
    }))
}

/// A stored record, or the unknown holder (PID 0) when it is not one.
pub(crate) fn to_record(json: &str) -> Record {
    match parse_record(json.as_bytes()) {
        Parsed::Ours(r) | Parsed::Legacy(r) => r,
        Parsed::Invalid(_) => Record::pid_only(0),
    }
}
