//! Errors with the same stable codes as the lock files, plus `LOCK_LOST`.

use std::fmt;

use processlock::report;
use processlock::{already_running, ErrorCode, LockName, Record};

pub type Result<T> = std::result::Result<T, Error>;

/// Another session holds the lock.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// How the requester named the lock, e.g. `backend (SHORT)`.
    pub lock: String,
    /// The holder's record; `pid` is 0 when the holder has not written one (yet).
    pub holder: Record,
    /// The holder's fencing token, when its record was found.
    pub fencing_token: Option<String>,
    /// The server process of the holder's session.
    pub backend_pid: Option<i32>,
    /// The holder's address as the server sees it (none over a Unix socket, or when this role
    /// may not see it).
    pub client_addr: Option<String>,
    /// The role of the holder's session.
    pub holder_role: Option<String>,
    /// The holder's record is there but larger than a record may be: it was not read.
    pub record_too_large: bool,
    /// How long the caller waited before giving up (0 when it did not wait).
    pub waited_ms: u64,
}

impl Conflict {
    /// Who holds the lock when it wrote no record that can be read: the server process, its
    /// role and address, and why nothing more is known.
    fn unknown_holder(&self) -> String {
        let mut who = match self.backend_pid {
            Some(pid) => format!("server process {pid}"),
            None => "a server session".to_string(),
        };
        if let Some(role) = &self.holder_role {
            who.push_str(&format!(" of role {role:?}"));
        }
        if let Some(addr) = &self.client_addr {
            who.push_str(&format!(" from {addr}"));
        }
        if self.record_too_large {
            format!(
                "{who}, whose record is larger than {} bytes and was not read",
                processlock::MAX_RECORD_BYTES
            )
        } else {
            format!("{who}, which is not a processlock holder: it wrote no record")
        }
    }

    /// The conflict lines for the lock `name`: those of a lock file when the holder's record
    /// was read. A holder without one here (it wrote none yet, or wrote it where this role does
    /// not read: another role's schema, another `table`) is a server session, which `fuser`
    /// cannot find: the lines say where to look instead.
    pub fn lines(&self, name: &LockName) -> Vec<String> {
        if self.holder.pid != 0 {
            // The path only appears in the lines of a holder without a record.
            return report::conflict(name, &self.holder, std::path::Path::new(&self.lock));
        }
        let who = match self.backend_pid {
            Some(pid) => format!("server process {pid}"),
            None => "a server session".to_string(),
        };
        let mut find =
            "To find it, run: processlock check --url <URL> --json (serverPid, clientAddr)"
                .to_string();
        if let Some(pid) = self.backend_pid {
            find.push_str(&format!(
                ", or on the server: SELECT client_addr, application_name, backend_start FROM pg_stat_activity WHERE pid = {pid}"
            ));
        }
        vec![
            format!(
                "[PROCESS_LOCK_CONFLICT] Another {} is already running!",
                name.display()
            ),
            format!(
                "[PROCESS_LOCK_CONFLICT] Existing process: unknown ({who} holds the lock; no record of it can be read here)"
            ),
            format!("[PROCESS_LOCK_CONFLICT] Held by {}", self.unknown_holder()),
            format!("[PROCESS_LOCK_CONFLICT] {find}"),
        ]
    }
}

/// Why a held lock was given up without being released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// How the holder named the lock, e.g. `backend (SHORT)`.
    pub lock: String,
    pub fencing_token: String,
    pub reason: String,
}

#[derive(Debug)]
pub enum Error {
    /// A URL or option that cannot work. Nothing was sent anywhere.
    InvalidOption {
        option: &'static str,
        message: String,
    },
    Conflict(Box<Conflict>),
    /// The server could not be reached, refused us, or failed a statement. `op` is what we were
    /// doing (`connect`, `authenticate`, `lock`, `record`, `inspect`, `release`), like the
    /// syscall of a file error.
    Io {
        op: &'static str,
        server: String,
        message: String,
        /// The SQLSTATE the server sent, if it sent one.
        sqlstate: Option<String>,
        /// The operating system's error number, when the cause was a failed system call
        /// (a refused or reset connection, say).
        os_error: Option<i32>,
    },
    /// The server (or what sits in front of it) cannot hold a session lock for us: a
    /// transaction-pooling pooler, a read-only standby.
    Unsupported {
        server: String,
        message: String,
    },
    /// A lock this process held is no longer guaranteed to be its own.
    Lost(Lost),
    /// A waiting acquisition was cancelled by its caller.
    Aborted,
}

impl Error {
    /// The stable code, from the one list the file backend uses too.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidOption { .. } => ErrorCode::InvalidOption,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::Io { .. } => ErrorCode::Io,
            Error::Unsupported { .. } => ErrorCode::Unsupported,
            Error::Lost(_) => ErrorCode::Lost,
            Error::Aborted => ErrorCode::Aborted,
        }
    }

    /// What we were doing when the server failed us (the `syscall` of a file error).
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Error::Io { op, .. } => Some(op),
            _ => None,
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Io { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// The operating system's error number and its POSIX name (`ECONNREFUSED`...), when the
    /// server could not be reached or the connection broke in a system call.
    pub fn os_error(&self) -> Option<(i32, &'static str)> {
        match self {
            Error::Io {
                os_error: Some(n), ..
            } => Some((*n, os_error_name(*n))),
            _ => None,
        }
    }

    /// Whether the server went away rather than refused us: the connection could not be made
    /// or broke, or the server ended the session or is starting or stopping. A wait rides these
    /// out; a wrong password, a missing database, a refused statement, or the authentication
    /// policy refusing what the server asked (`authenticate`) it does not.
    pub(crate) fn server_went_away(&self) -> bool {
        match self {
            Error::Io {
                op: "authenticate", ..
            } => false,
            Error::Io { sqlstate: None, .. } => true,
            Error::Io {
                sqlstate: Some(code),
                ..
            } => {
                // 08: connection exception; 57P01..57P03: administrator, crash or start-up
                // shutdown, cannot connect now; 53300: too many connections (a restarting
                // server's clients all come back at once).
                code.starts_with("08")
                    || matches!(code.as_str(), "57P01" | "57P02" | "57P03" | "53300")
            }
            _ => false,
        }
    }

    pub(crate) fn invalid(option: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidOption {
            option,
            message: message.into(),
        }
    }

    pub(crate) fn io(op: &'static str, server: &str, e: &tokio_postgres::Error) -> Self {
        Error::Io {
            op,
            server: server.to_string(),
            message: describe(e),
            sqlstate: e.code().map(|c| c.code().to_string()),
            os_error: os_error_of(e),
        }
    }

    /// The same error, with the OS error number of `e` when it has one.
    pub(crate) fn with_os_error(mut self, e: &std::io::Error) -> Self {
        if let Error::Io { os_error, .. } = &mut self {
            *os_error = e.raw_os_error().or(*os_error);
        }
        self
    }

    /// The same error, with the SQLSTATE the server sent in `e`.
    pub(crate) fn with_sqlstate(mut self, e: &tokio_postgres::Error) -> Self {
        if let Error::Io { sqlstate, .. } = &mut self {
            *sqlstate = e.code().map(|c| c.code().to_string());
        }
        self
    }

    pub(crate) fn io_msg(op: &'static str, server: &str, message: impl Into<String>) -> Self {
        Error::Io {
            op,
            server: server.to_string(),
            message: message.into(),
            sqlstate: None,
            os_error: None,
        }
    }
}

/// The server's own message when it sent one, else the client's; the client's `Display` of a
/// server error is only "db error".
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// The OS error number somewhere in the causes of a client error, if any.
fn os_error_of(e: &tokio_postgres::Error) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(n) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(n);
        }
        source = inner.source();
    }
    None
}

/// The POSIX name of an OS error met on a connection, as Node names it in `err.code`.
fn os_error_name(n: i32) -> &'static str {
    #[cfg(unix)]
    {
        match n {
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ECONNRESET => "ECONNRESET",
            libc::ECONNABORTED => "ECONNABORTED",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EHOSTUNREACH => "EHOSTUNREACH",
            libc::EHOSTDOWN => "EHOSTDOWN",
            libc::ENETUNREACH => "ENETUNREACH",
            libc::ENETDOWN => "ENETDOWN",
            libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            libc::EADDRINUSE => "EADDRINUSE",
            libc::EPIPE => "EPIPE",
            libc::ENOTCONN => "ENOTCONN",
            libc::ENOENT => "ENOENT",
            libc::EACCES => "EACCES",
            libc::EPERM => "EPERM",
            libc::EMFILE => "EMFILE",
            libc::ENFILE => "ENFILE",
            libc::ENOBUFS => "ENOBUFS",
            libc::EINVAL => "EINVAL",
            _ => "EUNKNOWN",
        }
    }
    #[cfg(windows)]
    {
        // Winsock error numbers (WSAE...), named as their POSIX counterparts, as libuv does.
        match n {
            10061 => "ECONNREFUSED",
            10054 => "ECONNRESET",
            10053 => "ECONNABORTED",
            10060 => "ETIMEDOUT",
            10065 => "EHOSTUNREACH",
            10064 => "EHOSTDOWN",
            10051 => "ENETUNREACH",
            10050 => "ENETDOWN",
            10049 => "EADDRNOTAVAIL",
            10048 => "EADDRINUSE",
            10057 => "ENOTCONN",
            10024 => "EMFILE",
            10055 => "ENOBUFS",
            10022 => "EINVAL",
            10013 => "EACCES",
            _ => "EUNKNOWN",
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = n;
        "EUNKNOWN"
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            Error::InvalidOption { option, message } => write!(f, "{code}: {option}: {message}"),
            Error::Conflict(c) => {
                if c.holder.pid == 0 {
                    write!(
                        f,
                        "{code}: {} is already running (holder unknown: {})",
                        c.lock,
                        c.unknown_holder()
                    )?;
                } else {
                    write!(f, "{code}: {}", already_running(&c.lock, &c.holder))?;
                }
                if c.waited_ms > 0 {
                    write!(f, "; gave up after waiting {} ms", c.waited_ms)?;
                }
                Ok(())
            }
            Error::Io {
                op,
                server,
                message,
                ..
            } => write!(f, "{code}: {op} {server} failed: {message}"),
            Error::Unsupported { server, message } => write!(f, "{code}: {server}: {message}"),
            Error::Lost(l) => write!(
                f,
                "{code}: the lock of {} (fencing token {}) was lost: {}",
                l.lock, l.fencing_token, l.reason
            ),
            Error::Aborted => write!(f, "{code}: waiting for the lock was aborted"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(pid: u32, backend_pid: Option<i32>) -> Conflict {
        Conflict {
            lock: "backend (SHORT)".into(),
            holder: Record {
                started: "2025-10-18T22:38:49Z".into(),
                ..Record::pid_only(pid)
            },
            fencing_token: None,
            backend_pid,
            client_addr: None,
            holder_role: None,
            record_too_large: false,
            waited_ms: 0,
        }
    }

    #[test]
    fn a_holder_without_a_record_is_found_on_the_server_not_with_fuser() {
        let name = LockName::new("backend", Some("SHORT")).unwrap();
        // With a record: the lines of a lock file, word for word.
        assert_eq!(
            conflict(51172, Some(4711)).lines(&name),
            report::conflict(
                &name,
                &conflict(51172, None).holder,
                std::path::Path::new("x")
            )
        );
        let lines = conflict(0, Some(4711)).lines(&name);
        assert_eq!(
            lines[1],
            "[PROCESS_LOCK_CONFLICT] Existing process: unknown (server process 4711 holds the lock; no record of it can be read here)"
        );
        assert!(lines[3].ends_with("FROM pg_stat_activity WHERE pid = 4711"));
        let unknown = conflict(0, None).lines(&name).join("\n");
        assert!(unknown.contains("processlock check --url <URL>"));
        assert!(!unknown.contains("fuser") && !unknown.contains("pg_stat_activity"));
    }
}
