'use strict'
// A service of the contract suite. It takes `backend (SHORT)` through the public API on the
// backend its environment names ($PROCESSLOCK_URL, else $PROCESSLOCK_DIR), as a real service
// does, and reports what happens to it on stdout, one line per event. Env LOCK_TYPE: another
// type than `backend`.
//   node holder.js hold     HELD <info json>; LOST <name> <code> when its lockSignal aborts;
//                           a stdin line: releaseLock, RELEASED <removed>, exit 0.
//                           Env ON_LOST: the onLost option (absent: the default).
//   node holder.js drain    HELD <info json>; on SIGTERM: DRAINING, 300 ms of work, DRAINED, exit 0
//   node holder.js wait     WAITING, then acquireLockAsync (no limit): GOT <info json> or
//                           FAILED <code> <holder pid>; a stdin line aborts the wait.
//                           Env WAIT_API=sync: acquireLock with waitMs 60000 instead (no abort).
//   node holder.js try      one acquireLock: GOT <info json> or FAILED <code> <holder pid>
const readline = require('node:readline')
const { acquireLock, acquireLockAsync, releaseLock, lockSignal } = require('../..')

const [mode] = process.argv.slice(2)
const say = (line) => require('node:fs').writeSync(1, `${line}\n`)
const options = process.env.ON_LOST ? { onLost: process.env.ON_LOST } : {}
const TYPE = process.env.LOCK_TYPE || 'backend'

function onLine(fn) {
  const rl = readline.createInterface({ input: process.stdin })
  rl.once('line', () => {
    rl.close()
    fn()
  })
}

/** The info as JSON, with `backend`, which a lock file's info keeps out of JSON. */
const json = (info) => JSON.stringify({ ...info, backend: info.backend })
const failed = (e) => `FAILED ${e.code} ${e.holder ? e.holder.pid : '-'}`

async function main() {
  switch (mode) {
    case 'hold': {
      const info = acquireLock(TYPE, options)
      // Watched before HELD is said: the test may take the lock away as soon as it reads it.
      const signal = lockSignal(TYPE, options)
      signal.addEventListener('abort', () => say(`LOST ${signal.reason.name} ${signal.reason.code}`))
      say(`HELD ${json(info)}`)
      onLine(() => {
        say(`RELEASED ${releaseLock(TYPE, options)}`)
        process.exit(0)
      })
      // Alive without a stdin too (under `processlock run`).
      setInterval(() => {}, 1 << 30)
      break
    }
    case 'drain': {
      say(`HELD ${json(acquireLock(TYPE, options))}`)
      process.on('SIGTERM', () => {
        say('DRAINING')
        setTimeout(() => {
          say('DRAINED')
          process.exit(0)
        }, 300)
      })
      setInterval(() => {}, 1 << 30)
      break
    }
    case 'wait': {
      say('WAITING')
      try {
        let info
        if (process.env.WAIT_API === 'sync') {
          info = acquireLock(TYPE, { ...options, waitMs: 60000 })
        } else {
          const controller = new AbortController()
          onLine(() => controller.abort(new Error('asked to stop')))
          info = await acquireLockAsync(TYPE, { ...options, signal: controller.signal, timeoutMs: 60000 })
        }
        say(`GOT ${json(info)}`)
        releaseLock(TYPE, options)
      } catch (e) {
        say(failed(e))
      }
      process.exit(0)
      break
    }
    case 'try': {
      try {
        say(`GOT ${json(acquireLock(TYPE, options))}`)
      } catch (e) {
        say(failed(e))
      }
      process.exit(0)
      break
    }
    default:
      throw new Error(`unknown mode ${mode}`)
  }
}

main()
