//! Output whose reader is gone: `processlock clear | head -0`, `processlock check --format json
//! | true`. The command finishes its work without a word and ends with the status it would have
//! had; output that cannot be written for another reason (a full disk) is said, and a listing
//! then fails, so that `check > file.tmp && mv file.tmp file` keeps the last whole file.
#![cfg(target_os = "linux")]

use std::fs::{self, File};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use processlock::testing::acquire;
use processlock::{record_for, LockName, LockTarget};

const BIN: &str = env!("CARGO_BIN_EXE_processlock");

/// A pipe whose reading end is already closed: every write to it fails with EPIPE, at once and
/// whatever the timing.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made by pipe2 and belong to nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

fn processlock(dir: &Path, args: &[&str], stdout: Stdio, stderr: Stdio) -> Output {
    Command::new(BIN)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("PROCESSLOCK_URL")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .output()
        .unwrap()
}

fn lock_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    dir
}

fn target(dir: &Path, process_type: &str) -> LockTarget {
    LockTarget::new(dir, LockName::new(process_type, Some("SHORT")).unwrap())
}

/// A lock file of a process that has ended.
fn stale(dir: &Path, process_type: &str) -> LockTarget {
    let t = target(dir, process_type);
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    fs::write(&t.path, record_for(&t, dead, None).to_json()).unwrap();
    t
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_reader_that_left_changes_nothing_but_the_words() {
    let dir = lock_dir();
    let gone = stale(dir.path(), "backend");
    for (args, status) in [
        (&["check"][..], 0),
        (&["check", "--format", "json"][..], 0),
        (&["check", "--format", "prometheus"][..], 0),
        // A stale lock is not held: the verdict stands.
        (&["check", "backend", "--side", "SHORT"][..], 1),
        (&["--help"][..], 0),
    ] {
        let out = processlock(dir.path(), args, closed_pipe().into(), Stdio::piped());
        assert_eq!(
            out.status.code(),
            Some(status),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert_eq!(stderr_of(&out), "", "{args:?}");
    }
    // `clear` clears, whoever reads what it says.
    let out = processlock(dir.path(), &["clear"], closed_pipe().into(), Stdio::piped());
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "");
    assert!(!gone.path.exists(), "the stale lock file was not removed");
}

#[test]
fn a_forced_clear_whose_readers_both_left_still_clears() {
    let dir = lock_dir();
    let held = target(dir.path(), "worker");
    let _lock = acquire(&held, Some("api")).unwrap();
    let gone = stale(dir.path(), "backend");
    // The warnings of a forced clear go to stderr, whose reader is gone too.
    let out = processlock(
        dir.path(),
        &["clear", "--force"],
        closed_pipe().into(),
        closed_pipe().into(),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!held.path.exists() && !gone.path.exists());
}

#[test]
fn output_that_cannot_be_written_is_said_and_fails_a_listing() {
    let dir = lock_dir();
    stale(dir.path(), "backend");
    let full = || Stdio::from(File::create("/dev/full").unwrap());
    for args in [
        &["check"][..],
        &["check", "--format", "prometheus"][..],
        &["clear"][..],
    ] {
        stale(dir.path(), "backend");
        let out = processlock(dir.path(), args, full(), Stdio::piped());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let said = stderr_of(&out);
        assert_eq!(
            said.matches("processlock: cannot write the output: No space left on device")
                .count(),
            1,
            "{args:?}: {said}"
        );
    }
    // A verdict is the exit status, not the text: it stands.
    let out = processlock(
        dir.path(),
        &["check", "backend", "--side", "SHORT"],
        full(),
        Stdio::piped(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
}

#[test]
fn run_whose_stderr_reader_left_still_runs_the_command_to_its_end() {
    let dir = lock_dir();
    let out = processlock(
        dir.path(),
        &[
            "run",
            "worker",
            "--side",
            "SHORT",
            "--",
            "sh",
            "-c",
            "echo RAN; exit 7",
        ],
        Stdio::piped(),
        closed_pipe().into(),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "RAN\n");
    assert_eq!(out.status.code(), Some(7));
    assert!(!target(dir.path(), "worker").path.exists());
}
