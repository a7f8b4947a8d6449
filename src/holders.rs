//! The JavaScript module instances of this process that use the addon (holders: each worker
//! thread loads its own), and what the addon keeps for each: where the losses of its holds go
//! (`losses.rs`), and where the log lines of each of its holds go when they are let go of at its
//! end or the process's (`ending.rs`). The addon's one process-wide table.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;

use crate::{LogTo, LostEvent};

/// Where a holder's loss notices go: a weak threadsafe function, which never keeps the process
/// alive.
pub(crate) type Listener = ThreadsafeFunction<LostEvent, (), LostEvent, Status, false, true>;

#[derive(Default)]
struct Kept {
    listener: Option<Listener>,
    /// The `log` option of each hold, by where the lock is (a hash of its place, so that no
    /// acquire allocates for this).
    sinks: Vec<(u64, LogTo)>,
}

static HOLDERS: Mutex<Option<HashMap<u32, Kept>>> = Mutex::new(None);

fn holders() -> MutexGuard<'static, Option<HashMap<u32, Kept>>> {
    // Single inserts and removals: a poisoned table is still a correct table.
    HOLDERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn place_key(place: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    place.hash(&mut h);
    h.finish()
}

/// The losses of `holder`'s holds go to `listener` from now on.
pub(crate) fn listen(holder: u32, listener: Listener) {
    holders()
        .get_or_insert_with(HashMap::new)
        .entry(holder)
        .or_default()
        .listener = Some(listener);
}

/// `f` with `holder`'s listener, if it has one.
pub(crate) fn with_listener(holder: u32, f: impl FnOnce(&Listener)) {
    let table = holders();
    if let Some(listener) = table
        .as_ref()
        .and_then(|t| t.get(&holder))
        .and_then(|k| k.listener.as_ref())
    {
        f(listener);
    }
}

/// A hold was taken: its lines go to `to`. A hold keeps the sink it was taken with; taking it
/// again while held changes nothing.
pub(crate) fn remember(place: &str, holder: u32, to: LogTo) {
    let place = place_key(place);
    let mut table = holders();
    let sinks = &mut table
        .get_or_insert_with(HashMap::new)
        .entry(holder)
        .or_default()
        .sinks;
    match sinks.iter_mut().find(|(p, _)| *p == place) {
        Some(sink) => sink.1 = to,
        None => sinks.push((place, to)),
    }
}

/// A hold was let go of by a call of the app's, which reported it.
pub(crate) fn forget(place: &str, holder: u32) {
    let place = place_key(place);
    if let Some(kept) = holders().as_mut().and_then(|t| t.get_mut(&holder)) {
        kept.sinks.retain(|(p, _)| *p != place);
    }
}

/// Where the lines of a lock that has just ended go: to the console if any of its holders
/// asked for it, else to a function if one did. Its holds are over.
pub(crate) fn ended_sink(place: &str) -> LogTo {
    let place = place_key(place);
    let mut to = LogTo::Silent;
    for kept in holders().iter_mut().flat_map(|t| t.values_mut()) {
        kept.sinks.retain(|(p, sink)| {
            if *p != place {
                return true;
            }
            to = match (to, sink) {
                (LogTo::Console, _) | (_, LogTo::Console) => LogTo::Console,
                (LogTo::Function, _) | (_, LogTo::Function) => LogTo::Function,
                _ => LogTo::Silent,
            };
            false
        });
    }
    to
}

/// The holder's module instance is gone (its worker ended), after its holds were let go of.
pub(crate) fn gone(holder: u32) {
    if let Some(table) = holders().as_mut() {
        table.remove(&holder);
    }
}
