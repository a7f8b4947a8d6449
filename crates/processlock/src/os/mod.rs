//! The few OS operations the protocol needs, one implementation per platform family.
//!
//! Every function here does one system call's worth of work and reports the raw `io::Error`;
//! the protocol decides what an error means.

use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::cancel::{Cancel, Woke};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

#[cfg(unix)]
mod wait_unix;
#[cfg(unix)]
pub use wait_unix::{open_for_wait, wait_unlocked};

#[cfg(windows)]
mod wait_windows;
#[cfg(windows)]
pub use wait_windows::{open_for_wait, wait_unlocked};

#[cfg(target_os = "linux")]
mod proc_linux;
#[cfg(target_os = "linux")]
pub use proc_linux::{lock_holders, process_start, process_uids, token_is_local};

/// Which processes hold an OS lock on a file: known on Linux only (`/proc/locks`).
#[cfg(not(target_os = "linux"))]
pub fn lock_holders(_id: FileId) -> Vec<u32> {
    Vec::new()
}

/// Whether a start token says by itself that it was made on this machine, where its PID names
/// a process (running or ended) of this machine. Only Linux tokens carry a boot id; elsewhere a
/// token is recognised by the running process it belongs to (see `liveness.rs`).
#[cfg(not(target_os = "linux"))]
pub fn token_is_local(_token: &str) -> bool {
    false
}

#[cfg(target_os = "macos")]
mod proc_macos;
#[cfg(target_os = "macos")]
pub use proc_macos::{process_start, process_uids};

#[cfg(all(unix, not(any(target_os = "linux", target_os = "macos"))))]
mod proc_other;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "macos"))))]
pub use proc_other::{process_start, process_uids};

/// Reads a whole (small) file from offset 0 with positioned reads, so no cursor another holder
/// of the descriptor relies on moves. Stops after `limit + 1` bytes: the caller sees that the
/// file is larger than anything it accepts without reading all of it.
pub fn read_all(file: &File, limit: usize) -> io::Result<Vec<u8>> {
    struct From0<'a> {
        file: &'a File,
        offset: u64,
    }
    impl Read for From0<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = read_at(self.file, buf, self.offset)?;
            self.offset += n as u64;
            Ok(n)
        }
    }
    let mut bytes = Vec::new();
    From0 { file, offset: 0 }
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Identity of an inode (Windows: of a file on a volume). Equal ids mean the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What sits at a path, looked at without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Missing,
    File(FileId),
    Symlink,
    Directory,
    Other,
}

impl Entry {
    pub fn describe(self) -> &'static str {
        match self {
            Entry::Missing => "missing path",
            Entry::File(_) => "file",
            Entry::Symlink => "symbolic link",
            Entry::Directory => "directory",
            Entry::Other => "special file",
        }
    }
}

/// When and as what a process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStart {
    /// Equal for the same process, different for any later process with the same PID.
    pub token: String,
    /// Wall-clock start time in ms since the Unix epoch, where the OS stored it as a date when
    /// the process started (macOS, Windows), so that a later step of the clock moves neither it
    /// nor the dates written meanwhile. `None` where the OS keeps only the time since boot
    /// (Linux): a date computed from it moves with every step of the clock.
    pub wall_ms: Option<i64>,
    /// The process has exited and only its exit status is left for whoever collects it.
    pub zombie: bool,
}

/// Whether a PID names a running process, asked of the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    Running,
    /// Running, but owned by another user: we may not signal it, and that proves it exists.
    RunningOtherUser,
    Gone,
}

/// What the lock files of a directory that passed its check are made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirFacts {
    /// The directory lets its group create and delete files: the group shares it, and needs to
    /// open the files in it (records, the removal guard).
    pub shared_with_group: bool,
    /// Its owner, who must be able to open the removal guard whoever made it.
    #[cfg(unix)]
    pub owner: u32,
    #[cfg(unix)]
    pub group: u32,
}

impl DirFacts {
    /// The mode of a lock file, temp file or removal guard made in the directory: nothing for
    /// others, and for the group only where the group shares the directory. Anyone who can open
    /// one of these files can hold a lock on it and block every takeover, or every removal.
    /// (Windows files take their directory's ACL instead.)
    pub fn file_mode(self) -> u32 {
        if self.shared_with_group {
            0o640
        } else {
            0o600
        }
    }
}

/// How often a wait that cannot block on the lock looks again.
const POLL: Duration = Duration::from_millis(1);

/// The waits' fallback where no blocking request can be made or interrupted: `free_now` (a
/// non-blocking look that drops at once any lock it is granted) every `POLL`, until it says the
/// lock is free, `until` has passed, or `cancel` interrupts the wait that saw `seen` nudges.
fn poll_until_free(
    until: Instant,
    cancel: &Cancel,
    seen: u64,
    mut free_now: impl FnMut() -> io::Result<bool>,
) -> io::Result<Woke> {
    loop {
        if let Some(reason) = cancel.stop_reason(until, seen) {
            return Ok(reason);
        }
        cancel.sleep(
            POLL.min(until.saturating_duration_since(Instant::now())),
            seen,
        );
        if free_now()? {
            return Ok(Woke::Free { blocked: true });
        }
    }
}
