'use strict'
// The public API. The lock itself lives in the native core; this layer does what must happen in
// JavaScript: argument checks, Error classes, log lines and the Node process lifecycle.

const path = require('node:path')
const binding = require('./lib/binding.js')
const errors = require('./lib/errors.js')
const { sinkFor, sinkKind, emit } = require('./lib/log.js')
const lifecycle = require('./lib/lifecycle.js')
const { entryScript } = require('./lib/entry.js')

const { errorFromFailure, throwIfFailed, invalidOption, normalizeRecord } = errors

/**
 * The holds of this module instance, by the native hold id (`hold` of the acquire outcomes):
 * how to release each and where its lines go.
 *
 * The native registry is the one owner of lock state, for the whole process: one hold per lock,
 * shared by every module instance (each worker thread loads its own) that took it, and let go
 * of when the last of them lets go. This map is this instance's view of its own holds, kept in
 * step with every answer of the registry; it only adds what the registry cannot know (the log
 * sink, the options to release with, who to tell of a loss). A hold lost and replaced by a newer
 * one of the same lock stays here, no longer `current`, while its loss notice may still come to
 * someone who asked (a `lockSignal`, an `onLost` function): the notice names the hold it is about.
 */
const held = new Map()

/** This instance's current hold of the lock at `lockFile`, if any. */
function holdAt(lockFile) {
  for (const entry of held.values()) if (entry.current && entry.lockFile === lockFile) return entry
  return undefined
}

function holdsAny() {
  for (const entry of held.values()) if (entry.current) return true
  return false
}

/**
 * This module instance's holder id in the native registry, made at first use. The application's
 * entry script is handed over then too: the default lock directory is found from it.
 */
let holderId = 0

function holder() {
  if (holderId === 0) {
    binding.setAppEntry(entryScript())
    holderId = binding.openHolder()
  }
  return holderId
}

/** The options that must be strings, and the numbers that must be finite and >= 0. */
const STRING_OPTIONS = ['dir', 'processName', 'url', 'namespace', 'table']
const NUMBER_OPTIONS = ['leaseMs', 'connectTimeoutMs']

/**
 * A wait limit (`waitMs`, `timeoutMs`): a number >= 0, where `Infinity` and anything too long
 * for the native side to count to (`Number.MAX_VALUE` is a common "forever") mean no limit.
 */
function checkWait(options, key) {
  const v = options[key]
  if (v !== undefined && !(typeof v === 'number' && v >= 0)) {
    throw invalidOption(`${key} must be a number >= 0 (Infinity: no limit)`)
  }
}

function checkOptions(processType, options) {
  if (typeof processType !== 'string') {
    throw new errors.LockInvalidNameError(
      `LOCK_INVALID_NAME: processType must be a string, got ${processType === null ? 'null' : typeof processType}`,
      'LOCK_INVALID_NAME',
    )
  }
  if (options === undefined || options === null) return {}
  if (typeof options !== 'object') throw invalidOption(`options must be an object, got ${typeof options}`)
  for (const key of STRING_OPTIONS) {
    if (options[key] !== undefined && typeof options[key] !== 'string') {
      throw invalidOption(`${key} must be a string`)
    }
  }
  if (options.tradeSide !== undefined && options.tradeSide !== null && typeof options.tradeSide !== 'string') {
    throw invalidOption('tradeSide must be a string or null')
  }
  if (options.replace !== undefined && typeof options.replace !== 'boolean') {
    throw invalidOption('replace must be a boolean')
  }
  const log = options.log
  if (log !== undefined && typeof log !== 'boolean' && log !== 'silent' && typeof log !== 'function') {
    throw invalidOption("log must be a boolean, 'silent' or a function (line, level) => void")
  }
  const onLost = options.onLost
  if (onLost !== undefined && onLost !== 'exit' && onLost !== 'signal' && typeof onLost !== 'function') {
    throw invalidOption("onLost must be 'exit', 'signal' or a function (error) => void")
  }
  for (const key of NUMBER_OPTIONS) {
    const v = options[key]
    if (v !== undefined && !(typeof v === 'number' && v >= 0 && Number.isFinite(v))) {
      throw invalidOption(`${key} must be a finite number >= 0`)
    }
  }
  return options
}

/** The native layer's `LogTo` for each kind of log sink (lib/log.js `sinkKind`). */
const LOG_TO = { console: binding.LogTo.Console, function: binding.LogTo.Function, silent: binding.LogTo.Silent }

/**
 * An option, else the environment variable as JavaScript sees it: under jest `process.env` is a
 * copy per test file, which the native side (reading the real environment) would not see.
 */
function orEnv(value, variable) {
  return value !== undefined ? value : process.env[variable]
}

/**
 * The native handles of the locks this module instance has named, by what selects the lock and
 * how its calls are made (lockOf). Opening one reads its options and resolves its directory;
 * every later call with the same options reuses it.
 */
const handles = new Map()
const HANDLES_KEPT = 256

/** An option as a part of a handle's key: absent is told apart from every string. */
function given(value) {
  return value === undefined || value === null ? '\u0001' : String(value)
}

/**
 * The native handle of the lock that `processType` and `options` (checked) name, or throws why
 * there is none. `tradeSide` is the side, or null for none (given as null, or an empty
 * `$TRADE_SIDE`); a given string goes as it is (an empty one is refused natively). A URL (option,
 * else `$PROCESSLOCK_URL`) puts the lock on that server; an empty one means files. A relative
 * `dir` is relative to the working directory of the call.
 */
function lockOf(processType, options) {
  const url = orEnv(options.url, 'PROCESSLOCK_URL')
  const dir = orEnv(options.dir, 'PROCESSLOCK_DIR')
  const envSide = process.env.TRADE_SIDE
  const tradeSide = options.tradeSide !== undefined ? options.tradeSide : envSide?.trim() ? envSide : null
  const log = LOG_TO[sinkKind(options.log)]
  const onLost = options.onLost === undefined || options.onLost === 'exit' ? 'exit' : 'notify'
  const place = url
    ? `${url}\0${given(options.leaseMs)}\0${given(options.connectTimeoutMs)}\0${given(options.namespace)}\0${given(options.table)}\0${onLost}`
    : `${given(dir)}\0${dir && !path.isAbsolute(dir) ? process.cwd() : ''}`
  const key = `${processType}\0${given(tradeSide)}\0${given(options.processName)}\0${log}\0${place}`
  const known = handles.get(key)
  if (known) return known
  const server = url
    ? {
        url,
        leaseMs: options.leaseMs,
        connectTimeoutMs: options.connectTimeoutMs,
        namespace: options.namespace,
        table: options.table,
        onLost,
      }
    : undefined
  const spec = {
    dir,
    tradeSide: tradeSide ?? undefined,
    processName: options.processName,
    log,
    holder: holder(),
    server,
  }
  const opened = binding.openLock(processType, spec)
  if (!(opened instanceof binding.NativeLock)) throw errorFromFailure(opened)
  if (handles.size >= HANDLES_KEPT) handles.clear()
  handles.set(key, opened)
  return opened
}

/**
 * Losses are found natively and arrive here through a threadsafe function, registered the first
 * time this module instance asks to hear of them (a non-default `onLost`, or `lockSignal`).
 */
let listening = false

function listenLosses() {
  if (listening) return
  binding.listenLosses(holder(), lost)
  listening = true
}

/** A hold of this instance was lost: say so, drop it, then tell whoever asked. */
function lost(event) {
  const entry = held.get(event.hold)
  if (!entry) return
  emit(entry.sink, event.lines)
  if (entry.current) {
    forget(entry)
    // Drops the native hold; its release lines are not said. A lock file of someone else stays.
    entry.lock.release()
  } else {
    // Replaced by a newer hold of the same lock, which stays: the notice is this one's.
    held.delete(event.hold)
  }
  tell(entry, errorFromFailure(event.error, event.lockFile))
}

function tell(entry, error) {
  if (entry.controller) entry.controller.abort(error)
  // `onLost` is for server locks; a lock file's loss reaches its `lockSignal` only.
  if (entry.server && typeof entry.onLost === 'function') entry.onLost(error)
}

/** Drops this instance's view of a hold that the registry says it no longer has. */
function forget(entry) {
  if (entry && held.delete(entry.hold) && !holdsAny()) lifecycle.uninstallSoon()
}

/**
 * A newer hold of the same lock took `entry`'s place: it stays only for a loss notice that will
 * come (a server hold is watched from the start, a lock file once a signal was asked for).
 */
function replaced(entry) {
  entry.current = false
  if (!entry.server && !entry.controller) held.delete(entry.hold)
}

function fail(out, sink) {
  emit(sink, out.error.lines)
  throwIfFailed(out)
}

/**
 * Releases through the native layer (which forgets its hold whatever happens) and forgets the
 * lock here too. Lines go to the sink the lock was taken with, else to `sink`.
 */
function release(lock, sink) {
  const out = lock.release()
  const entry = holdAt(out.lockFile)
  emit(entry ? entry.sink : sink, out.error ? out.error.lines : out.lines)
  forget(entry)
  return out
}

function releaseEverything() {
  for (const entry of [...held.values()]) {
    if (entry.current) release(entry.lock, entry.sink)
  }
}

function adopt(out, lock, options, sink) {
  emit(sink, out.lines)
  if (!held.has(out.hold)) {
    const before = holdAt(out.lockFile)
    if (before) replaced(before)
    held.set(out.hold, {
      hold: out.hold,
      lockFile: out.lockFile,
      current: true,
      // Released later by where it is, not by how it was named: a relative `dir`, the working
      // directory or `$TRADE_SIDE` may have changed by then, but the handle's place has not.
      lock,
      server: out.info.backend !== 'file',
      sink,
      onLost: options.onLost,
      controller: null,
    })
  }
  lifecycle.install(releaseEverything, holdsAny)
  return normalizeRecord(out.info)
}

/**
 * Takes the lock for `processType` or throws `LockConflictError`. Idempotent in the process
 * that holds it, as long as the lock file at its path is still the one it holds.
 */
function acquireLock(processType, options) {
  const opts = checkOptions(processType, options)
  checkWait(opts, 'waitMs')
  const sink = sinkFor(opts.log)
  if (opts.onLost !== undefined && opts.onLost !== 'exit') listenLosses()
  const lock = lockOf(processType, opts)
  const out = opts.replace
    ? lock.acquireReplacing(opts.waitMs)
    : opts.waitMs > 0
      ? lock.acquireWait(opts.waitMs)
      : lock.acquire()
  if (out.error) {
    if (!out.held) forget(holdAt(out.lockFile))
    fail(out, sink)
  }
  return adopt(out, lock, opts, sink)
}

function checkAsyncOptions(processType, options) {
  const opts = checkOptions(processType, options)
  checkWait(opts, 'timeoutMs')
  const signal = opts.signal
  if (
    signal !== undefined &&
    (signal === null ||
      typeof signal !== 'object' ||
      typeof signal.aborted !== 'boolean' ||
      typeof signal.addEventListener !== 'function')
  ) {
    throw invalidOption('signal must be an AbortSignal')
  }
  return opts
}

function abortedError(signal) {
  return new errors.LockAbortedError('LOCK_ABORTED: waiting for the lock was aborted', 'LOCK_ABORTED', {
    cause: signal.reason,
  })
}

/**
 * `acquireLockAsync` calls in flight in this module instance, by lock file. A call aborted after
 * its native wait took the lock gives the lock back, but only once every other call for that
 * lock has settled, and only if none of them (nor any `acquireLock`) returned it meanwhile: their
 * results may already be on their way, built on the hold the aborted call took.
 */
const inFlight = new Map()

function enterFlight(lockFile) {
  let flight = inFlight.get(lockFile)
  if (!flight) inFlight.set(lockFile, (flight = { count: 0, giveBack: null }))
  flight.count++
  return flight
}

function leaveFlight(lockFile) {
  const flight = inFlight.get(lockFile)
  if (--flight.count > 0) return
  inFlight.delete(lockFile)
  const back = flight.giveBack
  if (back && !holdAt(lockFile)) back.release()
}

/**
 * Takes the lock for `processType`, waiting without blocking the event loop until the holder
 * lets go (release, exit, any death), for up to `timeoutMs` (default: no limit). Rejects with
 * `LockConflictError` (with `waitedMs`) at the timeout, `LockAbortedError` when `signal` aborts.
 */
async function acquireLockAsync(processType, options) {
  const opts = checkAsyncOptions(processType, options)
  const sink = sinkFor(opts.log)
  const { signal } = opts
  if (signal && signal.aborted) throw abortedError(signal)
  if (opts.onLost !== undefined && opts.onLost !== 'exit') listenLosses()
  const lock = lockOf(processType, opts)
  const lockFile = lock.lockFile
  const flight = enterFlight(lockFile)
  try {
    const wait = new binding.NativeWait()
    const onAbort = () => wait.cancel()
    if (signal) signal.addEventListener('abort', onAbort, { once: true })
    let out
    try {
      const timeout = opts.timeoutMs === Infinity ? undefined : opts.timeoutMs
      out = await lock.acquireAsync(timeout, wait)
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort)
    }
    if (out.error) {
      if (!out.held) forget(holdAt(out.lockFile))
      if (out.error.code === 'LOCK_ABORTED' && signal) throw abortedError(signal)
      fail(out, sink)
    }
    if (signal && signal.aborted) {
      // Aborted after the native wait had taken the lock. A hold this module instance had
      // before stays, as with any other acquire of a held lock; a new one is given back.
      if (!out.alreadyHeld) flight.giveBack = lock
      throw abortedError(signal)
    }
    return adopt(out, lock, opts, sink)
  } finally {
    leaveFlight(lockFile)
  }
}

/**
 * Lets go of this module instance's hold of the lock. True when the lock file was removed. While
 * another worker thread of the process still holds the lock, the lock and its file stay: false.
 */
function releaseLock(processType, options) {
  const opts = checkOptions(processType, options)
  const out = release(lockOf(processType, opts), sinkFor(opts.log))
  throwIfFailed(out)
  return out.removed
}

/**
 * The live holder's record, or null when there is no lock or only a stale one. Ours only while
 * the lock path still names the file this process holds.
 */
function getLockInfo(processType, options) {
  const opts = checkOptions(processType, options)
  const out = lockOf(processType, opts).info()
  throwIfFailed(out)
  return normalizeRecord(out.info)
}

/**
 * Removes the lock file whatever holds it. The holder keeps running (stop it first); when it
 * releases, it will not remove a newer holder's file. On a server (`url`), the holder's session
 * is ended (`pg_terminate_backend`; the role needs the right to signal it), which frees the lock
 * at once; the holder hears of it at once (its connection closes) and acts as its `onLost` says.
 */
function forceRemoveLock(processType, options) {
  const opts = checkOptions(processType, options)
  const out = lockOf(processType, opts).forceRemove()
  throwIfFailed(out)
  forget(holdAt(out.lockFile))
  return out.removed
}

/**
 * Whether this process still holds the lock file at the lock path: false once it was removed by
 * force, replaced, or its directory moved. One `lstat`, no directory scan.
 */
function isLockHeld(processType, options) {
  const opts = checkOptions(processType, options)
  return lockOf(processType, opts).isHeld()
}

/** Every lock file in the directory (or with a URL, every lock on the server), with its state. */
function listLocks(options) {
  const opts = options == null ? {} : options
  if (typeof opts !== 'object') throw invalidOption('options must be an object')
  for (const key of ['dir', 'url', 'namespace', 'table']) {
    if (opts[key] !== undefined && typeof opts[key] !== 'string') throw invalidOption(`${key} must be a string`)
  }
  holder()
  const url = orEnv(opts.url, 'PROCESSLOCK_URL')
  const server = url ? { url, namespace: opts.namespace, table: opts.table } : undefined
  const out = binding.list(orEnv(opts.dir, 'PROCESSLOCK_DIR'), server)
  throwIfFailed(out)
  return out.locks.map((l) => ({
    file: l.file,
    processType: l.processType ?? null,
    tradeSide: l.tradeSide ?? null,
    state: l.state,
    record: normalizeRecord(l.record),
    problem: l.problem ?? null,
    isOwn: l.isOwn,
  }))
}

/**
 * An AbortSignal that aborts with `LockLostError` when this module instance's hold of the lock
 * is lost: on a server, its session ended or fell silent past the lease (with `onLost: 'exit'`
 * the process ends instead); a lock file, removed or replaced (looked at every 200 ms while a
 * signal is asked for). Already aborted when the lock is not held here.
 */
function lockSignal(processType, options) {
  const opts = checkOptions(processType, options)
  listenLosses()
  const lock = lockOf(processType, opts)
  const heldNow = lock.watchLost()
  const entry = heldNow ? holdAt(lock.lockFile) : undefined
  if (!entry) {
    const controller = new AbortController()
    controller.abort(
      new errors.LockLostError(`LOCK_LOST: ${processType} is not held by this process`, 'LOCK_LOST', {
        lockFile: lock.lockFile,
      }),
    )
    return controller.signal
  }
  if (!entry.controller) entry.controller = new AbortController()
  return entry.controller.signal
}

/** The lock file path that `processType` and `options` name; nothing is touched. */
function lockFilePath(processType, options) {
  const opts = checkOptions(processType, options)
  return lockOf(processType, opts).lockFile
}

/**
 * `acquireLock`, or the process ends once the error's `[FATAL]` line is written (lib/exit.js,
 * loaded at the first call: most processes never use it).
 */
function acquireLockOrExit(processType, options) {
  return require('./lib/exit.js').orExit(acquireLock)(processType, options)
}

/**
 * Claims the lock `processType`, held by this process, in the database of `db` (a better-sqlite3
 * or node:sqlite database, a node-postgres Client or Pool) and guards `options.tables` there:
 * from then on that database refuses, with LockFencedError, the writes of any connection not
 * bound to the newest claim (lib/fence.js, loaded at the first call).
 */
async function fenceWrites(db, processType, options) {
  if (options !== undefined) checkOptions(processType, options)
  return require('./lib/fence.js').fenceWrites({ getLockInfo, isLockHeld }, db, processType, options)
}

module.exports = {
  acquireLock,
  acquireLockAsync,
  releaseLock,
  getLockInfo,
  forceRemoveLock,
  isLockHeld,
  listLocks,
  lockSignal,
  lockFilePath,
  ProcessLockError: errors.ProcessLockError,
  LockConflictError: errors.LockConflictError,
  LockInvalidNameError: errors.LockInvalidNameError,
  LockInvalidOptionError: errors.LockInvalidOptionError,
  LockNotAFileError: errors.LockNotAFileError,
  LockUnsupportedError: errors.LockUnsupportedError,
  LockIoError: errors.LockIoError,
  LockAbortedError: errors.LockAbortedError,
  LockUnsafeDirError: errors.LockUnsafeDirError,
  LockLostError: errors.LockLostError,
  LockFencedError: errors.LockFencedError,
  acquireLockOrExit,
  fenceWrites,
}
