//! TLS to the server: every sslmode against a server with a certificate from a test CA.

#![cfg(all(target_os = "linux", feature = "tls"))]

mod support;

use std::path::Path;
use std::time::Duration;

use processlock::{Cancel, LockName};
use processlock_pg::{acquire, acquire_wait, Error, PgOptions};
use support::tls::tls_server;
use support::*;

fn url(server: &PgServer, host: &str, query: &str) -> PgOptions {
    let mut o = PgOptions::new(format!(
        "postgres://postgres:{PASSWORD}@{host}:{}/postgres?{query}",
        server.port
    ));
    o.connect_timeout = Duration::from_secs(10);
    o
}

fn name() -> LockName {
    LockName::new("backend", None).unwrap()
}

fn encrypted(server: &PgServer, backend_pid: i32) -> String {
    server.sql(&format!(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = {backend_pid}"
    ))[0][0]
        .clone()
}

#[test]
fn every_sslmode_does_what_it_says() {
    let Some((server, dir)) = tls_server() else {
        return;
    };
    let ca = dir.join("ca.pem");
    let other = dir.join("other-ca.pem");
    let held_encrypted = |o: PgOptions| {
        let held = acquire(&o, &name()).unwrap_or_else(|e| panic!("{e}"));
        let ssl = encrypted(&server, held.backend_pid());
        held.release().unwrap();
        ssl
    };
    assert_eq!(
        held_encrypted(url(&server, "127.0.0.1", "sslmode=disable")),
        "f"
    );
    assert_eq!(
        held_encrypted(url(&server, "127.0.0.1", "")),
        "t",
        "prefer uses TLS when offered"
    );
    assert_eq!(
        held_encrypted(url(&server, "127.0.0.1", "sslmode=require")),
        "t"
    );
    let q = |mode: &str, ca: &Path| format!("sslmode={mode}&sslrootcert={}", ca.display());
    assert_eq!(
        held_encrypted(url(&server, "localhost", &q("verify-full", &ca))),
        "t"
    );
    // The certificate names `localhost` only: the CA is checked, the name is not.
    assert_eq!(
        held_encrypted(url(&server, "127.0.0.1", &q("verify-ca", &ca))),
        "t"
    );

    for (host, query) in [
        ("127.0.0.1", q("verify-full", &ca)),
        ("localhost", q("verify-full", &other)),
        ("localhost", q("verify-ca", &other)),
    ] {
        match acquire(&url(&server, host, &query), &name()) {
            Err(e) => {
                assert_eq!(
                    (e.code(), e.op()),
                    (processlock::ErrorCode::Io, Some("connect")),
                    "{e}"
                );
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            Ok(_) => panic!("{host} {query}: connected without a valid certificate"),
        }
    }
    let missing = url(
        &server,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    assert_eq!(
        acquire(&missing, &name()).unwrap_err().code(),
        "LOCK_INVALID_OPTION"
    );
}

#[test]
fn a_wait_over_tls_can_be_cancelled() {
    let Some((server, _)) = tls_server() else {
        return;
    };
    let o = url(&server, "127.0.0.1", "sslmode=require");
    let held = acquire(&o, &name()).unwrap();
    let cancel = Cancel::new();
    let waiting = {
        let (o, cancel) = (o.clone(), cancel.clone());
        std::thread::spawn(move || acquire_wait(&o, &name(), None, &cancel))
    };
    server.wait_until(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        "1",
    );
    cancel.cancel();
    assert!(matches!(waiting.join().unwrap(), Err(Error::Aborted)));
    // The cancel request reached the server (over TLS): the waiting statement is gone.
    server.wait_until(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        "0",
    );
    assert!(
        server
            .log()
            .contains("canceling statement due to user request"),
        "the wait ended some other way:\n{}",
        server.log()
    );
    assert!(held.release().unwrap());
}
