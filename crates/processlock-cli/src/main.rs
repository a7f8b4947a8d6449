//! The `processlock` command: a thin shell over the `processlock` core.
//!
//! * `check`: every lock file in the directory and its state, or whether one lock is held;
//! * `clear`: removes lock files nobody holds (held ones too with `--force`);
//! * `run`: holds a lock for as long as a command runs.
//!
//! With `--url` or `$PROCESSLOCK_URL`, all three work on locks held on a PostgreSQL server.
//!
//! Defaults (lock directory, trade side) and log lines come from the core, so the command and the
//! Node addon agree on them.

mod args;
mod check;
mod clear;
mod display;
#[cfg(unix)]
mod errno;
mod prometheus;
#[cfg(unix)]
mod replace;
#[cfg(unix)]
mod run;
#[cfg(unix)]
mod run_server;
mod server;
#[cfg(unix)]
mod signals;
#[cfg(unix)]
mod tree;

use std::path::Path;

use args::{Command, Format, Usage};
use processlock::report::printable;
use processlock::{check_process_name, resolve_dir, LockName};

const USAGE_EXIT: i32 = 2;

fn main() {
    let code = match args::parse(std::env::args_os().skip(1)) {
        Ok(inv) => execute(inv.dir.as_deref(), inv.command),
        Err(Usage(msg)) => usage_error(&msg),
    };
    std::process::exit(code);
}

fn usage_error(msg: &str) -> i32 {
    eprintln!("processlock: {msg} (see processlock --help)");
    USAGE_EXIT
}

fn execute(dir: Option<&Path>, command: Command) -> i32 {
    match command {
        Command::Help => {
            print!("{}", args::USAGE);
            0
        }
        Command::Version => {
            println!("processlock {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Check {
            format,
            url,
            lock: None,
        } => match server_url(url).map(checked_url) {
            Some(Ok(url)) if format == Format::Prometheus => prometheus::check_server(&url),
            Some(Ok(url)) => server::check(&url, format == Format::Json),
            Some(Err(code)) => code,
            None => with_dir(dir, |d| check::run(d, format)),
        },
        Command::Check {
            format,
            url,
            lock: Some((process_type, side)),
        } => {
            let json = format == Format::Json;
            let name = match LockName::from_env(&process_type, side.as_deref()) {
                Ok(n) => n,
                Err(e) => return usage_error(&e.to_string()),
            };
            if let Some(url) = server_url(url) {
                return match checked_url(url) {
                    Ok(url) => server::check_one(&url, name, json),
                    Err(code) => code,
                };
            }
            match resolve_dir(dir) {
                Ok(d) => check::run_one(&d, name, json),
                Err(e) => {
                    eprintln!("processlock: {}", printable(&e.to_string()));
                    check::UNKNOWN
                }
            }
        }
        Command::Clear { force, url } => match server_url(url).map(checked_url) {
            Some(Ok(url)) => server::clear(&url, force),
            Some(Err(code)) => code,
            None => with_dir(dir, |d| clear::run(d, force)),
        },
        Command::Run {
            process_type,
            side,
            name,
            url,
            wait_ms,
            replace,
            grace_ms,
            lease_ms,
            quiet,
            command,
        } => {
            let lock_name = match LockName::from_env(&process_type, side.as_deref()) {
                Ok(n) => n,
                Err(e) => return usage_error(&e.to_string()),
            };
            if let Err(e) = check_process_name(name.as_deref()) {
                return usage_error(&e.to_string());
            }
            let millis = |ms: Option<u64>| ms.map(std::time::Duration::from_millis);
            if let Some(url) = server_url(url) {
                let mut pg = processlock_pg::PgOptions::new(url);
                if let Some(lease) = millis(lease_ms) {
                    pg.lease = lease;
                }
                pg.process_name = name;
                // A URL or lease that cannot work is a usage error: nothing was sent anywhere.
                if let Err(e) = pg.check() {
                    return usage_error(&printable(&e.to_string()));
                }
                let grace = millis(grace_ms).unwrap_or_else(|| pg.loss_margin());
                return run_on_server(ServerRun {
                    pg,
                    name: lock_name,
                    wait: millis(wait_ms),
                    grace,
                    // The holder, on any host, is asked through the server and given --grace.
                    replace: replace
                        .then(|| millis(grace_ms).unwrap_or(processlock::DEFAULT_GRACE)),
                    quiet,
                    command,
                });
            }
            if lease_ms.is_some() {
                return usage_error(
                    "--lease goes with a lock on a server (--url or $PROCESSLOCK_URL)",
                );
            }
            if grace_ms.is_some() && !replace {
                return usage_error("--grace goes with --replace, or with a lock on a server");
            }
            let dir = match resolve_dir(dir) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("[FATAL] {e}");
                    return 1;
                }
            };
            run_command(RunOptions {
                target: processlock::LockTarget::new(dir, lock_name),
                process_name: name,
                wait: millis(wait_ms),
                replace_grace: replace
                    .then(|| millis(grace_ms).unwrap_or(processlock::DEFAULT_GRACE)),
                quiet,
                command,
            })
        }
    }
}

/// `--url`, else `$PROCESSLOCK_URL`; empty means none.
fn server_url(option: Option<String>) -> Option<String> {
    if option
        .as_deref()
        .is_some_and(processlock_pg::url_has_password)
    {
        eprintln!("{PASSWORD_IN_ARGV}");
    }
    option
        .or_else(|| std::env::var("PROCESSLOCK_URL").ok())
        .filter(|u| !u.is_empty())
}

/// Every user of the host can read a command line (`ps`, `/proc/PID/cmdline`).
const PASSWORD_IN_ARGV: &str = "processlock: WARNING: the password in --url can be read by every user of this host (ps, /proc/PID/cmdline); give the URL without it (in --url or $PROCESSLOCK_URL) and keep the password in ~/.pgpass or the file $PGPASSFILE names (mode 0600), or in $PGPASSWORD set for this service only";

/// A URL that cannot work is a usage error, for every command: nothing was sent anywhere.
fn checked_url(url: String) -> Result<String, i32> {
    match processlock_pg::PgOptions::new(url.as_str()).check() {
        Ok(_) => Ok(url),
        Err(e) => Err(usage_error(&printable(&e.to_string()))),
    }
}

fn with_dir(dir: Option<&Path>, f: impl FnOnce(&Path) -> processlock::Result<i32>) -> i32 {
    match resolve_dir(dir).and_then(|d| f(&d)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("processlock: {}", printable(&e.to_string()));
            1
        }
    }
}

/// What `run` needs, whatever the platform.
#[cfg_attr(not(unix), allow(dead_code))]
struct RunOptions {
    target: processlock::LockTarget,
    process_name: Option<String>,
    wait: Option<std::time::Duration>,
    replace_grace: Option<std::time::Duration>,
    quiet: bool,
    command: Vec<std::ffi::OsString>,
}

#[cfg(unix)]
fn run_command(o: RunOptions) -> i32 {
    run::run(run::Options {
        target: o.target,
        process_name: o.process_name,
        wait: o.wait,
        replace_grace: o.replace_grace,
        quiet: o.quiet,
        command: o.command,
    })
}

#[cfg(not(unix))]
fn run_command(_options: RunOptions) -> i32 {
    run_unsupported()
}

/// What `run` on a server needs, whatever the platform.
#[cfg_attr(not(unix), allow(dead_code))]
struct ServerRun {
    pg: processlock_pg::PgOptions,
    name: LockName,
    wait: Option<std::time::Duration>,
    grace: std::time::Duration,
    replace: Option<std::time::Duration>,
    quiet: bool,
    command: Vec<std::ffi::OsString>,
}

#[cfg(unix)]
fn run_on_server(o: ServerRun) -> i32 {
    run_server::run(run_server::Options {
        pg: o.pg,
        name: o.name,
        wait: o.wait,
        grace: o.grace,
        replace: o.replace,
        quiet: o.quiet,
        command: o.command,
    })
}

#[cfg(not(unix))]
fn run_on_server(_options: ServerRun) -> i32 {
    run_unsupported()
}

#[cfg(not(unix))]
fn run_unsupported() -> i32 {
    eprintln!("processlock: run is not supported on this platform yet");
    1
}
