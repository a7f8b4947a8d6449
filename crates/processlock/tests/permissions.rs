//! Who may touch lock files: what we create is closed to other users whatever the umask, and a
//! lock directory where other users could delete a holder's file is refused before anything in
//! it is touched.
#![cfg(unix)]

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use processlock::testing::acquire;
use processlock::{DirProblem, Error, LockName, LockTarget};
use support::{Outcome, Proc, TestDir};

#[test]
fn child_role() {
    support::child_role();
}

const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Every entry of `dir` with its mode, owner, size, modification time and content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u32, u64, i64, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = fs::read(&p).unwrap();
            (p, m.mode(), m.uid(), m.len(), m.mtime_nsec(), content)
        })
        .collect();
    out.sort();
    out
}

/// A directory holding what an acquirer would normally clean up: a legacy-format record of a dead
/// process (taken over as stale) and a temp file of an acquirer that died half-way (swept).
fn dir_with_leftovers(root: &Path, label: &str) -> LockTarget {
    let dir = root.join(label);
    fs::create_dir(&dir).unwrap();
    let t = LockTarget::new(&dir, LockName::new("backend", Some("short")).unwrap());
    let dead = dead_pid();
    fs::write(
        &t.path,
        format!("{{\"pid\": {dead}, \"started\": \"2025-10-18T22:38:49.123Z\", \"tradeSide\": \"SHORT\", \"processName\": \"trader-short-backend\"}}"),
    )
    .unwrap();
    fs::write(dir.join(format!(".backend.short.lock.{dead}.0.tmp")), "{}").unwrap();
    t
}

#[test]
fn created_directories_and_files_are_closed_to_others_under_umask_000() {
    let dir = TestDir::new("umask");
    // Two levels that do not exist yet: the parents are created with the same mode.
    let t = LockTarget::new(
        dir.root.join("runtime").join("locks"),
        LockName::new("backend", Some("short")).unwrap(),
    );
    let mut p = Proc::acquirer_with(&t, "wait", &[("UMASK", "000")]);
    assert!(
        matches!(p.outcome(), Outcome::Acquired { pid, .. } if pid == p.pid),
        "acquire under umask 000"
    );
    assert_eq!(mode(&dir.root.join("runtime")), 0o750);
    assert_eq!(mode(&t.dir), 0o750);
    // The group may not write the directory: it has no business opening its files either.
    assert_eq!(mode(&t.path), 0o600);
    assert!(p.release_and_end());
    dir.finish();
}

/// A directory its group shares (`chmod 2770`): its files are the group's to read and lock, the
/// removal guard included.
#[test]
fn in_a_directory_the_group_shares_files_are_readable_by_the_group() {
    let dir = TestDir::new("group");
    let t = LockTarget::new(
        dir.root.join("shared"),
        LockName::new("backend", Some("short")).unwrap(),
    );
    fs::create_dir(&t.dir).unwrap();
    set_mode(&t.dir, 0o2770);
    let a = acquire(&t, None).unwrap();
    assert_eq!(mode(&t.path), 0o640);
    assert_eq!(mode(&t.dir.join(".processlock.guard")), 0o640);
    assert!(a.lock.release().unwrap());
    dir.finish();
}

#[test]
fn a_world_writable_directory_without_sticky_bit_is_refused_and_left_as_it_was() {
    let dir = TestDir::new("loose");
    let t = dir_with_leftovers(&dir.root, "loose");
    set_mode(&t.dir, 0o777);
    let before = snapshot(&t.dir);

    let e = acquire(&t, None).unwrap_err();
    assert_eq!(e.code(), "LOCK_UNSAFE_DIR");
    assert!(matches!(
        e,
        Error::UnsafeDir { ref path, why: DirProblem::WritableByOthers { .. } } if path == &t.dir
    ));
    let message = e.to_string();
    assert!(message.contains(&t.dir.display().to_string()), "{message}");
    assert!(message.contains("(0777)"), "{message}");
    assert!(message.contains("chmod o-w"), "{message}");
    assert_eq!(
        snapshot(&t.dir),
        before,
        "the refused directory was changed"
    );
    assert_eq!(mode(&t.dir), 0o777);

    // A refusal is not remembered: once fixed, the same process takes the lock (and cleans up).
    set_mode(&t.dir, 0o755);
    let a = acquire(&t, None).unwrap();
    assert!(a.lock.release().unwrap());
    assert!(support::lock_dir_names(&t.dir).is_empty());
    dir.finish();
}

/// A sticky shared directory (`/tmp`, `/run/lock`) lets every user create files, so anyone could
/// plant one at a lock's path or at its removal guard: refused, and nothing is touched. A
/// directory of our own inside it is fine: others may not rename or delete it there.
#[test]
fn a_sticky_shared_directory_like_tmp_is_refused_but_a_directory_of_our_own_in_it_is_not() {
    let dir = TestDir::new("sticky");
    let t = dir_with_leftovers(&dir.root, "shared");
    set_mode(&t.dir, 0o1777);
    let before = snapshot(&t.dir);
    let e = acquire(&t, None).unwrap_err();
    assert!(matches!(
        e,
        Error::UnsafeDir { why: DirProblem::WritableByOthers { mode }, .. } if mode & 0o7777 == 0o1777
    ));
    let message = e.to_string();
    assert!(message.contains("shared by every user (1777"), "{message}");
    assert!(message.contains("mkdir -m 0750"), "{message}");
    assert_eq!(snapshot(&t.dir), before);

    let own = LockTarget::new(t.dir.join("backend"), t.name.clone());
    let a = acquire(&own, None).unwrap();
    assert_eq!(mode(&own.dir), 0o750);
    assert_eq!(mode(&own.path), 0o600);
    assert!(a.lock.release().unwrap());
    // The refused directory's leftovers stay where they were.
    for name in support::lock_dir_names(&t.dir) {
        if name.ends_with(".tmp") {
            fs::remove_file(t.dir.join(name)).unwrap();
        }
    }
    dir.finish();
}

/// A directory owned by another user lets that user remove our files: refused, for root too.
/// Its owner uses it. Needs root.
#[test]
fn a_directory_owned_by_another_user_is_refused_even_for_root() {
    if !support::root_or_skip("give a directory to another user") {
        return;
    }
    let dir = TestDir::new("owner");
    // The test root is private to root: let the other user reach the directory inside it.
    set_mode(&dir.root, 0o755);
    let t = dir_with_leftovers(&dir.root, "theirs");
    set_mode(&t.dir, 0o755);
    for entry in fs::read_dir(&t.dir).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::os::unix::fs::chown(&t.dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let before = snapshot(&t.dir);

    let e = acquire(&t, None).unwrap_err();
    assert_eq!(e.code(), "LOCK_UNSAFE_DIR");
    assert!(matches!(
        e,
        Error::UnsafeDir {
            why: DirProblem::OwnedByOther {
                owner: NOBODY,
                me: 0
            },
            ..
        }
    ));
    let message = e.to_string();
    assert!(message.contains("owned by uid 65534"), "{message}");
    assert!(message.contains("chown"), "{message}");
    assert_eq!(
        snapshot(&t.dir),
        before,
        "the refused directory was changed"
    );

    // Its owner takes the lock there (and takes the dead holder's file over).
    let mut p = Proc::acquirer_with(&t, "wait", &support::AS_NOBODY);
    let got = p.outcome();
    assert!(
        matches!(&got, Outcome::Acquired { pid, events, .. } if *pid == p.pid && events.iter().any(|e| e.starts_with("stale:"))),
        "{got:?}"
    );
    let m = fs::metadata(&t.path).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (NOBODY, 0o600));
    assert!(p.release_and_end());
    dir.finish();
}
