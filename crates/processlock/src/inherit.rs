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

use crate::protocol::{HeldLock, LockTarget};

/// The variable `processlock run` sets for its command:
/// `<lock fd>:<token fd>:<token inode>:<socket>` (the socket's address may be empty).
pub const INHERITED_ENV: &str = "PROCESSLOCK_INHERITED";

#[cfg(unix)]
mod server;
#[cfg(unix)]
mod socket;

#[cfg(unix)]
pub use server::claim_server_lock;
pub use server_types::{ServerHold, SERVER_LOCK_ENV};

#[cfg(unix)]
pub use socket::{ClaimNews, HandoverSocket};
#[cfg(unix)]
use unix::set_flag;
#[cfg(unix)]
pub use unix::ClaimToken;

#[cfg(unix)]
pub(crate) use unix::claim_inherited;

#[cfg(not(unix))]
pub(crate) fn claim_inherited(_target: &LockTarget) -> Option<HeldLock> {
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

mod server_types {
    use crate::record::Record;
    use serde::{Deserialize, Serialize};

    /// The variable `processlock run` sets for its command when it holds the lock on a server:
    /// a JSON object with the lock held (`ServerHold`) and the claim token (its descriptor, its
    /// inode and the socket to ask for it).
    pub const SERVER_LOCK_ENV: &str = "PROCESSLOCK_SERVER_LOCK";

    /// A lock that `processlock run` holds on a server for its command.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ServerHold {
        /// Which lock: the server, the namespace and the lock's name, as the backend names it.
        pub lock: String,
        pub fencing_token: String,
        /// The holder record on the server: `processlock run`'s own.
        pub holder: Record,
    }

    impl ServerHold {
        /// Whether this process still runs under the `processlock run` that holds the lock:
        /// false once `run` has ended, and its session, and so the lock, with it.
        pub fn holder_is_running(&self) -> bool {
            #[cfg(unix)]
            return super::server::under(self);
            #[cfg(not(unix))]
            return false;
        }

        /// Calls `hook`, on a thread of its own, the moment the `processlock run` that holds the
        /// lock is gone (killed with SIGKILL: its session, and so the lock, went with it), so that
        /// the process that adopted the hold stops as if it had lost a lock of its own. Linux
        /// only (a pidfd); `false` where it cannot be watched: then only `holder_is_running`
        /// tells, when asked.
        pub fn watch_holder(&self, hook: Box<dyn FnOnce() + Send>) -> bool {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            return super::server::watch_holder(self, hook);
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                let _ = hook;
                false
            }
        }
    }
}

#[cfg(unix)]
mod unix {
    use super::socket::{self, HandoverSocket};
    use super::{HeldLock, LockTarget, INHERITED_ENV};
    use std::ffi::{OsStr, OsString};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;

    /// What `INHERITED_ENV` says: `<lock fd>:<token fd>:<token inode>:<socket>`. The inode
    /// tells the token pipe apart from any other pipe that may have taken its number.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Handover {
        pub lock_fd: RawFd,
        pub token_fd: RawFd,
        pub token_ino: u64,
        pub socket: OsString,
    }

    impl Handover {
        pub fn parse(value: &OsStr) -> Option<Handover> {
            let mut fields = value.as_bytes().splitn(4, |b| *b == b':');
            let mut number = || -> Option<u64> {
                let field = std::str::from_utf8(fields.next()?).ok()?;
                field.parse().ok()
            };
            let lock_fd = RawFd::try_from(number()?).ok()?;
            let token_fd = RawFd::try_from(number()?).ok()?;
            let token_ino = number()?;
            let socket = OsStr::from_bytes(fields.next()?).to_os_string();
            Some(Handover {
                lock_fd,
                token_fd,
                token_ino,
                socket,
            })
        }

        pub fn to_value(&self) -> OsString {
            let mut value = OsString::from(format!(
                "{}:{}:{}:",
                self.lock_fd, self.token_fd, self.token_ino
            ));
            value.push(&self.socket);
            value
        }
    }

    /// The one-shot claim token `processlock run` hands to its command with the lock.
    #[derive(Debug)]
    pub struct ClaimToken {
        read: OwnedFd,
        ino: u64,
    }

    impl ClaimToken {
        /// A pipe holding one byte, with its write end already closed. The read end is
        /// close-on-exec: clear that flag in the child that must inherit it.
        pub fn new() -> io::Result<ClaimToken> {
            let (read, write) = crate::os::cloexec_pipe()?;
            // SAFETY: one byte from our buffer into the pipe we just made; a fresh pipe has
            // room for it.
            if unsafe { libc::write(write.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
            drop(write);
            // Nobody can write any more, so a read never blocks anyway; non-blocking all the
            // same, in case a descendant hands the number to something unexpected.
            set_flag(
                read.as_raw_fd(),
                libc::F_GETFL,
                libc::F_SETFL,
                libc::O_NONBLOCK,
            )?;
            let ino = inode(read.as_raw_fd())?;
            Ok(ClaimToken { read, ino })
        }

        /// The descriptor the command must inherit.
        pub fn fd(&self) -> RawFd {
            self.read.as_raw_fd()
        }

        /// The value of `INHERITED_ENV` for a command that inherits this token and the lock's
        /// descriptor `lock_fd`, and may ask `socket` for them.
        pub fn env_value(&self, lock_fd: RawFd, socket: Option<&HandoverSocket>) -> OsString {
            Handover {
                lock_fd,
                token_fd: self.fd(),
                token_ino: self.ino,
                socket: socket
                    .map(|s| s.address().to_os_string())
                    .unwrap_or_default(),
            }
            .to_value()
        }
    }

    /// The held lock for `target` if this process was handed it and is the first to claim it;
    /// `None` otherwise.
    pub(crate) fn claim_inherited(target: &LockTarget) -> Option<HeldLock> {
        let handover = Handover::parse(&std::env::var_os(INHERITED_ENV)?)?;
        let lock = claim_with_inherited(&handover, target)
            .or_else(|| claim_through_socket(&handover, target))?;
        // Another thread reading the environment at this instant (Node's main thread, while an
        // async acquire claims on a worker) may miss a variable for that instant; it never
        // reads freed memory: glibc and musl keep strings of the initial environment, where
        // this variable comes from, alive.
        std::env::remove_var(INHERITED_ENV);
        Some(lock)
    }

    /// The claim through the descriptors this process inherited, if they are still there.
    fn claim_with_inherited(handover: &Handover, target: &LockTarget) -> Option<HeldLock> {
        // A duplicate of our own, so that the inherited descriptor stays untouched whatever we do.
        // SAFETY: F_DUPFD_CLOEXEC on any number is harmless; a negative result means no such
        // descriptor.
        let dup = unsafe { libc::fcntl(handover.lock_fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return None;
        }
        // SAFETY: `dup` is a descriptor we just created and nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(dup) };
        // Dropping the held lock on the way out closes only our duplicate: the lock stays with
        // the descriptors the command inherited.
        let lock = HeldLock::adopt_inherited(file, target)?;
        if !take_token(handover.token_fd, Some(handover.token_ino)) {
            return None;
        }
        // What this process starts must neither hold the lock nor claim it.
        for fd in [handover.lock_fd, handover.token_fd] {
            let _ = set_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Some(lock)
    }

    /// The claim through duplicates `run` sends over its socket (they arrive close-on-exec).
    /// The token is whichever `run` hands out now: a new one once the previous owner is gone.
    fn claim_through_socket(handover: &Handover, target: &LockTarget) -> Option<HeldLock> {
        if handover.socket.is_empty() {
            return None;
        }
        let (fds, claiming) = socket::ask(&handover.socket, 2)?;
        let [lock, token]: [OwnedFd; 2] = fds.try_into().ok()?;
        let lock = HeldLock::adopt_inherited(std::fs::File::from(lock), target)?;
        if !take_token(token.as_raw_fd(), None) {
            return None;
        }
        claiming.won();
        Some(lock)
    }

    /// Reads the token's byte if the descriptor is a pipe, and the token pipe (`ino`) where its
    /// number came from the environment. True for the one reader that gets it.
    pub(super) fn take_token(fd: RawFd, ino: Option<u64>) -> bool {
        if !is_fifo(fd) || ino.is_some_and(|ino| inode(fd).ok() != Some(ino)) {
            return false;
        }
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: reading one byte into our own buffer from a descriptor we checked is the
            // token pipe.
            let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
            if n == 1 {
                return true;
            }
            if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // 0: the end of the pipe, someone else read the byte. EAGAIN cannot happen without a
            // writer; any error means no claim.
            return false;
        }
    }

    pub(super) fn set_flag(
        fd: RawFd,
        get: libc::c_int,
        set: libc::c_int,
        flag: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: fcntl flag queries and updates on a descriptor number; an invalid one fails.
        unsafe {
            let flags = libc::fcntl(fd, get);
            if flags == -1 || libc::fcntl(fd, set, flags | flag) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn stat(fd: RawFd) -> io::Result<libc::stat> {
        // SAFETY: fstat into a zeroed struct we own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(st)
        }
    }

    pub(super) fn inode(fd: RawFd) -> io::Result<u64> {
        #[allow(clippy::unnecessary_cast)] // ino_t is not u64 everywhere
        stat(fd).map(|st| st.st_ino as u64)
    }

    fn is_fifo(fd: RawFd) -> bool {
        stat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_variable_round_trips_and_older_or_broken_values_name_nothing() {
            let h = Handover {
                lock_fd: 3,
                token_fd: 4,
                token_ino: 123456789,
                socket: "/tmp/processlock-a:b/s".into(),
            };
            let value = h.to_value();
            assert_eq!(value, "3:4:123456789:/tmp/processlock-a:b/s");
            assert_eq!(Handover::parse(&value), Some(h));
            let no_socket = Handover::parse(OsStr::new("3:4:5:")).unwrap();
            assert!(no_socket.socket.is_empty());
            // The format of earlier versions (`<fd>:<lock file>`) carries no token: no claim.
            assert_eq!(
                Handover::parse(OsStr::new("3:/srv/locks/backend.lock")),
                None
            );
            assert_eq!(Handover::parse(OsStr::new("3:4:5")), None);
            assert_eq!(Handover::parse(OsStr::new("-1:4:5:/x")), None);
            assert_eq!(Handover::parse(OsStr::new("")), None);
        }

        #[test]
        fn a_token_is_taken_once_and_only_through_its_own_pipe() {
            let token = ClaimToken::new().unwrap();
            let other = ClaimToken::new().unwrap();
            // Another pipe under the expected number is not the token: nothing is read from it.
            assert!(!take_token(other.fd(), Some(token.ino)));
            assert!(take_token(token.fd(), Some(token.ino)));
            assert!(!take_token(token.fd(), Some(token.ino)));
            assert!(take_token(other.fd(), None));
            assert!(!take_token(-1, None));
        }
    }
}
