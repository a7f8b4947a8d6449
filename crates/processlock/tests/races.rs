//! `docs/PROTOCOL.md` *one owner* under real races: many processes released
//! together at a barrier go for one lock, fresh or left by a SIGKILLed holder; every winner
//! reports when it owned the lock (CLOCK_MONOTONIC right after `acquire` returned and right
//! before `release`), and no two of those intervals may overlap.
//!
//! `PROCESSLOCK_IT_ROUNDS` raises the number of rounds (default 20);
//! `PROCESSLOCK_IT_STALE_CYCLES` sets the cycles per process of the stale-takeover loop (default
//! 150; fewer under Wine, where each takeover costs milliseconds).

mod support;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use processlock::LockTarget;
use support::{assert_no_overlap, lock_params, Interval, Proc, TestDir};

#[test]
fn child_role() {
    support::child_role();
}

const RACERS: usize = 8;
const HOLD_MS: &str = "20";

/// The race tests run one at a time: on two cores, 8 racers of one test must not be slowed by
/// the racers of another, or they would not start together.
static SERIAL: Mutex<()> = Mutex::new(());

fn rounds() -> usize {
    std::env::var("PROCESSLOCK_IT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn stale_cycles() -> String {
    std::env::var("PROCESSLOCK_IT_STALE_CYCLES").unwrap_or_else(|_| "150".into())
}

fn params(t: &LockTarget, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p = lock_params(t);
    p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    p
}

/// The overlap check itself: it must catch a double owner, nested or partial.
#[test]
fn the_overlap_check_catches_double_owners() {
    let iv = |pid, start, end| Interval { pid, start, end };
    assert_eq!(
        assert_no_overlap("ok", &[iv(2, 30, 40), iv(1, 10, 20), iv(3, 20, 25)]),
        Some(0)
    );
    for bad in [
        vec![iv(1, 10, 20), iv(2, 19, 30)],
        vec![iv(1, 10, 50), iv(2, 20, 30)],
        vec![iv(1, 10, 20), iv(2, 10, 20)],
    ] {
        let r = std::panic::catch_unwind(|| assert_no_overlap("bad", &bad));
        assert!(r.is_err(), "{bad:?} passed the overlap check");
    }
}

#[derive(Default, Debug)]
struct Tally {
    rounds: usize,
    winners: usize,
    rounds_with_later_winners: usize,
    conflicts: usize,
    stale_events: usize,
    min_gap_ns: Option<u64>,
    probes: [u64; 4],
}

/// One round: `RACERS` processes wait at a barrier, then each tries `acquire` once. With
/// `stale`, a holder is SIGKILLed first, leaving its file, and a prober `inspect`s the lock
/// throughout (its brief shared lock must not confuse anyone).
fn race_round(t: &LockTarget, round: usize, stale: bool, tally: &mut Tally) {
    let what = format!("{} round {round}", if stale { "stale" } else { "fresh" });
    let mut holder = stale.then(|| Proc::acquirer(t, "wait"));
    let mut racers: Vec<Proc> = (0..RACERS)
        .map(|_| Proc::spawn("race", &params(t, &[("HOLD_MS", HOLD_MS)])))
        .collect();
    let mut probe = stale.then(|| Proc::spawn("probe", &params(t, &[("HOLD_MS", "40")])));

    let dead = holder.as_mut().map(|h| {
        let pid = match h.outcome() {
            support::Outcome::Acquired { pid, .. } => pid,
            other => panic!("{what}: holder did not acquire: {other:?}"),
        };
        h.kill();
        assert!(t.path.exists(), "{what}: the killed holder's file is there");
        pid
    });
    for p in racers.iter_mut().chain(probe.iter_mut()) {
        p.expect("READY");
    }
    for p in racers.iter_mut().chain(probe.iter_mut()) {
        p.go();
    }

    let mut intervals = Vec::new();
    let mut losers = Vec::new();
    for r in &mut racers {
        let words = r.recv(support::TIMEOUT).unwrap_or_else(|| {
            panic!("{what}: racer {} reported nothing", r.pid);
        });
        match words[0].as_str() {
            "WON" => {
                let start: u64 = words[1].parse().unwrap();
                let end: u64 = words[2].parse().unwrap();
                assert_eq!(
                    words[3], "true",
                    "{what}: winner {}'s file was gone at release",
                    r.pid
                );
                for e in words[4].split(',').filter(|e| *e != "-") {
                    match (e.strip_prefix("stale:"), dead) {
                        (Some(pid), Some(dead)) => {
                            assert_eq!(pid, dead.to_string(), "{what}: stale event {e}");
                            tally.stale_events += 1;
                        }
                        _ if stale && e.starts_with("orphans:") => {}
                        _ => panic!("{what}: unexpected event {e} of winner {}", r.pid),
                    }
                }
                intervals.push(Interval {
                    pid: r.pid,
                    start,
                    end,
                });
            }
            "CONFLICT" => losers.push((r.pid, words[1].parse::<u32>().unwrap())),
            _ => panic!("{what}: racer {} reported {words:?}", r.pid),
        }
        r.wait_success();
    }
    if let Some(p) = probe.as_mut() {
        let w = p.expect("PROBED");
        for (i, n) in w.iter().enumerate() {
            tally.probes[i] += n.parse::<u64>().unwrap();
        }
        p.wait_success();
    }

    assert!(!intervals.is_empty(), "{what}: nobody won");
    if let Some(gap) = assert_no_overlap(&what, &intervals) {
        tally.min_gap_ns = Some(tally.min_gap_ns.map_or(gap, |g| g.min(gap)));
    }
    let winners: HashSet<u32> = intervals.iter().map(|i| i.pid).collect();
    for (loser, holder) in &losers {
        assert!(
            winners.contains(holder),
            "{what}: racer {loser} was refused by PID {holder}, which is not a winner \
             (winners {winners:?}, dead holder {dead:?})"
        );
    }
    assert!(!t.path.exists(), "{what}: a lock file was left behind");
    tally.rounds += 1;
    tally.winners += intervals.len();
    tally.conflicts += losers.len();
    if intervals.len() > 1 {
        tally.rounds_with_later_winners += 1;
    }
}

fn run_rounds(tag: &str, stale: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new(tag);
    let t = dir.target("backend", Some("short"));
    let mut tally = Tally::default();
    let t0 = Instant::now();
    for round in 0..rounds() {
        race_round(&t, round, stale, &mut tally);
        dir.assert_no_temps();
    }
    if stale {
        assert!(tally.stale_events <= tally.rounds, "{tally:?}");
    }
    // `docs/PROTOCOL.md` *complete records*: an onlooker never sees an empty or
    // half-written lock file.
    assert_eq!(
        tally.probes[3], 0,
        "a probe saw an invalid lock file: {tally:?}"
    );
    eprintln!(
        "{tag}: {} rounds of {RACERS} racers in {:?}, no overlap: {tally:?}",
        tally.rounds,
        t0.elapsed()
    );
    dir.finish();
}

#[test]
fn racers_on_a_fresh_lock_never_overlap() {
    run_rounds("race-fresh", false);
}

#[test]
fn racers_on_a_killed_holders_lock_never_overlap() {
    run_rounds("race-stale", true);
}

/// Collects the `IV` lines and the `DONE` line of a `loop` child.
fn loop_intervals(p: &mut Proc, what: &str) -> (Vec<Interval>, u64) {
    let mut out = Vec::new();
    loop {
        let words = p
            .recv(support::TIMEOUT)
            .unwrap_or_else(|| panic!("{what}: loop child {} ended early", p.pid));
        match words[0].as_str() {
            "IV" => out.push(Interval {
                pid: p.pid,
                start: words[1].parse().unwrap(),
                end: words[2].parse().unwrap(),
            }),
            "DONE" => return (out, words[1].parse().unwrap()),
            _ => panic!("{what}: loop child {} reported {words:?}", p.pid),
        }
    }
}

/// 8 processes x 100 acquire/release cycles, retrying on conflict, with a prober looking on.
#[test]
fn a_contended_loop_never_overlaps_and_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("contended");
    let t = dir.target("worker", None);
    let t0 = Instant::now();
    let mut loopers: Vec<Proc> = (0..8)
        .map(|_| {
            Proc::spawn(
                "loop",
                &params(&t, &[("CYCLES", "100"), ("HOLD_US", "100")]),
            )
        })
        .collect();
    let mut probe = Proc::spawn("probe", &params(&t, &[("HOLD_MS", "300")]));
    for p in loopers.iter_mut().chain(std::iter::once(&mut probe)) {
        p.expect("READY");
    }
    for p in loopers.iter_mut().chain(std::iter::once(&mut probe)) {
        p.go();
    }
    let mut all = Vec::new();
    let mut conflicts = 0;
    for p in &mut loopers {
        let (iv, c) = loop_intervals(p, "contended loop");
        assert_eq!(iv.len(), 100);
        all.extend(iv);
        conflicts += c;
        p.wait_success();
    }
    let probed = probe.expect("PROBED");
    assert_eq!(
        probed[3], "0",
        "a probe saw an invalid lock file (PROTOCOL.md: complete records)"
    );
    probe.wait_success();
    let gap = assert_no_overlap("contended loop", &all);
    assert!(!t.path.exists());
    dir.assert_no_temps();
    eprintln!(
        "contended loop: {} ownerships, {conflicts} conflicts, min gap {gap:?} ns, \
         probe held/stale/absent/invalid {probed:?}, {:?}",
        all.len(),
        t0.elapsed()
    );
    dir.finish();
}

/// The same loop where every owner abandons its lock as a dead holder would (closing its
/// descriptor, leaving its file): 1200 stale takeovers (by default) by racing processes, each
/// of which must remove the dead owner's file and never a live owner's.
#[test]
fn a_contended_loop_of_stale_takeovers_never_overlaps() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("contended-stale");
    let t = dir.target("backend", Some("long"));
    let t0 = Instant::now();
    let cycles = stale_cycles();
    let mut loopers: Vec<Proc> = (0..8)
        .map(|_| {
            Proc::spawn(
                "loop",
                &params(
                    &t,
                    &[("CYCLES", &cycles), ("HOLD_US", "50"), ("ABANDON", "1")],
                ),
            )
        })
        .collect();
    for p in &mut loopers {
        p.expect("READY");
    }
    for p in &mut loopers {
        p.go();
    }
    let mut all = Vec::new();
    let mut conflicts = 0;
    for p in &mut loopers {
        let (iv, c) = loop_intervals(p, "stale loop");
        assert_eq!(iv.len().to_string(), cycles);
        all.extend(iv);
        conflicts += c;
        p.wait_success();
    }
    let gap = assert_no_overlap("stale loop", &all);
    // The last owner's file is still there, stale.
    let last = all.iter().max_by_key(|i| i.start).unwrap().pid;
    let a = processlock::testing::acquire(&t, None).unwrap();
    assert_eq!(a.events, [processlock::Event::StaleRemoved { pid: last }]);
    assert!(a.lock.release().unwrap());
    dir.assert_no_temps();
    eprintln!(
        "stale loop: {} ownerships, {conflicts} conflicts, min gap {gap:?} ns, {:?}",
        all.len(),
        t0.elapsed()
    );
    dir.finish();
}

/// Orphan sweeps run while other processes acquire (an acquirer sweeps after every stale
/// takeover; the `clear` command sweeps too): a sweep must never make a live acquirer fail, nor
/// remove its temp file. The window in which a sweep can interfere is a few microseconds per
/// acquire, hence many cycles; `a_sweep_never_locks_a_live_creators_young_temp` (observe.rs)
/// stretches that window to test the same rule deterministically.
#[test]
fn sweeping_orphans_never_disturbs_live_acquirers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (n_loop, n_sweep, cycles) = (4, 2, 300);
    let dir = TestDir::new("sweep-live");
    let t = dir.target("backend", None);
    let cycles = cycles.to_string();
    let t0 = Instant::now();
    let mut loopers: Vec<Proc> = (0..n_loop)
        .map(|_| {
            Proc::spawn(
                "loop",
                &params(&t, &[("CYCLES", cycles.as_str()), ("HOLD_US", "0")]),
            )
        })
        .collect();
    let mut sweepers: Vec<Proc> = (0..n_sweep)
        .map(|_| Proc::spawn("sweep", &params(&t, &[("HOLD_MS", "20000")])))
        .collect();
    for p in loopers.iter_mut().chain(sweepers.iter_mut()) {
        p.expect("READY");
    }
    for p in loopers.iter_mut().chain(sweepers.iter_mut()) {
        p.go();
    }
    let mut all = Vec::new();
    for p in &mut loopers {
        let (iv, _) = loop_intervals(p, "loop under sweeps");
        all.extend(iv);
        p.wait_success();
    }
    let mut sweeps = 0u64;
    for s in &mut sweepers {
        s.close_stdin();
        let w = s.expect("SWEPT");
        assert_eq!(w[1], "0", "a sweep removed a live acquirer's temp file");
        sweeps += w[0].parse::<u64>().unwrap();
        s.wait_success();
    }
    assert_no_overlap("loop under sweeps", &all);
    assert!(!t.path.exists());
    eprintln!(
        "loop under sweeps: {} cycles, {sweeps} sweeps, {:?}",
        all.len(),
        t0.elapsed()
    );
    dir.finish();
}

/// `docs/PROTOCOL.md` *dead holders go at once* with onlookers: processes that
/// `inspect` a dead holder's lock (`getLockInfo`, `locks:check`) hold a shared lock for microseconds each; many of them together hold it
/// almost all the time. They own nothing, so the takeover must still happen, not a conflict
/// naming the dead holder.
#[test]
fn many_concurrent_probes_do_not_turn_a_stale_lock_into_a_conflict() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("probed-stale");
    let t = dir.target("backend", Some("short"));
    let mut holder = Proc::acquirer(&t, "wait");
    let dead = match holder.outcome() {
        support::Outcome::Acquired { pid, .. } => pid,
        other => panic!("holder did not acquire: {other:?}"),
    };
    holder.kill();
    let mut probes: Vec<Proc> = (0..8)
        .map(|_| Proc::spawn("probe", &params(&t, &[("HOLD_MS", "5000")])))
        .collect();
    for p in &mut probes {
        p.expect("READY");
    }
    for p in &mut probes {
        p.go();
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut taker = Proc::acquirer(&t, "release");
    let out = taker.outcome();
    taker.wait_success();
    let mut probed = [0u64; 4];
    for p in &mut probes {
        p.close_stdin();
        for (i, n) in p.expect("PROBED").iter().enumerate() {
            probed[i] += n.parse::<u64>().unwrap();
        }
        p.wait_success();
    }
    eprintln!("takeover under 8 probers: {out:?}; probes held/stale/absent/invalid {probed:?}");
    assert_eq!(
        probed[3], 0,
        "a probe saw an invalid lock file (PROTOCOL.md: complete records)"
    );
    match out {
        support::Outcome::Acquired { events, .. } => {
            assert_eq!(events, [format!("stale:{dead}")])
        }
        other => panic!(
            "a dead holder's lock (PID {dead}) was not taken over while 8 processes inspected \
             it: {other:?}"
        ),
    }
    let _ = std::fs::remove_file(&t.path);
    dir.finish();
}
