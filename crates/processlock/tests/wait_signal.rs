//! The real-time signal that interrupts blocked waits on Linux is handled only while a wait is in
//! progress: the process's caught-signal mask (`SigCgt` in /proc/self/status) gains our signal
//! when waits begin, keeps it while any wait is still in progress, and is back to what it was
//! when the last one ends, after a timeout, a cancel or a handover alike. Its own test binary:
//! no other test in this process waits meanwhile.

#![cfg(target_os = "linux")]

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use processlock::testing::{acquire, acquire_wait};
use processlock::{Acquired, Cancel, Error, LockName, LockTarget};

/// The signals this process catches, as a bit mask (bit n-1 for signal n).
fn caught() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("SigCgt:")).unwrap();
    u64::from_str_radix(line["SigCgt:".len()..].trim(), 16).unwrap()
}

/// Waits (bounded) until the caught mask is `pred`; returns it.
fn caught_until(pred: impl Fn(u64) -> bool) -> u64 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = caught();
        if pred(now) || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn waiter(
    t: &LockTarget,
    deadline: Option<Instant>,
    cancel: &Cancel,
) -> JoinHandle<processlock::Result<Acquired>> {
    let (t, cancel) = (t.clone(), cancel.clone());
    std::thread::spawn(move || acquire_wait(&t, None, deadline, &cancel))
}

#[test]
fn the_wait_signal_handler_is_there_only_while_waits_are_in_progress() {
    let dir = std::env::temp_dir().join(format!("pl-wait-signal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = LockTarget::new(&dir, LockName::new("backend", Some("SHORT")).unwrap());
    let before = caught();
    let held = acquire(&t, None).unwrap();

    // Two waits in progress: our signal is caught.
    let (first, second) = (Cancel::new(), Cancel::new());
    let a = waiter(&t, None, &first);
    let b = waiter(&t, None, &second);
    let during = caught_until(|m| m & !before != 0);
    let ours = during & !before;
    assert_eq!(
        ours.count_ones(),
        1,
        "one signal more while waiting: {before:#x} -> {during:#x}"
    );
    let signal = ours.trailing_zeros() as i32 + 1;
    assert!(
        (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal),
        "signal {signal}"
    );

    // One ends (cancelled): the other still needs the handler.
    first.cancel();
    assert!(matches!(a.join().unwrap(), Err(Error::Aborted)));
    assert_eq!(
        caught() & ours,
        ours,
        "still caught while a wait is in progress"
    );
    // The last one ends: back to what it was.
    second.cancel();
    assert!(matches!(b.join().unwrap(), Err(Error::Aborted)));
    assert_eq!(
        caught(),
        before,
        "nothing of ours left once no wait is in progress"
    );

    // Again, ending by the deadline, and by a handover; every wait still ends when it should.
    let c = waiter(
        &t,
        Some(Instant::now() + Duration::from_millis(200)),
        &Cancel::new(),
    );
    let d = waiter(&t, None, &Cancel::new());
    caught_until(|m| m & !before != 0);
    assert!(matches!(c.join().unwrap(), Err(Error::Conflict(_))));
    assert!(held.lock.release().unwrap());
    let got = d.join().unwrap().unwrap();
    assert_eq!(caught(), before);
    assert!(got.lock.release().unwrap());
    assert_eq!(caught(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
