'use strict'
// Processes for the consumer suite: commands run to their end, services watched while they run,
// and polling for states (never a fixed sleep where a condition can be watched).
const { spawn } = require('node:child_process')
const fs = require('node:fs')

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

/** Starts a process with its output collected; `waitFor` resolves on a line it prints. */
function watch(file, args, { cwd, env, stdin = 'ignore' } = {}) {
  const child = spawn(file, args, { cwd, env: env || cleanEnv(), stdio: [stdin, 'pipe', 'pipe'] })
  const state = { stdout: '', stderr: '', waiters: [], spawnError: null }
  const settle = () => {
    state.waiters = state.waiters.filter((w) => {
      const m = w.match(state.stdout + state.stderr)
      if (m) w.resolve(m)
      return !m
    })
  }
  child.stdout.on('data', (d) => {
    state.stdout += d
    settle()
  })
  child.stderr.on('data', (d) => {
    state.stderr += d
    settle()
  })
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }))
    child.on('error', (err) => {
      state.spawnError = err
      resolve({ code: null, signal: null, error: err })
    })
  })
  const closed = new Promise((resolve) => {
    child.on('close', resolve)
    child.on('error', resolve)
  })
  let ended = false
  exited.then(() => {
    ended = true
  })
  const describe = () => `${file} ${args.join(' ')}\n--- stdout\n${state.stdout}\n--- stderr\n${state.stderr}`
  return {
    child,
    pid: child.pid,
    get stdout() {
      return state.stdout
    },
    get stderr() {
      return state.stderr
    },
    get ended() {
      return ended
    },
    /** Resolves with the match once stdout+stderr match `pattern` (string or RegExp). */
    waitFor(pattern, timeoutMs = 30000) {
      const match = (text) => {
        if (typeof pattern === 'string') return text.includes(pattern) ? [pattern] : null
        return text.match(pattern)
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}: ${describe()}`)), timeoutMs)
        state.waiters.push({
          match,
          resolve: (m) => {
            clearTimeout(timer)
            resolve(m)
          },
        })
        settle()
        closed.then(() => {
          if (!match(state.stdout + state.stderr)) {
            clearTimeout(timer)
            reject(new Error(`process ended before printing ${pattern}: ${describe()}`))
          }
        })
      })
    },
    /** { code, signal, stdout, stderr } once the process ended and its output closed. */
    async done(timeoutMs = 60000) {
      let timer
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms: ${describe()}`)), timeoutMs)
      })
      try {
        const r = await Promise.race([exited.then(async (r) => (await closed, r)), timeout])
        return { ...r, stdout: state.stdout, stderr: state.stderr }
      } finally {
        clearTimeout(timer)
      }
    },
    kill(signal = 'SIGTERM') {
      if (!ended) child.kill(signal)
    },
    describe,
  }
}

/** Runs a command to its end: { code, signal, stdout, stderr }. */
function run(file, args, opts = {}) {
  return watch(file, args, opts).done(opts.timeoutMs || 180000)
}

/** Runs a command and throws with its output unless it exits 0. */
async function runOk(file, args, opts = {}) {
  const r = await run(file, args, opts)
  if (r.code !== 0) {
    throw new Error(`${file} ${args.join(' ')} exited with ${r.code ?? r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`)
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
      const detail = last instanceof Error ? `: ${last.message}` : last === undefined ? '' : `: last ${JSON.stringify(last)}`
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`)
    }
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}

/** The state letter of a process (R, S, Z, ...), or null once it is gone. */
function procState(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  } catch {
    return null
  }
}

/** Whether `pid` names a process that still runs (a zombie has ended already). */
function running(pid) {
  if (process.platform === 'linux') {
    const s = procState(pid)
    return s !== null && s !== 'Z' && s !== 'X'
  }
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return e.code === 'EPERM'
  }
}

module.exports = { cleanEnv, watch, run, runOk, waitUntil, running }
