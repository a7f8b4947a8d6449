//! The PostgreSQL lock when the server side changes under it: the holder table emptied,
//! dropped or swapped, other roles, a session ended by the server, a server restart during a
//! wait, a waiter frozen while the lock changes hands, and errors that come from the operating
//! system. A real private server and real processes; events are ordered by what the processes
//! report, never by how long something took.

#![cfg(target_os = "linux")]

mod support;

use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use processlock::{Cancel, LockName};
use processlock_pg::{
    acquire, acquire_wait, acquire_wait_noting, inspect, Error, PgOptions, WaitNotice,
};
use support::*;

fn name() -> LockName {
    LockName::new("backend", Some("SHORT")).unwrap()
}

fn opts_for(url: String, lease_ms: u64) -> PgOptions {
    let mut o = PgOptions::new(url);
    o.lease = Duration::from_millis(lease_ms);
    o
}

fn opts(server: &PgServer, lease_ms: u64) -> PgOptions {
    opts_for(server.url(), lease_ms)
}

fn params(server: &PgServer, lease_ms: u64, wait: Option<&str>) -> Vec<(&'static str, String)> {
    let mut p = vec![("URL", server.url()), ("LEASE_MS", lease_ms.to_string())];
    if let Some(w) = wait {
        p.push(("WAIT", w.to_string()));
    }
    p
}

fn ns(s: &str) -> i128 {
    s.parse().unwrap()
}

/// Sessions waiting in the server for an advisory lock.
const WAITERS_SQL: &str =
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";

/// The server process that holds the lock exclusively, or "" when none does.
const HOLDER_SQL: &str = "SELECT coalesce(max(pid), 0) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'";

/// Takes the lock and lets it go at once; its fencing token.
fn token_of(o: &PgOptions) -> i128 {
    let held = acquire(o, &name()).unwrap();
    let token = ns(held.fencing_token());
    assert!(held.release().unwrap());
    token
}

/// A role that logs in with `password`; with `own_schema`, a schema of its own, where its
/// holder table is created (the default `search_path` is `"$user", public`).
fn create_role(server: &PgServer, role: &str, own_schema: bool) -> String {
    let password = format!("{role}-secret");
    server.sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"));
    if own_schema {
        server.sql(&format!("CREATE SCHEMA {role} AUTHORIZATION {role}"));
    }
    server.url_as(role, &password)
}

// ---------------------------------------------------------------------------------------------
// Children.

#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let o = opts_for(
        param("URL").unwrap(),
        param("LEASE_MS").unwrap().parse().unwrap(),
    );
    match role.as_str() {
        "hold" => hold(&o),
        other => panic!("unknown role {other}"),
    }
}

/// Takes the lock (at once, or waiting per `WAIT`: `forever` or milliseconds), reporting what
/// the wait says (`notice away <reason>`, `notice back <ms>`), then `acquired <token> <mono ns>
/// <server pid>`, and `lost <mono ns> <reason>` when it is lost. Obeys its stdin: `check`
/// (`check <is_lost>`, from this thread), `release`, EOF (exit).
fn hold(o: &PgOptions) {
    let notices = Arc::new(|n: &WaitNotice| match n {
        WaitNotice::ServerAway { reason } => report("notice", &["away".into(), reason.clone()]),
        WaitNotice::ServerBack { away } => {
            report("notice", &["back".into(), away.as_millis().to_string()])
        }
    });
    let taken = match param("WAIT").as_deref() {
        None => acquire(o, &name()),
        Some("forever") => acquire_wait_noting(o, &name(), None, &Cancel::new(), notices),
        Some(ms) => acquire_wait_noting(
            o,
            &name(),
            Some(Instant::now() + Duration::from_millis(ms.parse().unwrap())),
            &Cancel::new(),
            notices,
        ),
    };
    let held = match taken {
        Ok(held) => held,
        Err(e) => {
            report("error", &[e.code().to_string(), e.to_string()]);
            return;
        }
    };
    report(
        "acquired",
        &[
            held.fencing_token().to_string(),
            mono_ns().to_string(),
            held.backend_pid().to_string(),
        ],
    );
    held.on_lost(Box::new(|lost| {
        report("lost", &[mono_ns().to_string(), lost.reason.clone()])
    }));
    for line in stdin_lines() {
        match line.trim() {
            "check" => report("check", &[held.is_lost().to_string()]),
            "release" => {
                let r = held.release();
                report("released", &[mono_ns().to_string(), format!("{r:?}")]);
                return;
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fencing tokens.

#[test]
fn fencing_tokens_grow_whatever_happens_to_the_holder_table_the_role_or_the_options() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let o = opts(&server, 10_000);
    let mut tokens = vec![("first holder", token_of(&o))];
    let mut next = |what: &'static str, o: &PgOptions| {
        let token = token_of(o);
        let (before, last) = *tokens.last().unwrap();
        assert!(
            token > last,
            "{what}: token {token}, not above {last} of the {before}"
        );
        tokens.push((what, token));
    };
    next("next holder", &o);
    server.sql("TRUNCATE processlock_holders");
    next("holder after TRUNCATE", &o);
    server.sql("TRUNCATE processlock_holders");
    let mut other_table = o.clone();
    other_table.table = "other_holders".into();
    next("holder with another table", &other_table);
    server.sql("CREATE SCHEMA locks");
    other_table.table = "locks.holders".into();
    next("holder with a table in another schema", &other_table);
    server.sql("DROP TABLE processlock_holders");
    // Each role counts in a table of its own schema: alice five times, then bob.
    let alice = opts_for(create_role(&server, "alice", true), 10_000);
    let bob = opts_for(create_role(&server, "bob", true), 10_000);
    for _ in 0..5 {
        next("alice", &alice);
    }
    next("bob after alice", &bob);
    next("the first role after bob, after DROP TABLE", &o);
    println!("tokens: {tokens:?}");
}

#[test]
fn tokens_go_on_from_a_counter_already_larger_than_the_transaction_ids() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let o = opts(&server, 10_000);
    token_of(&o);
    // As after a dump and restore into a new cluster: the counter is far ahead of the ids.
    let counter: i128 = 1_000_000_000_000;
    server.sql(&format!(
        "UPDATE processlock_holders_secret SET token = {counter} WHERE lock_name <> ''"
    ));
    assert_eq!(token_of(&o), counter + 1);
    assert_eq!(token_of(&o), counter + 2);
}

/// The guide's fenced write, word for word: a write the lock protects, with $1 the holder's
/// fencing token, $2 the new quantity, $3 the row, $4 the lock's name as the holder table has it
/// (`backend.short.lock`). It is refused unless the holder table still names $1 as the lock's
/// token (a newer holder has a newer one; an emptied or dropped table has none, and the write
/// fails closed) and no newer holder has written the row.
const FENCED_WRITE: &str = "UPDATE positions SET qty = $2, last_token = $1
 WHERE id = $3 AND last_token <= $1
   AND EXISTS (SELECT 1 FROM processlock_holders
               WHERE lock_name = $4 AND token = $1)";

/// The guide's protected table.
const POSITIONS: &str = "CREATE TABLE positions (id int PRIMARY KEY, qty int NOT NULL);
ALTER TABLE positions ADD COLUMN last_token bigint NOT NULL DEFAULT 0;
INSERT INTO positions VALUES (1, 0)";

/// Runs `FENCED_WRITE`; the number of rows written (an error counts as none).
fn fenced_write(server: &PgServer, token: &str, qty: i32) -> u64 {
    let url = server.url();
    let token: i64 = token.parse().unwrap();
    with_client(url, move |client| async move {
        let lock_name = name().file_name();
        client
            .execute(FENCED_WRITE, &[&token, &qty, &1i32, &lock_name])
            .await
            .unwrap_or(0)
    })
}

#[test]
fn the_fenced_write_refuses_a_stale_holder_and_fails_closed_on_an_emptied_table() {
    let Some(server) = PgServer::start() else {
        return;
    };
    server.sql(POSITIONS);
    let o = opts(&server, 10_000);
    let stale = acquire(&o, &name()).unwrap();
    let stale_token = stale.fencing_token().to_string();
    assert_eq!(fenced_write(&server, &stale_token, 1), 1);

    // The holder table is emptied under the holder: its writes are refused from now on.
    server.sql("TRUNCATE processlock_holders");
    assert_eq!(fenced_write(&server, &stale_token, 2), 0);

    // Its session ends (it does not know yet); a new holder takes over.
    server.sql(&format!(
        "SELECT pg_terminate_backend({})",
        stale.backend_pid()
    ));
    let fresh = acquire_wait(&o, &name(), None, &Cancel::new()).unwrap();
    let fresh_token = fresh.fencing_token().to_string();
    assert!(ns(&fresh_token) > ns(&stale_token));
    // The stale holder is refused before and after the new holder's first write.
    assert_eq!(fenced_write(&server, &stale_token, 3), 0);
    assert_eq!(fenced_write(&server, &fresh_token, 4), 1);
    assert_eq!(fenced_write(&server, &stale_token, 5), 0);
    assert_eq!(
        server.sql("SELECT qty, last_token FROM positions"),
        vec![vec!["4".to_string(), fresh_token.clone()]]
    );

    // A dropped table: refused too (the statement fails), never written.
    server.sql("DROP TABLE processlock_holders");
    assert_eq!(fenced_write(&server, &fresh_token, 6), 0);
    // Nor does it keep the holder from letting go.
    drop(stale);
    assert!(fresh.release().unwrap());
    assert_eq!(server.sql(HOLDER_SQL)[0][0], "0");
}

#[test]
fn another_role_looks_at_a_lock_only_once_granted_to_read_both_tables() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let held = acquire(&opts(&server, 10_000), &name()).unwrap();
    // A schema of its own, or none: either way the holder table is found in `public`, and the
    // secret that keys the lock cannot be read. The role is told what it lacks.
    for url in [
        create_role(&server, "alice", true),
        create_role(&server, "bob", false),
    ] {
        let err = inspect(&opts_for(url, 10_000), &name()).expect_err("no right to read");
        assert_eq!(err.code().as_str(), "LOCK_IO");
        assert!(
            err.to_string()
                .contains("may not read public.processlock_holders_secret"),
            "{err}"
        );
        assert_eq!(err.sqlstate(), Some("42501"));
    }
    // Granted the right to read both, it finds the holder and reads the record.
    server.sql("GRANT SELECT ON processlock_holders, processlock_holders_secret TO bob");
    let seen = inspect(
        &opts_for(server.url_as("bob", "bob-secret"), 10_000),
        &name(),
    )
    .unwrap()
    .expect("held");
    assert_eq!(seen.backend_pid, held.backend_pid());
    assert_eq!(seen.record.pid, std::process::id());
    assert_eq!(seen.fencing_token.as_deref(), Some(held.fencing_token()));
    assert!(held.release().unwrap());
    assert!(inspect(
        &opts_for(server.url_as("bob", "bob-secret"), 10_000),
        &name()
    )
    .unwrap()
    .is_none());
}

// ---------------------------------------------------------------------------------------------
// A session the server ends.

#[test]
fn a_holder_hears_at_once_that_the_server_ended_its_session() {
    let Some(server) = PgServer::start() else {
        return;
    };
    // A heartbeat every 15 minutes: the loss can only be heard from the connection itself.
    let lease_ms = 3_600_000;
    let a = Proc::spawn("hold", &params(&server, lease_ms, None));
    let got = a.expect("acquired");
    let (token_a, backend_a) = (ns(&got[1]), got[3].clone());
    let ended = server.sql(&format!("SELECT pg_terminate_backend({backend_a})"));
    assert_eq!(ended[0][0], "t");
    let lost = a.expect("lost");
    let reason = lost[2..].join(" ");
    assert!(
        reason.contains("terminating connection due to administrator command"),
        "{reason}"
    );
    // Only now may a successor try: it finds the lock free, with a newer token.
    let b = Proc::spawn("hold", &params(&server, lease_ms, None));
    let got = b.expect("acquired");
    assert!(ns(&got[1]) > token_a);
    assert!(ns(&lost[1]) < ns(&got[2]));
}

/// The thread of `pid` that runs its held lock (`processlock-pg`).
fn lock_thread(pid: u32) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let found: Vec<String> = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "processlock-pg")
        })
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(found.len(), 1, "one lock thread in {pid}: {found:?}");
    found[0].clone()
}

/// A tracer that lets go when the test ends, also when it fails.
struct Tracer(std::process::Child);

impl Tracer {
    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.end();
    }
}

/// The state letter of thread `tid` of `pid` (`t`: stopped by a tracer).
fn thread_state(pid: u32, tid: &str) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.chars().next().unwrap()
}

#[test]
fn a_holder_knows_its_session_was_ended_even_while_its_lock_thread_cannot_run() {
    if Command::new("strace").arg("-V").output().is_err() {
        println!("SKIPPED: holding one thread still needs strace");
        return;
    }
    let Some(server) = PgServer::start() else {
        return;
    };
    let lease_ms = 3_600_000;
    let mut a = Proc::spawn("hold", &params(&server, lease_ms, None));
    let got = a.expect("acquired");
    let (token_a, backend_a) = (ns(&got[1]), got[3].clone());
    // strace holds the lock's thread, and only it, at its next wait for the network, for a
    // minute: it cannot read what the server sends, let alone declare a loss.
    let tid = lock_thread(a.pid);
    let calls = "epoll_wait,epoll_pwait,epoll_pwait2";
    let mut strace = Tracer(
        Command::new("strace")
            .args(["-qq", "-o", "/dev/null", "-p", &tid, "-e"])
            .arg(format!("trace={calls}"))
            .arg("-e")
            .arg(format!("inject={calls}:delay_enter=60000000"))
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + TIMEOUT;
    while thread_state(a.pid, &tid) != 't' {
        assert!(
            Instant::now() < until,
            "strace did not hold the lock's thread"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    a.say("check");
    assert_eq!(a.expect("check")[1], "false", "held, and nothing said yet");

    let ended = server.sql(&format!("SELECT pg_terminate_backend({backend_a})"));
    assert_eq!(ended[0][0], "t");
    server.wait_until(
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {backend_a}"),
        "0",
    );
    // The server has let go of the lock; the holder's lock thread is still held.
    assert_eq!(thread_state(a.pid, &tid), 't');
    a.say("check");
    assert_eq!(
        a.expect("check")[1],
        "true",
        "the holder knows, from the socket itself"
    );
    let b = Proc::spawn("hold", &params(&server, lease_ms, None));
    assert!(ns(&b.expect("acquired")[1]) > token_a);
    a.say("check");
    assert_eq!(a.expect("check")[1], "true");

    // Its release (which waits for the lock's thread) finds nothing to let go, and no error:
    // once let go, the lock's thread declares the loss as any other.
    a.say("release");
    strace.end();
    let lost = a.expect("lost");
    println!("then declared: {}", lost[2..].join(" "));
    assert_eq!(a.expect("released")[2], "Ok(false)");
}

// ---------------------------------------------------------------------------------------------
// Waits across a server restart.

#[test]
fn a_waiter_rides_out_a_server_restart_and_says_so() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let lease_ms = 3_000;
    let a = Proc::spawn("hold", &params(&server, lease_ms, None));
    let token_a = ns(&a.expect("acquired")[1]);
    let w = Proc::spawn("hold", &params(&server, lease_ms, Some("forever")));
    server.wait_until(WAITERS_SQL, "1");

    server.stop();
    a.expect("lost");
    let away = w.expect("notice");
    assert_eq!(away[1], "away", "{away:?}");
    server.restart();
    let back = w.expect("notice");
    assert_eq!(back[1], "back", "{back:?}");
    let got = w.expect("acquired");
    assert!(ns(&got[1]) > token_a, "a newer token after the restart");
    assert_eq!(server.sql(HOLDER_SQL)[0][0], got[3]);
}

#[test]
fn a_wait_ends_at_its_deadline_or_its_cancel_while_the_server_is_away() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let o = opts(&server, 3_000);
    let holder = acquire(&o, &name()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let waiting = {
        let o = o.clone();
        std::thread::spawn(move || acquire_wait(&o, &name(), Some(deadline), &Cancel::new()))
    };
    server.wait_until(WAITERS_SQL, "1");
    server.stop();
    match waiting.join().unwrap() {
        Err(e @ Error::Io { .. }) => {
            assert!(
                Instant::now() >= deadline,
                "gave up before its deadline: {e}"
            );
            println!("at the deadline: {e}");
        }
        other => panic!("expected LOCK_IO at the deadline, got {other:?}"),
    }
    assert!(holder.wait_lost(Some(TIMEOUT)).is_some());

    // Waiting without a deadline: only a cancel ends it while the server is away.
    server.restart();
    let holder = acquire(&o, &name()).unwrap();
    let cancel = Cancel::new();
    let (said, heard) = mpsc::channel();
    let said = Mutex::new(said);
    let waiting = {
        let (o, cancel) = (o.clone(), cancel.clone());
        std::thread::spawn(move || {
            let notices = Arc::new(move |n: &WaitNotice| {
                let _ = said.lock().unwrap().send(n.clone());
            });
            acquire_wait_noting(&o, &name(), None, &cancel, notices)
        })
    };
    server.wait_until(WAITERS_SQL, "1");
    server.stop();
    match heard.recv_timeout(TIMEOUT) {
        Ok(WaitNotice::ServerAway { reason }) => println!("away: {reason}"),
        other => panic!("expected the server to be away, got {other:?}"),
    }
    cancel.cancel();
    match waiting.join().unwrap() {
        Err(Error::Aborted) => {}
        other => panic!("expected LOCK_ABORTED, got {other:?}"),
    }
    assert!(heard.try_recv().is_err(), "nothing more was said");
    drop(holder);
}

// ---------------------------------------------------------------------------------------------
// A frozen waiter.

#[test]
fn a_frozen_waiter_does_not_hold_up_the_next_one() {
    let Some(server) = PgServer::start() else {
        return;
    };
    // An hour: were the lock granted to the frozen waiter, nobody would have it for an hour.
    let lease_ms = 3_600_000;
    let mut a = Proc::spawn("hold", &params(&server, lease_ms, None));
    let token_a = ns(&a.expect("acquired")[1]);
    let mut w1 = Proc::spawn("hold", &params(&server, lease_ms, Some("forever")));
    server.wait_until(WAITERS_SQL, "1");
    let mut w2 = Proc::spawn("hold", &params(&server, lease_ms, Some("forever")));
    server.wait_until(WAITERS_SQL, "2");

    freeze(w1.pid);
    a.say("release");
    a.expect("released");
    let got = w2.expect("acquired");
    let token_w2 = ns(&got[1]);
    assert!(token_w2 > token_a);
    // The server says so too, while the first waiter is still stopped.
    assert_eq!(server.sql(HOLDER_SQL)[0][0], got[3]);

    // Woken, the first waiter waits again behind the new holder: never a second owner.
    send_signal(w1.pid, libc::SIGCONT);
    server.wait_until(WAITERS_SQL, "1");
    assert_eq!(server.sql(HOLDER_SQL)[0][0], got[3]);
    w2.say("release");
    w2.expect("released");
    let got = w1.expect("acquired");
    assert!(ns(&got[1]) > token_w2);
    w1.say("release");
    w1.expect("released");
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[test]
fn the_longest_lease_can_be_held() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let held = acquire(&opts(&server, 24 * 3_600_000), &name()).unwrap();
    assert!(held.release().unwrap());
}

#[test]
fn server_errors_carry_the_os_error_or_the_sqlstate() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = acquire(
        &PgOptions::new(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        &name(),
    )
    .unwrap_err();
    assert_eq!(
        (e.op(), e.os_error(), e.sqlstate()),
        (
            Some("connect"),
            Some((libc::ECONNREFUSED, "ECONNREFUSED")),
            None
        ),
        "{e}"
    );

    let wrong = format!(
        "postgres://postgres:wrong@127.0.0.1:{}/postgres",
        server.port
    );
    let e = acquire(&PgOptions::new(wrong), &name()).unwrap_err();
    assert_eq!(
        (e.op(), e.os_error(), e.sqlstate()),
        (Some("connect"), None, Some("28P01")),
        "{e}"
    );
}
