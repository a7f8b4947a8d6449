//! Other roles of the same server as hostile peers: a role that plants the holder table before
//! the service creates it, one that takes the advisory key itself, one allowed to write the
//! holder table, and tables grown or padded to exhaust the memory of whoever reads them. Each
//! test creates its roles (`CREATE ROLE ... LOGIN`) on a private server, which is dropped with
//! them.

#![cfg(target_os = "linux")]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use processlock::LockName;
use processlock_pg::{acquire, inspect, list, terminate_holder, Error, PgOptions};
use support::{param, report, with_client, PgServer, Proc, ROLE_ENV};

fn name(t: &str) -> LockName {
    LockName::new(t, Some("SHORT")).unwrap()
}

fn opts(url: String) -> PgOptions {
    PgOptions::new(url)
}

/// A login role with no rights beyond what PUBLIC has; returns its URL.
fn create_role(server: &PgServer, role: &str) -> String {
    let password = format!("{role}-secret");
    server.sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"));
    server.url_as(role, &password)
}

/// Runs `sql` as `role`: what it creates is its own, and only its rights apply.
fn sql_as(server: &PgServer, role: &str, sql: &str) -> Vec<Vec<String>> {
    server.sql(&format!("SET ROLE {role}; {sql}"))
}

/// Runs `sql` as `role` and returns the server's refusal, if any.
fn refused_as(server: &PgServer, role: &str, sql: &str) -> Option<String> {
    let (url, sql) = (server.url(), format!("SET ROLE {role}; {sql}"));
    with_client(url, |client| async move {
        client.batch_execute(&sql).await.err().map(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string())
        })
    })
}

/// Where every role may create tables in `public`: the default before PostgreSQL 15, kept by
/// databases upgraded since.
fn public_open_to_all(server: &PgServer) {
    server.sql("GRANT CREATE ON SCHEMA public TO PUBLIC");
}

/// The key an older version (and anyone who knows the lock's name) computes: FNV-1a, unsalted.
fn unsalted_key(file_name: &str) -> i64 {
    format!("processlock\0processlock\0{file_name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        }) as i64
}

/// A `psql` of `url` that runs `sql` and then sleeps, keeping its session (and what it took).
struct Psql(Child);

impl Psql {
    fn start(server: &PgServer, url: &str, sql: &str) -> Option<Psql> {
        let bin = ["/usr/lib/postgresql/15/bin/psql", "/usr/bin/psql"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let child = Command::new(bin)
            .args([url, "-X", "-q", "-c", sql, "-c", "SELECT pg_sleep(600)"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let _ = server;
        Some(Psql(child))
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HOLDERS_SQL: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'";

// ---------------------------------------------------------------------------------------------
// Children: they report their own peak memory (`VmHWM`).

#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let o = opts(param("URL").unwrap());
    match role.as_str() {
        "list" => {
            let locks = list(&o).unwrap();
            let stale = locks.iter().filter(|l| l.stale.is_some()).count();
            let held = locks.iter().filter(|l| l.holder.is_some()).count();
            report("listed", &[stale.to_string(), held.to_string(), peak_kib()]);
        }
        "conflict" => match acquire(&o, &name("backend")) {
            Err(Error::Conflict(c)) => report(
                "conflict",
                &[
                    c.record_too_large.to_string(),
                    c.backend_pid.unwrap_or(0).to_string(),
                    peak_kib(),
                ],
            ),
            other => report("other", &[format!("{other:?}")]),
        },
        other => panic!("unknown role {other}"),
    }
}

/// This process's peak resident memory in KiB, from `/proc/self/status`.
fn peak_kib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A table planted by another role.

#[test]
fn a_holder_table_planted_by_another_role_is_refused_and_none_of_its_code_runs() {
    let Some(server) = PgServer::start() else {
        return;
    };
    public_open_to_all(&server);
    let svc = create_role(&server, "svc");
    create_role(&server, "mallory");
    // What the service's role can read and nobody else can.
    sql_as(
        &server,
        "svc",
        "CREATE TABLE public.api_keys (secret text); INSERT INTO public.api_keys VALUES ('k-live-1')",
    );
    // The peer gets there first: the table, open to all, with a trigger that copies what the
    // writer may read into a table of its own.
    sql_as(
        &server,
        "mallory",
        "CREATE TABLE public.loot (secret text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE TABLE public.processlock_holders (
            lock_key bigint PRIMARY KEY, namespace text NOT NULL, lock_name text NOT NULL,
            token bigint NOT NULL, backend_pid integer, record jsonb, acquired_at timestamptz);
         GRANT ALL ON public.processlock_holders TO PUBLIC;
         CREATE FUNCTION public.steal() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO public.loot SELECT secret FROM public.api_keys; RETURN NEW; END $$;
         CREATE TRIGGER steal BEFORE INSERT OR UPDATE ON public.processlock_holders
           FOR EACH ROW EXECUTE FUNCTION public.steal()",
    );
    let err = acquire(&opts(svc.clone()), &name("backend")).expect_err("refused");
    println!("{err}");
    assert_eq!(err.code().as_str(), "LOCK_UNSUPPORTED");
    let message = err.to_string();
    assert!(
        message.contains("public.processlock_holders") && message.contains("\"mallory\""),
        "{message}"
    );
    assert_eq!(server.sql("SELECT count(*) FROM public.loot")[0][0], "0");
    assert_eq!(server.sql(HOLDERS_SQL)[0][0], "0", "nothing is held");
    // Looking is refused too when the planted table is not a plain one of the expected types.
    sql_as(
        &server,
        "mallory",
        "DROP TABLE public.processlock_holders;
         CREATE VIEW public.processlock_holders AS SELECT 1::bigint AS lock_key",
    );
    let err = inspect(&opts(svc), &name("backend")).expect_err("refused");
    assert!(err.to_string().contains("not a plain table"), "{err}");
    assert_eq!(server.sql("SELECT count(*) FROM public.loot")[0][0], "0");
}

#[test]
fn a_holder_table_the_service_owns_in_public_keeps_working_and_its_tokens_go_on() {
    let Some(server) = PgServer::start() else {
        return;
    };
    public_open_to_all(&server);
    let svc = create_role(&server, "svc");
    create_role(&server, "mallory");
    // As an older version left it: the holder table in `public`, owned by the service, with
    // the last token it handed out far above this cluster's transaction ids (a restored one).
    let legacy: i64 = 1_000_000_000_000;
    sql_as(
        &server,
        "svc",
        &format!(
            "CREATE TABLE processlock_holders (
                lock_key bigint PRIMARY KEY, namespace text NOT NULL, lock_name text NOT NULL,
                token bigint NOT NULL, backend_pid integer, record jsonb, acquired_at timestamptz);
             INSERT INTO processlock_holders VALUES
                ({}, 'processlock', 'backend.short.lock', {legacy}, NULL, NULL, now())",
            unsalted_key("backend.short.lock")
        ),
    );
    let held = acquire(&opts(svc.clone()), &name("backend")).unwrap();
    let token: i64 = held.fencing_token().parse().unwrap();
    assert!(token > legacy, "{token} goes on from {legacy}");
    assert_ne!(
        held.key(),
        unsalted_key("backend.short.lock"),
        "the key is salted"
    );
    assert!(held.release().unwrap());
    // The secret table: beside the holder table, the service's, no rights for anyone else.
    let secret = server.sql(
        "SELECT n.nspname, pg_get_userbyid(c.relowner), coalesce(array_to_string(c.relacl, ','), '')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = 'processlock_holders_secret'",
    );
    assert_eq!(secret[0][0..2], ["public".to_string(), "svc".to_string()]);
    assert!(
        !secret[0][2].contains("=r") && !secret[0][2].contains("mallory"),
        "{secret:?}"
    );
    let denied = server.sql(
        "SELECT has_table_privilege('mallory', 'public.processlock_holders_secret', 'SELECT')",
    );
    assert_eq!(denied[0][0], "f");
}

// ---------------------------------------------------------------------------------------------
// A peer that holds the advisory key.

#[test]
fn a_peer_that_takes_the_key_is_named_and_cannot_compute_it_in_advance() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let svc = create_role(&server, "svc");
    server.sql("GRANT CREATE ON SCHEMA public TO svc");
    let mallory = create_role(&server, "mallory");
    acquire(&opts(svc.clone()), &name("setup"))
        .unwrap()
        .release()
        .unwrap();
    // The peer knows the lock's name and takes the key everyone could compute.
    let guess = format!(
        "SELECT pg_advisory_lock({})",
        unsalted_key("backend.short.lock")
    );
    let Some(_guessed) = Psql::start(&server, &mallory, &guess) else {
        println!("SKIPPED: psql is not installed");
        return;
    };
    server.wait_until(HOLDERS_SQL, "1");
    let held = acquire(&opts(svc.clone()), &name("backend")).expect("the guessed key is not it");
    // The peer sees the key while it is held, and takes it when the service lets go.
    let key = held.key();
    assert!(held.release().unwrap());
    let Some(_squatter) = Psql::start(
        &server,
        &mallory,
        &format!("SELECT pg_advisory_lock({key})"),
    ) else {
        return;
    };
    server.wait_until(HOLDERS_SQL, "2");
    let err = acquire(&opts(svc.clone()), &name("backend")).expect_err("held by the peer");
    let message = err.to_string();
    println!("{message}");
    let Error::Conflict(c) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(c.holder.pid, 0);
    assert_eq!(c.holder_role.as_deref(), Some("mallory"));
    assert!(
        message.contains("of role \"mallory\"") && message.contains("not a processlock holder"),
        "{message}"
    );
    // The peer cannot read the salt that would let it compute keys.
    let refused = refused_as(
        &server,
        "mallory",
        "SELECT salt FROM public.processlock_holders_secret",
    );
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("permission denied")),
        "the peer read the salt: {refused:?}"
    );
    // The service's role may not end another role's session, and is told so and why.
    let err = terminate_holder(&opts(svc.clone()), &name("backend")).expect_err("not allowed");
    println!("{err}");
    assert!(
        err.to_string().contains("role \"mallory\"")
            && err.to_string().contains("pg_signal_backend"),
        "{err}"
    );
    // Given pg_signal_backend, it ends the squatter's session and takes its lock.
    server.sql("GRANT pg_signal_backend TO svc");
    let ended = terminate_holder(&opts(svc.clone()), &name("backend"))
        .unwrap()
        .expect("a holder");
    assert_eq!(ended.role.as_deref(), Some("mallory"));
    acquire(&opts(svc), &name("backend")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A peer allowed to write the holder table.

#[test]
fn a_peer_that_may_write_the_holder_table_neither_stops_an_acquire_nor_turns_tokens_back() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let svc = create_role(&server, "svc");
    server.sql("GRANT CREATE ON SCHEMA public TO svc");
    create_role(&server, "mallory");
    let o = opts(svc);
    let token = |o: &PgOptions| -> i64 {
        let held = acquire(o, &name("backend")).unwrap();
        let t = held.fencing_token().parse().unwrap();
        held.release().unwrap();
        t
    };
    let mut last = token(&o);
    sql_as(
        &server,
        "svc",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON processlock_holders TO mallory",
    );
    for damage in [
        "UPDATE processlock_holders SET token = 9223372036854775807",
        "UPDATE processlock_holders SET token = 0",
        "UPDATE processlock_holders SET token = -9223372036854775808, record = '\"x\"', backend_pid = 1",
        "DELETE FROM processlock_holders",
    ] {
        sql_as(&server, "mallory", damage);
        let next = token(&o);
        assert!(next > last, "after {damage}: {last} then {next}");
        last = next;
    }
    // The tokens themselves are where the peer may not write.
    let refused = refused_as(
        &server,
        "mallory",
        "UPDATE processlock_holders_secret SET token = 9223372036854775807",
    );
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("permission denied")),
        "the peer wrote the kept tokens: {refused:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tables grown or padded to exhaust a reader's memory.

/// The most a child may grow to while reading (it starts at a few MiB).
const MAX_PEAK_KIB: u64 = 64 * 1024;

#[test]
fn a_million_rows_and_a_padded_record_are_read_in_bounded_memory() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.url();
    // A holder, then a million rows of locks let go and two thousand left behind.
    let held = acquire(&opts(url.clone()), &name("backend")).unwrap();
    let started = Instant::now();
    server.sql(
        "INSERT INTO processlock_holders
           SELECT -g, 'processlock', 'gone' || g || '.short.lock', g, NULL, NULL, now()
           FROM generate_series(1, 1000000) g;
         INSERT INTO processlock_holders
           SELECT -2000000 - g, 'processlock', 'left' || g || '.short.lock', g, 1,
                  jsonb_build_object('pid', 1000000 + g, 'started', '2026-01-01T00:00:00Z',
                                     'processName', 'x', 'tradeSide', 'SHORT'), now()
           FROM generate_series(1, 2000) g",
    );
    println!("a million rows written in {:?}", started.elapsed());
    let mut child = Proc::spawn("list", &[("URL", url.clone())]);
    let got = child.expect("listed");
    child.wait_exit();
    println!(
        "listed {} stale, {} held; peak {} KiB",
        got[1], got[2], got[3]
    );
    assert_eq!((got[1].as_str(), got[2].as_str()), ("2000", "1"));
    assert!(
        got[3].parse::<u64>().unwrap() < MAX_PEAK_KIB,
        "peak {} KiB",
        got[3]
    );

    // The live holder's record padded to 200 MB by whoever may write the table.
    server.sql(
        "UPDATE processlock_holders SET record = record || jsonb_build_object('pad', repeat('x', 200000000))
         WHERE lock_name = 'backend.short.lock'",
    );
    let mut child = Proc::spawn("conflict", &[("URL", url.clone())]);
    let got = child.expect("conflict");
    child.wait_exit();
    println!("conflict: record too large {}, peak {} KiB", got[1], got[3]);
    assert_eq!(got[1], "true");
    assert_eq!(got[2], held.backend_pid().to_string());
    assert!(
        got[3].parse::<u64>().unwrap() < MAX_PEAK_KIB,
        "peak {} KiB",
        got[3]
    );
    let seen = inspect(&opts(url), &name("backend"))
        .unwrap()
        .expect("held");
    assert!(seen.record_too_large && seen.record.pid == 0);
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// An upgrade: an instance of the older version, which computed keys without the salt.

#[test]
fn an_instance_of_the_older_version_holding_the_lock_keeps_this_one_from_starting() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.url();
    acquire(&opts(url.clone()), &name("setup"))
        .unwrap()
        .release()
        .unwrap();
    let key = unsalted_key("backend.short.lock");
    let record = r#"{"pid":4242,"started":"2026-01-01T00:00:00.000Z","tradeSide":"SHORT","processName":"trader-short-backend","hostname":"old-host"}"#;
    // As the older version holds it: the unsalted key, and its record under that key.
    let older = format!(
        "SELECT pg_advisory_lock({key}); INSERT INTO processlock_holders
           VALUES ({key}, 'processlock', 'backend.short.lock', 1, pg_backend_pid(), '{record}', now())"
    );
    let Some(_older) = Psql::start(&server, &url, &older) else {
        println!("SKIPPED: psql is not installed");
        return;
    };
    server.wait_until(HOLDERS_SQL, "1");
    server.wait_until(
        "SELECT count(*) FROM processlock_holders WHERE record IS NOT NULL",
        "1",
    );
    let err = acquire(&opts(url.clone()), &name("backend")).expect_err("the older holder");
    println!("{err}");
    let Error::Conflict(c) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(c.holder.pid, 4242);
    assert_eq!(c.holder.hostname.as_deref(), Some("old-host"));
    // A session that holds the old key without a record is no holder of any version.
    drop(_older);
    server.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'psql'",
    );
    server.wait_until(HOLDERS_SQL, "0");
    let Some(_bare) = Psql::start(&server, &url, &format!("SELECT pg_advisory_lock({key})")) else {
        return;
    };
    server.wait_until(HOLDERS_SQL, "1");
    acquire(&opts(url), &name("backend")).unwrap();
}
