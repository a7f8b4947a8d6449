//! Who owns a lock: conflicts between processes, release, takeover after a holder died by a
//! signal, forced removal (`docs/PROTOCOL.md` *only your own file*), trade sides, the registry, and
//! another user's locks.

mod support;

use std::fs;

use processlock::testing::{acquire, start_token, PROTOCOL};
use processlock::{
    force_remove, inspect, parse_record, Backend, Error, FileBackend, Inspection, LockName,
    LockTarget, Parsed, Record, Released,
};
use support::{Outcome, Proc, TestDir};

#[test]
fn child_role() {
    support::child_role();
}

fn acquired_pid(o: &Outcome) -> u32 {
    match o {
        Outcome::Acquired { pid, .. } => *pid,
        other => panic!("expected an acquisition, got {other:?}"),
    }
}

/// A child that has taken `target` and holds it until its stdin closes.
fn holding(target: &LockTarget) -> Proc {
    let mut holder = Proc::acquirer(target, "wait");
    assert_eq!(acquired_pid(&holder.outcome()), holder.pid);
    holder
}

#[test]
fn conflict_names_the_holder_release_removes_the_file_and_reacquire_works() {
    let dir = TestDir::new("conflict");
    let t = dir.target("backend", Some("short"));

    let mut holder = Proc::acquirer(&t, "wait");
    let got = holder.outcome();
    assert_eq!(acquired_pid(&got), holder.pid);
    assert!(got.events().is_empty(), "{got:?}");

    // The file on disk is the holder's complete record, in our format.
    let Parsed::Ours(rec) = parse_record(&fs::read(&t.path).unwrap()) else {
        panic!("not our record: {:?}", fs::read_to_string(&t.path));
    };
    assert_eq!(rec.pid, holder.pid);
    assert_eq!(rec.protocol.as_deref(), Some(PROTOCOL));
    assert_eq!(rec.trade_side.as_deref(), Some("SHORT"));
    assert_eq!(rec.process_name, "trader-short-backend");
    assert_eq!(rec.start_token, start_token(holder.pid));
    assert!(rec.start_token.is_some());

    // This process conflicts, and the error names the holder.
    match acquire(&t, None) {
        Err(e @ Error::Conflict(_)) => {
            assert_eq!(e.code(), "LOCK_CONFLICT");
            assert_eq!(
                e.to_string(),
                format!(
                    "LOCK_CONFLICT: backend (SHORT) is already running (PID: {})",
                    holder.pid
                )
            );
            let Error::Conflict(c) = e else {
                unreachable!()
            };
            // The record, with the holder's fencing token, which the file does not carry.
            assert!(c
                .holder
                .fencing_token
                .as_deref()
                .is_some_and(|t| t.parse::<u64>().is_ok()));
            assert_eq!(
                Record {
                    fencing_token: None,
                    ..c.holder.clone()
                },
                rec
            );
            assert_eq!(c.path, t.path);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // So does a third process.
    let mut other = Proc::acquirer(&t, "release");
    assert_eq!(other.outcome(), Outcome::Conflict { holder: holder.pid });
    other.wait_success();
    assert_eq!(inspect(&t.path).unwrap(), Inspection::Held(rec.clone()));

    // Release removes the file.
    assert!(holder.release_and_end());
    assert!(!t.path.exists());

    // And the lock can be taken again, with nothing stale to report.
    let mut again = Proc::acquirer(&t, "release");
    let got = again.outcome();
    assert_eq!(acquired_pid(&got), again.pid);
    assert!(got.events().is_empty(), "{got:?}");
    assert_eq!(again.expect("RELEASED"), ["true"]);
    again.wait_success();
    assert!(!t.path.exists());
    dir.finish();
}

#[test]
fn two_acquires_in_one_process_conflict_because_flock_is_per_open_file() {
    let dir = TestDir::new("same-process");
    let t = dir.target("worker", None);
    let first = acquire(&t, None).unwrap();
    match acquire(&t, None) {
        Err(Error::Conflict(c)) => assert_eq!(c.holder.pid, std::process::id()),
        other => panic!("expected a conflict with ourselves, got {other:?}"),
    }
    // The failed attempt changed nothing.
    assert!(first.lock.still_linked());
    assert_eq!(
        inspect(&t.path).unwrap(),
        Inspection::Held(first.lock.record().clone())
    );
    assert!(first.lock.release().unwrap());
    assert!(!t.path.exists());
    dir.finish();
}

/// The backend of `t`'s directory, the name of `t`'s lock and its place in the table.
fn backend_of(t: &LockTarget) -> (FileBackend, LockName, String) {
    let backend = FileBackend::new(&t.dir);
    let place = backend.place(&t.name).unwrap();
    (backend, t.name.clone(), place)
}

#[test]
fn registry_makes_acquire_idempotent_within_a_process() {
    let dir = TestDir::new("registry");
    let t = dir.target("backend", None);
    let (files, name, place) = backend_of(&t);
    let a = files.acquire(&name, &place, None, 1, None).unwrap();
    assert!(!a.already_held);
    let b = files.acquire(&name, &place, None, 1, None).unwrap();
    assert!(b.already_held);
    assert_eq!(a.record, b.record);
    assert_eq!(a.id, b.id);
    assert!(files.holds().holds(&place));

    let mut other = Proc::acquirer(&t, "release");
    assert_eq!(
        other.outcome(),
        Outcome::Conflict {
            holder: std::process::id()
        }
    );
    other.wait_success();

    let Released::Released { pid, removed } = files.release(&name, &place, 1) else {
        panic!("the only holder let go")
    };
    assert_eq!(pid, a.record.pid);
    assert!(removed);
    assert!(matches!(files.release(&name, &place, 1), Released::NotHeld));
    assert!(!t.path.exists());
    dir.finish();
}

#[test]
fn registry_keeps_a_lock_until_its_last_holder_lets_go() {
    let dir = TestDir::new("registry-holders");
    let t = dir.target("backend", None);
    let (files, name, place) = backend_of(&t);
    let a = files.acquire(&name, &place, None, 1, None).unwrap();
    assert!(a.newly_taken);
    let b = files.acquire(&name, &place, None, 2, None).unwrap();
    assert!(!b.already_held && !b.newly_taken);
    assert_eq!(a.id, b.id);
    assert!(matches!(files.release(&name, &place, 3), Released::NotHeld));
    assert!(matches!(
        files.release(&name, &place, 1),
        Released::KeptByOthers { .. }
    ));
    assert!(t.path.exists() && files.holds().holds(&place));
    assert!(files.holds().is_holder(&place, 2) && !files.holds().is_holder(&place, 1));
    assert!(matches!(
        files.release(&name, &place, 2),
        Released::Released { removed: true, .. }
    ));
    assert!(!t.path.exists() && !files.holds().holds(&place));
    dir.finish();
}

#[test]
#[cfg_attr(
    windows,
    ignore = "Wine keeps a removed file's name while a handle is open (no POSIX delete); run on Windows with --ignored"
)]
fn registry_does_not_count_a_lost_file_as_held() {
    let dir = TestDir::new("registry-lost");
    let t = dir.target("backend", None);
    let (files, name, place) = backend_of(&t);
    let first = files.acquire(&name, &place, None, 1, None).unwrap();
    files.acquire(&name, &place, None, 2, None).unwrap();
    std::fs::remove_file(&t.path).unwrap();
    assert!(!files.holds().holds(&place));
    assert!(files.holds().current(&place).is_none());
    // The acquire takes it anew, as a hold of its own, instead of answering "already held";
    // the lost hold is gone for every holder of it.
    let again = files.acquire(&name, &place, None, 1, None).unwrap();
    assert!(again.newly_taken && !again.already_held);
    assert_ne!(again.id, first.id);
    assert!(files.holds().holds(&place));
    assert!(!files.holds().is_holder(&place, 2));
    assert!(matches!(
        files.release(&name, &place, 1),
        Released::Released { removed: true, .. }
    ));
    dir.finish();
}

/// A holder killed by a signal runs no clean-up: its file stays. The next acquirer takes it over
/// at once, naming the dead holder.
#[cfg(unix)]
#[test]
fn a_holder_killed_by_a_signal_is_taken_over_at_once() {
    let dir = TestDir::new("killed");
    let t = dir.target("backend", Some("long"));
    for sig in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut holder = holding(&t);
        holder.kill_with(sig);
        assert!(
            t.path.exists(),
            "signal {sig}: the dead holder's file stays"
        );
        match inspect(&t.path).unwrap() {
            Inspection::Stale(r) => assert_eq!(r.pid, holder.pid),
            other => panic!("signal {sig}: expected stale, got {other:?}"),
        }

        let mut taker = Proc::acquirer(&t, "wait");
        match taker.outcome() {
            Outcome::Acquired {
                pid,
                events,
                micros,
            } => {
                assert_eq!(pid, taker.pid);
                assert_eq!(events, [format!("stale:{}", holder.pid)], "signal {sig}");
                // No staleness timeout: the takeover is one acquire call.
                assert!(micros < 500_000, "signal {sig}: takeover took {micros} us");
            }
            other => panic!("signal {sig}: expected a takeover, got {other:?}"),
        }
        // The new holder really holds it.
        assert!(matches!(acquire(&t, None), Err(Error::Conflict(c)) if c.holder.pid == taker.pid));
        assert!(taker.release_and_end());
    }
    assert!(!t.path.exists());
    dir.finish();
}

/// The kernel drops the flock when the process dies, before its parent reaps it: a zombie
/// holder is already replaceable.
#[cfg(unix)]
#[test]
fn an_unreaped_killed_holder_is_taken_over() {
    let dir = TestDir::new("zombie");
    let t = dir.target("backend", None);
    let mut holder = holding(&t);
    holder.kill_to_zombie();
    let a = acquire(&t, None).unwrap();
    assert_eq!(
        a.events,
        [processlock::Event::StaleRemoved { pid: holder.pid }]
    );
    holder.wait();
    assert!(a.lock.release().unwrap());
    dir.finish();
}

/// `docs/PROTOCOL.md` *only your own file*: after a forced removal, the first
/// holder's release must not delete the file of the holder that came after it.
#[test]
fn release_after_force_remove_leaves_the_new_holders_file() {
    let dir = TestDir::new("force");
    let t = dir.target("worker", Some("short"));
    let mut first = holding(&t);

    assert!(force_remove(&t.path).unwrap());
    assert!(!t.path.exists());
    assert!(!force_remove(&t.path).unwrap(), "nothing left to remove");

    let mut second = Proc::acquirer(&t, "wait");
    let got = second.outcome();
    assert_eq!(acquired_pid(&got), second.pid);
    assert!(got.events().is_empty(), "{got:?}");

    assert!(!first.release_and_end());

    let Parsed::Ours(rec) = parse_record(&fs::read(&t.path).unwrap()) else {
        panic!("the second holder's file is gone or damaged");
    };
    assert_eq!(rec.pid, second.pid);
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.pid == second.pid));
    let mut third = Proc::acquirer(&t, "release");
    assert_eq!(third.outcome(), Outcome::Conflict { holder: second.pid });
    third.wait_success();

    assert!(second.release_and_end());
    assert!(!t.path.exists());
    dir.finish();
}

/// The same, inside one process, through the `HeldLock` API.
#[test]
fn held_lock_notices_it_was_force_removed() {
    let dir = TestDir::new("force-inproc");
    let t = dir.target("backend", Some("short"));
    let first = acquire(&t, None).unwrap();
    assert!(force_remove(&t.path).unwrap());
    assert!(!first.lock.still_linked());
    let second = acquire(&t, None).unwrap();
    assert!(second.events.is_empty());
    assert!(!first.lock.release().unwrap());
    assert!(second.lock.still_linked());
    assert!(second.lock.release().unwrap());
    assert!(!t.path.exists());
    dir.finish();
}

#[test]
fn trade_sides_are_separate_locks() {
    let dir = TestDir::new("sides");
    let short = dir.target("backend", Some("short"));
    let long = dir.target("backend", Some("LONG"));
    let none = dir.target("backend", None);
    let mut a = holding(&short);
    let mut b = holding(&long);
    let c = acquire(&none, None).unwrap();
    let names = [&short.path, &long.path, &none.path].map(|p| p.file_name().unwrap().to_owned());
    assert_eq!(
        names,
        ["backend.short.lock", "backend.long.lock", "backend.lock"]
    );
    assert!(matches!(acquire(&short, None), Err(Error::Conflict(x)) if x.holder.pid == a.pid));
    assert!(matches!(acquire(&long, None), Err(Error::Conflict(x)) if x.holder.pid == b.pid));
    for p in [&mut a, &mut b] {
        assert!(p.release_and_end());
    }
    assert!(c.lock.release().unwrap());
    dir.finish();
}

/// Another user's locks: a root holder seen from `nobody` (EPERM from `kill(pid, 0)`, a file it
/// may not open for writing) is alive; its dead holder's file is still taken over. Needs root.
#[cfg(unix)]
#[test]
fn another_users_lock_is_respected_and_its_stale_file_taken_over() {
    if !support::root_or_skip("run a child as another user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("other-user");
    let t = dir.made_target("backend", Some("short"));
    // Shared the safe way: through a group (nobody's), inherited by the files (setgid).
    std::os::unix::fs::chown(&t.dir, None, Some(65534)).unwrap();
    fs::set_permissions(&t.dir, fs::Permissions::from_mode(0o2770)).unwrap();
    let nobody = support::AS_NOBODY;

    // Root holds; nobody conflicts.
    let mut root_holder = holding(&t);
    let mut other = Proc::acquirer_with(&t, "release", &nobody);
    assert_eq!(
        other.outcome(),
        Outcome::Conflict {
            holder: root_holder.pid
        }
    );
    other.wait_success();

    // Root's holder dies; nobody takes over (the directory lets it unlink root's file).
    root_holder.kill_with(libc::SIGKILL);
    let mut taker = Proc::acquirer_with(&t, "wait", &nobody);
    let got = taker.outcome();
    assert_eq!(got.events(), [format!("stale:{}", root_holder.pid)]);

    // A legacy-format file naming a live root process, seen by nobody: alive (EPERM), conflict.
    let legacy = dir.target("worker", None);
    let idle = Proc::idle();
    let started = processlock::own_record(&legacy, None).started;
    fs::write(
        &legacy.path,
        format!("{{\"pid\": {}, \"started\": \"{started}\", \"tradeSide\": null, \"processName\": \"trader-worker\"}}", idle.pid),
    )
    .unwrap();
    let mut seen = Proc::acquirer_with(&legacy, "release", &nobody);
    assert_eq!(seen.outcome(), Outcome::Conflict { holder: idle.pid });
    seen.wait_success();
    assert!(legacy.path.exists());
    fs::remove_file(&legacy.path).unwrap();

    assert!(taker.release_and_end());
    assert!(!t.path.exists());
    dir.finish();
}

/// A descendant that inherited the lock descriptor (the `run` command's child) keeps the lock
/// when the process that took it is SIGKILLed: no takeover while it lives, takeover at once
/// after it dies.
#[cfg(unix)]
#[test]
fn an_inherited_descriptor_keeps_the_lock_after_the_taker_dies() {
    let dir = TestDir::new("inherited");
    let t = dir.target("backend", Some("short"));
    let mut taker = Proc::acquirer_with(&t, "wait", &[("INHERIT", "1")]);
    assert_eq!(acquired_pid(&taker.outcome()), taker.pid);
    let heir: u32 = taker.expect("INHERITED")[0].parse().unwrap();
    assert!(support::pid_exists(heir));
    taker.kill_with(libc::SIGKILL);

    // The record names the dead taker, but the lock is held: never a takeover.
    let t0 = std::time::Instant::now();
    match acquire(&t, None) {
        Err(Error::Conflict(c)) => assert_eq!(c.holder.pid, taker.pid),
        other => panic!("expected a conflict while the heir lives, got {other:?}"),
    }
    eprintln!(
        "conflict with a dead taker's heir reported after {:?}",
        t0.elapsed()
    );
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.pid == taker.pid));
    let mut other = Proc::acquirer(&t, "release");
    assert_eq!(other.outcome(), Outcome::Conflict { holder: taker.pid });
    other.wait_success();

    // The heir dies (it is not our child: wait until it is gone or a zombie).
    // SAFETY: kill takes no pointer; the heir is still alive (it holds the lock until now), so its
    // PID names it.
    assert_eq!(unsafe { libc::kill(heir as libc::pid_t, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    while support::proc_state(heir).is_some_and(|s| s != 'Z') {
        assert!(
            std::time::Instant::now() < deadline,
            "heir {heir} did not die"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let a = acquire(&t, None).unwrap();
    assert_eq!(
        a.events,
        [processlock::Event::StaleRemoved { pid: taker.pid }]
    );
    assert!(a.lock.release().unwrap());
    dir.finish();
}

/// Without the right to write in the lock directory, or to remove another user's stale file
/// from a sticky directory, the acquirer gets a clear LOCK_IO and leaves nothing behind. Needs
/// root.
#[cfg(unix)]
#[test]
fn another_user_without_permission_gets_lock_io_and_leaves_nothing() {
    if !support::root_or_skip("run a child as another user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("no-permission");
    let t = dir.made_target("backend", None);
    fs::set_permissions(&t.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = support::AS_NOBODY;

    let mut p = Proc::acquirer_with(&t, "release", &nobody);
    let out = p.outcome();
    eprintln!("unwritable dir: {out:?}");
    assert!(
        matches!(&out, Outcome::Error { code, message } if code == "LOCK_IO" && message.contains("os error 13")),
        "{out:?}"
    );
    p.wait_success();

    // Sticky, world-writable (like /tmp): refused to everybody before anything is made there,
    // since every user could plant files at the lock's paths.
    fs::set_permissions(&t.dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let mut p = Proc::acquirer_with(&t, "release", &nobody);
    let out = p.outcome();
    assert!(
        matches!(&out, Outcome::Error { code, .. } if code == "LOCK_UNSAFE_DIR"),
        "{out:?}"
    );
    p.wait_success();
    assert_eq!(acquire(&t, None).unwrap_err().code(), "LOCK_UNSAFE_DIR");
    dir.assert_no_temps();
    assert!(support::lock_dir_names(&t.dir).is_empty());
    dir.finish();
}
