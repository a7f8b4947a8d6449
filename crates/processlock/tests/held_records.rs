//! Files whose OS lock is free, judged by the process their record names: a live holder that
//! closed its descriptor is still the holder (never taken over, and every answer says the OS
//! lock is not held); a bare PID of the older format is judged against the file's modification
//! time, and our own PID in it is not another process.

mod support;

use std::fs;
use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime};

use processlock::testing::{acquire, acquire_wait, start_token};
use processlock::{
    inspect, list_locks, remove_if_stale, Cancel, Error, Event, Inspection, LockName, LockState,
    LockTarget, Removal,
};
use support::{Proc, TestDir, ROLE_ENV};

#[test]
fn child_role() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("abandon") => std::process::exit(role_abandon()),
        Ok("threaded-holder") => std::process::exit(role_threaded_holder()),
        _ => support::child_role(),
    }
}

/// Acquires, then closes the lock's descriptor without removing the file (as a process does
/// that closes every descriptor it did not open itself), reports `ABANDONED`, and stays alive
/// until its stdin closes.
fn role_abandon() -> i32 {
    let dir = std::env::var("PROCESSLOCK_IT_DIR").unwrap();
    let t = LockTarget::new(dir, LockName::new("backend", Some("SHORT")).unwrap());
    let held = acquire(&t, None).expect("the lock is free").lock;
    drop(held);
    let mut out = io::stdout().lock();
    let _ = write!(out, "\n@@ABANDONED\n");
    let _ = out.flush();
    drop(out);
    let _ = io::Read::read_to_end(&mut io::stdin(), &mut Vec::new());
    0
}

/// Acquires, starts threads that only sleep (a process of many threads takes longer to end,
/// as a Node service does), reports `HELD`, and waits to be killed.
fn role_threaded_holder() -> i32 {
    let dir = std::env::var("PROCESSLOCK_IT_DIR").unwrap();
    let t = LockTarget::new(dir, LockName::new("backend", Some("SHORT")).unwrap());
    let held = acquire(&t, None).expect("the lock is free").lock;
    for _ in 0..16 {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(60));
        });
    }
    let mut out = io::stdout().lock();
    let _ = write!(out, "\n@@HELD\n");
    let _ = out.flush();
    drop(out);
    let _ = io::Read::read_to_end(&mut io::stdin(), &mut Vec::new());
    drop(held);
    0
}

fn assert_says_unlocked(problem: &str) {
    assert!(
        problem.contains("OS lock") && problem.contains("not held"),
        "{problem}"
    );
}

#[test]
fn a_live_holder_that_closed_its_descriptor_is_never_taken_over() {
    let dir = TestDir::new("unlocked-holder");
    let t = dir.target("backend", Some("SHORT"));
    let mut holder = Proc::spawn("abandon", &support::lock_params(&t));
    holder.expect("ABANDONED");
    let before = fs::read(&t.path).unwrap();

    // An acquirer: a conflict naming the holder, saying why although nobody holds the OS lock.
    match acquire(&t, None) {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.holder.pid, holder.pid);
            assert_says_unlocked(c.problem.as_deref().expect("a problem text"));
            let message = Error::Conflict(c.clone()).to_string();
            assert!(message.starts_with("LOCK_CONFLICT: backend (SHORT) is already running"));
            assert_says_unlocked(&message);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A waiting acquirer gives up the same way at its deadline.
    let deadline = Instant::now() + Duration::from_millis(300);
    match acquire_wait(&t, None, Some(deadline), &Cancel::new()) {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.holder.pid, holder.pid);
            assert_says_unlocked(c.problem.as_deref().expect("a problem text"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // What operators see, and what `clear` does.
    match inspect(&t.path).unwrap() {
        Inspection::HeldUnlocked(r, problem) => {
            assert_eq!(r.pid, holder.pid);
            assert_says_unlocked(&problem);
        }
        other => panic!("expected held without its OS lock, got {other:?}"),
    }
    let listed = list_locks(&t.dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, LockState::Held);
    assert_says_unlocked(listed[0].problem.as_deref().expect("a problem text"));
    assert!(matches!(remove_if_stale(&t.path).unwrap(), Removal::Held(r) if r.pid == holder.pid));
    assert_eq!(
        fs::read(&t.path).unwrap(),
        before,
        "the holder's file changed"
    );

    // Once the holder is gone, its file is stale.
    holder.close_stdin();
    holder.wait_success();
    let taken = acquire(&t, None).expect("a dead holder's file is taken over");
    assert_eq!(
        taken.events,
        [Event::StaleRemoved { pid: holder.pid }],
        "{:?}",
        taken.events
    );
    assert!(taken.lock.release().unwrap());
    dir.finish();
}

/// Writes a bare-PID file (the oldest format) modified at `written`.
fn write_bare_pid(t: &LockTarget, pid: u32, written: SystemTime) {
    fs::create_dir_all(&t.dir).unwrap();
    fs::write(&t.path, format!("{pid}\n")).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&t.path).unwrap();
    f.set_modified(written).unwrap();
}

fn expect_takeover_of(t: &LockTarget, pid: u32) {
    match acquire(t, None) {
        Ok(a) => {
            assert_eq!(a.events, [Event::StaleRemoved { pid }], "{:?}", a.events);
            assert!(a.lock.release().unwrap());
        }
        other => panic!("expected a takeover of PID {pid}'s file, got {other:?}"),
    }
}

/// Containers run every service as PID 1: a file left with our own PID by an older writer is
/// not a lock another process holds.
#[test]
fn a_bare_pid_file_naming_our_own_pid_is_taken_over() {
    let dir = TestDir::new("bare-own-pid");
    let t = dir.target("backend", None);
    write_bare_pid(&t, std::process::id(), SystemTime::now());
    expect_takeover_of(&t, std::process::id());
    dir.finish();
}

/// A bare PID written long before its process started. Where the OS stored the process's start
/// as a date (macOS, Windows), that process cannot have written it: taken over. Linux keeps a
/// start only as time since boot, and a date computed from it moves with every step of the wall
/// clock: the PID cannot be told from its writer, and a live PID is a live holder (a conflict,
/// the file untouched).
#[test]
fn a_bare_pid_written_before_its_process_started() {
    let dir = TestDir::new("bare-old-pid");
    let t = dir.target("backend", None);
    if start_token(1).is_none() {
        eprintln!("SKIPPED: the start of PID 1 cannot be read here");
        return;
    }
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800); // 2000-01-01
    write_bare_pid(&t, 1, long_ago);
    expect_reused_pid_verdict(&t, 1);

    // The same for a process started just now, named by a file written an hour ago.
    let mut idle = Proc::idle();
    write_bare_pid(&t, idle.pid, SystemTime::now() - Duration::from_secs(3600));
    expect_reused_pid_verdict(&t, idle.pid);
    idle.close_stdin();
    idle.wait_success();
    if t.path.exists() {
        expect_takeover_of(&t, idle.pid);
    }
    dir.finish();
}

/// What a PID-only file naming a live process that started after it was written gets.
fn expect_reused_pid_verdict(t: &LockTarget, pid: u32) {
    if cfg!(target_os = "linux") {
        match acquire(t, None) {
            Err(Error::Conflict(c)) => assert_eq!(c.holder.pid, pid),
            other => panic!("expected a conflict with PID {pid}, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&t.path).unwrap(), format!("{pid}\n"));
    } else {
        expect_takeover_of(t, pid);
    }
}

/// A live process that started before the file was written may well be its writer: conflict,
/// file untouched.
#[test]
fn a_bare_pid_written_after_its_process_started_conflicts() {
    let dir = TestDir::new("bare-live-pid");
    let t = dir.target("backend", None);
    let mut idle = Proc::idle();
    write_bare_pid(&t, idle.pid, SystemTime::now());
    match acquire(&t, None) {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.holder.pid, idle.pid);
            assert!(c.problem.is_none(), "{:?}", c.problem);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(&t.path).unwrap(),
        format!("{}\n", idle.pid)
    );
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.pid == idle.pid));
    idle.close_stdin();
    idle.wait_success();
    expect_takeover_of(&t, idle.pid);
    dir.finish();
}

/// A holder killed an instant ago: the kernel closes its files (so its OS lock goes) early in
/// the exit, before the process looks ended. An acquirer that comes in that instant must take
/// the lock over, not report a holder running without its OS lock. Each round kills a holder
/// and tries to take its lock from the moment of the kill, so that attempts land in the window.
#[cfg(unix)]
#[test]
fn a_holder_being_killed_is_not_a_holder_running_without_its_lock() {
    let dir = TestDir::new("killed-instant");
    let t = dir.made_target("backend", Some("SHORT"));
    for round in 0..200 {
        let mut holder = Proc::spawn("threaded-holder", &support::lock_params(&t));
        holder.expect("HELD");
        let pid = holder.pid;
        holder.signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken = loop {
            match acquire(&t, None) {
                Ok(a) => break a,
                Err(Error::Conflict(c)) => {
                    assert!(
                        c.problem.is_none(),
                        "round {round}: PID {pid}, killed, was taken for a holder running without its lock: {}",
                        c.problem.unwrap()
                    );
                    assert!(Instant::now() < deadline, "round {round}: never free");
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        };
        assert!(taken.lock.release().unwrap());
        holder.wait();
    }
    dir.finish();
}
