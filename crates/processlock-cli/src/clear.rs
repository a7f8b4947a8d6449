//! `processlock clear`: removes the lock files no running process holds (and, with `--force`,
//! the ones that are held), plus temp files of acquirers that died half-way. Files that are not
//! lock records (another program's `*.lock` in a shared directory) are listed and kept.

use std::path::Path;

use processlock::report::printable;

use crate::display::{errln, outln};
use processlock::{
    check_dir, force_remove, remove_if_stale, sweep_orphan_temps, Backend, Error, FileBackend,
    LockName, Removal, Result,
};

/// Returns the exit status: 0, or 1 if some file could not be handled.
pub fn run(files: &FileBackend, force: bool) -> Result<i32> {
    let dir = files.dir();
    check_dir(dir)?;
    let locks = files.list()?.locks;
    // Each line as soon as its file is handled: a long clear shows its progress.
    let outcomes: Vec<Outcome> = locks
        .iter()
        .map(|lock| clear_one(files, Path::new(&lock.place), lock.name.as_ref(), force))
        .chain(std::iter::once_with(|| sweep_temps(dir)))
        .inspect(Outcome::print)
        .collect();
    summarize(dir, !locks.is_empty(), &outcomes);
    let failed = outcomes.iter().any(|o| matches!(o, Outcome::Failed(_)));
    Ok(i32::from(failed))
}

/// What became of one file (or of the temp files).
#[derive(Debug)]
enum Outcome {
    /// Nothing to do: gone already, or no temp files.
    Nothing,
    RemovedStale {
        name: String,
        pid: u32,
    },
    /// Removed with `--force`; the process keeps running.
    RemovedHeld {
        name: String,
        pid: u32,
    },
    Kept {
        name: String,
        pid: u32,
        process_name: String,
        /// The holder's host when it is not this one.
        host: Option<String>,
    },
    /// Not a lock record of processlock.
    Unknown {
        name: String,
        why: String,
    },
    /// Not a regular file.
    Left {
        name: String,
        error: Error,
    },
    TempsRemoved(usize),
    Failed(Error),
}

fn clear_one(files: &FileBackend, path: &Path, lock: Option<&LockName>, force: bool) -> Outcome {
    let name = path
        .file_name()
        .map(|n| printable(&n.to_string_lossy()).into_owned())
        .unwrap_or_default();
    match remove_if_stale(path) {
        Ok(Removal::Absent) => Outcome::Nothing,
        Ok(Removal::RemovedStale(r)) => Outcome::RemovedStale { name, pid: r.pid },
        Ok(Removal::Unknown(why)) => Outcome::Unknown { name, why },
        Ok(Removal::Held(r)) if force => match remove_held(files, path, lock) {
            Ok(_) => Outcome::RemovedHeld { name, pid: r.pid },
            Err(e) => Outcome::Failed(e),
        },
        Ok(Removal::Held(r)) => Outcome::Kept {
            name,
            pid: r.pid,
            host: r.other_host().map(str::to_string),
            process_name: r.process_name,
        },
        Err(error @ Error::NotAFile { .. }) => Outcome::Left { name, error },
        Err(e) => Outcome::Failed(e),
    }
}

/// A held lock goes as the backend removes it by force; a file whose name is no lock name is
/// no lock the backend can name, and goes by its path.
fn remove_held(files: &FileBackend, path: &Path, lock: Option<&LockName>) -> Result<bool> {
    match lock {
        Some(name) => files.force_remove(name),
        None => force_remove(path),
    }
}

fn sweep_temps(dir: &Path) -> Outcome {
    match sweep_orphan_temps(dir, None) {
        Ok(paths) if !paths.is_empty() => Outcome::TempsRemoved(paths.len()),
        Ok(_) => Outcome::Nothing,
        Err(e) => Outcome::Failed(e),
    }
}

impl Outcome {
    fn print(&self) {
        match self {
            Outcome::Nothing => {}
            Outcome::RemovedStale { name, pid } => {
                outln!("removed stale   {name} (PID {pid} is not running)")
            }
            Outcome::RemovedHeld { name, pid } => {
                outln!("removed HELD    {name} (PID {pid} keeps running)")
            }
            Outcome::Kept {
                name,
                pid,
                process_name,
                host,
            } => {
                let who = if process_name.is_empty() {
                    String::new()
                } else {
                    format!(", {}", printable(process_name))
                };
                match host {
                    None => outln!("kept            {name} (held by running PID {pid}{who})"),
                    Some(host) => outln!(
                        "kept            {name} (held by PID {pid} on host {}{who})",
                        printable(host)
                    ),
                }
            }
            Outcome::Unknown { name, why } => {
                outln!("kept unknown    {name} ({})", printable(why))
            }
            Outcome::Left { name, error } => {
                outln!("left            {name}: {}", printable(&error.to_string()))
            }
            Outcome::TempsRemoved(n) => {
                outln!("removed {n} temp file(s) left by acquirers that died")
            }
            Outcome::Failed(e) => errln!("processlock: {}", printable(&e.to_string())),
        }
    }

    /// How many files it removed.
    fn removed(&self) -> usize {
        match self {
            Outcome::RemovedStale { .. } | Outcome::RemovedHeld { .. } => 1,
            Outcome::TempsRemoved(n) => *n,
            _ => 0,
        }
    }

    /// The PID of a holder on this host whose lock was kept.
    fn kept_here(&self) -> Option<u32> {
        match self {
            Outcome::Kept {
                pid, host: None, ..
            } => Some(*pid),
            _ => None,
        }
    }

    fn kept_elsewhere(&self) -> bool {
        matches!(self, Outcome::Kept { host: Some(_), .. })
    }

    fn unknown(&self) -> bool {
        matches!(self, Outcome::Unknown { .. })
    }

    /// The PID of a holder whose lock file `--force` removed.
    fn forced(&self) -> Option<u32> {
        match self {
            Outcome::RemovedHeld { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

/// The lines after the list: what was (not) done, and what to do about the files that stay.
fn summarize(dir: &Path, found_locks: bool, outcomes: &[Outcome]) {
    let shown = printable(&dir.to_string_lossy()).into_owned();
    let removed: usize = outcomes.iter().map(Outcome::removed).sum();
    if !found_locks && removed == 0 {
        if dir.is_dir() {
            outln!("No locks in {shown}");
        } else {
            outln!("No locks: {shown} does not exist (yet)");
        }
        return;
    }
    let kept: Vec<u32> = outcomes.iter().filter_map(Outcome::kept_here).collect();
    let kept_elsewhere = outcomes.iter().filter(|o| o.kept_elsewhere()).count();
    let unknown = outcomes.iter().filter(|o| o.unknown()).count();
    let forced: Vec<u32> = outcomes.iter().filter_map(Outcome::forced).collect();
    if removed == 0 && kept.is_empty() && kept_elsewhere == 0 && unknown == 0 {
        outln!("Nothing to clear in {shown}");
    } else if removed == 0 {
        outln!("Nothing removed in {shown}");
    }
    if !kept.is_empty() {
        let pids = pid_list(&kept);
        outln!();
        outln!("Held locks belong to running processes and were kept. To stop them: pm2 stop all (or kill {pids}), then processlock clear.");
        outln!(
            "processlock clear --force removes their files anyway (the processes keep running)."
        );
    }
    if kept_elsewhere > 0 {
        outln!();
        outln!("{kept_elsewhere} lock(s) are held by processes on other hosts and were kept: stop those processes there.");
    }
    if unknown > 0 {
        outln!();
        outln!("{unknown} file(s) are not lock records of processlock and were kept, with --force too: another program may use them. Remove them by hand if nothing does.");
    }
    if !forced.is_empty() {
        errln!();
        errln!("WARNING: this only deleted the lock files; it did NOT stop the running processes ({}).", pid_list(&forced));
        errln!("WARNING: a second instance can now start next to them. To stop them: pm2 stop all, then processlock clear.");
    }
}

fn pid_list(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "<PID>".to_string();
    }
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use processlock::testing::acquire;
    use processlock::{record_for, LockName, LockTarget};

    fn target(dir: &Path, process_type: &str) -> LockTarget {
        let name = LockName::new(process_type, Some("SHORT")).unwrap();
        LockTarget::new(dir.to_path_buf(), name)
    }

    #[test]
    fn a_held_lock_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), "backend");
        let _held = acquire(&t, Some("api")).unwrap();
        let files = FileBackend::new(dir.path());
        let kept = clear_one(&files, &t.path, Some(&t.name), false);
        assert_eq!(kept.kept_here(), Some(std::process::id()), "{kept:?}");
        assert!(t.path.exists());
        let forced = clear_one(&files, &t.path, Some(&t.name), true);
        assert_eq!(forced.forced(), Some(std::process::id()), "{forced:?}");
        assert_eq!(forced.removed(), 1);
        assert!(!t.path.exists());
    }

    #[test]
    fn a_dead_holders_lock_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), "worker");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&t.path, record_for(&t, dead, None).to_json()).unwrap();
        match clear_one(&FileBackend::new(dir.path()), &t.path, Some(&t.name), false) {
            Outcome::RemovedStale { pid, .. } => assert_eq!(pid, dead),
            other => panic!("{other:?}"),
        }
        assert!(!t.path.exists());
    }

    #[test]
    fn files_that_are_not_lock_records_are_kept_even_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other-program.lock");
        std::fs::write(&path, "not a lock record").unwrap();
        let files = FileBackend::new(dir.path());
        let outcome = clear_one(&files, &path, None, true);
        assert!(outcome.unknown(), "{outcome:?}");
        assert_eq!(outcome.removed(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a lock record");
        assert!(matches!(
            clear_one(&files, &dir.path().join("gone.lock"), None, true),
            Outcome::Nothing
        ));
    }
}
