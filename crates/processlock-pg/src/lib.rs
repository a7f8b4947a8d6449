//! The processlock guarantee across hosts, on a PostgreSQL server the services already use.
//!
//! # The lock
//! A lock is a session-level advisory lock (`pg_try_advisory_lock` / `pg_advisory_lock`) held by
//! a server session dedicated to it, one per held lock. The server frees it the moment that
//! session ends, whatever ended it. Its key is SipHash-2-4, keyed with the database's secret
//! salt, of a namespace and the lock's name (see [`lock_key`]), so every process that names the
//! same lock on the same database computes the same key, and a role that cannot read the salt
//! cannot compute it in advance.
//!
//! # The tables, and other roles
//! Two tables, created on first use (`table.rs`): the holder table (default
//! `processlock_holders`), with each holder's [`Record`] (the same fields as a lock file: pid,
//! started, tradeSide, processName, hostname, startToken), for people; and beside it the secret
//! table (`processlock_holders_secret`), which only the service's role reads: the salt, and each
//! lock's last fencing token. Each session finds them as the server would, once, then names them
//! with their schema and sets `search_path = pg_catalog, pg_temp`: no function or operator comes
//! from a schema another role may write. A role runs the triggers of a table it writes and the
//! row-security policies of one it reads, so a role that takes locks uses only tables it owns,
//! and a role that looks reads only plain tables of the expected column types, with
//! `row_security = off`; anything else is `LOCK_UNSUPPORTED`, naming the owner.
//!
//! # The record and the fencing token
//! Once the lock is granted, the holder writes its record into the holder table, and in the same
//! statement takes its fencing token from the secret table: the id of that statement's own
//! transaction (`pg_current_xact_id()`; `txid_current()` before PostgreSQL 13), or one more than
//! the lock's last token where that is larger (on a cluster whose transaction ids started again,
//! as after a dump and restore). A transaction id is 64 bits wide, cluster-wide, and only grows:
//! it survives restarts, `TRUNCATE` and `DROP` of the tables, other roles and schemas, another
//! `table` option, and a promoted standby goes on from the replayed value. The claim runs in a
//! transaction that starts after the grant, so after every earlier holder let go, so after every
//! earlier holder's claim: every new holder gets a larger token, whatever happened to the
//! tables, and whatever a role allowed to write the holder table wrote there. A store that
//! remembers the largest token it has seen and refuses writes with a smaller one cannot be
//! written by a holder that lost the lock without knowing it (frozen, cut off, or across a
//! server failover). On release the record is cleared. The table never decides who holds a
//! lock: `pg_locks` does (every role may read it), and a row is only believed while its session
//! holds the lock; a holder without a row there is still the holder, with PID 0 and the role of
//! its session (a session that is not a processlock holder). A record larger than
//! [`processlock::MAX_RECORD_BYTES`] is never read whole, and listings read only locks held now
//! or with a record left behind, a page at a time.

//! # The lease
//! A dead holder's session ends at once. A frozen or cut-off one would keep its session (and
//! lock) for the kernel's TCP keepalive time, over two hours by default on Linux. So each
//! holding session sets, from the lease (`lease`, default 10 s), `idle_session_timeout` (server
//! 14+), `tcp_user_timeout` (12+), `client_connection_check_interval` (14+) and
//! `tcp_keepalives_idle/interval/count`, all settable per session without any server change:
//! the server ends a silent holder's session about a lease after it last heard from it.
//!
//! The holder, in turn, heartbeats every quarter lease (asking the server whether its session
//! still holds the lock) and declares the lock **lost** when no heartbeat has been confirmed for
//! three quarters of the lease, timed on a monotonic clock from when the last confirmed
//! heartbeat was *sent*. The server cannot have freed the lock before a lease after it
//! *received* that heartbeat, so the holder always knows first, by a quarter lease. No wall
//! clock is compared anywhere, and no clock of two machines. The deadline is also kept on a
//! clock that counts time the machine spent suspended (`CLOCK_BOOTTIME` on Linux), which
//! `Instant` does not: [`PgHeld::is_lost`] is true at once after such a sleep. Heartbeats and
//! the deadline run on the lock's own native thread, so a busy caller thread delays neither.
//! Loss is final: the flag is set, the hooks run, then the session is closed.
//!
//! The holder also watches its connection: when the server ends the session
//! (`pg_terminate_backend`, an idle-session killer, a crash, a restart, a failover) it sends its
//! last word and closes the socket, and the holder declares the loss the moment its thread reads
//! that, not at its next heartbeat. The server sends that word before it lets go of the lock,
//! and the bytes are in the holder's socket before anyone else can be granted it (on one host at
//! once; across a network, as soon as they arrive). So [`PgHeld::is_lost`] also looks at the
//! socket itself, on the caller's thread, between the lock's own statements: anything the
//! server sent unasked means the session is ending (see `probe.rs`). A holder that checks before
//! each action therefore stops before a successor can act, even when the lock's thread waits
//! for a CPU; only a holder paused between its check and its action still needs the fencing
//! token (on Windows, where the socket is not peeked at, the check waits for the lock's thread).
//!
//! # Waiting
//! A waiter takes nothing while it waits: it blocks in a statement that asks for a shared lock
//! on the key in a transaction of its own (`pg_advisory_xact_lock_shared`), which queues behind
//! the holder's exclusive lock, is granted the moment the holder's session lets go, and is let
//! go by the server when the statement's transaction ends, whether or not the client reads the
//! answer. Then the waiter, running, takes the lock with `pg_try_advisory_lock`; if another
//! waiter was first, it waits again. So a waiter frozen in the meantime (SIGSTOP, a long GC)
//! never becomes the holder and never holds up the next one, and the kill -9 of a holder is
//! still taken over at once. A waiter of an older version (in `pg_advisory_lock`) is granted
//! the lock by the server as before; the lock stays exclusive either way. Long waits are cut
//! into 30 s statements (`lock_timeout`), because a waiting statement holds back vacuum. A
//! [`Cancel`](processlock::Cancel) is polled every 20 ms and ends the wait with the protocol's
//! cancel request.
//!
//! Once it has reached the server, a wait rides out the server going away (a restart, a
//! failover, a broken connection): it connects again, after 100 ms, then twice as long each
//! time up to a second, and waits on; its deadline and its cancel still end it. It says so
//! through [`acquire_wait_noting`]: once when the server goes away, once when it is back
//! ([`WaitNotice`]). An error of the first connection is returned at once.
//!
//! # What cannot work
//! A pooler in transaction mode (PgBouncer `pool_mode=transaction`) hands each statement to any
//! server session, which breaks session locks: the session setup checks that two statements run
//! in the same server process and refuses with `LOCK_UNSUPPORTED` otherwise (it cannot notice a
//! pool that happens to have one server connection; the heartbeat then notices when the lock is
//! not in its session). A read-only standby is refused the same way.
//!
//! # Connecting
//! The connection is read as libpq reads it (`conninfo.rs`): a `postgres://` URL or a
//! `key=value` string, completed parameter by parameter from a service file (`service=`,
//! `PGSERVICE`) and then the environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
//! `PGPASSWORD`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGREQUIREAUTH`, `PGCHANNELBINDING`,
//! `PGCONNECT_TIMEOUT`, `PGAPPNAME`, ...); a password none of these gives comes from the password
//! file (`~/.pgpass`, `PGPASSFILE`; ignored, with a warning, when group or others may read it),
//! per host. So the URL a command line carries needs no password. Several hosts are tried in
//! order (`target_session_attrs=read-write` or `primary` skips the others).
//!
//! # TLS and authentication
//! With the `tls` feature, `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert` (a PEM file, or `system`) work as in libpq, through rustls
//! with ring: no OpenSSL. `prefer` and `require` encrypt without checking the certificate, as
//! libpq does; use `verify-full` across untrusted networks. Without the feature, only `disable`
//! and `prefer` (never encrypting) are accepted, and anything else is `LOCK_INVALID_OPTION`. The
//! feature is off by default because ring compiles C, which keeps a Linux host from checking the
//! Windows and macOS targets (`cargo check --target`).
//!
//! Whoever answers at the server's address chooses how the client logs in. This crate opens the
//! sockets itself (`connect.rs`) so that every authentication request is checked against
//! `require_auth` (`auth.rs`) before the client answers it: by default, everything but a
//! cleartext password to a server whose certificate was not checked (`verify-full`); with
//! `require_auth=scram-sha-256`, SCRAM only, which a server that does not know the password
//! cannot complete. `channel_binding=require` binds SCRAM to the TLS session (the certificate's
//! `tls-server-end-point`), which stops a machine in the middle too.
//!
//! # Threads
//! Each acquire runs on a new native thread with a single-threaded Tokio runtime; for a held
//! lock that thread stays until release or loss. Nothing runs, and no thread exists, until a
//! lock is asked for.

mod admin;
mod auth;
mod backend;
mod clock;
mod connect;
mod conninfo;
mod error;
mod key;
mod lock;
mod loss;
mod options;
mod pgpass;
mod probe;
mod replace;
mod request;
mod session;
mod table;
mod target;
mod tls;

pub use admin::{clear_stale, inspect, list, list_pages, terminate_holder, Listed, PAGE_ROWS};
pub use backend::{release_hold, PgBackend, PgHold};
pub use conninfo::url_has_password;
pub use error::{Conflict, Error, Lost, Result};
pub use key::{lock_key, Salt};
pub use lock::{acquire, acquire_wait, acquire_wait_noting, OnWaitNotice, PgHeld, WaitNotice};
pub use loss::OnLost;
pub use options::{
    PgOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LEASE, DEFAULT_NAMESPACE, DEFAULT_TABLE,
};
pub use processlock::Record;
pub use replace::{acquire_replacing, ReplaceLines};
pub use request::{stop_this_process, OnReplaceRequest, ReplaceRequest};
pub use table::Holder;

/// The statements the lock sends, for the benchmark's floor (`examples/pg_floor.rs`), which
/// issues exactly these without any of the lock's checks. Not part of the API.
#[doc(hidden)]
pub mod statements {
    pub use crate::table::{
        claim_sql, clear_sql, create_secret_sql, create_sql, try_lock_sql, unlock_sql,
    };
}
