//! A lock handed down to one process: `processlock run` starts its command with the lock's
//! descriptor inherited, so that the command holds the lock even if `processlock` is killed.
//! When a process of that command takes the same lock itself (`acquireLock('backend')` under
//! `processlock run backend -- npm start`, where npm starts a shell that starts node), it must
//! find that it already owns it, not report a conflict with itself.
//!
//! The variable and the descriptors reach the whole process tree of the command, so the claim
//! must be handed over once: two processes started by the command (or a service that starts a
//! copy of itself) must not both own the lock. Hence a one-shot claim token: a pipe holding
//! exactly one byte, whose write end was closed before the command started (nobody can ever
//! write to it again). A claimant reads one byte: a pipe gives each byte to exactly one reader,
//! so one claimant gets it and every other one reads the end of the file, whenever it comes and
//! however many race.
//!
//! A claimant finds the lock's descriptor and the token's read end among the descriptors it
//! inherited (shells pass them on), or, where a launcher closed them (Node's `child_process`
//! passes the standard three only, so npm, npx and `node --watch` do), asks `run` for
//! duplicates over a Unix socket (`socket.rs`). A claimant served over the socket that wins
//! keeps its connection open for as long as it lives; when it ends, `run` hands out a new token,
//! so that an app restarted by its watcher (`node --watch`) claims the lock again. The lock
//! itself never left the command meanwhile. Either way the claim is checked before the token
//! is touched: the descriptor must be the file linked at the lock path now, and taking its
//! exclusive lock without blocking must succeed. A descriptor that shares the holder's open file
//! description already holds that lock, so the request succeeds; any other descriptor of the
//! same file is refused, because the holder's lock conflicts with it. The variable alone proves
//! nothing (any process can set it). Nothing that can fail comes after the byte is read, so a
//! byte is never consumed by a process that then does not own the lock (it could not be put
//! back: there is no write end). A process whose descriptors are gone and whose `run` is gone
//! gets no claim: a conflict, never a second owner.
//!
//! A claimed hold is the command's: letting go of it (or ending) closes the claimant's duplicate
//! only, never removes the lock file, and says nothing of a release; the lock is released when
//! the command ends.
//!
//! The winner then hides the hand-over from what it starts: the variable leaves its environment
//! and inherited descriptors become close-on-exec, so its own children neither hold the lock nor
//! can claim it. The command's other processes (its shell, siblings that lost) keep the OS lock
//! held as before; they just cannot claim it any more. A winner that forks without exec shares
//! its memory and descriptors with the copy, as with any lock it holds.

#[cfg(unix)]
mod fd;
#[cfg(unix)]
mod file;
mod hold;
#[cfg(unix)]
mod server;
#[cfg(unix)]
mod socket;

#[cfg(unix)]
pub(crate) use file::claim_inherited;
#[cfg(unix)]
pub use file::ClaimToken;
pub use hold::{ServerHold, INHERITED_ENV, SERVER_LOCK_ENV};
#[cfg(unix)]
pub use server::claim_server_lock;
#[cfg(unix)]
pub use socket::{ClaimNews, HandoverSocket};

/// Nothing is handed down where `processlock run` does not run.
#[cfg(not(unix))]
pub(crate) fn claim_inherited<T>(_adopt: impl Fn(std::fs::File) -> Option<T>) -> Option<T> {
    None
}

/// Nothing is handed down where `processlock run` does not run.
#[cfg(not(unix))]
pub fn claim_server_lock(
    _lock: &str,
    _on_server: impl FnOnce(&ServerHold) -> bool,
) -> Option<ServerHold> {
    None
}
