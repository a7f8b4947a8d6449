//! Every lock file in a directory and its state: what operators see.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fencing::token_of;
use crate::name::LockName;
use crate::protocol::{inspect, Inspection};
use crate::record::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Held,
    Stale,
    Invalid,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Held => "held",
            LockState::Stale => "stale",
            LockState::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LockStatus {
    pub path: PathBuf,
    /// Recovered from the file name; `None` for a `.lock` file whose name we would not write.
    pub name: Option<LockName>,
    pub state: LockState,
    pub record: Option<Record>,
    /// Why the file is invalid, what sits at the path when it is not a file, or why a file
    /// nobody holds the OS lock of is held all the same.
    pub problem: Option<String>,
    /// The holder's fencing token, for a held lock whose holder has minted it.
    pub fencing_token: Option<String>,
}

impl LockStatus {
    pub fn new(
        path: PathBuf,
        name: Option<LockName>,
        state: LockState,
        record: Option<Record>,
        problem: Option<String>,
    ) -> Self {
        let fencing_token = match (state, &record) {
            (LockState::Held, Some(r)) => token_of(&path, r).map(|t| t.to_string()),
            _ => None,
        };
        Self {
            path,
            name,
            state,
            record,
            problem,
            fencing_token,
        }
    }
}

/// All `*.lock` entries in `dir`, sorted by file name. A missing directory has no locks.
pub fn list_locks(dir: &Path) -> Result<Vec<LockStatus>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("scandir", dir, e)),
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".lock") && !n.starts_with('.'))
        })
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(LockName::from_file_name);
        if let Some(status) = lock_status(path, name)? {
            out.push(status);
        }
    }
    Ok(out)
}

/// The lock file at `path` as a listing shows it; `None` when there is none.
pub fn lock_status(path: PathBuf, name: Option<LockName>) -> Result<Option<LockStatus>> {
    let (state, record, problem) = match inspect(&path) {
        Ok(Inspection::Absent) => return Ok(None),
        Ok(Inspection::Held(r)) => (LockState::Held, Some(r), None),
        Ok(Inspection::HeldUnlocked(r, why)) => (LockState::Held, Some(r), Some(why)),
        Ok(Inspection::HeldByOther(r, why)) => {
            (LockState::Held, (r.pid != 0).then_some(r), Some(why))
        }
        Ok(Inspection::Stale(r)) => (LockState::Stale, Some(r), None),
        Ok(Inspection::Invalid(why)) => (LockState::Invalid, None, Some(why)),
        Err(e @ Error::NotAFile { .. }) => (LockState::Invalid, None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    Ok(Some(LockStatus::new(path, name, state, record, problem)))
}
