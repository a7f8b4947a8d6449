//! Times uncontended acquire + release cycles of the core alone (no Node): the part of the
//! benchmark's cycle that is ours to optimise. `cargo run --release --example cycle -- DIR N`.
use std::time::Instant;

use processlock::testing::acquire;
use processlock::{LockName, LockTarget};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/tmp/pl-cycle".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let target = LockTarget::new(dir, LockName::new("backend", Some("SHORT")).unwrap());
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t0 = Instant::now();
        let lock = acquire(&target, None).expect("uncontended acquire").lock;
        lock.release().expect("release");
        if i >= n / 10 {
            times.push(t0.elapsed().as_nanos() as u64);
        }
    }
    times.sort_unstable();
    println!(
        "{{\"n\":{n},\"median_ns\":{},\"p95_ns\":{}}}",
        times[n / 2],
        times[n * 95 / 100]
    );
}
