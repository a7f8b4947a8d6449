//! What the caller asks for, checked before anything is sent: the URL, the lease and the names.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use crate::error::{Error, Result};
use crate::tls::{connector, split_url, Connector, Mode};
use processlock::LockName;

pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_TABLE: &str = "processlock_holders";
pub const DEFAULT_NAMESPACE: &str = "processlock";

/// Below a second the server's TCP keepalive settings (whole seconds) cannot follow the lease.
const MIN_LEASE: Duration = Duration::from_secs(1);
/// `idle_session_timeout` and `tcp_user_timeout` are `int` milliseconds on the server.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_NAMESPACE_LEN: usize = 128;

/// How to reach the server and how to hold locks on it.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/dbname?...` or a `key=value` connection string.
    pub url: String,
    /// How long the server keeps the lock of a holder it no longer hears from (dead, frozen or
    /// cut off). The holder gives up after three quarters of it.
    pub lease: Duration,
    /// The bound on reaching the server and logging in; also on a release that gets no answer.
    pub connect_timeout: Duration,
    /// The holder table, `name` or `schema.name` (letters, digits, `_`; not quoted).
    pub table: String,
    /// Keeps unrelated applications that share a database apart: part of every lock's key.
    pub namespace: String,
    /// Written to the record; default `trader-<side>-<type>`, as for lock files.
    pub process_name: Option<String>,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            lease: DEFAULT_LEASE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            table: DEFAULT_TABLE.to_string(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            process_name: None,
        }
    }

    /// The options checked as an acquire would check them, without connecting; how messages
    /// name the server (`user@host:port/dbname`, never the password).
    pub fn check(&self) -> Result<String> {
        Settings::new(self).map(|s| s.server)
    }

    /// What names the lock `name` on this server, where a lock file's path names a lock file:
    /// in results and errors, and between `processlock run` and the command it hands its hold to.
    pub fn lock_id(&self, name: &LockName) -> Result<String> {
        self.check()
            .map(|server| self.lock_id_on(&server, &name.file_name()))
    }

    /// `lock_id` for a server already checked, and a lock file name.
    pub fn lock_id_on(&self, server: &str, file_name: &str) -> String {
        format!("{server}#{}/{file_name}", self.namespace)
    }

    /// How long before the server may give the lock to another holder this process learns
    /// that its own is lost, when its heartbeats went unanswered: the part of the lease left
    /// after the loss deadline. A holder that stops what the lock protects within it stops
    /// before anyone else can have started.
    pub fn loss_margin(&self) -> Duration {
        self.lease - lost_after(self.lease)
    }
}

/// See `Settings::lost_after`.
fn lost_after(lease: Duration) -> Duration {
    lease - lease / 4
}

/// The options, checked, with everything derived from them.
#[derive(Clone)]
pub(crate) struct Settings {
    pub config: Config,
    pub tls: Connector,
    /// `user@host:port/dbname`: how messages name the server (never with the password).
    pub server: String,
    pub lease: Duration,
    pub connect_timeout: Duration,
    /// Already quoted for SQL.
    pub table: String,
    pub namespace: String,
    pub process_name: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("server", &self.server)
            .field("lease", &self.lease)
            .field("table", &self.table)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn new(opts: &PgOptions) -> Result<Self> {
        if !(MIN_LEASE..=MAX_LEASE).contains(&opts.lease) {
            return Err(Error::invalid(
                "leaseMs",
                format!(
                    "{} ms is outside {}..={} ms",
                    opts.lease.as_millis(),
                    MIN_LEASE.as_millis(),
                    MAX_LEASE.as_millis()
                ),
            ));
        }
        if !(MIN_CONNECT_TIMEOUT..=MAX_CONNECT_TIMEOUT).contains(&opts.connect_timeout) {
            return Err(Error::invalid(
                "connectTimeoutMs",
                format!(
                    "{} ms is outside {}..={} ms",
                    opts.connect_timeout.as_millis(),
                    MIN_CONNECT_TIMEOUT.as_millis(),
                    MAX_CONNECT_TIMEOUT.as_millis()
                ),
            ));
        }
        if opts.namespace.len() > MAX_NAMESPACE_LEN || opts.namespace.contains('\0') {
            return Err(Error::invalid(
                "namespace",
                format!("use at most {MAX_NAMESPACE_LEN} bytes and no NUL"),
            ));
        }
        let table = quote_table(&opts.table)?;
        let (mut config, tls) = parse_url(&opts.url)?;
        let lease = opts.lease;
        let keepalive = Keepalive::for_lease(lease);
        config
            .connect_timeout(opts.connect_timeout)
            // The client side of a cut connection fails within the lease too, so a waiter or a
            // release never hangs on a dead socket.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(keepalive.idle_s))
            .keepalives_interval(Duration::from_secs(keepalive.interval_s))
            .keepalives_retries(keepalive.count)
            .tcp_user_timeout(lease);
        if config.get_application_name().is_none() {
            config.application_name("processlock");
        }
        Ok(Self {
            server: describe_server(&config),
            config,
            tls,
            lease,
            connect_timeout: opts.connect_timeout,
            table,
            namespace: opts.namespace.clone(),
            process_name: opts.process_name.clone(),
        })
    }

    /// How often the holder proves it is alive.
    pub fn heartbeat_every(&self) -> Duration {
        self.lease / 4
    }

    /// How long after sending its last confirmed heartbeat the holder still counts the lock as
    /// its own. The server keeps it at least a lease after *receiving* that heartbeat; the
    /// quarter left over covers the loss notice reaching the caller (and any clock-rate
    /// difference, which is far smaller).
    pub fn lost_after(&self) -> Duration {
        lost_after(self.lease)
    }

    pub fn keepalive(&self) -> Keepalive {
        Keepalive::for_lease(self.lease)
    }
}

/// TCP keepalive settings (whole seconds) under which a silent peer is dropped no sooner than
/// the lease and not much later: `idle + interval * count >= lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    pub idle_s: u64,
    pub interval_s: u64,
    pub count: u32,
}

/// The largest TCP keepalive idle time and interval Linux accepts, in seconds
/// (`MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`); the server's `setsockopt` fails above it too.
const MAX_KEEPALIVE_S: u64 = 32_767;

impl Keepalive {
    pub fn for_lease(lease: Duration) -> Self {
        let lease_s = (lease.as_millis() as u64).div_ceil(1000);
        let count = 3;
        let idle_s = lease_s.div_ceil(2).clamp(1, MAX_KEEPALIVE_S);
        Self {
            idle_s,
            interval_s: lease_s
                .saturating_sub(idle_s)
                .div_ceil(u64::from(count))
                .clamp(1, MAX_KEEPALIVE_S),
            count,
        }
    }
}

fn parse_url(url: &str) -> Result<(Config, Connector)> {
    if url.trim().is_empty() {
        return Err(Error::invalid("url", "empty"));
    }
    let (client_url, mut tls) = split_url(url)?;
    let config = Config::from_str(&client_url).map_err(|e| {
        // The parser's message never contains the password; the URL may.
        Error::invalid("url", format!("not a PostgreSQL connection URL: {e}"))
    })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(Error::invalid("url", "names no host"));
    }
    if config.get_user().is_none() {
        return Err(Error::invalid("url", "names no user"));
    }
    if tls.mode == Mode::Prefer {
        // A key=value string keeps its sslmode in the client's config.
        tls.mode = match config.get_ssl_mode() {
            SslMode::Disable => Mode::Disable,
            SslMode::Require => Mode::Require,
            _ => Mode::Prefer,
        };
    }
    Ok((config, connector(&tls)?))
}

fn describe_server(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) if h.contains(':') => format!("[{h}]"),
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => config
            .get_hostaddrs()
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or_default();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// `name` or `schema.name`, each an unquoted SQL identifier, returned quoted. Quoting keeps
/// the case as written; the restriction keeps the name out of any need for escaping.
fn quote_table(table: &str) -> Result<String> {
    let parts: Vec<&str> = table.split('.').collect();
    let valid = |p: &str| {
        (1..=63).contains(&p.len())
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
        return Err(Error::invalid(
            "table",
            format!("{table:?}: use name or schema.name, each 1 to 63 letters, digits or '_', not starting with a digit"),
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> PgOptions {
        PgOptions::new(url)
    }

    #[test]
    fn keepalives_cover_the_lease_and_not_much_more() {
        for ms in [1000u64, 1500, 2000, 5000, 10_000, 60_000, 86_400_000] {
            let k = Keepalive::for_lease(Duration::from_millis(ms));
            let total_ms = (k.idle_s + k.interval_s * u64::from(k.count)) * 1000;
            assert!(total_ms >= ms, "{ms}: {k:?}");
            assert!(k.idle_s <= MAX_KEEPALIVE_S && k.interval_s <= MAX_KEEPALIVE_S);
            assert!(total_ms <= ms + 4000 || total_ms <= ms * 2, "{ms}: {k:?}");
        }
    }

    #[test]
    fn bad_urls_and_options_are_invalid_options() {
        let code = |o: PgOptions| Settings::new(&o).unwrap_err().code();
        for url in [
            "",
            "mysql://u@h/db",
            "postgres://u@h:notaport/db",
            "postgres://u@h/db?sslmode=bogus",
            "postgres://u@h/db?sslrootcert=%zz",
            "postgres:///db",
            "host=h dbname=x",
        ] {
            assert_eq!(code(opts(url)), "LOCK_INVALID_OPTION", "{url:?}");
        }
        if !cfg!(feature = "tls") {
            for url in [
                "postgres://u@h/db?sslmode=require",
                "postgres://u@h/db?sslmode=verify-full",
                "host=h user=u sslmode=require",
            ] {
                assert_eq!(code(opts(url)), "LOCK_INVALID_OPTION", "{url:?}");
            }
        }
        let mut o = opts("postgres://u@h/db");
        o.lease = Duration::from_millis(999);
        assert_eq!(code(o), "LOCK_INVALID_OPTION");
        for table in ["", "a.b.c", "1abc", "a-b", "x\"; drop table y; --", "a."] {
            let mut o = opts("postgres://u@h/db");
            o.table = table.to_string();
            assert_eq!(code(o), "LOCK_INVALID_OPTION", "{table:?}");
        }
    }

    #[test]
    fn the_password_never_reaches_a_message() {
        let s = Settings::new(&opts("postgres://alice:s3cret@db.example:6543/locks")).unwrap();
        assert_eq!(s.server, "postgres://alice@db.example:6543/locks");
        let e = Settings::new(&opts("postgres://alice:s3cret@h:bad/db")).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn tables_are_quoted_as_written() {
        let mut o = opts("postgres://u@h/db");
        o.table = "locks.Holders_2".into();
        assert_eq!(Settings::new(&o).unwrap().table, "\"locks\".\"Holders_2\"");
    }
}
