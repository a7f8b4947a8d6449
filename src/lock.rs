//! One named lock on one backend, as the binding's calls see it: the core's `Backend` answers,
//! and this file turns its answers into the outcome objects and log lines of the JS layer. It is
//! the same for every backend; what differs is the backend's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use processlock::{
    report, Backend, Cancel, Error, FileBackend, HoldId, Holder, LockName, LossNotice, Record,
    Released, Taken, Wait,
};

use crate::losses::{self, LOST_EXIT_STATUS};
use crate::{
    AcquireOutcome, Failure, InfoOutcome, LockOptions, LockRecord, ReleaseOutcome, RemoveOutcome,
    Waiting,
};

/// A backend that can take a lock in the place of its live holder (`acquireLock` with
/// `replace`). `lines`: what the replacement says, `true` for a line said even when quiet.
pub(crate) trait Replacing: Backend {
    #[allow(clippy::too_many_arguments)]
    fn acquire_replacing(
        &self,
        name: &LockName,
        place: &str,
        process_name: Option<&str>,
        holder: Holder,
        wait: &Wait,
        grace: Duration,
        lines: &mut dyn FnMut(String, bool),
    ) -> Result<Taken, Self::Error>;
}

/// A holder of a lock file on this host, proven by its lock, is signalled: SIGTERM, up to
/// `grace` for the handover, then SIGKILL (the core's `replace_holder`, the same steps as
/// `processlock run --replace`).
impl Replacing for FileBackend {
    fn acquire_replacing(
        &self,
        name: &LockName,
        place: &str,
        process_name: Option<&str>,
        holder: Holder,
        wait: &Wait,
        grace: Duration,
        lines: &mut dyn FnMut(String, bool),
    ) -> Result<Taken, Error> {
        let result = self.acquire(name, place, process_name, holder, None);
        #[cfg(unix)]
        if let Err(Error::Conflict(conflict)) = result {
            let mut how = InProcess {
                backend: self,
                name,
                place,
                process_name,
                holder,
                cancel: wait.cancel,
                lines,
            };
            return processlock::replace_holder(name, conflict, grace, &mut how);
        }
        #[cfg(not(unix))]
        if let Err(Error::Conflict(_)) = result {
            let _ = (wait, grace, lines);
            return Err(Error::InvalidOption {
                option: "replace",
                problem: "is not supported on Windows yet: stop the holder, then start".into(),
            });
        }
        result
    }
}

/// How a replacement waits for the lock file and says what it does, in this process.
#[cfg(unix)]
struct InProcess<'a> {
    backend: &'a FileBackend,
    name: &'a LockName,
    place: &'a str,
    process_name: Option<&'a str>,
    holder: Holder,
    cancel: &'a Cancel,
    lines: &'a mut dyn FnMut(String, bool),
}

#[cfg(unix)]
impl processlock::Replacing<Taken> for InProcess<'_> {
    fn wait(&mut self, wait: Duration) -> processlock::Result<Taken> {
        let wait = Wait {
            deadline: std::time::Instant::now().checked_add(wait),
            cancel: self.cancel,
            said: Default::default(),
        };
        let (name, place) = (self.name, self.place);
        self.backend
            .acquire(name, place, self.process_name, self.holder, Some(&wait))
    }

    fn line(&mut self, line: String, always: bool) {
        (self.lines)(line, always)
    }
}

/// The lock `name` on `backend`, at `place`.
pub(crate) struct On<B> {
    pub backend: B,
    pub name: LockName,
    pub place: String,
}

/// What the binding does with a lock, whatever its backend.
pub(crate) trait Lock {
    /// Where the lock is: the lock file's path, or the server and the lock's name.
    fn place(&self) -> String;
    /// Takes the lock, once (`wait: None`) or waiting until the deadline.
    fn acquire(&self, options: &LockOptions, wait: Option<Waiting>) -> AcquireOutcome;
    /// Takes the lock in the place of its live holder, who is given `grace` to let go.
    fn acquire_replacing(&self, options: &LockOptions, grace: Duration) -> AcquireOutcome;
    fn release(&self, options: &LockOptions) -> ReleaseOutcome;
    fn info(&self) -> InfoOutcome;
    fn force_remove(&self) -> RemoveOutcome;
    fn is_held(&self, options: &LockOptions) -> bool;
    /// Reports the loss of the caller's hold to its `listen_losses` callback from now on.
    fn watch_lost(&self, options: &LockOptions);
}

impl<B: Backend> On<B>
where
    B::Error: Into<Failure> + std::fmt::Display,
{
    pub fn record(&self, record: Record, fencing_token: Option<String>) -> LockRecord {
        LockRecord {
            fencing_token,
            backend: B::KIND.to_string(),
            ..LockRecord::from(record)
        }
    }

    /// A failure of a call on this lock: a conflict also brings the log lines that name the
    /// holder.
    pub fn failure(&self, e: B::Error) -> Failure {
        let lines = self.backend.conflict_lines(&e, &self.name);
        Failure { lines, ..e.into() }
    }

    /// The outcome of an acquisition. `said`: what a wait said meanwhile, first. A new hold is
    /// watched for its loss where the backend finds losses by itself.
    pub fn outcome(
        &self,
        result: Result<Taken, B::Error>,
        said: Vec<String>,
        options: &LockOptions,
    ) -> AcquireOutcome {
        let lock_file = Some(self.place.clone());
        match result {
            Ok(taken) => {
                let mut lines = said;
                if !options.quiet {
                    lines.extend(taken.lines);
                    if !taken.already_held {
                        lines.push(report::acquired(&self.name, taken.record.pid));
                    }
                }
                if taken.newly_taken && self.backend.watched_from_the_start() {
                    self.watch(taken.id, options);
                }
                AcquireOutcome {
                    info: Some(self.record(taken.record, taken.fencing_token)),
                    lock_file,
                    hold: Some(hold_number(taken.id)),
                    already_held: taken.already_held,
                    held: true,
                    lines,
                    error: None,
                }
            }
            Err(e) => {
                let failure = self.failure(e);
                AcquireOutcome {
                    lock_file,
                    held: self.backend.holds().is_holder(&self.place, options.holder),
                    error: Some(Failure {
                        lines: [said, failure.lines.clone()].concat(),
                        ..failure
                    }),
                    ..Default::default()
                }
            }
        }
    }

    /// Tells the holders of hold `id` of its loss, natively: with `onLost: 'exit'` (a server
    /// lock's default) the process ends here, whatever JavaScript is doing.
    fn watch(&self, id: HoldId, options: &LockOptions) {
        let exit = options.exit_on_loss;
        let name = self.name.clone();
        let holds = self.backend.holds();
        self.backend.watch_loss(
            &self.place,
            id,
            Box::new(move |notice: LossNotice<B::Error>| {
                let line = report::lost(&name, notice.pid, &notice.reason);
                if exit {
                    losses::exit_now(&line, LOST_EXIT_STATUS);
                }
                let failure: Failure = notice.error.into();
                for holder in holds
                    .holders_of(&notice.place, notice.id)
                    .unwrap_or_default()
                {
                    losses::notify(holder, &notice.place, notice.id, &failure, &line);
                }
            }),
        );
    }

    /// A release's outcome, as the app's call reports it (`ending.rs` writes the same at the end
    /// of a holder).
    pub fn released(&self, how: Released<B::Error>, quiet: bool) -> ReleaseOutcome {
        released::<B>(&self.name, self.place.clone(), how, quiet)
    }
}

/// A hold's identity as JavaScript sees it: a number (ids count up from 1, far below 2^53).
pub(crate) fn hold_number(id: HoldId) -> f64 {
    id.get() as f64
}

/// The outcome of letting go of `name` at `place` on `backend`.
pub(crate) fn released<B: Backend>(
    name: &LockName,
    place: String,
    how: Released<B::Error>,
    quiet: bool,
) -> ReleaseOutcome
where
    B::Error: Into<Failure> + std::fmt::Display,
{
    let lock_file = Some(place);
    match how {
        Released::NotHeld | Released::Lost { .. } => ReleaseOutcome {
            lock_file,
            ..Default::default()
        },
        Released::KeptByOthers { run_pid, running } => ReleaseOutcome {
            lock_file,
            // Once `run` is gone there is nothing it keeps.
            lines: match run_pid {
                Some(pid) if running && !quiet => vec![report::released_to_run(name, pid)],
                _ => Vec::new(),
            },
            ..Default::default()
        },
        Released::Released { pid, removed } => ReleaseOutcome {
            removed,
            lock_file,
            lines: if quiet {
                Vec::new()
            } else {
                vec![report::released(name, pid)]
            },
            error: None,
        },
        Released::Failed { pid, error } => {
            let reason = format!("{error}; {}", B::AFTER_FAILED_RELEASE);
            let failure: Failure = error.into();
            ReleaseOutcome {
                lock_file,
                error: Some(Failure {
                    lines: vec![report::release_failed(name, pid, &reason)],
                    ..failure
                }),
                ..Default::default()
            }
        }
    }
}

impl<B: Backend + Replacing> Lock for On<B>
where
    B::Error: Into<Failure> + std::fmt::Display,
{
    fn acquire_replacing(&self, options: &LockOptions, grace: Duration) -> AcquireOutcome {
        let cancel = Cancel::new();
        let _waiting = self.backend.holds().waiting(&self.place, &cancel);
        let said = Arc::new(Mutex::new(Vec::new()));
        let mut lines = Vec::new();
        let quiet = options.quiet;
        let result = self.backend.acquire_replacing(
            &self.name,
            &self.place,
            options.process_name.as_deref(),
            options.holder,
            &Wait {
                deadline: None,
                cancel: &cancel,
                said: Arc::clone(&said),
            },
            grace,
            &mut |line, always| {
                if always || !quiet {
                    lines.push(line)
                }
            },
        );
        if !quiet {
            lines.append(&mut said.lock().unwrap_or_else(|p| p.into_inner()));
        }
        self.outcome(result, lines, options)
    }

    fn place(&self) -> String {
        self.place.clone()
    }

    fn acquire(&self, options: &LockOptions, wait: Option<Waiting>) -> AcquireOutcome {
        let name = options.process_name.as_deref();
        let said = Arc::new(Mutex::new(Vec::new()));
        let result = match wait {
            None => self
                .backend
                .acquire(&self.name, &self.place, name, options.holder, None),
            Some(w) => {
                let _waiting = self.backend.holds().waiting(&self.place, &w.cancel);
                let wait = Wait {
                    deadline: w.deadline,
                    cancel: &w.cancel,
                    said: Arc::clone(&said),
                };
                self.backend
                    .acquire(&self.name, &self.place, name, options.holder, Some(&wait))
            }
        };
        let said = if options.quiet {
            Vec::new()
        } else {
            std::mem::take(&mut *said.lock().unwrap_or_else(|p| p.into_inner()))
        };
        self.outcome(result, said, options)
    }

    fn release(&self, options: &LockOptions) -> ReleaseOutcome {
        self.released(
            self.backend
                .release(&self.name, &self.place, options.holder),
            options.quiet,
        )
    }

    fn info(&self) -> InfoOutcome {
        match self.backend.inspect(&self.name) {
            Ok(holding) => InfoOutcome {
                info: holding.map(|h| self.record(h.record, h.fencing_token)),
                lock_file: Some(self.place.clone()),
                error: None,
            },
            Err(e) => InfoOutcome {
                error: Some(self.failure(e)),
                ..Default::default()
            },
        }
    }

    fn force_remove(&self) -> RemoveOutcome {
        match self.backend.force_remove(&self.name) {
            Ok(removed) => RemoveOutcome {
                removed,
                lock_file: Some(self.place.clone()),
                error: None,
            },
            Err(e) => RemoveOutcome {
                error: Some(self.failure(e)),
                ..Default::default()
            },
        }
    }

    fn is_held(&self, options: &LockOptions) -> bool {
        self.backend.is_held_by(&self.place, options.holder)
    }

    fn watch_lost(&self, options: &LockOptions) {
        if self.backend.watched_from_the_start() {
            // Watched from the moment it was taken.
            return;
        }
        if !self.backend.holds().is_holder(&self.place, options.holder) {
            return;
        }
        if let Some(current) = self.backend.holds().current(&self.place) {
            self.watch(current.id, options);
        }
    }
}
