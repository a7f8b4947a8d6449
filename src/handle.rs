//! A lock as JavaScript holds it: `openLock` selects the backend once for a lock type and its
//! options, and answers a `NativeLock` whose methods are the calls on that lock; JavaScript
//! keeps the handle for later calls with the same options, so that no call reads an options
//! object or resolves a directory again. A wait that JavaScript may cancel is a `NativeWait`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use napi::bindgen_prelude::{Either, Object};
use napi::{Env, JsDeferred};
use napi_derive::napi;

use processlock::{Backend, Cancel, Error, FileBackend, LockName};

use crate::lock::{Lock, On};
use crate::{
    deadline_in, duration_ms, grace, holders, lock_dir, pg, AcquireOutcome, Failure, InfoOutcome,
    LockOptions, LogTo, ReleaseOutcome, RemoveOutcome, ServerOptions,
};

/// What selects a lock besides its type, and how its calls are made: read once, by `openLock`.
#[napi(object)]
pub struct LockSpec {
    /// The lock directory as given (else `$PROCESSLOCK_DIR`, else the default one).
    pub dir: Option<String>,
    /// The side; none (null) for none: the JavaScript layer has read `$TRADE_SIDE` already.
    pub trade_side: Option<String>,
    pub process_name: Option<String>,
    pub log: Option<LogTo>,
    /// The JavaScript module instance that makes the calls (`open_holder`).
    pub holder: u32,
    /// The lock is held on this server instead of in a file.
    pub server: Option<ServerOptions>,
}

/// The selected lock and the options its calls are made with; shared with the threads of waits.
struct Opened {
    lock: Box<dyn Lock + Send + Sync>,
    options: LockOptions,
    place: String,
}

/// One lock, on the backend its options select. See the module comment.
#[napi]
pub struct NativeLock {
    opened: Arc<Opened>,
}

/// A pending `acquireAsync`, which JavaScript can cancel (also before its wait started).
#[napi]
pub struct NativeWait {
    cancel: Cancel,
}

#[napi]
impl NativeWait {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)] // a JavaScript class: made with `new`
    pub fn new() -> Self {
        Self {
            cancel: Cancel::new(),
        }
    }

    /// Ends the wait with `LOCK_ABORTED` as soon as it can.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

/// The lock `process_type` with `spec`, or why there is none (a bad name, a directory that
/// cannot be found). The one place that chooses a backend: a URL means a server, else a file.
#[napi(catch_unwind)]
pub fn open_lock(process_type: String, spec: LockSpec) -> Either<NativeLock, Failure> {
    match open(&process_type, spec) {
        Ok(opened) => Either::A(NativeLock {
            opened: Arc::new(opened),
        }),
        Err(failure) => Either::B(*failure),
    }
}

fn open(process_type: &str, spec: LockSpec) -> Result<Opened, Box<Failure>> {
    let name = LockName::new(process_type, spec.trade_side.as_deref()).map_err(boxed)?;
    let log = spec.log.unwrap_or_default();
    let options = LockOptions {
        process_name: spec.process_name.clone(),
        log,
        quiet: log == LogTo::Silent,
        holder: spec.holder,
        exit_on_loss: spec
            .server
            .as_ref()
            .is_some_and(|s| s.on_lost.as_deref() != Some("notify")),
    };
    let lock: Box<dyn Lock + Send + Sync> = match spec
        .server
        .as_ref()
        .and_then(|s| pg::backend(s, spec.process_name.clone()))
    {
        Some(server) => Box::new(On::new(server, name)?),
        None => Box::new(On::new(
            FileBackend::new(lock_dir(spec.dir.as_deref()).map_err(boxed)?),
            name,
        )?),
    };
    let place = lock.place();
    Ok(Opened {
        lock,
        options,
        place,
    })
}

impl<B: Backend> On<B>
where
    B::Error: Into<Failure>,
{
    fn new(backend: B, name: LockName) -> Result<Self, Box<Failure>> {
        let place = backend.place(&name).map_err(boxed)?;
        Ok(Self {
            backend,
            name,
            place,
        })
    }
}

fn boxed(e: impl Into<Failure>) -> Box<Failure> {
    Box::new(e.into())
}

#[napi]
impl NativeLock {
    /// Where the lock is: its file's path, or its server and name (`lockFile` of the outcomes).
    #[napi(getter)]
    pub fn lock_file(&self) -> String {
        self.opened.place.clone()
    }

    /// Takes the lock once.
    #[napi(catch_unwind)]
    pub fn acquire(&self) -> AcquireOutcome {
        self.opened.acquire(None, Cancel::new())
    }

    /// Like `acquire`, but waits up to `wait_ms` for the holder to let go (its release, exit or
    /// death): blocks the calling thread. At the deadline: `LOCK_CONFLICT` with `waitedMs`.
    #[napi(catch_unwind)]
    pub fn acquire_wait(&self, wait_ms: f64) -> AcquireOutcome {
        self.opened
            .acquire(Some(duration_ms(Some(wait_ms))), Cancel::new())
    }

    /// The Promise form of `acquire_wait`. The wait blocks a thread of its own, started for it
    /// and ended with it, never one of libuv's pool (whose 4 threads `fs` and `dns` calls share);
    /// a process that never waits this way has no such thread. `timeout_ms`: `None` (or
    /// infinite) waits until the lock is ours or `wait` is cancelled (`LOCK_ABORTED`).
    #[napi(ts_return_type = "Promise<AcquireOutcome>", catch_unwind)]
    pub fn acquire_async<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<f64>,
        wait: &NativeWait,
    ) -> napi::Result<Object<'env>> {
        let timeout = duration_ms(timeout_ms);
        let cancel = wait.cancel.clone();
        let opened = Arc::clone(&self.opened);
        let (deferred, promise) = env.create_deferred::<AcquireOutcome, Settle>()?;
        let (give, take) = mpsc::channel::<JsDeferred<AcquireOutcome, Settle>>();
        let spawned = std::thread::Builder::new()
            .name("processlock-wait".into())
            .spawn(move || {
                let waited =
                    panic::catch_unwind(AssertUnwindSafe(|| opened.acquire(Some(timeout), cancel)));
                let outcome = waited.unwrap_or_else(|_| wait_failed("the waiting thread failed"));
                if let Ok(deferred) = take.recv() {
                    deferred.resolve(Box::new(move |_| Ok(outcome)));
                }
            });
        match spawned {
            // The thread takes it whenever it is done; it cannot be gone before that.
            Ok(_) => drop(give.send(deferred)),
            Err(e) => {
                let outcome = wait_failed(&format!("no thread could be started to wait: {e}"));
                deferred.resolve(Box::new(move |_| Ok(outcome)));
            }
        }
        Ok(promise)
    }

    /// Like `acquire`, but a live holder is replaced: of a lock file, a holder of this host gets
    /// SIGTERM, a wait of up to `grace_ms` (default 10 s) for the handover, then SIGKILL (the
    /// core's `replace_holder`, the same steps as `processlock run --replace`); on a server, a
    /// holder on any host is asked through the server to stop, and waited for up to `grace_ms`,
    /// never killed. Blocks the calling thread meanwhile.
    #[napi(catch_unwind)]
    pub fn acquire_replacing(&self, grace_ms: Option<f64>) -> AcquireOutcome {
        let opened = &*self.opened;
        match grace(grace_ms) {
            Ok(grace) => opened.kept(opened.lock.acquire_replacing(&opened.options, grace)),
            Err(e) => failed(e),
        }
    }

    /// Lets go of this holder's hold; the lock goes with the last holder of the process.
    #[napi(catch_unwind)]
    pub fn release(&self) -> ReleaseOutcome {
        let opened = &*self.opened;
        let out = opened.lock.release(&opened.options);
        holders::forget(&opened.place, opened.options.holder);
        out
    }

    /// Who holds the lock, if anyone.
    #[napi(catch_unwind)]
    pub fn info(&self) -> InfoOutcome {
        self.opened.lock.info()
    }

    /// Removes the lock whoever holds it.
    #[napi(catch_unwind)]
    pub fn force_remove(&self) -> RemoveOutcome {
        self.opened.lock.force_remove()
    }

    /// Whether this holder holds the lock: for a file, the file that is at the lock path now
    /// (one `lstat`); on a server, a hold not found lost.
    #[napi(catch_unwind)]
    pub fn is_held(&self) -> bool {
        self.opened.lock.is_held(&self.opened.options)
    }

    /// Reports the loss of this holder's hold to its `listen_losses` callback, and says whether
    /// it is held. A server lock is watched anyway; a lock file is looked at every 200 ms by a
    /// native thread that runs only while some lock file is watched.
    #[napi(catch_unwind)]
    pub fn watch_lost(&self) -> bool {
        let opened = &*self.opened;
        opened.lock.watch_lost(&opened.options);
        opened.lock.is_held(&opened.options)
    }
}

impl Opened {
    /// Takes the lock, once (`wait: None`) or waiting for up to that long (`Some(None)`: for as
    /// long as it takes), unless `cancel` ends the wait first.
    fn acquire(&self, wait: Option<Option<Duration>>, cancel: Cancel) -> AcquireOutcome {
        let waiting = wait.map(|w| crate::Waiting {
            deadline: deadline_in(w),
            cancel,
        });
        self.kept(self.lock.acquire(&self.options, waiting))
    }

    /// An acquisition's outcome, once the log sink of a new hold is noted for the end of its
    /// holder (`holders.rs`, for `ending.rs`).
    fn kept(&self, out: AcquireOutcome) -> AcquireOutcome {
        if out.held && out.error.is_none() && !out.already_held {
            holders::remember(&self.place, self.options.holder, self.options.log);
        }
        out
    }
}

/// Settles the Promise of an `acquire_async` on the JS thread.
type Settle = Box<dyn FnOnce(Env) -> napi::Result<AcquireOutcome> + Send>;

fn wait_failed(problem: &str) -> AcquireOutcome {
    failed(Error::io(
        "wait",
        "",
        std::io::Error::other(problem.to_string()),
    ))
}

fn failed(e: Error) -> AcquireOutcome {
    AcquireOutcome {
        error: Some(e.into()),
        ..Default::default()
    }
}
