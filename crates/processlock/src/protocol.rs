//! The locking protocol, as `docs/PROTOCOL.md` describes it with the invariants it keeps.
//!
//! Ownership is an exclusive OS lock (`flock`) held on the inode that is linked at the lock path.
//!
//! * Acquire: write the whole record into a fresh temp file, lock it (a new inode: never
//!   contended), then `link` it at the lock path. `link` never replaces an existing file, so of
//!   any number of racers exactly one links, and readers only ever see a complete record.
//! * On `EEXIST`: open the file there and try its lock without blocking. Refused: a live holder
//!   (or a brief probe of a dead one's file: the record's PID says which). Granted: nobody holds
//!   it. Its holder is dead, unless the record names a process of this host that runs with the
//!   record's start token: that holder closed its descriptor (or the directory is reached through
//!   mounts that do not share locks), and it is still the holder. A dead holder's file is removed
//!   while we still hold its lock: under the directory's removal guard (`guard.rs`), check that
//!   the path still names this inode and unlink it, then link again. Whoever unlinks a stale file
//!   holds its lock, so two racers can never both remove it, nor can one remove a file a rival
//!   has just linked.
//! * Release: under the removal guard, unlink the path if it still names our inode; then close.
//!   A rival blocked on the old inode finds it unlinked and links its own.
//! * Every removal (release, takeover, `clear`, forced removal) checks and unlinks under the same
//!   guard, so none of them can delete a file that another remover's unlink and a new holder's
//!   link put at the path after the check.
//! * Files written by older PID-only writers hold no OS lock: their PID and the process start
//!   time decide (for a bare PID, the file's modification time stands for when it was written).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::clock::now_iso8601;
use crate::dir::ensure_dir;
use crate::error::{Conflict, Error, Result};
use crate::fencing::{self, new_hold_id};
use crate::guard::{file_owner_text, holders_text, prepare as prepare_guard, while_guarded};
use crate::inherit::claim_inherited;
use crate::liveness::{host_name, judge_legacy, judge_pid, runs_as_recorded, start_token};
use crate::name::{check_process_name, LockName};
use crate::os::DirFacts;
use crate::os::{self, Entry, FileId};
use crate::perms::check_dir_once;
use crate::record::{parse_record, Parsed, Record, MAX_RECORD_BYTES, PROTOCOL};
use crate::temp::{checked_dir, sweep_orphan_temps, Temp};

/// How long a racer keeps retrying a file whose lock is held while its record names a dead
/// process: someone is probing or removing it, which takes microseconds.
const BUSY_PATIENCE: Duration = Duration::from_millis(250);
/// A file without a holder whose record is unreadable may be a PID-only writer's file caught
/// between its truncation and its write: look again after this long if it is that young.
const YOUNG_FILE: Duration = Duration::from_secs(1);
const REREAD_DELAY: Duration = Duration::from_millis(20);
/// A safety net against livelock, far above anything a real race needs: each round means the
/// file at the lock path was replaced meanwhile.
pub(crate) const MAX_ROUNDS: u32 = 10_000;

/// A lock file location: a directory and a validated name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockTarget {
    pub dir: PathBuf,
    pub name: LockName,
    pub path: PathBuf,
}

impl LockTarget {
    pub fn new(dir: impl Into<PathBuf>, name: LockName) -> Self {
        let dir = dir.into();
        let path = dir.join(name.file_name());
        Self { dir, name, path }
    }

    fn conflict(&self, mut holder: Record, problem: Option<String>) -> Error {
        holder.fencing_token = fencing::token_of(&self.path, &holder).map(|t| t.to_string());
        Error::Conflict(Box::new(Conflict {
            lock: self.name.display(),
            holder,
            path: self.path.clone(),
            waited_ms: 0,
            problem,
        }))
    }
}

/// Something worth telling the operator that happened while acquiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A dead holder's lock file (or a PID-only file of a dead or recycled PID) was removed.
    StaleRemoved { pid: u32 },
    /// A lock file nobody held and nobody could be named in (empty, garbage) was removed.
    InvalidRemoved { reason: String },
    /// Temp files of acquirers that died half-way were removed.
    OrphansRemoved { paths: Vec<PathBuf> },
}

/// A lock this process owns. Dropping it closes the descriptor, which lets the lock go, but
/// leaves the file for the next acquirer to remove: call `release` to remove it too.
#[derive(Debug)]
pub struct HeldLock {
    file: File,
    id: FileId,
    target: LockTarget,
    record: Record,
    /// Claimed from `processlock run` (`inherit.rs`): the lock is its command's, held through
    /// the descriptors the command inherited, and stays held after this process lets go.
    kept_by_run: bool,
    /// Minted for this hold (`fencing.rs`); `None` when none could be promised.
    fencing_token: Option<String>,
}

impl HeldLock {
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Larger than the token of every earlier owner of this lock (`fencing.rs`).
    pub fn fencing_token(&self) -> Option<&str> {
        self.fencing_token.as_deref()
    }

    /// A lock this process has just come to own, through `file` (linked at the lock path, its
    /// exclusive lock held): its fencing token is minted now, after the link, never before.
    fn owned(file: File, id: FileId, target: &LockTarget, record: Record) -> HeldLock {
        let fencing_token = fencing::mint(target, id, &record).map(|t| t.to_string());
        HeldLock {
            file,
            id,
            target: target.clone(),
            record,
            kept_by_run: false,
            fencing_token,
        }
    }

    pub fn target(&self) -> &LockTarget {
        &self.target
    }

    /// The open lock file. A process that inherits a duplicate of it (the `run` command's child)
    /// keeps the lock held for as long as it lives, whatever happens to this process.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A descriptor inherited from the process that took the lock (see `inherit.rs`): the lock
    /// is ours if the descriptor is the file at the lock path and already holds its lock.
    pub(crate) fn adopt_inherited(file: File, target: &LockTarget) -> Option<HeldLock> {
        if !os::is_regular(&file).ok()? || !names_same_file(&target.path, &file).ok()? {
            return None;
        }
        if !os::try_lock(&file, true).ok()? {
            return None;
        }
        let record = match read_record(&file, &target.path).ok()? {
            Parsed::Ours(r) => r,
            _ => return None,
        };
        let id = os::file_id(&file).ok()?;
        // Minted by the process that took the lock: the command's hold goes on.
        let fencing_token = fencing::token_of(&target.path, &record).map(|t| t.to_string());
        Some(HeldLock {
            file,
            id,
            target: target.clone(),
            record,
            kept_by_run: true,
            fencing_token,
        })
    }

    /// Whether this hold was claimed from `processlock run`, whose command keeps the lock after
    /// this process lets go of it (a restarted app claims it again).
    pub fn kept_by_run(&self) -> bool {
        self.kept_by_run
    }

    /// Whether the lock path still names our file (false after a forced removal).
    pub fn still_linked(&self) -> bool {
        matches!(os::entry(&self.target.path), Ok(Entry::File(id)) if id == self.id)
    }

    /// Removes the lock file if it is still ours, then lets the lock go. `Ok(true)`: removed;
    /// `Ok(false)`: the path no longer names our file (it was removed by force), and whatever is
    /// there now is left alone.
    ///
    /// The check and the unlink happen under the directory's removal guard (`guard.rs`), so no
    /// other remover can swap the file in between. If the guard cannot be had, the lock is let go
    /// all the same and the file is left for the next acquirer to take over as stale: an error
    /// says so.
    ///
    /// This is also how a process removes by force a lock it holds itself: it must remove its own
    /// file while it still holds it (letting go first would let a waiter link its file in between).
    pub fn release(self) -> Result<bool> {
        if self.kept_by_run {
            // Only our duplicate of the command's descriptor closes: removing the file would
            // let another instance take the lock while the command still runs.
            return Ok(false);
        }
        let removed = while_guarded(&self.target.dir, || {
            if !self.still_linked() {
                return Ok(false);
            }
            unlink(&self.target.path)
        });
        drop(self.file);
        removed
    }
}

/// Unlinks the lock path. `Ok(false)`: nothing was there.
fn unlink(path: &Path) -> Result<bool> {
    match os::remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("unlink", path, e)),
    }
}

/// The directory a lock path is in (where its removal guard lives).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[derive(Debug)]
pub struct Acquired {
    pub lock: HeldLock,
    pub events: Vec<Event>,
}

/// The record this process writes when it takes `target`.
pub fn own_record(target: &LockTarget, process_name: Option<&str>) -> Record {
    record_for(target, os::current_pid(), process_name)
}

/// The record for a lock held by (or on behalf of) the running process `pid`.
pub fn record_for(target: &LockTarget, pid: u32, process_name: Option<&str>) -> Record {
    Record {
        pid,
        started: now_iso8601(),
        trade_side: target.name.trade_side().map(str::to_string),
        process_name: process_name
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| target.name.default_process_name()),
        process_type: Some(target.name.process_type().to_string()),
        hostname: host_name().map(str::to_string),
        start_token: start_token(pid),
        protocol: Some(PROTOCOL.to_string()),
        hold_id: Some(new_hold_id()),
        fencing_token: None,
    }
}

/// Takes the lock or fails at once with `Error::Conflict`.
pub fn acquire(target: &LockTarget, process_name: Option<&str>) -> Result<Acquired> {
    check_process_name(process_name)?;
    let record = own_record(target, process_name);
    let json = record.to_json();
    let create = |facts| {
        Temp::create_in_checked(
            &target.dir,
            &target.name.file_name(),
            json.as_bytes(),
            facts,
        )
    };
    // Nothing is made in a directory before it passed its check, the removal guard included,
    // which is made (`guard::prepare`) while there is still room for it. A directory that is not
    // there yet is made, then checked before anything is made in it.
    let made_and_checked = || -> Result<DirFacts> {
        ensure_dir(&target.dir)?;
        let facts = checked_dir(&target.dir)?;
        prepare_guard(&target.dir, facts);
        Ok(facts)
    };
    let temp = match check_dir_once(&target.dir)? {
        Some(facts) => {
            prepare_guard(&target.dir, facts);
            // The directory is made only when the temp file cannot be created in it (removed
            // since it was checked): one system call less on every acquire.
            match create(facts) {
                Err(Error::Io { source, .. }) if is_missing_dir(&source) => {
                    create(made_and_checked()?)
                }
                other => other,
            }
        }
        None => create(made_and_checked()?),
    };
    let temp = match temp {
        Err(e) if is_out_of_space(&e) => return take_over_in_place(target, record, e),
        other => other?,
    };
    match publish(target, temp, record) {
        Ok(mut acquired) => {
            sweep_once(target, &mut acquired.events);
            Ok(acquired)
        }
        Err(Error::Conflict(conflict)) => {
            match claim_inherited(|file| HeldLock::adopt_inherited(file, target)) {
                Some(lock) => Ok(Acquired {
                    lock,
                    events: Vec::new(),
                }),
                None => Err(Error::Conflict(conflict)),
            }
        }
        other => other,
    }
}

/// The first time this process owns a lock, it removes the temp files that acquirers killed
/// half-way left for that lock: a service's next start cleans up after its crashed predecessor,
/// at the price of one directory scan per lock and process, not per acquire.
fn sweep_once(target: &LockTarget, events: &mut Vec<Event>) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
    if swept.contains(&target.path) {
        return;
    }
    swept.push(target.path.clone());
    drop(swept);
    // A stale takeover during this acquire has just swept.
    if !events
        .iter()
        .any(|e| matches!(e, Event::OrphansRemoved { .. }))
    {
        sweep_orphans(target, events);
    }
}

/// Removes the temp files that acquirers of `target` killed half-way left, and says so.
fn sweep_orphans(target: &LockTarget, events: &mut Vec<Event>) {
    if let Ok(paths) = sweep_orphan_temps(&target.dir, Some(&target.name.file_name())) {
        if !paths.is_empty() {
            events.push(Event::OrphansRemoved { paths });
        }
    }
}

/// A file system that is full: no temp file could be made, or its record written.
fn is_out_of_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if os::is_out_of_space(source))
}

/// Takes the lock on a full file system, where no temp file can be made: a dead holder's file
/// at the lock path already has its inode and its block, and becomes ours where it is. Under
/// its exclusive lock (granted: nobody holds it, and its holder is dead), with the path still
/// naming it, our record overwrites its record in one write, padded with spaces to the old
/// length, so that a reader sees either record whole (*complete records*); the file is never
/// unlinked (*one remover at a time*), and its lock is ours from the moment it was granted
/// (*one owner*). `full`, the error that made the temp file fail, is returned when there is
/// nothing to take over or the file cannot be written (a read-only descriptor: another user's
/// file); a live holder is a conflict, as ever.
fn take_over_in_place(target: &LockTarget, record: Record, full: Error) -> Result<Acquired> {
    let json = record.to_json();
    for _ in 0..MAX_ROUNDS {
        let stale = match judge(&target.path)? {
            Verdict::Gone => return Err(full),
            Verdict::Held(holder, problem) => return Err(target.conflict(holder, problem)),
            Verdict::Stale(stale) => stale,
        };
        let event = stale.event();
        match stale.overwrite(&target.path, json.as_bytes()) {
            Ok(Some(file)) => {
                let id = os::file_id(&file).map_err(|e| Error::io("fstat", &target.path, e))?;
                return Ok(Acquired {
                    lock: HeldLock::owned(file, id, target, record),
                    events: vec![event],
                });
            }
            // Removed by force meanwhile: look again.
            Ok(None) => {}
            Err(_) => return Err(full),
        }
    }
    Err(Error::kept_changing("write", &target.path))
}

fn is_missing_dir(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Links a complete, locked temp file at the lock path (taking over a dead holder's file) and
/// turns it into the held lock. The temp name is gone afterwards, whatever the outcome.
pub(crate) fn publish(target: &LockTarget, temp: Temp, record: Record) -> Result<Acquired> {
    let mut events = Vec::new();
    if let Err(e) = link_or_take_over(target, &temp.path, &mut events) {
        drop(temp.discard());
        return Err(e);
    }
    adopt_linked(target, temp, record, events)
}

/// Turns a temp file that `link_or_take_over` has linked at the lock path into the held lock
/// (`handoff.rs`, which keeps its temp file across failed attempts).
pub(crate) fn adopt_linked(
    target: &LockTarget,
    temp: Temp,
    record: Record,
    events: Vec<Event>,
) -> Result<Acquired> {
    let id = os::file_id(&temp.file);
    let file = temp.discard();
    let id = id.map_err(|e| Error::io("fstat", &target.path, e))?;
    Ok(Acquired {
        lock: HeldLock::owned(file, id, target, record),
        events,
    })
}

pub(crate) fn link_or_take_over(
    target: &LockTarget,
    temp: &Path,
    events: &mut Vec<Event>,
) -> Result<()> {
    for _ in 0..MAX_ROUNDS {
        match os::hard_link(temp, &target.path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if matches!(e.raw_os_error(), Some(n) if is_no_link_support(n)) => {
                return Err(Error::Unsupported {
                    path: target.dir.clone(),
                    syscall: "link",
                    source: e,
                })
            }
            Err(e) => return Err(Error::io("link", &target.path, e)),
        }
        match judge(&target.path)? {
            Verdict::Gone => {}
            Verdict::Held(holder, problem) => return Err(target.conflict(holder, problem)),
            Verdict::Stale(stale) => {
                let event = stale.event();
                if stale.remove(&target.path)? {
                    events.push(event);
                    sweep_orphans(target, events);
                }
            }
        }
    }
    Err(Error::kept_changing("link", &target.path))
}

#[cfg(unix)]
fn is_no_link_support(errno: i32) -> bool {
    // EPERM: file systems without hard links (FAT, some FUSE mounts) answer this for link(2).
    matches!(
        errno,
        libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK
    )
}

#[cfg(not(unix))]
fn is_no_link_support(errno: i32) -> bool {
    const ERROR_INVALID_FUNCTION: i32 = 1;
    const ERROR_NOT_SUPPORTED: i32 = 50;
    matches!(errno, ERROR_INVALID_FUNCTION | ERROR_NOT_SUPPORTED)
}

/// What is at the lock path, judged by the protocol's rules (acquirers and `clear` alike).
pub(crate) enum Verdict {
    /// Nothing, or a file that was replaced while we looked: look (or link) again.
    Gone,
    /// A live holder. PID 0 when it wrote no readable record. With a problem: the holder runs
    /// but does not hold the OS lock (`unlocked_problem`).
    Held(Record, Option<String>),
    /// Nobody holds it; we do now, and it is still the file at the path.
    Stale(Stale),
}

/// A stale lock file whose lock we hold: only we may remove it.
pub(crate) struct Stale {
    file: File,
    /// What the file said: a dead or recycled holder's record, or why it is unreadable.
    pub(crate) said: std::result::Result<Record, String>,
}

impl Stale {
    pub(crate) fn event(&self) -> Event {
        match &self.said {
            Ok(r) => Event::StaleRemoved { pid: r.pid },
            Err(reason) => Event::InvalidRemoved {
                reason: reason.clone(),
            },
        }
    }

    /// Unlinks the file if the path still names it, and only then lets its lock go: nobody can
    /// take it over meanwhile, and under the removal guard nobody can swap it for another file
    /// between the check and the unlink. `Ok(false)`: it was gone or replaced; look again.
    pub(crate) fn remove(self, path: &Path) -> Result<bool> {
        let removed = while_guarded(dir_of(path), || {
            if !names_same_file(path, &self.file)? {
                return Ok(false);
            }
            unlink(path)
        });
        drop(self.file);
        removed
    }
}

impl Stale {
    /// Writes `record` over the stale record, in one positioned write of at least the old
    /// length (spaces after the record, which readers trim), so that no reader sees an empty,
    /// shortened or half-old file; then checks that the path still names the file. `Ok(None)`:
    /// it was removed meanwhile (by force), and the lock was let go.
    fn overwrite(self, path: &Path, record: &[u8]) -> io::Result<Option<File>> {
        let old = self.file.metadata()?.len();
        let old = usize::try_from(old).unwrap_or(usize::MAX);
        if old > MAX_RECORD_BYTES {
            return Err(io::Error::other("the stale file is larger than a record"));
        }
        let mut bytes = record.to_vec();
        if bytes.len() < old {
            // The padding replaces the record's newline: the file still ends with one.
            bytes.pop();
            bytes.resize(old - 1, b' ');
            bytes.push(b'\n');
        }
        let written = os::write_at(&self.file, &bytes, 0)?;
        if written != bytes.len() {
            // Not one write: whatever is there is not a whole record. Nobody else may remove
            // it, since we hold its lock: remove it and let the caller report the full disk.
            let _ = self.remove(path);
            return Err(io::Error::other("short write"));
        }
        match names_same_file(path, &self.file) {
            Ok(true) => Ok(Some(self.file)),
            Ok(false) => Ok(None),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

/// `examine`, waiting out a brief probe or a rival's removal of a dead holder's file. A file
/// still locked after `BUSY_PATIENCE` has a real holder (say, a child that inherited the
/// descriptor of a holder that died).
pub(crate) fn judge(path: &Path) -> Result<Verdict> {
    let started = std::time::Instant::now();
    loop {
        match examine(path)? {
            Found::Busy(..) if started.elapsed() < BUSY_PATIENCE => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Found::Busy(holder, file) => {
                let problem = locked_by_others(&file, &holder, path);
                return Ok(Verdict::Held(holder, Some(problem)));
            }
            Found::Verdict(v) => return Ok(v),
        }
    }
}

enum Found {
    /// Locked, but the record names a dead process: someone is probing or removing it.
    Busy(Record, File),
    Verdict(Verdict),
}

fn examine(path: &Path) -> Result<Found> {
    let file = match open_lock_file(path, os::open_existing)? {
        Some(f) => f,
        None => return Ok(Found::Verdict(Verdict::Gone)),
    };
    let got = try_lock(&file, true, path)?;
    let mut parsed = read_record(&file, path)?;
    if !got {
        return Ok(match parsed {
            Parsed::Ours(r) | Parsed::Legacy(r) if judge_pid(&r).is_alive() => {
                Found::Verdict(Verdict::Held(r, None))
            }
            Parsed::Ours(r) | Parsed::Legacy(r) => Found::Busy(r, file),
            Parsed::Invalid(_) => Found::Busy(unknown_holder(), file),
        });
    }
    if !names_same_file(path, &file)? {
        return Ok(Found::Verdict(Verdict::Gone));
    }
    if matches!(parsed, Parsed::Invalid(_)) && is_young(&file) {
        // Perhaps a PID-only writer between its truncation and its write.
        std::thread::sleep(REREAD_DELAY);
        parsed = read_record(&file, path)?;
    }
    let said = match parsed {
        Parsed::Legacy(r) if judge_legacy(&r, written_ms(&file)).is_alive() => {
            return Ok(Found::Verdict(Verdict::Held(r, None)))
        }
        Parsed::Ours(r) if runs_as_recorded(&r) => {
            let problem = unlocked_problem(&r);
            return Ok(Found::Verdict(Verdict::Held(r, Some(problem))));
        }
        Parsed::Ours(r) | Parsed::Legacy(r) => Ok(r),
        Parsed::Invalid(reason) => Err(reason),
    };
    Ok(Found::Verdict(Verdict::Stale(Stale { file, said })))
}

/// Why a file nobody holds the OS lock of is still held: its recorded holder runs. Taking it
/// over would start a second instance beside it.
pub(crate) fn unlocked_problem(holder: &Record) -> String {
    format!(
        "the OS lock on the lock file is not held, but its recorded holder (PID {}) is running: it closed its lock descriptor, or the lock directory is reached through mounts that do not share locks; it was not taken over",
        holder.pid
    )
}

/// Why a file whose recorded holder is not running (or that names nobody) is held all the same:
/// some process holds a lock on it. Where the system tells (Linux), which processes, and as whom;
/// always whose the file is, since whoever can open it can hold its lock: a process the holder
/// started, or another user. A start is blocked until that process lets go, so say how to find
/// it.
pub(crate) fn locked_by_others(file: &File, holder: &Record, path: &Path) -> String {
    let whose = file_owner_text(file);
    let who = holders_text(file);
    let shown = crate::text::printable(&path.to_string_lossy()).into_owned();
    match holder.pid {
        0 => format!(
            "the lock file names no holder (it is not a lock record), yet {who} holds a lock on it ({whose}): whoever can open the file can do that; stop that process (fuser -v {shown} finds it), and the next start takes the file over"
        ),
        pid => format!(
            "the lock is held, but not by PID {pid}, which is not running: {who} holds a lock on the lock file ({whose}), a process PID {pid} started or another user who can open the file; stop that process (fuser -v {shown} finds it), and the next start takes the file over"
        ),
    }
}

/// When the file was last written (its modification time), in ms since the Unix epoch.
fn written_ms(file: &File) -> Option<i64> {
    let modified = file.metadata().ok()?.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// A stand-in for a holder that wrote nothing readable. PID 0 is never a real holder.
pub(crate) fn unknown_holder() -> Record {
    Record::pid_only(0)
}

/// Opens the lock file, refusing anything but a regular file. `None`: nothing is there.
pub(crate) fn open_lock_file(
    path: &Path,
    open: fn(&Path) -> io::Result<File>,
) -> Result<Option<File>> {
    let not_a_file = |found: Entry| Error::NotAFile {
        path: path.to_path_buf(),
        found: found.describe(),
    };
    match open(path) {
        Ok(f) => {
            if os::is_regular(&f).map_err(|e| Error::io("fstat", path, e))? {
                Ok(Some(f))
            } else {
                Err(not_a_file(os::entry(path).unwrap_or(Entry::Other)))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => match os::entry(path) {
            Ok(Entry::Missing) => Ok(None),
            Ok(found @ (Entry::Symlink | Entry::Directory | Entry::Other)) => {
                Err(not_a_file(found))
            }
            _ => Err(Error::io("open", path, e)),
        },
    }
}

pub(crate) fn try_lock(file: &File, exclusive: bool, path: &Path) -> Result<bool> {
    os::try_lock(file, exclusive).map_err(|e| Error::flock(path, e))
}

pub(crate) fn read_record(file: &File, path: &Path) -> Result<Parsed> {
    let bytes = os::read_all(file, MAX_RECORD_BYTES).map_err(|e| Error::io("read", path, e))?;
    Ok(parse_record(&bytes))
}

pub(crate) fn names_same_file(path: &Path, file: &File) -> Result<bool> {
    let id = os::file_id(file).map_err(|e| Error::io("fstat", path, e))?;
    let at_path = os::entry(path).map_err(|e| Error::io("lstat", path, e))?;
    Ok(at_path == Entry::File(id))
}

fn is_young(file: &File) -> bool {
    file.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < YOUNG_FILE)
}

/// The state of a lock file as an outside observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    Absent,
    Held(Record),
    /// Nobody holds the OS lock, but the recorded holder runs on this host as the very process
    /// that wrote the record: still held, and never taken over. The text says why.
    HeldUnlocked(Record, String),
    /// Nobody holds it: the next acquirer will remove it.
    Stale(Record),
    /// Nobody holds it and it names nobody (empty, garbage).
    Invalid(String),
    /// Its recorded holder is not running (or it names none), but another process holds a lock
    /// on it (a shared one: a process the holder started, another user who can open the file),
    /// and every start fails until that process lets go. The text says who, where it can be
    /// known, and what to do.
    HeldByOther(Record, String),
}

/// Looks at a lock file without taking it. The probe holds a shared lock for a few
/// microseconds; acquirers that meet it retry (see `Found::Busy`).
pub fn inspect(path: &Path) -> Result<Inspection> {
    let started = std::time::Instant::now();
    loop {
        let Some(file) = open_lock_file(path, os::open_for_probe)? else {
            return Ok(Inspection::Absent);
        };
        // Hold the probe's lock for two system calls only: an acquirer that meets it has to
        // retry, and probes in tight loops must not starve the takeover of a dead holder's file.
        // The record can be read unlocked: it was complete before the file was linked.
        let free = try_lock(&file, false, path)?;
        if free {
            let _ = os::unlock(&file);
        }
        let parsed = read_record(&file, path)?;
        return Ok(match (free, parsed) {
            (false, Parsed::Ours(r) | Parsed::Legacy(r)) => {
                if !judge_pid(&r).is_alive() && started.elapsed() < BUSY_PATIENCE {
                    // An acquirer is removing this dead holder's file right now: look again.
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                Inspection::Held(r)
            }
            (false, Parsed::Invalid(_)) if started.elapsed() < BUSY_PATIENCE => {
                // Locked and unreadable: a record being written over a dead holder's on a full
                // file system (`take_over_in_place`) can be caught half-way. Look again.
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            (false, Parsed::Invalid(_)) => Inspection::Held(unknown_holder()),
            (true, Parsed::Ours(r)) if runs_as_recorded(&r) => {
                let problem = unlocked_problem(&r);
                Inspection::HeldUnlocked(r, problem)
            }
            (true, Parsed::Legacy(r)) if judge_legacy(&r, written_ms(&file)).is_alive() => {
                Inspection::Held(r)
            }
            // Nobody holds it exclusively; an acquirer would now take its exclusive lock, which
            // a shared lock held by someone else refuses too (a process the holder started that
            // took one, another user): then it is as held as a start finds it.
            (true, parsed) => match locked_by_another(&file, path)? {
                true if started.elapsed() < BUSY_PATIENCE => {
                    // Perhaps another probe's lock, held for two system calls: look again.
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                true => {
                    let holder = match parsed {
                        Parsed::Ours(r) | Parsed::Legacy(r) => r,
                        Parsed::Invalid(_) => unknown_holder(),
                    };
                    let problem = locked_by_others(&file, &holder, path);
                    Inspection::HeldByOther(holder, problem)
                }
                false => match parsed {
                    Parsed::Ours(r) | Parsed::Legacy(r) => Inspection::Stale(r),
                    Parsed::Invalid(reason) => Inspection::Invalid(reason),
                },
            },
        });
    }
}

/// Whether someone holds a lock on `file` that an exclusive lock conflicts with (the probe's own
/// shared lock is gone by then). The exclusive lock, if granted, is let go at once.
fn locked_by_another(file: &File, path: &Path) -> Result<bool> {
    if try_lock(file, true, path)? {
        let _ = os::unlock(file);
        return Ok(false);
    }
    Ok(true)
}

/// Removes whatever regular file or symlink is at the lock path, held or not. A holder that is
/// still running will notice at release (its inode is no longer linked) and remove nothing.
///
/// What is at the path is looked at and removed under the removal guard, so the file removed is
/// the one looked at. A process that holds this lock itself must not use this to remove its own
/// lock: `HeldLock::release` removes its file while it still holds it.
pub fn force_remove(path: &Path) -> Result<bool> {
    let look = || match os::entry(path).map_err(|e| Error::io("lstat", path, e))? {
        Entry::Missing => Ok(false),
        Entry::File(_) | Entry::Symlink => Ok(true),
        found => Err(Error::NotAFile {
            path: path.to_path_buf(),
            found: found.describe(),
        }),
    };
    // Nothing there (perhaps not even the directory): nothing to guard.
    if !look()? {
        return Ok(false);
    }
    while_guarded(
        dir_of(path),
        || if look()? { unlink(path) } else { Ok(false) },
    )
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::test_support::target;

    fn no_space(path: &Path) -> Error {
        Error::io("open", path, io::Error::from_raw_os_error(libc::ENOSPC))
    }

    /// A dead holder's file whose record is longer than ours becomes ours where it is: the same
    /// inode, the same length (padded), a whole record; a second taker finds it held; with
    /// nothing at the path, the full disk is the answer.
    #[test]
    fn a_full_disk_takes_a_dead_holders_file_over_where_it_is() {
        let t = target("in-place");
        std::fs::create_dir_all(&t.dir).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let old = record_for(&t, dead, Some(&"x".repeat(200))).to_json();
        std::fs::write(&t.path, &old).unwrap();
        let before = os::entry(&t.path).unwrap();

        let mine = own_record(&t, None);
        let taken = take_over_in_place(&t, mine.clone(), no_space(&t.path)).unwrap();
        assert_eq!(taken.events, vec![Event::StaleRemoved { pid: dead }]);
        assert_eq!(os::entry(&t.path).unwrap(), before);
        let bytes = std::fs::read(&t.path).unwrap();
        assert_eq!(bytes.len(), old.len());
        assert!(bytes.ends_with(b" \n"));
        assert_eq!(parse_record(&bytes), Parsed::Ours(mine));
        assert!(taken.lock.still_linked());

        let again = take_over_in_place(&t, own_record(&t, None), no_space(&t.path));
        assert_eq!(again.unwrap_err().code(), "LOCK_CONFLICT");

        assert!(taken.lock.release().unwrap());
        let none = take_over_in_place(&t, own_record(&t, None), no_space(&t.path));
        assert!(matches!(none, Err(Error::Io { ref source, .. }) if os::is_out_of_space(source)));
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }
}
