//! The holder table: one row per lock ever taken, keyed by the advisory key, with the record of
//! its holder and the last fencing token handed out. The holder's record and session are
//! cleared on release; the row stays, so that tokens given out before transaction ids were
//! used go on growing (see `claim_sql`). Nothing depends on the table for safety: who holds a
//! lock is decided by `pg_locks`, and a row is only believed when its session still holds the
//! lock; tokens grow whatever happens to the table.

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

/// The fencing token of a holder that has just been granted the lock, written with its record
/// in one statement: the id of the statement's own transaction, or one more than the row's last
/// token where that is larger.
///
/// A transaction id (`pg_current_xact_id()`, `txid_current()` before 13) is 64 bits wide,
/// cluster-wide, and only grows: it survives restarts, `TRUNCATE` and `DROP` of this table,
/// other roles, other schemas and other `table` options, and a promoted standby goes on from
/// the replayed value. Ids are handed out in time order, and this statement runs in a
/// transaction of its own that starts after the grant, so after the previous holder let go
/// (or its session ended), so after that holder's own claim. So a new holder's token is larger
/// than every earlier holder's. The row's counter matters only where it is already larger than
/// the server's transaction ids (tokens given out before this rule, on a cluster whose ids
/// started again, as after a dump and restore): while the row exists, tokens go on from it.
pub fn claim_sql(table: &str, server_version: u32) -> String {
    let xid = if server_version >= XID8_SINCE {
        "pg_current_xact_id()::text::int8"
    } else {
        "txid_current()"
    };
    format!(
        "INSERT INTO {table} AS h (lock_key, namespace, lock_name, token, backend_pid, record, acquired_at)
         VALUES ($1, $2, $3, {xid}, pg_backend_pid(), $4::jsonb, now())
         ON CONFLICT (lock_key) DO UPDATE SET token = GREATEST(h.token + 1, EXCLUDED.token),
             namespace = EXCLUDED.namespace, lock_name = EXCLUDED.lock_name,
             backend_pid = EXCLUDED.backend_pid, record = EXCLUDED.record,
             acquired_at = EXCLUDED.acquired_at
         RETURNING token"
    )
}

/// `server_version_num` from which `pg_current_xact_id()` exists.
const XID8_SINCE: u32 = 13_00_00;

/// Writes `record` as the holder of `key` and returns the new fencing token.
pub(crate) async fn claim(
    session: &Session,
    s: &Settings,
    key: i64,
    name: &LockName,
    record: &Record,
) -> Result<i64> {
    let sql = claim_sql(&s.table, session.version);
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

/// Waits, at most `slice`, until nobody holds the lock, and takes nothing: a shared lock on the
/// key, in a transaction of its own that ends with the statement, queues behind the holder's
/// exclusive one and is granted the moment it goes. The server ends the transaction (and lets
/// go of the shared lock) whether or not this client reads the answer, so a waiter that is
/// frozen now is never the holder; the waiter that runs takes the lock with `try_lock_sql`.
/// `lock_timeout` comes back to 0 either way: the `SET` is undone with the failed transaction.
pub(crate) fn wait_free_sql(key: i64, slice_ms: u128) -> String {
    format!(
        "SET lock_timeout = {}; SELECT pg_advisory_xact_lock_shared({}); SET lock_timeout = 0",
        slice_ms.max(1),
        key_literal(key)
    )
}

/// Lets go of the lock. Sent together with `clear_sql`, in one round trip, as a statement of its
/// own: the holder table emptied, dropped or out of reach never keeps a holder from letting go.
pub fn unlock_sql(key: i64) -> String {
    format!("SELECT pg_advisory_unlock({})", key_literal(key))
}

/// Clears our record, if it is still ours, after `unlock_sql`: the record is only for people.
pub fn clear_sql(table: &str, key: i64) -> String {
    format!(
        "UPDATE {table} SET backend_pid = NULL, record = NULL WHERE lock_key = {} AND backend_pid = pg_backend_pid()",
        key_literal(key)
    )
}

/// Whether this session holds the lock `key`, as the server's lock manager says.
pub(crate) fn still_held_sql(key: i64) -> String {
    format!(
        "SELECT count(*) FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid()",
        lock_row_matches(&key_literal(key))
    )
}

/// Matches the `pg_locks` row (alias `l`) of a granted exclusive advisory lock whose key is the
/// bigint SQL expression `key`, in the current database: the holder's, never a waiter's brief
/// shared one (`wait_free_sql`). `pg_locks` shows a bigint key as its high half in `classid`
/// and its low half in `objid`, both unsigned.
pub(crate) fn lock_row_matches(key: &str) -> String {
    format!(
        "l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND l.objsubid = 1
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

/// Who holds `key` now, if anyone. The server's lock manager (`pg_locks`, which every role may
/// read) says whether and which session holds it; the record comes from the holder table this
/// role sees. A holder whose record is not there (not written yet, or in a table this role
/// cannot see or read: another role's schema, another `table`) is still the holder, with PID 0.
pub(crate) async fn holder(session: &Session, s: &Settings, key: i64) -> Result<Option<Holder>> {
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] = [(&key, Type::INT8)];
    let rows = match session
        .client
        .query_typed(&holder_sql(Some(&s.table)), &params)
        .await
    {
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                || e.code() == Some(&SqlState::UNDEFINED_COLUMN) =>
        {
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
