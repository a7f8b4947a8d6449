//! One dedicated server session: connected within the connect timeout, checked to be a real
//! session (not a pooler's borrowed one, not a read-only standby), and told to end itself when
//! its client falls silent for a lease.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::error::{describe, Error, Result};
use crate::options::Settings;
use crate::probe::Probe;

pub(crate) struct Session {
    pub client: Client,
    pub backend_pid: i32,
    /// `server_version_num`; 0 for a session opened only to look.
    pub version: u32,
    /// Drives the connection; ends when the connection does.
    connection: tokio::task::JoinHandle<()>,
    /// Why the connection ended, once it has: the server's last word (`FATAL: terminating
    /// connection due to administrator command`), or what broke the socket.
    ended: watch::Receiver<Option<String>>,
    /// Whether the server said something unasked, as the caller's thread can see it.
    pub probe: Arc<Probe>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.probe.close();
        // Dropping the client already asks the server to end the session; this also drops the
        // socket if the server does not answer.
        self.connection.abort();
    }
}

/// `server_version_num` from which each setting exists.
const IDLE_SESSION_TIMEOUT_SINCE: u32 = 14_00_00;
const CLIENT_CHECK_SINCE: u32 = 14_00_00;
const TCP_USER_TIMEOUT_SINCE: u32 = 12_00_00;

impl Session {
    /// Connects and prepares a session for holding (or waiting for) locks. Must run inside a
    /// Tokio runtime with time and I/O enabled.
    pub async fn open(s: &Settings) -> Result<Session> {
        within_connect_timeout(s, Self::open_unbounded(s)).await
    }

    /// Connects without session settings: for looking, not holding.
    pub async fn open_plain(s: &Settings) -> Result<Session> {
        within_connect_timeout(s, Self::connect(s)).await
    }

    async fn connect(s: &Settings) -> Result<Session> {
        let (client, connection, probe) = crate::connect::connect(s).await?;
        let (ended_tx, ended) = watch::channel(None);
        let connection = tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the connection was closed".to_string(),
                Err(e) => describe(&e),
            };
            let _ = ended_tx.send(Some(why));
        });
        Ok(Session {
            client,
            backend_pid: 0,
            version: 0,
            connection,
            ended,
            probe,
        })
    }

    /// Resolves when the connection has ended, with why: the moment the server closes the
    /// socket (it ended the session, restarted, crashed) or the socket breaks. A session that is
    /// only waiting for its next heartbeat hears of it here at once.
    pub async fn ended(&self) -> String {
        let mut ended = self.ended.clone();
        let why = match ended.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The connection's task is gone without a word: it was aborted, so it has ended.
            Err(_) => "the connection was closed".to_string(),
        };
        why
    }

    async fn open_unbounded(s: &Settings) -> Result<Session> {
        let mut session = Self::connect(s).await?;
        let first = session
            .simple_row(
                s,
                "connect",
                "SELECT pg_backend_pid(), current_setting('server_version_num'), pg_is_in_recovery()",
            )
            .await?;
        let pid: i32 = parse(&first, 0, s)?;
        let version: u32 = parse(&first, 1, s)?;
        if first.get(2).map(String::as_str) == Some("t") {
            return Err(Error::Unsupported {
                server: s.server.clone(),
                message: "the server is a read-only standby; point the URL at the primary".into(),
            });
        }
        let mut sql = session_settings(s, version);
        sql.push_str("SELECT pg_backend_pid()");
        let second = session.simple_row(s, "connect", &sql).await?;
        let again: i32 = parse(&second, 0, s)?;
        if again != pid {
            return Err(transaction_pooler(
                s,
                format!("two statements ran in two server sessions (PIDs {pid} and {again})"),
            ));
        }
        if cancel_key_pid(&session.client)
            .await
            .is_some_and(|k| k != pid)
        {
            // Something in front of the server handed out its own cancel key: a pooler. In
            // session mode our server session is ours alone for the life of our connection;
            // in transaction mode the next client's statement runs in it, and, an advisory
            // lock being re-entrant in its session, would be granted our lock.
            let probe = Self::connect(s).await?;
            let probe_row = probe
                .simple_row(s, "connect", "SELECT pg_backend_pid()")
                .await?;
            let probe_pid: i32 = parse(&probe_row, 0, s)?;
            if probe_pid == pid {
                return Err(transaction_pooler(
                    s,
                    format!("another connection's statement ran in this connection's server session (PID {pid})"),
                ));
            }
        }
        session.backend_pid = pid;
        session.version = version;
        Ok(session)
    }

    /// Runs `sql` (literals only) and returns the columns of its last row as text.
    pub async fn simple_row(
        &self,
        s: &Settings,
        op: &'static str,
        sql: &str,
    ) -> Result<Vec<String>> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| Error::io(op, &s.server, &e))?;
        let row = messages.iter().rev().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        let row = row.ok_or_else(|| Error::io_msg(op, &s.server, "the server sent no row"))?;
        Ok((0..row.len())
            .map(|i| row.get(i).unwrap_or_default().to_string())
            .collect())
    }
}

/// The process ID in this connection's cancel key. A server gives its backend's PID; a pooler
/// gives a number of its own. The client keeps the key private, so it is read back from the
/// cancel request it would send (`CancelRequest`: length 16, code 80877102, process ID,
/// secret), written into a `Capture` instead of a socket.
async fn cancel_key_pid(client: &Client) -> Option<i32> {
    let written = Arc::new(Mutex::new(Vec::new()));
    let capture = Capture {
        written: Arc::clone(&written),
        answered: false,
    };
    client
        .cancel_token()
        .cancel_query_raw(capture, PlainAsTls)
        .await
        .ok()?;
    let bytes = written.lock().ok()?.clone();
    let request = bytes.get(bytes.len().checked_sub(16)?..)?;
    if request[0..8] != [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e] {
        return None;
    }
    Some(i32::from_be_bytes(request[8..12].try_into().ok()?))
}

/// A stream that keeps what is written to it, says yes (`S`) to the one question a cancel
/// request may ask first (whether to use TLS), then reads as closed.
struct Capture {
    written: Arc<Mutex<Vec<u8>>>,
    answered: bool,
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.written.lock() {
            Ok(mut w) => w.extend_from_slice(buf),
            Err(_) => return Poll::Ready(Err(io::Error::other("poisoned"))),
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Capture {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.answered && buf.remaining() > 0 {
            self.answered = true;
            buf.put_slice(b"S");
        }
        Poll::Ready(Ok(()))
    }
}

impl TlsStream for Capture {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// "TLS" that leaves the stream as it is: the cancel request reaches the `Capture` in clear
/// whatever the session's sslmode.
struct PlainAsTls;

impl TlsConnect<Capture> for PlainAsTls {
    type Stream = Capture;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Capture>>;

    fn connect(self, stream: Capture) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}

async fn within_connect_timeout<T>(
    s: &Settings,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(s.connect_timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(Error::io_msg(
                "connect",
                &s.server,
                format!(
                    "no session within {} ms (connectTimeoutMs)",
                    s.connect_timeout.as_millis()
                ),
            ))
        })
}

fn transaction_pooler(s: &Settings, evidence: String) -> Error {
    Error::Unsupported {
        server: s.server.clone(),
        message: format!(
            "{evidence}: a pooler in transaction mode sits in front of the server, and session locks cannot work through it; connect directly or through a pool in session mode"
        ),
    }
}

fn parse<T: std::str::FromStr>(row: &[String], i: usize, s: &Settings) -> Result<T> {
    row.get(i)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::io_msg("connect", &s.server, "unexpected answer to a setup query"))
}

/// The `SET`s that make the server end this session (and so free its locks) about a lease
/// after its client went silent, each where the server version has it. Without them a frozen
/// or cut-off holder keeps its lock for the kernel's keepalive time, over two hours on Linux.
fn session_settings(s: &Settings, version: u32) -> String {
    let lease_ms = s.lease.as_millis();
    let k = s.keepalive();
    // A role's own statement_timeout would cut a long wait short with a misleading error.
    let mut sql = String::from("SET statement_timeout = 0; SET lock_timeout = 0; ");
    sql.push_str(&format!(
        "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {}; ",
        k.idle_s, k.interval_s, k.count
    ));
    if version >= TCP_USER_TIMEOUT_SINCE {
        sql.push_str(&format!("SET tcp_user_timeout = {lease_ms}; "));
    }
    if version >= IDLE_SESSION_TIMEOUT_SINCE {
        sql.push_str(&format!("SET idle_session_timeout = {lease_ms}; "));
    }
    if version >= CLIENT_CHECK_SINCE {
        // Lets a session blocked in a lock wait notice that its client is gone, instead of
        // being granted the lock on behalf of nobody.
        let every = (lease_ms / 4).max(100);
        sql.push_str(&format!("SET client_connection_check_interval = {every}; "));
    }
    sql
}
