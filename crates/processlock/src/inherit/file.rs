//! The claim of a lock file handed down by `processlock run` (see `inherit.rs`): the variable,
//! the one-shot token, and the checks made before the token is read.

use super::fd::{inode, is_fifo, set_flag};
use super::hold::INHERITED_ENV;
use super::socket::{self, HandoverSocket};
use std::ffi::{OsStr, OsString};
use std::fs::File;
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

/// What `adopt` makes of the lock file this process was handed, if it was handed one, `adopt`
/// accepts it (the descriptor is the file at the lock path and holds its lock), and this process
/// is the first to claim it; `None` otherwise. `adopt` is asked before the token is touched.
pub(crate) fn claim_inherited<T>(adopt: impl Fn(File) -> Option<T>) -> Option<T> {
    let handover = Handover::parse(&std::env::var_os(INHERITED_ENV)?)?;
    let lock = claim_with_inherited(&handover, &adopt)
        .or_else(|| claim_through_socket(&handover, &adopt))?;
    // Another thread reading the environment at this instant (Node's main thread, while an
    // async acquire claims on a worker) may miss a variable for that instant; it never
    // reads freed memory: glibc and musl keep strings of the initial environment, where
    // this variable comes from, alive.
    std::env::remove_var(INHERITED_ENV);
    Some(lock)
}

/// The claim through the descriptors this process inherited, if they are still there.
fn claim_with_inherited<T>(handover: &Handover, adopt: impl Fn(File) -> Option<T>) -> Option<T> {
    // A duplicate of our own, so that the inherited descriptor stays untouched whatever we do.
    // SAFETY: F_DUPFD_CLOEXEC on any number is harmless; a negative result means no such
    // descriptor.
    let dup = unsafe { libc::fcntl(handover.lock_fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` is a descriptor we just created and nothing else owns.
    let file = unsafe { File::from_raw_fd(dup) };
    // Dropping the held lock on the way out closes only our duplicate: the lock stays with
    // the descriptors the command inherited.
    let lock = adopt(file)?;
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
fn claim_through_socket<T>(handover: &Handover, adopt: impl Fn(File) -> Option<T>) -> Option<T> {
    if handover.socket.is_empty() {
        return None;
    }
    let (fds, claiming) = socket::ask(&handover.socket, 2)?;
    let [lock, token]: [OwnedFd; 2] = fds.try_into().ok()?;
    let lock = adopt(File::from(lock))?;
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
