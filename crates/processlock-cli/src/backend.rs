//! Where the locks are: the one place the command chooses a backend and opens it, and the one
//! file that names the PostgreSQL crate.
//!
//! `--url` (else `$PROCESSLOCK_URL`) names a PostgreSQL server; otherwise the locks are files in
//! a lock directory (`--dir`, else `$PROCESSLOCK_DIR`, else the core's default). `check`, `clear`
//! and `run` (with `--wait` or `--replace`) take their `Backend` from here and from nowhere else,
//! so a command never decides between the two by itself, and a new backend is added here.
//!
//! An opened backend is the core's: a `processlock::FileBackend`, or a `Server` around a
//! `processlock_pg::PgBackend`. The commands ask both through the `processlock::Backend` trait
//! wherever it answers what they show (list, status, force-remove, the lock's place), as the
//! Node addon does. `run` on a server takes its lock as the backend takes one for an app, by the
//! same code (`PgBackend::take_session`, `take_replacing`) without the step before it: `run` holds
//! the lock for its command in a session of its own, and never adopts a hold handed down by a
//! `run` above it. What only the command does stays here, named by what it needs: a server's own
//! columns (its session, the client's address, the role of a holder without a record, listings
//! read a page at a time) and ending a holder's session while naming it. A lock file taken by
//! `run` is made in its command's name before the command starts (`run.rs`), which no backend
//! call can do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use processlock::report::printable;
use processlock::{resolve_dir, Backend as _, FileBackend, LockName, Wait};
use processlock_pg as pg;

use crate::display::errln;

#[cfg(unix)]
pub use pg::stop_this_process;
pub use pg::{Error as ServerError, Holder, Listed, PgHeld, Result as ServerResult};

/// An opened backend.
pub enum Backend {
    /// Lock files in a resolved directory.
    Files(FileBackend),
    Server(Server),
}

/// Where the options put the locks, before anything is checked: a server wins over a directory.
pub enum Place {
    /// `--dir`, if given; `None`: `$PROCESSLOCK_DIR` or the default, resolved when opened.
    Dir(Option<PathBuf>),
    /// The server's URL.
    Server(String),
}

/// Why a backend could not be opened.
pub enum Unopened {
    /// A URL or lease that cannot work: a usage error, and nothing was sent anywhere.
    BadServer(String),
    /// The lock directory could not be resolved.
    Dir(processlock::Error),
}

/// What `run` sets on the lock it takes on a server.
#[derive(Default)]
pub struct ServerSettings {
    /// `--lease`; `None`: the default.
    pub lease: Option<Duration>,
    /// `--name`: the process name in the lock record.
    pub process_name: Option<String>,
}

impl Place {
    /// `--url`, else `$PROCESSLOCK_URL` (empty means none), else the lock directory.
    pub fn from_options(dir: Option<&Path>, url: Option<String>) -> Place {
        if url.as_deref().is_some_and(pg::url_has_password) {
            errln!("{PASSWORD_IN_ARGV}");
        }
        match url
            .or_else(|| std::env::var("PROCESSLOCK_URL").ok())
            .filter(|u| !u.is_empty())
        {
            Some(url) => Place::Server(url),
            None => Place::Dir(dir.map(Path::to_path_buf)),
        }
    }

    pub fn open(self, settings: ServerSettings) -> Result<Backend, Unopened> {
        match self {
            Place::Dir(dir) => resolve_dir(dir.as_deref())
                .map(|dir| Backend::Files(FileBackend::new(dir)))
                .map_err(Unopened::Dir),
            Place::Server(url) => Server::open(url, settings)
                .map(Backend::Server)
                .map_err(Unopened::BadServer),
        }
    }
}

/// Every user of the host can read a command line (`ps`, `/proc/PID/cmdline`).
const PASSWORD_IN_ARGV: &str = "processlock: WARNING: the password in --url can be read by every user of this host (ps, /proc/PID/cmdline); give the URL without it (in --url or $PROCESSLOCK_URL) and keep the password in ~/.pgpass or the file $PGPASSFILE names (mode 0600), or in $PGPASSWORD set for this service only";

/// A PostgreSQL server whose options were checked (nothing was sent to it yet).
pub struct Server {
    pg: pg::PgBackend,
    /// How messages name the server: `user@host:port/dbname`, never the password.
    shown: String,
}

impl Server {
    fn open(url: String, settings: ServerSettings) -> Result<Server, String> {
        let mut opts = pg::PgOptions::new(url);
        if let Some(lease) = settings.lease {
            opts.lease = lease;
        }
        opts.process_name = settings.process_name;
        match opts.check() {
            Ok(shown) => Ok(Server {
                pg: pg::PgBackend::new(opts),
                shown,
            }),
            Err(e) => Err(printable(&e.to_string()).into_owned()),
        }
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn opts(&self) -> &pg::PgOptions {
        self.pg.options()
    }

    /// Every lock of the namespace that is held or has a record left behind.
    pub fn list(&self) -> ServerResult<Vec<Listed>> {
        pg::list(self.opts())
    }

    /// `list`, a page at a time
    /// (see `processlock_pg::list_pages`).
    pub fn list_pages(&self, page: impl FnMut(Vec<Listed>) -> bool + Send) -> ServerResult<()> {
        pg::list_pages(self.opts(), page)
    }

    /// Who holds `name`; `None` when nobody does.
    pub fn inspect(&self, name: &LockName) -> ServerResult<Option<Holder>> {
        pg::inspect(self.opts(), name)
    }

    /// Ends the session of the holder of `name`, which frees the lock at once.
    pub fn terminate_holder(&self, name: &LockName) -> ServerResult<Option<Holder>> {
        pg::terminate_holder(self.opts(), name)
    }

    /// Removes the records no live session stands behind; their lock names.
    pub fn clear_stale(&self) -> ServerResult<Vec<String>> {
        pg::clear_stale(self.opts())
    }
}

/// What `run` takes a lock with (`run` is not available on Windows yet).
#[cfg_attr(not(unix), allow(dead_code))]
impl Server {
    /// A session of this process's own that holds `name`, taken at once or with `wait`, as the
    /// backend takes it for an app; never a hold handed down by a `run` above this one.
    pub fn take(&self, name: &LockName, wait: Option<&Wait>) -> ServerResult<PgHeld> {
        self.pg
            .take_session(name, self.opts().process_name.as_deref(), wait)
    }

    /// `take`, asking the holder (on any host) through the server to stop first and waiting up
    /// to `grace` for it to let go; `lines` gets the replace lines (with whether they must be
    /// printed even when quiet).
    pub fn take_replacing(
        &self,
        name: &LockName,
        wait: &Wait,
        grace: Duration,
        lines: pg::ReplaceLines<'_>,
    ) -> ServerResult<PgHeld> {
        self.pg.take_replacing(name, wait, grace, lines)
    }

    /// What names the lock `name` on this server: its place.
    pub fn lock_id(&self, name: &LockName) -> ServerResult<String> {
        self.pg.place(name)
    }

    /// How long before the server may give a lost lock to another holder this process learns
    /// of the loss: the default grace for stopping the command.
    pub fn loss_margin(&self) -> Duration {
        self.opts().loss_margin()
    }
}
