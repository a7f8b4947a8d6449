//! What the caller asks for, checked before anything is sent: the connection (URL, service
//! file, environment, password file: `conninfo.rs`, `pgpass.rs`), the lease and the names.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, SslNegotiation};
use tokio_postgres::Config;

use crate::auth::Policy;
use crate::conninfo::{self, Env, Params};
use crate::error::{Error, Result};
use crate::pgpass;
use crate::target::{Host, Password, SessionAttrs, Target};
use crate::tls::{connector, Connector, Mode, TlsParams};
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
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/dbname?...` or a `key=value` connection string, completed as
    /// libpq completes it: a service (`service=`, `PGSERVICE`), the environment (`PGHOST`,
    /// `PGUSER`, `PGPASSWORD`, `PGSSLMODE`, ...), and for the password, the password file
    /// (`~/.pgpass`, `PGPASSFILE`).
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

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = if conninfo::url_has_password(&self.url) {
            "(a connection string with a password)"
        } else {
            self.url.as_str()
        };
        f.debug_struct("PgOptions")
            .field("url", &url)
            .field("lease", &self.lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("table", &self.table)
            .field("namespace", &self.namespace)
            .field("process_name", &self.process_name)
            .finish()
    }
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
    /// What every login sends (user, database, options, application name, TLS mode, channel
    /// binding); never a host or a password: those are per target.
    pub config: Config,
    pub tls: Connector,
    /// The hosts, in the order given.
    pub targets: Vec<Target>,
    pub auth: Policy,
    pub session_attrs: SessionAttrs,
    /// `load_balance_hosts=random`: the hosts in a random order each time.
    pub load_balance: bool,
    /// `user@host:port/dbname`: how messages name the server (never with the password).
    pub server: String,
    pub lease: Duration,
    pub connect_timeout: Duration,
    /// The holder table as given; where it is, is decided on the server (`table.rs`).
    pub table: TableName,
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
        Self::with_env(opts, &conninfo::process_env)
    }

    /// `new`, with the environment variables `env` gives.
    pub fn with_env(opts: &PgOptions, env: Env<'_>) -> Result<Self> {
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
        let table = TableName::parse(&opts.table)?;
        if opts.url.trim().is_empty() {
            return Err(Error::invalid("url", "empty"));
        }
        let params = Params::gather(&opts.url, env)?;
        let user = params
            .get("user")
            .ok_or_else(|| {
                Error::invalid("url", "names no user (give it in the URL, or set PGUSER)")
            })?
            .to_string();
        let dbname = params.get("dbname").unwrap_or(&user).to_string();
        let mut targets = targets(&params)?;
        add_passwords(&mut targets, &params, &dbname, &user, env);
        let tls = TlsParams::from(&params)?;
        let auth = match params.get("require_auth") {
            Some(value) => Policy::parse(
                value,
                &params.name("require_auth"),
                params.written("require_auth"),
            )?,
            None => Policy::default_for(tls.mode == Mode::VerifyFull),
        };
        let mut config = Config::new();
        config
            .user(&user)
            .dbname(&dbname)
            .ssl_mode(tls.mode.for_client())
            .ssl_negotiation(negotiation(&params, tls.mode)?)
            .channel_binding(channel_binding(&params)?)
            .application_name(
                params
                    .get("application_name")
                    .or(params.get("fallback_application_name"))
                    .unwrap_or("processlock"),
            );
        if let Some(options) = params.get("options") {
            config.options(options);
        }
        check_fixed(&params)?;
        let connect_timeout = if opts.connect_timeout == DEFAULT_CONNECT_TIMEOUT {
            connect_timeout(&params)?.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
        } else {
            opts.connect_timeout
        };
        Ok(Self {
            server: describe_server(&targets, &user, &dbname),
            config,
            tls: connector(&tls)?,
            targets,
            auth,
            session_attrs: session_attrs(&params)?,
            load_balance: load_balance(&params)?,
            lease: opts.lease,
            connect_timeout,
            table,
            namespace: opts.namespace.clone(),
            process_name: opts.process_name.clone(),
        })
    }

    /// The targets in the order to try them.
    pub fn targets_in_order(&self) -> Vec<&Target> {
        let mut order: Vec<&Target> = self.targets.iter().collect();
        if self.load_balance {
            shuffle(&mut order);
        }
        order
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

fn invalid_value(params: &Params, key: &str, expected: &str) -> Error {
    Error::invalid("url", format!("{}: {expected}", params.shown(key)))
}

/// Each host with its port (one port for all, or one each) and address.
fn targets(params: &Params) -> Result<Vec<Target>> {
    let list = |key: &str| -> Vec<String> {
        params
            .get(key)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    };
    let hosts = list("host");
    let addrs = list("hostaddr")
        .iter()
        .map(|a| {
            a.parse::<IpAddr>().map_err(|_| {
                Error::invalid(
                    "url",
                    format!("{}: {a:?} is not an IP address", params.name("hostaddr")),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if hosts.is_empty() && addrs.is_empty() {
        return Err(Error::invalid(
            "url",
            "names no host (give it in the URL, or set PGHOST)",
        ));
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(Error::invalid(
            "url",
            format!(
                "{} hosts and {} host addresses: give one address per host",
                hosts.len(),
                addrs.len()
            ),
        ));
    }
    let count = hosts.len().max(addrs.len());
    let ports = list("port");
    if ports.len() > 1 && ports.len() != count {
        return Err(Error::invalid(
            "url",
            format!(
                "{} ports for {count} hosts: give one port, or one per host",
                ports.len()
            ),
        ));
    }
    (0..count)
        .map(|i| {
            let port_text = ports.get(i).or(ports.first()).map_or("", String::as_str);
            let port = match port_text {
                "" => 5432,
                p => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid_value(params, "port", "not a port number"))?,
            };
            let host = match hosts.get(i).map(String::as_str) {
                Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
                Some("") | None if addrs.get(i).is_none() => {
                    return Err(Error::invalid("url", "an empty host in the host list"))
                }
                Some(h) => Host::Tcp(h.to_string()),
                None => Host::Tcp(String::new()),
            };
            Ok(Target {
                host,
                addr: addrs.get(i).copied(),
                port,
                password: None,
            })
        })
        .collect()
}

/// The password the parameters give, else each host's from the password file.
fn add_passwords(targets: &mut [Target], params: &Params, dbname: &str, user: &str, env: Env<'_>) {
    if let Some(secret) = params.get("password") {
        for t in targets.iter_mut() {
            t.password = Some(Password {
                secret: secret.to_string(),
                file: None,
            });
        }
        return;
    }
    let Some(file) = params
        .get("passfile")
        .map(PathBuf::from)
        .or_else(|| pgpass::default_file(env))
    else {
        return;
    };
    for t in targets.iter_mut() {
        let name = match (&t.host, t.addr) {
            (Host::Tcp(h), _) if !h.is_empty() => h.clone(),
            (Host::Unix(dir), _) => dir.display().to_string(),
            (_, Some(addr)) => addr.to_string(),
            _ => String::new(),
        };
        let port = t.port.to_string();
        let entry = pgpass::Entry {
            host: &name,
            port: &port,
            dbname,
            user,
        };
        t.password = pgpass::lookup(&file, &entry).map(|secret| Password {
            secret,
            file: Some(file.clone()),
        });
    }
}

fn negotiation(params: &Params, mode: Mode) -> Result<SslNegotiation> {
    match params.get("sslnegotiation") {
        None | Some("postgres") => Ok(SslNegotiation::Postgres),
        Some("direct") if matches!(mode, Mode::Require | Mode::VerifyCa | Mode::VerifyFull) => {
            Ok(SslNegotiation::Direct)
        }
        Some("direct") => Err(invalid_value(
            params,
            "sslnegotiation",
            "direct needs sslmode=require, verify-ca or verify-full",
        )),
        Some(_) => Err(invalid_value(
            params,
            "sslnegotiation",
            "use postgres or direct",
        )),
    }
}

fn channel_binding(params: &Params) -> Result<ChannelBinding> {
    match params.get("channel_binding") {
        None | Some("prefer") => Ok(ChannelBinding::Prefer),
        Some("disable") => Ok(ChannelBinding::Disable),
        Some("require") => Ok(ChannelBinding::Require),
        Some(_) => Err(invalid_value(
            params,
            "channel_binding",
            "use disable, prefer or require",
        )),
    }
}

fn session_attrs(params: &Params) -> Result<SessionAttrs> {
    match params.get("target_session_attrs") {
        None | Some("any") => Ok(SessionAttrs::Any),
        Some("read-write") => Ok(SessionAttrs::ReadWrite),
        Some("primary") => Ok(SessionAttrs::Primary),
        Some(_) => Err(invalid_value(
            params,
            "target_session_attrs",
            "use any, read-write or primary (a lock is held on the primary)",
        )),
    }
}

fn load_balance(params: &Params) -> Result<bool> {
    match params.get("load_balance_hosts") {
        None | Some("disable") => Ok(false),
        Some("random") => Ok(true),
        Some(_) => Err(invalid_value(
            params,
            "load_balance_hosts",
            "use disable or random",
        )),
    }
}

/// `connect_timeout` in whole seconds, as libpq reads it: 0 or less waits as long as allowed,
/// 1 means 2.
fn connect_timeout(params: &Params) -> Result<Option<Duration>> {
    let Some(value) = params.get("connect_timeout") else {
        return Ok(None);
    };
    let secs: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid_value(params, "connect_timeout", "whole seconds"))?;
    let max = MAX_CONNECT_TIMEOUT.as_secs() as i64;
    let secs = if secs <= 0 { max } else { secs.clamp(2, max) };
    Ok(Some(Duration::from_secs(secs as u64)))
}

/// Parameters that cannot change what the client does: refused unless they ask for just that.
fn check_fixed(params: &Params) -> Result<()> {
    if let Some(enc) = params.get("client_encoding") {
        if !matches!(
            enc.to_ascii_lowercase().as_str(),
            "utf8" | "utf-8" | "unicode" | "auto"
        ) {
            return Err(invalid_value(
                params,
                "client_encoding",
                "the client speaks UTF8 only",
            ));
        }
    }
    match params.get("gssencmode") {
        None | Some("disable" | "prefer") => Ok(()),
        Some("require") => Err(invalid_value(
            params,
            "gssencmode",
            "GSSAPI encryption is not supported; use TLS (sslmode=verify-full)",
        )),
        Some(_) => Err(invalid_value(params, "gssencmode", "use disable or prefer")),
    }
}

/// A random order, without a random-number crate: each `RandomState` is freshly seeded.
fn shuffle<T>(items: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    for i in (1..items.len()).rev() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        items.swap(i, (h.finish() % (i as u64 + 1)) as usize);
    }
}

fn describe_server(targets: &[Target], user: &str, dbname: &str) -> String {
    let Some(first) = targets.first() else {
        return format!("postgres://{user}@/{dbname}");
    };
    let host = match (&first.host, first.addr) {
        (Host::Tcp(h), _) if h.contains(':') => format!("[{h}]"),
        (Host::Tcp(h), _) if !h.is_empty() => h.clone(),
        (Host::Unix(dir), _) => dir.display().to_string(),
        (_, Some(IpAddr::V6(a))) => format!("[{a}]"),
        (_, Some(a)) => a.to_string(),
        _ => String::new(),
    };
    format!("postgres://{user}@{host}:{}/{dbname}", first.port)
}

/// `name` or `schema.name`, each an unquoted SQL identifier, returned quoted. Quoting keeps
/// the case as written; the restriction keeps the name out of any need for escaping.
/// The holder table option, checked: `name` or `schema.name`, each a plain identifier, used as
/// written (case and all). The secret table is named after it (`<name>_secret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// What the secret table's name adds to the holder table's.
pub(crate) const SECRET_SUFFIX: &str = "_secret";
/// PostgreSQL cuts longer identifiers short, silently.
const MAX_IDENTIFIER: usize = 63;

impl TableName {
    fn parse(table: &str) -> Result<Self> {
        let parts: Vec<&str> = table.split('.').collect();
        let valid = |p: &str, max: usize| {
            (1..=max).contains(&p.len())
                && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let name_max = MAX_IDENTIFIER - SECRET_SUFFIX.len();
        let (schema, name) = match parts.as_slice() {
            [name] => (None, *name),
            [schema, name] => (Some(*schema), *name),
            _ => (None, ""),
        };
        if !valid(name, name_max) || !schema.is_none_or(|s| valid(s, MAX_IDENTIFIER)) {
            return Err(Error::invalid(
                "table",
                format!("{table:?}: use name or schema.name, letters, digits or '_', not starting with a digit; the schema at most {MAX_IDENTIFIER}, the name at most {name_max}"),
            ));
        }
        Ok(Self {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        })
    }

    pub fn secret_name(&self) -> String {
        format!("{}{SECRET_SUFFIX}", self.name)
    }
}

/// `ident` quoted for SQL (it holds no quote: `TableName::parse` and the server's own names).
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> PgOptions {
        PgOptions::new(url)
    }

    /// Settings in an empty environment: the tests do not depend on the PG* variables of
    /// whoever runs them.
    fn settings(o: &PgOptions) -> Result<Settings> {
        Settings::with_env(o, &|_| None)
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
        let code = |o: PgOptions| settings(&o).unwrap_err().code();
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
        let o = opts("postgres://alice:s3cret@db.example:6543/locks");
        let s = settings(&o).unwrap();
        assert_eq!(s.server, "postgres://alice@db.example:6543/locks");
        for shown in [
            format!("{o:?}"),
            format!("{s:?}"),
            format!("{:?}", s.targets[0].password),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        for url in [
            "postgres://alice:s3cret@h:bad/db",
            "host=h user=alice password=s3cret port=bad",
            "host=h user=alice password=s3cret sslmode=bogus",
        ] {
            let e = settings(&opts(url)).unwrap_err();
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn tables_are_quoted_as_written() {
        let mut o = opts("postgres://u@h/db");
        o.table = "locks.Holders_2".into();
        let t = settings(&o).unwrap().table;
        assert_eq!(
            (t.schema.as_deref(), t.name.as_str()),
            (Some("locks"), "Holders_2")
        );
        assert_eq!(quote_ident("Holders_2"), "\"Holders_2\"");
        o.table = "a".repeat(57);
        assert!(settings(&o).is_err(), "no room for the secret table's name");
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_environment_completes_the_url_as_in_libpq() {
        let env = env_of(&[
            ("PGHOST", "db1,db2"),
            ("PGPORT", "6001,6002"),
            ("PGUSER", "svc"),
            ("PGDATABASE", "trader"),
            ("PGPASSWORD", "from-env"),
            ("PGCONNECT_TIMEOUT", "9"),
            ("PGAPPNAME", "backend"),
        ]);
        let s = Settings::with_env(&opts("postgres://"), &env).unwrap();
        assert_eq!(s.server, "postgres://svc@db1:6001/trader");
        let hosts: Vec<_> = s.targets.iter().map(|t| (t.host.clone(), t.port)).collect();
        assert_eq!(
            hosts,
            [
                (Host::Tcp("db1".into()), 6001),
                (Host::Tcp("db2".into()), 6002)
            ]
        );
        assert!(s
            .targets
            .iter()
            .all(|t| t.password.as_ref().unwrap().secret == "from-env"));
        assert_eq!(s.connect_timeout, Duration::from_secs(9));
        assert_eq!(s.config.get_application_name(), Some("backend"));
        // The URL wins, parameter by parameter; an explicit connect timeout wins over both.
        let mut o = opts("postgres://other:pw@h:7000/db?connect_timeout=1");
        o.connect_timeout = Duration::from_millis(1500);
        let s = Settings::with_env(&o, &env).unwrap();
        assert_eq!(s.server, "postgres://other@h:7000/db");
        assert_eq!(s.targets[0].password.as_ref().unwrap().secret, "pw");
        assert_eq!(s.connect_timeout, Duration::from_millis(1500));
        let s = settings(&opts("host=h user=u connect_timeout=0")).unwrap();
        assert_eq!(s.connect_timeout, MAX_CONNECT_TIMEOUT);
        // A key=value string, a Unix-domain socket directory, and an address per host.
        let s = settings(&opts(
            "host=/run/pg,db hostaddr=127.0.0.1,::1 port=5433 user=u dbname=d",
        ))
        .unwrap();
        assert_eq!(s.server, "postgres://u@/run/pg:5433/d");
        assert_eq!(s.targets[1].addr, Some("::1".parse().unwrap()));
        for bad in [
            "host=a,b port=1,2,3 user=u",
            "host=a,b hostaddr=127.0.0.1 user=u",
            "host=a,,b user=u",
            "hostaddr=db user=u",
            "host=h user=u target_session_attrs=standby",
            "host=h user=u require_auth=password,!md5",
            "host=h user=u gssencmode=require",
            "host=h user=u sslnegotiation=direct",
        ] {
            assert_eq!(
                settings(&opts(bad)).unwrap_err().code(),
                "LOCK_INVALID_OPTION",
                "{bad}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_password_file_gives_each_host_its_password() {
        use std::os::unix::fs::PermissionsExt;

        let dir = std::env::temp_dir().join(format!("processlock-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".pgpass");
        std::fs::write(
            &file,
            "db1:5432:trader:svc:one\n*:6543:*:svc:two\nlocalhost:*:*:*:local\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let home = dir.display().to_string();
        let env = env_of(&[("HOME", &home)]);
        let s = Settings::with_env(&opts("postgres://svc@db1,db2:6543,db3/trader"), &env).unwrap();
        let found: Vec<_> = s
            .targets
            .iter()
            .map(|t| {
                t.password
                    .as_ref()
                    .map(|p| (p.secret.as_str(), p.file.clone()))
            })
            .collect();
        assert_eq!(
            found,
            [
                Some(("one", Some(file.clone()))),
                Some(("two", Some(file.clone()))),
                None
            ]
        );
        // PGPASSWORD (or a password in the URL) wins over the file; PGPASSFILE moves it.
        let env = env_of(&[("HOME", &home), ("PGPASSWORD", "env")]);
        let s = Settings::with_env(&opts("postgres://svc@db1/trader"), &env).unwrap();
        assert_eq!(s.targets[0].password.as_ref().unwrap().secret, "env");
        let moved = dir.join("elsewhere");
        std::fs::rename(&file, &moved).unwrap();
        let env = env_of(&[
            ("HOME", "/nonexistent"),
            ("PGPASSFILE", moved.to_str().unwrap()),
        ]);
        let s = Settings::with_env(&opts("host=/var/run/postgresql user=u"), &env).unwrap();
        assert_eq!(s.targets[0].password.as_ref().unwrap().secret, "local");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cleartext_passwords_go_only_to_a_verified_server_unless_asked_for() {
        let default = |url: &str| settings(&opts(url)).unwrap().auth;
        assert_eq!(default("postgres://u@h/db"), Policy::default_for(false));
        assert_eq!(
            default("postgres://u@h/db?sslmode=require"),
            Policy::default_for(false)
        );
        assert_eq!(
            default("postgres://u@h/db?sslmode=verify-ca"),
            Policy::default_for(false)
        );
        if cfg!(feature = "tls") {
            assert_eq!(
                default("postgres://u@h/db?sslmode=verify-full"),
                Policy::default_for(true)
            );
        }
        let env = env_of(&[("PGREQUIREAUTH", "scram-sha-256")]);
        let s = Settings::with_env(&opts("postgres://u@h/db"), &env).unwrap();
        assert_eq!(
            s.auth,
            Policy::parse(
                "scram-sha-256",
                "PGREQUIREAUTH",
                "PGREQUIREAUTH=scram-sha-256".into()
            )
            .unwrap()
        );
    }
}
