//! The floor of a lock cycle on a server: the statements a lock of this crate sends to take a
//! lock, write its holder record and let go, issued by a client with nothing else in it (no
//! thread per lock, no checks, no heartbeat, no error handling worth the name). `npm run bench`
//! sets ours beside it.
//!
//! `pg_floor <url> <cycles> <warm-up cycles> <once|each>` prints one JSON line:
//! `{"n":..,"median_ns":..,"p95_ns":..}`. `once`: one connection for every cycle. `each`: a new
//! connection per cycle with the same session settings ours sends (a lease of 10 s), as ours
//! opens a session of its own for every held lock.

use std::time::Instant;

use processlock_pg::statements;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

/// A key of its own, so that the floor never meets a lock of the package.
const KEY: i64 = 0x0f10_0f10_0f10_0f10;
const TABLE: &str = "processlock_floor_holders";
const SECRET: &str = "processlock_floor_holders_secret";
const RECORD: &str = r#"{"pid":1,"started":"2026-01-01T00:00:00.000Z","tradeSide":"SHORT","processName":"floor","processType":"backend","hostname":"floor","startToken":"0","protocol":"processlock/1"}"#;

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// What ours sends after connecting: who it is, and the settings that bound a silent holder.
async fn set_up(client: &Client) {
    client
        .simple_query(
            "SELECT pg_backend_pid(), current_setting('server_version_num'), pg_is_in_recovery()",
        )
        .await
        .expect("setup");
    client
        .simple_query(
            "SET statement_timeout = 0; SET lock_timeout = 0; SET tcp_keepalives_idle = 5; \
             SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3; \
             SET tcp_user_timeout = 10000; SET idle_session_timeout = 10000; \
             SET client_connection_check_interval = 2500; SELECT pg_backend_pid()",
        )
        .await
        .expect("settings");
}

async fn cycle(client: &Client, try_lock: &str, claim: &str, release: &(String, String)) {
    client.simple_query(try_lock).await.expect("lock");
    client
        .query_typed_one(
            claim,
            &[
                (&KEY, Type::INT8),
                (&"floor", Type::TEXT),
                (&"backend.short.lock", Type::TEXT),
                (&RECORD, Type::TEXT),
            ],
        )
        .await
        .expect("claim");
    let (unlock, clear) = tokio::join!(
        client.simple_query(&release.0),
        client.simple_query(&release.1)
    );
    unlock.expect("release");
    clear.expect("clear");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, cycles, warmup, mode] = &args[..] else {
        panic!("usage: pg_floor <url> <cycles> <warm-up cycles> <once|each>");
    };
    let cycles: usize = cycles.parse().expect("a number of cycles");
    let warmup: usize = warmup.parse().expect("a number of warm-up cycles");
    let each = match mode.as_str() {
        "once" => false,
        "each" => true,
        other => panic!("mode {other}: once or each"),
    };
    let first = connect(url).await;
    let server_version: u32 = first
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .expect("server version")
        .get::<_, i32>(0) as u32;
    let try_lock = statements::try_lock_sql(KEY);
    let claim = statements::claim_sql(TABLE, SECRET, server_version);
    let release = (
        statements::unlock_sql(KEY),
        statements::clear_sql(TABLE, KEY),
    );
    first
        .batch_execute(&statements::create_sql(TABLE))
        .await
        .expect("create table");
    first
        .batch_execute(&statements::create_secret_sql(SECRET))
        .await
        .expect("create the secret table");
    let mut took = Vec::with_capacity(cycles);
    for i in 0..warmup + cycles {
        let started = Instant::now();
        if each {
            let client = connect(url).await;
            set_up(&client).await;
            cycle(&client, &try_lock, &claim, &release).await;
        } else {
            cycle(&first, &try_lock, &claim, &release).await;
        }
        if i >= warmup {
            took.push(started.elapsed().as_nanos());
        }
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    println!(
        r#"{{"n":{},"median_ns":{},"p95_ns":{}}}"#,
        took.len(),
        at(0.5),
        at(0.95)
    );
}
