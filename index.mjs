// ESM entry: the same module instance as `require('@trader/processlock')`, so both kinds of
// import share one set of held locks.
import api from './index.js'

export const {
  acquireLock,
  acquireLockAsync,
  releaseLock,
  getLockInfo,
  forceRemoveLock,
  isLockHeld,
  listLocks,
  lockSignal,
  lockFilePath,
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
  acquireLockOrExit,
  fenceWrites,
} = api
export default api
