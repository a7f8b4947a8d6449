'use strict'
// Adapters that give every lock implementation the same small shape, so the
// benchmark and the torture harness drive ours and the peers identically.
//
//   const impl = load(name, { stale })
//   impl.lockPath(spec)       path of the lock for spec = { dir, type, side }
//   impl.tryAcquire(spec)     true = acquired, false = held by someone else,
//                             throws on anything unexpected
//   impl.release(spec)        true = released, false = it was not ours any more
//   impl.info(spec)           what a bystander sees (ours: the record or null;
//                             the peers: their check, true/false)
//   impl.forceRemove(spec)    (ours) an operator's forced removal: true = removed
//   impl.acquireAsync(spec)   (optional) promise of true/false
//   impl.releaseAsync(spec)   (optional) promise
//
// Every implementation locks the same path: <dir>/<type>.<side>.lock (ours
// creates a file there, lockfile a file, proper-lockfile a directory).

const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const NAMES = ['ours', 'proper-lockfile', 'lockfile']
const LABELS = {
  ours: '@trader/processlock',
  'proper-lockfile': 'proper-lockfile 4.1.2',
  lockfile: 'lockfile 1.0.4',
  floor: 'floor (C, same syscalls)',
}

function lockPath(spec) {
  const name = spec.side ? `${spec.type}.${String(spec.side).toLowerCase()}.lock` : `${spec.type}.lock`
  return path.join(spec.dir, name)
}

// Why our package cannot be loaded (null when it can).
function oursUnavailable() {
  try {
    const pl = require(ROOT)
    if (typeof pl.acquireLock !== 'function' || typeof pl.releaseLock !== 'function') {
      return 'the package does not export acquireLock/releaseLock'
    }
    return null
  } catch (e) {
    return `cannot load ${ROOT}: ${(e && e.message ? e.message : String(e)).split('\n')[0]}`
  }
}

function loadOurs() {
  const pl = require(ROOT)
  const opts = (spec) => ({
    dir: spec.dir,
    tradeSide: spec.side,
    processName: spec.processName || 'bench',
    log: false,
  })
  // The fencing token of the last lock taken (null: none), for the torture's order check.
  let lastToken = null
  return {
    name: 'ours',
    label: LABELS.ours,
    module: pl,
    lockPath,
    tryAcquire(spec) {
      try {
        lastToken = pl.acquireLock(spec.type, opts(spec)).fencingToken ?? null
        return true
      } catch (e) {
        if (e && e.code === 'LOCK_CONFLICT') return false
        throw e
      }
    },
    release(spec) {
      return pl.releaseLock(spec.type, { dir: spec.dir, tradeSide: spec.side, log: false }) !== false
    },
    token() {
      return lastToken
    },
    // An operator's forced removal: true when a file was removed.
    forceRemove(spec) {
      return pl.forceRemoveLock(spec.type, { dir: spec.dir, tradeSide: spec.side, log: false })
    },
    // What a bystander sees: the holder's record, or null.
    info(spec) {
      return pl.getLockInfo(spec.type, { dir: spec.dir, tradeSide: spec.side, log: false })
    },
    // Waiting acquisition; present only when the package has it.
    waitAcquire(spec, waitMs) {
      pl.acquireLock(spec.type, { ...opts(spec), waitMs })
      return true
    },
    waitAcquireAsync:
      typeof pl.acquireLockAsync === 'function'
        ? async (spec, timeoutMs) => {
            await pl.acquireLockAsync(spec.type, { ...opts(spec), timeoutMs })
            return true
          }
        : null,
  }
}

function loadProperLockfile(options = {}) {
  const pl = require('proper-lockfile')
  const releases = new Map()
  const base = (spec) => ({
    realpath: false,
    lockfilePath: lockPath(spec),
    // proper-lockfile enforces stale >= 2000 ms.
    stale: options.stale || 10000,
    // The default throws from a timer, which would crash a racer; record it instead.
    onCompromised: (err) => {
      if (options.onCompromised) options.onCompromised(err)
    },
  })
  // proper-lockfile locks "<file>.lock" for a file; we pass lockfilePath so
  // the lock lives at the same path as everybody else's.
  const target = (spec) => path.join(spec.dir, spec.type)
  return {
    name: 'proper-lockfile',
    label: LABELS['proper-lockfile'],
    module: pl,
    lockPath,
    tryAcquire(spec) {
      try {
        releases.set(lockPath(spec), pl.lockSync(target(spec), base(spec)))
        return true
      } catch (e) {
        if (e && e.code === 'ELOCKED') return false
        throw e
      }
    },
    release(spec) {
      const rel = releases.get(lockPath(spec))
      releases.delete(lockPath(spec))
      if (!rel) return false
      try {
        rel()
        return true
      } catch (e) {
        if (e && (e.code === 'ERELEASED' || e.code === 'ENOTACQUIRED')) return false
        throw e
      }
    },
    info(spec) {
      return pl.checkSync(target(spec), {
        realpath: false,
        lockfilePath: lockPath(spec),
        stale: options.stale || 10000,
      })
    },
    // Waiting the proper-lockfile way: retry every pollMs (default 10 ms).
    async waitAcquireAsync(spec, timeoutMs) {
      const every = options.pollMs || 10
      const retries = { retries: Math.ceil(timeoutMs / every), factor: 1, minTimeout: every, maxTimeout: every }
      releases.set(lockPath(spec), await pl.lock(target(spec), { ...base(spec), retries }))
      return true
    },
    async acquireAsync(spec) {
      try {
        releases.set(lockPath(spec), await pl.lock(target(spec), base(spec)))
        return true
      } catch (e) {
        if (e && e.code === 'ELOCKED') return false
        throw e
      }
    },
    async releaseAsync(spec) {
      const rel = releases.get(lockPath(spec))
      releases.delete(lockPath(spec))
      if (!rel) return false
      await rel()
      return true
    },
  }
}

function loadLockfile(options = {}) {
  const lf = require('lockfile')
  const opts = options.stale ? { stale: options.stale } : {}
  return {
    name: 'lockfile',
    label: LABELS.lockfile,
    module: lf,
    lockPath,
    tryAcquire(spec) {
      try {
        lf.lockSync(lockPath(spec), { ...opts })
        return true
      } catch (e) {
        if (e && e.code === 'EEXIST') return false
        throw e
      }
    },
    release(spec) {
      lf.unlockSync(lockPath(spec))
      return true
    },
    info(spec) {
      return lf.checkSync(lockPath(spec), { ...opts })
    },
    // Waiting the lockfile way: `wait` with a poll period (default 10 ms).
    waitAcquireAsync(spec, timeoutMs) {
      return new Promise((resolve, reject) => {
        lf.lock(lockPath(spec), { ...opts, wait: timeoutMs, pollPeriod: options.pollMs || 10 }, (err) =>
          err ? reject(err) : resolve(true),
        )
      })
    },
  }
}

function load(name, options) {
  switch (name) {
    case 'ours':
      return loadOurs(options)
    case 'proper-lockfile':
      return loadProperLockfile(options)
    case 'lockfile':
      return loadLockfile(options)
    default:
      throw new Error(`unknown implementation ${name}`)
  }
}

module.exports = { ROOT, NAMES, LABELS, lockPath, load, oursUnavailable }
