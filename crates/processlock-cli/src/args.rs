//! The command line, read by clap's derive API: the commands and their options are declared
//! once (`Cli`), which also gives the shell completions. What users script against is kept as it
//! was: the help text (`USAGE`, written by hand), one-line usage errors in the command's own words
//! (clap's errors are reworded in `reword`), and exit status 2 for them (in `main.rs`).

use std::error::Error as _;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{
    ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum, ValueHint,
};
pub use clap_complete::Shell;

pub const USAGE: &str = "\
processlock: one running instance per service

Usage:
  processlock check [--json | --format prometheus] [--dir DIR | --url URL]
  processlock check <type> [--side SIDE] [--json] [--dir DIR | --url URL]
  processlock clear [--force] [--dir DIR | --url URL]
  processlock run <type> [--side SIDE] [--wait MS | --replace [--grace MS]] [--name NAME] [--quiet]
                  [--dir DIR] -- <command> [args...]
  processlock run <type> --url URL [--side SIDE] [--wait MS | --replace] [--lease MS] [--grace MS]
                  [--name NAME] [--quiet] -- <command> [args...]
  processlock completions <shell>

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
          status 75 (other processes the command started are not reached). With --url,
          --replace asks the holder, on any host, through the server to stop (it sends itself
          SIGTERM) and starts the command once it let go; a holder still holding after
          --grace (default 10000) is a conflict, never killed.
  completions  Print the completion script for the shell (bash, elvish, fish, powershell or
          zsh), e.g. processlock completions bash > /etc/bash_completion.d/processlock

Options:
  --dir DIR      Lock directory. Default: $PROCESSLOCK_DIR, else runtime/locks under the
                 nearest directory (from the current one up) that has a package.json.
  --url URL      Locks held on this PostgreSQL server instead of in a directory. Default:
                 $PROCESSLOCK_URL. check lists lock, state, PID, host, start, fencing token and
                 client address; clear removes records no live session stands behind; clear
                 --force ends the session of every holder (pg_terminate_backend, which needs
                 the right role): the holders are told at once that their locks are lost. run
                 holds the lock on the server (see run above).
  --side SIDE    Trade side of the lock (run, check <type>). Default: $TRADE_SIDE. An empty
                 side is refused; for none, leave TRADE_SIDE empty: TRADE_SIDE= processlock ...
  --wait MS      Wait up to MS milliseconds for a holder to let go (run). Default: 0, fail at once.
  --replace      Stop the holder and take its place (run): SIGTERM, then SIGKILL after --grace.
  --grace MS     How long a replaced holder may take to exit after SIGTERM. Default: 10000.
                 With --url: how long the command may take to exit after SIGTERM once the lock
                 is lost (default: a quarter of the lease), and with --replace how long the
                 holder has to let go.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
    /// `completions <shell>`: the completion script for that shell.
    Completions(Shell),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub dir: Option<PathBuf>,
    pub command: Command,
}

/// A usage error: one line saying what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage<T>(msg: impl Into<String>) -> Result<T, Usage> {
    Err(Usage(msg.into()))
}

/// The commands, as clap reads them. Options take the next argument as their value whatever it
/// looks like (`--side --json` is the side `--json`), and a repeated option's last value wins.
#[derive(Parser, Debug)]
#[command(
    name = "processlock",
    version,
    args_override_self = true,
    disable_help_flag = true
)]
struct Cli {
    /// Show the help
    #[arg(short, long, global = true, action = ArgAction::Help)]
    help: Option<bool>,
    /// Lock directory (default: $PROCESSLOCK_DIR, else runtime/locks under the nearest package.json)
    #[arg(long, global = true, value_name = "DIR", value_hint = ValueHint::DirPath, allow_hyphen_values = true, value_parser = dir())]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// List the locks, or tell by the exit status whether one is held
    #[command(args_override_self = true)]
    Check(CheckArgs),
    /// Remove lock records no running process holds
    #[command(args_override_self = true)]
    Clear(ClearArgs),
    /// Hold a lock for as long as a command runs
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Show the help
    #[command(hide = true)]
    Help {
        /// Whatever follows `help` is not looked at
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _rest: Vec<OsString>,
    },
    /// Print the completion script for a shell
    Completions {
        /// bash, elvish, fish, powershell or zsh
        #[arg(value_name = "SHELL")]
        shell: Option<Shell>,
    },
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The lock to ask about (e.g. backend); without it, every lock is listed
    #[arg(value_name = "TYPE", value_parser = lock_type())]
    process_type: Option<String>,
    /// Trade side of the lock (default: $TRADE_SIDE)
    #[arg(long, value_name = "SIDE", allow_hyphen_values = true, value_parser = text("--side"))]
    side: Option<String>,
    /// Machine-readable output: the same as --format json
    #[arg(long)]
    json: bool,
    /// Output: text, json or prometheus (the listing only)
    #[arg(long, value_name = "FMT", action = ArgAction::Append, allow_hyphen_values = true)]
    format: Vec<Format>,
    /// Locks held on this PostgreSQL server (default: $PROCESSLOCK_URL)
    #[arg(long, value_name = "URL", allow_hyphen_values = true, value_parser = text("--url"))]
    url: Option<String>,
}

#[derive(Args, Debug)]
struct ClearArgs {
    /// Also remove locks held by running processes (on a server: end their sessions)
    #[arg(short, long)]
    force: bool,
    /// Locks held on this PostgreSQL server (default: $PROCESSLOCK_URL)
    #[arg(long, value_name = "URL", allow_hyphen_values = true, value_parser = text("--url"))]
    url: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The lock to hold (e.g. backend)
    #[arg(value_name = "TYPE", value_parser = lock_type())]
    process_type: Option<String>,
    /// The command and its arguments: after --, or from the first word after the lock type
    #[arg(value_name = "COMMAND", trailing_var_arg = true, value_hint = ValueHint::CommandWithArguments, value_parser = OsStringValueParser::new())]
    command: Vec<OsString>,
    /// Trade side of the lock (default: $TRADE_SIDE)
    #[arg(long, value_name = "SIDE", allow_hyphen_values = true, value_parser = text("--side"))]
    side: Option<String>,
    /// Process name written in the lock record (default: trader-<side>-<type>)
    #[arg(long, value_name = "NAME", allow_hyphen_values = true, value_parser = text("--name"))]
    name: Option<String>,
    /// Wait up to MS milliseconds for a holder to let go
    #[arg(long, value_name = "MS", allow_hyphen_values = true, value_parser = millis("--wait"))]
    wait: Option<u64>,
    /// Stop the holder and take its place: SIGTERM, then SIGKILL after --grace
    #[arg(long)]
    replace: bool,
    /// How long a replaced holder (or, on a server, the command once the lock is lost) may take to exit after SIGTERM
    #[arg(long, value_name = "MS", allow_hyphen_values = true, value_parser = millis("--grace"))]
    grace: Option<u64>,
    /// Hold the lock on this PostgreSQL server (default: $PROCESSLOCK_URL)
    #[arg(long, value_name = "URL", allow_hyphen_values = true, value_parser = text("--url"))]
    url: Option<String>,
    /// With --url: how long the server keeps the lock of a holder it no longer hears from
    #[arg(long, value_name = "MS", allow_hyphen_values = true, value_parser = millis("--lease"))]
    lease: Option<u64>,
    /// Do not print the acquired/released lines
    #[arg(short, long)]
    quiet: bool,
}

/// Writes the completion script for `shell` to stdout.
pub fn print_completions(shell: Shell) {
    // Made in memory first: clap_complete panics when it cannot write, as into a closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "processlock", &mut script);
    crate::display::print(&String::from_utf8_lossy(&script));
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, Usage> {
    let args: Vec<OsString> = args.into_iter().collect();
    let argv = std::iter::once(OsString::from("processlock")).chain(args.iter().cloned());
    let matches = match Cli::command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Ok(Invocation {
                        dir: None,
                        command: Command::Help,
                    })
                }
                ErrorKind::DisplayVersion => Ok(Invocation {
                    dir: None,
                    command: Command::Version,
                }),
                _ => Err(reword(&e, &args)),
            };
        }
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| reword(&e, &args))?;
    let command = match cli.command {
        None => return usage("missing command: check, clear or run"),
        Some(Sub::Check(c)) => check_command(c)?,
        Some(Sub::Clear(c)) => Command::Clear {
            force: c.force,
            url: c.url,
        },
        Some(Sub::Run(r)) => {
            // Read as the lock type `node`, `run -- node app.js` would run `app.js` under the
            // wrong lock.
            if separator_before_type(&args) {
                return usage("run needs a lock type, e.g. processlock run backend -- <command>");
            }
            run_command(r)?
        }
        Some(Sub::Help { .. }) => Command::Help,
        Some(Sub::Completions { shell }) => match shell {
            Some(shell) => Command::Completions(shell),
            None => {
                return usage("completions needs a shell: bash, elvish, fish, powershell or zsh")
            }
        },
    };
    Ok(Invocation {
        dir: cli.dir,
        command,
    })
}

/// Whether `--` ends `run`'s options before a lock type was given (`run -- node app.js`).
/// Options that take a value are known from clap's own declaration of them.
fn separator_before_type(args: &[OsString]) -> bool {
    let Some((at, "run")) = command_in(args) else {
        return false;
    };
    let cli = Cli::command();
    let takes_value = |long: &str| {
        let run = cli.find_subcommand("run").into_iter();
        run.chain([&cli])
            .flat_map(|c| c.get_arguments())
            .any(|a| a.get_long() == Some(long) && a.get_action().takes_values())
    };
    let mut rest = args[at + 1..].iter().map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        match arg {
            Some("--") => return true,
            Some(opt) if opt.starts_with("--") => {
                if !opt.contains('=') && takes_value(&opt[2..]) {
                    rest.next();
                }
            }
            Some(flag) if flag.starts_with('-') && flag != "-" => {}
            _ => return false,
        }
    }
    false
}

fn check_command(c: CheckArgs) -> Result<Command, Usage> {
    // `--json` and `--format` name one output: a second, different one is a mistake.
    let mut formats = c.format;
    if c.json {
        formats.push(Format::Json);
    }
    if formats.windows(2).any(|f| f[0] != f[1]) {
        return usage("--json and --format ask for different outputs: give one");
    }
    let lock = match (c.process_type, c.side) {
        (Some(t), side) => Some((t, side)),
        (None, Some(_)) => {
            return usage("--side needs a lock type, e.g. processlock check backend --side SHORT")
        }
        (None, None) => None,
    };
    let format = formats.first().copied().unwrap_or(Format::Text);
    if format == Format::Prometheus && lock.is_some() {
        return usage("--format prometheus lists every lock: drop the lock type (check <type> answers by its exit status)");
    }
    Ok(Command::Check {
        format,
        url: c.url,
        lock,
    })
}

/// Checks `run`'s options against each other and the command.
fn run_command(r: RunArgs) -> Result<Command, Usage> {
    let Some(process_type) = r.process_type else {
        return usage("run needs a lock type, e.g. processlock run backend -- <command>");
    };
    if r.command.is_empty() {
        return usage(format!(
            "run needs a command to run, e.g. processlock run {process_type} -- node server.js"
        ));
    }
    // 0 is the default: fail at once.
    let wait_ms = r.wait.filter(|&ms| ms > 0);
    // Whether --grace and --lease make sense depends on where the lock is, which
    // $PROCESSLOCK_URL may decide: checked once that is known.
    if r.replace && wait_ms.is_some() {
        return usage("--replace waits for the holder by itself (see --grace); drop --wait");
    }
    Ok(Command::Run {
        process_type,
        side: r.side,
        name: r.name,
        url: r.url,
        wait_ms,
        replace: r.replace,
        grace_ms: r.grace,
        lease_ms: r.lease,
        quiet: r.quiet,
        command: r.command,
    })
}

/// A value parser: options are UTF-8; values (a directory, a command's arguments) may be any
/// bytes. `check` maps the value or says in one line why it is refused.
fn parser<T: Clone + Send + Sync + 'static>(
    check: impl Fn(OsString) -> Result<T, Usage> + Clone + Send + Sync + 'static,
) -> impl TypedValueParser<Value = T> {
    OsStringValueParser::new().try_map(check)
}

fn utf8(v: OsString, opt: &str) -> Result<String, Usage> {
    v.into_string()
        .map_err(|v| Usage(format!("invalid value {v:?} for {opt}")))
}

fn text(opt: &'static str) -> impl TypedValueParser<Value = String> {
    parser(move |v: OsString| utf8(v, opt))
}

/// A number of milliseconds.
fn millis(opt: &'static str) -> impl TypedValueParser<Value = u64> {
    parser(move |v: OsString| {
        let v = utf8(v, opt)?;
        v.parse::<u64>()
            .map_err(|_| Usage(format!("{opt} takes a number of milliseconds, not {v:?}")))
    })
}

fn dir() -> impl TypedValueParser<Value = PathBuf> {
    parser(|v: OsString| {
        if v.is_empty() {
            return usage("option --dir needs a non-empty directory");
        }
        Ok(PathBuf::from(v))
    })
}

fn lock_type() -> impl TypedValueParser<Value = String> {
    parser(|v: OsString| {
        v.into_string()
            .map_err(|v| Usage(format!("invalid lock type {v:?}")))
    })
}

/// The commands a usage error may be about.
const COMMANDS: [&str; 4] = ["check", "clear", "run", "completions"];

/// One line in the command's own words for what clap refused. `args`: the arguments after the
/// program name.
fn reword(e: &clap::Error, args: &[OsString]) -> Usage {
    // A value parser's own message says it all.
    if let Some(u) = e.source().and_then(|s| s.downcast_ref::<Usage>()) {
        return Usage(u.0.clone());
    }
    let arg = match e
        .get(ContextKind::InvalidArg)
        .or(e.get(ContextKind::InvalidSubcommand))
    {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let command = command_in(args).map(|(_, c)| c);
    match (e.kind(), arg, command) {
        // A value that is not one of the possible values.
        (ErrorKind::InvalidValue, Some(arg), _) if !invalid_value(e).is_empty() => {
            let subject = match arg.split_whitespace().next() {
                Some(opt) if opt.starts_with('-') => opt,
                _ => command.unwrap_or("processlock"),
            };
            Usage(format!(
                "{} takes {}, not {:?}",
                subject.escape_debug(),
                possible_values(e),
                invalid_value(e)
            ))
        }
        // No value: clap names the option with its value's placeholder, `--side <SIDE>`.
        (ErrorKind::InvalidValue, Some(opt), _) => {
            let opt = opt.split_whitespace().next().unwrap_or(opt);
            Usage(format!("option {} needs a value", opt.escape_debug()))
        }
        // A flag given a value (`--json=x`) is not an option the command knows.
        (
            ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand | ErrorKind::TooManyValues,
            Some(a),
            None,
        ) => {
            if first_word(args).is_some_and(|(_, w)| w == "--") {
                Usage("unknown option --".to_string())
            } else if a.starts_with('-') {
                // As typed: clap leaves out an `=value`.
                let typed = args
                    .iter()
                    .filter_map(|t| t.to_str())
                    .find(|t| t.strip_prefix(a).is_some_and(|v| v.starts_with('=')));
                Usage(format!(
                    "unknown option {}",
                    typed.unwrap_or(a).escape_debug()
                ))
            } else {
                Usage(format!("unknown command {a:?}: use check, clear or run"))
            }
        }
        (ErrorKind::UnknownArgument | ErrorKind::TooManyValues, Some(a), Some(command))
            if a.starts_with('-') =>
        {
            let opt = a.split_once('=').map_or(a, |(opt, _)| opt);
            Usage(format!(
                "unknown option {} for {command}",
                opt.escape_debug()
            ))
        }
        (ErrorKind::UnknownArgument, Some(a), Some(command)) => {
            Usage(format!("unexpected argument {a:?} for {command}"))
        }
        // Anything else: clap's own first line.
        _ => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            Usage(line.trim_start_matches("error: ").to_string())
        }
    }
}

fn invalid_value(e: &clap::Error) -> &str {
    match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v,
        _ => "",
    }
}

/// `a, b or c`.
fn possible_values(e: &clap::Error) -> String {
    let values = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => v.as_slice(),
        _ => &[],
    };
    match values {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The first word of the arguments after the options before the command (`--dir DIR`, `-h`):
/// the command, or `--`; and where it is.
fn first_word(args: &[OsString]) -> Option<(usize, &str)> {
    let mut args = args.iter().enumerate();
    while let Some((at, arg)) = args.next() {
        match arg.to_str()? {
            "--dir" => {
                args.next();
            }
            "--" => return Some((at, "--")),
            a if a.starts_with('-') => {}
            a => return Some((at, a)),
        }
    }
    None
}

/// The command the arguments name, and where.
fn command_in(args: &[OsString]) -> Option<(usize, &'static str)> {
    let (at, word) = first_word(args)?;
    COMMANDS.iter().find(|c| **c == word).map(|c| (at, *c))
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
        assert_eq!(run_cmd(&["help"]), Command::Help);
        assert_eq!(run_cmd(&["check", "-h"]), Command::Help);
        assert_eq!(run_cmd(&["-V"]), Command::Version);
        // After the command has started, its words are its own.
        match run_cmd(&["run", "backend", "node", "--help", "-V"]) {
            Command::Run { command, .. } => assert_eq!(command, ["node", "--help", "-V"]),
            other => panic!("{other:?}"),
        }
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
    fn usage_errors_keep_their_words() {
        // Scripts and people grep for these: the words of the hand-written parser that came
        // before clap, kept.
        for (args, expected) in [
            (&[][..], "missing command: check, clear or run"),
            (&["frobnicate"], "unknown command \"frobnicate\": use check, clear or run"),
            (&["--bogus"], "unknown option --bogus"),
            (&["--bogus=1"], "unknown option --bogus=1"),
            (&["--", "check"], "unknown option --"),
            (&["--dir"], "option --dir needs a value"),
            (&["--dir", "/x"], "missing command: check, clear or run"),
            (&["check", "--force"], "unknown option --force for check"),
            (&["check", "-V"], "unknown option -V for check"),
            (&["check", "backend", "worker"], "unexpected argument \"worker\" for check"),
            (&["check", "--side", "SHORT"], "--side needs a lock type, e.g. processlock check backend --side SHORT"),
            (&["check", "backend", "--side"], "option --side needs a value"),
            (&["check", "--dir="], "option --dir needs a non-empty directory"),
            (&["check", "--format", "yaml"], "--format takes text, json or prometheus, not \"yaml\""),
            (&["check", "--json", "--format", "prometheus"], "--json and --format ask for different outputs: give one"),
            (&["check", "--format", "text", "--format", "json"], "--json and --format ask for different outputs: give one"),
            (&["check", "backend", "--format", "prometheus"], "--format prometheus lists every lock: drop the lock type (check <type> answers by its exit status)"),
            (&["clear", "extra"], "unexpected argument \"extra\" for clear"),
            (&["clear", "--bogus=3"], "unknown option --bogus for clear"),
            (&["clear", "--force=yes"], "unknown option --force for clear"),
            (&["check", "--json=x"], "unknown option --json for check"),
            (&["run"], "run needs a lock type, e.g. processlock run backend -- <command>"),
            (&["run", "--", "node", "app.js"], "run needs a lock type, e.g. processlock run backend -- <command>"),
            (&["run", "backend", "--"], "run needs a command to run, e.g. processlock run backend -- node server.js"),
            (&["run", "backend", "--bogus", "--", "x"], "unknown option --bogus for run"),
            (&["run", "backend", "--wait", "soon", "--", "x"], "--wait takes a number of milliseconds, not \"soon\""),
            (&["run", "backend", "--wait", "-1", "--", "x"], "--wait takes a number of milliseconds, not \"-1\""),
            (&["run", "backend", "--url"], "option --url needs a value"),
            (&["run", "backend", "--replace", "--wait", "5", "--", "x"], "--replace waits for the holder by itself (see --grace); drop --wait"),
            (&["completions"], "completions needs a shell: bash, elvish, fish, powershell or zsh"),
            (&["completions", "tcsh"], "completions takes bash, elvish, fish, powershell or zsh, not \"tcsh\""),
        ] {
            assert_eq!(p(args), Err(Usage(expected.to_string())), "{args:?}");
        }
    }

    #[test]
    fn completions_name_their_shell() {
        assert_eq!(
            run_cmd(&["completions", "bash"]),
            Command::Completions(Shell::Bash)
        );
        assert_eq!(
            run_cmd(&["completions", "zsh"]),
            Command::Completions(Shell::Zsh)
        );
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
