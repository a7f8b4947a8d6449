//! The PostgreSQL lock against a real private server and real processes: conflicts, takeover
//! after death and after a freeze, fencing tokens over many handovers, waits, and failures.

#![cfg(target_os = "linux")]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use processlock::{Cancel, ErrorCode, LockName};
use processlock_pg::{
    acquire, acquire_wait, clear_stale, inspect, list, terminate_holder, Error, PgOptions,
};
use support::*;

fn name(ty: &str) -> LockName {
    LockName::new(ty, Some("SHORT")).unwrap()
}

fn opts(server: &PgServer, lease_ms: u64) -> PgOptions {
    let mut o = PgOptions::new(server.url());
    o.lease = Duration::from_millis(lease_ms);
    o
}

/// A child's parameters: the server, the lease and `extra` (`TYPE`, `WAIT`, `N`).
fn params(
    server: &PgServer,
    lease_ms: u64,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut p = vec![("URL", server.url()), ("LEASE_MS", lease_ms.to_string())];
    p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    p
}

const WAITERS_SQL: &str =
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";

fn ns(s: &str) -> i128 {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Children.

#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let mut o = PgOptions::new(param("URL").unwrap());
    o.lease = Duration::from_millis(param("LEASE_MS").unwrap().parse().unwrap());
    let lock = name(&param("TYPE").unwrap_or_else(|| "backend".into()));
    match role.as_str() {
        "hold" => hold(&o, &lock),
        "cycles" => cycles(&o, &lock),
        "tries" => tries(&o, &lock),
        other => panic!("unknown role {other}"),
    }
}

/// Takes the lock (at once, or waiting per `WAIT`: `forever` or milliseconds), reports, then
/// obeys its stdin: `release`, `until` (the guarantee's end), EOF (exit).
fn hold(o: &PgOptions, lock: &LockName) {
    let taken = match param("WAIT").as_deref() {
        None => acquire(o, lock),
        Some("forever") => acquire_wait(o, lock, None, &Cancel::new()),
        Some(ms) => acquire_wait(
            o,
            lock,
            Some(Instant::now() + Duration::from_millis(ms.parse().unwrap())),
            &Cancel::new(),
        ),
    };
    let held = match taken {
        Ok(held) => held,
        Err(Error::Conflict(c)) => {
            report(
                "conflict",
                &[
                    c.holder.pid.to_string(),
                    c.holder.hostname.unwrap_or_default(),
                    c.fencing_token.unwrap_or_default(),
                ],
            );
            return;
        }
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
            held.record().hostname.clone().unwrap_or_default(),
            held.backend_pid().to_string(),
        ],
    );
    held.on_lost(Box::new(|lost| {
        report("lost", &[mono_ns().to_string(), lost.reason.clone()])
    }));
    for line in stdin_lines() {
        match line.trim() {
            "until" => report("until", &[instant_ns(held.guaranteed_until()).to_string()]),
            "release" => {
                let t = mono_ns();
                let r = held.release();
                report("released", &[t.to_string(), format!("{r:?}")]);
                return;
            }
            _ => {}
        }
    }
}

/// `N` times: wait for the lock, note when it was ours and its token, let go.
fn cycles(o: &PgOptions, lock: &LockName) {
    let n: u32 = param("N").unwrap().parse().unwrap();
    for _ in 0..n {
        let held = acquire_wait(o, lock, None, &Cancel::new()).unwrap();
        let from = mono_ns();
        let token = held.fencing_token().to_string();
        let to = mono_ns();
        assert!(held.release().unwrap(), "released while held");
        report("cycle", &[token, from.to_string(), to.to_string()]);
    }
    report("done", &[]);
}

/// Like `cycles`, but never waits in the server: tries again at once after each conflict.
fn tries(o: &PgOptions, lock: &LockName) {
    let n: u32 = param("N").unwrap().parse().unwrap();
    let mut conflicts = 0u64;
    for _ in 0..n {
        let held = loop {
            match acquire(o, lock) {
                Ok(held) => break held,
                Err(Error::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        };
        let from = mono_ns();
        let token = held.fencing_token().to_string();
        let to = mono_ns();
        assert!(held.release().unwrap(), "released while held");
        report("cycle", &[token, from.to_string(), to.to_string()]);
    }
    report("done", &[conflicts.to_string()]);
}

/// The `cycle` reports of `children` until each says `done`: `(from, to, token)`, sorted.
fn ownership(children: &[Proc]) -> Vec<(i128, i128, i128)> {
    let mut cycles = Vec::new();
    for c in children {
        loop {
            let r = c.next();
            match r[0].as_str() {
                "cycle" => cycles.push((ns(&r[2]), ns(&r[3]), ns(&r[1]))),
                "done" => {
                    if let Some(conflicts) = r.get(1).filter(|s| !s.is_empty()) {
                        println!("child {}: {conflicts} conflicts on the way", c.pid);
                    }
                    break;
                }
                _ => panic!("child {} said {r:?}", c.pid),
            }
        }
    }
    cycles.sort();
    cycles
}

/// No two intervals overlap, and tokens grow with time.
fn assert_one_owner_at_a_time(cycles: &[(i128, i128, i128)]) {
    for w in cycles.windows(2) {
        let ((_, end, token), (start, _, next_token)) = (w[0], w[1]);
        assert!(
            end < start,
            "two holders at once: {:?} and {:?}",
            w[0],
            w[1]
        );
        assert!(
            next_token > token,
            "token went from {token} to {next_token}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_holder_is_named_across_processes_and_hosts() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let mut a = Proc::spawn("hold", &params(&server, 10_000, &[]));
    let got = a.expect("acquired");
    let (token_a, host_a) = (got[1].clone(), got[3].clone());

    // The same process tree: the conflict names the holder, as a lock file's would.
    match acquire(&opts(&server, 10_000), &name("backend")) {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.holder.pid, a.pid);
            assert_eq!(c.holder.trade_side.as_deref(), Some("SHORT"));
            assert_eq!(c.holder.process_name, "trader-short-backend");
            assert_eq!(c.holder.hostname.as_deref(), Some(host_a.as_str()));
            assert_eq!(
                c.holder.start_token,
                processlock::testing::start_token(a.pid)
            );
            assert_eq!(c.fencing_token.as_deref(), Some(token_a.as_str()));
            assert_eq!(c.client_addr.as_deref(), Some("127.0.0.1"));
            assert_eq!(c.waited_ms, 0);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let seen = inspect(&opts(&server, 10_000), &name("backend"))
        .unwrap()
        .expect("held");
    assert_eq!(seen.record.pid, a.pid);
    assert_eq!(seen.fencing_token.as_deref(), Some(token_a.as_str()));
    // Another lock name is another lock.
    assert!(inspect(&opts(&server, 10_000), &name("worker"))
        .unwrap()
        .is_none());

    // Another host (another UTS namespace) sharing only the URL.
    let other_host = || {
        let mut c = Command::new("unshare");
        c.args([
            "--uts",
            "sh",
            "-c",
            "hostname other-host && exec \"$0\" \"$@\"",
        ]);
        c
    };
    let b = Proc::spawn_with(other_host(), "hold", &params(&server, 10_000, &[]));
    let got = b.expect("conflict");
    assert_eq!(
        got[1..],
        [a.pid.to_string(), host_a.clone(), token_a.clone()]
    );

    a.say("release");
    assert_eq!(a.expect("released")[2], "Ok(true)");
    let c = Proc::spawn_with(other_host(), "hold", &params(&server, 10_000, &[]));
    let got = c.expect("acquired");
    assert_eq!(got[3], "other-host");
    assert!(
        ns(&got[1]) > ns(&token_a),
        "a new holder gets a larger token"
    );
    let seen = inspect(&opts(&server, 10_000), &name("backend"))
        .unwrap()
        .expect("held");
    assert_eq!(seen.record.pid, c.pid);
    assert_eq!(seen.record.hostname.as_deref(), Some("other-host"));
}

#[test]
fn a_killed_holder_is_taken_over_without_waiting_for_the_lease() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let lease_ms = 10_000;
    let mut a = Proc::spawn("hold", &params(&server, lease_ms, &[]));
    let token_a = ns(&a.expect("acquired")[1]);
    let b = Proc::spawn("hold", &params(&server, lease_ms, &[("WAIT", "forever")]));
    server.wait_until(WAITERS_SQL, "1");

    let killed = mono_ns();
    a.kill9();
    let got = b.expect("acquired");
    let took_ms = (ns(&got[2]) - killed) / 1_000_000;
    println!("taken over {took_ms} ms after kill -9");
    // The guarantee: the server frees the lock when the holder's session ends, not a lease later.
    assert!(
        took_ms < lease_ms as i128,
        "took {took_ms} ms: the lock was freed by the lease, not by the holder's death"
    );
    assert!(ns(&got[1]) > token_a);

    // A plain attempt by a third process meets the new holder.
    let c = Proc::spawn("hold", &params(&server, lease_ms, &[]));
    assert_eq!(c.expect("conflict")[1], b.pid.to_string());
}

#[test]
fn a_frozen_holder_gives_up_before_anyone_takes_over() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let lease_ms: u64 = 2_000;
    let mut a = Proc::spawn("hold", &params(&server, lease_ms, &[]));
    let token_a = ns(&a.expect("acquired")[1]);
    let b = Proc::spawn("hold", &params(&server, lease_ms, &[("WAIT", "forever")]));
    server.wait_until(WAITERS_SQL, "1");

    let stopped = mono_ns();
    send_signal(a.pid, libc::SIGSTOP);
    let got = b.expect("acquired");
    let taken = ns(&got[2]);
    let after_ms = (taken - stopped) / 1_000_000;
    println!("taken over {after_ms} ms after SIGSTOP (lease {lease_ms} ms)");
    // The guarantee: the server frees a silent holder's lock about a lease after it last heard
    // from it (the bound adds scheduling slack on a loaded machine).
    assert!(
        after_ms < lease_ms as i128 + 3_000,
        "a frozen holder kept the lock {after_ms} ms"
    );
    assert!(ns(&got[1]) > token_a);

    send_signal(a.pid, libc::SIGCONT);
    let lost = a.expect("lost");
    println!("the old holder reported: {}", lost[2..].join(" "));
    a.say("until");
    let until = ns(&a.expect("until")[1]);
    // The guarantee: the old holder's claim on the lock ended before the new holder had it.
    assert!(
        until < taken,
        "the old holder counted the lock as its own until {} ms after the new holder took it",
        (until - taken) / 1_000_000
    );
}

#[test]
fn fencing_tokens_strictly_increase_over_a_thousand_handovers() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let (procs, rounds) = (4, 250);
    let children: Vec<Proc> = (0..procs)
        .map(|_| {
            let mut p = params(&server, 10_000, &[("N", &rounds.to_string())]);
            p[0].1 = server.socket_url();
            Proc::spawn("cycles", &p)
        })
        .collect();
    let cycles = ownership(&children);
    assert_eq!(cycles.len(), procs * rounds);
    assert_one_owner_at_a_time(&cycles);
}

#[test]
fn eight_processes_racing_without_waiting_never_own_the_lock_together() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let (procs, rounds) = (8, 40);
    let children: Vec<Proc> = (0..procs)
        .map(|_| {
            let mut p = params(&server, 10_000, &[("N", &rounds.to_string())]);
            p[0].1 = server.socket_url();
            Proc::spawn("tries", &p)
        })
        .collect();
    let cycles = ownership(&children);
    assert_eq!(cycles.len(), procs * rounds);
    assert_one_owner_at_a_time(&cycles);
}

#[test]
fn a_holder_that_exits_without_releasing_lets_go() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let mut a = Proc::spawn("hold", &params(&server, 10_000, &[]));
    a.expect("acquired");
    assert!(a.wait_exit().success());
    // Dropping the held lock at exit released it: no holder, no record left behind.
    assert!(inspect(&opts(&server, 10_000), &name("backend"))
        .unwrap()
        .is_none());
    let rows = server.sql("SELECT record IS NULL FROM processlock_holders");
    assert_eq!(rows, vec![vec!["t".to_string()]]);
}

#[test]
fn a_waiter_is_woken_on_release_and_the_record_is_cleared() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let mut a = Proc::spawn("hold", &params(&server, 10_000, &[]));
    let token_a = a.expect("acquired")[1].clone();
    let b = Proc::spawn("hold", &params(&server, 10_000, &[("WAIT", "forever")]));
    server.wait_until(WAITERS_SQL, "1");
    a.say("release");
    let released = a.expect("released");
    assert_eq!(released[2], "Ok(true)");
    let got = b.expect("acquired");
    assert!(ns(&got[2]) > ns(&released[1]));
    assert!(ns(&got[1]) > ns(&token_a));

    drop(b); // killed: its session ends without a release
    server.wait_until(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        "0",
    );
    let mut c = Proc::spawn("hold", &params(&server, 10_000, &[]));
    let token_c = c.expect("acquired")[1].clone();
    assert!(ns(&token_c) > ns(&got[1]));
    c.say("release");
    c.expect("released");
    // The record is cleared; the row keeps the last token handed out.
    let rows =
        server.sql("SELECT record IS NULL, backend_pid IS NULL, token FROM processlock_holders");
    assert_eq!(rows, vec![vec!["t".to_string(), "t".into(), token_c]]);
}

#[test]
fn a_wait_can_be_cancelled_or_run_out() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let a = Proc::spawn("hold", &params(&server, 10_000, &[]));
    a.expect("acquired");

    let cancel = Cancel::new();
    let waiting = {
        let (o, cancel) = (opts(&server, 10_000), cancel.clone());
        std::thread::spawn(move || acquire_wait(&o, &name("backend"), None, &cancel))
    };
    server.wait_until(WAITERS_SQL, "1");
    cancel.cancel();
    match waiting.join().unwrap() {
        Err(Error::Aborted) => {}
        other => panic!("expected LOCK_ABORTED, got {other:?}"),
    }
    // The cancelled session waits no more, and the holder still holds.
    server.wait_until(WAITERS_SQL, "0");
    // Ended by the protocol's cancel request, not by the closed connection.
    assert!(
        server
            .log()
            .contains("canceling statement due to user request"),
        "the wait ended some other way:\n{}",
        server.log()
    );
    assert_eq!(
        inspect(&opts(&server, 10_000), &name("backend"))
            .unwrap()
            .unwrap()
            .record
            .pid,
        a.pid
    );

    let started = Instant::now();
    let deadline = started + Duration::from_millis(300);
    match acquire_wait(
        &opts(&server, 10_000),
        &name("backend"),
        Some(deadline),
        &Cancel::new(),
    ) {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.holder.pid, a.pid);
            assert!(c.waited_ms >= 300, "waited {} ms", c.waited_ms);
            assert!(Instant::now() >= deadline);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn unreachable_servers_and_bad_urls_are_coded_errors_within_the_connect_timeout() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let lock = name("backend");
    let code_of = |url: String, timeout_ms: u64| {
        let mut o = PgOptions::new(url);
        o.connect_timeout = Duration::from_millis(timeout_ms);
        let started = Instant::now();
        let e = acquire(&o, &lock).expect_err("no lock");
        (e, started.elapsed())
    };

    let (e, _) = code_of(
        "postgres://postgres@127.0.0.1:notaport/postgres".into(),
        1000,
    );
    assert_eq!(e.code(), "LOCK_INVALID_OPTION", "{e}");

    let wrong = format!(
        "postgres://postgres:wrong@127.0.0.1:{}/postgres",
        server.port
    );
    let (e, _) = code_of(wrong, 5000);
    assert_eq!(
        (e.code(), e.op(), e.sqlstate()),
        (ErrorCode::Io, Some("connect"), Some("28P01")),
        "{e}"
    );
    assert!(
        !e.to_string().contains("wrong"),
        "the password is not repeated: {e}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (e, _) = code_of(
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        5000,
    );
    assert_eq!((e.code(), e.op()), (ErrorCode::Io, Some("connect")), "{e}");

    // Accepts connections (the kernel does, into the backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (e, took) = code_of(
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        500,
    );
    assert_eq!((e.code(), e.op()), (ErrorCode::Io, Some("connect")), "{e}");
    // The guarantee: never a hang, the connect timeout bounds it (plus slack for a loaded machine).
    assert!(took < Duration::from_millis(500 + 3_000), "took {took:?}");
    drop(silent);
}

#[test]
fn a_server_that_stops_mid_hold_means_the_lock_is_lost() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let lease_ms = 2_000;
    let held = acquire(&opts(&server, lease_ms), &name("backend")).unwrap();
    assert!(!held.is_lost());
    server.stop();
    let lost = held
        .wait_lost(Some(Duration::from_millis(lease_ms + 5_000)))
        .expect("the loss is reported within the lease");
    println!("lost: {}", lost.reason);
    assert!(held.is_lost());
    assert_eq!(lost.fencing_token, held.fencing_token());
    assert!(held.guaranteed_until() <= Instant::now());
    assert!(!held.release().unwrap(), "nothing left to release");
}

#[test]
fn many_first_users_at_once_create_the_holder_table_once() {
    let Some(server) = PgServer::start() else {
        return;
    };
    // An uncommitted table of the same name makes every first user's CREATE wait on it; the
    // rollback then lets them race, and all but one lose with a unique violation.
    let tx = OpenTx::begin(&server, "CREATE TABLE processlock_holders (x int)");
    let n = 6;
    let children: Vec<Proc> = (0..n)
        .map(|i| {
            Proc::spawn(
                "hold",
                &params(&server, 10_000, &[("TYPE", &format!("worker{i}"))]),
            )
        })
        .collect();
    server.wait_until(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'CREATE TABLE%'",
        &n.to_string(),
    );
    tx.finish("ROLLBACK");
    let mut tokens: Vec<String> = children
        .iter()
        .map(|c| c.expect("acquired")[1].clone())
        .collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), n, "one token per holder: {tokens:?}");
    let rows = server.sql("SELECT count(*) FROM processlock_holders WHERE record IS NOT NULL");
    assert_eq!(rows[0][0], n.to_string());
}

#[test]
fn a_heartbeat_cancelled_by_an_administrator_does_not_lose_the_lock() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let held = acquire(&opts(&server, 10_000), &name("backend")).unwrap();
    // Holds the next heartbeat in the server, where an administrator's cancel can reach it.
    let tx = OpenTx::begin(
        &server,
        "LOCK TABLE pg_catalog.pg_locks IN ACCESS EXCLUSIVE MODE",
    );
    let blocked = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {} AND wait_event_type = 'Lock'",
        held.backend_pid()
    );
    server.wait_until(&blocked, "1");
    let cancelled = server.sql(&format!("SELECT pg_cancel_backend({})", held.backend_pid()));
    assert_eq!(cancelled[0][0], "t");
    tx.finish("ROLLBACK");

    // The next heartbeat is confirmed: the guarantee moves on, the lock was never lost.
    let before = held.guaranteed_until();
    let until = Instant::now() + TIMEOUT;
    while held.guaranteed_until() == before && !held.is_lost() {
        assert!(Instant::now() < until, "no heartbeat after the cancel");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!held.is_lost(), "lost: {:?}", held.lost());
    assert!(held.release().unwrap());
}

#[test]
fn a_wait_can_be_cancelled_while_still_connecting() {
    // Accepts connections (the kernel does, into the backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut o = PgOptions::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    o.connect_timeout = Duration::from_secs(20);
    let cancel = Cancel::new();
    let waiting = {
        let cancel = cancel.clone();
        std::thread::spawn(move || acquire_wait(&o, &name("backend"), None, &cancel))
    };
    // Wait until the connection is made, so the cancel lands during the login.
    let (_conn, _) = silent.accept().unwrap();
    cancel.cancel();
    match waiting.join().unwrap() {
        Err(Error::Aborted) => {}
        other => panic!("expected LOCK_ABORTED, got {other:?}"),
    }
}

#[test]
fn a_read_only_standby_is_refused() {
    let Some(primary) = PgServer::start() else {
        return;
    };
    let standby = primary.start_standby();
    standby.wait_until("SELECT pg_is_in_recovery()", "t");
    match acquire(&opts(&standby, 10_000), &name("backend")) {
        Err(e @ Error::Unsupported { .. }) => {
            assert_eq!(e.code(), "LOCK_UNSUPPORTED");
            assert!(e.to_string().contains("standby"), "{e}");
        }
        other => panic!("expected LOCK_UNSUPPORTED, got {other:?}"),
    }
    // Nothing is left behind on the standby: no session holds a lock there.
    standby.wait_until(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        "0",
    );
}

#[test]
fn a_pooler_in_transaction_mode_is_refused_and_one_in_session_mode_works() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let Some(pooler) = Pooler::start(&server, "transaction") else {
        return;
    };
    let through = |url: String| {
        let mut o = PgOptions::new(url);
        o.lease = Duration::from_secs(10);
        o
    };
    match acquire(&through(pooler.url()), &name("backend")) {
        Err(e @ Error::Unsupported { .. }) => {
            assert!(e.to_string().contains("transaction mode"), "{e}")
        }
        other => panic!("expected LOCK_UNSUPPORTED, got {other:?}"),
    }
    drop(pooler);

    let Some(pooler) = Pooler::start(&server, "session") else {
        return;
    };
    let held = acquire(&through(pooler.url()), &name("backend")).unwrap();
    match acquire(&through(pooler.url()), &name("backend")) {
        Err(Error::Conflict(c)) => assert_eq!(c.holder.pid, std::process::id()),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(held.release().unwrap());
    acquire(&through(server.url()), &name("backend"))
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn a_cut_off_holder_gives_up_before_anyone_takes_over() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let lease_ms: u64 = 2_000;
    let a = Proc::spawn("hold", &params(&server, lease_ms, &[]));
    let got = a.expect("acquired");
    let token_a = ns(&got[1]);
    let client_port: u16 = server.sql(&format!(
        "SELECT client_port FROM pg_stat_activity WHERE pid = {}",
        got[4]
    ))[0][0]
        .parse()
        .unwrap();
    // The waiter reaches the server by its Unix socket, away from the cut.
    let mut p = params(&server, lease_ms, &[("WAIT", "forever")]);
    p[0].1 = server.socket_url();
    let b = Proc::spawn("hold", &p);
    server.wait_until(WAITERS_SQL, "1");

    let Some(cut) = Cut::start(client_port) else {
        return;
    };
    let started = mono_ns();
    let lost = a.expect("lost");
    let got = b.expect("acquired");
    drop(cut);
    let (lost_at, taken) = (ns(&lost[1]), ns(&got[2]));
    println!(
        "cut off: the holder gave up after {} ms, the lock was taken over after {} ms (lease {lease_ms} ms)",
        (lost_at - started) / 1_000_000,
        (taken - started) / 1_000_000
    );
    // The guarantees: the holder learns first, and the server frees the lock about a lease
    // after it last heard from the holder (the bound adds slack for a loaded machine).
    assert!(
        lost_at < taken,
        "the new holder had the lock before the old one gave up"
    );
    assert!((taken - started) / 1_000_000 < lease_ms as i128 + 3_000);
    assert!(ns(&got[1]) > token_a);
    let mut a = a;
    a.say("until");
    assert!(ns(&a.expect("until")[1]) < taken);
}

#[test]
fn operators_list_locks_clear_stale_records_and_end_holders() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let o = opts(&server, 10_000);
    assert!(list(&o).unwrap().is_empty(), "no table yet, no locks");
    let a = Proc::spawn("hold", &params(&server, 10_000, &[]));
    a.expect("acquired");
    let mut b = Proc::spawn("hold", &params(&server, 10_000, &[("TYPE", "worker")]));
    b.expect("acquired");
    b.kill9();
    acquire(&o, &name("job")).unwrap().release().unwrap();
    server.wait_until(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        "1",
    );

    // Listed: what is held now, and what a dead holder left behind; not what was let go.
    let locks = list(&o).unwrap();
    let names: Vec<&str> = locks.iter().map(|l| l.lock_name.as_str()).collect();
    assert_eq!(names, ["backend.short.lock", "worker.short.lock"]);
    let (backend, worker) = (&locks[0], &locks[1]);
    assert_eq!(backend.name, Some(name("backend")));
    let holder = backend.holder.as_ref().expect("held");
    assert_eq!(holder.record.pid, a.pid);
    let token_a = ns(holder.fencing_token.as_deref().expect("a token"));
    assert_eq!(holder.client_addr.as_deref(), Some("127.0.0.1"));
    assert!(worker.holder.is_none());
    assert_eq!(worker.stale.as_ref().map(|r| r.pid), Some(b.pid));

    assert_eq!(clear_stale(&o).unwrap(), ["worker.short.lock"]);
    assert_eq!(clear_stale(&o).unwrap(), Vec::<String>::new());
    let locks = list(&o).unwrap();
    assert_eq!(locks.len(), 1, "the cleared record is no longer listed");
    assert_eq!(locks[0].holder.as_ref().map(|h| h.record.pid), Some(a.pid));

    let ended = terminate_holder(&o, &name("backend"))
        .unwrap()
        .expect("a holder");
    assert_eq!(ended.record.pid, a.pid);
    println!("the holder was told: {}", a.expect("lost")[2..].join(" "));
    let held = acquire(&o, &name("backend")).unwrap();
    assert!(ns(held.fencing_token()) > token_a);
    assert!(terminate_holder(&o, &name("job")).unwrap().is_none());
}

#[test]
fn a_server_restart_ends_every_hold_and_tokens_still_grow() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let a = Proc::spawn("hold", &params(&server, 2_000, &[]));
    let token_a = ns(&a.expect("acquired")[1]);
    // A crash and restart (as after a failover): every session ends, every lock is free.
    server.stop();
    server.restart();
    println!("the holder was told: {}", a.expect("lost")[2..].join(" "));
    let b = Proc::spawn("hold", &params(&server, 2_000, &[]));
    let token_b = ns(&b.expect("acquired")[1]);
    assert!(
        token_b > token_a,
        "the counter survives the restart: {token_a} then {token_b}"
    );
}
