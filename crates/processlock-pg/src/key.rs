//! The 64-bit advisory lock key of a lock name.
//!
//! Every process that means the same lock must compute the same key, whatever its version or
//! platform, and no role that cannot read the service's tables should be able to compute it in
//! advance (to take the lock first, or before the service starts). So the key is SipHash-2-4,
//! keyed with the database's secret salt (128 random bits kept in the secret table, which only
//! the service's role may read: see `table.rs`), of `processlock\0<namespace>\0<file name>`,
//! where the file name is the one lock files use (`backend.short.lock`: lower case, so
//! `Backend` and `backend` are one lock on every backend). The hash's bits are read as a
//! signed 64-bit integer, the type `pg_advisory_lock(bigint)` takes. Changing any of this
//! splits every deployed lock in two: it is pinned by a test.
//!
//! A key cannot be hidden from a role that may connect while the lock is held (`pg_locks`
//! shows every held key to every role); that role is kept off the database by
//! `REVOKE CONNECT`, and named in the conflict when it holds a key anyway.

use std::hash::{BuildHasher, Hasher};

use processlock::LockName;

/// The per-database secret that keys every lock key: two SipHash keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Salt(pub u64, pub u64);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// 128 bits nobody else can predict: each `RandomState` is seeded from the operating
    /// system's random source, and SipHash under a secret key gives unpredictable output.
    pub(crate) fn random() -> Self {
        let word = |n: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(n);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        Salt(word(1), word(2))
    }

    /// As the secret table keeps it: 32 hexadecimal digits.
    pub(crate) fn to_text(self) -> String {
        format!("{:016x}{:016x}", self.0, self.1)
    }

    pub(crate) fn from_text(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let a = u64::from_str_radix(&text[..16], 16).ok()?;
        let b = u64::from_str_radix(&text[16..], 16).ok()?;
        Some(Salt(a, b))
    }
}

#[allow(deprecated)] // `SipHasher` is SipHash-2-4, a fixed algorithm; only the name is deprecated.
fn siphash24(salt: Salt, bytes: &[u8]) -> u64 {
    let mut h = std::hash::SipHasher::new_with_keys(salt.0, salt.1);
    h.write(bytes);
    h.finish()
}

/// The advisory lock key of `name` in `namespace`, on the database whose salt is `salt`.
pub fn lock_key(salt: Salt, namespace: &str, name: &LockName) -> i64 {
    let input = format!("processlock\0{namespace}\0{}", name.file_name());
    siphash24(salt, input.as_bytes()) as i64
}

/// The key an older version computed, unsalted: FNV-1a (64 bit) of the same input. Only looked
/// for, so that an instance of this version does not start beside one of the older version.
pub(crate) fn unsalted_key(namespace: &str, name: &LockName) -> i64 {
    let input = format!("processlock\0{namespace}\0{}", name.file_name());
    input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) as i64
}

/// `key` as an SQL literal of type bigint. A bare `-9223372036854775808` would be read as a
/// numeric, for which there is no advisory lock function.
pub(crate) fn key_literal(key: i64) -> String {
    format!("'{key}'::pg_catalog.int8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_test_vectors() {
        // The reference implementation's vectors: key 00 01 .. 0f, messages 00 01 .. (n-1).
        let key = Salt(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(siphash24(key, b""), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(key, &[0]), 0x74f8_39c5_93dc_67fd);
    }

    #[test]
    fn keys_are_pinned_across_versions() {
        let n = |t: &str, s: Option<&str>| LockName::new(t, s).unwrap();
        let salt = Salt(1, 2);
        let pinned = lock_key(salt, "processlock", &n("backend", Some("SHORT")));
        assert_eq!(
            pinned,
            lock_key(salt, "processlock", &n("Backend", Some("short")))
        );
        assert_ne!(
            pinned,
            lock_key(salt, "processlock", &n("backend", Some("LONG")))
        );
        assert_ne!(
            lock_key(salt, "processlock", &n("backend", None)),
            lock_key(salt, "other", &n("backend", None))
        );
        assert_ne!(
            pinned,
            lock_key(Salt(1, 3), "processlock", &n("backend", Some("SHORT")))
        );
        assert_eq!(pinned, 206_270_567_605_668_656);
    }

    #[test]
    fn the_older_unsalted_key_is_still_known() {
        let n = LockName::new("backend", Some("SHORT")).unwrap();
        assert_eq!(unsalted_key("processlock", &n), -2_293_726_915_344_702_772);
    }

    #[test]
    fn salts_are_random_and_read_back() {
        let (a, b) = (Salt::random(), Salt::random());
        assert_ne!(a, b);
        assert_eq!(Salt::from_text(&a.to_text()), Some(a));
        assert_eq!(Salt::from_text("xyz"), None);
    }
}
