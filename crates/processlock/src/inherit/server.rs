//! A lock held on a server by `processlock run`, handed down to one process of its command.
//!
//! A server session cannot be handed to another process, so `run` keeps the lock in its own
//! session. A process of the command that takes the same lock (`acquireLock('backend')` in the
//! app) must not open a second session, which would conflict with its own `run`: it adopts
//! `run`'s hold instead, once (the same one-shot claim token as for a lock file, `inherit.rs`:
//! one process of the command's tree gets its byte, every other one a conflict).
//!
//! For a lock file, the inherited descriptor is its own proof: it holds the flock of the file at
//! the lock path. A hold on a server has no such thing, and the variable that describes it is
//! text any process can write (a forger names a pipe of its own and its shell as the holder, and
//! a fencing token of its choice). So nothing in the variable is believed; each fact is proven:
//! * the holder it names is this process's ancestor, alive, on this host, and the very process
//!   the record describes (its start token), so not a recycled PID;
//! * the server says, right now, that this lock is held by a session whose record is exactly
//!   that one, with exactly that fencing token (the caller's `on_server`: the core knows no
//!   server). A forger that names its own shell, or another fencing token, fails here: the server
//!   names the real holder. One that names the real holder must descend from it, that is, run
//!   under it, where the token decides;
//! * the token comes from the holder itself: asked over the socket the variable names, whose peer
//!   the kernel reports (`SO_PEERCRED`, `LOCAL_PEERPID`) and which must be that holder. A pipe of
//!   the claimant's own, or a socket served by anyone else, gives no claim.
//!
//! Every check comes before the token's byte is read; a process whose `run` is gone fails them
//! (its session, and so the lock, is gone too; it has been re-parented).
//!
//! A claim is kept for the life of the process: after letting go, the same process may adopt the
//! same hold again (it is still `run`'s, and no other process can claim it any more), once the
//! server confirms it again.

use std::os::fd::AsRawFd;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::file::{take_token, ClaimToken};
use super::hold::{ServerHold, SERVER_LOCK_ENV};
use super::socket::{self, HandoverSocket};
use crate::liveness::{host_name, start_token};

/// The value of `SERVER_LOCK_ENV`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Handover {
    #[serde(flatten)]
    hold: ServerHold,
    /// Empty when `run` has no socket (or its address is not UTF-8).
    #[serde(default)]
    socket: String,
}

/// The hold this process claimed, if any.
static CLAIMED: Mutex<Option<ServerHold>> = Mutex::new(None);

impl ServerHold {
    /// Whether this process still runs under the `processlock run` that holds the lock:
    /// false once `run` has ended, and its session, and so the lock, with it.
    pub fn holder_is_running(&self) -> bool {
        under(self)
    }

    /// Calls `hook`, on a thread of its own, the moment the `processlock run` that holds the
    /// lock is gone (killed with SIGKILL: its session, and so the lock, went with it), so that
    /// the process that adopted the hold stops as if it had lost a lock of its own. Linux
    /// only (a pidfd); `false` where it cannot be watched: then only `holder_is_running`
    /// tells, when asked.
    pub fn watch_holder(&self, hook: Box<dyn FnOnce() + Send>) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return watch_holder(self, hook);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = hook;
            false
        }
    }
}

impl ClaimToken {
    /// The value of `SERVER_LOCK_ENV` for a command that runs under `hold` and may ask `socket`
    /// for this token (it is never inherited: only its holder's answer proves it).
    pub fn server_env_value(&self, hold: &ServerHold, socket: Option<&HandoverSocket>) -> String {
        let handover = Handover {
            hold: hold.clone(),
            socket: socket
                .and_then(|s| s.address().to_str())
                .unwrap_or_default()
                .to_string(),
        };
        serde_json::to_string(&handover).expect("a hand-over always serializes")
    }
}

/// The hold of `lock` if `processlock run` handed it to this process's tree and this process
/// claims it (first, or again); `None` otherwise: then the caller takes the lock as usual.
/// `on_server`: whether the server says, now, that the lock is held with exactly this holder
/// record and fencing token.
pub fn claim_server_lock(
    lock: &str,
    on_server: impl FnOnce(&ServerHold) -> bool,
) -> Option<ServerHold> {
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hold) = claimed.as_ref() {
        return (hold.lock == lock && holder_is_ours(hold) && on_server(hold))
            .then(|| hold.clone());
    }
    let value = std::env::var_os(SERVER_LOCK_ENV)?;
    let handover: Handover = serde_json::from_str(value.to_str()?).ok()?;
    if handover.hold.lock != lock || !holder_is_ours(&handover.hold) || !on_server(&handover.hold) {
        return None;
    }
    if !take_from_holder(&handover) {
        return None;
    }
    // As for a lock file (see `claim_inherited`): the variable leaves this process's
    // environment, so its children cannot claim.
    std::env::remove_var(SERVER_LOCK_ENV);
    *claimed = Some(handover.hold.clone());
    Some(handover.hold)
}

/// Whether this process runs under the holder the hold names.
fn under(hold: &ServerHold) -> bool {
    socket::descends_from(std::process::id(), hold.holder.pid)
}

/// Whether the holder the hold names is an ancestor of this process, on this host, and the very
/// process its record describes (same start token: not a PID recycled since).
fn holder_is_ours(hold: &ServerHold) -> bool {
    let holder = &hold.holder;
    holder.hostname.as_deref() == host_name()
        && holder.start_token.is_some()
        && start_token(holder.pid) == holder.start_token
        && under(hold)
}

/// See `ServerHold::watch_holder`. The pidfd is opened, then the holder checked again (it is
/// still the process the record names): from then on its end, and only its end, wakes the poll.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn watch_holder(hold: &ServerHold, hook: Box<dyn FnOnce() + Send>) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pid = hold.holder.pid as libc::pid_t;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: a descriptor the kernel just gave us and nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    if !holder_is_ours(hold) {
        return false;
    }
    std::thread::Builder::new()
        .name("processlock-run-watch".into())
        .spawn(move || {
            let mut p = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd of ours, without a time limit: a pidfd is readable
            // once its process has ended.
            while unsafe { libc::poll(&mut p, 1, -1) } != 1 {}
            hook();
        })
        .is_ok()
}

/// Reads the token's byte from the descriptor the holder itself sends over its socket.
fn take_from_holder(handover: &Handover) -> bool {
    if handover.socket.is_empty() {
        return false;
    }
    let address = std::ffi::OsStr::new(&handover.socket);
    let Some((fds, claiming)) = socket::ask_peer(address, 1, handover.hold.holder.pid) else {
        return false;
    };
    if !take_token(fds[0].as_raw_fd(), None) {
        return false;
    }
    claiming.won();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[test]
    fn the_variable_round_trips() {
        let token = ClaimToken::new().unwrap();
        let hold = ServerHold {
            lock: "postgres://127.0.0.1:5432/db#processlock/backend.short.lock".into(),
            fencing_token: "42".into(),
            holder: Record::pid_only(7),
        };
        let value = token.server_env_value(&hold, None);
        let back: Handover = serde_json::from_str(&value).unwrap();
        assert_eq!(back.hold, hold);
        assert!(back.socket.is_empty());
    }
}
