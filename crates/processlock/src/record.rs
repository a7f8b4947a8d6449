//! The JSON record inside a lock file, and the formats older writers left behind.

use serde::{Deserialize, Serialize};

/// The protocol marker. A file that carries it was written by a holder that keeps an OS lock on
/// it for as long as it lives, so the OS lock alone tells whether it is held.
pub const PROTOCOL: &str = "processlock/1";

/// The largest record we read. Anything bigger is not a record.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Who holds (or held) a lock. The first four keys are the legacy PID-only format, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub pid: u32,
    /// ISO 8601 UTC with milliseconds; empty when a PID-only file did not say.
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub trade_side: Option<String>,
    #[serde(default)]
    pub process_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Identifies the process instance behind `pid`: equal tokens mean the same process, so a
    /// recycled PID is told apart from the original holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_token: Option<String>,
    /// `processlock/1` for our files; absent in files of older writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Unique to one taking of the lock: the lock's generation file names the hold its fencing
    /// token went to (`fencing.rs`). Absent in files of older writers, which then show no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// The holder's fencing token, where the reader of the record found it (a conflict names the
    /// holder with it). Never in the file, which carries `hold_id` instead.
    #[serde(skip)]
    pub fencing_token: Option<String>,
}

impl Record {
    /// What a bare-PID file says: a PID and nothing else.
    pub fn pid_only(pid: u32) -> Self {
        Record {
            pid,
            started: String::new(),
            trade_side: None,
            process_name: String::new(),
            process_type: None,
            hostname: None,
            start_token: None,
            protocol: None,
            hold_id: None,
            fencing_token: None,
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a record always serializes");
        s.push('\n');
        s
    }

    /// Written by a holder that keeps an OS lock on the file (any `processlock/N`).
    pub fn is_ours(&self) -> bool {
        self.protocol
            .as_deref()
            .is_some_and(|p| p.starts_with("processlock/"))
    }
}

/// What a lock file's bytes turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A record with our protocol marker.
    Ours(Record),
    /// The legacy JSON without a marker, or a bare PID: judged by PID liveness.
    Legacy(Record),
    /// Empty, truncated, garbage or absurd: nobody can be named as its holder.
    Invalid(String),
}

pub fn parse_record(bytes: &[u8]) -> Parsed {
    if bytes.len() > MAX_RECORD_BYTES {
        return Parsed::Invalid(format!("{} bytes, more than a record", bytes.len()));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim(),
        Err(_) => return Parsed::Invalid("not UTF-8 text".into()),
    };
    if text.is_empty() {
        return Parsed::Invalid("empty file".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(pid) if valid_pid(pid) => Parsed::Legacy(Record::pid_only(pid)),
            _ => Parsed::Invalid(format!("PID {text} out of range")),
        };
    }
    let record: Record = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return Parsed::Invalid(format!("not a lock record: {e}")),
    };
    if !valid_pid(record.pid) {
        return Parsed::Invalid(format!("PID {} out of range", record.pid));
    }
    if record.is_ours() {
        Parsed::Ours(record)
    } else {
        Parsed::Legacy(record)
    }
}

/// PID 0 names the caller's process group in `kill`, and nothing real is above 2^22 on Linux
/// or 2^31 anywhere: such values are garbage, not holders.
fn valid_pid(pid: u32) -> bool {
    pid > 0 && pid <= i32::MAX as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Xorshift;

    fn ours() -> Record {
        Record {
            pid: 51172,
            started: "2025-10-18T22:38:49.123Z".into(),
            trade_side: Some("SHORT".into()),
            process_name: "trader-short-backend".into(),
            process_type: Some("backend".into()),
            hostname: Some("h".into()),
            start_token: Some("linux:b:1".into()),
            protocol: Some(PROTOCOL.into()),
            hold_id: Some("00ab00cd00ef0012".into()),
            fencing_token: None,
        }
    }

    #[test]
    fn writes_the_legacy_keys_first_and_round_trips() {
        let json = ours().to_json();
        assert!(json.starts_with("{\n  \"pid\": 51172,\n  \"started\": \"2025-10-18T22:38:49.123Z\",\n  \"tradeSide\": \"SHORT\",\n  \"processName\": \"trader-short-backend\",\n"), "{json}");
        assert_eq!(parse_record(json.as_bytes()), Parsed::Ours(ours()));
    }

    #[test]
    fn reads_pid_only_json_and_bare_pids_as_legacy() {
        let legacy = br#"{"pid": 51172, "started": "2025-10-18T22:38:49.123Z", "tradeSide": "SHORT", "processName": "trader-short-backend"}"#;
        match parse_record(legacy) {
            Parsed::Legacy(r) => {
                assert_eq!((r.pid, r.trade_side.as_deref()), (51172, Some("SHORT")))
            }
            other => panic!("{other:?}"),
        }
        match parse_record(b"12345\n") {
            Parsed::Legacy(r) => assert_eq!(r.pid, 12345),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn everything_else_is_invalid_not_a_panic() {
        let cases: Vec<&[u8]> = vec![
            b"",
            b"   \n",
            b"{",
            b"{\"pid\": 1",
            b"null",
            b"[]",
            b"\"x\"",
            b"0",
            b"-5",
            b"99999999999",
            b"{\"pid\": -1}",
            b"{\"pid\": 0}",
            b"{\"pid\": \"12\"}",
            b"{\"pid\": 1.5}",
            b"\xff\xfe",
            b"{\"started\": \"x\"}",
        ];
        for c in cases {
            assert!(
                matches!(parse_record(c), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(parse_record(&big), Parsed::Invalid(_)));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A small deterministic fuzz: mutations of a valid record and random byte strings.
        let base = ours().to_json().into_bytes();
        let mut rng = Xorshift::new(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.next_u64();
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..(next() % 8) {
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] = next() as u8,
                    1 => b.truncate(i),
                    _ => b.insert(i, next() as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            let _ = parse_record(&b);
            let random: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let _ = parse_record(&random);
        }
    }
}
