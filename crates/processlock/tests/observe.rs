//! Looking at locks from outside (`inspect`, `list_locks`, the backend's `status`) and cleaning up after acquirers that
//! died half-way (temp files, `sweep_orphan_temps`).

mod support;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use processlock::testing::acquire;
use processlock::{
    inspect, list_locks, own_record, sweep_orphan_temps, Backend, Error, FileBackend, Inspection,
    LockState,
};
use support::{Outcome, Proc, TestDir};

#[test]
fn child_role() {
    support::child_role();
}

/// Starts a child that leaves a temp file the way an acquirer killed before `link` would.
fn temp_maker(target: &processlock::LockTarget, flock: bool) -> (Proc, PathBuf) {
    let mut params = support::lock_params(target);
    params.push(("FLOCK".into(), if flock { "1" } else { "0" }.into()));
    let mut p = Proc::spawn("temp", &params);
    let path = PathBuf::from(&p.expect("READY")[0]);
    assert!(path.is_file());
    (p, path)
}

#[test]
fn orphan_temps_of_dead_acquirers_are_swept_and_live_ones_kept() {
    let dir = TestDir::new("orphans");
    let t = dir.target("backend", Some("short"));
    let other = dir.target("worker", None);
    fs::create_dir_all(&t.dir).unwrap();

    let (mut locked, locked_path) = temp_maker(&t, true);
    let (mut unlocked, unlocked_path) = temp_maker(&t, false);
    let (mut foreign, foreign_path) = temp_maker(&other, false);
    // Names that are not ours to sweep.
    let unrelated = [
        t.dir.join(".notes.tmp"),
        t.dir.join(".backend.lock.abc.1.tmp"),
    ];
    for u in &unrelated {
        fs::write(u, "x").unwrap();
    }

    // Creators alive: nothing is removed, locked or not.
    assert_eq!(
        sweep_orphan_temps(&t.dir, None).unwrap(),
        Vec::<PathBuf>::new()
    );
    assert!(locked_path.exists() && unlocked_path.exists() && foreign_path.exists());

    // The creators die (SIGKILL: no clean-up of any kind).
    for p in [&mut locked, &mut unlocked, &mut foreign] {
        p.kill();
    }
    // A sweep for one lock name leaves the other lock's temps alone.
    let mut swept = sweep_orphan_temps(&t.dir, Some("backend.short.lock")).unwrap();
    swept.sort();
    let mut expected = vec![locked_path.clone(), unlocked_path.clone()];
    expected.sort();
    assert_eq!(swept, expected);
    assert!(!locked_path.exists() && !unlocked_path.exists());
    assert!(foreign_path.exists());
    assert_eq!(
        sweep_orphan_temps(&t.dir, None).unwrap(),
        std::slice::from_ref(&foreign_path)
    );
    assert!(!foreign_path.exists());
    for u in &unrelated {
        assert!(u.exists(), "{} was removed", u.display());
        fs::remove_file(u).unwrap();
    }
    dir.finish();
}

/// Every acquirer's temp file exists, unlocked, for a moment between its creation and its
/// `flock` (see `Temp::create`); the acquirer fails if its `flock` finds the file locked. So a
/// sweep must never lock a live creator's young temp file, even for a moment. Here the creator
/// (a live child) leaves its temp unlocked, stretching that moment, while this process sweeps in
/// one thread and keeps trying the lock like the creator would in another.
#[test]
#[cfg_attr(
    windows,
    ignore = "under Wine std's unlock fails: Wine answers ERROR_LOCK_VIOLATION where Windows \
              answers ERROR_NOT_LOCKED; run it with --ignored on Windows itself"
)]
fn a_sweep_never_locks_a_live_creators_young_temp() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = TestDir::new("sweep-no-lock");
    let t = dir.made_target("backend", Some("short"));
    let (mut creator, temp) = temp_maker(&t, false);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&temp)
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (stop, d) = (Arc::clone(&stop), t.dir.clone());
        std::thread::spawn(move || {
            let mut removed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                removed.extend(sweep_orphan_temps(&d, None).unwrap());
            }
            removed
        })
    };
    let t0 = std::time::Instant::now();
    let (mut tries, mut refused) = (0u64, 0u64);
    while t0.elapsed() < Duration::from_millis(300) {
        tries += 1;
        // std's lock is `flock` on Unix, a whole-file `LockFileEx` on Windows: either conflicts
        // with the protocol's lock of the file.
        if f.try_lock().is_ok() {
            f.unlock().unwrap();
        } else {
            refused += 1;
            if refused >= 3 {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let removed = sweeper.join().unwrap();
    assert!(
        removed.is_empty(),
        "a sweep removed a live creator's temp: {removed:?}"
    );
    assert!(temp.exists());
    assert_eq!(
        refused, 0,
        "the creator's flock of its own new temp was refused {refused} times in {tries} tries: \
         a concurrent sweep held it (an acquirer in that state fails with LOCK_IO)"
    );
    drop(f);
    creator.close_stdin();
    creator.wait_success();
    assert_eq!(
        sweep_orphan_temps(&t.dir, None).unwrap(),
        std::slice::from_ref(&temp)
    );
    dir.finish();
}

/// Taking over a dead holder's lock also removes the temp files that acquirers of the same lock
/// left when they died.
#[test]
fn a_stale_takeover_sweeps_orphan_temps_of_that_lock() {
    let dir = TestDir::new("takeover-sweep");
    let t = dir.target("worker", Some("long"));
    let mut holder = Proc::acquirer(&t, "wait");
    let Outcome::Acquired { pid: dead, .. } = holder.outcome() else {
        panic!("no acquisition");
    };
    let (mut maker, orphan) = temp_maker(&t, true);
    holder.kill();
    maker.kill();

    let mut taker = Proc::acquirer(&t, "release");
    let got = taker.outcome();
    assert_eq!(got.events(), [format!("stale:{dead}"), "orphans:1".into()]);
    assert!(!orphan.exists());
    assert_eq!(taker.expect("RELEASED"), ["true"]);
    taker.wait_success();
    dir.finish();
}

/// An acquirer SIGKILLed at random points of acquire/release, again and again: whatever it left
/// (a lock file, a temp file), the next acquirer gets the lock at once, and a sweep leaves no
/// temp file behind.
#[test]
fn an_acquirer_killed_anywhere_leaves_nothing_that_blocks() {
    let dir = TestDir::new("kill-anywhere");
    let t = dir.target("backend", None);
    let mut left_lock = 0;
    for i in 0..12u64 {
        let mut hammer = Proc::spawn("hammer", &support::lock_params(&t));
        hammer.expect("READY");
        std::thread::sleep(Duration::from_millis(3 + (i * 7) % 17));
        hammer.kill();
        if t.path.exists() {
            left_lock += 1;
        }
        let a = acquire(&t, None).unwrap_or_else(|e| panic!("round {i}: {e}"));
        for e in &a.events {
            assert!(
                matches!(e, processlock::Event::StaleRemoved { pid } if *pid == hammer.pid)
                    || matches!(e, processlock::Event::OrphansRemoved { .. }),
                "round {i}: {e:?}"
            );
        }
        assert!(a.lock.release().unwrap());
        sweep_orphan_temps(&t.dir, None).unwrap();
        dir.assert_no_temps();
    }
    eprintln!("a lock file was left behind in {left_lock} of 12 kills");
    dir.finish();
}

#[test]
fn inspect_and_list_locks_report_held_stale_and_invalid() {
    let dir = TestDir::new("list");
    let locks = dir.locks();
    assert!(
        list_locks(&locks).unwrap().is_empty(),
        "a missing dir has no locks"
    );

    let held = dir.target("backend", Some("short"));
    let stale = dir.target("backend", Some("long"));
    let invalid = dir.target("worker", None);
    let legacy = dir.target("scheduler", None);
    assert_eq!(inspect(&held.path).unwrap(), Inspection::Absent);

    let mut holder = Proc::acquirer(&held, "wait");
    let Outcome::Acquired {
        pid: holder_pid, ..
    } = holder.outcome()
    else {
        panic!()
    };
    let mut dead = Proc::acquirer(&stale, "wait");
    let Outcome::Acquired { pid: dead_pid, .. } = dead.outcome() else {
        panic!()
    };
    dead.kill();
    fs::write(&invalid.path, "{\"pid\": ").unwrap();
    let mut idle = Proc::idle();
    let legacy_record = format!(
        "{{\"pid\": {}, \"started\": \"{}\", \"tradeSide\": null, \"processName\": \"x\"}}",
        idle.pid,
        own_record(&legacy, None).started
    );
    fs::write(&legacy.path, legacy_record).unwrap();
    fs::create_dir(locks.join("dir.lock")).unwrap();
    fs::write(locks.join("a.b.c.lock"), "7\n").unwrap(); // a name we would not write; PID 7
    fs::write(locks.join("notes.txt"), "not a lock").unwrap();
    fs::write(locks.join(".hidden.lock"), "x").unwrap();

    assert!(matches!(inspect(&held.path).unwrap(), Inspection::Held(r) if r.pid == holder_pid));
    assert!(matches!(inspect(&stale.path).unwrap(), Inspection::Stale(r) if r.pid == dead_pid));
    assert!(matches!(inspect(&invalid.path).unwrap(), Inspection::Invalid(why) if !why.is_empty()));
    assert!(matches!(inspect(&legacy.path).unwrap(), Inspection::Held(r) if r.pid == idle.pid));

    let listed = list_locks(&locks).unwrap();
    let summary: Vec<(String, LockState, Option<u32>, bool)> = listed
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.state,
                s.record.as_ref().map(|r| r.pid),
                s.name.is_some(),
            )
        })
        .collect();
    let seven_alive = support::pid_exists(7);
    assert_eq!(
        summary,
        [
            (
                "a.b.c.lock".to_string(),
                if seven_alive {
                    LockState::Held
                } else {
                    LockState::Stale
                },
                Some(7),
                false
            ),
            (
                "backend.long.lock".into(),
                LockState::Stale,
                Some(dead_pid),
                true
            ),
            (
                "backend.short.lock".into(),
                LockState::Held,
                Some(holder_pid),
                true
            ),
            ("dir.lock".into(), LockState::Invalid, None, true),
            (
                "scheduler.lock".into(),
                LockState::Held,
                Some(idle.pid),
                true
            ),
            ("worker.lock".into(), LockState::Invalid, None, true),
        ]
    );
    for s in &listed {
        assert_eq!(s.path.parent(), Some(locks.as_path()));
        assert_eq!(s.problem.is_some(), s.state == LockState::Invalid, "{s:?}");
    }
    assert_eq!(
        listed[2].name.as_ref().map(|n| n.display()),
        Some("backend (SHORT)".into())
    );

    // The backend says of one lock what the listing says of it, and nothing of an absent one.
    let files = FileBackend::new(&locks);
    for s in listed.iter().filter(|s| s.name.is_some()) {
        let one = files.status(s.name.as_ref().unwrap()).unwrap().unwrap();
        assert_eq!(one.place, s.path.to_string_lossy(), "{s:?}");
        assert_eq!(one.state, s.state, "{s:?}");
        assert_eq!(
            one.holding.map(|h| h.record.pid),
            s.record.as_ref().map(|r| r.pid),
            "{s:?}"
        );
        assert_eq!(one.problem, s.problem, "{s:?}");
    }
    let absent = processlock::LockName::new("nothing", None).unwrap();
    assert!(files.status(&absent).unwrap().is_none());

    // Looking changed nothing: the holder still holds, the stale and invalid files are still
    // there for the next acquirer to remove.
    assert!(matches!(acquire(&held, None), Err(Error::Conflict(c)) if c.holder.pid == holder_pid));
    assert!(stale.path.exists() && invalid.path.exists());
    let a = acquire(&stale, None).unwrap();
    assert_eq!(
        a.events,
        [processlock::Event::StaleRemoved { pid: dead_pid }]
    );
    assert!(
        matches!(inspect(&stale.path).unwrap(), Inspection::Held(r) if r.pid == std::process::id())
    );
    assert!(a.lock.release().unwrap());
    assert_eq!(inspect(&stale.path).unwrap(), Inspection::Absent);

    assert!(holder.release_and_end());
    idle.close_stdin();
    idle.wait_success();
    // The legacy-format file's process is gone now: stale.
    assert!(matches!(inspect(&legacy.path).unwrap(), Inspection::Stale(r) if r.pid == idle.pid));
    dir.finish();
}
