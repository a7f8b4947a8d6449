//! Passing the lock's descriptors to a claimant that did not inherit them.
//!
//! Launchers written in Node (npm, npx, `node --watch`) start their children with the standard
//! descriptors only, so the app behind `processlock run -- npm start` has the variable but not
//! the descriptors it names. `processlock run` therefore also listens on a Unix socket, named in
//! the variable: on Linux in the abstract namespace (`@processlock-...`: no file, so nothing is
//! left behind when `run` is killed), elsewhere in a directory of its own (mode 0700) under the
//! temp directory. A claimant connects; if it descends from the command `run` started (the only
//! thing that opens the door: an abstract socket has no permissions), `run` sends it duplicates of the
//! lock's descriptor and of the claim token's read end (`SCM_RIGHTS`), and the claim goes on
//! exactly as with inherited ones: verified against the OS lock, then the token's one byte
//! decides. Serving descriptors to several claimants is therefore harmless: only the token
//! makes an owner, and it has one byte.

use std::ffi::OsStr;
use std::io;
use std::mem::{size_of, size_of_val, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

/// How long a claimant waits for `run` to answer: it answers at once from its main loop, so
/// only a `run` that is stopped (SIGSTOP) or dying takes longer, and then there is no claim.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How many parent links a claimant may be below the command: a guard against loops only.
const MAX_DEPTH: usize = 64;

/// The listening socket of `processlock run`. Dropping it closes it (and removes its file and
/// directory where it has them).
#[derive(Debug)]
pub struct HandoverSocket {
    listener: OwnedFd,
    /// What a claimant connects to: `@name` (abstract) or a path.
    address: std::ffi::OsString,
    dir: Option<PathBuf>,
    /// Connections of the claimants served and not yet gone: a claimant that wins the token
    /// says so with one byte and keeps its connection for as long as it lives.
    served: Vec<Served>,
}

#[derive(Debug)]
struct Served {
    conn: OwnedFd,
    claimed: bool,
}

/// What became of a claimant's connection that was readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimNews {
    /// Nothing that changes who may claim.
    Nothing,
    /// The claimant that owned the claim is gone: a new token may be handed out (an app
    /// restarted by its watcher claims the lock again).
    OwnerGone,
}

impl HandoverSocket {
    /// A non-blocking listener with a fresh name.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn bind() -> io::Result<HandoverSocket> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut tries = 0;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let address = format!("@processlock-{}-{nanos}-{n}", std::process::id());
            match listen_at(address.as_bytes()) {
                Ok(listener) => {
                    return Ok(HandoverSocket {
                        listener,
                        address: address.into(),
                        dir: None,
                        served: Vec::new(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A non-blocking listener in a fresh private directory under the temp directory.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub fn bind() -> io::Result<HandoverSocket> {
        let dir = private_dir()?;
        let path = dir.join("s");
        match listen_at(path.as_os_str().as_bytes()) {
            Ok(listener) => Ok(HandoverSocket {
                listener,
                address: path.into_os_string(),
                dir: Some(dir),
                served: Vec::new(),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// What `ask` connects to.
    pub fn address(&self) -> &OsStr {
        &self.address
    }

    /// Readable when a claimant is waiting: for the caller's `poll`.
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Every descriptor to `poll` for: the listener and the connections of served claimants.
    pub fn fds(&self) -> Vec<RawFd> {
        std::iter::once(self.fd())
            .chain(self.served.iter().map(|s| s.conn.as_raw_fd()))
            .collect()
    }

    /// Handles `fd` (one of `fds`) having become readable. The listener: answers every
    /// connection waiting now, a peer that descends from `root` getting `fds`, any other peer
    /// nothing; never blocks. A served connection: its claimant's word or its end. `Err`: the
    /// listener itself fails (out of descriptors...): stop polling it, or the caller would spin.
    pub fn readable(&mut self, fd: RawFd, root: u32, fds: &[RawFd]) -> io::Result<ClaimNews> {
        if fd == self.fd() {
            self.serve_waiting(root, fds)?;
            return Ok(ClaimNews::Nothing);
        }
        let Some(i) = self.served.iter().position(|s| s.conn.as_raw_fd() == fd) else {
            return Ok(ClaimNews::Nothing);
        };
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte into our buffer from a connection we own; it is readable, so
        // this does not block.
        let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
        if n == 1 {
            self.served[i].claimed = true;
            return Ok(ClaimNews::Nothing);
        }
        if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            return Ok(ClaimNews::Nothing);
        }
        // The end of the connection: its claimant lost the race, or is gone.
        let gone = self.served.swap_remove(i);
        Ok(if gone.claimed {
            ClaimNews::OwnerGone
        } else {
            ClaimNews::Nothing
        })
    }

    /// Answers every connection waiting now. A peer that is `root` or descends from it gets
    /// `fds`; any other peer gets nothing. Never blocks.
    pub fn serve_waiting(&mut self, root: u32, fds: &[RawFd]) -> io::Result<()> {
        while let Some(conn) = accept(self.fd())? {
            if peer_pid(&conn).is_some_and(|pid| descends_from(pid, root))
                && send_fds(&conn, fds).is_ok()
            {
                self.served.push(Served {
                    conn,
                    claimed: false,
                });
            }
        }
        Ok(())
    }
}

impl Drop for HandoverSocket {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(&self.address);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Asks the `run` listening at `address` for the `count` descriptors it serves (for a lock file:
/// the lock's descriptor and the token, in that order; for a lock on a server: the token), all
/// close-on-exec here. `None` unless exactly that many arrive.
pub(super) fn ask(address: &OsStr, count: usize) -> Option<(Vec<OwnedFd>, Claiming)> {
    let sock = connect(address)?;
    let fds = recv_fds(&sock, count)?;
    Some((fds, Claiming(sock)))
}

/// The connection to `run` of a claimant that was served: dropped if the claim fails; `won`
/// otherwise.
#[derive(Debug)]
pub(super) struct Claiming(OwnedFd);

impl Claiming {
    /// Tells `run` this process owns the claim, and keeps the connection open until this
    /// process ends: then `run` may hand the claim to the next one (a restarted app).
    pub fn won(self) {
        // SAFETY: writing one byte from our buffer to our connection.
        unsafe { libc::write(self.0.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        static KEPT: std::sync::Mutex<Vec<OwnedFd>> = std::sync::Mutex::new(Vec::new());
        KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(self.0);
    }
}

/// As `ask`, from the process `peer` only: the kernel names the process that listens at
/// `address` (its credentials when it listened), whatever the address or its name claim.
pub(super) fn ask_peer(
    address: &OsStr,
    count: usize,
    peer: u32,
) -> Option<(Vec<OwnedFd>, Claiming)> {
    let sock = connect(address)?;
    if peer_pid(&sock) != Some(peer) {
        return None;
    }
    let fds = recv_fds(&sock, count)?;
    Some((fds, Claiming(sock)))
}

/// A socket connected to `address`, with the answer timeout set.
fn connect(address: &OsStr) -> Option<OwnedFd> {
    let (addr, len) = sockaddr(address.as_bytes()).ok()?;
    let sock = socket().ok()?;
    let timeout = libc::timeval {
        tv_sec: ANSWER_TIMEOUT.as_secs() as _,
        tv_usec: 0,
    };
    // SAFETY: plain socket calls on our own socket with pointers to our own structs.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        ) != 0
        {
            return None;
        }
    }
    Some(sock)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn private_dir() -> io::Result<PathBuf> {
    let mut template = std::env::temp_dir()
        .join("processlock-XXXXXX")
        .into_os_string()
        .into_vec();
    template.push(0);
    // SAFETY: mkdtemp rewrites the X's of our NUL-terminated buffer in place.
    if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    template.pop();
    use std::os::unix::ffi::OsStringExt;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(template)))
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just created and own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    super::fd::set_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)?;
    Ok(sock)
}

fn listen_at(address: &[u8]) -> io::Result<OwnedFd> {
    let (addr, len) = sockaddr(address)?;
    let sock = socket()?;
    // SAFETY: bind and listen on our own socket with our own address struct.
    unsafe {
        if libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        ) != 0
            || libc::listen(sock.as_raw_fd(), 16) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    super::fd::set_flag(
        sock.as_raw_fd(),
        libc::F_GETFL,
        libc::F_SETFL,
        libc::O_NONBLOCK,
    )?;
    Ok(sock)
}

/// `@name`: the Linux abstract namespace (a leading NUL instead of a file); anything else: a path.
fn sockaddr(address: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    let (bytes, skip) = match address.strip_prefix(b"@") {
        Some(name) if cfg!(any(target_os = "linux", target_os = "android")) => (name, 1),
        _ => (address, 0),
    };
    if bytes.is_empty() || skip + bytes.len() >= addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path[skip..].iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // A path ends with a NUL; an abstract name is exactly its bytes after the leading NUL.
    let len = size_of::<libc::sa_family_t>() + skip + bytes.len() + (1 - skip);
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    {
        addr.sun_len = len as u8;
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    let len = len + 1; // the sun_len byte before the family
    Ok((addr, len as libc::socklen_t))
}

/// The next waiting connection; `None` when there is none now.
fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: accept(2) on our listener without asking for the peer address.
        let fd = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
        if fd >= 0 {
            // SAFETY: a descriptor we just accepted and own.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = super::fd::set_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC);
            return Ok(Some(conn));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR | libc::ECONNABORTED) => {}
            Some(n) if n == libc::EAGAIN || n == libc::EWOULDBLOCK => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The most descriptors one answer carries.
const MAX_FDS: usize = 2;

/// One byte of payload (a stream message must carry some) with the descriptors attached.
fn send_fds(conn: &OwnedFd, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let data_len = size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr and the control buffer are ours and outlive the sendmsg call; the header
    // written through CMSG_FIRSTHDR lies inside `control`, which CMSG_SPACE sized for it.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        if libc::sendmsg(conn.as_raw_fd(), &msg, 0) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fds(sock: &OwnedFd, count: usize) -> Option<Vec<OwnedFd>> {
    if count == 0 || count > MAX_FDS {
        return None;
    }
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let data_len = (count * size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    let mut control = vec![0u8; space];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = libc::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = 0;
    // SAFETY: msghdr and the buffers are ours and outlive recvmsg; the control message is read
    // only where the kernel says one is, and its descriptors become ours to own.
    let fds = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, flags);
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n != 1
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        // However many arrived become ours (and are closed when dropped), even if it is not
        // the number asked for.
        let arrived = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize)
            / size_of::<RawFd>();
        let mut raw = [-1 as RawFd; MAX_FDS];
        let arrived = arrived.min(MAX_FDS);
        std::ptr::copy_nonoverlapping(
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            raw.as_mut_ptr(),
            arrived,
        );
        raw[..arrived]
            .iter()
            .map(|&fd| OwnedFd::from_raw_fd(fd))
            .collect::<Vec<_>>()
    };
    if fds.len() != count {
        return None;
    }
    for fd in &fds {
        super::fd::set_flag(
            fd.as_raw_fd(),
            libc::F_GETFD,
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        )
        .ok()?;
    }
    Some(fds)
}

/// Whether `pid` is `ancestor` or one of its descendants.
pub(super) fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..MAX_DEPTH {
        if pid == ancestor {
            return true;
        }
        match parent_pid(pid) {
            // Checked before the walk stops at PID 1: `run` may be PID 1 of a container.
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 && parent != pid => pid = parent,
            _ => return false,
        }
    }
    false
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_pid(conn: &OwnedFd) -> Option<u32> {
    // SAFETY: getsockopt into a zeroed ucred of the size we pass.
    unsafe {
        let mut cred: libc::ucred = zeroed();
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        if libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        u32::try_from(cred.pid).ok()
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses: cut at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

#[cfg(target_os = "macos")]
fn peer_pid(conn: &OwnedFd) -> Option<u32> {
    // SAFETY: getsockopt into a pid_t of the size we pass.
    unsafe {
        let mut pid: libc::pid_t = 0;
        let mut len = size_of::<libc::pid_t>() as libc::socklen_t;
        if libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&mut pid as *mut libc::pid_t).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        u32::try_from(pid).ok()
    }
}

#[cfg(target_os = "macos")]
fn parent_pid(pid: u32) -> Option<u32> {
    let pid = libc::c_int::try_from(pid).ok()?;
    let size = size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: proc_pidinfo fills at most `size` bytes of our zeroed struct.
    unsafe {
        let mut info: libc::proc_bsdinfo = zeroed();
        let n = libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        );
        (n == size).then_some(info.pbi_ppid)
    }
}

/// Elsewhere nobody can be told apart: no descriptors are served.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
fn peer_pid(_conn: &OwnedFd) -> Option<u32> {
    None
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
fn parent_pid(_pid: u32) -> Option<u32> {
    None
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    #[test]
    fn this_process_descends_from_its_parent_and_not_from_a_stranger() {
        let me = std::process::id();
        let parent = parent_pid(me).unwrap();
        assert!(descends_from(me, me));
        // Every process descends from PID 1 (`run` may be PID 1 of a container).
        assert!(descends_from(me, 1));
        assert!(parent <= 1 || descends_from(me, parent));
        let mut stranger = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!descends_from(me, stranger.id()));
        assert!(descends_from(stranger.id(), me));
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    #[test]
    fn a_served_peer_gets_both_descriptors_and_the_socket_goes_with_its_owner() {
        let mut server = HandoverSocket::bind().unwrap();
        let address = server.address().to_os_string();
        assert!(
            address.as_bytes().starts_with(b"@processlock-"),
            "{address:?}"
        );
        let (token, _writer) = crate::os::cloexec_pipe().unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fds = [file.as_raw_fd(), token.as_raw_fd()];
        let asking = {
            let address = address.clone();
            std::thread::spawn(move || ask(&address, 2))
        };
        // This process is its own descendant: it is served.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !asking.is_finished() && std::time::Instant::now() < until {
            server.serve_waiting(std::process::id(), &fds).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let (served, _claiming) = asking.join().unwrap().expect("served");
        let [lock, tok]: [OwnedFd; 2] = served.try_into().unwrap();
        let ino = |fd: RawFd| crate::inherit::fd::inode(fd).unwrap();
        assert_eq!(ino(lock.as_raw_fd()), ino(file.as_raw_fd()));
        assert_eq!(ino(tok.as_raw_fd()), ino(token.as_raw_fd()));
        // A peer that does not descend from the command gets nothing.
        let mut stranger = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let asking = {
            let address = address.clone();
            std::thread::spawn(move || ask(&address, 2))
        };
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !asking.is_finished() && std::time::Instant::now() < until {
            server.serve_waiting(stranger.id(), &fds).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        stranger.kill().unwrap();
        stranger.wait().unwrap();
        assert!(asking.join().unwrap().is_none());
        drop(server);
        assert!(ask(&address, 2).is_none());
    }
}
