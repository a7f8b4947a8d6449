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

/// A thread waiting for the lock, and its kernel thread id.
fn waiter(
    t: &LockTarget,
    deadline: Option<Instant>,
    cancel: &Cancel,
) -> (JoinHandle<processlock::Result<Acquired>>, libc::pid_t) {
    let (t, cancel) = (t.clone(), cancel.clone());
    let (give, take) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        give.send(unsafe { libc::gettid() }).unwrap();
        acquire_wait(&t, None, deadline, &cancel)
    });
    (thread, take.recv().unwrap())
}

/// Waits (bounded) until thread `tid` of this process is blocked in `flock`: its wait is in
/// progress, so the signal handler is installed on its behalf.
fn blocked_in_flock(tid: libc::pid_t) {
    let until = Instant::now() + Duration::from_secs(10);
    let path = format!("/proc/self/task/{tid}/syscall");
    loop {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        let number = now.split_whitespace().next().unwrap_or("");
        if number == libc::SYS_flock.to_string() {
            return;
        }
        assert!(
            Instant::now() < until,
            "thread {tid} never blocked in flock: {now}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
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
    let (a, a_tid) = waiter(&t, None, &first);
    let (b, b_tid) = waiter(&t, None, &second);
    blocked_in_flock(a_tid);
    blocked_in_flock(b_tid);
    let during = caught();
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
    let (c, _) = waiter(
        &t,
        Some(Instant::now() + Duration::from_millis(200)),
        &Cancel::new(),
    );
    let (d, d_tid) = waiter(&t, None, &Cancel::new());
    blocked_in_flock(d_tid);
    assert!(matches!(c.join().unwrap(), Err(Error::Conflict(_))));
    assert!(held.lock.release().unwrap());
    let got = d.join().unwrap().unwrap();
    assert_eq!(caught(), before);
    assert!(got.lock.release().unwrap());
    assert_eq!(caught(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
