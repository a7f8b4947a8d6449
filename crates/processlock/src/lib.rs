//! Single-instance process locks that cannot lie.
//!
//! Ownership of a lock is an exclusive `flock` (Windows: `LockFileEx`) on the inode that is
//! currently linked at the lock path. The kernel drops that lock however the owner dies, so a dead
//! owner is detected at once and PID reuse cannot make it look alive. The JSON record inside the
//! file is for people and for older PID-only writers; it never decides ownership on its own when a
//! lock can be tested. The protocol and the invariants it keeps are written down in
//! `docs/PROTOCOL.md`; `protocol.rs` implements it.
//!
//! This crate knows nothing of Node: the addon and the `processlock` command are thin shells
//! over it. It also holds the seam every backend implements (`backend.rs`, `holds.rs`; lock files
//! are `files.rs`), and its modules form layers: the OS layer (`os/`) and the plain facts below it
//! (`cancel.rs`, `clock.rs`, `record.rs`, `text.rs`) at the bottom, the protocol above them, the
//! seam on top; nothing imports a module above it. `docs/ARCHITECTURE.md` says where each kind of
//! change goes.

mod backend;
mod cancel;
mod clear;
mod clock;
mod dir;
mod error;
mod fencing;
mod files;
mod fuzz;
mod guard;
mod handoff;
mod holds;
mod inherit;
mod list;
mod liveness;
mod name;
mod os;
mod perms;
mod protocol;
mod record;
mod replace;
pub mod report;
mod temp;
#[cfg(test)]
#[path = "tests/support.rs"]
mod test_support;
mod text;
mod wait;

// The public surface is what the Node binding, the `processlock` command and the PostgreSQL
// backend use, plus the types that appear in those signatures. Everything else is crate-private.

pub use backend::{Backend, Holding, Listed, Listing, LossHook, LossNotice, Released, Wait};
pub use cancel::Cancel;
pub use clear::{remove_if_stale, Removal};
pub use clock::parse_iso8601_ms;
pub use dir::{app_default_dir, real_dir, resolve_dir, resolve_dir_or, DIR_ENV};
pub use error::{already_running, Conflict, DirProblem, Error, ErrorCode, Result};
pub use files::FileBackend;
pub use handoff::PendingLock;
pub use holds::{Hold, HoldId, Holder, Holds, Taken};
pub use inherit::{claim_server_lock, ServerHold, INHERITED_ENV, SERVER_LOCK_ENV};
#[cfg(unix)]
pub use inherit::{ClaimNews, ClaimToken, HandoverSocket};
pub use list::{list_locks, LockState, LockStatus};
pub use liveness::{identify, judge_pid, Identified, PidState};
pub use name::{check_process_name, LockName};
#[cfg(unix)]
pub use os::cloexec_pipe;
pub use perms::check_dir;
pub use protocol::{
    force_remove, inspect, own_record, record_for, Acquired, Event, HeldLock, Inspection,
    LockTarget,
};
pub use record::{parse_record, Parsed, Record, MAX_RECORD_BYTES};
pub use replace::Refusal;
pub use replace::DEFAULT_GRACE;
#[cfg(unix)]
pub use replace::{replace_holder, signal_holder, Replacing};
pub use temp::sweep_orphan_temps;
pub use wait::wait_for;

/// What the tests (of this crate and of the crates built on it) and the benchmark examples reach
/// into: the protocol's entry points below the backend seam, and facts they check records against.
/// Not part of the API.
#[doc(hidden)]
pub mod testing {
    pub use crate::fuzz::Xorshift;
    pub use crate::liveness::start_token;
    pub use crate::name::MAX_PROCESS_NAME_LEN;
    pub use crate::protocol::acquire;
    pub use crate::record::PROTOCOL;
    pub use crate::wait::acquire_wait;
}
