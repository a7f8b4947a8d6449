/** A lock's name: `'backend'`, `'worker'`, or any 1..64 letters, digits, `-` or `_`. */
export type ProcessType = 'backend' | 'worker' | (string & {})

/** The record in a lock file: the holder of a lock. */
export interface LockInfo {
  /**
   * The holder's PID. 0 on a server when a session holds the lock but its record cannot be read
   * (not written yet, larger than 64 KiB, or the session is not a processlock holder): the lock is
   * held all the same, by a holder this call cannot name (the conflict's message names its server
   * process and role; `processlock check --url` shows them too).
   */
  pid: number
  /** When the lock was taken: ISO 8601 UTC with milliseconds. Empty for a bare-PID file. */
  started: string
  /** Upper case (`'SHORT'`), or null when the lock has no side. */
  tradeSide: string | null
  processName: string
  processType?: string
  hostname?: string
  /** Identifies the holder process beyond its PID (start time and boot), against PID reuse. */
  startToken?: string
  /** `'processlock/1'`; absent in files written by older PID-only implementations. */
  protocol?: string
  /**
   * A decimal number, larger for every new holder of the lock. Pass it with every write the lock
   * protects and have the store refuse tokens older than the newest it has seen. For a lock file
   * it is absent when its holder minted none (an older version, or a holder caught between taking
   * the lock and minting it); it can go back only if the lock's generation file was lost and the
   * wall clock was stepped back past it (see docs/PROTOCOL.md).
   */
  fencingToken?: string
  /**
   * Where the lock is kept: `'file'` (a lock file) or `'postgres'` (a server, `url`). Not
   * enumerable for lock files, whose info stays equal to the file's record.
   */
  backend?: 'file' | 'postgres'
}

export type LogLevel = 'info' | 'warn' | 'error'
export type LogSink = (line: string, level: LogLevel) => void

export interface LockOptions {
  /**
   * The lock directory. Default: `$PROCESSLOCK_DIR`, else `runtime/locks` under the nearest
   * ancestor of the application's entry script (the main module, else `process.argv[1]`; PM2's
   * app script under PM2) that holds a package.json; without one, the same rule from the working
   * directory. The default is fixed once per process: a later `process.chdir` does not move it.
   * A relative `dir` or `$PROCESSLOCK_DIR` is taken from the working directory at each call.
   * Created when missing. Locks are known by the directory's real path: reached through a
   * symlink or `..`, it is the same lock.
   */
  dir?: string
  /**
   * Default: `$TRADE_SIDE` (empty: no side). `null`: no side, whatever the environment says.
   * Upper-cased and trimmed (`' short'` is `SHORT`); an empty or blank string is refused
   * (`LockInvalidNameError`): it would be another lock than the side meant.
   */
  tradeSide?: string | null
  /**
   * Default: `trader-short-backend` style, `trader-backend` without a side. At most 256
   * characters and no control characters, else `LockInvalidOptionError`.
   */
  processName?: string
  /**
   * Where the `[PROCESS_LOCK_*]` lines go: the console by default; `false` or `'silent'` for
   * nowhere (also `PROCESSLOCK_LOG=silent`); or a function. A lock still held when the process
   * (or the worker thread that took it) ends is released after every `'exit'` listener, when no
   * JavaScript runs any more: its line is then written to stdout (`[PROCESS_LOCK_RELEASED]`) or
   * stderr (`[PROCESS_LOCK_RELEASE_FAILED]`) directly; a function is not called, and only a
   * failure is written, to stderr.
   */
  log?: boolean | 'silent' | LogSink
  /**
   * A PostgreSQL URL (`postgres://user:password@host:port/dbname`): the lock is held on that
   * server, for every host that names the same server and lock, instead of in a file. Default:
   * `$PROCESSLOCK_URL`; none (or `''`): lock files. A bad URL is `LockInvalidOptionError`; a
   * server that cannot be reached within `connectTimeoutMs`, `LockIoError`.
   */
  url?: string
  /**
   * On a server: how long the server keeps the lock of a holder it no longer hears from (dead,
   * frozen, cut off). The holder heartbeats every quarter of it, natively, and counts the lock
   * lost after three quarters without a confirmed heartbeat. 1000..86400000, default 10000.
   */
  leaseMs?: number
  /** On a server: the bound on connecting and logging in. Default 5000. */
  connectTimeoutMs?: number
  /** On a server: keeps unrelated applications sharing a database apart. Default `'processlock'`. */
  namespace?: string
  /**
   * On a server: the holder table (`name` or `schema.name`; the name at most 56 characters), with
   * its secret table `<name>_secret` beside it. Default `'processlock_holders'`.
   */
  table?: string
  /**
   * On a server, when the lock is lost: `'exit'` (default) prints `[PROCESS_LOCK_LOST]` to stderr
   * and ends the process with status 75 from a native thread, even while JavaScript is busy;
   * `'signal'`: `lockSignal` aborts with `LockLostError`; a function: called with the
   * `LockLostError`. Lock files ignore it (see `lockSignal`).
   */
  onLost?: 'exit' | 'signal' | ((error: LockLostError) => void)
}

export interface AcquireOptions extends LockOptions {
  /**
   * Block the calling thread up to this many milliseconds for the holder to go (release, exit,
   * or death by any signal), then throw `LockConflictError` with `waitedMs`. Default 0.
   * `Infinity` (or any value too large to count to, such as `Number.MAX_VALUE`): no limit.
   * With `replace`: how long the holder may take to exit after SIGTERM (finite). Default 10000.
   */
  waitMs?: number
  /**
   * Stop a live holder of this host and take its place: SIGTERM (only to the process the record
   * names, verified by its PID and start token), a wait of up to `waitMs` for the handover, then
   * SIGKILL. A holder on another host, or one that cannot be verified, is a `LockConflictError`,
   * never signalled. Each step is logged as `[PROCESS_LOCK_REPLACE]`. Not on Windows.
   */
  replace?: boolean
}

export interface AsyncAcquireOptions extends LockOptions {
  /**
   * Give up after this many milliseconds: the promise rejects with `LockConflictError`, whose
   * `waitedMs` says how long it waited. `0`: one attempt, like `acquireLock`. Default (or
   * `Infinity`, or any value too large to count to, such as `Number.MAX_VALUE`): no limit.
   */
  timeoutMs?: number
  /**
   * Aborting it ends the wait at once: the promise rejects with `LockAbortedError` (its `cause`
   * is the signal's `reason`), nothing is left in the lock directory and no thread keeps
   * waiting. An already aborted signal rejects without trying.
   */
  signal?: AbortSignal
}

export type LockState = 'held' | 'stale' | 'invalid'

export interface LockStatus {
  file: string
  processType: string | null
  tradeSide: string | null
  state: LockState
  /** The record, for held and stale locks. */
  record: LockInfo | null
  /** Why an invalid file is invalid. */
  problem: string | null
  /** This process holds it: the file at its path is the one this process holds. */
  isOwn: boolean
}

export type ProcessLockErrorCode =
  | 'LOCK_CONFLICT'
  | 'LOCK_INVALID_NAME'
  | 'LOCK_INVALID_OPTION'
  | 'LOCK_NOT_A_FILE'
  | 'LOCK_UNSUPPORTED'
  | 'LOCK_IO'
  | 'LOCK_ABORTED'
  | 'LOCK_UNSAFE_DIR'
  | 'LOCK_LOST'
  | 'LOCK_FENCED'

export class ProcessLockError extends Error {
  readonly code: ProcessLockErrorCode
}
/** `LOCK_CONFLICT: backend (SHORT) is already running (PID: 51172)` */
export class LockConflictError extends ProcessLockError {
  readonly code: 'LOCK_CONFLICT'
  readonly holder: LockInfo
  readonly lockFile: string
  /** How long the call waited before giving up (0 without `waitMs` or `timeoutMs`). */
  readonly waitedMs: number
}
export class LockInvalidNameError extends ProcessLockError {
  readonly code: 'LOCK_INVALID_NAME'
}
export class LockInvalidOptionError extends ProcessLockError {
  readonly code: 'LOCK_INVALID_OPTION'
}
/** A directory, symlink or special file sits at the lock path; it was left untouched. */
export class LockNotAFileError extends ProcessLockError {
  readonly code: 'LOCK_NOT_A_FILE'
  readonly path: string
}
/** The lock directory's file system has no file locks or no hard links. */
export class LockUnsupportedError extends ProcessLockError {
  readonly code: 'LOCK_UNSUPPORTED'
  readonly errno?: number
  readonly osCode?: string
  readonly syscall?: string
  readonly path?: string
}
export class LockIoError extends ProcessLockError {
  readonly code: 'LOCK_IO'
  /** Negative, as in Node's own system errors (`-13` for EACCES on Linux). */
  readonly errno?: number
  /** `'EACCES'`, `'ENOTDIR'`, ... (on a server: `'ECONNREFUSED'`, `'ECONNRESET'`, ...) */
  readonly osCode?: string
  /** On a server: what failed (`'connect'`, `'lock'`, `'record'`, `'release'`, ...). */
  readonly syscall?: string
  readonly path?: string
  /** On a server: the SQLSTATE it answered with (`'28P01'`: wrong password, ...). */
  readonly sqlstate?: string
}
/** A waiting acquisition was aborted through its `AbortSignal`. */
export class LockAbortedError extends ProcessLockError {
  readonly code: 'LOCK_ABORTED'
  /** The signal's `reason`. */
  readonly cause?: unknown
}
/**
 * The lock directory lets other users delete files in it (writable by others without the
 * sticky bit, or owned by another user than this process's and root): refused, untouched.
 * The message says why and how to fix it. Unix only.
 */
export class LockUnsafeDirError extends ProcessLockError {
  readonly code: 'LOCK_UNSAFE_DIR'
  /** The refused directory. */
  readonly path: string
}

/**
 * A held lock is no longer this process's: its server session ended or fell silent past the
 * lease, or its lock file was removed or replaced. Stop what the lock protects.
 */
export class LockLostError extends ProcessLockError {
  readonly code: 'LOCK_LOST'
  /** The lock: its file's path, or its server and name. */
  readonly lockFile?: string
}

/**
 * A write to a table guarded by `fenceWrites` came from a connection not bound to the newest
 * claim of its lock (another holder claimed it since, or this connection never claimed), or a
 * claim came with a fencing token older than one already claimed. Stop what the lock protects.
 */
export class LockFencedError extends ProcessLockError {
  readonly code: 'LOCK_FENCED'
  /** The lock's key in the guarded database: `'backend'`, or `'backend:SHORT'` with a side. */
  readonly lock?: string
  /** The generation this connection (or this claim) had. */
  readonly generation?: string
  /** The newest generation claimed, which it is not. */
  readonly current?: string
  /** On PostgreSQL: the SQLSTATE of the refusal (`'P0001'`). */
  readonly sqlstate?: string
  /** On PostgreSQL: the driver's error, as node-postgres reported it. */
  readonly cause?: unknown
}

/**
 * Takes the exclusive lock for `processType` (and the trade side). Throws `LockConflictError`
 * when another live process holds it; takes a dead holder's lock over at once. Calling it again
 * in the holding process returns the held lock's info. The lock is released when the process
 * ends: exit, uncaught exception, SIGINT/SIGTERM/SIGHUP, and even SIGKILL (the next acquirer
 * takes it over at once). If the file this process held is no longer at the lock path (removed
 * by force, replaced, its directory moved), the lock is taken anew, or the conflict with the new
 * holder is thrown. Worker threads of one process share its locks: see `releaseLock`.
 */
export function acquireLock(processType: ProcessType, options?: AcquireOptions): LockInfo

/**
 * Takes the lock for `processType`, waiting until its holder lets go (its release, its exit, or
 * its death by any signal, SIGKILL included: the waiter is woken by the kernel at that moment,
 * it does not poll). The wait never blocks the event loop nor a libuv pool thread. Resolves with
 * the lock's info (at once when this process already holds it); rejects with
 * `LockConflictError` after `timeoutMs`, `LockAbortedError` when `signal` aborts.
 */
export function acquireLockAsync(processType: ProcessType, options?: AsyncAcquireOptions): Promise<LockInfo>

/**
 * Lets go of the lock if this thread holds it; true when its file was removed. A lock taken by
 * several threads of the process (worker threads) is released when the last of them lets go
 * or ends: until then this returns false and the lock stays held.
 */
export function releaseLock(processType: ProcessType, options?: LockOptions): boolean

/**
 * The live holder's record, or null when there is no lock or only a stale one. This process's
 * own record only while the lock path still names the file it holds.
 */
export function getLockInfo(processType: ProcessType, options?: LockOptions): LockInfo | null

/**
 * Removes the lock file whatever holds it (use with caution: the holder keeps running). A
 * holder that releases later will not remove a newer holder's file. True when a file was removed.
 * On a server (`url`): ends the holder's session (`pg_terminate_backend`, which needs the right
 * role), freeing the lock at once; the holder hears at once that its lock is lost (its connection closes).
 */
export function forceRemoveLock(processType: ProcessType, options?: LockOptions): boolean

/**
 * Whether this process still holds the lock file at the lock path: false when it never took the
 * lock, released it, or the file was removed by force, replaced or its directory moved. Cheap:
 * one `lstat`, no directory scan.
 */
export function isLockHeld(processType: ProcessType, options?: LockOptions): boolean

/** Every lock file in the directory and its state; with `url`, every lock on the server. */
export function listLocks(options?: Pick<LockOptions, 'dir' | 'url' | 'namespace' | 'table'>): LockStatus[]

/**
 * An `AbortSignal` that aborts with `LockLostError` when this thread's hold of the lock is lost,
 * so that code is written once for both kinds of lock. On a server (`onLost: 'signal'` or a
 * function; with `'exit'` the process ends first): when the heartbeat finds the lock lost. A
 * lock file: when it is removed or replaced, as seen by a native thread that looks every 200 ms
 * while a signal is asked for (a file replaced and put back between two looks goes unseen).
 * Already aborted when the lock is not held here.
 */
export function lockSignal(processType: ProcessType, options?: LockOptions): AbortSignal

/** The lock file path that `processType` and `options` name; nothing is touched. */
export function lockFilePath(processType: ProcessType, options?: LockOptions): string

/**
 * The start-up guard in one call: takes the lock like `acquireLock` and resolves with its info.
 * On any failure (a conflict, a bad name, an I/O error) it prints `[FATAL] <message>` after the
 * lock's own lines (to `options.log` when that is a function, else to stderr), waits until
 * stdout and stderr have written everything (at most 3 s), and exits with status 1; the promise then never
 * settles, so nothing after `await acquireLockOrExit(...)` runs. Unlike `console.error(...);
 * process.exit(1)`, the lines also reach PM2's log files in cluster mode.
 */
export function acquireLockOrExit(processType: ProcessType, options?: AcquireOptions): Promise<LockInfo>

/** A connection `fenceWrites` takes: what the application already has, duck-typed. */
export type FenceableDatabase =
  /** better-sqlite3 `Database`, node:sqlite `DatabaseSync`. */
  | { prepare(sql: string): unknown; exec(sql: string): unknown; function(name: string, ...rest: unknown[]): unknown }
  /** node-postgres `Client` or `Pool`. */
  | { query(...args: unknown[]): unknown }

export interface FenceOptions extends LockOptions {
  /**
   * The tables the lock protects in this database (`name`, or `schema.name` on PostgreSQL):
   * each gets a trigger that refuses writes from connections not bound to the newest claim.
   */
  tables: string[]
}

export interface Fence {
  /** The lock's key in the guarded database: `'backend'`, or `'backend:SHORT'` with a side. */
  readonly lock: string
  /**
   * This claim's generation, a decimal string: a server lock's fencing token, or for a lock
   * file a number the guarded database minted, one above the previous claim's.
   */
  readonly generation: string
  readonly tables: string[]
  /** Unbinds the connection (a Pool: clients handed out from now on): its writes are refused. */
  unbind(): void | Promise<void>
}

/**
 * Claims the lock `processType`, which this process must hold (name it with the options it was
 * taken with), in the database of `db`, and guards `options.tables` there. The claim raises the
 * lock's generation in that database (a server lock: to its fencing token, never down) and binds
 * `db` to it. From then on the database itself refuses, with `LockFencedError`, every write to
 * those tables from a connection not bound to the newest claim: the late writes of a holder that
 * lost the lock. SQLite: the error is thrown by the statement; PostgreSQL: `db.query` rejects
 * with it. Call it right after the lock was taken, before the first write.
 */
export function fenceWrites(db: FenceableDatabase, processType: ProcessType, options: FenceOptions): Promise<Fence>
