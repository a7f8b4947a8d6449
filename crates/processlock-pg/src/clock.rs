//! Deadlines that a suspended machine cannot stretch.
//!
//! `Instant` (and every Tokio timer) stops while the machine sleeps on Linux and macOS, but the
//! server's clock does not: after a suspend longer than the lease, the server has freed the lock
//! while the holder's own deadline still looks far away. So each deadline is also kept on a clock
//! that counts sleep (`CLOCK_BOOTTIME` on Linux, `CLOCK_MONOTONIC` on Apple systems), and it has
//! passed when it has passed on either.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub mono: Instant,
    /// Nanoseconds on the clock that counts sleep, where there is one.
    pub with_sleep: Option<u64>,
}

impl Stamp {
    pub fn now() -> Self {
        Self {
            mono: Instant::now(),
            with_sleep: with_sleep_ns(),
        }
    }

    pub fn plus(self, d: Duration) -> Self {
        Self {
            mono: self.mono + d,
            with_sleep: self
                .with_sleep
                .map(|ns| ns.saturating_add(d.as_nanos() as u64)),
        }
    }

    /// The earlier of the two, on each clock.
    pub fn min(self, other: Self) -> Self {
        Self {
            mono: self.mono.min(other.mono),
            with_sleep: match (self.with_sleep, other.with_sleep) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.mono
            || self
                .with_sleep
                .zip(with_sleep_ns())
                .is_some_and(|(deadline, now)| now >= deadline)
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn with_sleep_ns() -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = libc::CLOCK_BOOTTIME;
    #[cfg(target_vendor = "apple")]
    let clock = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and `clock` is
    // a clock id this platform defines.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn with_sleep_ns() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_passed_on_the_sleep_counting_clock_has_passed() {
        let now = Stamp::now();
        let later = now.plus(Duration::from_secs(3600));
        assert!(!later.passed());
        assert!(now.passed());
        if let Some(ns) = now.with_sleep {
            // As after a suspend: far off by `Instant`, already due by the clock that slept.
            let slept = Stamp {
                mono: later.mono,
                with_sleep: Some(ns),
            };
            assert!(slept.passed());
            assert_eq!(later.min(slept), slept);
        }
    }
}
