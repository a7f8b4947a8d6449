//! Whether the server has ended a holding session, answered on the caller's own thread.
//!
//! A server that ends a session (`pg_terminate_backend`, an idle-session timeout, a shutdown)
//! sends its last word (`FATAL: terminating connection ...`) before it lets go of the session's
//! locks, and the bytes are in the client's socket before anyone else can be granted the lock:
//! on one host at once, across a network as soon as they arrive. The lock's own thread reads
//! them and declares the loss, but a thread that waits for a CPU on a busy machine may do so
//! milliseconds after another process has taken the lock. So `PgHeld::is_lost` also looks at
//! the socket itself: between the lock's own statements the server has nothing to say to the
//! session (it reports a changed setting only with the answer to the next statement, and
//! notifications only to a session that listens), so anything that came unasked (bytes, or the
//! end of the stream) is the end of the session.
//!
//! Two ways of seeing it: the bytes the lock's thread has read while nothing was asked
//! (`Heard`, the stream under the client), and, on Unix, bytes still waiting in the socket
//! (a `MSG_PEEK` on a duplicate of its descriptor), which does not wait for that thread at all.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the caller's thread can know of the session without its lock's thread.
pub(crate) struct Probe {
    /// A duplicate of the session's socket, to peek at (Unix only), until the session ends:
    /// the socket must close with the session, so that the server sees its client go.
    #[cfg(unix)]
    socket: std::sync::Mutex<Option<std::os::fd::OwnedFd>>,
    /// A statement of the lock's own is on its way or being answered: what comes is expected.
    /// True until the lock is held and idle.
    asking: AtomicBool,
    /// Something came from the server while nothing was asked.
    heard: AtomicBool,
}

impl Probe {
    /// A probe of a session whose socket `raw` (Unix) is peeked at.
    #[cfg(unix)]
    pub fn new(socket: Option<std::os::fd::OwnedFd>) -> Arc<Self> {
        Arc::new(Self {
            socket: std::sync::Mutex::new(socket),
            asking: AtomicBool::new(true),
            heard: AtomicBool::new(false),
        })
    }

    #[cfg(not(unix))]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            asking: AtomicBool::new(true),
            heard: AtomicBool::new(false),
        })
    }

    /// The lock's thread is about to send a statement (`true`), or has its whole answer and
    /// expects nothing more (`false`).
    pub fn asking(&self, asking: bool) {
        self.asking.store(asking, Ordering::SeqCst);
    }

    /// Whether the server has said something unasked: the session is ending, or has ended.
    /// Never true while the lock's own statement is out (the answer is expected then).
    pub fn heard_unasked(&self) -> bool {
        if self.asking.load(Ordering::SeqCst) {
            return false;
        }
        // In this order: bytes the lock's thread takes out of the socket after the peek
        // found it empty are counted by the second look at `heard`.
        self.heard.load(Ordering::SeqCst) || self.pending() || self.heard.load(Ordering::SeqCst)
    }

    /// The session is closed: let go of the duplicate, so that the socket closes with it.
    pub fn close(&self) {
        #[cfg(unix)]
        drop(self.socket.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    fn read_unasked(&self) {
        if !self.asking.load(Ordering::SeqCst) {
            self.heard.store(true, Ordering::SeqCst);
        }
    }

    /// Bytes, or the end of the stream, waiting in the socket.
    #[cfg(unix)]
    fn pending(&self) -> bool {
        use std::os::fd::AsRawFd;
        // Held while peeking: the descriptor cannot be closed (and its number reused) meanwhile.
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let Some(socket) = socket.as_ref() else {
            return false;
        };
        let mut byte = 0u8;
        // SAFETY: `byte` is a valid, writable buffer of length 1 for the duration of the call,
        // and the descriptor is owned by this probe and kept open by the lock held above.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                std::ptr::addr_of_mut!(byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            // A byte, or 0: the server closed its end.
            return true;
        }
        let e = io::Error::last_os_error();
        // Nothing there; any other error means the connection is broken.
        !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    }

    #[cfg(not(unix))]
    fn pending(&self) -> bool {
        false
    }
}

/// The stream under the client: counts what is read while the lock's thread asked nothing.
pub(crate) struct Heard<S> {
    inner: S,
    probe: Arc<Probe>,
}

impl<S> Heard<S> {
    pub fn new(inner: S, probe: Arc<Probe>) -> Self {
        Self { inner, probe }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() {
            // Bytes, the end of the stream, or an error: all news when nothing was asked.
            this.probe.read_unasked();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
