//! Wall-clock time as the ISO 8601 strings the lock record uses, without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2025-10-18T22:38:49.123Z` for the given instant (UTC, millisecond precision).
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let millis = d.subsec_millis();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}

/// Milliseconds since the Unix epoch of an ISO 8601 UTC timestamp such as the ones written by
/// `iso8601` or by JavaScript's `Date.prototype.toISOString` (fraction optional, `Z` required).
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = s.get(19..)?;
    let frac_ms = match rest.strip_prefix('.') {
        Some(f) => {
            let digits = f.strip_suffix('Z')?;
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let padded: String = digits.chars().chain("000".chars()).take(3).collect();
            padded.parse::<i64>().ok()?
        }
        None if rest == "Z" => 0,
        None => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + frac_ms)
}

// Howard Hinnant's public-domain calendar algorithms (days <-> proleptic Gregorian date).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_760_827_129_123);
        assert_eq!(iso8601(t), "2025-10-18T22:38:49.123Z");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_what_it_formats_and_js_variants() {
        for ms in [0i64, 1_760_827_129_123, 951_782_400_000, 4_102_444_799_999] {
            let s = iso8601(UNIX_EPOCH + Duration::from_millis(ms as u64));
            assert_eq!(parse_iso8601_ms(&s), Some(ms), "{s}");
        }
        assert_eq!(
            parse_iso8601_ms("2025-10-18T22:38:49Z"),
            Some(1_760_827_129_000)
        );
        assert_eq!(
            parse_iso8601_ms("2025-10-18T22:38:49.1Z"),
            Some(1_760_827_129_100)
        );
        for bad in [
            "",
            "2025-10-18",
            "2025-13-18T22:38:49Z",
            "2025-10-18T22:38:49",
            "x".repeat(30).as_str(),
            "2025-10-18T22:38:49.Z",
            "2025-10-18T22:38:49.12aZ",
            "2025-10-18T22:38:49+02:00",
        ] {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad}");
        }
    }
}
