//! Tells when processes end, for the torture runs of `processlock run --url` process trees
//! (bench/torture-tree.js): reads lines `<pid> <start ticks>` on stdin and, for each, prints
//! `W <pid>` once it watches it, then `<pid> <ns>` once that process has ended, `ns` on
//! CLOCK_MONOTONIC (Node's `process.hrtime.bigint()`), or `<pid> gone` if it was not that
//! process any more when asked.
//! A pidfd becomes readable the moment its process exits (before anyone reaps it), so the time
//! is never earlier than the death: an overlap measured with it is never hidden.

#[cfg(target_os = "linux")]
fn main() {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let (Some(pid), Some(ticks)) = (words.next(), words.next()) else {
            continue;
        };
        let (Ok(pid), ticks) = (pid.parse::<i32>(), ticks.to_string()) else {
            continue;
        };
        std::thread::spawn(move || {
            let answer = match watch(pid, &ticks) {
                Some(ns) => format!("{pid} {ns}\n"),
                None => format!("{pid} gone\n"),
            };
            let _ = std::io::stdout().lock().write_all(answer.as_bytes());
        });
    }
    // Stdin closed: the runner is done; answers still pending are not wanted.
}

#[cfg(target_os = "linux")]
fn start_ticks(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_string)
}

/// CLOCK_MONOTONIC in nanoseconds once `pid` (started at `ticks`) has ended.
#[cfg(target_os = "linux")]
fn watch(pid: i32, ticks: &str) -> Option<u128> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if fd < 0 || start_ticks(pid).as_deref() != Some(ticks) {
        return None;
    }
    {
        use std::io::Write;
        let _ = std::io::stdout()
            .lock()
            .write_all(format!("W {pid}\n").as_bytes());
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd of ours, without a time limit.
    while unsafe { libc::poll(&mut p, 1, -1) } != 1 {}
    // SAFETY: clock_gettime into our own struct.
    let ns = unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
        t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
    };
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    Some(ns)
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("death_watch: Linux only (pidfd)");
    std::process::exit(2);
}
