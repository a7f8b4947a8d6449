//! Text shown to people: what the lock's files, the OS and other processes wrote is shown with its
//! control characters escaped, so that a record cannot forge lines in a log or a terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with its control characters (C0, DEL, C1: newlines and escape sequences included)
/// written as escapes, the way Node's `util.inspect` writes them: `\n`, `\t`, `\x1B`, ...
/// Anything else is kept, so ordinary text is unchanged.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\u{8}' => out.push_str("\\b"),
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\u{c}' => out.push_str("\\f"),
        '\r' => out.push_str("\\r"),
        // Every control character is below U+00A0: two hex digits say it.
        c if c.is_control() => {
            let _ = write!(out, "\\x{:02X}", c as u32);
        }
        c => out.push(c),
    }
}

/// A JavaScript-style single-quoted string, as Node's `util.inspect` prints one.
pub(crate) fn js_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => push_char(&mut out, c),
        }
    }
    out.push('\'');
    out
}
