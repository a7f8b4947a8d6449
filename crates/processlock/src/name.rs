//! Which lock a process asks for: its type (`backend`, `worker`, ...) and its trade side.

use crate::error::{Error, Result};

/// The environment variable that gives the trade side when none is passed.
pub(crate) const SIDE_ENV: &str = "TRADE_SIDE";

const MAX_TYPE_LEN: usize = 64;
const MAX_SIDE_LEN: usize = 32;
/// Far above any real name, far below what would make a record nobody can read.
pub const MAX_PROCESS_NAME_LEN: usize = 256;

/// A validated lock name. The file name is derived from it and from nothing else, so no input can
/// reach outside the lock directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockName {
    process_type: String,
    trade_side: Option<String>,
}

impl LockName {
    /// `trade_side`: `None` means "no side". A side is written in upper case and without the
    /// white space around it (`" short\n"` is `SHORT`): both only ever make two spellings of one
    /// side one lock, never one side two locks. A given side that is empty or blank is refused:
    /// it would silently be another lock than the side the caller meant (`--side "$SIDE"` with
    /// `SIDE` unset, a config value left empty), so "no side" is said with `None`.
    pub fn new(process_type: &str, trade_side: Option<&str>) -> Result<Self> {
        check("processType", process_type, MAX_TYPE_LEN)?;
        let trade_side = match trade_side {
            None => None,
            Some(side) => {
                check("tradeSide", side.trim(), MAX_SIDE_LEN)?;
                Some(side.trim().to_ascii_uppercase())
            }
        };
        Ok(Self {
            process_type: process_type.to_string(),
            trade_side,
        })
    }

    /// Like `new`, with the side taken from `$TRADE_SIDE` when `trade_side` is `None`. An empty
    /// or blank `$TRADE_SIDE` means no side, as an unset one does (`TRADE_SIDE= cmd`, or
    /// `TRADE_SIDE=` in an env file, is how a shell or a service file says "none").
    pub fn from_env(process_type: &str, trade_side: Option<&str>) -> Result<Self> {
        match trade_side {
            Some(side) => Self::new(process_type, Some(side)),
            None => {
                let env = std::env::var(SIDE_ENV).ok();
                Self::new(
                    process_type,
                    env.as_deref().filter(|s| !s.trim().is_empty()),
                )
            }
        }
    }

    pub fn process_type(&self) -> &str {
        &self.process_type
    }

    /// Upper case, as written in the record (`SHORT`).
    pub fn trade_side(&self) -> Option<&str> {
        self.trade_side.as_deref()
    }

    /// `backend.short.lock`, or `backend.lock` without a side. Lower case throughout, so that
    /// `Backend` and `backend` name the same lock on case-insensitive file systems too.
    pub fn file_name(&self) -> String {
        let ty = self.process_type.to_ascii_lowercase();
        match &self.trade_side {
            Some(side) => format!("{ty}.{}.lock", side.to_ascii_lowercase()),
            None => format!("{ty}.lock"),
        }
    }

    /// `backend (SHORT)`, or `backend` without a side: how messages name the lock.
    pub fn display(&self) -> String {
        match &self.trade_side {
            Some(side) => format!("{} ({side})", self.process_type),
            None => self.process_type.clone(),
        }
    }

    /// The default process name: `trader-short-backend`, or `trader-backend` without a side.
    pub fn default_process_name(&self) -> String {
        match &self.trade_side {
            Some(side) => format!("trader-{}-{}", side.to_ascii_lowercase(), self.process_type),
            None => format!("trader-{}", self.process_type),
        }
    }

    /// Recovers the name from a lock file name (`backend.short.lock`), for listings.
    pub fn from_file_name(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".lock")?;
        let mut parts = stem.split('.');
        let ty = parts.next()?;
        let side = parts.next();
        if parts.next().is_some() {
            return None;
        }
        Self::new(ty, side).ok()
    }
}

/// A process name to write in a record: at most `MAX_PROCESS_NAME_LEN` characters and no
/// control characters, because operators read it in terminals and logs. `None` or empty: the
/// default name.
pub fn check_process_name(name: Option<&str>) -> Result<()> {
    let Some(name) = name else { return Ok(()) };
    let invalid = |problem: String| {
        Err(Error::InvalidOption {
            option: "processName",
            problem,
        })
    };
    let len = name.chars().count();
    if len > MAX_PROCESS_NAME_LEN {
        return invalid(format!(
            "must be at most {MAX_PROCESS_NAME_LEN} characters, got {len}"
        ));
    }
    match name.chars().find(|c| c.is_control()) {
        Some(c) => invalid(format!(
            "must not contain control characters, found U+{:04X}",
            c as u32
        )),
        None => Ok(()),
    }
}

fn check(field: &'static str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            field,
            value: value.chars().take(100).collect(),
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Xorshift;

    #[test]
    fn file_names_and_display() {
        let n = LockName::new("backend", Some("short")).unwrap();
        assert_eq!(n.file_name(), "backend.short.lock");
        assert_eq!(n.trade_side(), Some("SHORT"));
        assert_eq!(n.display(), "backend (SHORT)");
        assert_eq!(n.default_process_name(), "trader-short-backend");
        assert_eq!(
            LockName::new("backend", Some(" short\n")).unwrap(),
            LockName::new("backend", Some("SHORT")).unwrap()
        );
        let n = LockName::new("worker", None).unwrap();
        assert_eq!(n.file_name(), "worker.lock");
        assert_eq!(n.display(), "worker");
        assert_eq!(n.default_process_name(), "trader-worker");
        assert_eq!(
            LockName::new("Backend", None).unwrap().file_name(),
            "backend.lock"
        );
    }

    #[test]
    fn rejects_anything_that_could_leave_the_directory() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a.b",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(65),
        ] {
            let e = LockName::new(bad, None).unwrap_err();
            assert_eq!(e.code(), "LOCK_INVALID_NAME", "{bad:?}");
        }
        for bad in ["../x", "lo.ng", "a b", &"x".repeat(33), "", "  ", "\t\n"] {
            let e = LockName::new("backend", Some(bad)).unwrap_err();
            assert_eq!(e.code(), "LOCK_INVALID_NAME", "{bad:?}");
        }
        assert!(LockName::new(&"x".repeat(64), Some(&"y".repeat(32))).is_ok());
    }

    #[test]
    fn process_names_are_short_printable_text() {
        for ok in [
            None,
            Some(""),
            Some("trader-short-backend"),
            Some("api server (é)"),
        ] {
            assert!(check_process_name(ok).is_ok(), "{ok:?}");
        }
        assert!(check_process_name(Some(&"é".repeat(MAX_PROCESS_NAME_LEN))).is_ok());
        let long = "x".repeat(MAX_PROCESS_NAME_LEN + 1);
        for bad in [
            &long[..],
            "a\nb",
            "\u{1b}[2J",
            "tab\there",
            "del\u{7f}",
            "c1\u{9b}",
        ] {
            let e = check_process_name(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "LOCK_INVALID_OPTION", "{bad:?}");
            assert!(!e.to_string().contains(|c: char| c.is_control()), "{e}");
        }
    }

    #[test]
    fn round_trips_file_names() {
        let n = LockName::new("worker", Some("LONG")).unwrap();
        assert_eq!(
            LockName::from_file_name(&n.file_name())
                .unwrap()
                .file_name(),
            n.file_name()
        );
        assert!(LockName::from_file_name("a.b.c.lock").is_none());
        assert!(LockName::from_file_name("backend.lock.tmp").is_none());
    }

    #[test]
    fn arbitrary_names_are_valid_and_safe_or_refused() {
        let mut rng = Xorshift::new(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.next_u64();
        let alphabet: Vec<char> = "aZ09-_./\\ \0é.:*?\n".chars().collect();
        for _ in 0..20_000 {
            let mut word = |max: u64| -> String {
                (0..next() % max)
                    .map(|_| alphabet[(next() as usize) % alphabet.len()])
                    .collect()
            };
            let (ty, side) = (word(70), word(40));
            match LockName::new(&ty, Some(&side)) {
                Ok(n) => {
                    let f = n.file_name();
                    assert!(f.ends_with(".lock") && !f.starts_with('.'), "{f}");
                    assert!(f
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
                    assert_eq!(LockName::from_file_name(&f).unwrap().file_name(), f);
                }
                Err(e) => assert_eq!(e.code(), "LOCK_INVALID_NAME"),
            }
        }
    }
}
