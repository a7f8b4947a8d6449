//! Times acquire + release cycles of one lock against a server:
//! `cargo run --release -p processlock-pg --example pg_cycle -- <url> [cycles]`.

use std::time::Instant;

use processlock::LockName;
use processlock_pg::{acquire, PgOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: pg_cycle <url> [cycles]");
    let cycles: u32 = args
        .next()
        .map_or(200, |n| n.parse().expect("a number of cycles"));
    let opts = PgOptions::new(url);
    let name = LockName::new("bench", None).unwrap();
    let mut took = Vec::with_capacity(cycles as usize);
    for _ in 0..cycles {
        let started = Instant::now();
        let held = acquire(&opts, &name).unwrap_or_else(|e| panic!("{e}"));
        held.release().unwrap_or_else(|e| panic!("{e}"));
        took.push(started.elapsed());
    }
    took.sort();
    let ms = |i: usize| took[i.min(took.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{cycles} acquire + release cycles: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms(took.len() / 2),
        ms(took.len() * 9 / 10),
        ms(took.len() - 1)
    );
}
