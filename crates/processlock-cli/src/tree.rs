//! The command's whole process tree, for `processlock run --url`: what it stops when the lock is
//! lost or the command's main process ends, and what it waits for before it lets the lock go.
//!
//! On Linux this process becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`) before the command
//! starts: a descendant whose parent dies is re-parented to it, not to init, whatever process
//! group or session it made for itself. So every process the command started, directly or through
//! npm, a shell or a daemonizing double fork, is either a child of ours or below one, and
//! `waitpid` failing with `ECHILD` means none is left, not even an unreaped zombie. Stopping the
//! tree is: SIGTERM (and SIGCONT, for a stopped one) to every descendant, again to any that
//! appears meanwhile, SIGKILL to all that remain after the grace period, until `ECHILD`.
//! Descendants are found by walking `/proc` parent links from this process; each is signalled
//! through a pidfd opened after it was found and checked again (same start time, same parent)
//! once the pidfd pins it, so a PID recycled in between is never signalled.
//!
//! Elsewhere (macOS, the BSDs) there is no subreaper, and a process group would take the command
//! off the terminal's foreground group (Ctrl+C, reading from the terminal): only the main
//! process is signalled and waited for, as before.

use std::io;
use std::os::raw::c_int;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// What `reap` found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// How the main process ended, if it was reaped in this call.
    pub main: Option<ExitStatus>,
    /// No child is left (`ECHILD`): with a subreaper, no descendant at all.
    pub none_left: bool,
}

/// The command's processes, below this one.
pub struct Tree {
    main: libc::pid_t,
    /// Descendants already sent SIGTERM (by PID and start time), so newcomers get theirs once.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    termed: Vec<(libc::pid_t, u64)>,
}

/// Makes this process the reaper of its orphaned descendants. Call before the command starts.
/// False where the system has no such thing: then only the main process is watched.
pub fn become_reaper() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: prctl with an integer argument on our own process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) == 0 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    false
}

impl Tree {
    pub fn new(main: u32) -> Self {
        Tree {
            main: main as libc::pid_t,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            termed: Vec::new(),
        }
    }

    pub fn main_pid(&self) -> libc::pid_t {
        self.main
    }

    /// Reaps every child that has ended, without blocking.
    pub fn reap(&mut self) -> io::Result<Reaped> {
        let mut reaped = Reaped::default();
        loop {
            let mut status: c_int = 0;
            // SAFETY: waitpid into our own integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                if pid == self.main {
                    reaped.main = Some(ExitStatus::from_raw(status));
                }
                continue;
            }
            if pid == 0 {
                return Ok(reaped);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    reaped.none_left = true;
                    return Ok(reaped);
                }
                _ => return Err(e),
            }
        }
    }

    /// Sends `signal` to the main process only (a signal passed on from our own parent).
    pub fn signal_main(&self, signal: c_int) {
        // The main process is not reaped before `reap` says so, so its PID is still ours.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.main, signal) };
    }

    /// SIGTERM and SIGCONT to every descendant that has not had its SIGTERM yet. How many got it.
    pub fn terminate(&mut self) -> usize {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let mut sent = 0;
            for (pid, started) in linux::descendants() {
                if self.termed.contains(&(pid, started)) {
                    continue;
                }
                self.termed.push((pid, started));
                if linux::signal_checked(pid, started, libc::SIGTERM) {
                    linux::signal_checked(pid, started, libc::SIGCONT);
                    sent += 1;
                }
            }
            sent
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            self.signal_main(libc::SIGTERM);
            self.signal_main(libc::SIGCONT);
            1
        }
    }

    /// SIGKILL to every descendant there is now. The PIDs that got it.
    pub fn kill(&mut self) -> Vec<libc::pid_t> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            linux::descendants()
                .into_iter()
                .filter(|&(pid, started)| linux::signal_checked(pid, started, libc::SIGKILL))
                .map(|(pid, _)| pid)
                .collect()
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            self.signal_main(libc::SIGKILL);
            vec![self.main]
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::collections::HashMap;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::raw::c_int;

    /// `(ppid, start time in clock ticks since boot)` of a process, from `/proc/<pid>/stat`.
    fn stat(pid: libc::pid_t) -> Option<(libc::pid_t, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses: cut at the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        // After comm: state is field 3 of the line, ppid 4, starttime 22.
        Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
    }

    /// Every process below this one, with its start time. A process that forks while this
    /// walks may be missed: callers walk again until nothing is left.
    pub fn descendants() -> Vec<(libc::pid_t, u64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut children: HashMap<libc::pid_t, Vec<(libc::pid_t, u64)>> = HashMap::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if let Some((ppid, started)) = stat(pid) {
                children.entry(ppid).or_default().push((pid, started));
            }
        }
        let mut found = Vec::new();
        // SAFETY: getpid cannot fail.
        let mut todo = vec![unsafe { libc::getpid() }];
        while let Some(parent) = todo.pop() {
            for &(pid, started) in children.get(&parent).into_iter().flatten() {
                if pid != parent && !found.iter().any(|&(p, _)| p == pid) {
                    found.push((pid, started));
                    todo.push(pid);
                }
            }
        }
        found
    }

    /// Whether `pid` still is the process found (same start time) and still below this one.
    fn still_ours(pid: libc::pid_t, started: u64) -> bool {
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let mut at = pid;
        for _ in 0..4096 {
            let Some((ppid, s)) = stat(at) else {
                return false;
            };
            if at == pid && s != started {
                return false;
            }
            if ppid == me {
                return true;
            }
            if ppid <= 1 {
                return false;
            }
            at = ppid;
        }
        false
    }

    /// Sends `signal` to `pid` if it still is the descendant found. Through a pidfd where the
    /// kernel has them (5.3+): once it is open, the check cannot be outrun by a recycled PID.
    pub fn signal_checked(pid: libc::pid_t, started: u64, signal: c_int) -> bool {
        // SAFETY: pidfd_open takes a PID and flags, and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            // No pidfds: the check and the kill are two steps, as good as it gets there.
            // SAFETY: kill(2) on a process just checked to be ours.
            return still_ours(pid, started) && unsafe { libc::kill(pid, signal) } == 0;
        }
        // SAFETY: a descriptor the kernel just gave us and nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as c_int) };
        if !still_ours(pid, started) {
            return false;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on our pidfd, without siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_grandchild_whose_parent_died_is_still_found_and_signalled() {
            assert!(super::super::become_reaper());
            // A shell that starts a sleep in the background and exits at once: the sleep is
            // re-parented to this process.
            let mut sh = std::process::Command::new("/bin/sh")
                .args(["-c", "sleep 30 >/dev/null & echo $!"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(sh.stdout.as_mut().unwrap(), &mut out).unwrap();
            sh.wait().unwrap();
            let sleep: libc::pid_t = out.trim().parse().unwrap();
            let found = descendants();
            let (_, started) = *found.iter().find(|(p, _)| *p == sleep).expect("found");
            assert!(
                !signal_checked(sleep, started + 1, libc::SIGKILL),
                "another start time"
            );
            assert!(signal_checked(sleep, started, libc::SIGKILL));
            let mut status = 0;
            // SAFETY: waitpid on our own (adopted) child.
            assert_eq!(unsafe { libc::waitpid(sleep, &mut status, 0) }, sleep);
            assert!(libc::WIFSIGNALED(status));
        }
    }
}
