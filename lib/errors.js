'use strict'
// Real JS Error subclasses. The native layer never throws for expected failures: it returns a
// plain description, and the classes are built here, in the caller's realm, so that
// `instanceof Error` holds everywhere (jest runs tests in their own realm).

class ProcessLockError extends Error {
  constructor(message, code, props) {
    super(message)
    this.name = new.target.name
    this.code = code
    if (props) Object.assign(this, props)
  }
}

/** Another live process holds the lock. */
class LockConflictError extends ProcessLockError {}
/** A process type or trade side that is not 1..64 (side: 1..32) letters, digits, '-' or '_'. */
class LockInvalidNameError extends ProcessLockError {}
/** An option of the wrong type or out of range. */
class LockInvalidOptionError extends ProcessLockError {}
/** The lock path holds a directory, a symlink or a special file; it was left untouched. */
class LockNotAFileError extends ProcessLockError {}
/** The file system of the lock directory has no file locks or no hard links. */
class LockUnsupportedError extends ProcessLockError {}
/** An operating system call failed; `errno`, `osCode`, `syscall` and `path` say which. */
class LockIoError extends ProcessLockError {}
/** A waiting acquisition was cancelled through its AbortSignal. */
class LockAbortedError extends ProcessLockError {}
/** The lock directory lets other users delete files in it; nothing in it was touched. */
class LockUnsafeDirError extends ProcessLockError {}
/**
 * A lock this process held is no longer its own: its server session ended or fell silent past
 * the lease, or its lock file was removed or replaced. Stop what the lock protects.
 */
class LockLostError extends ProcessLockError {}
/**
 * A write to a table guarded by `fenceWrites` came from a connection that is not bound to the
 * newest claim of its lock (another holder claimed it since, or it never claimed), or a claim
 * came with a fencing token older than one already claimed. Stop what the lock protects.
 */
class LockFencedError extends ProcessLockError {}

/** The class of each code the native layer reports (its `ErrorCode`); a test holds them equal. */
const CLASSES = {
  LOCK_CONFLICT: LockConflictError,
  LOCK_INVALID_NAME: LockInvalidNameError,
  LOCK_INVALID_OPTION: LockInvalidOptionError,
  LOCK_NOT_A_FILE: LockNotAFileError,
  LOCK_UNSUPPORTED: LockUnsupportedError,
  LOCK_IO: LockIoError,
  LOCK_ABORTED: LockAbortedError,
  LOCK_UNSAFE_DIR: LockUnsafeDirError,
  LOCK_LOST: LockLostError,
  LOCK_FENCED: LockFencedError,
}

function normalizeRecord(r) {
  if (!r) return null
  const info = {
    pid: r.pid,
    started: r.started,
    tradeSide: r.tradeSide ?? null,
    processName: r.processName,
  }
  for (const key of ['processType', 'hostname', 'startToken', 'protocol', 'fencingToken']) {
    if (r[key] != null) info[key] = r[key]
  }
  // A lock file's info is its record, key for key (JSON.stringify gives the file's fields):
  // where it is kept is readable, not one of them.
  if (r.backend === 'file') Object.defineProperty(info, 'backend', { value: 'file', enumerable: false })
  else if (r.backend != null) info.backend = r.backend
  return info
}

/** Builds the Error for a failure description returned by the native layer. */
function errorFromFailure(failure, lockFile) {
  const Class = CLASSES[failure.code] || ProcessLockError
  const props = {}
  if (failure.code === 'LOCK_CONFLICT') {
    props.holder = normalizeRecord(failure.holder)
    props.lockFile = lockFile
    props.waitedMs = failure.waitedMs ?? 0
  }
  for (const key of ['errno', 'osCode', 'syscall', 'path', 'sqlstate']) {
    if (failure[key] != null) props[key] = failure[key]
  }
  return new Class(failure.message, failure.code, props)
}

/** Throws the Error of a native outcome that failed; returns the outcome otherwise. */
function throwIfFailed(out) {
  if (out.error) throw errorFromFailure(out.error, out.lockFile)
  return out
}

function invalidOption(message) {
  return new LockInvalidOptionError(`LOCK_INVALID_OPTION: ${message}`, 'LOCK_INVALID_OPTION')
}

module.exports = {
  ProcessLockError,
  LockConflictError,
  LockInvalidNameError,
  LockInvalidOptionError,
  LockNotAFileError,
  LockUnsupportedError,
  LockIoError,
  LockAbortedError,
  LockUnsafeDirError,
  LockLostError,
  LockFencedError,
  CLASSES,
  errorFromFailure,
  throwIfFailed,
  invalidOption,
  normalizeRecord,
}
