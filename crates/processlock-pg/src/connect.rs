//! Reaching the server: each host of the connection in turn, each of its addresses, over a
//! socket of our own, so that every authentication request passes the policy (`auth.rs`) before
//! the client sees it, over TLS or not. The client's own `connect` would hide the socket.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(feature = "tls")]
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, SimpleQueryMessage};

use crate::auth::{self, Watched};
use crate::error::{describe, Error, Result};
use crate::options::Settings;
use crate::probe::{Heard, Probe};
use crate::target::{Host, SessionAttrs, Target};
use crate::tls;

/// A plain connection to the server.
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

pub(crate) type Stream = Watched<Heard<Socket>>;

#[cfg(feature = "tls")]
type Tls = auth::WatchedTls<<tls::Connector as MakeTlsConnect<Stream>>::TlsConnect>;
#[cfg(not(feature = "tls"))]
type Tls = tokio_postgres::NoTls;

/// The connection of a `Client`: poll it (spawn it) for the client to work.
pub(crate) type Connection =
    tokio_postgres::Connection<Stream, <Tls as tokio_postgres::tls::TlsConnect<Stream>>::Stream>;

/// Connects and logs in: the hosts in order (shuffled with `load_balance_hosts=random`), each
/// address of each, until one lets the client in. The first refusal by the authentication
/// policy is what is reported if none does; else the last failure.
pub(crate) async fn connect(s: &Settings) -> Result<(Client, Connection, Arc<Probe>)> {
    let mut refusal = None;
    let mut last = None;
    for target in s.targets_in_order() {
        let peers = match peers(target).await {
            Ok(peers) => peers,
            Err(e) => {
                last = Some(Error::io_msg(
                    "connect",
                    &s.server,
                    format!("could not look up {}: {e}", target.tls_name()),
                ));
                continue;
            }
        };
        for peer in peers {
            match attempt(s, target, &peer).await {
                Ok(connected) => return Ok(connected),
                Err((e, refused)) if refused => {
                    refusal.get_or_insert(e);
                }
                Err((e, _)) => last = Some(e),
            }
        }
    }
    Err(refusal
        .or(last)
        .unwrap_or_else(|| Error::io_msg("connect", &s.server, "no address to connect to")))
}

/// Asks the server to cancel the statement the session of `token` runs. The client does not
/// keep which host its session is on, so every host gets the request (at its first address that
/// answers); a server ignores a key it did not hand out.
pub(crate) async fn cancel(s: &Settings, token: &CancelToken) {
    let mut requests = tokio::task::JoinSet::new();
    for target in s.targets_in_order() {
        let (target, token, connector) = (target.clone(), token.clone(), tls::another(&s.tls));
        let timeout = s.connect_timeout;
        requests.spawn(async move {
            let Ok(peers) = peers(&target).await else {
                return;
            };
            for peer in peers {
                if let Ok(socket) = open(&peer, target.port, timeout, None).await {
                    let tls = plain_tls(connector, &target.tls_name());
                    let _ = token.cancel_query_raw(socket, tls).await;
                    return;
                }
            }
        });
    }
    while requests.join_next().await.is_some() {}
}

/// Where a target can be reached.
enum Peer {
    Tcp(IpAddr),
    Unix(PathBuf),
}

async fn peers(target: &Target) -> io::Result<Vec<Peer>> {
    if let Some(addr) = target.addr {
        return Ok(vec![Peer::Tcp(addr)]);
    }
    match &target.host {
        Host::Unix(dir) => Ok(vec![Peer::Unix(dir.clone())]),
        Host::Tcp(name) => Ok(tokio::net::lookup_host((name.as_str(), target.port))
            .await?
            .map(|a| Peer::Tcp(a.ip()))
            .collect()),
    }
}

/// One login at one address; the error says whether the authentication policy refused it.
async fn attempt(
    s: &Settings,
    target: &Target,
    peer: &Peer,
) -> std::result::Result<(Client, Connection, Arc<Probe>), (Error, bool)> {
    let failed = |message: String| (Error::io_msg("connect", &s.server, message), false);
    let socket = open(peer, target.port, s.connect_timeout, Some(s))
        .await
        .map_err(|e| {
            let (err, refused) = failed(format!("error connecting to server: {e}"));
            (err.with_os_error(&e), refused)
        })?;
    let probe = probe_of(&socket);
    let stream = Watched::new(Heard::new(socket, Arc::clone(&probe)), s.auth.clone());
    let tls = tls_for(s, target).map_err(|e| (e, false))?;
    let mut config = s.config.clone();
    if let Some(p) = &target.password {
        config.password(&p.secret);
    }
    let (client, mut connection) = match config.connect_raw(stream, tls).await {
        Ok(connected) => connected,
        Err(e) => {
            if let Some(why) = auth::refusal(&e) {
                // Not `connect`: a wait rides out a server that went away, not this.
                return Err((Error::io_msg("authenticate", &s.server, why), true));
            }
            let mut err = Error::io("connect", &s.server, &e);
            if let (Error::Io { message, .. }, Some(file)) = (
                &mut err,
                target.password.as_ref().and_then(|p| p.file.as_ref()),
            ) {
                if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) {
                    message.push_str(&format!(
                        " (the password was read from the file {})",
                        file.display()
                    ));
                }
            }
            return Err((err, false));
        }
    };
    let check = match s.session_attrs {
        SessionAttrs::Any => return Ok((client, connection, probe)),
        SessionAttrs::ReadWrite => "SHOW transaction_read_only",
        SessionAttrs::Primary => "SELECT CASE WHEN pg_is_in_recovery() THEN 'on' ELSE 'off' END",
    };
    let answer = {
        let query = client.simple_query(check);
        tokio::pin!(query);
        tokio::select! {
            answer = &mut query => answer.map_err(|e| failed(describe(&e)))?,
            _ = &mut connection => return Err(failed("the server closed the connection".into())),
        }
    };
    let refuses_writes = answer.iter().any(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0) == Some("on"),
        _ => false,
    });
    if refuses_writes {
        return Err(failed(format!(
            "the server does not accept writes (target_session_attrs={})",
            if s.session_attrs == SessionAttrs::Primary {
                "primary"
            } else {
                "read-write"
            }
        )));
    }
    Ok((client, connection, probe))
}

/// A probe of the session on `socket`, which peeks at a duplicate of it where it can.
#[cfg(unix)]
fn probe_of(socket: &Socket) -> Arc<Probe> {
    use std::os::fd::AsFd;
    let fd = match socket {
        Socket::Tcp(s) => s.as_fd().try_clone_to_owned(),
        Socket::Unix(s) => s.as_fd().try_clone_to_owned(),
    };
    // Without a duplicate (out of descriptors), what the lock's thread reads still counts.
    Probe::new(fd.ok())
}

#[cfg(not(unix))]
fn probe_of(_: &Socket) -> Arc<Probe> {
    Probe::new()
}

#[cfg(feature = "tls")]
fn tls_for(s: &Settings, target: &Target) -> Result<Tls> {
    let mut connector = tls::another(&s.tls);
    let inner = match MakeTlsConnect::<Stream>::make_tls_connect(&mut connector, &target.tls_name())
    {
        Ok(inner) => inner,
        Err(never) => match never {},
    };
    Ok(auth::WatchedTls {
        inner,
        policy: s.auth.clone(),
    })
}

#[cfg(not(feature = "tls"))]
fn tls_for(_: &Settings, _: &Target) -> Result<Tls> {
    Ok(tokio_postgres::NoTls)
}

/// TLS as the session's mode says, without the policy: for a cancel request, which carries
/// no password.
#[cfg(feature = "tls")]
fn plain_tls(
    mut connector: tls::Connector,
    name: &str,
) -> <tls::Connector as MakeTlsConnect<Socket>>::TlsConnect {
    match MakeTlsConnect::<Socket>::make_tls_connect(&mut connector, name) {
        Ok(tls) => tls,
        Err(never) => match never {},
    }
}

#[cfg(not(feature = "tls"))]
fn plain_tls(connector: tls::Connector, _: &str) -> tokio_postgres::NoTls {
    connector
}

/// A socket to `peer`, within `timeout`; with `tuned`, TCP keepalives and the user timeout
/// follow the lease, as the session settings do on the server's side.
async fn open(
    peer: &Peer,
    port: u16,
    timeout: Duration,
    tuned: Option<&Settings>,
) -> io::Result<Socket> {
    let within = |_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
    match peer {
        Peer::Tcp(ip) => {
            let stream =
                tokio::time::timeout(timeout, TcpStream::connect(SocketAddr::new(*ip, port)))
                    .await
                    .map_err(within)??;
            stream.set_nodelay(true)?;
            if let Some(s) = tuned {
                tune(&stream, s)?;
            }
            Ok(Socket::Tcp(stream))
        }
        #[cfg(unix)]
        Peer::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                .await
                .map_err(within)??;
            Ok(Socket::Unix(stream))
        }
        #[cfg(not(unix))]
        Peer::Unix(dir) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: Unix-domain sockets are not supported on this platform",
                dir.display()
            ),
        )),
    }
}

/// The client side of a cut connection fails within the lease too, so a waiter or a release
/// never hangs on a dead socket.
fn tune(stream: &TcpStream, s: &Settings) -> io::Result<()> {
    let k = s.keepalive();
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(k.idle_s));
    #[cfg(not(any(target_os = "openbsd", target_os = "redox", target_os = "solaris")))]
    let keepalive = keepalive.with_interval(Duration::from_secs(k.interval_s));
    #[cfg(not(any(
        target_os = "openbsd",
        target_os = "redox",
        target_os = "solaris",
        target_os = "windows"
    )))]
    let keepalive = keepalive.with_retries(k.count);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(target_os = "linux")]
    sock.set_tcp_user_timeout(Some(s.lease))?;
    Ok(())
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
