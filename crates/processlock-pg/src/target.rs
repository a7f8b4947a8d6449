//! One host of the connection as the options give it, and which server of several a session
//! must be on: what the options read and the connection uses.

use std::net::IpAddr;
use std::path::PathBuf;

/// One host of the connection, as given.
#[derive(Clone)]
pub(crate) struct Target {
    pub host: Host,
    /// `hostaddr`: connect there instead of looking the host name up.
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub password: Option<Password>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// A host name or address; empty when only `hostaddr` was given.
    Tcp(String),
    /// A directory holding the server's Unix-domain socket.
    Unix(PathBuf),
}

impl Target {
    /// The name TLS checks the certificate against (and sends as SNI).
    pub(crate) fn tls_name(&self) -> String {
        match (&self.host, self.addr) {
            (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
            (_, Some(addr)) => addr.to_string(),
            _ => String::new(),
        }
    }
}

/// A password, and where it was found (for the message when the server rejects it).
#[derive(Clone)]
pub(crate) struct Password {
    pub secret: String,
    /// The password file it came from, if it did.
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Which server of several the session must be on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionAttrs {
    Any,
    /// `read-write`: a server that accepts writes.
    ReadWrite,
    /// `primary`: a server that is not in recovery.
    Primary,
}
