//! Waiting acquisition (`acquire_wait`) against real processes: the waiter is blocked in the
//! kernel, not polling, and owns the lock moments after the holder lets go (release, SIGKILL);
//! timeouts report the time waited; cancelling unblocks the thread; holders that cannot be
//! waited on (PID-only files, a file removed by force) are still noticed; many looping waiters
//! never overlap and all get turns.

#![cfg(target_os = "linux")]

mod support;

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use processlock::testing::{acquire, acquire_wait};
use processlock::{force_remove, record_for, Cancel, Error, LockName, LockTarget};
use support::{assert_no_overlap, lock_params, mono_ns, Interval, Proc, TestDir, ROLE_ENV};

/// The multi-process tests run one at a time: on two cores their children would slow each
/// other down and blur the timings.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The children.

#[test]
fn child_role() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("wait") => std::process::exit(role_wait()),
        Ok("wait-loop") => std::process::exit(role_wait_loop()),
        _ => support::child_role(),
    }
}

fn param(key: &str) -> Option<String> {
    std::env::var(format!("PROCESSLOCK_IT_{key}")).ok()
}

fn say(line: impl AsRef<str>) {
    let mut out = io::stdout().lock();
    let _ = write!(out, "\n@@{}\n", line.as_ref());
    let _ = out.flush();
}

fn target_from_env() -> LockTarget {
    let side = param("SIDE");
    LockTarget::new(
        param("DIR").unwrap(),
        LockName::new(&param("TYPE").unwrap(), side.as_deref()).unwrap(),
    )
}

/// Signals whose disposition is not the default, among those an app cares about.
fn touched_signals() -> Vec<&'static str> {
    let named = [
        (libc::SIGINT, "INT"),
        (libc::SIGTERM, "TERM"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
        (libc::SIGALRM, "ALRM"),
        (libc::SIGCHLD, "CHLD"),
    ];
    named
        .into_iter()
        // SAFETY: a zeroed sigaction is a valid value (no handler, empty mask), and with a null
        // new action the call only writes the current one into `old`.
        .filter(|(sig, _)| unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(*sig, std::ptr::null(), &mut old);
            old.sa_sigaction != libc::SIG_DFL
        })
        .map(|(_, name)| name)
        .collect()
}

/// `WAITING`, then one `acquire_wait` (`WAIT_MS`, default 30 s; `NOSIGNAL=1`: no wake-up
/// signal, so the wait polls). Reports `GOT <ns>` (CLOCK_MONOTONIC when it returned),
/// `CONFLICT <holder> <waited_ms>` or `ERROR <code>`, then `SIGNALS <touched>` and releases.
fn role_wait() -> i32 {
    if param("NOSIGNAL").as_deref() == Some("1") {
        std::env::set_var("PROCESSLOCK_WAIT_SIGNAL", "none");
    }
    let target = target_from_env();
    let wait = Duration::from_millis(param("WAIT_MS").map_or(30_000, |v| v.parse().unwrap()));
    say("WAITING");
    let result = acquire_wait(&target, None, Some(Instant::now() + wait), &Cancel::new());
    let t = mono_ns();
    let held = match result {
        Ok(a) => {
            say(format!("GOT {t}"));
            Some(a)
        }
        Err(Error::Conflict(c)) => {
            say(format!("CONFLICT {} {}", c.holder.pid, c.waited_ms));
            None
        }
        Err(e) => {
            say(format!("ERROR {}", e.code()));
            None
        }
    };
    say(format!("SIGNALS {}", touched_signals().join(",")));
    if let Some(a) = held {
        a.lock.release().unwrap();
    }
    0
}

/// READY, barrier, then wait/hold `HOLD_US` (busy)/release in a loop without pause for
/// `RUN_MS`. Reports `IV <start> <end> <waited ns>` per ownership, then `DONE`.
fn role_wait_loop() -> i32 {
    let target = target_from_env();
    let run = Duration::from_millis(param("RUN_MS").unwrap().parse().unwrap());
    let hold = param("HOLD_US").unwrap().parse::<u64>().unwrap() * 1000;
    say("READY");
    let mut b = [0u8; 1];
    if io::Read::read(&mut io::stdin(), &mut b).ok() != Some(1) {
        return 3;
    }
    let end_at = Instant::now() + run;
    let mut out = String::from("\n");
    while Instant::now() < end_at {
        let t0 = mono_ns();
        let a = match acquire_wait(&target, None, Some(end_at), &Cancel::new()) {
            Ok(a) => a,
            Err(Error::Conflict(_)) => break,
            Err(e) => {
                say(format!("ERROR {}", e.code()));
                return 1;
            }
        };
        let start = mono_ns();
        while mono_ns() < start + hold {
            std::hint::spin_loop();
        }
        let end = mono_ns();
        a.lock.release().unwrap();
        out.push_str(&format!("@@IV {start} {end} {}\n", start - t0));
    }
    out.push_str("@@DONE\n");
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    0
}

// ---------------------------------------------------------------------------------------------
// The parent's side.

/// Blocked flock requests of a process, from /proc/locks (`N: -> FLOCK ADVISORY READ <pid> ..`).
fn blocked_in(pid: u32) -> usize {
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.contains("->") && l.split_whitespace().any(|w| w == pid.to_string()))
        .count()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn waiter(target: &LockTarget, extra: &[(&str, &str)]) -> Proc {
    let mut params = lock_params(target);
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut w = Proc::spawn("wait", &params);
    w.expect("WAITING");
    w
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

#[derive(Clone, Copy, Debug)]
enum End {
    Release,
    Kill,
}

/// One handover between processes: ms from the parent's signal to the holder until the
/// waiter's `acquire_wait` returned (so it includes the holder's own reaction).
fn handover(end: End, extra: &[(&str, &str)]) -> f64 {
    let dir = TestDir::new("wait-handover");
    let t = dir.target("backend", Some("SHORT"));
    let mut holder = Proc::acquirer(&t, "wait");
    assert!(matches!(
        holder.outcome(),
        support::Outcome::Acquired { .. }
    ));
    let mut w = waiter(&t, extra);
    let polling = extra.contains(&("NOSIGNAL", "1"));
    if polling {
        // Nothing to see in /proc/locks: give it time to be waiting.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(blocked_in(w.pid), 0, "a polling waiter blocks nowhere");
    } else {
        wait_until("the waiter is blocked in flock", || blocked_in(w.pid) == 1);
    }
    let t0 = mono_ns();
    match end {
        End::Release => holder.close_stdin(),
        End::Kill => {
            holder.kill_with(libc::SIGKILL);
        }
    }
    let got: u64 = w.expect("GOT")[0].parse().unwrap();
    assert_eq!(w.expect("SIGNALS"), Vec::<String>::new(), "signals touched");
    w.wait_success();
    if let End::Release = end {
        holder.expect("RELEASED");
        holder.wait_success();
    }
    dir.finish();
    (got - t0) as f64 / 1e6
}

fn handovers(end: End, extra: &[(&str, &str)], label: &str) {
    let _s = serial();
    let ms: Vec<f64> = (0..5).map(|_| handover(end, extra)).collect();
    let (median, max) = median_max(ms.clone());
    eprintln!("handover after {end:?} ({label}): median {median:.2} ms, max {max:.2} ms: {ms:.2?}");
    assert!(median < 100.0, "median {median} ms");
    assert!(max < 900.0, "max {max} ms: found by the re-check, not told");
}

#[test]
fn a_blocked_waiter_gets_the_lock_when_the_holder_releases() {
    handovers(End::Release, &[], "blocked in flock");
}

#[test]
fn a_blocked_waiter_gets_the_lock_when_the_holder_is_killed() {
    handovers(End::Kill, &[], "blocked in flock");
}

#[test]
fn without_a_signal_the_wait_polls_and_still_hands_over() {
    handovers(End::Release, &[("NOSIGNAL", "1")], "polling");
}

#[test]
fn a_wait_that_times_out_names_the_holder_and_the_time_waited() {
    let _s = serial();
    let dir = TestDir::new("wait-timeout");
    let t = dir.target("backend", Some("SHORT"));
    let mut holder = Proc::acquirer(&t, "wait");
    holder.outcome();
    let t0 = Instant::now();
    let mut w = waiter(&t, &[("WAIT_MS", "250")]);
    let words = w.expect("CONFLICT");
    assert_eq!(words[0], holder.pid.to_string());
    let waited: u64 = words[1].parse().unwrap();
    assert!((250..2000).contains(&waited), "waited {waited} ms");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    w.expect("SIGNALS");
    w.wait_success();
    holder.close_stdin();
    holder.expect("RELEASED");
    dir.finish();
}

#[test]
fn cancel_unblocks_the_waiting_thread_and_leaves_nothing() {
    let _s = serial();
    let dir = TestDir::new("wait-cancel");
    let t = dir.target("backend", Some("SHORT"));
    let mut holder = Proc::acquirer(&t, "wait");
    holder.outcome();
    let me = std::process::id();
    let before = blocked_in(me);
    let cancel = Cancel::new();
    let (t2, c2) = (t.clone(), cancel.clone());
    let waiting = std::thread::spawn(move || acquire_wait(&t2, None, None, &c2));
    wait_until("our thread is blocked in flock", || {
        blocked_in(me) == before + 1
    });
    let asked = Instant::now();
    cancel.cancel();
    let err = waiting.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Aborted), "{err:?}");
    assert!(asked.elapsed() < Duration::from_millis(500));
    assert_eq!(blocked_in(me), before, "the request left the kernel");
    holder.close_stdin();
    holder.expect("RELEASED");
    dir.finish();
}

#[test]
fn a_pid_only_holder_is_waited_for_until_its_process_ends() {
    let _s = serial();
    let dir = TestDir::new("wait-legacy");
    let t = dir.made_target("backend", Some("SHORT"));
    let mut idle = Proc::idle();
    // The legacy format: a PID and a start time, no protocol marker, no OS lock.
    let mut record = record_for(&t, idle.pid, None);
    record.protocol = None;
    record.start_token = None;
    std::fs::write(&t.path, record.to_json()).unwrap();
    let t2 = t.clone();
    let waiting = std::thread::spawn(move || {
        let r = acquire_wait(
            &t2,
            None,
            Some(Instant::now() + Duration::from_secs(20)),
            &Cancel::new(),
        );
        (mono_ns(), r)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "the live PID-only holder must be waited for"
    );
    let t0 = mono_ns();
    idle.kill_with(libc::SIGKILL);
    let (got, r) = waiting.join().unwrap();
    let a = r.unwrap();
    let ms = (got - t0) as f64 / 1e6;
    eprintln!("PID-only holder killed: the waiter took over after {ms:.1} ms");
    assert!(ms < 500.0, "{ms} ms");
    assert!(a.lock.release().unwrap());
    dir.finish();
}

#[test]
fn a_lock_file_removed_by_force_is_noticed_by_the_recheck() {
    let _s = serial();
    let dir = TestDir::new("wait-forced");
    let t = dir.target("backend", Some("SHORT"));
    let held = acquire(&t, None).unwrap();
    let t2 = t.clone();
    let waiting = std::thread::spawn(move || {
        acquire_wait(
            &t2,
            None,
            Some(Instant::now() + Duration::from_secs(20)),
            &Cancel::new(),
        )
    });
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    // The holder keeps its lock on the old inode; the path is free for anyone.
    assert!(force_remove(&t.path).unwrap());
    let a = waiting.join().unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        !held.lock.release().unwrap(),
        "the old holder removes nothing"
    );
    assert!(a.lock.release().unwrap());
    dir.finish();
}

#[test]
fn looping_waiters_never_overlap_and_all_get_turns() {
    const WAITERS: usize = 6;
    let _s = serial();
    let dir = TestDir::new("wait-loop");
    let t = dir.target("backend", Some("SHORT"));
    let mut params = lock_params(&t);
    params.push(("RUN_MS".into(), "2000".into()));
    params.push(("HOLD_US".into(), "1000".into()));
    let mut procs: Vec<Proc> = (0..WAITERS)
        .map(|_| Proc::spawn("wait-loop", &params))
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.go();
    }
    let mut intervals = Vec::new();
    let mut wins: HashMap<u32, usize> = HashMap::new();
    let mut waits = Vec::new();
    for p in &mut procs {
        loop {
            let words = p.recv(Duration::from_secs(60)).expect("a report");
            match words[0].as_str() {
                "IV" => {
                    let n = |i: usize| words[i].parse::<u64>().unwrap();
                    intervals.push(Interval {
                        pid: p.pid,
                        start: n(1),
                        end: n(2),
                    });
                    waits.push(n(3) as f64 / 1e6);
                    *wins.entry(p.pid).or_default() += 1;
                }
                "DONE" => break,
                other => panic!("unexpected report {other} {words:?}"),
            }
        }
        p.wait_success();
    }
    assert_no_overlap("looping waiters", &intervals);
    let counts: Vec<usize> = procs
        .iter()
        .map(|p| wins.get(&p.pid).copied().unwrap_or(0))
        .collect();
    let (median, max) = median_max(waits);
    eprintln!(
        "{} ownerships in 2 s by {WAITERS} looping waiters (1 ms hold, no pause between release and the next wait): wins {counts:?}; wait per acquisition median {median:.2} ms, max {max:.1} ms",
        intervals.len()
    );
    for n in &counts {
        assert!(*n >= 1, "a waiter never got the lock: {counts:?}");
    }
    dir.finish();
}
