'use strict'
// acquireLockOrExit: the start-up guard `try { acquireLock(...) } catch (e) { console.error('[FATAL]',
// e.message); process.exit(1) }`, done so that its lines are never lost. `process.exit` does not
// wait for output still on its way: under PM2 cluster mode the app's output goes to the log files
// through asynchronous streams, and the lines that say why the process stopped vanish. Here the
// process ends only once stdout and stderr have taken every line written before (or after a
// bounded wait, for a stream that never drains, such as a pipe nobody reads).

const FLUSH_LIMIT_MS = 3000

/** The line of the start-up guard: `console.error('[FATAL]', e?.message || e)` prints the same. */
function fatalLine(error) {
  return `[FATAL] ${(error && error.message) || error}`
}

/** Ends the process with `code` once both standard streams have written what they were given. */
function exitOnceWritten(code) {
  process.exitCode = code
  const exit = () => process.exit(code)
  let pending = 2
  const written = () => {
    pending -= 1
    if (pending === 0) exit()
  }
  for (const stream of [process.stdout, process.stderr]) {
    // An empty write is queued behind everything written before it: its callback says they are out.
    try {
      stream.write('', 'utf8', written)
    } catch {
      written()
    }
  }
  setTimeout(exit, FLUSH_LIMIT_MS)
}

/**
 * `acquireLockOrExit(type, options)` over the given `acquireLock`: resolves with the lock's info;
 * on any failure prints the `[FATAL]` line (to `options.log` when it is a function, else to
 * stderr) and exits 1 once the output is written. The promise then never settles, so nothing
 * after `await acquireLockOrExit(...)` runs.
 */
function orExit(acquireLock) {
  return function acquireLockOrExit(processType, options) {
    let info
    try {
      info = acquireLock(processType, options)
    } catch (error) {
      const log = options && typeof options.log === 'function' ? options.log : null
      if (log) log(fatalLine(error), 'error')
      else console.error(fatalLine(error))
      exitOnceWritten(1)
      return new Promise(() => {})
    }
    return Promise.resolve(info)
  }
}

module.exports = { orExit, fatalLine }
