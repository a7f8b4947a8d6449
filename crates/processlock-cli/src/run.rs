//! `processlock run`: holds a lock for as long as a command runs.
//!
//! The lock is held by the command itself: it inherits a duplicate of the lock file's descriptor
//! (the flock belongs to the open file description, which both processes share), so it stays
//! held until the command and everything that inherited it from the command have ended, even if
//! this process is killed with SIGKILL. The record names the command's PID, so `check` and
//! conflict messages point at the process that actually holds the lock.
//!
//! With it the command inherits a one-shot claim token (see the core's `inherit.rs`): the one
//! process of its tree that takes the same lock first owns it (npm, a shell or any launcher in
//! between); every other one gets a conflict, as it would without `run`. The command also gets
//! `PROCESSLOCK_DIR` set to the lock directory used here, so that its own acquire names the
//! same file wherever it resolves its default directory from.
//!
//! The command's PID exists only after the fork, and the lock must be taken before the command
//! starts. So:
//!
//! 1. a fresh locked temp file is made (`PendingLock`), not yet visible at the lock path;
//! 2. the child is forked; between fork and exec it sends its PID through a pipe and waits;
//! 3. a helper thread (this thread is inside `Command::spawn` meanwhile) writes the record naming
//!    that PID, links the file at the lock path (`PendingLock::commit`) and answers "go" or "stop";
//! 4. on "go" the child marks the descriptor and the token inheritable and execs the command;
//!    on "stop" (a conflict, an error, or a signal that arrived meanwhile) it exits without
//!    running it.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use processlock::{
    judge_pid, record_for, remove_if_stale, report, Acquired, ClaimNews, ClaimToken, Error,
    HandoverSocket, LockName, LockTarget, PendingLock, Record, Removal, DIR_ENV,
};

use crate::display::errln;
use crate::errno;
use crate::signals::{self, Event, Note};
use crate::wait::wait_sliced;

const GO: u8 = 1;
const STOP: u8 = 0;

/// A copy of a signal that our parent relays within this long after we saw the same signal
/// (from the terminal, or from whoever signalled the parent and us alike) is the same event.
const RELAY_WINDOW: Duration = Duration::from_secs(1);

/// Set for the command: the inherited descriptors that hold the lock and let one process claim it.
pub use processlock::INHERITED_ENV;

pub struct Options {
    pub target: LockTarget,
    pub process_name: Option<String>,
    /// How long to wait for a holder to let go; `None`: fail at once.
    pub wait: Option<Duration>,
    /// Replace a holder (`--replace`): how long it may take to exit after SIGTERM.
    pub replace_grace: Option<Duration>,
    pub quiet: bool,
    pub command: Vec<OsString>,
}

/// How the lock is taken once the command's PID is known.
struct Taking {
    process_name: Option<String>,
    wait: Option<Duration>,
    replace_grace: Option<Duration>,
    quiet: bool,
}

/// How the lock-taking side of the hand-shake ended.
enum Handshake {
    /// The child never reported (the fork failed).
    NoChild,
    /// Linked; the child was told to go.
    Taken(Acquired),
    /// Not linked; the child was told to stop.
    Failed(Error),
    /// A signal arrived before the command was started; the child was told to stop.
    Aborted(c_int, Option<Acquired>),
}

/// Returns the exit status; dies by the command's signal instead when it was killed by one.
pub fn run(opts: Options) -> i32 {
    match start(opts) {
        Ok(status) => status,
        Err(e) => {
            errln!("processlock: {e}");
            1
        }
    }
}

fn start(opts: Options) -> io::Result<i32> {
    let Options {
        target,
        process_name,
        wait,
        replace_grace,
        quiet,
        command,
    } = opts;
    let taking = Taking {
        process_name,
        wait,
        replace_grace,
        quiet,
    };
    signals::install()?;
    let pending = match PendingLock::create(&target) {
        Ok(p) => p,
        Err(e) => {
            errln!("[FATAL] {e}");
            return Ok(1);
        }
    };
    let token = ClaimToken::new()?;
    // Without it (no writable temp directory), only processes that inherited the descriptors
    // can claim the lock: a launcher that closes them makes its app conflict, never co-own.
    let socket = HandoverSocket::bind().ok();
    let inherited = [pending.file().as_raw_fd(), token.fd()];
    let mut cmd = command_for(&command, &target, &token, inherited[0], socket.as_ref());
    let (spawned, handshake) = spawn_holding(&mut cmd, pending, inherited, taking)?;
    let program = command[0].to_string_lossy();
    match handshake {
        Handshake::Taken(acquired) => match spawned {
            Ok(child) => {
                let handover = socket.map(|socket| Handover { socket, token });
                Ok(supervise(child, acquired, handover, &target, quiet))
            }
            Err(e) => Ok(exec_failed(acquired, &program, &e)),
        },
        Handshake::Aborted(signal, acquired) => abort(spawned, signal, acquired, socket),
        Handshake::Failed(e) => Ok(refused(spawned, &e, &target)),
        Handshake::NoChild => match spawned {
            // Killed before it could report: nothing was locked, nothing ran.
            Ok(mut child) => Ok(exit_like(child.wait()?)),
            Err(e) => {
                errln!("processlock: cannot start {program}: {e}");
                Ok(1)
            }
        },
    }
}

/// The command to run, told where its lock is and how to claim it.
fn command_for(
    command: &[OsString],
    target: &LockTarget,
    token: &ClaimToken,
    lock_fd: c_int,
    socket: Option<&HandoverSocket>,
) -> Command {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // Which descriptor holds the lock and which token lets one process of the command claim
    // it, for a command that takes the same lock itself (it recognises its own lock instead of
    // calling it a conflict).
    cmd.env(INHERITED_ENV, token.env_value(lock_fd, socket));
    // The command resolves its lock directory itself: make it the one the lock is in, whatever
    // its working directory or entry script, so that its own acquire names the same file.
    cmd.env(DIR_ENV, &target.dir);
    cmd
}

/// Spawns `cmd` while a helper thread takes the lock in its name (the hand-shake above).
/// `inherited`: the lock's descriptor and the claim token, which the command keeps on "go".
fn spawn_holding(
    cmd: &mut Command,
    pending: PendingLock,
    inherited: [c_int; 2],
    taking: Taking,
) -> io::Result<(io::Result<Child>, Handshake)> {
    let (pid_read, pid_write) = signals::cloexec_pipe()?;
    let (go_read, go_write) = match signals::cloexec_pipe() {
        Ok(p) => p,
        Err(e) => {
            close(pid_read);
            close(pid_write);
            return Err(e);
        }
    };
    // SAFETY: the closure runs in the forked child and makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || child_side(inherited, pid_write, go_read, [pid_read, go_write]));
    }
    let helper = std::thread::spawn(move || lock_side(pending, pid_read, go_write, taking));
    let spawned = cmd.spawn();
    // The child has its own copies (or was never forked): the helper sees EOF if it never wrote.
    close(pid_write);
    close(go_read);
    let handshake = helper.join().unwrap_or(Handshake::NoChild);
    Ok((spawned, handshake))
}

/// The lock was taken but the command could not be executed: the lock was ours for nothing.
fn exec_failed(acquired: Acquired, program: &str, e: &io::Error) -> i32 {
    let _ = acquired.lock.release();
    cannot_run(program, e)
}

/// Says why `program` could not be executed; the shell's exit status for it.
pub(crate) fn cannot_run(program: &str, e: &io::Error) -> i32 {
    errln!("processlock: cannot run {program}: {e}");
    if e.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// A signal arrived before the command was started: let go of everything and die by it.
fn abort(
    spawned: io::Result<Child>,
    signal: c_int,
    acquired: Option<Acquired>,
    socket: Option<HandoverSocket>,
) -> ! {
    if let Some(a) = acquired {
        let _ = a.lock.release();
    }
    if let Ok(mut child) = spawned {
        let _ = child.wait();
    }
    // Dying by the signal runs no destructor: remove the socket's directory first.
    drop(socket);
    signals::die_by(signal)
}

/// The lock could not be taken (a conflict, an error); the child was told to stop.
fn refused(spawned: io::Result<Child>, e: &Error, target: &LockTarget) -> i32 {
    if let Ok(mut child) = spawned {
        let _ = child.wait();
    }
    if let Error::Conflict(c) = e {
        for line in conflict_lines(&target.name, &c.holder, &c.path) {
            errln!("{line}");
        }
    }
    errln!("[FATAL] {e}");
    1
}

/// In the child, between fork and exec. Async-signal-safe calls only. `inherited`: the lock's
/// descriptor and the claim token, kept across exec.
fn child_side(
    inherited: [c_int; 2],
    pid_write: c_int,
    go_read: c_int,
    parent_ends: [c_int; 2],
) -> io::Result<()> {
    // SAFETY: we are in the forked child; these are plain system calls.
    unsafe {
        // Our copy of the parent's write end would keep us waiting forever if the parent died
        // before answering: without it, its death is an end of file, and we exit.
        for fd in parent_ends {
            libc::close(fd);
        }
        // Our handlers would swallow a signal meant for the command: from here on, a signal
        // does what it would do to the command before it installs its own handlers.
        signals::reset_in_child();
        let pid = libc::getpid() as u32;
        let bytes = pid.to_ne_bytes();
        if libc::write(pid_write, bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let mut answer = [STOP; 1];
        loop {
            let n = libc::read(go_read, answer.as_mut_ptr().cast(), 1);
            if n == -1 && errno::get() == libc::EINTR {
                continue;
            }
            if n == 0 {
                // processlock died before answering: there is nobody to report to (returning an
                // error would make the standard library abort, loudly, on the closed pipe).
                libc::_exit(1);
            }
            if n != 1 || answer[0] != GO {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
            break;
        }
        // Keep the lock and the claim token across exec: clear close-on-exec on our copies.
        for fd in inherited {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// In a helper thread while the main thread is inside `Command::spawn`.
fn lock_side(pending: PendingLock, pid_read: c_int, go_write: c_int, taking: Taking) -> Handshake {
    let answer = |go: bool| {
        let byte = [if go { GO } else { STOP }];
        // SAFETY: writing one byte from our buffer to our pipe. If the child is gone, EPIPE
        // (SIGPIPE is ignored in Rust programs) changes nothing.
        unsafe { libc::write(go_write, byte.as_ptr().cast(), 1) };
        close(go_write);
        close(pid_read);
    };
    let Some(pid) = read_pid(pid_read) else {
        answer(false);
        return Handshake::NoChild;
    };
    let result = take(pending, pid, &taking);
    let signal = signals::first_received();
    answer(result.is_ok() && signal.is_none());
    match (result, signal) {
        (Ok(acquired), None) => Handshake::Taken(acquired),
        (Ok(acquired), Some(s)) => Handshake::Aborted(s, Some(acquired)),
        (Err(_), Some(s)) => Handshake::Aborted(s, None),
        (Err(e), None) => Handshake::Failed(e),
    }
}

/// Links the pending lock with a record naming `pid`: at once, waiting for the holder, or
/// replacing it.
fn take(mut pending: PendingLock, pid: u32, taking: &Taking) -> processlock::Result<Acquired> {
    let target = pending.target().clone();
    let mut attempt =
        || pending.try_commit(record_for(&target, pid, taking.process_name.as_deref()));
    match (taking.wait, taking.replace_grace) {
        (Some(wait), _) => {
            let announce = |holder: &Record| {
                if !taking.quiet {
                    errln!(
                        "[PROCESS_LOCK_WAIT] {} is held by PID {}; waiting up to {} ms for it to end...",
                        target.name.display(),
                        holder.pid,
                        wait.as_millis()
                    );
                }
            };
            wait_sliced(&target, wait, &mut attempt, announce)
        }
        (None, Some(grace)) => match attempt() {
            Err(Error::Conflict(c)) => {
                crate::replace::replace(&target, c, grace, &mut attempt, taking.quiet)
            }
            other => other,
        },
        (None, None) => attempt(),
    }
}

fn read_pid(fd: c_int) -> Option<u32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            n if n > 0 => got += n as usize,
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
    Some(u32::from_ne_bytes(buf))
}

fn close(fd: c_int) {
    // SAFETY: closing a descriptor this module created and closes once.
    unsafe { libc::close(fd) };
}

/// What a process of the command that did not inherit the lock's descriptors can ask for.
struct Handover {
    socket: HandoverSocket,
    token: ClaimToken,
}

impl Handover {
    /// One of the socket's descriptors is readable: serves claimants below `command` the lock's
    /// descriptor `lock_fd` and the token, and hands out a new token once its owner is gone.
    fn readable(&mut self, fd: c_int, command: u32, lock_fd: c_int) -> io::Result<()> {
        let fds = [lock_fd, self.token.fd()];
        if self.socket.readable(fd, command, &fds)? == ClaimNews::OwnerGone {
            self.token = ClaimToken::new()?;
        }
        Ok(())
    }
}

/// Waits for the command, passing signals on and answering claimants, then releases the lock
/// and ends like it.
fn supervise(
    mut child: Child,
    acquired: Acquired,
    handover: Option<Handover>,
    target: &LockTarget,
    quiet: bool,
) -> i32 {
    let pid = child.id();
    if !quiet {
        for event in &acquired.events {
            errln!("{}", report::event(event, &target.path));
        }
        errln!("{}", report::acquired(&target.name, pid));
    }
    let mut relay = Relay::default();
    let mut handover = handover;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let watched = handover
            .as_ref()
            .map(|h| h.socket.fds())
            .unwrap_or_default();
        match signals::next_event(&watched, None) {
            Ok(Event::Readable(fd)) => {
                if let Some(h) = &mut handover {
                    if let Err(e) = h.readable(fd, pid, acquired.lock.file().as_raw_fd()) {
                        // Claimants that did not inherit the descriptors now get a conflict.
                        errln!("processlock: no longer handing the lock to the command's processes: {e}");
                        handover = None;
                    }
                }
            }
            Ok(Event::TimedOut) => {}
            Ok(Event::Signal(note)) if note.signal == libc::SIGCHLD => {}
            Ok(Event::Signal(note)) => {
                if relay.should_forward(&note) {
                    // The child is not reaped before try_wait says so, so its PID is still ours.
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid as libc::pid_t, note.signal) };
                }
            }
            Err(_) => break child.wait(),
        }
    };
    // No claimant can get a descriptor from us any more.
    drop(handover);
    release(acquired, target, quiet);
    match status {
        Ok(status) => exit_like(status),
        Err(e) => {
            errln!("processlock: waiting for the command failed: {e}");
            1
        }
    }
}

/// Lets our hold go, then removes the lock file if nobody holds it any more. Usually the command
/// took its copies of the descriptor with it; but something it started in the background may
/// have inherited one and still hold the lock: then the file stays, as it names a held lock, and
/// `check` shows it.
fn release(acquired: Acquired, target: &LockTarget, quiet: bool) {
    let ours = acquired.lock.record().clone();
    drop(acquired.lock);
    match remove_if_stale(&target.path) {
        Ok(Removal::Held(r)) if r == ours => errln!(
            "processlock: the command ended, but a process it started still holds the lock; the file stays (find it with: fuser -v {})",
            target.path.display()
        ),
        // Held by another holder now (it was removed by force, then taken): our hold went, but
        // a line saying the lock was released would be false.
        Ok(Removal::Held(_)) => {}
        // Removed, or already removed by someone else.
        Ok(_) => {
            if !quiet {
                errln!("{}", report::released(&target.name, ours.pid));
            }
        }
        Err(e) => errln!("processlock: {e}"),
    }
}

/// The command's exit code, or death by its signal.
pub(crate) fn exit_like(status: ExitStatus) -> i32 {
    if let Some(signal) = status.signal() {
        signals::die_by(signal);
    }
    status.code().unwrap_or(1)
}

/// Decides whether a signal we received should be passed on to the command.
///
/// * The kernel (a terminal's Ctrl+C or hang-up) signals the whole foreground process group, the
///   command included: passing that on would deliver it twice, and a second SIGINT makes "press
///   Ctrl+C again to force" apps (or a Temporal worker whose listeners removed themselves) quit in
///   the middle of their shutdown. Only a session leader gets a hang-up alone.
/// * A parent that relays what it got (the npm launcher, `npx`, a shell script with a trap) sends
///   a second copy of a signal we have just seen: within `RELAY_WINDOW` it is the same event.
/// * Anything else (`kill <pid>`, `pm2 stop` without tree-kill, a supervisor) is passed on.
#[derive(Default)]
pub(crate) struct Relay {
    last_seen: Vec<(c_int, Instant)>,
}

impl Relay {
    pub(crate) fn should_forward(&mut self, note: &Note) -> bool {
        let seen_recently = self
            .last_seen
            .iter()
            .any(|(s, at)| *s == note.signal && at.elapsed() < RELAY_WINDOW);
        self.last_seen.retain(|(s, _)| *s != note.signal);
        self.last_seen.push((note.signal, Instant::now()));
        if note.is_from_kernel() {
            // SAFETY: plain queries about our own process.
            let leader = unsafe { libc::getsid(0) == libc::getpid() };
            return note.signal == libc::SIGHUP && leader;
        }
        // SAFETY: a plain query.
        let parent = unsafe { libc::getppid() };
        !(note.sender == parent && seen_recently)
    }
}

/// The usual conflict lines, unless the recorded PID has exited while something it started
/// (and that inherited the lock) still holds it: then `kill <pid>` would be a lie.
fn conflict_lines(name: &LockName, holder: &Record, path: &std::path::Path) -> Vec<String> {
    if holder.pid != 0 && !judge_pid(holder).is_alive() {
        return vec![
            format!(
                "[PROCESS_LOCK_CONFLICT] Another {} is already running!",
                name.display()
            ),
            format!(
                "[PROCESS_LOCK_CONFLICT] Existing process: {{ pid: {}, started: '{}' }} has exited, but a process it started still holds the lock",
                holder.pid,
                report::printable(&holder.started)
            ),
            format!(
                "[PROCESS_LOCK_CONFLICT] To find it, run: fuser -v {}",
                report::printable(&path.to_string_lossy())
            ),
        ];
    }
    report::conflict(name, holder, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_signals_are_not_doubled_and_parent_relays_are_dropped() {
        let mut relay = Relay::default();
        // SAFETY: getppid takes no argument and cannot fail.
        let parent = unsafe { libc::getppid() };
        let from_tty = Note {
            signal: libc::SIGINT,
            code: 0x80,
            sender: 0,
        };
        assert!(!relay.should_forward(&from_tty));
        let relayed = Note {
            signal: libc::SIGINT,
            code: 0,
            sender: parent,
        };
        assert!(
            !relay.should_forward(&relayed),
            "our parent relaying Ctrl+C"
        );
        let other = Note {
            sender: parent + 1,
            ..relayed
        };
        assert!(relay.should_forward(&other), "kill from someone else");
        let term = Note {
            signal: libc::SIGTERM,
            ..relayed
        };
        assert!(relay.should_forward(&term), "no SIGTERM came first");
        let from_supervisor = Note {
            sender: parent + 7,
            ..term
        };
        let mut relay = Relay::default();
        assert!(relay.should_forward(&from_supervisor));
        assert!(
            !relay.should_forward(&term),
            "the parent relaying the same SIGTERM"
        );
    }
}
