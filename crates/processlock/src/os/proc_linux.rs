//! Process start identity on Linux: `/proc/<pid>/stat` field 22 (start time in clock ticks
//! since boot) qualified by the boot id, so it is unique across reboots too, and by the PID
//! namespace when it is not the machine's own, so that a PID of one container is never taken
//! for the same number in another.
//!
//! No wall-clock start time is given. Linux keeps a process's start only as time since boot;
//! turning it into a date takes the boot time of `/proc/stat` (`btime`), which is "now minus
//! uptime" and moves with every step of the wall clock (`date -s`, NTP, a VM resumed or restored
//! from a snapshot). A start time computed that way after a step no longer compares with dates
//! written before it.

use super::ProcessStart;
use std::sync::OnceLock;

/// `include/linux/sched.h`: the task is exiting.
const PF_EXITING: u64 = 0x0000_0004;

/// `include/linux/proc_ns.h`: the inode of the initial PID namespace, the same on every
/// machine.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

pub fn process_start(pid: u32) -> Option<ProcessStart> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the
    // last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    // Field 9: the task's flags. PF_EXITING is set as the kernel starts tearing the process
    // down, before it closes its files (and so drops its flocks) and long before it is a zombie.
    let flags: u64 = fields.get(6)?.parse().ok()?;
    let ticks: u64 = fields.get(19)?.parse().ok()?; // field 22 overall
    Some(ProcessStart {
        token: token(ticks),
        wall_ms: None,
        zombie: state == "Z" || state == "X" || flags & PF_EXITING != 0,
    })
}

/// `linux:<boot id>:<start ticks>`, followed by `:<PID namespace>` in any PID namespace but the
/// machine's own (whose tokens read as they always did).
fn token(ticks: u64) -> String {
    let boot = boot_id().unwrap_or("unknown-boot");
    match pid_namespace() {
        Some(ns) => format!("linux:{boot}:{ticks}:{ns}"),
        None => format!("linux:{boot}:{ticks}"),
    }
}

/// Whether `token` was made on this machine since it last booted, in this PID namespace: then
/// the PID that goes with it names a process here (the running one, or one that has ended),
/// whatever host name the record carries.
pub fn token_is_local(token: &str) -> bool {
    let Some(rest) = token.strip_prefix("linux:") else {
        return false;
    };
    let mut parts = rest.split(':');
    let (Some(boot), Some(_ticks), ns, None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    boot_id() == Some(boot) && ns == pid_namespace()
}

fn boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    })
    .as_deref()
}

/// This process's PID namespace (its inode number), unless it is the machine's own.
fn pid_namespace() -> Option<&'static str> {
    static NS: OnceLock<Option<String>> = OnceLock::new();
    NS.get_or_init(|| {
        let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let ino: u64 = link
            .to_str()?
            .strip_prefix("pid:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        (ino != PROC_PID_INIT_INO).then(|| ino.to_string())
    })
    .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_is_stable_and_not_a_zombie() {
        let me = std::process::id();
        let a = process_start(me).expect("the start of this process");
        assert_eq!(Some(&a), process_start(me).as_ref());
        assert!(!a.zombie);
        assert!(a.token.starts_with("linux:"), "{}", a.token);
        assert_eq!(
            a.wall_ms, None,
            "a date computed from btime moves with the clock"
        );
        assert!(token_is_local(&a.token));
    }

    #[test]
    fn a_later_process_with_another_pid_has_another_token() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let c = process_start(child.id()).unwrap();
        assert_ne!(c.token, process_start(std::process::id()).unwrap().token);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(process_start(child.id()).is_none());
    }

    #[test]
    fn tokens_of_another_boot_or_pid_namespace_are_not_local() {
        let own = process_start(std::process::id()).unwrap().token;
        let boot = boot_id().unwrap();
        assert!(!token_is_local("linux:another-boot:1"));
        assert!(
            !token_is_local(&format!("linux:{boot}:1:4026532999"))
                || pid_namespace() == Some("4026532999")
        );
        assert!(!token_is_local(&format!("{own}:1:2")));
        assert!(!token_is_local("darwin:1.000001"));
        assert!(!token_is_local(""));
        // Any start time of this boot and namespace is local, running or not.
        let ns = pid_namespace().map(|n| format!(":{n}")).unwrap_or_default();
        assert!(token_is_local(&format!("linux:{boot}:1{ns}")));
    }
}
