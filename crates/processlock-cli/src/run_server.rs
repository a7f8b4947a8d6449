//! `processlock run` with the lock on a PostgreSQL server (`--url`, `$PROCESSLOCK_URL`).
//!
//! A server lock belongs to a server session, and a session cannot be handed to another
//! process: the lock is held here, in this process, by `processlock-pg` (whose own thread
//! heartbeats and finds a loss), and the command runs as its child. So, unlike a lock file, the
//! lock lives exactly as long as this process. The record names this process's PID: `kill
//! <pid>` from a conflict line reaches this process, which passes SIGTERM on to the command.
//!
//! The command must not run without the lock:
//! * when the lock is lost (heartbeats unanswered until the loss deadline, the session ended,
//!   the server stopped), the loss line is printed, the command gets SIGTERM at once and SIGKILL
//!   after the grace period, and this process exits with `LOST_EXIT_STATUS` (75);
//! * on Linux the command is started with a parent-death signal (SIGKILL): if this process is
//!   killed with SIGKILL, which also ends its session and so frees the lock, the command goes
//!   with it. Processes the command started itself are not reached; elsewhere, nothing is.
//!
//! The command learns the fencing token of its lock from `$PROCESSLOCK_FENCING_TOKEN`.
//!
//! A process of the command that takes the same lock itself (the app's own `acquireLock`) finds
//! it already owns it, once, as under `run` with a lock file: the command gets a one-shot claim
//! token and `$PROCESSLOCK_SERVER_LOCK` naming the hold (the core's `inherit/server.rs`), and
//! this process answers, on a socket, the command's processes whose launcher closed the
//! token's descriptor. The one that claims it adopts this process's hold; it holds no session,
//! so a loss reaches it as the SIGTERM sent to the command.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::raw::c_int;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use processlock::report::{self, printable, LOST_EXIT_STATUS};
use processlock::{Cancel, ClaimToken, HandoverSocket, LockName, ServerHold, SERVER_LOCK_ENV};
use processlock_pg::{Error, PgHeld, PgOptions};

use crate::run::{cannot_run, exit_like, Relay};
use crate::signals::{self, Event};

/// Set for the command: the fencing token of the lock it runs under (a decimal number).
pub const FENCING_TOKEN_ENV: &str = "PROCESSLOCK_FENCING_TOKEN";

/// How often a wait for the lock looks for a signal that ends it.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

pub struct Options {
    pub pg: PgOptions,
    pub name: LockName,
    /// How long to wait for a holder to let go; `None`: fail at once.
    pub wait: Option<Duration>,
    /// How long the command may take to exit after SIGTERM once the lock is lost.
    pub grace: Duration,
    pub quiet: bool,
    pub command: Vec<OsString>,
}

/// Returns the exit status; dies by the command's signal instead when it was killed by one.
pub fn run(o: Options) -> i32 {
    if let Err(e) = signals::install() {
        eprintln!("processlock: {e}");
        return 1;
    }
    let held = match take(&o) {
        Ok(held) => held,
        Err(status) => return status,
    };
    if let Some(signal) = signals::first_received() {
        // Told to stop while the lock was being taken: the command never starts.
        let _ = held.release();
        signals::die_by(signal);
    }
    let loss = match LossNotice::watch(&held) {
        Ok(loss) => loss,
        Err(e) => {
            let _ = held.release();
            eprintln!("processlock: {e}");
            return 1;
        }
    };
    let handover = match Handover::offer(&held, &o) {
        Ok(handover) => handover,
        Err(e) => {
            let _ = held.release();
            eprintln!("processlock: {e}");
            return 1;
        }
    };
    let mut cmd = Command::new(&o.command[0]);
    cmd.args(&o.command[1..])
        .env(FENCING_TOKEN_ENV, held.fencing_token())
        .env(SERVER_LOCK_ENV, &handover.env_value);
    let parent = std::process::id() as libc::pid_t;
    let token = handover.token.fd();
    // SAFETY: the closure runs in the forked child and makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || child_side(parent, token));
    }
    match cmd.spawn() {
        Ok(child) => {
            if !o.quiet {
                eprintln!("{}", report::acquired(&o.name, held.record().pid));
            }
            supervise(child, held, &loss, Some(handover), &o)
        }
        Err(e) => {
            let _ = held.release();
            cannot_run(&o.command[0].to_string_lossy(), &e)
        }
    }
}

/// Takes the lock, at once or waiting; on failure, the lines to print have been printed and the
/// exit status is returned.
fn take(o: &Options) -> Result<PgHeld, i32> {
    let started = Instant::now();
    let result = match (processlock_pg::acquire(&o.pg, &o.name), o.wait) {
        (Err(Error::Conflict(c)), Some(wait)) => {
            if !o.quiet {
                let holder = match (c.holder.pid, c.backend_pid) {
                    (0, Some(server_pid)) => format!("server process {server_pid}"),
                    (pid, _) => format!("PID {pid}"),
                };
                eprintln!(
                    "[PROCESS_LOCK_WAIT] {} is held by {holder}; waiting up to {} ms for it to end...",
                    o.name.display(),
                    wait.as_millis()
                );
            }
            wait_for(o, started + wait)
        }
        (first, _) => first,
    };
    result.map_err(|e| {
        if let Some(signal) = signals::first_received() {
            signals::die_by(signal);
        }
        if let Error::Conflict(c) = &e {
            for line in c.lines(&o.name) {
                eprintln!("{line}");
            }
        }
        eprintln!("[FATAL] {}", printable(&e.to_string()));
        1
    })
}

/// Waits in the server until `deadline`; a signal (which cannot cancel from its handler) ends
/// the wait within `SIGNAL_POLL`.
fn wait_for(o: &Options, deadline: Instant) -> processlock_pg::Result<PgHeld> {
    let cancel = Cancel::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if signals::first_received().is_some() {
                    cancel.cancel();
                    return;
                }
                std::thread::sleep(SIGNAL_POLL);
            }
        });
        // A server that goes away and comes back during the wait is said, not fatal.
        let (quiet, name) = (o.quiet, o.name.clone());
        let notices = std::sync::Arc::new(move |n: &processlock_pg::WaitNotice| {
            if !quiet {
                eprintln!("{}", printable(&n.line(&name)));
            }
        });
        let result =
            processlock_pg::acquire_wait_noting(&o.pg, &o.name, Some(deadline), &cancel, notices);
        done.store(true, Ordering::SeqCst);
        result
    })
}

/// In the child, between fork and exec. Async-signal-safe calls only. `token`: the claim
/// token's descriptor, kept across exec.
fn child_side(parent: libc::pid_t, token: c_int) -> io::Result<()> {
    // SAFETY: we are in the forked child; these are plain system calls on our own process.
    unsafe {
        let flags = libc::fcntl(token, libc::F_GETFD);
        if flags == -1 || libc::fcntl(token, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
            return Err(io::Error::last_os_error());
        }
        // Our handlers would swallow a signal meant for the command.
        signals::reset_in_child();
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // We were forked by a process that has died since: no signal will come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = parent;
    Ok(())
}

/// What lets one process of the command adopt this process's hold.
struct Handover {
    token: ClaimToken,
    /// Without it (no socket could be made), only processes that inherited the token's
    /// descriptor can claim: a launcher that closes it makes its app conflict, never co-own.
    socket: Option<HandoverSocket>,
    env_value: String,
}

impl Handover {
    fn offer(held: &PgHeld, o: &Options) -> io::Result<Self> {
        let lock =
            o.pg.lock_id(&o.name)
                .map_err(|e| io::Error::other(e.to_string()))?;
        let hold = ServerHold {
            lock,
            fencing_token: held.fencing_token().to_string(),
            holder: held.record().clone(),
        };
        let token = ClaimToken::new()?;
        let socket = HandoverSocket::bind().ok();
        let env_value = token.server_env_value(&hold, socket.as_ref());
        Ok(Self {
            token,
            socket,
            env_value,
        })
    }
}

/// A pipe that becomes readable when the lock is lost: the loss hook runs on the lock's own
/// thread, and the main loop waits for signals and this together.
struct LossNotice {
    read: OwnedFd,
}

impl LossNotice {
    fn watch(held: &PgHeld) -> io::Result<Self> {
        let (read, write) = processlock::cloexec_pipe()?;
        let mut write = std::fs::File::from(write);
        held.on_lost(Box::new(move |_| {
            // One byte in an empty pipe cannot block; the descriptor closes with the hook.
            let _ = write.write_all(&[1]);
        }));
        Ok(Self { read })
    }

    fn fd(&self) -> c_int {
        self.read.as_raw_fd()
    }
}

/// Waits for the command, passing signals on and stopping it if the lock is lost, then releases
/// the lock and ends like the command (or with `LOST_EXIT_STATUS`).
fn supervise(
    mut child: Child,
    held: PgHeld,
    loss: &LossNotice,
    mut handover: Option<Handover>,
    o: &Options,
) -> i32 {
    let pid = child.id() as libc::pid_t;
    let signal_child = |signal: c_int| {
        // The child is not reaped before try_wait says so, so its PID is still ours.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, signal) };
    };
    let mut relay = Relay::default();
    // Once the lock is lost: when SIGKILL is due (`None` once sent).
    let mut stopping: Option<Option<Instant>> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let claimants = handover
            .as_ref()
            .and_then(|h| h.socket.as_ref())
            .map(|s| s.fd());
        let (watched, timeout) = match stopping {
            None => ([Some(loss.fd()), claimants], None),
            Some(kill_at) => (
                [None, None],
                kill_at.map(|t| t.saturating_duration_since(Instant::now())),
            ),
        };
        let watched: Vec<c_int> = watched.into_iter().flatten().collect();
        match signals::next_event(&watched, timeout) {
            Ok(Event::Readable(fd)) if Some(fd) == claimants => {
                if let Some(h) = &handover {
                    let socket = h.socket.as_ref().expect("watched, so present");
                    if let Err(e) = socket.serve_waiting(pid as u32, &[h.token.fd()]) {
                        eprintln!("processlock: no longer handing the lock to the command's processes: {e}");
                        handover = None;
                    }
                }
            }
            Ok(Event::Readable(_)) => {
                // A lost lock is nobody's to adopt any more.
                handover = None;
                let reason = held.lost().map(|l| l.reason).unwrap_or_default();
                eprintln!("{}", report::lost(&o.name, held.record().pid, &reason));
                eprintln!(
                    "processlock: stopping the command (PID {pid}): SIGTERM now, SIGKILL in {} ms if it has not exited",
                    o.grace.as_millis()
                );
                signal_child(libc::SIGTERM);
                stopping = Some(Some(Instant::now() + o.grace));
            }
            Ok(Event::TimedOut) => {
                eprintln!(
                    "processlock: the command (PID {pid}) was still running {} ms after SIGTERM; sent SIGKILL",
                    o.grace.as_millis()
                );
                signal_child(libc::SIGKILL);
                stopping = Some(None);
            }
            Ok(Event::Signal(note)) if note.signal == libc::SIGCHLD => {}
            Ok(Event::Signal(note)) => {
                if relay.should_forward(&note) {
                    signal_child(note.signal);
                }
            }
            Err(_) => break child.wait(),
        }
    };
    // No claimant can adopt the hold any more.
    drop(handover);
    if stopping.is_some() {
        // Stopped for the loss: its own status would hide why it ended.
        drop(held);
        return LOST_EXIT_STATUS;
    }
    release(held, o);
    match status {
        Ok(status) => exit_like(status),
        Err(e) => {
            eprintln!("processlock: waiting for the command failed: {e}");
            1
        }
    }
}

/// Lets go of the lock after the command ended by itself.
fn release(held: PgHeld, o: &Options) {
    let pid = held.record().pid;
    let lost = held.lost();
    match held.release() {
        Ok(true) => {
            if !o.quiet {
                eprintln!("{}", report::released(&o.name, pid));
            }
        }
        // Lost as the command ended: it did not run without the lock, but say so.
        Ok(false) => {
            let reason = lost.map_or_else(
                || "lost before it could be released".to_string(),
                |l| l.reason,
            );
            eprintln!("{}", report::lost(&o.name, pid, &reason));
        }
        Err(e) => eprintln!("processlock: {}", printable(&e.to_string())),
    }
}
