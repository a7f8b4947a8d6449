'use strict'
// Real child processes for the tests: start one, wait for a line it prints, send it signals,
// wait for its end.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..', '..')
const FIXTURES = path.join(ROOT, '__test__', 'fixtures')

function tempDir(label) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `pl-${label}-`))
}

/** Starts `node <fixture> ...args` with PROCESSLOCK_DIR=dir and the given extra env. */
function start(fixture, { dir, env = {}, args = [], uid, gid, cwd } = {}) {
  const child = spawn(process.execPath, [path.join(FIXTURES, fixture), ...args], {
    cwd: cwd || ROOT,
    env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
    uid,
    gid,
  })
  const state = { stdout: '', stderr: '', waiters: [] }
  const check = () => {
    state.waiters = state.waiters.filter((w) => {
      if (state.stdout.includes(w.text) || state.stderr.includes(w.text)) {
        w.resolve()
        return false
      }
      return true
    })
  }
  child.stdout.on('data', (d) => {
    state.stdout += d
    check()
  })
  child.stderr.on('data', (d) => {
    state.stderr += d
    check()
  })
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }))
  })
  const closed = new Promise((resolve) => child.on('close', resolve))
  return {
    child,
    pid: child.pid,
    get stdout() {
      return state.stdout
    },
    get stderr() {
      return state.stderr
    },
    /** Resolves once the process printed `text` (stdout or stderr); rejects if it ends first. */
    waitFor(text, timeoutMs = 15000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${text}; stdout=${state.stdout} stderr=${state.stderr}`)), timeoutMs)
        const done = () => {
          clearTimeout(timer)
          resolve()
        }
        state.waiters.push({ text, resolve: done })
        check()
        exited.then(() => {
          setTimeout(() => {
            clearTimeout(timer)
            if (!state.stdout.includes(text) && !state.stderr.includes(text)) {
              reject(new Error(`process ended before printing ${text}; stdout=${state.stdout} stderr=${state.stderr}`))
            }
          }, 50)
        })
      })
    },
    /** Resolves with { code, signal, stdout, stderr } once the process ended and its output closed. */
    async done() {
      const r = await exited
      await closed
      return { ...r, stdout: state.stdout, stderr: state.stderr }
    },
    kill(signal = 'SIGTERM') {
      child.kill(signal)
    },
  }
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

module.exports = { ROOT, FIXTURES, tempDir, start, run, deadPid }
