//! A request to let go of a lock, as a replacer makes it and a holder sees it (the flow of a
//! replacement is `replace.rs`).
//!
//! # The request
//! A replacer waits for the lock as any waiter does (`lock.rs`: a shared lock on the key, which
//! takes nothing), in a session whose `application_name` is the request:
//! `processlock-replace <holder> <pid>@<host>`, where `<holder>` names the one holder asked to go
//! (`t<fencing token>`, or `s<server PID>` when the replacer could not read the token) and
//! `<pid>@<host>` names the replacer, for the holder's line. The server keeps the name to 63
//! bytes, so a long host name is cut short. The request exists exactly while the replacer waits:
//! it is that waiting session, and it is gone when the wait ends (taken, given up, or the
//! replacer's session gone).
//!
//! The holder looks for a request with every heartbeat, in the same round trip (so it answers
//! within a quarter lease): a session of `pg_stat_activity` with such a name that waits, in
//! `pg_locks`, for this very lock, and names this holder. A holder that finds one tells its
//! hooks (`PgHeld::on_replace_request`) once per requesting session; the addon and the command
//! print who asked and send their own process SIGTERM (`stop_this_process`).
//!
//! # Who may ask
//! Any role that can connect can name its session anything, and can wait for any advisory lock.
//! So a request counts only from a role that has the privileges of the holder's role
//! (`pg_has_role(requester, holder, 'USAGE')`: the same role, a role it was granted to, or a
//! superuser): exactly the roles the server already lets end the holder's session with
//! `pg_terminate_backend`, which takes the lock from it at once. A request gives them nothing
//! they did not have; it only lets the holder stop cleanly instead. Any other role's request is
//! not seen. `application_name`, the role and `pg_locks` are shown to every role, so the check
//! needs no privilege of the holder's.
//!

use std::sync::{Arc, Mutex};

use processlock::report::printable;
use processlock::LockName;

use crate::key::key_literal;

/// What starts the `application_name` of a replacer's waiting session.
const PREFIX: &str = "processlock-replace ";
/// The server keeps `application_name` to `NAMEDATALEN - 1` bytes.
const NAME_MAX: usize = 63;

/// A request to let go of a lock, as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceRequest {
    /// The replacer's process ID on its host.
    pub pid: u32,
    /// The replacer's host name, as it gave it (possibly cut short).
    pub host: String,
    /// The server process of the replacer's waiting session.
    pub backend_pid: i32,
}

impl ReplaceRequest {
    /// The line a holder prints before it sends itself SIGTERM.
    pub fn line(&self, name: &LockName, me: u32) -> String {
        format!(
            "[PROCESS_LOCK_REPLACE] {}: PID {} on host '{}' asked, through the server, to take over; sending SIGTERM to this process (PID {me})",
            name.display(),
            self.pid,
            printable(&self.host),
        )
    }
}

/// Called on the lock's own thread when a replacer asks the holder to let go.
pub type OnReplaceRequest = Box<dyn Fn(&ReplaceRequest) + Send + Sync>;

/// The hooks of one held lock.
#[derive(Default)]
pub(crate) struct Requests {
    hooks: Mutex<Vec<OnReplaceRequest>>,
}

impl Requests {
    pub fn add(&self, hook: OnReplaceRequest) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    pub fn tell(&self, request: &ReplaceRequest) {
        for hook in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            hook(request);
        }
    }
}

/// Whom a request is for: the holder with this fencing token, or, when the replacer could not
/// read it, the holder's server process.
pub(crate) fn target(fencing_token: Option<&str>, backend_pid: Option<i32>) -> String {
    match (fencing_token, backend_pid) {
        (Some(t), _) => format!("t{t}"),
        (None, Some(pid)) => format!("s{pid}"),
        (None, None) => "s0".to_string(),
    }
}

/// The `application_name` of a replacer (`pid` on `host`) asking the holder `target` to go: only
/// characters the server keeps as they are, no quote, at most 63 bytes.
pub(crate) fn request_name(target: &str, pid: u32, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut name = format!("{PREFIX}{target} {pid}@{host}");
    name.truncate(NAME_MAX);
    name
}

/// The statement a holder sends with each heartbeat: the one request (if any) from a permitted
/// role whose session waits for the lock `key` and names this holder (`fencing_token` or its
/// server process), as `<server PID> <application_name>`; an empty column otherwise.
pub(crate) fn request_sql(key: i64, fencing_token: &str, backend_pid: i32) -> String {
    let key = key_literal(key);
    let mine = [
        target(Some(fencing_token), None),
        target(None, Some(backend_pid)),
    ];
    // A waiter's row: its shared lock on the key, not granted. The key is split in `pg_locks`
    // as for the holder's row (`table::lock_row_matches`).
    format!(
        "SELECT (SELECT a.pid || ' ' || a.application_name
           FROM pg_stat_activity a
           WHERE a.application_name LIKE '{PREFIX}%'
             AND split_part(a.application_name, ' ', 2) IN ('{}', '{}')
             AND pg_has_role(a.usesysid, current_user, 'USAGE')
             AND EXISTS (SELECT 1 FROM pg_locks w
                 WHERE w.pid = a.pid AND w.locktype = 'advisory' AND NOT w.granted
                   AND w.objsubid = 1
                   AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND w.classid::text::int8 = (({key}) >> 32) & 4294967295
                   AND w.objid::text::int8 = ({key}) & 4294967295)
           ORDER BY a.backend_start, a.pid LIMIT 1)",
        mine[0], mine[1]
    )
}

/// Reads the column of `request_sql`.
pub(crate) fn parse_request(column: &str) -> Option<ReplaceRequest> {
    let (backend_pid, name) = column.split_once(' ')?;
    let rest = name.strip_prefix(PREFIX)?;
    let (_target, who) = rest.split_once(' ')?;
    let (pid, host) = who.split_once('@')?;
    Some(ReplaceRequest {
        pid: pid.parse().ok()?,
        host: host.to_string(),
        backend_pid: backend_pid.parse().ok()?,
    })
}

/// What a holder does when asked to let go, as the addon and the command do it: says who asked,
/// on stderr whatever the logging (a process that stops because of another host must say why),
/// then sends its own process SIGTERM, as a replacer on its host would have: its graceful
/// shutdown runs, and the lock goes when the process lets go of it or ends. Not on Windows,
/// where it only says that it was asked.
pub fn stop_this_process(name: &LockName, request: &ReplaceRequest) {
    let me = std::process::id();
    #[cfg(unix)]
    {
        eprintln!("{}", request.line(name, me));
        // SAFETY: a plain system call on this very process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    {
        eprintln!(
            "[PROCESS_LOCK_REPLACE] {}: PID {} on host '{}' asked, through the server, to take over; this system has no SIGTERM: stop this process (PID {me}) by hand",
            name.display(),
            request.pid,
            printable(&request.host),
        );
    }
}

/// Holds the hooks a held lock shares with its thread.
pub(crate) fn new_requests() -> Arc<Requests> {
    Arc::new(Requests::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_name_is_kept_short_and_plain() {
        let name = request_name("t123", 42, "host'; DROP TABLE x; --");
        assert_eq!(name, "processlock-replace t123 42@host???DROP?TABLE?x??--");
        let long = request_name("t18446744073709551615", 4_194_304, &"h".repeat(100));
        assert_eq!(long.len(), NAME_MAX);
    }

    #[test]
    fn a_request_is_read_back() {
        let name = request_name("s77", 42, "box-1.example");
        let req = parse_request(&format!("901 {name}")).unwrap();
        assert_eq!(
            req,
            ReplaceRequest {
                pid: 42,
                host: "box-1.example".into(),
                backend_pid: 901
            }
        );
        assert_eq!(parse_request(""), None);
        assert_eq!(parse_request("901 someone-else t1 2@h"), None);
    }
}
