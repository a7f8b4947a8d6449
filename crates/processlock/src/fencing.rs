//! Fencing tokens of lock files: a number per lock that is larger for every new owner, whatever
//! removed the previous owner's file (`docs/PROTOCOL.md`, *Fencing tokens of lock files*).
//!
//! The lock file cannot keep it: release, `clear` and forced removal unlink it. So every lock
//! has a generation file beside it (`.backend.short.lock.fencing`), which nothing removes and
//! only an owner writes, while it owns the lock. A new owner's token is the larger of the stored
//! token plus one and the wall clock in microseconds since the Unix epoch: the stored token
//! covers a clock stepped back, the clock covers a generation file that is gone (the directory
//! deleted, a reboot that emptied it).
//!
//! The token is minted after the owner's file is linked, never before: a waiter links a record
//! written long before, and a token chosen then could be smaller than one a holder in between
//! chose. Minting holds the generation file's own OS lock and checks, under it, that the lock
//! path still names the minter's file; so mints are one at a time, each by the owner of that
//! moment, in the order of ownership.
//!
//! Readers find the token by the hold it was minted for: the record carries a `holdId` unique to
//! each taking, and the generation file names the hold its token went to. A reader shows a token
//! only when both name the same hold; until the new owner has minted, it shows none.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::guard::GUARD_PATIENCE;
use crate::os;
use crate::os::{Entry, FileId};
use crate::protocol::{dir_of, LockTarget};
use crate::record::Record;
use crate::temp::checked_dir;

/// The generation file's content: `<token, 20 digits> <hold, 16 hex> <check, 16 hex>\n`. Always
/// this length, so each write replaces the whole content in place.
const LEN: usize = 20 + 1 + 16 + 1 + 16 + 1;

/// The generation file of the lock file at `lock_path`: hidden, so listings, `clear` and the
/// orphan sweep never take it for a lock or a temp file.
pub(crate) fn generation_path(lock_path: &Path) -> PathBuf {
    let name = lock_path.file_name().unwrap_or_default().to_string_lossy();
    dir_of(lock_path).join(format!(".{name}.fencing"))
}

/// Whether a directory entry is a lock's generation file (tests that look at what a lock
/// directory holds leave these out, as they leave out the removal guard).
#[cfg(test)]
pub(crate) fn is_generation_file(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".lock.fencing"))
}

/// An id for one taking of a lock, unique in practice: 64 bits from the process's random hash
/// keys, its PID, a counter and the time.
pub(crate) fn new_hold_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(os::current_pid());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(now_micros().into());
    format!("{:016x}", h.finish())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// FNV-1a over the token and the hold: a torn or scribbled file is not read as a token.
fn check(token: u64, hold: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.to_le_bytes().iter().chain(hold.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode(token: u64, hold: &str) -> Vec<u8> {
    format!("{token:020} {hold:0>16} {:016x}\n", check(token, hold)).into_bytes()
}

/// (token, hold) from a generation file's bytes; `None` for anything else.
fn decode(bytes: &[u8]) -> Option<(u64, String)> {
    if bytes.len() != LEN || bytes[LEN - 1] != b'\n' {
        return None;
    }
    let text = std::str::from_utf8(&bytes[..LEN - 1]).ok()?;
    let mut parts = text.split(' ');
    let (token, hold, sum) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || token.len() != 20 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let token: u64 = token.parse().ok()?;
    let sum = u64::from_str_radix(sum, 16).ok()?;
    (hold.len() == 16 && sum == check(token, hold)).then(|| (token, hold.to_string()))
}

/// One positioned read: the content is written in one `pwrite` of its whole length.
fn read(file: &File) -> io::Result<Option<(u64, String)>> {
    let mut buf = [0u8; LEN + 1];
    let n = os::read_at(file, &mut buf, 0)?;
    Ok(decode(&buf[..n]))
}

/// Mints the token of the hold `record.hold_id` of `target`, whose lock we hold on the file
/// `lock_file`. `None`: no token can be promised (no hold id, the generation file cannot be
/// written or its lock had, or the lock path no longer names our file): the lock is held all
/// the same.
pub(crate) fn mint(target: &LockTarget, lock_file: FileId, record: &Record) -> Option<u64> {
    let hold = record.hold_id.as_deref().filter(|h| h.len() == 16)?;
    // Read before the check that we own the lock: a later owner whose generation file is gone
    // reads the clock after that check, so only a clock stepped back can make its token smaller.
    let now = now_micros();
    let path = generation_path(&target.path);
    let file = open_generation(&path, &target.dir).ok()?;
    if !lock_within(&file, GUARD_PATIENCE) {
        return None;
    }
    if os::entry(&target.path).ok()? != Entry::File(lock_file) {
        return None;
    }
    let stored = read(&file).ok()?.map_or(0, |(t, _)| t);
    let token = stored.checked_add(1)?.max(now);
    let bytes = encode(token, hold);
    match os::write_at(&file, &bytes, 0) {
        Ok(n) if n == bytes.len() => Some(token),
        // Whatever is there now fails its check: the next owner goes by the clock.
        _ => None,
    }
    // Closing the file lets its lock go.
}

/// The token of the hold `record` (read from the lock file at `lock_path`) names, if the lock's
/// generation file says it went to that hold.
pub fn token_of(lock_path: &Path, record: &Record) -> Option<u64> {
    let hold = record.hold_id.as_deref()?;
    let file = os::open_for_probe(&generation_path(lock_path)).ok()?;
    if !os::is_regular(&file).ok()? {
        return None;
    }
    match read(&file).ok()?? {
        (token, h) if h == hold => Some(token),
        _ => None,
    }
}

/// Opens the generation file for writing, making it (with the mode of the directory's lock
/// files) if it is not there.
fn open_generation(path: &Path, dir: &Path) -> io::Result<File> {
    let file = match os::open_existing(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let facts = checked_dir(dir).map_err(|e| io::Error::other(e.to_string()))?;
            match os::create_new(path, facts.file_mode()) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => os::open_existing(path)?,
                other => other?,
            }
        }
        other => other?,
    };
    if !os::is_regular(&file)? {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Takes the file's exclusive lock, waiting up to `patience` for another minter (which holds it
/// for a few system calls).
fn lock_within(file: &File, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_micros(20);
    loop {
        match os::try_lock(file, true) {
            Ok(true) => return true,
            Ok(false) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_round_trips_and_anything_else_is_no_token() {
        let bytes = encode(1_765_000_000_123_456, "00ab00cd00ef0012");
        assert_eq!(bytes.len(), LEN);
        assert_eq!(
            decode(&bytes),
            Some((1_765_000_000_123_456, "00ab00cd00ef0012".to_string()))
        );
        assert_eq!(
            decode(&encode(u64::MAX, "ffffffffffffffff")).unwrap().0,
            u64::MAX
        );
        for i in 0..LEN {
            let mut torn = bytes.clone();
            torn[i] = if torn[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(decode(&torn), None, "byte {i}");
            assert_eq!(decode(&bytes[..i]), None);
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0; LEN]), None);
    }

    /// A stored token ahead of the clock (a clock stepped back) is followed, not the clock; a
    /// hold whose file was removed mints nothing, and its record no longer finds a token.
    #[cfg(unix)]
    #[test]
    fn the_stored_token_leads_a_clock_behind_and_a_lost_hold_mints_nothing() {
        use crate::protocol::{acquire, force_remove};
        let t = crate::test_support::target("fencing-mint");
        std::fs::create_dir_all(&t.dir).unwrap();
        let ahead = now_micros() + 3_600_000_000;
        std::fs::write(generation_path(&t.path), encode(ahead, "0000000000000001")).unwrap();
        let a = acquire(&t, None).unwrap().lock;
        assert_eq!(a.fencing_token(), Some((ahead + 1).to_string().as_str()));
        assert_eq!(token_of(&t.path, a.record()), Some(ahead + 1));

        let id = os::file_id(a.file()).unwrap();
        assert!(force_remove(&t.path).unwrap());
        assert_eq!(mint(&t, id, a.record()), None);
        let b = acquire(&t, None).unwrap().lock;
        assert_eq!(b.fencing_token(), Some((ahead + 2).to_string().as_str()));
        assert_eq!(token_of(&t.path, a.record()), None);
        assert_eq!(token_of(&t.path, b.record()), Some(ahead + 2));

        assert!(!a.release().unwrap());
        assert!(b.release().unwrap());
        crate::guard::remove_test_dir(&t.dir).unwrap();
    }

    #[test]
    fn hold_ids_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_hold_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 16));
    }
}
