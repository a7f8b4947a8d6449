//! Other Unix systems: no portable way to ask a process's start time, so no token. Records
//! written here are judged by the file lock alone, and PID-only files by PID liveness alone.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStart {
    pub token: String,
    pub wall_ms: Option<i64>,
    pub zombie: bool,
}

pub fn process_start(_pid: u32) -> Option<ProcessStart> {
    None
}
