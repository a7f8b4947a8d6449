//! A lock held on a server by `processlock run`, handed down to one process of its command.
//!
//! A server session cannot be handed to another process, so `run` keeps the lock in its own
//! session. A process of the command that takes the same lock (`acquireLock('backend')` in the
//! app) must not open a second session, which would conflict with its own `run`: it adopts
//! `run`'s hold instead. The hand-over is the same one-shot claim token as for a lock file
//! (`inherit.rs`): one process of the command's tree gets its byte, every other one a conflict.
//!
//! What the claimant checks before it touches the token: the variable names exactly the lock it
//! asks for, and the holder it names (`run`) is one of its ancestors. The variable alone proves
//! nothing; the ancestor check refuses a process outside the command's tree even if it got hold
//! of the token pipe, and a process whose `run` is gone (its session, and so the lock, with it):
//! it has been re-parented. The token comes from the descriptor this process inherited, or, where
//! a launcher closed it, from `run`'s socket, which serves the command's processes only.
//!
//! A claim is kept for the life of the process: after letting go, the same process may adopt the
//! same hold again (it is still `run`'s, and no other process can claim it any more).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::socket::{self, HandoverSocket};
use super::unix::{set_flag, take_token, ClaimToken};
use super::{ServerHold, SERVER_LOCK_ENV};

/// The value of `SERVER_LOCK_ENV`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Handover {
    #[serde(flatten)]
    hold: ServerHold,
    token_fd: RawFd,
    token_inode: u64,
    /// Empty when `run` has no socket (or its address is not UTF-8).
    #[serde(default)]
    socket: String,
}

/// The hold this process claimed, if any.
static CLAIMED: Mutex<Option<ServerHold>> = Mutex::new(None);

impl ClaimToken {
    /// The value of `SERVER_LOCK_ENV` for a command that inherits this token, runs under `hold`
    /// and may ask `socket` for the token.
    pub fn server_env_value(&self, hold: &ServerHold, socket: Option<&HandoverSocket>) -> String {
        let handover = Handover {
            hold: hold.clone(),
            token_fd: self.fd(),
            token_inode: self.ino(),
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
pub fn claim_server_lock(lock: &str) -> Option<ServerHold> {
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hold) = claimed.as_ref() {
        return (hold.lock == lock && under(hold)).then(|| hold.clone());
    }
    let value = std::env::var_os(SERVER_LOCK_ENV)?;
    let handover: Handover = serde_json::from_str(value.to_str()?).ok()?;
    if handover.hold.lock != lock || !under(&handover.hold) {
        return None;
    }
    if take_token(handover.token_fd, handover.token_inode) {
        // What this process starts must not claim it.
        let _ = set_flag(
            handover.token_fd,
            libc::F_GETFD,
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        );
    } else if !take_through_socket(&handover) {
        return None;
    }
    // As for a lock file (see `claim_inherited`): the variable leaves this process's
    // environment, so its children cannot claim.
    std::env::remove_var(SERVER_LOCK_ENV);
    *claimed = Some(handover.hold.clone());
    Some(handover.hold)
}

/// Whether this process runs under the holder the hold names.
pub(super) fn under(hold: &ServerHold) -> bool {
    socket::descends_from(std::process::id(), hold.holder.pid)
}

fn take_through_socket(handover: &Handover) -> bool {
    if handover.socket.is_empty() {
        return false;
    }
    let Some(fds) = socket::ask(std::ffi::OsStr::new(&handover.socket), 1) else {
        return false;
    };
    take_token(fds[0].as_raw_fd(), handover.token_inode)
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
        assert_eq!(back.token_fd, token.fd());
        assert_eq!(back.token_inode, token.ino());
        assert!(back.socket.is_empty());
    }
}
