//! The password file, as libpq reads it: `~/.pgpass` (`%APPDATA%\postgresql\pgpass.conf` on
//! Windows), or the file `passfile` / `PGPASSFILE` names. One entry a line,
//! `hostname:port:database:username:password`; `*` matches anything in the first four fields;
//! `\:` and `\\` stand for `:` and `\`; lines starting with `#` are comments. The first entry
//! that matches gives the password.
//!
//! On Unix a file that group or others may read or write is ignored, with a warning on stderr
//! (once per file per process), as libpq does: a password there is not a secret.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::conninfo::{home_dir, Env};

/// The file libpq reads when none is named.
pub(crate) fn default_file(env: Env<'_>) -> Option<PathBuf> {
    let file = if cfg!(windows) {
        "pgpass.conf"
    } else {
        ".pgpass"
    };
    home_dir(env).map(|dir| dir.join(file))
}

/// What the password file is searched with: the names as the connection gives them.
pub(crate) struct Entry<'a> {
    /// The host name, else the host address; a Unix-domain socket directory is searched as
    /// `localhost` when it is a usual default one.
    pub host: &'a str,
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password for `entry` in `file`, if the file may be used and has one.
pub(crate) fn lookup(file: &Path, entry: &Entry<'_>) -> Option<String> {
    if !usable(file) {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    find(&text, entry)
}

/// The password of the first line of `text` that matches `entry`.
fn find(text: &str, entry: &Entry<'_>) -> Option<String> {
    let host = if DEFAULT_SOCKET_DIRS.contains(&entry.host) {
        "localhost"
    } else {
        entry.host
    };
    let port = if entry.port.is_empty() {
        "5432"
    } else {
        entry.port
    };
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let rest = field_matches(line, host)?;
            let rest = field_matches(rest, port)?;
            let rest = field_matches(rest, entry.dbname)?;
            let rest = field_matches(rest, entry.user)?;
            Some(unescape_password(rest))
        })
}

/// Where libpq builds put their Unix-domain socket by default: a connection there is searched
/// as `localhost`.
const DEFAULT_SOCKET_DIRS: &[&str] = &["/tmp", "/var/run/postgresql", "/run/postgresql"];

/// If the first field of `line` matches `value` (`*`, or equal once `\` escapes are undone),
/// the rest of the line after its `:`.
fn field_matches<'l>(line: &'l str, value: &str) -> Option<&'l str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut wanted = value.chars().peekable();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, next)) => (next, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        // An unescaped ':' ends the field only once the value is matched, so an IPv6 address
        // written as it is still matches.
        if c == ':' && !escaped && wanted.peek().is_none() {
            return Some(&line[i + 1..]);
        }
        if wanted.next() != Some(c) {
            return None;
        }
    }
    None
}

/// The password field: up to an unescaped `:` or the end of the line, `\` escapes undone.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Whether the file may be read for passwords; says why not on stderr when it exists but may
/// not.
#[cfg(unix)]
fn usable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;

    let Ok(meta) = std::fs::metadata(file) else {
        return false;
    };
    let problem = if !meta.is_file() {
        "is not a plain file"
    } else if meta.permissions().mode() & 0o077 != 0 {
        "has group or world access; permissions should be u=rw (0600) or less"
    } else {
        return true;
    };
    warn_once(file, problem);
    false
}

/// On Windows the file lives in the user's own profile, which others cannot read (libpq does
/// not check it either).
#[cfg(not(unix))]
fn usable(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.is_file())
}

static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

#[cfg_attr(not(unix), allow(dead_code))]
fn warn_once(file: &Path, problem: &str) {
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned
        .get_or_insert_with(HashSet::new)
        .insert(file.to_path_buf())
    {
        eprintln!(
            "processlock: WARNING: password file \"{}\" {problem}; it is ignored",
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> Entry<'a> {
        Entry {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn the_first_matching_line_gives_the_password() {
        let text = "\
# hostname:port:database:username:password
db.internal:5432:trader:svc:first
db.internal:5432:trader:svc:second
*:*:*:svc:any\\:thing\\\\here:ignored
";
        assert_eq!(
            find(text, &entry("db.internal", "5432", "trader", "svc")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find(text, &entry("other", "6543", "x", "svc")).as_deref(),
            Some("any:thing\\here")
        );
        assert_eq!(
            find(text, &entry("db.internal", "5432", "trader", "bob")),
            None
        );
    }

    #[test]
    fn fields_match_as_libpq_matches_them() {
        let text = "h\\:x:5432:d\\\\b:u:escaped\n\
                    localhost:*:*:u:local\n\
                    *:6543:*:u:port\n\
                    h:5432:*:u:empty-port-is-5432\r\n";
        let find = |h, p, d, u| find(text, &entry(h, p, d, u));
        assert_eq!(find("h:x", "5432", "d\\b", "u").as_deref(), Some("escaped"));
        // A default socket directory is searched as localhost; another one is not.
        assert_eq!(
            find("/var/run/postgresql", "5432", "d", "u").as_deref(),
            Some("local")
        );
        assert_eq!(
            find("/srv/sockets", "6543", "d", "u").as_deref(),
            Some("port")
        );
        assert_eq!(
            find("h", "", "d", "u").as_deref(),
            Some("empty-port-is-5432")
        );
        // `*` only counts as a whole field; a prefix is not a match.
        assert_eq!(find("h", "543", "d", "u"), None);
        assert_eq!(find("hh", "5432", "d", "u"), None);
        assert_eq!(find("h", "5432", "d", "uu"), None);
        assert_eq!(
            super::find("::1:5432:*:u:v6\n", &entry("::1", "5432", "d", "u")).as_deref(),
            Some("v6")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_read_is_not_used() {
        use std::os::unix::fs::PermissionsExt;

        let dir = std::env::temp_dir().join(format!("processlock-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        let e = entry("h", "5432", "d", "u");
        for (mode, expected) in [
            (0o600, Some("secret")),
            (0o400, Some("secret")),
            (0o640, None),
            (0o604, None),
            (0o610, None),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(lookup(&file, &e).as_deref(), expected, "{mode:o}");
        }
        assert_eq!(lookup(&dir, &e), None, "a directory");
        assert_eq!(lookup(&dir.join("missing"), &e), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
