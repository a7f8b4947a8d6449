//! Other Unix systems: no portable way to ask a process's start time, so no token. Records
//! written here are judged by the file lock alone, and PID-only files by PID liveness alone.

use super::ProcessStart;

pub fn process_start(_pid: u32) -> Option<ProcessStart> {
    None
}

/// Not known here: a holder is then replaceable only when its lock file is the caller's own.
pub fn process_uids(_pid: u32) -> Option<(u32, u32)> {
    None
}
