'use strict'
// Real child processes for the tests: start one, wait for a line it prints, send it signals,
// wait for its end. `watch` is the one implementation; the fixture, CLI and consumer helpers
// only choose what to start and with which environment.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..', '..')
const FIXTURES = path.join(ROOT, '__test__', 'fixtures')

function tempDir(label) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `pl-${label}-`))
}

/**
 * What a lock directory holds, without the removal guard that every remover locks and the
 * generation files that keep the locks' fencing tokens (both kept on purpose).
 */
function lockDirEntries(dir) {
  return fs.readdirSync(dir).filter((n) => n !== '.processlock.guard' && !/^\..*\.lock\.fencing$/.test(n))
}

/**
 * Starts `file ...args` with its output collected.
 * `env` is the whole environment of the child (variables set to `undefined` are left out);
 * `waitMs` is the default timeout of `waitFor`, `doneMs` that of `done` (none unless given).
 */
function watch(file, args, { env, cwd, stdin = 'ignore', uid, gid, waitMs = 15000, doneMs } = {}) {
  if (env) env = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined))
  const child = spawn(file, args, { cwd, env, stdio: [stdin, 'pipe', 'pipe'], uid, gid })
  const state = { stdout: '', stderr: '', waiters: [] }
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
    // A spawn error (no such file, ...) ends it too, with no exit code.
    child.on('error', (err) => resolve({ code: null, signal: null, error: err }))
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
    /**
     * Resolves with the match once stdout+stderr match `pattern` (a string or a RegExp); rejects
     * if the output closes without it, or after `timeoutMs`.
     */
    waitFor(pattern, timeoutMs = waitMs) {
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
    /** Resolves at the process's exit, without waiting for its output to close (a grandchild
     *  that outlives it may hold the pipes). */
    async exited() {
      const r = await exited
      return { ...r, stdout: state.stdout, stderr: state.stderr }
    },
    /** { code, signal, stdout, stderr } once the process ended and its output closed. */
    async done(timeoutMs = doneMs) {
      const finished = exited.then(async (r) => {
        await closed
        return r
      })
      if (timeoutMs === undefined) return { ...(await finished), stdout: state.stdout, stderr: state.stderr }
      let timer
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms: ${describe()}`)), timeoutMs)
      })
      try {
        const r = await Promise.race([finished, timeout])
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

/**
 * Starts `node <fixture> ...args` with PROCESSLOCK_DIR=dir and the given extra env; `node` is
 * another Node binary to run it with (helpers/node-sqlite.js).
 */
function start(fixture, { dir, env = {}, args = [], uid, gid, cwd, node = process.execPath } = {}) {
  return watch(node, [path.join(FIXTURES, fixture), ...args], {
    cwd: cwd || ROOT,
    env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', ...env },
    stdin: 'pipe',
    uid,
    gid,
  })
}

/** Runs a fixture to its end. */
async function run(fixture, opts) {
  return start(fixture, opts).done()
}

/** A PID that belonged to a process that has ended: reaped, so nothing has it now. */
async function deadPid() {
  const p = start('noop.js', {})
  await p.done()
  return p.pid
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

module.exports = { ROOT, FIXTURES, tempDir, lockDirEntries, watch, start, run, deadPid, running }
