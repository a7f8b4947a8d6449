//! Hand-written argument parsing: three commands and a handful of options.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

pub const USAGE: &str = "\
processlock: one running instance per service

Usage:
  processlock check [--json | --format prometheus] [--dir DIR | --url URL]
  processlock check <type> [--side SIDE] [--json] [--dir DIR | --url URL]
  processlock clear [--force] [--dir DIR | --url URL]
  processlock run <type> [--side SIDE] [--wait MS | --replace [--grace MS]] [--name NAME] [--quiet]
                  [--dir DIR] -- <command> [args...]
  processlock run <type> --url URL [--side SIDE] [--wait MS] [--lease MS] [--grace MS]
                  [--name NAME] [--quiet] -- <command> [args...]

Commands:
  check   List the lock files in the lock directory: type, side, PID, start time, uptime,
          state (held, stale, invalid), process name, host (when not this one), file.
          --json prints an array for scripts. --format prometheus prints Prometheus' text
          format for node_exporter's textfile collector: per lock, processlock_lock_held (1 or
          0) and, when held, processlock_holder_pid, processlock_holder_uptime_seconds and, on
          a server, processlock_fencing_token, labelled type, side, host and backend (file or
          postgres). Exit status 0 whatever the states.
          With <type>: whether that one lock is held, for health checks and deploy scripts:
          exit status 0 held, 1 not held (no file, stale, or not a lock record), 3 cannot
          tell (an I/O error). --json prints one object with keys held and state.
  clear   Remove stale lock files and temp files left by crashed acquirers. Held locks are
          kept; --force removes them too (the processes keep running). Files that are not
          lock records (empty, unreadable, another program's) are listed and always kept.
  run     Take the lock <type> (e.g. backend, worker), run the command while holding it, and
          release it when the command ends. SIGINT, SIGTERM and SIGHUP are passed on to the
          command; processlock exits with its status, or dies by its signal. The command holds
          the lock itself: it stays held even if processlock is killed. If a process the command
          starts (directly or through npm, a shell...) takes the same lock, the first one to do
          so owns it; any other gets a conflict ($PROCESSLOCK_INHERITED tells them how to ask).
          The command gets $PROCESSLOCK_DIR set to the lock directory used. If another instance
          holds the lock, the command is not started and processlock exits with status 1
          (with --wait, once MS milliseconds have passed without the holder letting go).
          With --replace, a holder on this host (verified by its PID and start token) is sent
          SIGTERM, then SIGKILL if it still holds the lock after the grace period, and the
          command starts once it has let go. A holder on another host is never signalled.
          With --url (or $PROCESSLOCK_URL) the lock is held on that PostgreSQL server by the
          processlock process itself, not by the command (a server session cannot be handed
          on): the record names processlock's PID, and the lock ends with processlock. The
          command gets $PROCESSLOCK_FENCING_TOKEN (the lock's fencing token). A process it
          starts that takes the same lock (same server, namespace and name) adopts
          processlock's hold, once, as with a lock file ($PROCESSLOCK_SERVER_LOCK tells it how);
          when it lets go, processlock keeps the lock until the command ends. If the lock is
          lost (no heartbeat confirmed in time, the session ended, the server stopped),
          processlock prints [PROCESS_LOCK_LOST], sends every process of the command (on
          Linux: the whole tree, the app behind npm or a shell included; elsewhere the main
          process only) SIGTERM, the only way a process that adopted the lock learns of the
          loss, then SIGKILL after --grace (default: a quarter of the lease, about when the
          server may give the lock to another holder), and exits with status 75 once none is
          left. When the command's main process ends and leaves processes behind, they are
          stopped the same way and the lock is released only after. If processlock is killed,
          on Linux the main process gets SIGKILL and a process that adopted the lock ends with
          status 75 (other processes the command started are not reached).

Options:
  --dir DIR      Lock directory. Default: $PROCESSLOCK_DIR, else runtime/locks under the
                 nearest directory (from the current one up) that has a package.json.
  --url URL      Locks held on this PostgreSQL server instead of in a directory. Default:
                 $PROCESSLOCK_URL. check lists lock, state, PID, host, start, fencing token and
                 client address; clear removes records no live session stands behind; clear
                 --force ends the session of every holder (pg_terminate_backend, which needs
                 the right role): the holders are told at once that their locks are lost. run
                 holds the lock on the server (see run above; not with --replace).
  --side SIDE    Trade side of the lock (run, check <type>). Default: $TRADE_SIDE. An empty
                 side is refused; for none, leave TRADE_SIDE empty: TRADE_SIDE= processlock ...
  --wait MS      Wait up to MS milliseconds for a holder to let go (run). Default: 0, fail at once.
  --replace      Stop the holder and take its place (run): SIGTERM, then SIGKILL after --grace.
  --grace MS     How long a replaced holder may take to exit after SIGTERM. Default: 10000.
                 With --url: how long the command may take to exit after SIGTERM once the lock
                 is lost. Default: a quarter of the lease.
  --lease MS     With --url: how long the server keeps the lock of a holder it no longer
                 hears from (frozen, cut off). Default: 10000; at least 1000.
  --name NAME    Process name written in the lock record (run): at most 256 characters, no
                 control characters. Default: trader-<side>-<type>.
  -q, --quiet    Do not print the acquired/released lines (run). Conflicts are always printed.
  --json         Machine-readable output (check): the same as --format json.
  --format FMT   Output of check: text (the default), json, or prometheus (the listing only).
  --force        Also remove locks held by running processes (clear).
  -h, --help     Show this help.
  -V, --version  Show the version.

Exit status: 0 on success; 1 on a lock conflict or an I/O error; 2 on a usage error; for run,
otherwise the command's own status (127: command not found, 126: not executable), or 75 when
the lock on a server was lost and the command was stopped; for check <type>, as above.

run and clear refuse (LOCK_UNSAFE_DIR) a lock directory that other users may delete files in:
writable by others without the sticky bit, or owned by a user other than this one and root.

On Windows, check and clear work; run is not available yet (it says so and exits 1): take the
lock in the app itself.
";

/// What `check` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// Prometheus' text exposition format (the listing only).
    Prometheus,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Check {
        /// `--url`: a PostgreSQL server instead of the lock directory.
        url: Option<String>,
        format: Format,
        /// `check <type>`: one lock, with its side (`None`: `$TRADE_SIDE`).
        lock: Option<(String, Option<String>)>,
    },
    Clear {
        /// `--url`: a PostgreSQL server instead of the lock directory.
        url: Option<String>,
        force: bool,
    },
    Run {
        process_type: String,
        side: Option<String>,
        name: Option<String>,
        /// `--url`: hold the lock on a PostgreSQL server instead of in the lock directory.
        url: Option<String>,
        /// Milliseconds to wait for the holder; `None`: fail at once.
        wait_ms: Option<u64>,
        /// `--replace`: stop the holder (on this host) and take its place.
        replace: bool,
        /// `--grace`: milliseconds between SIGTERM and SIGKILL, for a replaced holder or, on a
        /// server, for the command once the lock is lost; `None`: the default.
        grace_ms: Option<u64>,
        /// `--lease`: the lease of a lock on a server, in milliseconds; `None`: the default.
        lease_ms: Option<u64>,
        quiet: bool,
        command: Vec<OsString>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub dir: Option<PathBuf>,
    pub command: Command,
}

/// A usage error: one line saying what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

fn usage<T>(msg: impl Into<String>) -> Result<T, Usage> {
    Err(Usage(msg.into()))
}

/// Options are UTF-8; values (a directory, a command's arguments) may be any bytes.
fn text(arg: &OsStr) -> Option<&str> {
    arg.to_str()
}

/// The arguments, read from left to right.
struct Cursor {
    args: Vec<OsString>,
    next: usize,
}

impl Cursor {
    fn new(args: impl IntoIterator<Item = OsString>) -> Cursor {
        Cursor {
            args: args.into_iter().collect(),
            next: 0,
        }
    }

    fn peek(&self) -> Option<&OsString> {
        self.args.get(self.next)
    }

    fn take(&mut self) -> Option<OsString> {
        let a = self.args.get(self.next).cloned();
        if a.is_some() {
            self.next += 1;
        }
        a
    }

    fn rest(&mut self) -> Vec<OsString> {
        let rest = self.args[self.next..].to_vec();
        self.next = self.args.len();
        rest
    }

    /// The value of `--opt VALUE` or `--opt=VALUE` (`inline` holds the part after `=`).
    fn value(&mut self, opt: &str, inline: Option<&str>) -> Result<OsString, Usage> {
        match inline {
            Some(v) => Ok(v.into()),
            None => self
                .take()
                .ok_or_else(|| Usage(format!("option {opt} needs a value"))),
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, Usage> {
    let mut cur = Cursor::new(args);
    // `--dir` may come before the command or among its options.
    let mut dir: Option<PathBuf> = None;
    let command = parse_command(&mut cur, &mut dir)?;
    Ok(Invocation { dir, command })
}

/// The options before the command (`--dir`, `--help`, `--version`), then the command.
fn parse_command(cur: &mut Cursor, dir: &mut Option<PathBuf>) -> Result<Command, Usage> {
    loop {
        let Some(arg) = cur.take() else {
            return usage("missing command: check, clear or run");
        };
        let Some(s) = text(&arg) else {
            return usage(format!("unknown command {:?}", arg));
        };
        let (opt, inline) = split_inline(s);
        match opt {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--dir" => *dir = Some(dir_value(cur, inline)?),
            _ if s.starts_with('-') => return usage(format!("unknown option {s}")),
            "check" => return parse_check(cur, dir),
            "clear" => return parse_clear(cur, dir),
            "run" => return parse_run(cur, dir),
            other => {
                return usage(format!(
                    "unknown command {other:?}: use check, clear or run"
                ))
            }
        }
    }
}

fn parse_check(cur: &mut Cursor, dir: &mut Option<PathBuf>) -> Result<Command, Usage> {
    let mut format = None;
    let mut url = None;
    let mut process_type = None;
    let mut side = None;
    while let Some(arg) = cur.take() {
        match option(&arg)? {
            ("--json", None) => set_format(&mut format, Format::Json)?,
            ("--format", inline) => {
                let f = match utf8_value(cur, "--format", inline)?.as_str() {
                    "text" => Format::Text,
                    "json" => Format::Json,
                    "prometheus" => Format::Prometheus,
                    other => {
                        return usage(format!(
                            "--format takes text, json or prometheus, not {other:?}"
                        ))
                    }
                };
                set_format(&mut format, f)?
            }
            ("--url", inline) => url = Some(utf8_value(cur, "--url", inline)?),
            ("--dir", inline) => *dir = Some(dir_value(cur, inline)?),
            ("--side", inline) => side = Some(utf8_value(cur, "--side", inline)?),
            ("-h" | "--help", None) => return Ok(Command::Help),
            (word, None) if !word.starts_with('-') && process_type.is_none() => {
                process_type = Some(word.to_string())
            }
            _ => return unexpected(&arg, "check"),
        }
    }
    let lock = match (process_type, side) {
        (Some(t), side) => Some((t, side)),
        (None, Some(_)) => {
            return usage("--side needs a lock type, e.g. processlock check backend --side SHORT")
        }
        (None, None) => None,
    };
    let format = format.unwrap_or(Format::Text);
    if format == Format::Prometheus && lock.is_some() {
        return usage("--format prometheus lists every lock: drop the lock type (check <type> answers by its exit status)");
    }
    Ok(Command::Check { format, url, lock })
}

/// `--json` and `--format` name one output: a second, different one is a mistake.
fn set_format(format: &mut Option<Format>, f: Format) -> Result<(), Usage> {
    match *format {
        Some(old) if old != f => usage("--json and --format ask for different outputs: give one"),
        _ => {
            *format = Some(f);
            Ok(())
        }
    }
}

fn parse_clear(cur: &mut Cursor, dir: &mut Option<PathBuf>) -> Result<Command, Usage> {
    let mut force = false;
    let mut url = None;
    while let Some(arg) = cur.take() {
        match option(&arg)? {
            ("--force" | "-f", None) => force = true,
            ("--url", inline) => url = Some(utf8_value(cur, "--url", inline)?),
            ("--dir", inline) => *dir = Some(dir_value(cur, inline)?),
            ("-h" | "--help", None) => return Ok(Command::Help),
            _ => return unexpected(&arg, "clear"),
        }
    }
    Ok(Command::Clear { force, url })
}

/// `run`'s options as they are read, before they are checked against each other.
#[derive(Default)]
struct RunArgs {
    process_type: Option<String>,
    side: Option<String>,
    name: Option<String>,
    url: Option<String>,
    wait_ms: Option<u64>,
    replace: bool,
    grace_ms: Option<u64>,
    lease_ms: Option<u64>,
    quiet: bool,
}

/// `run`: its options and lock type, then the command, which starts after `--` or at the first
/// word that is not an option once the lock type is known.
fn parse_run(cur: &mut Cursor, dir: &mut Option<PathBuf>) -> Result<Command, Usage> {
    let mut opts = RunArgs::default();
    let command = loop {
        let Some(arg) = cur.peek().cloned() else {
            break Vec::new();
        };
        let s = text(&arg).unwrap_or("");
        if s == "--" {
            cur.take();
            break cur.rest();
        }
        if !s.starts_with('-') || s == "-" {
            if opts.process_type.is_some() {
                break cur.rest();
            }
            cur.take();
            match text(&arg) {
                Some(t) => opts.process_type = Some(t.to_string()),
                None => return usage(format!("invalid lock type {arg:?}")),
            }
            continue;
        }
        cur.take();
        match option(&arg)? {
            ("--side", inline) => opts.side = Some(utf8_value(cur, "--side", inline)?),
            ("--name", inline) => opts.name = Some(utf8_value(cur, "--name", inline)?),
            // 0 is the default: fail at once.
            ("--wait", inline) => {
                opts.wait_ms = Some(millis(cur, "--wait", inline)?).filter(|&ms| ms > 0)
            }
            ("--replace", None) => opts.replace = true,
            ("--grace", inline) => opts.grace_ms = Some(millis(cur, "--grace", inline)?),
            ("--url", inline) => opts.url = Some(utf8_value(cur, "--url", inline)?),
            ("--lease", inline) => opts.lease_ms = Some(millis(cur, "--lease", inline)?),
            ("--dir", inline) => *dir = Some(dir_value(cur, inline)?),
            ("-q" | "--quiet", None) => opts.quiet = true,
            ("-h" | "--help", None) => return Ok(Command::Help),
            _ => return unexpected(&arg, "run"),
        }
    };
    run_command(opts, command)
}

/// Checks `run`'s options against each other and the command.
fn run_command(opts: RunArgs, command: Vec<OsString>) -> Result<Command, Usage> {
    let Some(process_type) = opts.process_type else {
        return usage("run needs a lock type, e.g. processlock run backend -- <command>");
    };
    if command.is_empty() {
        return usage(format!(
            "run needs a command to run, e.g. processlock run {process_type} -- node server.js"
        ));
    }
    // Whether --grace and --lease make sense depends on where the lock is, which
    // $PROCESSLOCK_URL may decide: checked once that is known.
    if opts.replace && opts.wait_ms.is_some() {
        return usage("--replace waits for the holder by itself (see --grace); drop --wait");
    }
    Ok(Command::Run {
        process_type,
        side: opts.side,
        name: opts.name,
        url: opts.url,
        wait_ms: opts.wait_ms,
        replace: opts.replace,
        grace_ms: opts.grace_ms,
        lease_ms: opts.lease_ms,
        quiet: opts.quiet,
        command,
    })
}

fn unexpected<T>(arg: &OsStr, command: &str) -> Result<T, Usage> {
    match text(arg) {
        Some(s) if s.starts_with('-') => usage(format!(
            "unknown option {} for {command}",
            split_inline(s).0
        )),
        _ => usage(format!("unexpected argument {arg:?} for {command}")),
    }
}

/// `--opt=value` -> (`--opt`, Some(`value`)); anything else -> (arg, None).
fn split_inline(s: &str) -> (&str, Option<&str>) {
    match s.split_once('=') {
        Some((opt, v)) if opt.starts_with("--") => (opt, Some(v)),
        _ => (s, None),
    }
}

fn option(arg: &OsStr) -> Result<(&str, Option<&str>), Usage> {
    match text(arg) {
        Some(s) => Ok(split_inline(s)),
        None => usage(format!("unexpected argument {arg:?}")),
    }
}

fn dir_value(cur: &mut Cursor, inline: Option<&str>) -> Result<PathBuf, Usage> {
    let v = cur.value("--dir", inline)?;
    if v.is_empty() {
        return usage("option --dir needs a non-empty directory");
    }
    Ok(PathBuf::from(v))
}

fn utf8_value(cur: &mut Cursor, opt: &str, inline: Option<&str>) -> Result<String, Usage> {
    let v = cur.value(opt, inline)?;
    v.into_string()
        .map_err(|v| Usage(format!("invalid value {v:?} for {opt}")))
}

/// A number of milliseconds.
fn millis(cur: &mut Cursor, opt: &str, inline: Option<&str>) -> Result<u64, Usage> {
    let v = utf8_value(cur, opt, inline)?;
    v.parse::<u64>()
        .map_err(|_| Usage(format!("{opt} takes a number of milliseconds, not {v:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, Usage> {
        parse(args.iter().map(OsString::from))
    }

    fn run_cmd(args: &[&str]) -> Command {
        p(args).unwrap().command
    }

    #[test]
    fn commands_and_options() {
        assert_eq!(
            p(&["check"]).unwrap(),
            Invocation {
                dir: None,
                command: Command::Check {
                    format: Format::Text,
                    url: None,
                    lock: None
                }
            }
        );
        assert_eq!(
            p(&["--dir", "/x", "check", "--json"]).unwrap(),
            Invocation {
                dir: Some("/x".into()),
                command: Command::Check {
                    format: Format::Json,
                    url: None,
                    lock: None
                }
            }
        );
        assert_eq!(
            run_cmd(&["check", "backend", "--side=LONG", "--json"]),
            Command::Check {
                format: Format::Json,
                url: None,
                lock: Some(("backend".into(), Some("LONG".into())))
            }
        );
        assert_eq!(
            run_cmd(&["check", "--json", "worker"]),
            Command::Check {
                format: Format::Json,
                url: None,
                lock: Some(("worker".into(), None))
            }
        );
        assert_eq!(
            p(&["clear", "--force", "--dir=/y"]).unwrap(),
            Invocation {
                dir: Some("/y".into()),
                command: Command::Clear {
                    force: true,
                    url: None
                }
            }
        );
        assert_eq!(
            run_cmd(&["check", "--url", "postgres://u@h/db", "--json"]),
            Command::Check {
                format: Format::Json,
                url: Some("postgres://u@h/db".into()),
                lock: None
            }
        );
        assert_eq!(
            run_cmd(&["clear", "--url=postgres://u@h/db", "-f"]),
            Command::Clear {
                force: true,
                url: Some("postgres://u@h/db".into())
            }
        );
        assert_eq!(
            run_cmd(&["check", "--format", "prometheus", "--dir", "/z"]),
            Command::Check {
                format: Format::Prometheus,
                url: None,
                lock: None
            }
        );
        assert_eq!(
            run_cmd(&["check", "--url=postgres://u@h/db", "--format=prometheus"]),
            Command::Check {
                format: Format::Prometheus,
                url: Some("postgres://u@h/db".into()),
                lock: None
            }
        );
        assert_eq!(
            run_cmd(&["check", "--json", "--format", "json"]),
            Command::Check {
                format: Format::Json,
                url: None,
                lock: None
            }
        );
        assert_eq!(run_cmd(&["--help"]), Command::Help);
        assert_eq!(run_cmd(&["run", "--help"]), Command::Help);
        assert_eq!(run_cmd(&["-V"]), Command::Version);
    }

    #[test]
    fn run_splits_its_options_from_the_command() {
        let expected = Command::Run {
            process_type: "backend".into(),
            side: Some("LONG".into()),
            name: Some("api".into()),
            url: None,
            wait_ms: Some(1500),
            replace: false,
            grace_ms: None,
            lease_ms: None,
            quiet: true,
            command: vec![
                "node".into(),
                "server.js".into(),
                "--side".into(),
                "x".into(),
            ],
        };
        assert_eq!(
            run_cmd(&[
                "run",
                "backend",
                "--side",
                "LONG",
                "--name=api",
                "--wait",
                "1500",
                "-q",
                "--",
                "node",
                "server.js",
                "--side",
                "x"
            ]),
            expected
        );
        // Without `--`, the command starts at the first word that is not an option.
        assert_eq!(
            run_cmd(&[
                "run",
                "--side=LONG",
                "backend",
                "--quiet",
                "--wait=1500",
                "--name",
                "api",
                "node",
                "server.js",
                "--side",
                "x"
            ]),
            expected
        );
        assert_eq!(
            run_cmd(&["run", "worker", "--", "--weird-command"]),
            Command::Run {
                process_type: "worker".into(),
                side: None,
                name: None,
                url: None,
                wait_ms: None,
                replace: false,
                grace_ms: None,
                lease_ms: None,
                quiet: false,
                command: vec!["--weird-command".into()],
            }
        );
        let replacing = |args: &[&str]| match run_cmd(args) {
            Command::Run {
                replace, grace_ms, ..
            } => (replace, grace_ms),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            replacing(&["run", "x", "--replace", "--", "y"]),
            (true, None)
        );
        assert_eq!(
            replacing(&["run", "x", "--replace", "--grace=250", "--", "y"]),
            (true, Some(250))
        );
        let on_server = |args: &[&str]| match run_cmd(args) {
            Command::Run {
                url,
                grace_ms,
                lease_ms,
                ..
            } => (url, grace_ms, lease_ms),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            on_server(&[
                "run",
                "x",
                "--url",
                "postgres://u@h/db",
                "--lease=3000",
                "--grace",
                "500",
                "--",
                "y"
            ]),
            (Some("postgres://u@h/db".into()), Some(500), Some(3000))
        );
    }

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &[][..],
            &["frobnicate"],
            &["--bogus"],
            &["check", "--force"],
            &["check", "backend", "worker"],
            &["check", "--side", "SHORT"],
            &["check", "backend", "--side"],
            &["clear", "extra"],
            &["check", "--dir"],
            &["check", "--dir="],
            &["check", "--format"],
            &["check", "--format", "yaml"],
            &["check", "--json", "--format", "prometheus"],
            &["check", "backend", "--format", "prometheus"],
            &["run"],
            &["run", "backend"],
            &["run", "backend", "--"],
            &["run", "backend", "--side"],
            &["run", "backend", "--bogus", "--", "x"],
            &["run", "backend", "--wait", "soon", "--", "x"],
            &["run", "backend", "--wait=-1", "--", "x"],
            &["run", "backend", "--lease", "soon", "--", "x"],
            &["run", "backend", "--url"],
            &["run", "backend", "--replace", "--grace", "soon", "--", "x"],
            &["run", "backend", "--replace", "--wait", "5", "--", "x"],
        ] {
            let Usage(msg) = p(args).unwrap_err();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{args:?}: {msg}");
        }
    }

    #[test]
    fn arbitrary_arguments_never_panic_and_fail_in_one_line() {
        // A deterministic fuzz over the options' vocabulary mixed with random bytes.
        const WORDS: &[&str] = &[
            "check",
            "clear",
            "run",
            "--",
            "--dir",
            "--dir=",
            "--side",
            "--side=",
            "--wait",
            "--wait=",
            "--name",
            "--json",
            "--format",
            "prometheus",
            "--force",
            "-q",
            "--quiet",
            "-h",
            "--help",
            "-V",
            "--version",
            "backend",
            "worker",
            "SHORT",
            "",
            "-",
            "=",
            "5",
            "-1",
            "1e9",
            "x y",
        ];
        let mut rng = processlock::testing::Xorshift::new(0x2545_F491_4F6C_DD1D);
        let mut next = move || rng.next_u64();
        for _ in 0..20_000 {
            let n = (next() % 7) as usize;
            let args: Vec<OsString> = (0..n)
                .map(|_| {
                    if next() % 4 == 0 {
                        let bytes: Vec<u8> = (0..next() % 8).map(|_| next() as u8).collect();
                        os_from_bytes(bytes)
                    } else {
                        WORDS[(next() as usize) % WORDS.len()].into()
                    }
                })
                .collect();
            if let Err(Usage(msg)) = parse(args.clone()) {
                assert!(!msg.is_empty() && !msg.contains('\n'), "{args:?}: {msg}");
            }
        }
    }

    #[cfg(unix)]
    fn os_from_bytes(bytes: Vec<u8>) -> OsString {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(bytes)
    }

    #[cfg(not(unix))]
    fn os_from_bytes(bytes: Vec<u8>) -> OsString {
        String::from_utf8_lossy(&bytes).into_owned().into()
    }
}
