//! A private PostgreSQL server per test, and child processes that hold locks on it.
//!
//! `PgServer::start` runs `initdb` into a new temporary directory (as the `postgres` user when
//! the tests run as root, since the server refuses root), starts the server on 127.0.0.1 on a
//! free port with its Unix socket in that directory, and stops it (`pg_ctl stop -m immediate`)
//! and removes the directory when dropped, also when the test panics. Where PostgreSQL is not
//! installed at all, `PgServer::start` prints one line saying so and returns `None`.
//!
//! A test binary re-executes itself (`std::env::current_exe()`) with `PROCESSLOCK_PG_ROLE` set
//! and only its `child_role` test selected. Children report on stdout in lines `@@KIND ...` and
//! wait on their stdin, so a child whose test dies sees EOF and exits by itself.

#![allow(dead_code)]

pub mod tls;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ROLE_ENV: &str = "PROCESSLOCK_PG_ROLE";
const PARAM_PREFIX: &str = "PROCESSLOCK_PG_";
const MARK: &str = "@@";
/// How long the parent waits for any single report of a child before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "lock-test-secret";

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, and the clock
/// `Instant` reads on Linux.
pub fn mono_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// An `Instant` of this process on the machine-wide monotonic clock.
pub fn instant_ns(t: Instant) -> i128 {
    let now = Instant::now();
    let base = mono_ns();
    if t >= now {
        base + (t - now).as_nanos() as i128
    } else {
        base - (now - t).as_nanos() as i128
    }
}

pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is a child we started and have not
    // reaped, so it cannot name another process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill {pid}: {}", io::Error::last_os_error());
}

/// Stops `pid` (SIGSTOP) and returns once every thread of it is stopped. A stop signal is taken
/// by one thread, which then stops the others: until it runs, another thread (the lock's own)
/// may go on for a while, on a busy machine for milliseconds.
pub fn freeze(pid: u32) {
    send_signal(pid, libc::SIGSTOP);
    let until = Instant::now() + TIMEOUT;
    while !every_thread_stopped(pid) {
        assert!(Instant::now() < until, "{pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn every_thread_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The server.

fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    // Debian and Ubuntu put the server binaries outside PATH, one directory per version.
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A new empty directory the server's user can write and everyone can traverse.
fn new_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "processlock-pg-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres {}", dir.display());
    }
    dir
}

pub struct PgServer {
    bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    running: bool,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
}

impl PgServer {
    /// A fresh server, or `None` (after saying so) where PostgreSQL is not installed.
    pub fn start() -> Option<PgServer> {
        Self::start_with(|_| Vec::new())
    }

    /// Like `start`; `setup` runs after `initdb` with the server's directory and returns extra
    /// server settings (`name=value`).
    pub fn start_with(setup: impl FnOnce(&std::path::Path) -> Vec<String>) -> Option<PgServer> {
        let Some(bin) = bindir() else {
            println!(
                "SKIPPED: PostgreSQL is not installed (no `pg_config --bindir`, no /usr/lib/postgresql/*/bin/initdb)"
            );
            return None;
        };
        let dir = new_dir();
        let pwfile = dir.join("pw");
        fs::write(&pwfile, PASSWORD).unwrap();
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o644)).unwrap();
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            running: false,
            settings: Vec::new(),
        };
        server.run_checked(
            "initdb",
            &[
                "-D",
                server.data().to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        server.settings = setup(&server.dir);
        // A free port can be taken by someone else before the server binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.start_server() {
                return Some(server);
            }
        }
        panic!("the test server did not start:\n{}", server.log());
    }

    /// A hot standby of this server: a base backup, started read-only on a port of its own.
    pub fn start_standby(&self) -> PgServer {
        let mut standby = PgServer {
            bin: self.bin.clone(),
            dir: new_dir(),
            port: 0,
            running: false,
            settings: self.settings.clone(),
        };
        self.run_checked(
            "pg_basebackup",
            &[
                "-D",
                standby.data().to_str().unwrap(),
                "-R",
                "-c",
                "fast",
                "-X",
                "stream",
                "-h",
                self.dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ],
        );
        // The socket directory is where the server runs: the primary's path is in the copy.
        for _ in 0..5 {
            standby.port = free_port();
            if standby.start_server() {
                return standby;
            }
        }
        panic!("the standby did not start:\n{}", standby.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run_checked(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_server(&mut self) -> bool {
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        for setting in &self.settings {
            opts.push_str(&format!(" -c {setting}"));
        }
        let ok = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap()])
            .args(["-l", self.dir.join("log").to_str().unwrap()])
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        self.running = ok;
        ok
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The TCP URL of another role of this server, which logs in with `password`.
    pub fn url_as(&self, role: &str, password: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The Unix socket, where login needs no password: for tests that connect a thousand
    /// times, since a password login costs a deliberately slow key derivation every time.
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// Stops the server at once, ending every session (`immediate`: no goodbye to clients).
    pub fn stop(&mut self) {
        self.stop_with("immediate");
    }

    /// Stops the server in `mode` (`pg_ctl stop -m`): `immediate`, or `fast` (each session is
    /// told it is ended, then the server shuts down cleanly).
    pub fn stop_with(&mut self, mode: &str) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .args(["-D", self.data().to_str().unwrap()])
                .args(["-m", mode, "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }

    /// Starts the server again after `stop`, on the same port and data.
    pub fn restart(&mut self) {
        assert!(
            self.start_server(),
            "the server did not start again:\n{}",
            self.log()
        );
    }

    /// Runs `sql` (one statement or several) and returns the rows of the last as text.
    pub fn sql(&self, sql: &str) -> Vec<Vec<String>> {
        let sql = sql.to_string();
        with_client(self.url(), |client| async move {
            let mut rows = Vec::new();
            for m in client.simple_query(&sql).await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    rows.push(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("").to_string())
                            .collect(),
                    );
                }
            }
            rows
        })
    }

    /// Polls `sql` (bounded by `TIMEOUT`) until its first value is `want`.
    pub fn wait_until(&self, sql: &str, want: &str) {
        let until = Instant::now() + TIMEOUT;
        loop {
            let got = self.sql(sql);
            if got.first().and_then(|r| r.first()).map(String::as_str) == Some(want) {
                return;
            }
            assert!(Instant::now() < until, "{sql} never gave {want}: {got:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `f` with a client of its own connected to `url` (without TLS), on a thread and runtime
/// of their own, so that a test's blocking code can ask the server anything; what `f` gives.
pub fn with_client<T, F, Fut>(url: String, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            f(client).await
        })
    })
    .join()
    .unwrap()
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Child processes.

pub struct Proc {
    pub pid: u32,
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts this test binary again in `role`; `params` become `PROCESSLOCK_PG_<KEY>`.
    pub fn spawn(role: &str, params: &[(&str, String)]) -> Proc {
        Self::spawn_with(Command::new(std::env::current_exe().unwrap()), role, params)
    }

    /// Like `spawn`, with `prefix` (e.g. `unshare --uts ...`) in front of the command.
    pub fn spawn_with(mut cmd: Command, role: &str, params: &[(&str, String)]) -> Proc {
        if cmd.get_program() != std::env::current_exe().unwrap().as_os_str() {
            cmd.arg(std::env::current_exe().unwrap());
        }
        cmd.args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in params {
            cmd.env(format!("{PARAM_PREFIX}{k}"), v);
        }
        let mut child = cmd.spawn().expect("spawn a child test process");
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
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            // Line by line, so that a report of a child that is still running shows its stderr.
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        Proc {
            pid,
            role: role.to_string(),
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// The next report, split on spaces; fails the test after `TIMEOUT`.
    pub fn next(&self) -> Vec<String> {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line.split(' ').map(str::to_string).collect(),
            Err(e) => panic!(
                "child {} ({}) sent no report ({e}); stderr:\n{}",
                self.pid,
                self.role,
                self.stderr.lock().unwrap_or_else(|p| p.into_inner())
            ),
        }
    }

    /// The next report, which must be of `kind`.
    pub fn expect(&self, kind: &str) -> Vec<String> {
        let r = self.next();
        assert_eq!(r[0], kind, "child {} ({}) said {r:?}", self.pid, self.role);
        r
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.stdin = None;
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child's parameter.
pub fn param(key: &str) -> Option<String> {
    std::env::var(format!("{PARAM_PREFIX}{key}")).ok()
}

/// A child's report: `@@kind a b c`, on a line of its own, flushed.
pub fn report(kind: &str, fields: &[String]) {
    let mut out = io::stdout().lock();
    writeln!(out, "\n{MARK}{kind} {}", fields.join(" ")).unwrap();
    out.flush().unwrap();
}

pub fn stdin_lines() -> impl Iterator<Item = String> {
    io::stdin().lock().lines().map_while(Result::ok)
}

/// A session with a transaction left open until `finish`: for holding catalog or row locks
/// that make other sessions wait where a test wants them to.
pub struct OpenTx {
    finish: Option<mpsc::Sender<String>>,
    done: Receiver<()>,
}

impl OpenTx {
    /// Runs `BEGIN; <sql>` and keeps the transaction open.
    pub fn begin(server: &PgServer, sql: &str) -> OpenTx {
        let url = server.url();
        let sql = format!("BEGIN; {sql}");
        let (started_tx, started) = mpsc::channel();
        let (finish, finish_rx) = mpsc::channel::<String>();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            with_client(url, |client| async move {
                client.batch_execute(&sql).await.unwrap();
                started_tx.send(()).unwrap();
                let end = tokio::task::spawn_blocking(move || finish_rx.recv_timeout(TIMEOUT))
                    .await
                    .unwrap()
                    .unwrap_or_else(|_| "ROLLBACK".to_string());
                client.batch_execute(&end).await.unwrap();
                let _ = done_tx.send(());
            })
        });
        started
            .recv_timeout(TIMEOUT)
            .expect("the transaction began");
        OpenTx {
            finish: Some(finish),
            done,
        }
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`.
    pub fn finish(mut self, how: &str) {
        self.finish.take().unwrap().send(how.to_string()).unwrap();
        self.done
            .recv_timeout(TIMEOUT)
            .expect("the transaction ended");
    }
}

/// PgBouncer in front of a test server, in `pool_mode` (`session` or `transaction`).
pub struct Pooler {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Pooler {
    /// `None` (after saying so) where PgBouncer is not installed.
    pub fn start(server: &PgServer, pool_mode: &str) -> Option<Pooler> {
        let Some(exe) = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        else {
            println!("SKIPPED: PgBouncer is not installed (no /usr/sbin/pgbouncer)");
            return None;
        };
        let dir = new_dir();
        let port = free_port();
        let config = dir.join("pgbouncer.ini");
        fs::write(
            &config,
            format!(
                "[databases]\n\
                 postgres = host={} port={} dbname=postgres user=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = any\n\
                 pool_mode = {pool_mode}\n\
                 default_pool_size = 4\n\
                 logfile = {}\n",
                server.dir.display(),
                server.port,
                dir.join("pgbouncer.log").display()
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root; setpriv execs it (no intermediate process to orphan it).
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let child = cmd
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pooler = Pooler { child, dir, port };
        let until = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "PgBouncer did not listen:\n{}",
                fs::read_to_string(pooler.dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(pooler)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Drops every packet of one loopback TCP connection (both directions, by the client's port)
/// until dropped: a network cut between one client and the server.
pub struct Cut {
    port: u16,
}

impl Cut {
    /// `None` (after saying so) where iptables is missing or the tests do not run as root.
    pub fn start(client_port: u16) -> Option<Cut> {
        if !is_root() || Command::new("iptables").arg("--version").output().is_err() {
            println!("SKIPPED: cutting a connection needs iptables and root");
            return None;
        }
        let cut = Cut { port: client_port };
        cut.rules("-I");
        Some(cut)
    }

    fn rules(&self, action: &str) {
        for dir in ["--sport", "--dport"] {
            let port = self.port.to_string();
            let args = [
                "-w", action, "INPUT", "-i", "lo", "-p", "tcp", dir, &port, "-j", "DROP",
            ];
            let ok = Command::new("iptables")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok || action == "-D", "iptables {args:?}");
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.rules("-D");
    }
}
