//! Replacing a holder through the server, against a real private server: the request a holder
//! hears (and from whom), the lock taken only once the holder let go, and requests nobody
//! answers or nobody may make. (The processes, the SIGTERM and other hosts: __test__/pg-replace.)

#![cfg(target_os = "linux")]

mod support;

use std::sync::{mpsc, Arc};
use std::time::Duration;

use processlock::{Cancel, LockName};
use processlock_pg::{acquire, acquire_replacing, Error, PgHeld, PgOptions, ReplaceRequest};
use support::*;

/// A heartbeat every half second: a holder hears a request within that.
const LEASE: Duration = Duration::from_millis(2000);

fn lock() -> LockName {
    LockName::new("backend", Some("SHORT")).unwrap()
}

fn opts(url: String) -> PgOptions {
    let mut o = PgOptions::new(url);
    o.lease = LEASE;
    o
}

/// A holder whose requests arrive on the returned channel.
fn listening_holder(o: &PgOptions) -> (PgHeld, mpsc::Receiver<ReplaceRequest>) {
    let held = acquire(o, &lock()).unwrap();
    let (tx, rx) = mpsc::channel();
    held.on_replace_request(Box::new(move |r| {
        let _ = tx.send(r.clone());
    }));
    (held, rx)
}

/// `acquire_replacing` on a thread of its own: the outcome and the lines it said.
fn replace_in_thread(
    o: PgOptions,
    wait: Duration,
) -> std::thread::JoinHandle<(processlock_pg::Result<PgHeld>, Vec<String>)> {
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let r = acquire_replacing(
            &o,
            &lock(),
            wait,
            &Cancel::new(),
            Arc::new(|_: &processlock_pg::WaitNotice| {}),
            &mut |line, _| lines.push(line),
        );
        (r, lines)
    })
}

#[test]
fn a_holder_hears_who_asks_and_the_lock_is_taken_only_once_it_lets_go() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let o = opts(server.url());
    let (held, requests) = listening_holder(&o);
    let old = held.fencing_token().parse::<i64>().unwrap();
    let replacer = replace_in_thread(o.clone(), Duration::from_secs(30));
    let request = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(request.pid, std::process::id());
    // The replacer waits, taking nothing, while the holder holds on.
    assert!(!held.is_lost());
    assert!(!replacer.is_finished());
    held.release().unwrap();
    let (taken, lines) = replacer.join().unwrap();
    let taken = taken.unwrap();
    assert!(taken.fencing_token().parse::<i64>().unwrap() > old);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("[PROCESS_LOCK_REPLACE] Asked backend (SHORT) (PID "));
    assert!(lines[1].contains(" let go of backend (SHORT) after "));
    // Held now, its session goes by its own name again.
    let names = server.sql(&format!(
        "SELECT application_name FROM pg_stat_activity WHERE pid = {}",
        taken.backend_pid()
    ));
    assert_eq!(names, vec![vec!["processlock".to_string()]]);
    // Asked once per request: nothing more came.
    assert!(requests.try_recv().is_err());
}

#[test]
fn a_holder_that_does_not_answer_keeps_the_lock_and_the_replacer_gets_the_conflict() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let o = opts(server.url());
    let held = acquire(&o, &lock()).unwrap();
    let (r, lines) = replace_in_thread(o, Duration::from_millis(1500))
        .join()
        .unwrap();
    match r {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.holder.pid, std::process::id());
            assert!(c.waited_ms >= 1500);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(lines
        .last()
        .unwrap()
        .contains("still holds backend (SHORT) after 1500 ms; it was not killed"));
    assert!(!held.is_lost());
    assert!(held.release().unwrap());
}

#[test]
fn a_request_from_a_role_without_the_holders_privileges_is_not_seen() {
    let Some(server) = PgServer::start() else {
        return;
    };
    server.sql("CREATE ROLE intruder LOGIN PASSWORD 'intruder-secret'");
    let o = opts(server.url());
    let (held, requests) = listening_holder(&o);
    // Several heartbeats of the holder pass while the other role's request stands.
    let (r, _) = replace_in_thread(
        opts(server.url_as("intruder", "intruder-secret")),
        Duration::from_millis(3000),
    )
    .join()
    .unwrap();
    assert!(matches!(r, Err(Error::Conflict(_))), "{r:?}");
    assert!(requests.try_recv().is_err());
    // The same request from the holder's own role is heard.
    let replacer = replace_in_thread(o, Duration::from_secs(30));
    requests.recv_timeout(Duration::from_secs(30)).unwrap();
    held.release().unwrap();
    assert!(replacer.join().unwrap().0.is_ok());
}
