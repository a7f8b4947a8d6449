//! What `processlock run` hands its command: the variables it sets, and the hold it keeps when
//! it holds the lock on a server.

use crate::record::Record;
use serde::{Deserialize, Serialize};

/// The variable `processlock run` sets for its command when it holds a lock file:
/// `<lock fd>:<token fd>:<token inode>:<socket>` (the socket's address may be empty).
pub const INHERITED_ENV: &str = "PROCESSLOCK_INHERITED";

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

/// Nothing is handed down where `processlock run` does not run.
#[cfg(not(unix))]
impl ServerHold {
    pub fn holder_is_running(&self) -> bool {
        false
    }

    pub fn watch_holder(&self, _hook: Box<dyn FnOnce() + Send>) -> bool {
        false
    }
}
