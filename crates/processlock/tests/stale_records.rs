//! Records that lie: PIDs of live processes that are not the holder (recycled PIDs), files in
//! the legacy PID-only format, bare PIDs.

mod support;

use std::fs;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use processlock::testing::{start_token, PROTOCOL};
use processlock::{
    inspect, judge_pid, own_record, parse_record, Inspection, LockTarget, Parsed, PidState, Record,
};
use support::{pid_exists, Outcome, Proc, TestDir};

#[test]
fn child_role() {
    support::child_role();
}

/// A file in the legacy PID-only format: the four keys, pretty-printed, no protocol marker.
fn legacy_file(pid: u32, started: &str) -> String {
    format!(
        "{{\n  \"pid\": {pid},\n  \"started\": \"{started}\",\n  \"tradeSide\": \"SHORT\",\n  \"processName\": \"trader-short-backend\"\n}}"
    )
}

fn now_iso(t: &LockTarget) -> String {
    own_record(t, None).started
}

/// Acquires in a child and expects a takeover naming `stale_pid`.
fn expect_takeover(t: &LockTarget, stale_pid: u32) {
    let mut p = Proc::acquirer(t, "release");
    match p.outcome() {
        Outcome::Acquired { pid, events, .. } => {
            assert_eq!(pid, p.pid);
            assert_eq!(events, [format!("stale:{stale_pid}")]);
        }
        other => panic!("expected a takeover of PID {stale_pid}'s file, got {other:?}"),
    }
    assert_eq!(p.expect("RELEASED"), ["true"]);
    p.wait_success();
    assert!(!t.path.exists());
}

/// Acquires in a child and expects a conflict naming `holder`; the file must be left as it was.
fn expect_conflict(t: &LockTarget, holder: u32) {
    let before = fs::read(&t.path).unwrap();
    let mut p = Proc::acquirer(t, "release");
    assert_eq!(p.outcome(), Outcome::Conflict { holder });
    p.wait_success();
    assert_eq!(
        fs::read(&t.path).unwrap(),
        before,
        "the holder's file changed"
    );
}

/// Our format, naming a live process of this host down to its exact start token, with nobody
/// holding the flock: the holder closed its descriptor (or the directory is reached through
/// mounts that do not share locks). Taking it over would start a second instance beside it, so it
/// is held, and says why; once that process is gone, the file is stale.
#[test]
fn our_record_naming_a_live_process_with_its_exact_token_is_held_without_a_flock() {
    let _shared = pid_space();
    let dir = TestDir::new("ours-live-pid");
    let t = dir.made_target("backend", Some("short"));
    let mut idle = Proc::idle();
    let mut rec: Record = own_record(&t, None);
    rec.pid = idle.pid;
    rec.start_token = start_token(idle.pid);
    assert!(rec.start_token.is_some());
    assert_eq!(rec.protocol.as_deref(), Some(PROTOCOL));
    // PID and token say "alive"; only the missing flock says otherwise.
    assert_eq!(judge_pid(&rec), PidState::Alive);
    fs::write(&t.path, rec.to_json()).unwrap();
    match inspect(&t.path).unwrap() {
        Inspection::HeldUnlocked(r, problem) => {
            assert_eq!(r, rec);
            assert!(problem.contains("OS lock"), "{problem}");
        }
        other => panic!("expected held without its OS lock, got {other:?}"),
    }
    expect_conflict(&t, idle.pid);

    idle.close_stdin();
    idle.wait_success();
    expect_takeover(&t, idle.pid);
    dir.finish();
}

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// Tests here rely on dead PIDs staying dead for a moment; the recycling tests make a dead PID
/// alive again on purpose. They exclude each other.
static PID_SPACE: RwLock<()> = RwLock::new(());

fn pid_space() -> RwLockReadGuard<'static, ()> {
    PID_SPACE.read().unwrap_or_else(|p| p.into_inner())
}

/// Starts an `idle` process with exactly the PID `dead` (through `ns_last_pid`, root only), then
/// puts the PID counter back where it was, so that nothing else reuses recent PIDs early.
/// `Err(())`: the counter is not writable here. `Ok(None)`: someone else forked in between.
fn respawn_with_pid(dead: u32) -> Result<Option<Proc>, ()> {
    let before: u32 = fs::read_to_string(NS_LAST_PID)
        .map_err(|_| ())?
        .trim()
        .parse()
        .unwrap();
    fs::write(NS_LAST_PID, format!("{}", dead - 1)).map_err(|_| ())?;
    let mut p = Proc::spawn::<&str, &str>("idle", &[]);
    let now: u32 = fs::read_to_string(NS_LAST_PID)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = fs::write(NS_LAST_PID, format!("{}", before.max(now)));
    p.expect("READY");
    Ok((p.pid == dead).then_some(p))
}

/// A holder lives for `life`, is SIGKILLed, and a new unrelated process gets its exact PID.
/// Whatever that PID's new owner looks like, the dead holder's file is taken over.
/// Returns whether the process start tokens told the two processes apart, or `None` when PIDs
/// cannot be recycled here.
fn recycled_pid_round(tag: &str, life: Duration) -> Option<bool> {
    let _excl = PID_SPACE.write().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new(tag);
    let t = dir.target("worker", Some("long"));
    for attempt in 0..20 {
        let mut holder = Proc::acquirer(&t, "wait");
        let Outcome::Acquired { pid: dead, .. } = holder.outcome() else {
            panic!("the holder did not acquire");
        };
        std::thread::sleep(life);
        holder.kill();
        assert!(!pid_exists(dead));
        let mut idle = match respawn_with_pid(dead) {
            Err(()) => {
                eprintln!("skipped: {NS_LAST_PID} is not writable here");
                return None;
            }
            Ok(None) => {
                eprintln!("attempt {attempt}: PID {dead} was taken by another process");
                expect_takeover(&t, dead);
                continue;
            }
            Ok(Some(p)) => p,
        };
        // The dead holder's PID is alive again, as a different process.
        let Parsed::Ours(rec) = parse_record(&fs::read(&t.path).unwrap()) else {
            panic!("not our record");
        };
        assert_eq!(rec.pid, dead);
        assert!(pid_exists(dead));
        let told_apart = judge_pid(&rec) == PidState::Recycled;
        if told_apart {
            assert!(matches!(inspect(&t.path).unwrap(), Inspection::Stale(r) if r.pid == dead));
            expect_takeover(&t, dead);
            assert!(pid_exists(idle.pid));
            idle.close_stdin();
            idle.wait_success();
        } else {
            // Started in the holder's clock tick: nothing tells it from the holder, which may
            // have closed its descriptor. It is treated as the holder while it runs.
            assert!(
                matches!(inspect(&t.path).unwrap(), Inspection::HeldUnlocked(r, _) if r.pid == dead)
            );
            expect_conflict(&t, dead);
            idle.close_stdin();
            idle.wait_success();
            expect_takeover(&t, dead);
        }
        dir.finish();
        return Some(told_apart);
    }
    panic!("could not recycle a PID in 20 attempts");
}

/// A real recycled PID, reused well after the holder started: the start token tells the new
/// process from the dead holder (`docs/PROTOCOL.md`: *no false life*), and the file
/// is stale.
#[test]
fn a_really_recycled_pid_does_not_keep_a_dead_holders_lock() {
    // Three clock ticks (USER_HZ = 100) between the two process starts.
    if let Some(told_apart) = recycled_pid_round("recycled", Duration::from_millis(30)) {
        assert!(
            told_apart,
            "the start token did not tell a recycled PID apart"
        );
    }
}

/// The same with the PID reused at once: the new process may start in the same clock tick as
/// the holder and then has the same start token (`/proc/<pid>/stat` start time has 10 ms
/// resolution). Then it cannot be told from a holder that closed its descriptor: the lock is
/// refused while it runs (never two owners), and taken over once it is gone.
#[test]
fn a_pid_recycled_within_the_same_clock_tick_is_taken_over_once_it_is_gone() {
    if let Some(told_apart) = recycled_pid_round("recycled-fast", Duration::ZERO) {
        eprintln!("start tokens told the processes apart: {told_apart}");
    }
}

/// The legacy format names a live process that started before the record was written: that
/// process may well be the old holder. Conflict, file untouched.
#[test]
fn legacy_format_naming_a_live_process_started_before_the_record_conflicts() {
    let _shared = pid_space();
    let dir = TestDir::new("legacy-alive");
    let t = dir.made_target("backend", Some("short"));
    let mut idle = Proc::idle();
    std::thread::sleep(Duration::from_millis(10));
    fs::write(&t.path, legacy_file(idle.pid, &now_iso(&t))).unwrap();
    match inspect(&t.path).unwrap() {
        Inspection::Held(r) => {
            assert_eq!(r.pid, idle.pid);
            assert!(r.protocol.is_none());
        }
        other => panic!("expected held, got {other:?}"),
    }
    expect_conflict(&t, idle.pid);

    // Once that process is gone, the same file is stale.
    idle.close_stdin();
    idle.wait_success();
    expect_takeover(&t, idle.pid);
    dir.finish();
}

/// The legacy format names a live process that started after the record was written. Where the
/// OS stored the process's start as a date (macOS, Windows), the PID was recycled: stale. Linux
/// keeps a start only as time since boot, and a date computed from it moves with every step of
/// the wall clock (a step forward makes the very holder look younger than its record): the PID
/// is all there is to judge, and a live PID is a live holder. Conflict, file untouched.
#[test]
fn legacy_format_naming_a_process_started_after_the_record() {
    let _shared = pid_space();
    let dir = TestDir::new("legacy-recycled");
    let t = dir.made_target("backend", Some("short"));
    let mut idle = Proc::idle();
    // Written an hour before the process started (well beyond the clock slack).
    let started = "2020-01-01T00:00:00.000Z";
    fs::write(&t.path, legacy_file(idle.pid, started)).unwrap();
    let Parsed::Legacy(rec) = parse_record(&fs::read(&t.path).unwrap()) else {
        panic!("not read as the legacy format");
    };
    if cfg!(target_os = "linux") {
        assert_eq!(judge_pid(&rec), PidState::Alive);
        assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.pid == idle.pid));
        expect_conflict(&t, idle.pid);
        idle.close_stdin();
        idle.wait_success();
        expect_takeover(&t, idle.pid);
    } else {
        assert_eq!(judge_pid(&rec), PidState::Recycled);
        assert!(matches!(inspect(&t.path).unwrap(), Inspection::Stale(r) if r.pid == idle.pid));
        expect_takeover(&t, idle.pid);
        assert!(pid_exists(idle.pid));
        idle.close_stdin();
        idle.wait_success();
    }
    dir.finish();
}

#[test]
fn legacy_format_naming_a_dead_or_zombie_process_is_stale() {
    let _shared = pid_space();
    let dir = TestDir::new("legacy-dead");
    let t = dir.made_target("worker", None);

    let mut gone = Proc::idle();
    let started = now_iso(&t);
    gone.close_stdin();
    gone.wait_success();
    fs::write(&t.path, legacy_file(gone.pid, &started)).unwrap();
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Stale(r) if r.pid == gone.pid));
    expect_takeover(&t, gone.pid);

    // Killed but not yet reaped by its parent: only a zombie is left, and it holds nothing.
    let mut zombie = Proc::idle();
    let started = now_iso(&t);
    #[cfg(unix)]
    zombie.kill_to_zombie();
    // Windows: the process object of an exited process lives on while `zombie` has its handle.
    #[cfg(windows)]
    zombie.kill();
    fs::write(&t.path, legacy_file(zombie.pid, &started)).unwrap();
    expect_takeover(&t, zombie.pid);
    zombie.wait();
    dir.finish();
}

#[test]
fn bare_pid_files_are_judged_by_liveness() {
    let _shared = pid_space();
    let dir = TestDir::new("bare-pid");
    let t = dir.made_target("backend", None);

    let mut idle = Proc::idle();
    fs::write(&t.path, format!("{}\n", idle.pid)).unwrap();
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.pid == idle.pid));
    expect_conflict(&t, idle.pid);
    assert_eq!(
        fs::read_to_string(&t.path).unwrap(),
        format!("{}\n", idle.pid)
    );

    idle.close_stdin();
    idle.wait_success();
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Stale(r) if r.pid == idle.pid));
    expect_takeover(&t, idle.pid);
    dir.finish();
}
