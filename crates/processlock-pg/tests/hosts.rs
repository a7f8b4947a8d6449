//! A URL with several hosts, as libpq takes it: tried in order, a host that does not answer is
//! skipped, and `target_session_attrs` skips a standby; a wait on whichever host holds the
//! session can still be cancelled.

#![cfg(target_os = "linux")]

mod support;

use std::net::TcpListener;
use std::time::Duration;

use processlock::{Cancel, LockName};
use processlock_pg::{acquire, acquire_wait, Error, PgOptions};
use support::*;

fn name() -> LockName {
    LockName::new("backend", Some("SHORT")).unwrap()
}

fn hosts(ports: &[u16], query: &str) -> PgOptions {
    let list: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut o = PgOptions::new(format!(
        "postgres://postgres:{PASSWORD}@{}/postgres?{query}",
        list.join(",")
    ));
    o.connect_timeout = Duration::from_secs(10);
    o
}

/// A port nothing listens on: bound, then let go.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_hosts_are_tried_in_order_and_a_standby_is_skipped_when_asked() {
    let Some(primary) = PgServer::start() else {
        return;
    };
    let standby = primary.start_standby();
    standby.wait_until("SELECT pg_is_in_recovery()", "t");
    let on_primary = |o: &PgOptions| {
        let held = acquire(o, &name()).unwrap_or_else(|e| panic!("{e}"));
        primary.wait_until(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
            "1",
        );
        assert!(held.release().unwrap());
    };
    // A host that does not answer, then the primary.
    on_primary(&hosts(&[closed_port(), primary.port], ""));
    // The standby first: skipped when the session must accept writes, or be on the primary.
    for attrs in ["read-write", "primary"] {
        on_primary(&hosts(
            &[standby.port, primary.port],
            &format!("target_session_attrs={attrs}"),
        ));
    }
    // Without target_session_attrs the first host that answers is used, and a standby cannot
    // hold a lock.
    let e = acquire(&hosts(&[standby.port, primary.port], ""), &name()).unwrap_err();
    assert_eq!(e.code(), "LOCK_UNSUPPORTED", "{e}");
}

#[test]
fn a_wait_through_a_list_of_hosts_can_be_cancelled() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let o = hosts(&[closed_port(), server.port], "");
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
