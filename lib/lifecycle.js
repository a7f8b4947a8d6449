'use strict'
// Releases held locks when the process ends, without changing how the app ends.
//
// - process.exit(), the natural end, an uncaught exception and an unhandled rejection: nothing
//   here. Node calls 'exit' listeners in the order they were added, and apps take the lock
//   before they add their own shutdown hooks: a release in an 'exit' listener of ours would let
//   a waiter in while those hooks still run. The native layer releases once the last of them has
//   run (src/ending.rs: a libc `atexit` hook; a worker thread's end, and the main thread's natural
//   end, through the clean-up of that thread's Node environment), and writes the log lines then.
//   Nothing is added for 'uncaughtException' either: a listener there would stop Node from
//   crashing.
// - SIGINT, SIGTERM and SIGHUP kill Node without 'exit' when nobody listens. If the app has no
//   listener of its own we release and re-raise the signal, so the exit status stays 130/143/129:
//   no 'exit' listener runs on that path, so there is nothing the release could come before.
//   If it has one (PM2 graceful shutdown, Temporal's Runtime), its shutdown runs undisturbed
//   and the lock is released when the process finally ends.
// - Our signal listeners are prepended, so we look at the listener list before any app listener
//   had the chance to remove itself during the same signal (Temporal's Runtime does that).
// - Nothing is installed at require time, and everything is removed once no lock is held (at the
//   next turn of the event loop, so that a loop of acquire/release does not start and stop
//   Node's signal watchers every time), so a process that holds no lock behaves exactly as if
//   this package were not loaded.

// `node:os` is loaded when first needed, and `node:worker_threads` only where a worker may be
// running (lib/entry.js): it loads Node's streams, which a main thread need not pay for.

const { isMainThread } = require('./entry.js')

const SIGNALS = process.platform === 'win32' ? ['SIGINT', 'SIGTERM'] : ['SIGINT', 'SIGTERM', 'SIGHUP']

let releaseAll = null
let holdsAny = () => false
let installed = false
let pendingUninstall = null
const handlers = new Map()

/**
 * Listeners of the `signal-exit` package (loaded by lockfile, proper-lockfile, write-file-atomic,
 * execa, ...). It re-raises a signal only when it sees itself alone, so if we also stood back
 * because of it, nobody would end the process. Its shared state says how many of the listeners
 * are its own: v3 `process.__signal_exit_emitter__`, v4 `globalThis[Symbol.for('signal-exit emitter')]`.
 */
function signalExitListeners() {
  let n = 0
  const v3 = process.__signal_exit_emitter__
  if (v3 && typeof v3.count === 'number') n += v3.count
  const v4 = globalThis[Symbol.for('signal-exit emitter')]
  if (v4 && typeof v4.count === 'number') n += v4.count
  return n
}

function onSignal(signal) {
  const appListeners = process.listeners(signal).filter((l) => l !== handlers.get(signal))
  if (appListeners.length > signalExitListeners()) return
  // PID 1 of a PID namespace (a container's app without an init) is spared by the kernel from
  // signals it has no handler for: a re-raised signal would leave it running. It ends with the
  // status a shell gives that signal instead, through process.exit: its 'exit' listeners run,
  // and the native layer releases after them.
  if (process.pid === 1) {
    uninstall()
    process.exit(128 + require('node:os').constants.signals[signal])
  }
  releaseAll()
  uninstall()
  process.kill(process.pid, signal)
}

/**
 * Called after a lock is taken. `release` must release every held lock synchronously (for a
 * signal that ends the process without 'exit'); `holds` tells whether any lock is still held.
 */
function install(release, holds) {
  releaseAll = release
  holdsAny = holds
  if (installed) return
  installed = true
  // Signal listeners are a main-thread feature; a worker's locks go with the clean-up of its
  // Node environment, after its 'exit' listeners (and at `worker.terminate()`).
  if (!isMainThread()) return
  for (const signal of SIGNALS) {
    const handler = () => onSignal(signal)
    handlers.set(signal, handler)
    process.prependListener(signal, handler)
  }
}

/** Called once no lock is held any more. */
function uninstall() {
  if (!installed) return
  installed = false
  for (const [signal, handler] of handlers) process.removeListener(signal, handler)
  handlers.clear()
}

/** Called when the last lock was released: uninstalls at the next turn unless one is taken again. */
function uninstallSoon() {
  if (!installed || pendingUninstall) return
  pendingUninstall = setImmediate(() => {
    pendingUninstall = null
    if (!holdsAny()) uninstall()
  })
  // It must not keep the process alive: if the loop ends first, nothing is left to run anyway.
  pendingUninstall.unref()
}

module.exports = { install, uninstall, uninstallSoon }
