//! The service's two tables, found and checked before any statement uses them.
//!
//! The holder table (default `processlock_holders`): one row per lock ever taken, keyed by the
//! advisory key, with the record of its holder, for people. The holder's record and session are
//! cleared on release. Nothing depends on it for safety: who holds a lock is decided by
//! `pg_locks`, and a row is only believed when its session still holds the lock. Roles may be
//! granted `SELECT` on it to look.
//!
//! The secret table (`<holder table>_secret`, in the same schema), which only the service's
//! role reads and writes: the database's salt (the row with an empty namespace and lock name),
//! which keys every lock key (`key.rs`), and each lock's last fencing token. A peer that may
//! write the holder table can change what people read, never a key or a token.
//!
//! Both are found as the server would find them (the first schema of the session's
//! `search_path` that has the holder table, else the first schema of it, where `CREATE TABLE`
//! puts it), or in the schema the `table` option names; from then on every statement names them
//! with their schema, and the session's `search_path` is `pg_catalog, pg_temp`, so no function
//! or operator a statement uses can come from a schema another role may write. A role runs code
//! of a table's owner when it writes it (triggers) or reads it (row security policies, which
//! `row_security = off` turns into an error instead): a table this role writes must be its own,
//! and a table it only reads must be a plain table of built-in column types.

use processlock::{parse_record, LockName, Parsed, Record, MAX_RECORD_BYTES};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::error::{Conflict, Error, Result};
use crate::key::{key_literal, lock_key, Salt};
use crate::options::{quote_ident, Settings};
use crate::session::Session;

/// The holder of a lock as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `pid` 0 when the holding session has not written its record (it has just been granted
    /// the lock, or it was taken by something other than this crate), or its record could not
    /// be read.
    pub record: Record,
    pub fencing_token: Option<String>,
    pub backend_pid: i32,
    pub client_addr: Option<String>,
    /// The role of the holding session, as `pg_stat_activity` shows it to every role.
    pub role: Option<String>,
    /// Its record is there but larger than a record may be (`MAX_RECORD_BYTES`): not read.
    pub record_too_large: bool,
}

impl Holder {
    /// The conflict over `lock` with this holder, after waiting `waited_ms`.
    pub(crate) fn conflict(self, lock: String, waited_ms: u64) -> Conflict {
        Conflict {
            lock,
            holder: self.record,
            fencing_token: self.fencing_token,
            backend_pid: (self.backend_pid != 0).then_some(self.backend_pid),
            client_addr: self.client_addr,
            holder_role: self.role,
            record_too_large: self.record_too_large,
            waited_ms,
        }
    }

    /// A session that holds the lock and of which nothing else is known.
    pub(crate) fn unknown(backend_pid: i32) -> Self {
        Holder {
            record: Record::pid_only(0),
            fencing_token: None,
            backend_pid,
            client_addr: None,
            role: None,
            record_too_large: false,
        }
    }
}

/// What a session does with the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Takes locks, writes records: creates the tables, and accepts only its own.
    Hold,
    /// Writes records it did not take (clears stale ones): accepts only its own tables, and
    /// creates none.
    Tend,
    /// Looks (inspect, list, end a holder's session): creates nothing.
    Look,
}

/// The two tables, quoted and schema-qualified for SQL.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub holders: String,
    pub secret: String,
    /// `schema.name` of the holder table, for messages.
    pub shown: String,
}

/// A session ready for the lock statements: the tables found and checked, the salt read.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub tables: Tables,
    pub salt: Salt,
}

impl Ready {
    pub fn key(&self, s: &Settings, name: &LockName) -> i64 {
        lock_key(self.salt, &s.namespace, name)
    }
}

/// A relation of the schema, as the catalogue describes it.
struct Relation {
    schema: String,
    name: String,
    /// `pg_class.relkind`: `r` for a plain table.
    kind: String,
    owner: String,
    owned: bool,
    /// Every column of a built-in type this crate uses.
    plain_columns: bool,
}

/// Finds and checks the tables, fixes the session's `search_path`, and reads the salt. `None`
/// (only when looking): no lock was ever taken here by this version (no tables, no salt).
pub(crate) async fn prepare(
    session: &Session,
    s: &Settings,
    access: Access,
) -> Result<Option<Ready>> {
    let op = match access {
        Access::Hold => "lock",
        Access::Tend => "clear",
        Access::Look => "inspect",
    };
    let fail = |e: &tokio_postgres::Error| Error::io(op, &s.server, e);
    // The session's own path first, then, in the same round trip (the client sends both at
    // once, the server answers in order), a path through which nothing resolves to a schema
    // another role may write.
    let (path, fixed) = tokio::join!(
        session.client.query_typed_one(
            "SELECT pg_catalog.current_schemas(false)::pg_catalog.text[]",
            &[],
        ),
        session
            .client
            .batch_execute("SET search_path = pg_catalog, pg_temp; SET row_security = off")
    );
    fixed.map_err(|e| fail(&e))?;
    let path: Vec<String> = match &s.table.schema {
        Some(schema) => vec![schema.clone()],
        None => path.map_err(|e| fail(&e))?.get(0),
    };
    let secret_name = s.table.secret_name();
    for attempt in 0..3 {
        let found = relations(session, &path, &s.table.name, &secret_name)
            .await
            .map_err(|e| fail(&e))?;
        let holders = path.iter().find_map(|schema| {
            found
                .iter()
                .find(|r| &r.schema == schema && r.name == s.table.name)
        });
        let Some(schema) = holders.map(|r| r.schema.clone()).or(path.first().cloned()) else {
            return Err(Error::Unsupported {
                server: s.server.clone(),
                message: format!(
                    "no schema of the search_path exists to keep the holder table in; give the table option as schema.{}",
                    s.table.name
                ),
            });
        };
        let secret = found
            .iter()
            .find(|r| r.schema == schema && r.name == secret_name);
        let tables = Tables {
            holders: format!("{}.{}", quote_ident(&schema), quote_ident(&s.table.name)),
            secret: format!("{}.{}", quote_ident(&schema), quote_ident(&secret_name)),
            shown: format!("{schema}.{}", s.table.name),
        };
        for r in [holders, secret].into_iter().flatten() {
            check(s, access, r)?;
        }
        if let (Some(h), Some(x)) = (holders, secret) {
            if h.owner != x.owner {
                return Err(not_ours(s, x, "its holder table belongs to another role"));
            }
        }
        if holders.is_none() || secret.is_none() {
            if access != Access::Hold {
                return Ok(None);
            }
            match create(session, &tables).await {
                // Created, or by someone else meanwhile: look again (and check the owner).
                Ok(()) => continue,
                Err(e) if attempt < 2 && created_meanwhile(&e) => continue,
                Err(e) => return Err(fail(&e)),
            }
        }
        let salt = match read_salt(session, &tables).await {
            Ok(Some(salt)) => salt,
            Ok(None) if access != Access::Hold => return Ok(None),
            Ok(None) => {
                write_salt(session, &tables).await.map_err(|e| fail(&e))?;
                read_salt(session, &tables)
                    .await
                    .map_err(|e| fail(&e))?
                    .ok_or_else(|| Error::io_msg(op, &s.server, "the salt was not kept"))?
            }
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(Error::io_msg(
                    op,
                    &s.server,
                    format!(
                        "this role may not read {}.{secret_name}, which keys every lock of {} (the owner grants SELECT on both tables to roles that may look at the locks)",
                        schema, tables.shown
                    ),
                )
                .with_sqlstate(&e))
            }
            Err(e) => return Err(fail(&e)),
        };
        return Ok(Some(Ready { tables, salt }));
    }
    Err(Error::io_msg(
        op,
        &s.server,
        "the holder tables kept changing while they were looked for",
    ))
}

/// Every relation named `holders` or `secret` in the schemas of `path`.
async fn relations(
    session: &Session,
    path: &[String],
    holders: &str,
    secret: &str,
) -> std::result::Result<Vec<Relation>, tokio_postgres::Error> {
    let names = vec![holders.to_string(), secret.to_string()];
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&path, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)];
    let rows = session
        .client
        .query_typed(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text,
                    c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user),
                    NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                        AND NOT a.attisdropped
                        AND a.atttypid NOT IN ('int8'::regtype, 'int4'::regtype, 'text'::regtype,
                                               'jsonb'::regtype, 'timestamptz'::regtype))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname::text = ANY ($1) AND c.relname::text = ANY ($2)",
            &params,
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Relation {
            schema: r.get(0),
            name: r.get(1),
            kind: r.get(2),
            owner: r.get(3),
            owned: r.get(4),
            plain_columns: r.get(5),
        })
        .collect())
}

/// Refuses a relation this session would run another role's code through.
fn check(s: &Settings, access: Access, r: &Relation) -> Result<()> {
    if r.kind != "r" {
        return Err(not_ours(s, r, "it is not a plain table"));
    }
    match access {
        Access::Hold | Access::Tend if !r.owned => Err(not_ours(
            s,
            r,
            "a role runs the triggers of a table it writes: the tables must belong to the role that takes the locks",
        )),
        Access::Look if !r.owned && !r.plain_columns => {
            Err(not_ours(s, r, "it has columns of types this crate does not write"))
        }
        _ => Ok(()),
    }
}

fn not_ours(s: &Settings, r: &Relation, why: &str) -> Error {
    Error::Unsupported {
        server: s.server.clone(),
        message: format!(
            "refusing table {}.{} owned by role {:?}: {why}",
            r.schema, r.name, r.owner
        ),
    }
}

/// Another session created the same tables at the same moment: `CREATE TABLE IF NOT EXISTS` is
/// not atomic, and the loser fails on the catalog's unique index of tables (23505), of their row
/// types ("type ... already exists", 42710), or on the table itself (42P07); two sessions that
/// both found the tables made meanwhile and revoke on them at once fail with "tuple concurrently
/// updated" (XX000). Each time the tables are there: look again.
fn created_meanwhile(e: &tokio_postgres::Error) -> bool {
    let raced = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
    ]
    .iter()
    .any(|code| e.code() == Some(code));
    raced
        || e.as_db_error().is_some_and(|db| {
            db.code() == &SqlState::INTERNAL_ERROR && db.message() == "tuple concurrently updated"
        })
}

/// The holder table's columns.
pub fn create_sql(holders: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {holders} (
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

/// The secret table's columns: the salt in the row with an empty namespace and lock name, the
/// last token of each lock in the others.
pub fn create_secret_sql(secret: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {secret} (
            namespace text NOT NULL,
            lock_name text NOT NULL,
            token bigint,
            salt text,
            PRIMARY KEY (namespace, lock_name)
        )"
    )
}

/// Tokens an older version kept in the holder table, where a peer may have written them;
/// above this they are damage, not tokens (transaction ids will not reach it for millennia).
const LEGACY_TOKEN_LIMIT: i64 = 1 << 62;

/// Creates what is missing, in one transaction (the statements of one simple query are one):
/// the holder table, and the secret table with no rights for anyone else, seeded with the last
/// tokens an older version handed out.
async fn create(session: &Session, t: &Tables) -> std::result::Result<(), tokio_postgres::Error> {
    let sql = format!(
        "{};
         {};
         REVOKE ALL ON {secret} FROM PUBLIC;
         INSERT INTO {secret} (namespace, lock_name, token)
            SELECT namespace, lock_name, max(token) + 1 FROM {holders}
            WHERE token < {LEGACY_TOKEN_LIMIT} GROUP BY namespace, lock_name
            ON CONFLICT DO NOTHING",
        create_sql(&t.holders),
        create_secret_sql(&t.secret),
        secret = t.secret,
        holders = t.holders,
    );
    session.client.batch_execute(&sql).await
}

const SALT_ROW: &str = "namespace = '' AND lock_name = ''";

async fn read_salt(
    session: &Session,
    t: &Tables,
) -> std::result::Result<Option<Salt>, tokio_postgres::Error> {
    let rows = session
        .client
        .query_typed(
            &format!("SELECT salt FROM {} WHERE {SALT_ROW}", t.secret),
            &[],
        )
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| Salt::from_text(&text)))
}

/// Keeps a new salt unless another process kept one first: every process then reads the one
/// that was kept.
async fn write_salt(
    session: &Session,
    t: &Tables,
) -> std::result::Result<(), tokio_postgres::Error> {
    let salt = Salt::random().to_text();
    session
        .client
        .query_typed(
            &format!(
                "INSERT INTO {} (namespace, lock_name, salt) VALUES ('', '', $1) ON CONFLICT DO NOTHING",
                t.secret
            ),
            &[(&salt, Type::TEXT)],
        )
        .await
        .map(|_| ())
}

/// The fencing token of a holder that has just been granted the lock, written with its record
/// in one statement: the id of the statement's own transaction, or one more than the lock's
/// last token where that is larger. Both tables are written in the one statement; the token
/// is read from the secret table only, where no other role writes.
///
/// A transaction id (`pg_current_xact_id()`, `txid_current()` before 13) is 64 bits wide,
/// cluster-wide, and only grows: it survives restarts, `TRUNCATE` and `DROP` of the tables,
/// other roles, other schemas and other `table` options, and a promoted standby goes on from
/// the replayed value. Ids are handed out in time order, and this statement runs in a
/// transaction of its own that starts after the grant, so after the previous holder let go
/// (or its session ended), so after that holder's own claim. So a new holder's token is larger
/// than every earlier holder's. The kept token matters only where it is already larger than
/// the server's transaction ids (on a cluster whose ids started again, as after a dump and
/// restore): while the secret table exists, tokens go on from it.
pub fn claim_sql(holders: &str, secret: &str, server_version: u32) -> String {
    let xid = if server_version >= XID8_SINCE {
        "pg_current_xact_id()::text::int8"
    } else {
        "txid_current()"
    };
    format!(
        "WITH t AS (
            INSERT INTO {secret} AS p (namespace, lock_name, token) VALUES ($2, $3, {xid})
            ON CONFLICT (namespace, lock_name) DO UPDATE
                SET token = GREATEST(p.token + 1, EXCLUDED.token)
            RETURNING p.token
         ), h AS (
            INSERT INTO {holders} AS h (lock_key, namespace, lock_name, token, backend_pid, record, acquired_at)
            SELECT $1, $2, $3, t.token, pg_backend_pid(), $4::jsonb, now() FROM t
            ON CONFLICT (lock_key) DO UPDATE SET token = EXCLUDED.token,
                namespace = EXCLUDED.namespace, lock_name = EXCLUDED.lock_name,
                backend_pid = EXCLUDED.backend_pid, record = EXCLUDED.record,
                acquired_at = EXCLUDED.acquired_at
            RETURNING 1
         )
         SELECT token FROM t"
    )
}

/// `server_version_num` from which `pg_current_xact_id()` exists.
const XID8_SINCE: u32 = 13_00_00;

/// Writes `record` as the holder of `key` and returns the new fencing token.
pub(crate) async fn claim(
    session: &Session,
    s: &Settings,
    ready: &Ready,
    key: i64,
    name: &LockName,
    record: &Record,
) -> Result<i64> {
    let lock_name = name.file_name();
    let json = record.to_json();
    let row = session
        .client
        .query_typed_one(
            &claim_sql(&ready.tables.holders, &ready.tables.secret, session.version),
            &[
                (&key, Type::INT8),
                (&s.namespace, Type::TEXT),
                (&lock_name, Type::TEXT),
                (&json, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| Error::io("record", &s.server, &e))?;
    Ok(row.get(0))
}

/// Takes the lock if it is free, without waiting.
pub fn try_lock_sql(key: i64) -> String {
    format!(
        "SELECT pg_catalog.pg_try_advisory_lock({})",
        key_literal(key)
    )
}

/// Waits, at most `slice`, until nobody holds the lock, and takes nothing: a shared lock on the
/// key, in a transaction of its own that ends with the statement, queues behind the holder's
/// exclusive one and is granted the moment it goes. The server ends the transaction (and lets
/// go of the shared lock) whether or not this client reads the answer, so a waiter that is
/// frozen now is never the holder; the waiter that runs takes the lock with `try_lock_sql`.
/// `lock_timeout` comes back to 0 either way: the `SET` is undone with the failed transaction.
pub(crate) fn wait_free_sql(key: i64, slice_ms: u128) -> String {
    format!(
        "SET lock_timeout = {}; SELECT pg_catalog.pg_advisory_xact_lock_shared({}); SET lock_timeout = 0",
        slice_ms.max(1),
        key_literal(key)
    )
}

/// Lets go of the lock. Sent together with `clear_sql`, in one round trip, as a statement of its
/// own: the holder table emptied, dropped or out of reach never keeps a holder from letting go.
pub fn unlock_sql(key: i64) -> String {
    format!("SELECT pg_catalog.pg_advisory_unlock({})", key_literal(key))
}

/// Clears our record, if it is still ours, after `unlock_sql`: the record is only for people.
pub fn clear_sql(holders: &str, key: i64) -> String {
    format!(
        "UPDATE {holders} SET backend_pid = NULL, record = NULL WHERE lock_key = {} AND backend_pid = pg_catalog.pg_backend_pid()",
        key_literal(key)
    )
}

/// Whether this session holds the lock `key`, as the server's lock manager says.
pub(crate) fn still_held_sql(key: i64) -> String {
    format!(
        "SELECT count(*) FROM pg_catalog.pg_locks l WHERE {} AND l.pid = pg_catalog.pg_backend_pid()",
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
         AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
         AND {} = ({key})",
        held_key("l")
    )
}

/// The bigint key of the advisory `pg_locks` row `l` (shifting wraps, as the key's bits do).
pub(crate) fn held_key(l: &str) -> String {
    format!("(({l}.classid::text::int8 << 32) | {l}.objid::text::int8)")
}

/// The record column as text, or NULL when it is larger than a record may be; never read
/// whole. The stored size (compressed) is looked at first: larger than the limit, the text is
/// larger too, and is not made.
pub(crate) fn capped_record(h: &str) -> String {
    format!(
        "CASE WHEN pg_catalog.pg_column_size({h}.record) > {MAX_RECORD_BYTES} THEN NULL
              WHEN pg_catalog.octet_length({h}.record::text) > {MAX_RECORD_BYTES} THEN NULL
              ELSE {h}.record::text END"
    )
}

fn holder_sql(t: &Tables) -> String {
    format!(
        "SELECT l.pid, {}, h.record IS NOT NULL, h.token::text,
                pg_catalog.host(a.client_addr), pg_catalog.pg_get_userbyid(a.usesysid)::text
         FROM pg_catalog.pg_locks l
         LEFT JOIN {} h ON h.lock_key = $1 AND h.backend_pid = l.pid
         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
         WHERE {}",
        capped_record("h"),
        t.holders,
        lock_row_matches("$1")
    )
}

/// Who holds `key` now, if anyone. The server's lock manager (`pg_locks`, which every role may
/// read) says whether and which session holds it; the record comes from the holder table.
/// A holder whose record is not there (not written yet, or not a holder of this crate) is
/// still the holder, with PID 0 and the role of its session.
pub(crate) async fn holder(
    session: &Session,
    s: &Settings,
    ready: &Ready,
    key: i64,
) -> Result<Option<Holder>> {
    let params: [(&(dyn ToSql + Sync), Type); 1] = [(&key, Type::INT8)];
    let rows = session
        .client
        .query_typed(&holder_sql(&ready.tables), &params)
        .await
        .map_err(|e| Error::io("inspect", &s.server, &e))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let json: Option<String> = row.get(1);
    let present: Option<bool> = row.get(2);
    let record_too_large = json.is_none() && present == Some(true);
    Ok(Some(Holder {
        record: json
            .as_deref()
            .map_or_else(|| Record::pid_only(0), to_record),
        fencing_token: row.get(3),
        client_addr: row.get(4),
        role: row.get(5),
        record_too_large,
        backend_pid: row.get(0),
    }))
}

/// A holder of `name` of the older version, which computed the key without the salt: a session
/// that holds the unsalted key and wrote its record for it in the holder table. A session that
/// holds that key and wrote nothing is not a holder of any version, and is ignored.
pub(crate) async fn older_holder(
    session: &Session,
    s: &Settings,
    ready: &Ready,
    name: &LockName,
) -> Result<Option<Holder>> {
    let key = crate::key::unsalted_key(&s.namespace, name);
    match holder(session, s, ready, key).await? {
        Some(h) if h.record.pid != 0 || h.record_too_large => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// A stored record, or the unknown holder (PID 0) when it is not one.
pub(crate) fn to_record(json: &str) -> Record {
    match parse_record(json.as_bytes()) {
        Parsed::Ours(r) | Parsed::Legacy(r) => r,
        Parsed::Invalid(_) => Record::pid_only(0),
    }
}
