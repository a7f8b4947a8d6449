//! Which ways of logging in the client goes along with, as libpq's `require_auth` says, and the
//! stream that holds the client to it.
//!
//! The server picks the authentication method; whoever answers at the server's address picks it,
//! including a program squatting on the port while the server restarts, or a machine in the
//! middle. Asked for a cleartext password, a client that answers hands its password over. So
//! every authentication request from the server is checked against the policy before the client
//! sees it, and one the policy does not allow ends the connection: nothing of the password has
//! been sent.
//!
//! Without `require_auth`, every method is allowed except a cleartext password to a server whose
//! certificate was not checked (anything but `sslmode=verify-full`). The servers that ask for one
//! (`password`, `ldap`, `radius`, `pam` in `pg_hba.conf`, or tokens such as a cloud provider's
//! IAM login) need `sslmode=verify-full`, which proves the server first, or an explicit
//! `require_auth=password`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, Result};

/// An authentication method, as `require_auth` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Password,
    Md5,
    Gss,
    Sspi,
    Scram,
}

impl Method {
    const ALL: [Method; 5] = [
        Method::Password,
        Method::Md5,
        Method::Gss,
        Method::Sspi,
        Method::Scram,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::Md5 => "md5",
            Method::Gss => "gss",
            Method::Sspi => "sspi",
            Method::Scram => "scram-sha-256",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn named(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Bits of the allowed `Method`s.
    allowed: u8,
    /// Whether the server may let the client in without asking for anything.
    none_allowed: bool,
    /// `require_auth` as given (and where), for messages; `None`: the default.
    written: Option<String>,
}

impl Policy {
    /// The default: everything but a cleartext password, which only a server whose certificate
    /// names the host (`verify-full`) may ask for.
    pub fn default_for(server_verified: bool) -> Policy {
        let all = Method::ALL.iter().fold(0, |bits, m| bits | m.bit());
        Policy {
            allowed: if server_verified {
                all
            } else {
                all & !Method::Password.bit()
            },
            none_allowed: true,
            written: None,
        }
    }

    /// A `require_auth` value, as libpq reads it: a comma-separated list of methods the server
    /// must use one of, or of `!method`s it must not use; `none` (the server asks for nothing)
    /// may be listed or negated too. `name` is how messages name the parameter (`require_auth`
    /// or the environment variable); `written`, the parameter with its value, once it is valid.
    pub fn parse(value: &str, name: &str, written: String) -> Result<Policy> {
        let bad = |why: String| Error::invalid("url", format!("{name}: {why}"));
        let negated = value.starts_with('!');
        let mut policy = Policy {
            allowed: if negated { u8::MAX } else { 0 },
            none_allowed: negated,
            written: Some(written),
        };
        let mut seen = Vec::new();
        for part in value.split(',') {
            let name = match part.strip_prefix('!') {
                Some(name) if negated => name,
                Some(_) => {
                    return Err(bad(format!(
                        "{part:?} cannot be mixed with methods that are not negated"
                    )))
                }
                None if negated => {
                    return Err(bad(format!(
                        "{part:?} cannot be mixed with negated methods"
                    )))
                }
                None => part,
            };
            if seen.contains(&name) {
                return Err(bad(format!("{name:?} is given more than once")));
            }
            seen.push(name);
            if name == "none" {
                policy.none_allowed = !negated;
                continue;
            }
            let method = Method::named(name).ok_or_else(|| {
                bad(format!(
                    "unknown method {name:?}; use password, md5, gss, sspi, scram-sha-256 or none, each optionally with ! before it"
                ))
            })?;
            if negated {
                policy.allowed &= !method.bit();
            } else {
                policy.allowed |= method.bit();
            }
        }
        Ok(policy)
    }

    fn allows(&self, method: Method) -> bool {
        self.allowed & method.bit() != 0
    }

    /// Why the server's request for `method` is refused, or `None` if it is allowed.
    fn refuse(&self, method: Method) -> Option<String> {
        if self.allows(method) {
            return None;
        }
        Some(match (&self.written, method) {
            (None, Method::Password) => "the server asked for the password in clear text, which is sent only to a server whose certificate names it (sslmode=verify-full): a program in the server's place would get it. Use sslmode=verify-full, or add require_auth=password to send it anyway".to_string(),
            (Some(written), method) => format!(
                "the server asked for {} authentication, which {written} does not allow",
                method.name()
            ),
            (None, method) => format!("the server asked for {} authentication", method.name()),
        })
    }

    fn refuse_none(&self) -> Option<String> {
        if self.none_allowed {
            return None;
        }
        let written = self.written.as_deref().unwrap_or("require_auth");
        Some(format!(
            "the server let the client in without authenticating it, which {written} does not allow: it may not be the server"
        ))
    }
}

/// The server's authentication request codes (`AuthenticationXXX` messages).
mod code {
    pub const OK: u32 = 0;
    pub const CLEARTEXT: u32 = 3;
    pub const MD5: u32 = 5;
    pub const GSS: u32 = 7;
    pub const GSS_CONTINUE: u32 = 8;
    pub const SSPI: u32 = 9;
    pub const SASL: u32 = 10;
    pub const SASL_CONTINUE: u32 = 11;
    pub const SASL_FINAL: u32 = 12;
}

/// The server did something the policy does not allow; carried inside the `io::Error` the
/// client gets, so that the connection attempt can say so plainly.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The refusal in a client error, if that is what ended the connection attempt.
pub(crate) fn refusal(e: &tokio_postgres::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(refused) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>())
        {
            return Some(refused.0.clone());
        }
        source = err.source();
    }
    None
}

/// Where the stream is in the start of the conversation.
#[derive(Debug)]
enum Phase {
    /// The client has not written yet; its first 8 bytes say what comes back.
    Start { first: [u8; 8], len: usize },
    /// The client asked for TLS: the server answers with one byte.
    TlsAnswer,
    /// Reading the server's messages until it lets the client in.
    Messages(Reader),
    /// TLS runs over this stream (another `Watched` checks inside it), or the client is in:
    /// nothing more to check.
    Through,
    /// The policy refused a request: the connection is over.
    Refused(String),
}

/// Where the reader is within the server's messages.
#[derive(Debug, Default)]
struct Reader {
    /// The message header (type and length), then the 4-byte code of an authentication
    /// request.
    head: [u8; 9],
    have: usize,
    /// Bytes of the current message's body still to pass unread.
    skip: usize,
    /// Whether the server asked for anything yet; whether a SASL exchange is under way.
    asked: bool,
    sasl: bool,
}

/// The startup packet code that asks for TLS (`SSLRequest`).
const TLS_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// The first byte of a TLS record that starts a handshake (a direct TLS connection).
const TLS_HANDSHAKE: u8 = 0x16;

/// A stream to the server that checks every authentication request against `policy` before
/// the client reads it. Over a plain connection it checks the requests itself; when the client
/// asks for TLS and the server agrees, a `Watched` around the TLS stream checks them instead.
pub(crate) struct Watched<S> {
    inner: S,
    policy: Policy,
    phase: Phase,
}

impl<S> Watched<S> {
    pub fn new(inner: S, policy: Policy) -> Self {
        Watched {
            inner,
            policy,
            phase: Phase::Start {
                first: [0; 8],
                len: 0,
            },
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let Phase::Start { first, len } = &mut self.phase else {
            return;
        };
        let take = bytes.len().min(first.len() - *len);
        first[*len..*len + take].copy_from_slice(&bytes[..take]);
        *len += take;
        if *len == 0 {
            return;
        }
        if first[0] == TLS_HANDSHAKE {
            self.phase = Phase::Through;
        } else if *len == first.len() {
            self.phase = if *first == TLS_REQUEST {
                Phase::TlsAnswer
            } else {
                Phase::Messages(Reader::default())
            };
        }
    }

    /// Checks what the server sent (`bytes`); `Err` with the reason when the policy refuses it.
    fn read(&mut self, mut bytes: &[u8]) -> std::result::Result<(), String> {
        loop {
            if bytes.is_empty() {
                return Ok(());
            }
            match &mut self.phase {
                Phase::Start { .. } => self.phase = Phase::Messages(Reader::default()),
                Phase::TlsAnswer => {
                    self.phase = if bytes[0] == b'S' {
                        Phase::Through
                    } else {
                        Phase::Messages(Reader::default())
                    };
                    bytes = &bytes[1..];
                }
                Phase::Through => return Ok(()),
                Phase::Refused(why) => return Err(why.clone()),
                Phase::Messages(reader) => {
                    let used = match reader.feed(bytes, &self.policy) {
                        Step::More(used) => used,
                        Step::In => {
                            self.phase = Phase::Through;
                            return Ok(());
                        }
                        Step::Refuse(why) => {
                            self.phase = Phase::Refused(why.clone());
                            return Err(why);
                        }
                    };
                    bytes = &bytes[used..];
                }
            }
        }
    }
}

enum Step {
    /// This many bytes were taken; read on.
    More(usize),
    /// The server let the client in: the policy has nothing more to check.
    In,
    Refuse(String),
}

impl Reader {
    fn feed(&mut self, bytes: &[u8], policy: &Policy) -> Step {
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            return Step::More(n);
        }
        // The header is 5 bytes; an authentication request ('R') also needs its 4-byte code.
        let want = if self.have >= 5 && self.head[0] == b'R' {
            9
        } else {
            5
        };
        let n = (want - self.have).min(bytes.len());
        self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        if self.have < want {
            return Step::More(n);
        }
        let body = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]])
            .saturating_sub(4) as usize;
        if want == 5 && self.head[0] == b'R' && body >= 4 {
            // Read the code next.
            return Step::More(n);
        }
        let step = if want == 9 {
            let code = u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
            self.skip = body - 4;
            self.request(code, policy)
        } else {
            self.skip = body;
            None
        };
        self.have = 0;
        match step {
            Some(step) => step,
            None => Step::More(n),
        }
    }

    /// What an authentication request with `code` means under `policy`; `None`: read on.
    fn request(&mut self, code: u32, policy: &Policy) -> Option<Step> {
        let method = match code {
            code::OK => {
                let unasked = !self.asked;
                return Some(match policy.refuse_none().filter(|_| unasked) {
                    Some(why) => Step::Refuse(why),
                    None => Step::In,
                });
            }
            code::CLEARTEXT => Method::Password,
            code::MD5 => Method::Md5,
            code::GSS | code::GSS_CONTINUE => Method::Gss,
            code::SSPI => Method::Sspi,
            code::SASL => {
                self.sasl = true;
                Method::Scram
            }
            // Only within a SASL exchange the policy already allowed; the client checks order.
            code::SASL_CONTINUE | code::SASL_FINAL if self.sasl => return None,
            code::SASL_CONTINUE | code::SASL_FINAL => Method::Scram,
            // Methods the client does not speak: it refuses them itself.
            _ => return None,
        };
        self.asked = true;
        policy.refuse(method).map(Step::Refuse)
    }
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(why.to_string()))
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Phase::Refused(why) = &self.phase {
            return Poll::Ready(Err(refused(why)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if matches!(this.phase, Phase::Through) {
            return Poll::Ready(Ok(()));
        }
        match this.read(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(why) => {
                // The client never sees the request.
                buf.set_filled(before);
                Poll::Ready(Err(refused(&why)))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Phase::Refused(why) = &self.phase {
            return Poll::Ready(Err(refused(why)));
        }
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Watched<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose streams are `Watched`.
#[cfg(feature = "tls")]
pub(crate) struct WatchedTls<T> {
    pub inner: T,
    pub policy: Policy,
}

#[cfg(feature = "tls")]
impl<S, T> tokio_postgres::tls::TlsConnect<S> for WatchedTls<T>
where
    T: tokio_postgres::tls::TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = Watched<T::Stream>;
    type Error = T::Error;
    type Future = Pin<
        Box<dyn std::future::Future<Output = std::result::Result<Self::Stream, T::Error>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        let policy = self.policy;
        let connecting = self.inner.connect(stream);
        Box::pin(async move { Ok(Watched::new(connecting.await?, policy)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32) -> Vec<u8> {
        let mut m = vec![b'R', 0, 0, 0, 8];
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Feeds `server` to a fresh stream after the client wrote `client`, one chunk of `chunk`
    /// bytes at a time; the refusal, if any.
    fn run(policy: &Policy, client: &[u8], server: &[u8], chunk: usize) -> Option<String> {
        let mut w = Watched::new((), policy.clone());
        w.wrote(client);
        for part in server.chunks(chunk) {
            if let Err(why) = w.read(part) {
                return Some(why);
            }
        }
        None
    }

    const STARTUP: [u8; 8] = [0, 0, 0, 40, 0, 3, 0, 0];

    #[test]
    fn a_cleartext_request_is_refused_unless_the_server_was_verified_or_it_is_asked_for() {
        let server = [auth(code::CLEARTEXT), auth(code::OK)].concat();
        for chunk in [1, 3, 100] {
            let why = run(&Policy::default_for(false), &STARTUP, &server, chunk).unwrap();
            assert!(why.contains("clear text"), "{why}");
            assert_eq!(
                run(&Policy::default_for(true), &STARTUP, &server, chunk),
                None
            );
            let explicit =
                Policy::parse("password", "require_auth", "require_auth=password".into()).unwrap();
            assert_eq!(run(&explicit, &STARTUP, &server, chunk), None);
        }
        // After a refused TLS request, the server's messages are checked all the same.
        let tls_no = [&b"N"[..], &server].concat();
        assert!(run(&Policy::default_for(false), &TLS_REQUEST, &tls_no, 2).is_some());
        // After an accepted one, TLS runs underneath: the stream inside it checks.
        let tls_yes = [&b"S"[..], &server].concat();
        assert_eq!(
            run(&Policy::default_for(false), &TLS_REQUEST, &tls_yes, 2),
            None
        );
        assert_eq!(
            run(
                &Policy::default_for(false),
                &[TLS_HANDSHAKE, 3, 1],
                &server,
                2
            ),
            None
        );
    }

    #[test]
    fn require_auth_is_read_as_libpq_reads_it() {
        let p = |s: &str| Policy::parse(s, "require_auth", format!("require_auth={s}"));
        let scram = p("scram-sha-256").unwrap();
        let sasl = [
            message(
                b'R',
                &[&code::SASL.to_be_bytes()[..], b"SCRAM-SHA-256\0\0"].concat(),
            ),
            message(
                b'R',
                &[&code::SASL_CONTINUE.to_be_bytes()[..], b"r=x"].concat(),
            ),
            message(
                b'R',
                &[&code::SASL_FINAL.to_be_bytes()[..], b"v=y"].concat(),
            ),
            auth(code::OK),
            message(b'S', b"a\0b\0"),
        ]
        .concat();
        for chunk in [1, 7, 1000] {
            assert_eq!(run(&scram, &STARTUP, &sasl, chunk), None);
        }
        let md5 = [message(
            b'R',
            &[&code::MD5.to_be_bytes()[..], b"salt"].concat(),
        )]
        .concat();
        assert!(run(&scram, &STARTUP, &md5, 1)
            .unwrap()
            .contains("md5 authentication"));
        // No challenge at all: refused when a method is required, unless `none` is listed.
        let let_in = [message(b'S', b"a\0b\0"), auth(code::OK)].concat();
        assert!(run(&scram, &STARTUP, &let_in, 4)
            .unwrap()
            .contains("without authenticating"));
        assert_eq!(
            run(&p("scram-sha-256,none").unwrap(), &STARTUP, &let_in, 4),
            None
        );
        assert_eq!(run(&Policy::default_for(false), &STARTUP, &let_in, 4), None);
        // Negated: everything but what is listed.
        let not_password = p("!password").unwrap();
        assert_eq!(run(&not_password, &STARTUP, &md5, 3), None);
        assert_eq!(run(&not_password, &STARTUP, &let_in, 3), None);
        assert!(run(&not_password, &STARTUP, &auth(code::CLEARTEXT), 3).is_some());
        assert!(run(&p("!none").unwrap(), &STARTUP, &let_in, 3).is_some());
        // An error from the server passes: the client reports it.
        let error = message(b'E', b"SFATAL\0Mno\0\0");
        assert_eq!(run(&scram, &STARTUP, &error, 2), None);
        for bad in ["password,!md5", "!password,md5", "md5,md5", "kerberos", ""] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
