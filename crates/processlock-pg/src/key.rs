//! The 64-bit advisory lock key of a lock name.
//!
//! Every process that means the same lock must compute the same key, whatever its version,
//! platform or language, so the key is FNV-1a (64 bit, the published offset basis and prime) of
//! `processlock\0<namespace>\0<file name>`, where the file name is the one lock files use
//! (`backend.short.lock`: lower case, so `Backend` and `backend` are one lock on every backend).
//! The hash's bits are read as a signed 64-bit integer, the type `pg_advisory_lock(bigint)` takes.
//! Changing any of this splits every deployed lock in two: it is pinned by a test.

use processlock::LockName;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The advisory lock key of `name` in `namespace`.
pub fn lock_key(namespace: &str, name: &LockName) -> i64 {
    let input = format!("processlock\0{namespace}\0{}", name.file_name());
    fnv1a(input.as_bytes()) as i64
}

/// `key` as an SQL literal of type bigint. A bare `-9223372036854775808` would be read as a
/// numeric, for which there is no advisory lock function.
pub(crate) fn key_literal(key: i64) -> String {
    format!("'{key}'::int8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn keys_are_pinned_across_versions() {
        let n = |t: &str, s: Option<&str>| LockName::new(t, s).unwrap();
        assert_eq!(
            lock_key("processlock", &n("backend", Some("SHORT"))),
            -2_293_726_915_344_702_772
        );
        assert_eq!(
            lock_key("processlock", &n("Backend", Some("short"))),
            lock_key("processlock", &n("backend", Some("SHORT")))
        );
        assert_ne!(
            lock_key("processlock", &n("backend", Some("SHORT"))),
            lock_key("processlock", &n("backend", Some("LONG")))
        );
        assert_ne!(
            lock_key("processlock", &n("backend", None)),
            lock_key("other", &n("backend", None))
        );
    }
}
