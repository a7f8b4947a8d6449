//! A private PostgreSQL server for tests outside Rust (the JavaScript tests), started exactly as
//! the crate's own tests start theirs (`tests/support`): `initdb` into a temporary directory,
//! 127.0.0.1 on a free port, stopped and removed when this program ends.
//!
//! Prints `url <url>` (password login over TCP) and `socket <url>` (trust login over the Unix
//! socket), then reads commands on stdin: `stop` (ends every session at once), `stop fast` (a
//! clean shutdown that tells each session it is ended), `start` (the same server again),
//! `sql <statement>` (prints `rows <first value of each row, comma-separated>`).
//! At end of input it stops the server and exits, so a test run that dies leaves nothing behind.
//! With `--tls` the server offers TLS with a certificate for `localhost` from a test CA, and a
//! line `ca <path of the CA's PEM file>` follows the two URLs.
//! Where PostgreSQL is not installed it prints `skip <why>` and exits with status 0.

#[cfg(unix)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;

#[cfg(not(unix))]
fn main() {
    say("skip the private test server is started on Unix only");
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(unix)]
fn main() {
    let tls = std::env::args().any(|a| a == "--tls");
    let started = if tls {
        support::tls::tls_server().map(|(server, dir)| (server, Some(dir.join("ca.pem"))))
    } else {
        support::PgServer::start().map(|server| (server, None))
    };
    let Some((mut server, ca)) = started else {
        say("skip PostgreSQL is not installed (no pg_config --bindir, no /usr/lib/postgresql/*/bin/initdb)");
        return;
    };
    say(&format!("url {}", server.url()));
    say(&format!("socket {}", server.socket_url()));
    if let Some(ca) = ca {
        say(&format!("ca {}", ca.display()));
    }
    for line in support::stdin_lines() {
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("stop", "fast") => {
                server.stop_with("fast");
                say("stopped");
            }
            ("stop", _) => {
                server.stop();
                say("stopped");
            }
            ("start", _) => {
                server.restart();
                say("started");
            }
            ("sql", sql) => {
                let rows = server.sql(sql);
                let first: Vec<&str> = rows
                    .iter()
                    .map(|r| r.first().map_or("", String::as_str))
                    .collect();
                say(&format!("rows {}", first.join(",")));
            }
            _ => say(&format!("unknown {line}")),
        }
    }
}
