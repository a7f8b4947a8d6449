//! Bad state at the lock path or the lock directory: never followed, never blocking, never
//! touching anything outside the lock directory; unreadable files nobody holds are taken over.

mod support;

#[cfg(unix)]
use std::ffi::CString;
use std::fs;
#[cfg(unix)]
use std::os::unix::ffi::OsStrExt;
#[cfg(unix)]
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
#[cfg(unix)]
use std::sync::mpsc;
#[cfg(unix)]
use std::time::Duration;

use processlock::testing::acquire;
use processlock::{force_remove, inspect, Error, Inspection};
#[cfg(unix)]
use processlock::{list_locks, LockState};
use support::{Outcome, Proc, TestDir};

#[test]
fn child_role() {
    support::child_role();
}

/// What must not change about a path we do not own: its type, content, modification time and
/// (on Unix) its inode and change time.
fn fingerprint(p: &Path) -> (bool, Option<Vec<u8>>, std::time::SystemTime, (i64, u64)) {
    let m = fs::symlink_metadata(p).unwrap();
    let content = m.is_file().then(|| fs::read(p).unwrap());
    #[cfg(unix)]
    let inode = (m.ctime(), m.ino());
    #[cfg(not(unix))]
    let inode = (0, 0);
    (m.is_dir(), content, m.modified().unwrap(), inode)
}

fn expect_not_a_file(r: processlock::Result<processlock::Acquired>, found: &str) {
    match r {
        Err(e @ Error::NotAFile { .. }) => {
            assert_eq!(e.code(), "LOCK_NOT_A_FILE");
            let Error::NotAFile { found: f, .. } = e else {
                unreachable!()
            };
            assert_eq!(f, found);
        }
        other => panic!("expected NotAFile ({found}), got {other:?}"),
    }
}

/// A symlink at the lock path to a file outside the lock directory: refused, the link and its
/// target untouched, by acquire, inspect and a child process alike. Unix only, as the next test:
/// creating a symbolic link on Windows takes a privilege a test cannot count on.
#[cfg(unix)]
#[test]
fn a_symlink_at_the_lock_path_is_refused_and_never_followed() {
    let dir = TestDir::new("symlink");
    let t = dir.made_target("backend", Some("short"));
    let outside = dir.root.join("precious.txt");
    fs::write(&outside, "do not touch\n").unwrap();
    std::os::unix::fs::symlink(&outside, &t.path).unwrap();
    let before = fingerprint(&outside);

    expect_not_a_file(acquire(&t, None), "symbolic link");
    let mut child = Proc::acquirer(&t, "release");
    match child.outcome() {
        Outcome::Error { code, .. } => assert_eq!(code, "LOCK_NOT_A_FILE"),
        other => panic!("expected LOCK_NOT_A_FILE, got {other:?}"),
    }
    child.wait_success();
    assert!(matches!(inspect(&t.path), Err(Error::NotAFile { .. })));
    let listed = list_locks(&t.dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, LockState::Invalid);
    assert!(listed[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("symbolic link"));

    assert_eq!(fs::read_link(&t.path).unwrap(), outside);
    assert_eq!(fingerprint(&outside), before);

    // A forced removal removes the link itself, never its target.
    assert!(force_remove(&t.path).unwrap());
    assert!(fs::symlink_metadata(&t.path).is_err());
    assert_eq!(fingerprint(&outside), before);
    dir.finish();
}

/// A dangling symlink must not make us create its target.
#[cfg(unix)]
#[test]
fn a_dangling_symlink_is_refused_and_its_target_not_created() {
    let dir = TestDir::new("dangling");
    let t = dir.made_target("backend", None);
    let outside = dir.root.join("would-be-created");
    std::os::unix::fs::symlink(&outside, &t.path).unwrap();
    expect_not_a_file(acquire(&t, None), "symbolic link");
    assert!(!outside.exists());
    assert!(fs::symlink_metadata(&t.path)
        .unwrap()
        .file_type()
        .is_symlink());
    // And a symlink to a directory outside.
    fs::remove_file(&t.path).unwrap();
    let outside_dir = dir.root.join("outside-dir");
    fs::create_dir(&outside_dir).unwrap();
    std::os::unix::fs::symlink(&outside_dir, &t.path).unwrap();
    expect_not_a_file(acquire(&t, None), "symbolic link");
    assert_eq!(fs::read_dir(&outside_dir).unwrap().count(), 0);
    fs::remove_file(&t.path).unwrap();
    dir.finish();
}

#[test]
fn a_directory_at_the_lock_path_is_refused_and_left_alone() {
    let dir = TestDir::new("directory");
    let t = dir.target("worker", Some("long"));
    fs::create_dir_all(t.path.join("inside")).unwrap();
    fs::write(t.path.join("inside/file"), "x").unwrap();
    let before = fingerprint(&t.path);

    expect_not_a_file(acquire(&t, None), "directory");
    assert!(matches!(
        force_remove(&t.path),
        Err(Error::NotAFile {
            found: "directory",
            ..
        })
    ));
    assert!(matches!(inspect(&t.path), Err(Error::NotAFile { .. })));
    assert_eq!(fingerprint(&t.path), before);
    assert_eq!(fs::read(t.path.join("inside/file")).unwrap(), b"x");
    dir.finish();
}

/// A FIFO at the lock path: opening one for reading blocks until a writer comes, unless done
/// without blocking. Refused at once, left in place.
#[cfg(unix)]
#[test]
fn a_fifo_at_the_lock_path_is_refused_without_blocking() {
    let dir = TestDir::new("fifo");
    let t = dir.made_target("backend", Some("short"));
    let c = CString::new(t.path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call, which only reads it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let (tx, rx) = mpsc::channel();
    let target = t.clone();
    std::thread::spawn(move || {
        let a = acquire(&target, None).map(|_| ());
        let i = inspect(&target.path).map(|_| ());
        let l = list_locks(&target.dir).map(|v| (v.len(), v[0].state));
        let _ = tx.send((a, i, l));
    });
    let (a, i, l) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("acquire/inspect/list_locks blocked on a FIFO");
    assert!(
        matches!(
            a,
            Err(Error::NotAFile {
                found: "special file",
                ..
            })
        ),
        "{a:?}"
    );
    assert!(matches!(i, Err(Error::NotAFile { .. })), "{i:?}");
    assert_eq!(l.unwrap(), (1, LockState::Invalid));
    // Also from another process.
    let mut child = Proc::acquirer(&t, "release");
    assert!(matches!(child.outcome(), Outcome::Error { code, .. } if code == "LOCK_NOT_A_FILE"));
    child.wait_success();
    assert!(fs::symlink_metadata(&t.path).unwrap().file_type().is_fifo());
    assert!(matches!(force_remove(&t.path), Err(Error::NotAFile { .. })));
    assert!(t.path.exists());
    dir.finish();
}

/// Files nobody holds and nobody can be named in are taken over, with `InvalidRemoved`.
#[test]
fn unreadable_files_without_a_holder_are_taken_over() {
    let dir = TestDir::new("invalid");
    let t = dir.made_target("backend", Some("short"));
    let huge = vec![b'7'; 300_000];
    let cases: &[(&str, &[u8])] = &[
        ("huge", &huge),
        ("empty", b""),
        ("blank", b"  \n\n"),
        ("garbage", b"\x00\xff\xfe garbage \x07"),
        ("text", b"hello world\n"),
        ("truncated JSON", b"{\n  \"pid\": 4242,\n  \"start"),
        (
            "JSON without pid",
            b"{\"started\": \"2025-10-18T22:38:49.123Z\"}",
        ),
        ("PID 0", b"0\n"),
        ("JSON array", b"[1, 2, 3]"),
    ];
    for (what, bytes) in cases {
        fs::write(&t.path, bytes).unwrap();
        assert!(
            matches!(inspect(&t.path).unwrap(), Inspection::Invalid(_)),
            "{what}"
        );
        let mut p = Proc::acquirer(&t, "release");
        match p.outcome() {
            Outcome::Acquired { pid, events, .. } => {
                assert_eq!(pid, p.pid);
                assert_eq!(events, ["invalid"], "{what}");
            }
            other => panic!("{what}: expected a takeover, got {other:?}"),
        }
        assert_eq!(p.expect("RELEASED"), ["true"]);
        p.wait_success();
        assert!(!t.path.exists(), "{what}");
    }
    // In-process, the event carries the reason.
    fs::write(&t.path, b"{\"pid\": 12").unwrap();
    let a = acquire(&t, None).unwrap();
    match a.events.as_slice() {
        [processlock::Event::InvalidRemoved { reason }] => {
            assert!(reason.contains("not a lock record"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(a.lock.release().unwrap());
    dir.finish();
}

/// An empty file whose flock a live process holds is someone starting (or a writer of the
/// cheaper protocol variant): never removed, reported as a conflict with an unknown holder.
#[cfg(unix)]
#[test]
fn an_unreadable_file_that_is_held_is_not_taken_over() {
    let dir = TestDir::new("invalid-held");
    let t = dir.made_target("backend", None);
    let f = fs::File::create(&t.path).unwrap();
    f.try_lock().unwrap();
    let mut p = Proc::acquirer(&t, "release");
    assert_eq!(p.outcome(), Outcome::Conflict { holder: 0 });
    p.wait_success();
    assert!(t.path.exists());
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.pid == 0));
    drop(f);
    let a = acquire(&t, None).unwrap();
    assert!(matches!(
        a.events.as_slice(),
        [processlock::Event::InvalidRemoved { .. }]
    ));
    assert!(a.lock.release().unwrap());
    dir.finish();
}

/// A second name (hard link) of a file outside the lock directory, with garbage in it: only the
/// name inside the lock directory is removed; the outside file keeps its content.
#[cfg(unix)]
#[test]
fn a_hard_link_to_an_outside_file_only_loses_its_inside_name() {
    let dir = TestDir::new("hardlink");
    let t = dir.made_target("backend", None);
    let outside = dir.root.join("data.bin");
    fs::write(&outside, b"some unrelated data").unwrap();
    fs::hard_link(&outside, &t.path).unwrap();
    let a = acquire(&t, None).unwrap();
    assert!(matches!(
        a.events.as_slice(),
        [processlock::Event::InvalidRemoved { .. }]
    ));
    assert_eq!(fs::read(&outside).unwrap(), b"some unrelated data");
    assert_eq!(fs::metadata(&outside).unwrap().nlink(), 1);
    assert!(a.lock.release().unwrap());
    dir.finish();
}

#[test]
fn the_lock_dir_being_a_regular_file_is_an_io_error() {
    let dir = TestDir::new("dir-is-file");
    let t = dir.target("backend", Some("short"));
    fs::write(&t.dir, "I am a file").unwrap();
    let before = fingerprint(&t.dir);
    match acquire(&t, None) {
        Err(e @ Error::Io { .. }) => {
            assert_eq!(e.code(), "LOCK_IO");
            assert_eq!(e.os_error().map(|(_, name)| name), Some("ENOTDIR"));
            assert_eq!(e.path(), Some(t.dir.as_path()));
        }
        other => panic!("expected LOCK_IO, got {other:?}"),
    }
    let mut p = Proc::acquirer(&t, "release");
    assert!(matches!(p.outcome(), Outcome::Error { code, .. } if code == "LOCK_IO"));
    p.wait_success();
    assert_eq!(fingerprint(&t.dir), before);
    dir.finish();
}

#[test]
fn a_missing_lock_dir_is_created() {
    let dir = TestDir::new("dir-missing");
    let deep = dir.root.join("a/b/c");
    let t =
        processlock::LockTarget::new(&deep, processlock::LockName::new("worker", None).unwrap());
    assert!(!dir.root.join("a").exists());
    let mut p = Proc::acquirer(&t, "wait");
    assert!(matches!(p.outcome(), Outcome::Acquired { .. }));
    assert!(deep.is_dir());
    assert!(t.path.is_file());
    assert!(p.release_and_end());
    dir.finish();
}
