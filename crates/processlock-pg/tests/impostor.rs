//! A program in the server's place: a fake server on 127.0.0.1 that speaks just enough of the
//! protocol to ask for the password (in clear text, as MD5, or not at all), without TLS or with
//! a certificate the client cannot check, and records what the client sends back.

#![cfg(all(target_os = "linux", feature = "tls"))]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use processlock::LockName;
use processlock_pg::{acquire, PgOptions};
use support::PgServer;

const SECRET: &str = "impostor-bait-7f3a";
/// Bounds every wait of the fake server.
const LIMIT: Duration = Duration::from_secs(20);

/// How the fake server answers the client's request for TLS.
#[derive(Clone)]
enum Tls {
    /// `N`: no TLS here.
    Refuse,
    /// `S`, then a handshake with this certificate.
    SelfSigned(Arc<rustls::ServerConfig>),
}

/// What the fake server asks for once the client has introduced itself.
#[derive(Clone, Copy)]
enum Ask {
    Cleartext,
    Md5,
    /// Nothing: it lets the client in at once.
    Nothing,
}

/// A fake server listening on 127.0.0.1 for one connection.
struct Impostor {
    port: u16,
    got: mpsc::Receiver<Vec<u8>>,
}

impl Impostor {
    fn start(tls: Tls, ask: Ask) -> Impostor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) if started.elapsed() < LIMIT => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            let _ = tx.send(serve(stream, &tls, ask));
        });
        Impostor { port, got }
    }

    /// Everything the client sent after it was asked for its password.
    fn received(&self) -> Vec<u8> {
        self.got
            .recv_timeout(LIMIT * 2)
            .expect("the client never connected")
    }

    fn url(&self, user_info: &str, query: &str) -> PgOptions {
        let mut o = PgOptions::new(format!(
            "postgres://{user_info}@localhost:{}/trader?{query}",
            self.port
        ));
        o.connect_timeout = Duration::from_secs(10);
        o
    }
}

/// The conversation: the TLS answer, the client's startup message, the request, and then what
/// the client answers (until it closes, or one message is complete).
fn serve(mut plain: TcpStream, tls: &Tls, ask: Ask) -> Vec<u8> {
    let mut first = [0u8; 8];
    if plain.read_exact(&mut first).is_err() {
        return Vec::new();
    }
    let asked_for_tls = first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    match (asked_for_tls, tls) {
        (true, Tls::SelfSigned(config)) => {
            plain.write_all(b"S").unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(config)).unwrap();
            let mut stream = rustls::StreamOwned::new(conn, plain);
            converse(&mut stream, None, ask)
        }
        (true, Tls::Refuse) => {
            plain.write_all(b"N").unwrap();
            converse(&mut plain, None, ask)
        }
        (false, _) => converse(&mut plain, Some(first), ask),
    }
}

fn converse(stream: &mut impl ReadWrite, started: Option<[u8; 8]>, ask: Ask) -> Vec<u8> {
    // The startup message: its length, then the rest.
    let mut head = [0u8; 4];
    let rest_of_head = match started {
        Some(first) => {
            head.copy_from_slice(&first[..4]);
            4
        }
        None => {
            if stream.read_exact(&mut head).is_err() {
                return Vec::new();
            }
            0
        }
    };
    let len = u32::from_be_bytes(head) as usize;
    let mut startup = vec![0u8; len.saturating_sub(4 + rest_of_head)];
    if stream.read_exact(&mut startup).is_err() {
        return Vec::new();
    }
    let request: Vec<u8> = match ask {
        Ask::Cleartext => vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3],
        Ask::Md5 => vec![b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4],
        Ask::Nothing => vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'],
    };
    if stream
        .write_all(&request)
        .and_then(|_| stream.flush())
        .is_err()
    {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if got.len() >= 5 {
            let len = u32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize;
            if got.len() > len {
                return got;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A certificate for `localhost` signed by nobody the client trusts, as an impostor would have.
fn self_signed(dir: &Path) -> Arc<rustls::ServerConfig> {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            "impostor.key",
            "-out",
            "impostor.pem",
        ])
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server_config(&dir.join("impostor.pem"), &dir.join("impostor.key"))
}

fn server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("processlock-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn name() -> LockName {
    LockName::new("backend", None).unwrap()
}

/// Tries to take a lock from `impostor` with `opts`; the error message, and what arrived.
fn try_with(impostor: &Impostor, opts: &PgOptions) -> (String, Vec<u8>) {
    let err = match acquire(opts, &name()) {
        Ok(_) => panic!("a lock was taken from a fake server"),
        Err(e) => e,
    };
    assert_eq!(err.code(), "LOCK_IO", "{err}");
    assert!(!err.to_string().contains(SECRET), "{err}");
    (err.to_string(), impostor.received())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn an_impostor_without_tls_never_gets_the_password() {
    let user = format!("svc:{SECRET}");
    for query in ["", "sslmode=prefer", "sslmode=disable", "sslmode=allow"] {
        let impostor = Impostor::start(Tls::Refuse, Ask::Cleartext);
        let (err, got) = try_with(&impostor, &impostor.url(&user, query));
        assert!(
            !contains(&got, SECRET),
            "{query:?}: the password reached the impostor"
        );
        assert!(got.is_empty(), "{query:?}: the client answered: {got:?}");
        assert!(err.contains("clear text"), "{query:?}: {err}");
    }
}

#[test]
fn an_impostor_with_a_certificate_nobody_checks_never_gets_the_password() {
    let dir = temp_dir("impostor-tls");
    let config = self_signed(&dir);
    let user = format!("svc:{SECRET}");
    for query in ["", "sslmode=require", "sslmode=prefer"] {
        let impostor = Impostor::start(Tls::SelfSigned(Arc::clone(&config)), Ask::Cleartext);
        let (err, got) = try_with(&impostor, &impostor.url(&user, query));
        assert!(
            !contains(&got, SECRET),
            "{query:?}: the password reached the impostor"
        );
        assert!(err.contains("clear text"), "{query:?}: {err}");
    }
    // verify-full never gets as far: the certificate is refused.
    support::tls::make_certs(&dir);
    let impostor = Impostor::start(Tls::SelfSigned(Arc::clone(&config)), Ask::Cleartext);
    let query = format!(
        "sslmode=verify-full&sslrootcert={}",
        dir.join("ca.pem").display()
    );
    let (err, got) = try_with(&impostor, &impostor.url(&user, &query));
    assert!(err.contains("certificate"), "{err}");
    assert!(got.is_empty(), "{got:?}");
    // A server that proves itself with its certificate may ask for the password in clear text
    // (LDAP, PAM, RADIUS and IAM logins need this): this one holds a key the CA certified.
    let certified = server_config(&dir.join("server.pem"), &dir.join("server.key"));
    let trusted = Impostor::start(Tls::SelfSigned(certified), Ask::Cleartext);
    let (_, got) = try_with(&trusted, &trusted.url(&user, &query));
    assert!(
        contains(&got, SECRET),
        "verify-full: the verified server got nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn require_auth_password_sends_it_anyway_so_the_fake_server_would_see_a_leak() {
    let user = format!("svc:{SECRET}");
    let impostor = Impostor::start(Tls::Refuse, Ask::Cleartext);
    let (_, got) = try_with(&impostor, &impostor.url(&user, "require_auth=password"));
    assert_eq!(got[0], b'p', "{got:?}");
    assert!(
        contains(&got, SECRET),
        "the fake server cannot see a password: {got:?}"
    );
}

#[test]
fn require_auth_scram_refuses_md5_and_a_server_that_asks_for_nothing() {
    let user = format!("svc:{SECRET}");
    for (ask, refusal) in [
        (Ask::Md5, "md5 authentication"),
        (Ask::Cleartext, "password authentication"),
        (Ask::Nothing, "without authenticating"),
    ] {
        let impostor = Impostor::start(Tls::Refuse, ask);
        let (err, got) = try_with(
            &impostor,
            &impostor.url(&user, "require_auth=scram-sha-256"),
        );
        assert!(err.contains(refusal), "{err}");
        assert!(err.contains("require_auth=scram-sha-256"), "{err}");
        assert!(got.is_empty(), "the client answered: {got:?}");
    }
    // Without require_auth, MD5 is answered as libpq answers it: with a salted hash, never
    // the password itself.
    let impostor = Impostor::start(Tls::Refuse, Ask::Md5);
    let (_, got) = try_with(&impostor, &impostor.url(&user, ""));
    assert_eq!(got[0], b'p');
    assert!(!contains(&got, SECRET));
}

#[test]
fn channel_binding_require_refuses_a_server_that_cannot_bind() {
    let dir = temp_dir("impostor-binding");
    let config = self_signed(&dir);
    let user = format!("svc:{SECRET}");
    for ask in [Ask::Cleartext, Ask::Md5, Ask::Nothing] {
        let impostor = Impostor::start(Tls::SelfSigned(Arc::clone(&config)), ask);
        let opts = impostor.url(
            &user,
            "sslmode=require&channel_binding=require&require_auth=password,md5,none",
        );
        let (err, got) = try_with(&impostor, &opts);
        assert!(!contains(&got, SECRET), "{err}");
        assert!(err.contains("channel binding"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the real server (SCRAM), the strict settings connect: channel binding over rustls, and
/// `require_auth=scram-sha-256`.
#[test]
fn the_strict_settings_work_with_the_real_server() {
    let Some((server, dir)) = support::tls::tls_server() else {
        return;
    };
    let url = |query: &str| {
        let mut o = PgOptions::new(format!(
            "postgres://postgres:{}@localhost:{}/postgres?{query}",
            support::PASSWORD,
            server.port
        ));
        o.connect_timeout = Duration::from_secs(10);
        o
    };
    let ca = dir.join("ca.pem").display().to_string();
    for query in [
        format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
        format!("sslmode=verify-full&sslrootcert={ca}&require_auth=scram-sha-256"),
        "sslmode=require&channel_binding=require&require_auth=scram-sha-256".to_string(),
    ] {
        let held = acquire(&url(&query), &name()).unwrap_or_else(|e| panic!("{query}: {e}"));
        assert!(held.release().unwrap());
    }
    // A policy the server does not meet: refused before anything is sent.
    let e = acquire(&url("require_auth=md5"), &name()).unwrap_err();
    assert!(
        e.to_string().contains("scram-sha-256 authentication"),
        "{e}"
    );
    drop::<PgServer>(server);
}
