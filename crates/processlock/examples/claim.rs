//! A claimant of a lock handed down by `processlock run`, for the torture runs: the core's
//! `acquire` without Node, so that rounds of many processes cost milliseconds.
//!
//! ```text
//! claim one T0 HOLD_US     at CLOCK_MONOTONIC instant T0 (ns; 0: at once) take `backend`
//!                          (side SHORT) in $PROCESSLOCK_DIR; on success print `A <ns>`, hold
//!                          a random 0..HOLD_US us, print `R <ns>` and release; on a conflict
//!                          print `L`; on any other error `E <code>`
//! claim fan N T0 HOLD_US   start N `claim one` at once (sharing stdout) and wait for them
//! claim fan-closed N T0 HOLD_US
//!                          the same, but the claimants do not inherit the lock's descriptors
//!                          (as behind a launcher that closes them): they must ask `run`
//! ```
// `processlock run` hands locks over on Unix only.
#[cfg(unix)]
mod claim {
    use std::io::Write;
    use std::time::Duration;

    use processlock::testing::acquire;
    use processlock::{Error, LockName, LockTarget};

    fn mono_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime into our own struct.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn say(line: String) {
        // One write per line: the lines of processes sharing the pipe never interleave.
        let _ = std::io::stdout()
            .lock()
            .write_all(format!("{line}\n").as_bytes());
    }

    /// A random number below `n` (0 for 0), from the clock and the PID: enough for hold times.
    fn random_below(n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut x = mono_ns() ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x % n
    }

    fn one(t0: u64, hold_us: u64) {
        let dir = std::env::var_os("PROCESSLOCK_DIR").expect("PROCESSLOCK_DIR");
        let target = LockTarget::new(dir, LockName::new("backend", Some("SHORT")).unwrap());
        let now = mono_ns();
        if t0 > now {
            std::thread::sleep(Duration::from_nanos(t0 - now));
        }
        match acquire(&target, None) {
            Ok(acquired) => {
                say(format!("A {}", mono_ns()));
                std::thread::sleep(Duration::from_micros(random_below(hold_us + 1)));
                say(format!("R {}", mono_ns()));
                if let Err(e) = acquired.lock.release() {
                    say(format!("E release:{}", e.code()));
                }
            }
            Err(Error::Conflict(_)) => say("L".into()),
            Err(e) => say(format!("E {}", e.code())),
        }
    }

    /// Marks the descriptors `processlock run` named (the numbers before the socket's address)
    /// close-on-exec: this process keeps holding the lock, its children get none of them.
    fn keep_inherited_to_myself() {
        let value = std::env::var("PROCESSLOCK_INHERITED").expect("PROCESSLOCK_INHERITED");
        for fd in value.split(':').take(2) {
            let fd: libc::c_int = fd.parse().expect("a descriptor number");
            // SAFETY: fcntl flag calls on a descriptor number; an invalid one only fails.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let num = |i: usize| -> u64 { args.get(i).and_then(|v| v.parse().ok()).expect("a number") };
        match args.first().map(String::as_str) {
            Some("one") => one(num(1), num(2)),
            Some(mode @ ("fan" | "fan-closed")) => {
                if mode == "fan-closed" {
                    keep_inherited_to_myself();
                }
                let me = std::env::current_exe().expect("own path");
                let children: Vec<_> = (0..num(1))
                    .map(|_| {
                        std::process::Command::new(&me)
                            .args(["one", &args[2], &args[3]])
                            .spawn()
                            .expect("spawn")
                    })
                    .collect();
                for mut c in children {
                    let _ = c.wait();
                }
            }
            _ => {
                eprintln!("usage: claim one T0 HOLD_US | claim fan|fan-closed N T0 HOLD_US");
                std::process::exit(2);
            }
        }
    }
}

#[cfg(unix)]
fn main() {
    claim::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("claim: processlock run hands a lock over on Unix only");
    std::process::exit(2);
}
