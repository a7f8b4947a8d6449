//! Removers racing each other: release, the takeover of a dead holder's file and forced removal
//! check what the lock path names, then unlink it by name. These tests slow that unlink down at
//! the system call (an `LD_PRELOAD` library built here) so that another remover and a new
//! acquirer land exactly between the check and the unlink, every time.
//!
//! What must hold: a release or a takeover never deletes another holder's file, and no holder
//! finds its file gone unless a forced removal took it.
//!
//! Unix only: the slowing down is an `LD_PRELOAD` library.
#![cfg(unix)]

mod support;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use processlock::testing::{acquire, acquire_wait};
use processlock::{force_remove, Cancel, Error, LockName, LockTarget};
use support::{Outcome, Proc, TestDir, ROLE_ENV};

/// The lock file name every test here uses (`backend` without a side).
const LOCK_FILE: &str = "backend.lock";
/// How long a slowed unlink of the lock file sleeps before it runs.
const SLOW_MS: &str = "400";

#[test]
fn child_role() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("own-force") => std::process::exit(role_own_force()),
        Ok("wait-loop") => std::process::exit(role_wait_loop()),
        _ => support::child_role(),
    }
}

// ---------------------------------------------------------------------------------------------
// The slowed unlink.

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Slows down unlink(2) of paths that end with $SLOW_UNLINK_SUFFIX by $SLOW_UNLINK_MS ms, for
   the first $SLOW_UNLINK_TIMES such calls (all of them if unset), and says "@@SLOW" on stdout
   just before it sleeps. */
static int slowed;

static int wants(const char *path) {
    const char *suffix = getenv("SLOW_UNLINK_SUFFIX");
    const char *times = getenv("SLOW_UNLINK_TIMES");
    if (!suffix || !path) return 0;
    size_t n = strlen(path), m = strlen(suffix);
    if (n < m || strcmp(path + n - m, suffix) != 0) return 0;
    return !times || slowed < atoi(times);
}

static void slow_down(void) {
    const char *ms = getenv("SLOW_UNLINK_MS");
    long v = ms ? atol(ms) : 200;
    slowed++;
    static const char mark[] = "\n@@SLOW\n";
    ssize_t w = write(1, mark, sizeof mark - 1);
    (void)w;
    struct timespec ts = { v / 1000, (v % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
}

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    if (wants(path)) slow_down();
    return real(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
    static int (*real)(int, const char *, int);
    if (!real) real = (int (*)(int, const char *, int))dlsym(RTLD_NEXT, "unlinkat");
    if (wants(path)) slow_down();
    return real(dirfd, path, flags);
}
"#;

/// Builds the shim once per test binary; `None` (and the test is skipped, loudly) where there
/// is no C compiler.
fn shim() -> Option<&'static Path> {
    static SHIM: OnceLock<Option<PathBuf>> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("processlock-slow-unlink-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("slow_unlink.c");
        let lib = dir.join("slow_unlink.so");
        fs::write(&src, SHIM_C).unwrap();
        let built = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .status();
        match built {
            Ok(st) if st.success() => Some(lib),
            other => {
                eprintln!("SKIPPED: cannot build the slow-unlink library with cc: {other:?}");
                None
            }
        }
    })
    .as_deref()
}

/// The environment that makes a child's first `times` unlinks of the lock file slow.
fn slowed(lib: &Path, times: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", lib.display().to_string()),
        ("SLOW_UNLINK_SUFFIX", format!("/{LOCK_FILE}")),
        ("SLOW_UNLINK_MS", SLOW_MS.to_string()),
        ("SLOW_UNLINK_TIMES", times.to_string()),
    ]
}

fn spawn_slowed(
    role: &str,
    t: &LockTarget,
    extra: &[(&str, &str)],
    env: &[(&str, String)],
) -> Proc {
    let mut params = support::lock_params(t);
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::spawn_env(role, &params, &env)
}

fn target(dir: &TestDir) -> LockTarget {
    dir.target("backend", None)
}

fn record_pid_at(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    match processlock::parse_record(text.as_bytes()) {
        processlock::Parsed::Ours(r) => Some(r.pid),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Release, takeover and forced removal, each slowed between its check and its unlink.

/// A holder releases; while its unlink is on the way, the file is removed by force and a new
/// holder takes the lock. The release must not delete the new holder's file.
#[test]
fn a_release_never_deletes_the_file_of_a_holder_that_came_after_a_forced_removal() {
    let Some(lib) = shim() else { return };
    let dir = TestDir::new("slow-release");
    let t = target(&dir);
    let mut a = spawn_slowed("acquire", &t, &[("AFTER", "wait")], &slowed(lib, "1"));
    assert!(matches!(a.outcome(), Outcome::Acquired { .. }));
    a.close_stdin(); // release now
    a.expect("SLOW"); // it checked that the file is its own, and its unlink sleeps

    // An operator's forced removal, then a new acquirer, while the release is in its unlink.
    let forced = force_remove(&t.path).unwrap();
    let c = acquire(&t, None).expect("the lock is free after the holder's release");
    assert_eq!(
        a.expect("RELEASED"),
        ["true"],
        "the holder removed its own file"
    );
    a.wait_success();
    assert!(
        c.lock.still_linked(),
        "the new holder's file was deleted by an earlier holder's release"
    );
    assert_eq!(record_pid_at(&t.path), Some(std::process::id()));
    // The forced removal waited for the release and found nothing left to remove.
    assert!(
        !forced,
        "the forced removal ran inside the release's check-and-unlink"
    );
    assert!(c.lock.release().unwrap());
    dir.finish();
}

/// An acquirer takes over a dead holder's file; while its unlink of that file is on the way,
/// the file is removed by force and a new acquirer comes. Whoever ends up holding the lock has
/// its file at the path, and the takeover deletes nobody's file but the dead holder's.
#[test]
fn a_stale_takeover_never_deletes_the_file_of_a_holder_that_came_after_a_forced_removal() {
    let Some(lib) = shim() else { return };
    let dir = TestDir::new("slow-takeover");
    let t = target(&dir);
    let mut dead = Proc::acquirer(&t, "wait");
    let Outcome::Acquired { pid: dead_pid, .. } = dead.outcome() else {
        panic!("the first holder did not acquire");
    };
    dead.kill_with(libc::SIGKILL);

    let mut taker = spawn_slowed("acquire", &t, &[("AFTER", "wait")], &slowed(lib, "1"));
    taker.expect("SLOW"); // it holds the dead holder's file and is unlinking it

    let forced = force_remove(&t.path).unwrap();
    let newcomer = acquire(&t, None);
    let taken = taker.outcome();
    match (&taken, &newcomer) {
        (Outcome::Acquired { events, .. }, Ok(_)) => {
            assert!(events.contains(&format!("stale:{dead_pid}")), "{events:?}");
            // Both acquired: only possible if the forced removal took the taker's new file.
            assert!(
                forced,
                "two acquisitions without a forced removal in between"
            );
        }
        (Outcome::Acquired { .. }, Err(Error::Conflict(c))) => assert_eq!(c.holder.pid, taker.pid),
        (Outcome::Conflict { holder }, Ok(_)) => assert_eq!(*holder, std::process::id()),
        other => panic!("unexpected outcome {other:?}"),
    }
    if let Ok(c) = &newcomer {
        assert!(
            c.lock.still_linked(),
            "the newcomer's file was deleted by the takeover of a dead holder's file"
        );
        assert_eq!(record_pid_at(&t.path), Some(std::process::id()));
    }
    taker.close_stdin();
    if matches!(taken, Outcome::Acquired { .. }) {
        // The taker's release removes its own file only.
        let released = taker.expect("RELEASED");
        assert_eq!(released, [if newcomer.is_ok() { "false" } else { "true" }]);
    }
    taker.wait_success();
    if let Ok(c) = newcomer {
        assert!(c.lock.still_linked(), "deleted by the taker's release");
        assert!(c.lock.release().unwrap());
    }
    dir.finish();
}

/// A forced removal looks at the file of a holder, and while its unlink is on the way the
/// holder releases and a new holder takes the lock: the forced removal removes what it looked
/// at (already gone), never the new holder's file.
#[test]
fn a_forced_removal_removes_the_file_it_looked_at_and_no_other() {
    let Some(lib) = shim() else { return };
    let dir = TestDir::new("slow-force");
    let t = target(&dir);
    let mut holder = Proc::acquirer(&t, "wait");
    assert!(matches!(holder.outcome(), Outcome::Acquired { .. }));

    let mut forcer = spawn_slowed("own-force", &t, &[("MODE", "other")], &slowed(lib, "1"));
    forcer.expect("SLOW"); // it saw the holder's file and is unlinking it

    holder.close_stdin(); // release while the forced removal is under way
    let released = holder.expect("RELEASED");
    holder.wait_success();
    let newcomer = acquire(&t, None).expect("free once the holder is gone");
    assert_eq!(forcer.expect("FORCED"), ["true"]);
    forcer.wait_success();
    // The forced removal took the holder's file; its release found nothing of its own.
    assert_eq!(released, ["false"]);
    assert!(
        newcomer.lock.still_linked(),
        "a forced removal deleted a file it never looked at"
    );
    assert!(newcomer.lock.release().unwrap());
    dir.finish();
}

// ---------------------------------------------------------------------------------------------
// A holder that removes its own lock by force while another process waits for it.

/// How many rounds the holder that removes its own lock plays in the tests below.
const OWN_ROUNDS: &str = "12";

/// A process takes the lock and removes its own lock file by force, in a loop, against a waiter
/// that takes the lock whenever it can and checks, after holding it a while, that its file is
/// still there. `mode`: how the looping process gives its lock up.
fn own_forced_removal_against_a_waiter(mode: &str) {
    let Some(lib) = shim() else { return };
    let dir = TestDir::new(&format!("own-force-{mode}"));
    let t = target(&dir);
    fs::create_dir_all(&t.dir).unwrap();
    let mut waiter = Proc::spawn("wait-loop", &support::lock_params(&t));
    waiter.expect("READY");
    // Every unlink of the lock file in the looping process is slowed down.
    let mut env = slowed(lib, "1000000");
    env[2].1 = "60".into();
    let mut forcer = spawn_slowed(
        "own-force",
        &t,
        &[("MODE", mode), ("ROUNDS", OWN_ROUNDS)],
        &env,
    );
    let done = loop {
        match forcer.recv(support::TIMEOUT) {
            Some(words) if words[0] == "SLOW" => continue,
            Some(words) if words[0] == "DONE" => break words[1..].to_vec(),
            other => panic!("expected DONE, got {other:?}"),
        }
    };
    forcer.wait_success();
    waiter.close_stdin();
    let report = waiter.expect("LOST");
    waiter.wait_success();
    let lost: u32 = report[0].parse().unwrap();
    let won: u32 = report[1].parse().unwrap();
    assert_eq!(done, [OWN_ROUNDS]);
    assert!(won > 0, "the waiter never got the lock");
    assert_eq!(
        lost, 0,
        "the waiter's file was deleted under it {lost} times in {won} holds"
    );
    dir.finish();
}

/// The way a process removes a lock it holds: `HeldLock::release`, which removes the file while
/// the lock is still held.
#[test]
fn a_holder_removing_its_own_lock_never_deletes_a_waiters_file() {
    own_forced_removal_against_a_waiter("release");
}

/// Letting the lock go first and then removing the file by name: a waiter takes the lock in
/// between; the pending removal must not delete the waiter's file. (The waiter does not take
/// over a file whose recorded holder still runs, and the forced removal unlinks only the file it
/// looked at under the removal guard.)
#[test]
fn letting_go_then_removing_by_force_never_deletes_a_waiters_file() {
    own_forced_removal_against_a_waiter("drop-then-force");
}

// ---------------------------------------------------------------------------------------------
// Roles of this file's child processes.

fn param(key: &str) -> Option<String> {
    std::env::var(format!("PROCESSLOCK_IT_{key}")).ok()
}

fn child_target() -> LockTarget {
    LockTarget::new(
        param("DIR").expect("PROCESSLOCK_IT_DIR"),
        LockName::new(&param("TYPE").unwrap_or_else(|| "backend".into()), None).unwrap(),
    )
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = write!(out, "\n@@{line}\n");
    let _ = out.flush();
}

/// `MODE=other`: one forced removal of whatever is at the lock path; reports `FORCED <removed>`.
/// Otherwise `ROUNDS` times: wait for the lock, then give it up and remove its file, by
/// `MODE=release` (`HeldLock::release`) or `MODE=drop-then-force` (close the descriptor, then
/// `force_remove`); reports `DONE <rounds>`.
fn role_own_force() -> i32 {
    let t = child_target();
    let mode = param("MODE").unwrap();
    if mode == "other" {
        match force_remove(&t.path) {
            Ok(removed) => say(&format!("FORCED {removed}")),
            Err(e) => say(&format!("ERROR {}", e.code())),
        }
        return 0;
    }
    let rounds: u32 = param("ROUNDS").unwrap().parse().unwrap();
    let cancel = Cancel::new();
    for _ in 0..rounds {
        let deadline = Instant::now() + Duration::from_secs(20);
        let held = match acquire_wait(&t, None, Some(deadline), &cancel) {
            Ok(a) => a.lock,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        let result = match mode.as_str() {
            "release" => held.release(),
            "drop-then-force" => {
                drop(held);
                force_remove(&t.path)
            }
            other => panic!("unknown MODE {other}"),
        };
        if let Err(e) = result {
            say(&format!("ERROR {e}"));
            return 1;
        }
    }
    say(&format!("DONE {rounds}"));
    0
}

/// READY, then until stdin closes: wait for the lock, hold it 100 ms, check that the lock path
/// still names our file, release, pause. Reports `LOST <times the file was gone> <holds>`.
fn role_wait_loop() -> i32 {
    let t = child_target();
    let cancel = Cancel::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop, cancel) = (stop.clone(), cancel.clone());
        std::thread::spawn(move || {
            let _ = io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            cancel.cancel();
        });
    }
    say("READY");
    let (mut lost, mut held) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        let lock = match acquire_wait(&t, None, Some(deadline), &cancel) {
            Ok(a) => a.lock,
            Err(Error::Aborted) => break,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        held += 1;
        std::thread::sleep(Duration::from_millis(100));
        if !lock.still_linked() {
            lost += 1;
        }
        match lock.release() {
            Ok(true) => {}
            Ok(false) => {}
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        }
        // Waits are not first-come-first-served: a loop that re-takes the lock the instant it
        // lets go can keep a woken rival out for as long as the machine is busy. Give the other
        // side its turn; the test is about whose file is removed, not about fairness.
        std::thread::sleep(Duration::from_millis(20));
    }
    say(&format!("LOST {lost} {held}"));
    0
}
