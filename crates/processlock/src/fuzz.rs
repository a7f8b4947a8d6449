//! The generator the fuzz tests of the core and the command share.

/// A small deterministic generator (xorshift64) for the fuzz tests: the same inputs every run,
/// so a failure can be replayed.
pub struct Xorshift(u64);

impl Xorshift {
    /// `start` must not be 0 (the generator would stay at 0).
    pub fn new(start: u64) -> Self {
        assert_ne!(start, 0);
        Xorshift(start)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
