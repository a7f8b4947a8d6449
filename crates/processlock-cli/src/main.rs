//! The `processlock` command: a thin shell over the `processlock` core.
//!
//! * `check`: every lock file in the directory and its state, or whether one lock is held;
//! * `clear`: removes lock files nobody holds (held ones too with `--force`);
//! * `run`: holds a lock for as long as a command runs.
//!
//! With `--url` or `$PROCESSLOCK_URL`, all three work on locks held on a PostgreSQL server:
//! `backend.rs` chooses and opens where the locks are, for every command.
//!
//! Defaults (lock directory, trade side) and log lines come from the core, so the command and the
//! Node addon agree on them.

mod args;
mod backend;
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
#[cfg(unix)]
mod wait;

use std::path::Path;

use args::{Command, Format, Usage};
use backend::{Backend, Place, ServerSettings, Unopened};
use display::errln;
use processlock::report::printable;
use processlock::{check_process_name, LockName};

const USAGE_EXIT: i32 = 2;

fn main() {
    let code = match args::parse(std::env::args_os().skip(1)) {
        Ok(inv) => {
            let verdict = matches!(inv.command, Command::Check { lock: Some(_), .. });
            display::exit_status(execute(inv.dir.as_deref(), inv.command), verdict)
        }
        Err(Usage(msg)) => usage_error(&msg),
    };
    std::process::exit(code);
}

fn usage_error(msg: &str) -> i32 {
    errln!("processlock: {msg} (see processlock --help)");
    USAGE_EXIT
}

fn execute(dir: Option<&Path>, command: Command) -> i32 {
    match command {
        Command::Help => {
            display::print(args::USAGE);
            0
        }
        Command::Version => {
            display::print(&format!("processlock {}\n", env!("CARGO_PKG_VERSION")));
            0
        }
        Command::Completions(shell) => {
            args::print_completions(shell);
            0
        }
        Command::Check {
            format,
            url,
            lock: None,
        } => match open(dir, url, ServerSettings::default()) {
            Ok(Backend::Server(server)) if format == Format::Prometheus => {
                prometheus::check_server(&server)
            }
            Ok(Backend::Server(server)) => server::check(&server, format == Format::Json),
            Ok(Backend::Files(files)) if format == Format::Prometheus => {
                listed(prometheus::check_files(&files))
            }
            Ok(Backend::Files(files)) => listed(check::run(&files, format == Format::Json)),
            Err(code) => code,
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
            match Place::from_options(dir, url).open(ServerSettings::default()) {
                Ok(Backend::Server(server)) => server::check_one(&server, name, json),
                Ok(Backend::Files(files)) => check::run_one(&files, name, json),
                Err(Unopened::BadServer(msg)) => usage_error(&msg),
                Err(Unopened::Dir(e)) => {
                    errln!("processlock: {}", printable(&e.to_string()));
                    check::UNKNOWN
                }
            }
        }
        Command::Clear { force, url } => match open(dir, url, ServerSettings::default()) {
            Ok(Backend::Server(server)) => server::clear(&server, force),
            Ok(Backend::Files(files)) => listed(clear::run(&files, force)),
            Err(code) => code,
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
            let place = Place::from_options(dir, url);
            if !matches!(place, Place::Server(_)) {
                if lease_ms.is_some() {
                    return usage_error(
                        "--lease goes with a lock on a server (--url or $PROCESSLOCK_URL)",
                    );
                }
                if grace_ms.is_some() && !replace {
                    return usage_error("--grace goes with --replace, or with a lock on a server");
                }
            }
            let settings = ServerSettings {
                lease: millis(lease_ms),
                process_name: name.clone(),
            };
            match place.open(settings) {
                Ok(Backend::Server(server)) => {
                    let grace = millis(grace_ms).unwrap_or_else(|| server.loss_margin());
                    run_on_server(ServerRun {
                        pg: server,
                        name: lock_name,
                        wait: millis(wait_ms),
                        grace,
                        // The holder, on any host, is asked through the server and given --grace.
                        replace: replace
                            .then(|| millis(grace_ms).unwrap_or(processlock::DEFAULT_GRACE)),
                        quiet,
                        command,
                    })
                }
                Ok(Backend::Files(files)) => run_command(RunOptions {
                    target: files.target(&lock_name),
                    process_name: name,
                    wait: millis(wait_ms),
                    replace_grace: replace
                        .then(|| millis(grace_ms).unwrap_or(processlock::DEFAULT_GRACE)),
                    quiet,
                    command,
                }),
                // A URL or lease that cannot work is a usage error: nothing was sent anywhere.
                Err(Unopened::BadServer(msg)) => usage_error(&msg),
                Err(Unopened::Dir(e)) => {
                    errln!("[FATAL] {e}");
                    1
                }
            }
        }
    }
}

/// The backend of `check` (the listing) and `clear`; on failure, the exit status: 2 for a URL
/// that cannot work, 1 for a lock directory that cannot be resolved.
fn open(dir: Option<&Path>, url: Option<String>, settings: ServerSettings) -> Result<Backend, i32> {
    Place::from_options(dir, url)
        .open(settings)
        .map_err(|e| match e {
            Unopened::BadServer(msg) => usage_error(&msg),
            Unopened::Dir(e) => failed(&e),
        })
}

/// The exit status of a listing of lock files, or of their clearing.
fn listed(result: processlock::Result<i32>) -> i32 {
    result.unwrap_or_else(|e| failed(&e))
}

fn failed(e: &processlock::Error) -> i32 {
    errln!("processlock: {}", printable(&e.to_string()));
    1
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
    pg: backend::Server,
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
    errln!("processlock: run is not supported on this platform yet");
    1
}
