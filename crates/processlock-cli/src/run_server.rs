//! `processlock run` with the lock on a PostgreSQL server (`--url`, `$PROCESSLOCK_URL`).
//!
//! A server lock belongs to a server session, and a session cannot be handed to another
//! process: the lock is held here, in this process, by `processlock-pg` (whose own thread
//! heartbeats and finds a loss), and the command runs as its child. So, unlike a lock file, the
//! lock lives exactly as long as this process. The record names this process's PID: `kill
//! <pid>` from a conflict line reaches this process, which passes SIGTERM on to the command.
//!
//! The command must not run without the lock, and the unit is its whole process tree (the app
//! behind `npm start` or `sh -c` included; see `tree.rs`):
//! * when the lock is lost (heartbeats unanswered until the loss deadline, the session ended,
//!   the server stopped), the loss line is printed, every process of the command gets SIGTERM
//!   at once and SIGKILL after the grace period, and this process exits with `LOST_EXIT_STATUS`
//!   (75) once none is left;
//! * when the command's main process ends (by itself, or killed by someone else, such as the
//!   OOM killer) and left processes behind, they are stopped the same way, as systemd stops a
//!   service whose main process ended; the lock is released only once none is left, and this
//!   process ends like the main process did;
//! * on Linux the main process is started with a parent-death signal (SIGKILL): if this process
//!   is killed with SIGKILL, which also ends its session and so frees the lock, the main process
//!   goes with it. Processes it started itself are not reached (they are re-parented to the
//!   next subreaper or init); a process that adopted the lock notices that its `run` is gone.
//!   Elsewhere, nothing is reached, and only the main process is stopped and waited for.
//!
//! The command learns the fencing token of its lock from `$PROCESSLOCK_FENCING_TOKEN`.
//!
//! A process of the command that takes the same lock itself (the app's own `acquireLock`) finds
//! it already owns it, once, as under `run` with a lock file: the command gets
//! `$PROCESSLOCK_SERVER_LOCK` naming the hold and a socket, on which this process hands a
//! one-shot claim token to the command's processes (the core's `inherit/server.rs`, which also
//! says how the claimant proves the hold real: the variable is believed in nothing). The one
//! that claims it adopts this process's hold; it holds no session, so a loss reaches it as the
//! SIGTERM sent to the command's processes.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::raw::c_int;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use processlock::report::{self, printable, LOST_EXIT_STATUS};
use processlock::{
    Cancel, ClaimNews, ClaimToken, HandoverSocket, LockName, ServerHold, Wait, SERVER_LOCK_ENV,
};

use crate::backend::{self, PgHeld, Server, ServerError as Error};
use crate::display::errln;
use crate::run::{cannot_run, exit_like, Relay};
use crate::signals::{self, Event};
use crate::tree::{self, Tree};

/// Set for the command: the fencing token of the lock it runs under (a decimal number).
pub const FENCING_TOKEN_ENV: &str = "PROCESSLOCK_FENCING_TOKEN";

/// While the command's processes are being stopped, how often the tree is walked again for
/// processes started meanwhile.
const STOP_POLL: Duration = Duration::from_millis(100);

/// How often a wait for the lock looks for a signal that ends it.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

pub struct Options {
    pub pg: Server,
    pub name: LockName,
    /// How long to wait for a holder to let go; `None`: fail at once.
    pub wait: Option<Duration>,
    /// How long the command may take to exit after SIGTERM once the lock is lost.
    pub grace: Duration,
    /// `--replace`: ask the holder, on any host, to let go, and wait this long for it.
    pub replace: Option<Duration>,
    pub quiet: bool,
    pub command: Vec<OsString>,
}

/// Returns the exit status; dies by the command's signal instead when it was killed by one.
pub fn run(o: Options) -> i32 {
    if let Err(e) = signals::install() {
        errln!("processlock: {e}");
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
    // Asked through the server to make way for a replacer: this process gets SIGTERM, which it
    // passes on to the command as any other (see `supervise`).
    let asked = o.name.clone();
    held.on_replace_request(Box::new(move |request| {
        backend::stop_this_process(&asked, request)
    }));
    let loss = match LossNotice::watch(&held) {
        Ok(loss) => loss,
        Err(e) => {
            let _ = held.release();
            errln!("processlock: {e}");
            return 1;
        }
    };
    let handover = match Handover::offer(&held, &o) {
        Ok(handover) => handover,
        Err(e) => {
            let _ = held.release();
            errln!("processlock: {e}");
            return 1;
        }
    };
    let mut cmd = Command::new(&o.command[0]);
    cmd.args(&o.command[1..])
        .env(FENCING_TOKEN_ENV, held.fencing_token())
        .env(SERVER_LOCK_ENV, &handover.env_value);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child and makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || child_side(parent));
    }
    // Before the command starts: every process it will start is ours to stop and wait for.
    tree::become_reaper();
    match cmd.spawn() {
        Ok(child) => {
            if !o.quiet {
                errln!("{}", report::acquired(&o.name, held.record().pid));
            }
            supervise(Tree::new(child.id()), held, &loss, Some(handover), &o)
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
    let first = match o.replace {
        Some(grace) => waiting(o, None, |wait| {
            let quiet = o.quiet;
            o.pg.take_replacing(&o.name, wait, grace, &mut |line, always| {
                // What the wait said comes before what followed it.
                say(o, wait);
                if always || !quiet {
                    errln!("{}", printable(&line));
                }
            })
        }),
        None => o.pg.take(&o.name, None),
    };
    let result = match (first, o.wait) {
        (Err(Error::Conflict(c)), Some(wait)) => {
            if !o.quiet {
                let holder = match (c.holder.pid, c.backend_pid) {
                    (0, Some(server_pid)) => format!("server process {server_pid}"),
                    (pid, _) => format!("PID {pid}"),
                };
                errln!(
                    "[PROCESS_LOCK_WAIT] {} is held by {holder}; waiting up to {} ms for it to end...",
                    o.name.display(),
                    wait.as_millis()
                );
            }
            waiting(o, Some(started + wait), |wait| {
                o.pg.take(&o.name, Some(wait))
            })
        }
        (first, _) => first,
    };
    result.map_err(|e| {
        if let Some(signal) = signals::first_received() {
            signals::die_by(signal);
        }
        if let Error::Conflict(c) = &e {
            for line in c.lines(&o.name) {
                errln!("{line}");
            }
        }
        errln!("[FATAL] {}", printable(&e.to_string()));
        1
    })
}

/// Runs `take` with a wait until `deadline` whose `Cancel` a signal to this process sets (a
/// handler cannot cancel: a signal ends the wait within `SIGNAL_POLL`), and whose lines (the
/// server gone away, and back) are said as they come.
fn waiting<T>(o: &Options, deadline: Option<Instant>, take: impl FnOnce(&Wait) -> T) -> T {
    let cancel = Cancel::new();
    let wait = Wait {
        deadline,
        cancel: &cancel,
        said: Arc::default(),
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| loop {
            let finished = done.load(Ordering::SeqCst);
            say(o, &wait);
            if finished {
                return;
            }
            if !cancel.is_cancelled() && signals::first_received().is_some() {
                cancel.cancel();
            }
            std::thread::sleep(SIGNAL_POLL);
        });
        let result = take(&wait);
        done.store(true, Ordering::SeqCst);
        result
    })
}

/// Says what the wait has said since it was last asked, unless quiet.
fn say(o: &Options, wait: &Wait) {
    let lines = std::mem::take(&mut *wait.said.lock().unwrap_or_else(|p| p.into_inner()));
    if !o.quiet {
        for line in lines {
            errln!("{}", printable(&line));
        }
    }
}

/// In the child, between fork and exec. Async-signal-safe calls only.
fn child_side(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: we are in the forked child; these are plain system calls on our own process.
    unsafe {
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
    /// Never inherited: a claimant gets it from this process over the socket, whose peer it
    /// checks, so that a pipe of its own proves nothing.
    token: ClaimToken,
    /// Without it (no socket could be made), nobody can claim: the command's processes that
    /// take the lock get a conflict, never a second hold.
    socket: Option<HandoverSocket>,
    env_value: String,
}

impl Handover {
    /// One of the socket's descriptors is readable: serves claimants the token, and hands out a
    /// new one once its owner is gone (an app restarted by its watcher adopts the hold again).
    /// Served: every process below this one, which is the command's tree (a process whose
    /// parent died was re-parented here, no longer below the main process).
    fn readable(&mut self, fd: c_int) -> io::Result<()> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let fds = [self.token.fd()];
        if socket.readable(fd, std::process::id(), &fds)? == ClaimNews::OwnerGone {
            self.token = ClaimToken::new()?;
        }
        Ok(())
    }

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

/// Why the command's processes are being stopped.
#[derive(Debug, Clone, Copy)]
enum Stopping {
    /// The lock was lost.
    Lost,
    /// The main process ended by itself (or was killed by someone else) and left others behind.
    MainEnded,
}

/// Waits for the command's main process, passing signals on to it, then for the rest of its
/// tree (see `tree.rs`); stops the whole tree if the lock is lost. Releases the lock only once
/// no process of the command is left, then ends like the main process (or with
/// `LOST_EXIT_STATUS`).
fn supervise(
    mut tree: Tree,
    held: PgHeld,
    loss: &LossNotice,
    mut handover: Option<Handover>,
    o: &Options,
) -> i32 {
    let pid = tree.main_pid();
    let mut relay = Relay::default();
    let mut main_status: Option<io::Result<ExitStatus>> = None;
    let mut stopping: Option<Stopping> = None;
    let mut lost = false;
    // Once stopping: when SIGKILL is due (`None` once sent).
    let mut kill_at: Option<Instant> = None;
    loop {
        match tree.reap() {
            Ok(reaped) => {
                if let Some(status) = reaped.main {
                    main_status = Some(Ok(status));
                }
                if reaped.none_left {
                    break;
                }
            }
            Err(e) => {
                // Cannot wait any more: nothing tells when the command ends.
                main_status.get_or_insert(Err(e));
                break;
            }
        }
        if main_status.is_some() && stopping.is_none() {
            // The main process is gone and others are left: the command is over, and what it
            // left behind must not run on without the lock, nor keep it from the next holder.
            handover = None;
            errln!(
                "processlock: the command's main process (PID {pid}) ended; stopping the processes it left: SIGTERM now, SIGKILL in {} ms",
                o.grace.as_millis()
            );
            stopping = Some(Stopping::MainEnded);
            tree.terminate();
            kill_at = Some(Instant::now() + o.grace);
        }
        let claimants = handover
            .as_ref()
            .and_then(|h| h.socket.as_ref())
            .map(HandoverSocket::fds)
            .unwrap_or_default();
        let (watched, timeout) = match stopping {
            None => (
                std::iter::once(loss.fd())
                    .chain(claimants.clone())
                    .collect(),
                None,
            ),
            // Watching the lock still, to say it was lost, while the rest is stopped; walking
            // the tree again now and then for processes started meanwhile.
            Some(_) => (
                (!lost).then(|| loss.fd()).into_iter().collect::<Vec<_>>(),
                Some(kill_at.map_or(STOP_POLL, |t| {
                    t.saturating_duration_since(Instant::now()).min(STOP_POLL)
                })),
            ),
        };
        match signals::next_event(&watched, timeout) {
            Ok(Event::Readable(fd)) if claimants.contains(&fd) => {
                if let Some(h) = &mut handover {
                    if let Err(e) = h.readable(fd) {
                        errln!("processlock: no longer handing the lock to the command's processes: {e}");
                        handover = None;
                    }
                }
            }
            Ok(Event::Readable(_)) => {
                // A lost lock is nobody's to adopt any more.
                handover = None;
                lost = true;
                let reason = held.lost().map(|l| l.reason).unwrap_or_default();
                errln!("{}", report::lost(&o.name, held.record().pid, &reason));
                if stopping.is_none() {
                    errln!(
                        "processlock: stopping the command (PID {pid}) and every process it started: SIGTERM now, SIGKILL in {} ms if any is left",
                        o.grace.as_millis()
                    );
                    tree.terminate();
                    stopping = Some(Stopping::Lost);
                    kill_at = Some(Instant::now() + o.grace);
                }
            }
            Ok(Event::TimedOut) => match kill_at {
                Some(t) if Instant::now() >= t => {
                    let left = tree.kill();
                    if !left.is_empty() {
                        let pids: Vec<String> = left.iter().map(|p| p.to_string()).collect();
                        errln!(
                            "processlock: still running {} ms after SIGTERM, sent SIGKILL: PID {}",
                            o.grace.as_millis(),
                            pids.join(", ")
                        );
                    }
                    kill_at = None;
                }
                Some(_) => {
                    tree.terminate();
                }
                // Until none is left.
                None => {
                    tree.kill();
                }
            },
            Ok(Event::Signal(note)) if note.signal == libc::SIGCHLD => {}
            Ok(Event::Signal(note)) => {
                if stopping.is_none() && relay.should_forward(&note) {
                    tree.signal_main(note.signal);
                }
            }
            Err(e) => {
                errln!("processlock: {e}");
                main_status.get_or_insert(Err(e));
                break;
            }
        }
    }
    // No claimant can adopt the hold any more.
    drop(handover);
    if lost || matches!(stopping, Some(Stopping::Lost)) {
        // Stopped for the loss: its own status would hide why it ended.
        drop(held);
        return LOST_EXIT_STATUS;
    }
    release(held, o);
    match main_status {
        Some(Ok(status)) => exit_like(status),
        Some(Err(e)) => {
            errln!("processlock: waiting for the command failed: {e}");
            1
        }
        None => 1,
    }
}

/// Lets go of the lock after the command ended by itself.
fn release(held: PgHeld, o: &Options) {
    let pid = held.record().pid;
    let lost = held.lost();
    match held.release() {
        Ok(true) => {
            if !o.quiet {
                errln!("{}", report::released(&o.name, pid));
            }
        }
        // Lost as the command ended: it did not run without the lock, but say so.
        Ok(false) => {
            let reason = lost.map_or_else(
                || "lost before it could be released".to_string(),
                |l| l.reason,
            );
            errln!("{}", report::lost(&o.name, pid, &reason));
        }
        Err(e) => errln!("processlock: {}", printable(&e.to_string())),
    }
}
