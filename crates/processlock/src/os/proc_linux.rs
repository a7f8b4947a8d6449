//! Process start identity on Linux: `/proc/<pid>/stat` field 22 (start time in clock ticks
//! since boot) qualified by the boot id, so it is unique across reboots too.

use super::ProcessStart;
use std::sync::OnceLock;

/// `include/linux/sched.h`: the task is exiting.
const PF_EXITING: u64 = 0x0000_0004;

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
    let boot = boot_id().unwrap_or("unknown-boot");
    let wall_ms = boot_time_s().map(|bt| bt * 1000 + (ticks * 1000 / clock_ticks()) as i64);
    Some(ProcessStart {
        token: format!("linux:{boot}:{ticks}"),
        wall_ms,
        zombie: state == "Z" || state == "X" || flags & PF_EXITING != 0,
    })
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

fn boot_time_s() -> Option<i64> {
    static BT: OnceLock<Option<i64>> = OnceLock::new();
    *BT.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes no pointer and only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::assert_own_start_is_sane;

    #[test]
    fn own_start_is_stable_and_sane() {
        let me = std::process::id();
        assert_eq!(process_start(me), process_start(me));
        let _ = assert_own_start_is_sane(process_start(me));
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
}
