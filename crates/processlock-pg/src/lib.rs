//! The processlock guarantee across hosts, on a PostgreSQL server the services already use.
//!
//! # The lock
//! A lock is a session-level advisory lock (`pg_try_advisory_lock` / `pg_advisory_lock`) held by
//! a server session dedicated to it, one per held lock. The server frees it the moment that
//! session ends, whatever ended it. Its key is a stable 64-bit hash of a namespace and the lock's
//! name (see [`lock_key`]), so every process that names the same lock on the same database
//! computes the same key, on any platform and any version of this crate.
//!
//! # The record and the fencing token
//! Once the lock is granted, the holder writes its [`Record`] (the same fields as a lock file:
//! pid, started, tradeSide, processName, hostname, startToken) into the holder table (default
//! `processlock_holders`, created on first use), and in the same statement bumps the lock's
//! counter: `INSERT ... ON CONFLICT DO UPDATE SET token = token + 1 RETURNING token`. That number
//! is the fencing token: every new holder gets a larger one. A store that remembers the largest
//! token it has seen and refuses writes with a smaller one cannot be written by a holder that
//! lost the lock without knowing it (frozen, cut off, or across a server failover). On release
//! the record is cleared; the row stays, because the counter must never go back. The table never
//! decides who holds a lock: `pg_locks` does, and a row is only believed while its session
//! holds the lock.
//!
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
//! `Instant` does not: [`PgHeld::is_lost`] is true at once after such a sleep. Heartbeats and the deadline run on the lock's own native thread,
//! so a busy caller thread delays neither. Loss is final: the flag is set, the hooks run, then
//! the session is closed.
//!
//! What a lease cannot cover: a server crash, restart or failover ends every session and frees
//! every lock at once, and an administrator's `pg_terminate_backend` frees one; another process
//! may take the lock before the old holder's next heartbeat tells it (within a quarter lease).
//! Only the fencing token protects against that.
//!
//! # Waiting
//! A waiter blocks in the server (`SET lock_timeout` + `pg_advisory_lock`) and is woken the
//! moment the holder's session ends. Long waits are cut into 30 s statements, because a waiting
//! statement holds back vacuum. A [`Cancel`](processlock::Cancel) is polled every 20 ms and ends
//! the wait with the protocol's cancel request.
//!
//! # What cannot work
//! A pooler in transaction mode (PgBouncer `pool_mode=transaction`) hands each statement to any
//! server session, which breaks session locks: the session setup checks that two statements run
//! in the same server process and refuses with `LOCK_UNSUPPORTED` otherwise (it cannot notice a
//! pool that happens to have one server connection; the heartbeat then notices when the lock is
//! not in its session). A read-only standby is refused the same way.
//!
//! # TLS
//! With the `tls` feature, `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert` (a PEM file, or `system`) in the URL work as in libpq,
//! through rustls with ring: no OpenSSL. `prefer` and `require` encrypt without checking the
//! certificate, as libpq does; use `verify-full` across untrusted networks. Without the feature,
//! only `disable` and `prefer` (never encrypting) are accepted, and anything else is
//! `LOCK_INVALID_OPTION`. The feature is off by default because ring compiles C, which keeps a
//! Linux host from checking the Windows and macOS targets (`cargo check --target`).
//!
//! # Threads
//! Each acquire runs on a new native thread with a single-threaded Tokio runtime; for a held
//! lock that thread stays until release or loss. Nothing runs, and no thread exists, until a
//! lock is asked for.

mod admin;
mod clock;
mod error;
mod key;
mod lock;
mod loss;
mod options;
mod session;
mod table;
mod tls;

pub use admin::{clear_stale, list, terminate_holder, Listed};
pub use error::{Conflict, Error, Lost, Result};
pub use key::lock_key;
pub use lock::{
    acquire, acquire_wait, acquire_wait_noting, inspect, OnWaitNotice, PgHeld, WaitNotice,
};
pub use loss::OnLost;
pub use options::{
    PgOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LEASE, DEFAULT_NAMESPACE, DEFAULT_TABLE,
};
pub use processlock::Record;
pub use table::Holder;

/// The statements the lock sends, for the benchmark's floor (`examples/pg_floor.rs`), which
/// issues exactly these without any of the lock's checks. Not part of the API.
#[doc(hidden)]
pub mod statements {
    pub use crate::table::{claim_sql, clear_sql, create_sql, try_lock_sql, unlock_sql};
}
