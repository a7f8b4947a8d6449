//! Shared machinery of the integration tests: unique directories, and child processes that run
//! the real protocol.
//!
//! A test binary re-executes itself (`std::env::current_exe()`) with `PROCESSLOCK_IT_ROLE` set
//! and only its `child_role` test selected; `child_role` then plays the role and exits. Every
//! role reports on stdout in lines `@@KIND field...` (a leading newline keeps them apart from
//! libtest's own output) and waits on its stdin, so a child whose parent test dies sees EOF and
//! exits by itself.

#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use processlock::testing::acquire;
use processlock::{inspect, sweep_orphan_temps, Error, Event, Inspection, LockName, LockTarget};

pub const ROLE_ENV: &str = "PROCESSLOCK_IT_ROLE";
const PARAM_PREFIX: &str = "PROCESSLOCK_IT_";
const MARK: &str = "@@";
/// How long the parent waits for any single report of a child before failing the test.
#[cfg(not(windows))]
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Longer on Windows, whose tests also run under Wine (`scripts/test-windows.sh`): processes,
/// files and locks cost many times more there, and the stale-takeover loop of `races.rs` reports
/// only at its end.
#[cfg(windows)]
pub const TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Small helpers used on both sides.

/// Parameters for `Proc::acquirer_with` that make the child run as `nobody` (needs root).
pub const AS_NOBODY: [(&str, &str); 1] = [("UID", "65534")];

/// Whether this test runs as root, which acting as another user needs; if not, says that the
/// test is skipped and `why`.
#[cfg(unix)]
pub fn root_or_skip(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        eprintln!("skipped: needs root to {why}");
    }
    root
}

/// A monotonic clock in nanoseconds that every process on the machine shares: CLOCK_MONOTONIC
/// on Unix, the performance counter on Windows.
#[cfg(unix)]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec that the call only writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(windows)]
pub fn mono_ns() -> u64 {
    use windows_sys::Win32::System::Performance::{
        QueryPerformanceCounter, QueryPerformanceFrequency,
    };
    let (mut count, mut freq) = (0i64, 0i64);
    // SAFETY: two valid out pointers; both calls always succeed since Windows XP.
    unsafe {
        QueryPerformanceCounter(&mut count);
        QueryPerformanceFrequency(&mut freq);
    }
    (count as u128 * 1_000_000_000 / freq as u128) as u64
}

/// `stale:<pid>`, `invalid`, `orphans:<n>`: how children report `Event`s.
fn encode_event(e: &Event) -> String {
    match e {
        Event::StaleRemoved { pid } => format!("stale:{pid}"),
        Event::InvalidRemoved { .. } => "invalid".to_string(),
        Event::OrphansRemoved { paths } => format!("orphans:{}", paths.len()),
    }
}

fn encode_events(events: &[Event]) -> String {
    if events.is_empty() {
        "-".to_string()
    } else {
        events
            .iter()
            .map(encode_event)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether a process with this PID exists (zombies included).
#[cfg(unix)]
pub fn pid_exists(pid: u32) -> bool {
    // SAFETY: signal 0 sends nothing, it only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Whether a process with this PID is running (not exited, even if its object lingers).
#[cfg(windows)]
pub fn pid_exists(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    // SAFETY: no pointers; a null return means no such process (or no access to it).
    let h = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if h.is_null() {
        return false;
    }
    let mut code = 0u32;
    // SAFETY: a valid handle, closed once and never used after.
    unsafe {
        let ok = GetExitCodeProcess(h, &mut code);
        CloseHandle(h);
        ok != 0 && code == STILL_ACTIVE as u32
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), if the process exists.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

// ---------------------------------------------------------------------------------------------
// Test directories.

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, unique per test, process and call. Removed when
/// the test passes, kept (and named on stderr) when it fails.
pub struct TestDir {
    pub root: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!(
            "processlock-it-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        TestDir { root }
    }

    /// The lock directory inside the root (not created: the protocol creates it).
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn target(&self, process_type: &str, side: Option<&str>) -> LockTarget {
        LockTarget::new(self.locks(), LockName::new(process_type, side).unwrap())
    }

    /// `target` with its lock directory made, for a test that puts something at the lock path
    /// before anyone acquires it.
    pub fn made_target(&self, process_type: &str, side: Option<&str>) -> LockTarget {
        let target = self.target(process_type, side);
        fs::create_dir_all(&target.dir).unwrap();
        target
    }

    /// Every temp-named file (`.*.tmp`) anywhere under the root.
    pub fn temps(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    walk(&path, out);
                } else {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && name.ends_with(".tmp") {
                        out.push(path);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    pub fn assert_no_temps(&self) {
        let temps = self.temps();
        assert!(temps.is_empty(), "temp files left over: {temps:?}");
    }

    /// The end of every test: no temp file may be left anywhere under the root.
    pub fn finish(self) {
        self.assert_no_temps();
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test directory kept for inspection: {}",
                self.root.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent's side: spawning children and reading their reports.

/// What an `acquire` child reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acquired {
        pid: u32,
        events: Vec<String>,
        /// How long the `acquire` call took, in microseconds.
        micros: u64,
    },
    Conflict {
        holder: u32,
    },
    Error {
        code: String,
        message: String,
    },
}

impl Outcome {
    pub fn events(&self) -> &[String] {
        match self {
            Outcome::Acquired { events, .. } => events,
            other => panic!("expected an acquisition, got {other:?}"),
        }
    }
}

/// The parameters that name a lock for a child.
pub fn lock_params(target: &LockTarget) -> Vec<(String, String)> {
    let mut p = vec![
        ("DIR".to_string(), target.dir.display().to_string()),
        ("TYPE".to_string(), target.name.process_type().to_string()),
    ];
    if let Some(side) = target.name.trade_side() {
        p.push(("SIDE".to_string(), side.to_string()));
    }
    p
}

/// Starts a child. Wine (the Windows run of these tests) now and then fails a CreateProcess
/// with ERROR_INTERNAL_ERROR when many processes start at once; that says nothing about the
/// lock, so it is tried again, a few times.
fn spawn_child(cmd: &mut Command) -> Child {
    const WINE_INTERNAL_ERROR: i32 = 1359;
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e)
                if cfg!(windows) && e.raw_os_error() == Some(WINE_INTERNAL_ERROR) && tries < 5 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("spawn a child test process: {e:?}"),
        }
    }
}

pub struct Proc {
    pub pid: u32,
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    reaped: Option<ExitStatus>,
}

impl Proc {
    /// Starts this test binary again in `role`; `params` become `PROCESSLOCK_IT_<KEY>`.
    pub fn spawn<K: AsRef<str>, V: AsRef<str>>(role: &str, params: &[(K, V)]) -> Proc {
        Self::spawn_env(role, params, &[])
    }

    /// `spawn`, with further environment variables set as given (e.g. `LD_PRELOAD`).
    pub fn spawn_env<K: AsRef<str>, V: AsRef<str>>(
        role: &str,
        params: &[(K, V)],
        env: &[(&str, &str)],
    ) -> Proc {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.envs(env.iter().copied());
        cmd.args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in params {
            cmd.env(format!("{PARAM_PREFIX}{}", k.as_ref()), v.as_ref());
        }
        let mut child = spawn_child(&mut cmd);
        let pid = child.id();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(msg) = line.strip_prefix(MARK) {
                    if tx.send(msg.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            pid,
            role: role.to_string(),
            child,
            stdin,
            lines,
            stderr,
            reaped: None,
        }
    }

    /// A child that runs `acquire` on `target`, then does `after` (see `role_acquire`).
    pub fn acquirer(target: &LockTarget, after: &str) -> Proc {
        Self::acquirer_with(target, after, &[])
    }

    pub fn acquirer_with(target: &LockTarget, after: &str, extra: &[(&str, &str)]) -> Proc {
        let mut params = lock_params(target);
        params.push(("AFTER".into(), after.into()));
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Proc::spawn("acquire", &params)
    }

    /// A live process that has nothing to do with any lock; it exits when its stdin closes.
    pub fn idle() -> Proc {
        let mut p = Proc::spawn::<&str, &str>("idle", &[]);
        p.expect("READY");
        p
    }

    fn diag(&self) -> String {
        format!(
            "child {} (role {}), stderr:\n{}",
            self.pid,
            self.role,
            self.stderr.lock().unwrap()
        )
    }

    /// The next report, split into words: `None` once the child closed its stdout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Some(line.split_whitespace().map(str::to_string).collect()),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no report within {timeout:?} from {}", self.diag())
            }
        }
    }

    /// The next report must be `kind`; returns its fields.
    pub fn expect(&mut self, kind: &str) -> Vec<String> {
        match self.recv(TIMEOUT) {
            Some(mut words) if words.first().map(String::as_str) == Some(kind) => {
                words.remove(0);
                words
            }
            other => panic!("expected {kind}, got {other:?} from {}", self.diag()),
        }
    }

    /// The result of the child's `acquire`.
    pub fn outcome(&mut self) -> Outcome {
        let words = self
            .recv(TIMEOUT)
            .unwrap_or_else(|| panic!("no outcome from {}", self.diag()));
        parse_outcome(&words)
            .unwrap_or_else(|| panic!("bad outcome {words:?} from {}", self.diag()))
    }

    /// Releases a child waiting at its barrier.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"g").unwrap();
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Tells an acquirer that holds (`after` = `wait`) to release and end, and waits for its
    /// end: whether its release removed the lock file (false when the file was no longer its).
    pub fn release_and_end(&mut self) -> bool {
        self.close_stdin();
        let removed = self.expect("RELEASED") == ["true"];
        self.wait_success();
        removed
    }

    #[cfg(unix)]
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill takes no pointer; the test owns this child, so the PID is not reused while
        // the child is unreaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill {}: {}", self.pid, io::Error::last_os_error());
    }

    /// Waits for the child to exit (and reaps it).
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(st) = self.reaped {
            return st;
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.reaped = Some(st);
                return st;
            }
            if Instant::now() > deadline {
                panic!("child did not exit in time: {}", self.diag());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn wait_success(&mut self) {
        let st = self.wait();
        assert!(st.success(), "exit status {st:?} of {}", self.diag());
    }

    /// Ends the child as abruptly as the OS allows (SIGKILL; `TerminateProcess` on Windows: no
    /// code of it runs any more), waits until it is gone and returns its status.
    #[cfg(unix)]
    pub fn kill(&mut self) -> ExitStatus {
        self.kill_with(libc::SIGKILL)
    }

    #[cfg(not(unix))]
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        let st = self.wait();
        assert!(!st.success(), "{st:?} of {}", self.diag());
        st
    }

    /// Sends `sig`, waits until the process is gone and returns its status.
    #[cfg(unix)]
    pub fn kill_with(&mut self, sig: libc::c_int) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        self.signal(sig);
        let st = self.wait();
        assert_eq!(st.signal(), Some(sig), "{st:?} of {}", self.diag());
        st
    }

    /// SIGKILL, but leave the child unreaped: returns once it is a zombie.
    #[cfg(unix)]
    pub fn kill_to_zombie(&mut self) {
        self.signal(libc::SIGKILL);
        let deadline = Instant::now() + TIMEOUT;
        while proc_state(self.pid) != Some('Z') {
            assert!(Instant::now() < deadline, "no zombie: {}", self.diag());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn parse_outcome(words: &[String]) -> Option<Outcome> {
    match words.first()?.as_str() {
        "ACQUIRED" => Some(Outcome::Acquired {
            pid: words.get(1)?.parse().ok()?,
            events: match words.get(2)?.as_str() {
                "-" => Vec::new(),
                list => list.split(',').map(str::to_string).collect(),
            },
            micros: words.get(3)?.parse().ok()?,
        }),
        "CONFLICT" => Some(Outcome::Conflict {
            holder: words.get(1)?.parse().ok()?,
        }),
        "ERROR" => Some(Outcome::Error {
            code: words.get(1)?.clone(),
            message: words[2..].join(" "),
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ownership intervals.

/// One ownership as a winner saw it: CLOCK_MONOTONIC right after `acquire` returned and right
/// before `release` was called.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
}

/// Fails when any two intervals overlap. Returns the smallest gap between consecutive owners.
pub fn assert_no_overlap(what: &str, intervals: &[Interval]) -> Option<u64> {
    for i in intervals {
        assert!(i.start <= i.end, "{what}: inverted interval {i:?}");
    }
    let mut sorted = intervals.to_vec();
    sorted.sort_by_key(|i| (i.start, i.end));
    let mut min_gap: Option<u64> = None;
    for w in sorted.windows(2) {
        let (prev, next) = (w[0], w[1]);
        assert!(
            next.start >= prev.end,
            "{what}: DOUBLE OWNER: pid {} owned [{}, {}] while pid {} owned [{}, {}] \
             (overlap {} ns)",
            next.pid,
            next.start,
            next.end,
            prev.pid,
            prev.start,
            prev.end,
            prev.end.min(next.end) - next.start
        );
        let gap = next.start - prev.end;
        min_gap = Some(min_gap.map_or(gap, |g| g.min(gap)));
    }
    min_gap
}

// ---------------------------------------------------------------------------------------------
// The child's side: the roles.

/// Entry point of the re-executed binary; does nothing in a normal test run.
pub fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    // Die by these signals as any process without handlers does, even when started from a
    // shell that ignores SIGINT for background jobs (dispositions survive exec).
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: resetting to the default disposition installs no handler of ours.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // Run under the file creation mask a service could be started with (octal).
    #[cfg(unix)]
    if let Some(mask) = param("UMASK") {
        // SAFETY: umask takes no pointer and only changes this process's creation mask.
        unsafe { libc::umask(libc::mode_t::from_str_radix(&mask, 8).unwrap()) };
    }
    let code = match role.as_str() {
        "acquire" => role_acquire(),
        "race" => role_race(),
        "loop" => role_loop(),
        "hammer" => role_hammer(),
        "probe" => role_probe(),
        "temp" => role_temp(),
        "sweep" => role_sweep(),
        "idle" => {
            say("READY");
            wait_stdin_eof();
            0
        }
        other => {
            eprintln!("unknown role {other}");
            2
        }
    };
    std::process::exit(code);
}

fn param(key: &str) -> Option<String> {
    std::env::var(format!("{PARAM_PREFIX}{key}")).ok()
}

fn param_u64(key: &str, default: u64) -> u64 {
    param(key).map_or(default, |v| v.parse().unwrap())
}

fn target_from_env() -> LockTarget {
    let dir = param("DIR").expect("PROCESSLOCK_IT_DIR");
    let ty = param("TYPE").unwrap_or_else(|| "backend".into());
    let side = param("SIDE");
    LockTarget::new(dir, LockName::new(&ty, side.as_deref()).unwrap())
}

fn say(line: impl AsRef<str>) {
    let mut out = io::stdout().lock();
    let _ = write!(out, "\n{MARK}{}\n", line.as_ref());
    let _ = out.flush();
}

fn wait_stdin_eof() {
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
}

/// Blocks until the parent writes a byte; exits quietly if the parent went away instead.
fn barrier() {
    let mut b = [0u8; 1];
    match io::stdin().read(&mut b) {
        Ok(1) => {}
        _ => std::process::exit(3),
    }
}

fn say_error(e: &Error) {
    say(format!(
        "ERROR {} {}",
        e.code(),
        e.to_string().replace('\n', " ")
    ));
}

/// Drops privileges to `PROCESSLOCK_IT_UID` (also as group) when asked.
#[cfg(unix)]
fn maybe_become_other_user() -> bool {
    let Some(uid) = param("UID") else {
        return true;
    };
    let id: libc::uid_t = uid.parse().unwrap();
    // SAFETY: plain system calls with no pointer but setgroups's, which reads nothing for a count
    // of 0.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(id) == 0 && libc::setuid(id) == 0
    };
    if !ok {
        say(format!(
            "ERROR SETUID cannot become uid {id}: {}",
            io::Error::last_os_error()
        ));
    }
    ok
}

#[cfg(not(unix))]
fn maybe_become_other_user() -> bool {
    assert!(param("UID").is_none(), "running as another user: Unix only");
    true
}

/// `acquire` once and report `ACQUIRED <pid> <events> <micros>`, `CONFLICT <holder pid>` or
/// `ERROR <code> <message>`. Then, by `PROCESSLOCK_IT_AFTER`:
/// * `release` (default): release at once and report `RELEASED true|false`;
/// * `wait`: report, wait until stdin closes (or a signal ends the process), release and report.
///
/// With `INHERIT=1`, an `idle` process inheriting the lock descriptor is started after the
/// acquisition and reported as `INHERITED <pid>`.
fn role_acquire() -> i32 {
    if !maybe_become_other_user() {
        return 0;
    }
    let target = target_from_env();
    let after = param("AFTER").unwrap_or_else(|| "release".into());
    let t0 = Instant::now();
    let result = acquire(&target, None);
    let micros = t0.elapsed().as_micros();
    match result {
        Ok(a) => {
            say(format!(
                "ACQUIRED {} {} {micros}",
                a.lock.record().pid,
                encode_events(&a.events)
            ));
            #[cfg(unix)]
            if param("INHERIT").as_deref() == Some("1") {
                say(format!("INHERITED {}", spawn_inheritor(a.lock.file())));
            }
            match after.as_str() {
                "release" => {}
                "wait" => wait_stdin_eof(),
                other => panic!("unknown AFTER {other}"),
            }
            match a.lock.release() {
                Ok(removed) => say(format!("RELEASED {removed}")),
                Err(e) => say_error(&e),
            }
        }
        Err(Error::Conflict(c)) => say(format!("CONFLICT {}", c.holder.pid)),
        Err(e) => say_error(&e),
    }
    0
}

/// Starts an `idle` process that inherits a duplicate of the lock descriptor (as the `run`
/// command's child does) and this process's stdin; returns its PID. It outlives this process
/// (which the test kills), so it is never waited for here.
#[cfg(unix)]
#[allow(clippy::zombie_processes)]
fn spawn_inheritor(lock: &fs::File) -> u32 {
    use std::os::unix::io::AsRawFd;
    // `dup` clears FD_CLOEXEC on the copy, so it survives exec.
    // SAFETY: `lock` is an open file borrowed for the call; dup only makes a new descriptor, which
    // this function closes below.
    let fd = unsafe { libc::dup(lock.as_raw_fd()) };
    assert!(fd >= 0, "dup: {}", io::Error::last_os_error());
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "idle")
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SAFETY: `fd` is the descriptor this function made with dup and nothing else owns or closes
    // it.
    unsafe { libc::close(fd) };
    child.id()
}

/// READY, barrier, one `acquire`. A winner holds for `HOLD_MS` and reports
/// `WON <start ns> <end ns> <removed> <events>`; others report like `role_acquire`.
fn role_race() -> i32 {
    let target = target_from_env();
    let hold = Duration::from_millis(param_u64("HOLD_MS", 20));
    say("READY");
    barrier();
    match acquire(&target, None) {
        Ok(a) => {
            let start = mono_ns();
            std::thread::sleep(hold);
            let end = mono_ns();
            let removed = a.lock.release();
            match removed {
                Ok(removed) => say(format!(
                    "WON {start} {end} {removed} {}",
                    encode_events(&a.events)
                )),
                Err(e) => say_error(&e),
            }
        }
        Err(Error::Conflict(c)) => say(format!("CONFLICT {}", c.holder.pid)),
        Err(e) => say_error(&e),
    }
    0
}

/// READY, barrier, then `CYCLES` acquire/release cycles, retrying on conflict. Reports
/// `IV <start> <end>` per cycle and `DONE <conflicts>`. With `ABANDON=1` each owner lets its
/// lock go without removing the file (like a holder that died), so every acquisition after the
/// first is a stale takeover.
fn role_loop() -> i32 {
    let target = target_from_env();
    let cycles = param_u64("CYCLES", 100);
    let hold_us = param_u64("HOLD_US", 100);
    let abandon = param("ABANDON").as_deref() == Some("1");
    let mut rng = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    say("READY");
    barrier();
    let mut intervals = Vec::with_capacity(cycles as usize);
    let mut conflicts = 0u64;
    while (intervals.len() as u64) < cycles {
        match acquire(&target, None) {
            Ok(a) => {
                let start = mono_ns();
                // Hold for a while, busy, so that the owner is often descheduled while it owns.
                let until = start + (next() % (hold_us + 1)) * 1000;
                while mono_ns() < until {
                    std::hint::spin_loop();
                }
                let end = mono_ns();
                if abandon {
                    // Let the lock go without removing the file, as a crash would: the next
                    // owner has to take it over as stale.
                    if !a.lock.still_linked() {
                        say("ERROR ABANDON our lock file was gone before we let it go");
                        return 1;
                    }
                    drop(a);
                    intervals.push((start, end));
                    continue;
                }
                match a.lock.release() {
                    Ok(true) => intervals.push((start, end)),
                    Ok(false) => {
                        say("ERROR RELEASE our lock file was gone at release");
                        return 1;
                    }
                    Err(e) => {
                        say_error(&e);
                        return 1;
                    }
                }
            }
            Err(Error::Conflict(_)) => {
                conflicts += 1;
                std::thread::sleep(Duration::from_micros(50 + next() % 300));
            }
            Err(e) => {
                say_error(&e);
                return 1;
            }
        }
    }
    let mut out = String::from("\n");
    for (s, e) in intervals {
        out.push_str(&format!("{MARK}IV {s} {e}\n"));
    }
    out.push_str(&format!("{MARK}DONE {conflicts}\n"));
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    0
}

/// READY, then acquire/release as fast as possible until killed. Any error but a conflict is
/// reported and ends the process.
fn role_hammer() -> i32 {
    let target = target_from_env();
    say("READY");
    loop {
        match acquire(&target, None) {
            Ok(a) => {
                if let Err(e) = a.lock.release() {
                    say_error(&e);
                    return 1;
                }
            }
            Err(Error::Conflict(_)) => {}
            Err(e) => {
                say_error(&e);
                return 1;
            }
        }
    }
}

/// A flag that turns true once stdin closes (after the barrier byte has been read).
fn stop_on_stdin_eof() -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        wait_stdin_eof();
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// READY, barrier, then `step` again and again until stdin closes (at most `HOLD_MS`, 50 by
/// default). False when a step failed: its error has been reported.
fn repeat_after_barrier(mut step: impl FnMut() -> Result<(), Error>) -> bool {
    let run = Duration::from_millis(param_u64("HOLD_MS", 50));
    say("READY");
    barrier();
    let stop = stop_on_stdin_eof();
    let t0 = Instant::now();
    while t0.elapsed() < run && !stop.load(Ordering::Relaxed) {
        if let Err(e) = step() {
            say_error(&e);
            return false;
        }
    }
    true
}

/// `inspect` the lock file again and again (`repeat_after_barrier`); reports
/// `PROBED <held> <stale> <absent> <invalid>`.
fn role_probe() -> i32 {
    let target = target_from_env();
    let mut counts = [0u64; 4];
    let probed = repeat_after_barrier(|| {
        let i = match inspect(&target.path)? {
            Inspection::Held(_) | Inspection::HeldUnlocked(..) | Inspection::HeldByOther(..) => 0,
            Inspection::Stale(_) => 1,
            Inspection::Absent => 2,
            Inspection::Invalid(_) => 3,
        };
        counts[i] += 1;
        Ok(())
    });
    if !probed {
        return 1;
    }
    say(format!(
        "PROBED {} {} {} {}",
        counts[0], counts[1], counts[2], counts[3]
    ));
    0
}

/// Leaves what an acquirer killed between creating its temp file and linking it leaves: a file
/// named `.<lock file name>.<pid>.0.tmp` with part of a record in it, locked when `FLOCK=1`.
/// Reports `READY <path>` and waits until stdin closes (or it is killed).
fn role_temp() -> i32 {
    let target = target_from_env();
    let pid = std::process::id();
    let path = target
        .dir
        .join(format!(".{}.{pid}.0.tmp", target.name.file_name()));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    if param("FLOCK").as_deref() == Some("1") {
        // std's lock is `flock` on Unix, a whole-file `LockFileEx` on Windows: either conflicts
        // with the protocol's lock of the file.
        f.try_lock().unwrap();
    }
    f.write_all(format!("{{\n  \"pid\": {pid},\n  \"sta").as_bytes())
        .unwrap();
    say(format!("READY {}", path.display()));
    wait_stdin_eof();
    0
}

/// `sweep_orphan_temps` over the lock directory again and again (`repeat_after_barrier`);
/// reports `SWEPT <sweeps> <files removed>`.
fn role_sweep() -> i32 {
    let target = target_from_env();
    let (mut sweeps, mut removed) = (0u64, 0usize);
    let swept = repeat_after_barrier(|| {
        removed += sweep_orphan_temps(&target.dir, None)?.len();
        sweeps += 1;
        Ok(())
    });
    if !swept {
        return 1;
    }
    say(format!("SWEPT {sweeps} {removed}"));
    0
}

/// The names in a lock directory, without the removal guard that every remover leaves there on
/// purpose (see `guard.rs`), nor the generation files that keep the locks' fencing tokens.
#[allow(dead_code)]
pub fn lock_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n != ".processlock.guard" && !(n.starts_with('.') && n.ends_with(".lock.fencing"))
        })
        .collect();
    names.sort();
    names
}
