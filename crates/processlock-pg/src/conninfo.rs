//! The connection string, the service file and the environment, gathered the way libpq gathers
//! them, so that every way libpq gives a client to keep a password out of its command line works
//! here too.
//!
//! A parameter comes from the first of: the connection string (a `postgres://` URL or
//! `key=value` pairs), the service the string or `PGSERVICE` names, the environment (`PGHOST`,
//! `PGUSER`, `PGPASSWORD`, `PGSSLMODE`, ...). An empty value counts as not given. The password,
//! when none of these gives it, comes from the password file (`pgpass.rs`), per host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Reads one environment variable; tests pass their own.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment (variables that are not UTF-8 count as unset, as nothing here could
/// use them).
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// How processlock takes each libpq parameter it knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Support {
    Used,
    /// Accepted and overridden: the lease decides TCP keepalives and the user timeout.
    SetByLease,
    /// Refused when given, with why: ignoring it would quietly weaken what the user asked for.
    Refused(&'static str),
}

/// Every parameter accepted in a connection string, with the environment variable that gives
/// it by default (libpq's names).
const PARAMS: &[(&str, Option<&str>, Support)] = &[
    ("host", Some("PGHOST"), Support::Used),
    ("hostaddr", Some("PGHOSTADDR"), Support::Used),
    ("port", Some("PGPORT"), Support::Used),
    ("dbname", Some("PGDATABASE"), Support::Used),
    ("user", Some("PGUSER"), Support::Used),
    ("password", Some("PGPASSWORD"), Support::Used),
    ("passfile", Some("PGPASSFILE"), Support::Used),
    ("service", Some("PGSERVICE"), Support::Used),
    ("options", Some("PGOPTIONS"), Support::Used),
    ("application_name", Some("PGAPPNAME"), Support::Used),
    ("fallback_application_name", None, Support::Used),
    ("client_encoding", Some("PGCLIENTENCODING"), Support::Used),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT"), Support::Used),
    ("sslmode", Some("PGSSLMODE"), Support::Used),
    ("sslrootcert", Some("PGSSLROOTCERT"), Support::Used),
    ("sslnegotiation", Some("PGSSLNEGOTIATION"), Support::Used),
    ("channel_binding", Some("PGCHANNELBINDING"), Support::Used),
    ("require_auth", Some("PGREQUIREAUTH"), Support::Used),
    (
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Support::Used,
    ),
    (
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Support::Used,
    ),
    ("gssencmode", Some("PGGSSENCMODE"), Support::Used),
    ("keepalives", None, Support::SetByLease),
    ("keepalives_idle", None, Support::SetByLease),
    ("keepalives_interval", None, Support::SetByLease),
    ("keepalives_count", None, Support::SetByLease),
    ("keepalives_retries", None, Support::SetByLease),
    ("tcp_user_timeout", None, Support::SetByLease),
    (
        "requirepeer",
        Some("PGREQUIREPEER"),
        Support::Refused("checking the server's user on a Unix-domain socket is not supported"),
    ),
    (
        "sslcrl",
        Some("PGSSLCRL"),
        Support::Refused("certificate revocation lists are not supported"),
    ),
    (
        "sslcrldir",
        Some("PGSSLCRLDIR"),
        Support::Refused("certificate revocation lists are not supported"),
    ),
    (
        "sslcert",
        Some("PGSSLCERT"),
        Support::Refused("client certificates are not supported"),
    ),
    (
        "sslkey",
        Some("PGSSLKEY"),
        Support::Refused("client certificates are not supported"),
    ),
];

fn param(key: &str) -> Option<&'static (&'static str, Option<&'static str>, Support)> {
    PARAMS.iter().find(|(k, _, _)| *k == key)
}

/// Where a parameter's value came from: messages name it, and the password's origin decides
/// whether the command line carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The connection string.
    String,
    /// This service file.
    Service(PathBuf),
    /// This environment variable.
    Env(&'static str),
}

#[derive(Clone)]
pub(crate) struct Params {
    values: BTreeMap<&'static str, (String, Origin)>,
    /// How messages quote values from the string.
    quote: Quote,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (key, (value, origin)) in &self.values {
            let value: &dyn std::fmt::Debug = if *key == "password" { &".." } else { value };
            map.entry(key, &(value, origin));
        }
        map.finish()
    }
}

impl Params {
    /// The parameters of `conninfo`, completed from its service and the environment.
    pub fn gather(conninfo: &str, env: Env<'_>) -> Result<Params> {
        let mut values = BTreeMap::new();
        for (key, value) in parse(conninfo)? {
            if value.is_empty() {
                values.remove(key);
            } else {
                values.insert(key, (value, Origin::String));
            }
        }
        let mut params = Params {
            values,
            quote: Quote::for_string(conninfo),
        };
        let service = params
            .get("service")
            .map(str::to_string)
            .or_else(|| env("PGSERVICE").filter(|s| !s.is_empty()));
        if let Some(service) = service {
            params.add_service(&service, env)?;
        }
        for (key, var, _) in PARAMS {
            if let Some(var) = var {
                if !params.values.contains_key(key) {
                    if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                        params.values.insert(key, (value, Origin::Env(var)));
                    }
                }
            }
        }
        for (key, _, support) in PARAMS {
            if let (Support::Refused(why), Some(_)) = (support, params.values.get(key)) {
                return Err(Error::invalid(
                    "url",
                    format!("{}: {why}", params.name(key)),
                ));
            }
        }
        Ok(params)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(v, _)| v.as_str())
    }

    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.values.get(key).map(|(_, o)| o)
    }

    /// How messages name the parameter `key`: as written where it was found.
    pub fn name(&self, key: &str) -> String {
        match self.origin(key) {
            Some(Origin::Env(var)) => (*var).to_string(),
            Some(Origin::Service(file)) => format!("{key} (service file {})", file.display()),
            _ => key.to_string(),
        }
    }

    /// `key` with its value, for a message about a value that is not valid (never for the
    /// password).
    pub fn shown(&self, key: &str) -> String {
        match self.origin(key) {
            Some(Origin::String) if self.quote.secret => {
                format!("{key} {}", self.quote.of(self.get(key).unwrap_or_default()))
            }
            _ => self.written(key),
        }
    }

    /// `key` with its value as written, for messages about a valid value: such a value reads
    /// as what it is, whatever the string holds (never for the password).
    pub fn written(&self, key: &str) -> String {
        let value = self.get(key).unwrap_or_default();
        match self.origin(key) {
            Some(Origin::Env(var)) => format!("{var}={value}"),
            Some(Origin::Service(file)) => {
                format!("{key}={value} (service file {})", file.display())
            }
            _ => format!("{key}={value}"),
        }
    }

    fn add_service(&mut self, service: &str, env: Env<'_>) -> Result<()> {
        let user_file = env("PGSERVICEFILE")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .or_else(|| home_dir(env).map(|h| h.join(".pg_service.conf")));
        let system_file = PathBuf::from(
            env("PGSYSCONFDIR")
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_string()),
        )
        .join("pg_service.conf");
        for file in user_file.iter().chain(std::iter::once(&system_file)) {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            if let Some(entries) = service_entries(&text, service, file)? {
                for (key, value) in entries {
                    if !value.is_empty() && !self.values.contains_key(key) {
                        self.values
                            .insert(key, (value, Origin::Service(file.clone())));
                    }
                }
                return Ok(());
            }
        }
        Err(Error::invalid(
            "url",
            format!("the service {service:?} is not defined in {}", {
                let mut files: Vec<String> =
                    user_file.iter().map(|f| f.display().to_string()).collect();
                files.push(system_file.display().to_string());
                files.join(" or ")
            }),
        ))
    }
}

/// Where libpq looks for the system-wide service file when `PGSYSCONFDIR` is unset, as
/// Debian and Ubuntu build it.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The user's home directory, as libpq finds it: `$HOME`, else the password database.
pub(crate) fn home_dir(env: Env<'_>) -> Option<PathBuf> {
    #[cfg(windows)]
    {
        // libpq keeps its files in %APPDATA%\postgresql there.
        env("APPDATA")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("postgresql"))
    }
    #[cfg(not(windows))]
    {
        env("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(passwd_home)
    }
}

#[cfg(unix)]
fn passwd_home() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;

    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pwd` and `found` are writable locals and
    // `buf` is writable for `buf.len()` bytes; strings in `pwd` point into `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so `pw_dir` is a NUL-terminated string inside `buf`, which
    // is still alive.
    let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
}

#[cfg(not(any(unix, windows)))]
fn passwd_home() -> Option<PathBuf> {
    None
}

/// The `key=value` lines of `[service]` in a service file, or `None` when it has no such
/// section.
fn service_entries(
    text: &str,
    service: &str,
    file: &Path,
) -> Result<Option<Vec<(&'static str, String)>>> {
    let bad = |n: usize, why: &str| {
        Error::invalid("url", format!("{}, line {}: {why}", file.display(), n + 1))
    };
    let mut inside = false;
    let mut found = false;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            if inside {
                break;
            }
            inside = section.strip_suffix(']') == Some(service);
            found |= inside;
            continue;
        }
        if !inside {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(n, "expected key=value"))?;
        let key = key.trim();
        if key == "service" {
            return Err(bad(n, "a service cannot name another service"));
        }
        let (key, _, _) =
            param(key).ok_or_else(|| bad(n, &format!("unknown parameter {key:?}")))?;
        entries.push((*key, value.trim().to_string()));
    }
    Ok(found.then_some(entries))
}

/// Whether `conninfo` itself carries a password (`postgres://user:password@...`, `password=`
/// in a key=value string or in the URL's query): then it sits wherever the string was given.
pub fn url_has_password(conninfo: &str) -> bool {
    parse(conninfo).is_ok_and(|pairs| {
        pairs
            .iter()
            .any(|(key, value)| *key == "password" && !value.is_empty())
    })
}

/// The parameters a connection string gives, in order (a later one replaces an earlier one).
fn parse(s: &str) -> Result<Vec<(&'static str, String)>> {
    let quote = Quote::for_string(s);
    let pairs = match url_rest(s) {
        Some(rest) => parse_url(rest, quote)?,
        None => parse_pairs(s, quote)?,
    };
    pairs
        .into_iter()
        .map(|(key, value)| match param(&key) {
            Some((key, _, _)) => Ok((*key, value)),
            None => Err(Error::invalid(
                "url",
                format!("unknown or unsupported parameter {}", quote.of(&key)),
            )),
        })
        .collect()
}

/// How messages quote a piece of the connection string.
#[derive(Clone, Copy)]
struct Quote {
    secret: bool,
}

impl Quote {
    /// A piece of a malformed string may be a piece of its password (`password=a b` makes `b`
    /// look like a key; `postgres://u:pa/ss@h` makes `pa` a port): where the string may hold
    /// one, messages do not quote its pieces.
    fn for_string(s: &str) -> Quote {
        let userinfo_password = url_rest(s)
            .and_then(|rest| rest.rsplit_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        Quote {
            secret: userinfo_password || s.to_ascii_lowercase().contains("password"),
        }
    }

    fn of(self, piece: &str) -> String {
        if self.secret && !PARAMS.iter().any(|(k, _, _)| *k == piece) {
            "(not shown: the string may hold a password)".to_string()
        } else {
            format!("{piece:?}")
        }
    }
}

fn url_rest(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

/// `[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`, as libpq reads it: each
/// part percent-decoded; `ssl=true` in the query means `sslmode=require`.
fn parse_url(rest: &str, quote: Quote) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    // The user part ends at the first '@' before any '/' (a '?' may be part of a password).
    let rest = match rest.find(['@', '/']) {
        Some(at) if rest.as_bytes()[at] == b'@' => {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            out.push(("user".to_string(), decode(user, quote)?));
            if let Some(p) = password {
                out.push(("password".to_string(), decode(p, quote)?));
            }
            &rest[at + 1..]
        }
        _ => rest,
    };
    let (hosts, rest) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (dbname, query) = match rest.strip_prefix('/') {
        Some(path) => match path.split_once('?') {
            Some((db, q)) => (Some(db), Some(q)),
            None => (Some(path), None),
        },
        None => (None, rest.strip_prefix('?')),
    };
    if !hosts.is_empty() {
        let mut host_list = Vec::new();
        let mut port_list = Vec::new();
        for chunk in hosts.split(',') {
            let (host, port) = if let Some(v6) = chunk.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| {
                    Error::invalid("url", "an IPv6 address in the URL lacks its closing ]")
                })?;
                if host.is_empty() {
                    return Err(Error::invalid("url", "an empty IPv6 address in the URL"));
                }
                match after {
                    "" => (host, ""),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (host, port),
                        None => {
                            return Err(Error::invalid(
                                "url",
                                format!("unexpected {} after an IPv6 address", quote.of(after)),
                            ))
                        }
                    },
                }
            } else {
                chunk.split_once(':').unwrap_or((chunk, ""))
            };
            host_list.push(decode(host, quote)?);
            port_list.push(decode(port, quote)?);
        }
        if host_list.iter().any(|h| !h.is_empty()) {
            out.push(("host".to_string(), host_list.join(",")));
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            out.push(("port".to_string(), port_list.join(",")));
        }
    }
    if let Some(db) = dbname.filter(|d| !d.is_empty()) {
        out.push(("dbname".to_string(), decode(db, quote)?));
    }
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Error::invalid(
                "url",
                format!("the query parameter {} lacks \"=\"", quote.of(pair)),
            )
        })?;
        let (key, value) = (decode(key, quote)?, decode(value, quote)?);
        if key == "ssl" {
            // As libpq reads it, for JDBC's sake.
            if value != "true" {
                return Err(Error::invalid(
                    "url",
                    format!("ssl={value}: only ssl=true is accepted (it means sslmode=require)"),
                ));
            }
            out.push(("sslmode".to_string(), "require".to_string()));
        } else {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// `key = value key='quoted value'...`: whitespace separates pairs; a backslash escapes the
/// next character; single quotes keep spaces.
fn parse_pairs(s: &str, quote: Quote) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::invalid(
                "url",
                format!(
                    "not a PostgreSQL connection URL or key=value string: \"=\" missing after {}",
                    quote.of(&key)
                ),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::invalid(
                            "url",
                            format!("the quoted value of {} is not closed", quote.of(&key)),
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn decode(s: &str, quote: Quote) -> Result<String> {
    let bad = || Error::invalid("url", format!("bad percent-encoding in {}", quote.of(s)));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn pairs(s: &str) -> Vec<(&'static str, String)> {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn kv(list: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        list.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn urls_are_read_as_libpq_reads_them() {
        assert_eq!(
            pairs("postgres://svc:p%40ss%3Aw@db.example:6543/trader?sslmode=verify-full&application_name=a%20b"),
            kv(&[
                ("user", "svc"),
                ("password", "p@ss:w"),
                ("host", "db.example"),
                ("port", "6543"),
                ("dbname", "trader"),
                ("sslmode", "verify-full"),
                ("application_name", "a b"),
            ])
        );
        // Several hosts, some with a port; IPv6; a socket directory, encoded.
        assert_eq!(
            pairs("postgresql://a,[::1]:5433,b:5434/db"),
            kv(&[
                ("host", "a,::1,b"),
                ("port", ",5433,5434"),
                ("dbname", "db")
            ])
        );
        assert_eq!(
            pairs("postgresql://%2Fvar%2Frun%2Fpostgresql/db"),
            kv(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        // Nothing but the scheme: everything from elsewhere.
        assert_eq!(pairs("postgres://"), kv(&[]));
        assert_eq!(pairs("postgres:///trader"), kv(&[("dbname", "trader")]));
        assert_eq!(pairs("postgres://u@/"), kv(&[("user", "u")]));
        assert_eq!(
            pairs("postgres://h/?ssl=true"),
            kv(&[("host", "h"), ("sslmode", "require")])
        );
        for bad in [
            "postgres://h/db?sslmode",
            "postgres://[::1/db",
            "postgres://[::1]x/db",
            "postgres://h/db?nonsense=1",
            "postgres://h/db?sslrootcert=%zz",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_value_strings_are_read_as_libpq_reads_them() {
        assert_eq!(
            pairs(
                " host=db port = 5432 dbname='my db' user=svc password='it\\'s' options=-c\\ x=1 "
            ),
            kv(&[
                ("host", "db"),
                ("port", "5432"),
                ("dbname", "my db"),
                ("user", "svc"),
                ("password", "it's"),
                ("options", "-c x=1"),
            ])
        );
        for bad in [
            "host",
            "host=h dbname='x",
            "host=h nonsense=1",
            "mysql://u@h/db",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_string_wins_over_the_environment_and_empty_means_not_given() {
        let env = |name: &str| match name {
            "PGHOST" => Some("env-host".to_string()),
            "PGUSER" => Some("env-user".to_string()),
            "PGPORT" => Some("6000".to_string()),
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGDATABASE" => Some(String::new()),
            _ => None,
        };
        let p = Params::gather("postgres://svc@/trader?host=", &env).unwrap();
        assert_eq!(p.get("user"), Some("svc"));
        assert_eq!(p.origin("user"), Some(&Origin::String));
        assert_eq!(p.get("host"), Some("env-host"));
        assert_eq!(p.origin("host"), Some(&Origin::Env("PGHOST")));
        assert_eq!(p.get("port"), Some("6000"));
        assert_eq!(p.get("dbname"), Some("trader"));
        assert_eq!(p.shown("sslmode"), "PGSSLMODE=verify-full");
        let p = Params::gather("host=h", &env).unwrap();
        assert_eq!((p.get("host"), p.get("dbname")), (Some("h"), None));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_wherever_it_is_given() {
        let env = |name: &str| (name == "PGREQUIREPEER").then(|| "postgres".to_string());
        let e = Params::gather("postgres://u@h/db", &env).unwrap_err();
        assert!(e.to_string().contains("PGREQUIREPEER"), "{e}");
        assert!(Params::gather("host=h sslcert=/c.pem", &no_env).is_err());
    }

    #[test]
    fn a_service_fills_in_before_the_environment() {
        let dir = std::env::temp_dir().join(format!("processlock-svc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("services.conf");
        std::fs::write(
            &file,
            "# locks\n[other]\nhost=wrong\n\n[locks]\nhost = db.internal\nport=6543\nuser=svc\n[after]\nuser=wrong\n",
        )
        .unwrap();
        let env = |name: &str| match name {
            "PGSERVICEFILE" => Some(file.display().to_string()),
            "PGSYSCONFDIR" => Some(dir.display().to_string()),
            "PGSERVICE" => Some("locks".to_string()),
            "PGPORT" => Some("1".to_string()),
            "PGDATABASE" => Some("trader".to_string()),
            _ => None,
        };
        let p = Params::gather("postgres://", &env).unwrap();
        assert_eq!(p.get("host"), Some("db.internal"));
        assert_eq!(p.get("port"), Some("6543"));
        assert_eq!(p.get("user"), Some("svc"));
        assert_eq!(p.get("dbname"), Some("trader"));
        assert_eq!(p.origin("port"), Some(&Origin::Service(file.clone())));
        // The string's own service wins over PGSERVICE, and a missing one is an error.
        let e = Params::gather("service=nowhere", &env).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_piece_of_a_password_reaches_a_message() {
        for s in [
            "host=h password=two words",
            "postgres://u:s%zzcret@h/db",
            "postgres://u@h/db?password=two&words",
            "postgres://u:pw@h/db?words",
            "postgres://u:pw@h/db?words=1",
            "host=h password='unterminated words",
        ] {
            let e = parse(s).unwrap_err().to_string();
            for piece in ["words", "s%zzcret", "unterminated"] {
                assert!(!e.contains(piece), "{s:?}: {e}");
            }
        }
        // A '/' in a password that is not percent-encoded ends the user part early: the rest
        // reads as a host and a port.
        let p = Params::gather("postgres://u:x9q/ss@h/db", &no_env).unwrap();
        assert_eq!(p.get("port"), Some("x9q"));
        assert!(!p.shown("port").contains("x9q"), "{}", p.shown("port"));
        // Without a password, the piece is named.
        let e = parse("host=h sslmdoe=require").unwrap_err().to_string();
        assert!(e.contains("sslmdoe"), "{e}");
        let e = parse("postgres://u@h/db?sslmdoe=require")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmdoe"), "{e}");
    }

    #[test]
    fn a_password_in_the_string_is_noticed() {
        assert!(url_has_password("postgres://svc:pw@h/db"));
        assert!(url_has_password("postgres://svc@h/db?password=pw"));
        assert!(url_has_password("host=h password=pw"));
        assert!(!url_has_password("postgres://svc@h/db"));
        assert!(!url_has_password("postgres://svc:@h/db"));
        assert!(!url_has_password("host=h user=svc"));
    }
}
