//! Small output helpers: durations, aligned tables, ordered JSON objects, the clock, and stdout
//! and stderr written without a panic when their reader is gone.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Milliseconds since the epoch, as lock records' start times are compared with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The reader of stdout is gone (`processlock check | head -0`): what is left to say is dropped.
static READER_GONE: AtomicBool = AtomicBool::new(false);
/// A write to stdout failed otherwise (a full disk): said once, and the status says it too.
static WRITE_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout at once. A closed pipe is not an error: the reader has what it
/// wanted, so the command goes on with its work, quietly, and ends with the status it would have
/// had (a `clear` whose reader left still clears). Any other failure is said on stderr, once.
pub fn print(text: &str) {
    if READER_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => READER_GONE.store(true, Ordering::Relaxed),
        Err(e) => {
            if !WRITE_FAILED.swap(true, Ordering::Relaxed) {
                eprint(&format!("processlock: cannot write the output: {e}\n"));
            }
        }
    }
}

/// Writes `text` to stderr. Where stderr cannot be written to (its reader is gone too), there
/// is nobody left to tell.
pub fn eprint(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// The status to exit with: `status`, or 1 instead of 0 when the output could not be written
/// (not for a closed pipe), so that `processlock check > file.tmp && mv file.tmp file` keeps the
/// last whole file. A verdict (`check <type>`: held or not) is never changed: a deploy script
/// asks that, not the text.
pub fn exit_status(status: i32, verdict: bool) -> i32 {
    if status == 0 && !verdict && WRITE_FAILED.load(Ordering::Relaxed) {
        1
    } else {
        status
    }
}

/// `println!` through `print`: never a panic on a closed pipe.
macro_rules! outln {
    () => {
        $crate::display::print("\n")
    };
    ($($arg:tt)*) => {
        $crate::display::print(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` through `eprint`: never a panic on a closed pipe.
macro_rules! errln {
    () => {
        $crate::display::eprint("\n")
    };
    ($($arg:tt)*) => {
        $crate::display::eprint(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, outln};

/// `3d 4h`, `2h 05m`, `4m 12s`, `12s`: the two largest units, like `ps` and `pm2 list`.
pub fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A left-aligned table. `paint` may wrap a cell in colour codes; widths ignore them.
pub fn table(
    header: &[&str],
    rows: &[Vec<String>],
    paint: impl Fn(usize, usize, &str) -> String,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>, painted: Vec<String>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, (cell, shown)) in cells.iter().zip(painted).enumerate() {
            out.push_str(&shown);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(
        header.iter().map(|h| h.to_string()).collect(),
        header.iter().map(|h| h.to_string()).collect(),
    );
    for (r, row) in rows.iter().enumerate() {
        let painted = row
            .iter()
            .enumerate()
            .map(|(c, cell)| paint(r, c, cell))
            .collect();
        out.push_str(&line(row.clone(), painted));
    }
    out
}

/// A JSON object with its keys in the given order (serde_json's map would sort them).
pub fn ordered_object(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}: {}", Value::from(*k), v))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// JSON text with the control characters that JSON lets through raw (DEL and C1, U+007F to
/// U+009F) escaped too, so that printing it on a terminal is as safe as printing a table.
/// Outside strings JSON text is plain ASCII, so only string contents change.
pub fn json_text(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

pub fn opt_str(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(12_999), "12s");
        assert_eq!(uptime(252_000), "4m 12s");
        assert_eq!(uptime(7_500_000), "2h 05m");
        assert_eq!(uptime(4 * 86_400_000 + 3 * 3_600_000), "4d 3h");
    }

    #[test]
    fn tables_align_and_objects_keep_order() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["wide cell".into(), "x".into()]],
            |_, _, s| s.to_string(),
        );
        assert_eq!(t, "A          LONGER\nwide cell  x\n");
        let o = ordered_object(&[("z", Value::from(1)), ("a", Value::Null)]);
        assert_eq!(o, r#"{"z": 1, "a": null}"#);
        let v: Value = serde_json::from_str(&o).unwrap();
        assert_eq!(v["z"], 1);
    }

    #[test]
    fn json_text_has_no_raw_control_characters() {
        let hostile = "a\u{1b}[2J\nb\u{7f}\u{9b}c\u{a0}é";
        let json = json_text(&ordered_object(&[("name", Value::from(hostile))]));
        assert!(!json.contains(|c: char| c.is_control()), "{json}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["name"], hostile);
    }
}
