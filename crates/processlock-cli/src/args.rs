//! Hand-written argument parsing: three commands and a handful of options.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

pub const USAGE: &str = "\
processlock: one running instance per service

Usage:
  processlock check [--json] [--dir DIR | --url URL]
  processlock check <type> [--side SIDE] [--json] [--dir DIR | --url URL]
  processlock clear [--force] [--dir DIR | --url URL]
  processlock run <type> [--side SIDE] [--wait MS] [--name NAME] [--quiet] [--dir DIR] -- <command> [args...]

Commands:
  check   List the lock files in the lock directory: type, side, PID, start time, uptime,
          state (held, stale, invalid), process name, host (when not this one), file.
          --json prints an array for scripts. Exit status 0 whatever the states.
          With <type>: whether that one lock is held, for health checks and deploy scripts:
          exit status 0 held, 1 not held (no file, stale, or not a lock record), 3 cannot
          tell (an I/O error). --json prints one object with keys held and state.
  clear   Remove stale lock files and temp files left by crashed acquirers. Held locks are
          kept; --force removes them too (the processes keep running). Files that are not
          lock records (empty, unreadable, another program's) are listed and always kept.
  run     Take the lock <type> (e.g. backend, worker), run the command while holding it, and
          release it when the command ends. SIGINT, SIGTERM and SIGHUP are passed on to the
          command; processlock exits with its status, or dies by its signal. The command holds
          the lock itself: it stays held even if processlock is killed ($PROCESSLOCK_INHERITED,
          <fd>:<lock file>, tells it which descriptor that is). If another instance
          holds the lock, the command is not started and processlock exits with status 1
          (with --wait, once MS milliseconds have passed without the holder letting go).

Options:
  --dir DIR      Lock directory. Default: $PROCESSLOCK_DIR, else runtime/locks under the
                 nearest directory (from the current one up) that has a package.json.
  --url URL      Locks held on this PostgreSQL server instead of in a directory (check,
                 clear). Default: $PROCESSLOCK_URL. check lists lock, state, PID, host, start,
                 fencing token and client address; clear removes records no live session
                 stands behind; clear --force ends the session of every holder
                 (pg_terminate_backend, which needs the right role): the holders lose their
                 locks at their next heartbeat. run does not hold server locks yet: it refuses
                 to start while $PROCESSLOCK_URL is set.
  --side SIDE    Trade side of the lock (run, check <type>). Default: $TRADE_SIDE; '' for none.
  --wait MS      Wait up to MS milliseconds for a holder to let go (run). Default: 0, fail at once.
  --name NAME    Process name written in the lock record (run): at most 256 characters, no
                 control characters. Default: trader-<side>-<type>.
  -q, --quiet    Do not print the acquired/released lines (run). Conflicts are always printed.
  --json         Machine-readable output (check).
  --force        Also remove locks held by running processes (clear).
  -h, --help     Show this help.
  -V, --version  Show the version.

Exit status: 0 on success; 1 on a lock conflict or an I/O error; 2 on a usage error; for run,
otherwise the command's own status (127: command not found, 126: not executable); for
check <type>, as above.

run and clear refuse (LOCK_UNSAFE_DIR) a lock directory that other users may delete files in:
writable by others without the sticky bit, or owned by a user other than this one and root.
";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Check {
        json: bool,
        /// `--url`: a PostgreSQL server instead of the lock directory.
        url: Option<String>,
        /// `check <type>`: one lock, with its side (`None`: `$TRADE_SIDE`).
        lock: Option<(String, Option<String>)>,
    },
    Clear {
        force: bool,
        url: Option<String>,
    },
    Run {
        process_type: String,
        side: Option<String>,
        name: Option<String>,
        /// Milliseconds to wait for the holder; `None`: fail at once.
        wait_ms: Option<u64>,
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

struct Cursor {
    args: Vec<OsString>,
    next: usize,
}

impl Cursor {
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
    let mut cur = Cursor {
        args: args.into_iter().collect(),
        next: 0,
    };
    let mut dir: Option<PathBuf> = None;

    // Options before the command: --dir, --help, --version.
    let name = loop {
        let Some(arg) = cur.take() else {
            return usage("missing command: check, clear or run");
        };
        let Some(s) = text(&arg) else {
            return usage(format!("unknown command {:?}", arg));
        };
        let (opt, inline) = split_inline(s);
        match opt {
            "-h" | "--help" | "help" => {
                return Ok(Invocation {
                    dir,
                    command: Command::Help,
                })
            }
            "-V" | "--version" => {
                return Ok(Invocation {
                    dir,
                    command: Command::Version,
                })
            }
            "--dir" => dir = Some(dir_value(&mut cur, inline)?),
            _ if s.starts_with('-') => return usage(format!("unknown option {s}")),
            _ => break s.to_string(),
        }
    };

    let command = match name.as_str() {
        "check" => {
            let mut json = false;
            let mut url = None;
            let mut process_type = None;
            let mut side = None;
            while let Some(arg) = cur.take() {
                match option(&arg)? {
                    ("--json", None) => json = true,
                    ("--url", inline) => url = Some(utf8_value(&mut cur, "--url", inline)?),
                    ("--dir", inline) => dir = Some(dir_value(&mut cur, inline)?),
                    ("--side", inline) => side = Some(utf8_value(&mut cur, "--side", inline)?),
                    ("-h" | "--help", None) => return help(dir),
                    (word, None) if !word.starts_with('-') && process_type.is_none() => {
                        process_type = Some(word.to_string())
                    }
                    _ => return unexpected(&arg, "check"),
                }
            }
            let lock = match (process_type, side) {
                (Some(t), side) => Some((t, side)),
                (None, Some(_)) => {
                    return usage(
                        "--side needs a lock type, e.g. processlock check backend --side SHORT",
                    )
                }
                (None, None) => None,
            };
            Command::Check { json, url, lock }
        }
        "clear" => {
            let mut force = false;
            let mut url = None;
            while let Some(arg) = cur.take() {
                match option(&arg)? {
                    ("--force" | "-f", None) => force = true,
                    ("--url", inline) => url = Some(utf8_value(&mut cur, "--url", inline)?),
                    ("--dir", inline) => dir = Some(dir_value(&mut cur, inline)?),
                    ("-h" | "--help", None) => return help(dir),
                    _ => return unexpected(&arg, "clear"),
                }
            }
            Command::Clear { force, url }
        }
        "run" => {
            let mut process_type = None;
            let mut side = None;
            let mut name = None;
            let mut wait_ms = None;
            let mut quiet = false;
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
                    if process_type.is_none() {
                        cur.take();
                        match text(&arg) {
                            Some(t) => process_type = Some(t.to_string()),
                            None => return usage(format!("invalid lock type {arg:?}")),
                        }
                        continue;
                    }
                    // The command starts at the first word that is not an option.
                    break cur.rest();
                }
                cur.take();
                match option(&arg)? {
                    ("--side", inline) => side = Some(utf8_value(&mut cur, "--side", inline)?),
                    ("--name", inline) => name = Some(utf8_value(&mut cur, "--name", inline)?),
                    ("--wait", inline) => {
                        let v = utf8_value(&mut cur, "--wait", inline)?;
                        match v.parse::<u64>() {
                            Ok(0) => wait_ms = None,
                            Ok(ms) => wait_ms = Some(ms),
                            Err(_) => {
                                return usage(format!(
                                    "--wait takes a number of milliseconds, not {v:?}"
                                ))
                            }
                        }
                    }
                    ("--dir", inline) => dir = Some(dir_value(&mut cur, inline)?),
                    ("-q" | "--quiet", None) => quiet = true,
                    ("-h" | "--help", None) => return help(dir),
                    _ => return unexpected(&arg, "run"),
                }
            };
            let Some(process_type) = process_type else {
                return usage("run needs a lock type, e.g. processlock run backend -- <command>");
            };
            if command.is_empty() {
                return usage(format!(
                    "run needs a command to run, e.g. processlock run {process_type} -- node server.js"
                ));
            }
            Command::Run {
                process_type,
                side,
                name,
                wait_ms,
                quiet,
                command,
            }
        }
        other => {
            return usage(format!(
                "unknown command {other:?}: use check, clear or run"
            ))
        }
    };
    Ok(Invocation { dir, command })
}

fn help(dir: Option<PathBuf>) -> Result<Invocation, Usage> {
    Ok(Invocation {
        dir,
        command: Command::Help,
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
                    json: false,
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
                    json: true,
                    url: None,
                    lock: None
                }
            }
        );
        assert_eq!(
            run_cmd(&["check", "backend", "--side=LONG", "--json"]),
            Command::Check {
                json: true,
                url: None,
                lock: Some(("backend".into(), Some("LONG".into())))
            }
        );
        assert_eq!(
            run_cmd(&["check", "--json", "worker"]),
            Command::Check {
                json: true,
                url: None,
                lock: Some(("worker".into(), None))
            }
        );
        assert_eq!(
            run_cmd(&["check", "--url", "postgres://u@h/db", "--json"]),
            Command::Check {
                json: true,
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
            p(&["clear", "--force", "--dir=/y"]).unwrap(),
            Invocation {
                dir: Some("/y".into()),
                command: Command::Clear {
                    force: true,
                    url: None
                }
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
            wait_ms: Some(1500),
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
                wait_ms: None,
                quiet: false,
                command: vec!["--weird-command".into()],
            }
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
            &["run"],
            &["run", "backend"],
            &["run", "backend", "--"],
            &["run", "backend", "--side"],
            &["run", "backend", "--bogus", "--", "x"],
            &["run", "backend", "--wait", "soon", "--", "x"],
            &["run", "backend", "--wait=-1", "--", "x"],
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
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
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
