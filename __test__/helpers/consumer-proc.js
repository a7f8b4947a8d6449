'use strict'
// Processes for the consumer suite: commands run to their end, services watched while they run,
// and polling for states (never a fixed sleep where a condition can be watched).
const { watch: watchProcess, running } = require('./proc')

/**
 * The environment children get: ours, without what an outer `npm test` or jest put there that
 * would steer a nested npm, jest or the lock (npm_*, JEST_*, PROCESSLOCK_*, TRADE_SIDE), then
 * `extra` on top (an `undefined` value removes a variable).
 */
function cleanEnv(extra = {}) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(npm_|JEST_|PROCESSLOCK_)/i.test(k) || k === 'TRADE_SIDE' || k === 'NODE_OPTIONS') continue
    env[k] = v
  }
  env.NO_COLOR = '1'
  env.FORCE_COLOR = '0'
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k]
    else env[k] = v
  }
  return env
}

/**
 * Starts a process with its output collected (see `watch` in ./proc): by default in the clean
 * environment, with more patience than the in-tree suites (npm, tsc and PM2 are slow to start).
 */
function watch(file, args, { cwd, env, stdin = 'ignore' } = {}) {
  return watchProcess(file, args, { cwd, env: env || cleanEnv(), stdin, waitMs: 30000, doneMs: 60000 })
}

/** Runs a command to its end: { code, signal, stdout, stderr }. */
function run(file, args, opts = {}) {
  return watch(file, args, opts).done(opts.timeoutMs || 180000)
}

/** Runs a command and throws with its output unless it exits 0. */
async function runOk(file, args, opts = {}) {
  const r = await run(file, args, opts)
  if (r.code !== 0) {
    throw new Error(
      `${file} ${args.join(' ')} exited with ${r.code ?? r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
    )
  }
  return r
}

/** Polls `probe` until it returns a truthy value, which is returned. */
async function waitUntil(probe, { timeoutMs = 30000, intervalMs = 50, what = 'a condition' } = {}) {
  const until = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await probe()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() > until) {
      const detail =
        last instanceof Error ? `: ${last.message}` : last === undefined ? '' : `: last ${JSON.stringify(last)}`
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`)
    }
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}

module.exports = { cleanEnv, watch, run, runOk, waitUntil, running }
