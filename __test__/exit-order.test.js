'use strict'
// The lock is given up only after every 'exit' hook of the app has run. Apps take the lock first
// thing and add their shutdown hooks later, and Node calls 'exit' listeners in the order they
// were added: a release in a listener of ours would hand the lock to a waiter while the old
// process still writes. A real holder whose own 'exit' hook keeps writing timestamps for a few
// hundred ms ends in each way a process (or a worker thread) can end, while a real waiter
// (acquireLockAsync) records when it got the lock; both instants are read from CLOCK_MONOTONIC
// (process.hrtime), which every process of the machine shares. The waiter's instant must come
// after the holder's last write, on lock files and on a PostgreSQL server alike.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { FIXTURES, start, tempDir, watch } = require('./helpers/proc')
const { usePg } = require('./helpers/pg')

const pg = usePg()

const canUnshare =
  process.platform === 'linux' &&
  process.getuid() === 0 &&
  spawnSync('unshare', ['--pid', '--fork', '--kill-child', 'true']).status === 0

/** Resolves once process `pid` runs a thread named `name` (as the kernel keeps it: 15 bytes). */
async function threadNamed(pid, name, timeoutMs = 20000) {
  const t0 = Date.now()
  for (;;) {
    let names = []
    try {
      names = fs.readdirSync(`/proc/${pid}/task`).map((t) => {
        try {
          return fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim()
        } catch {
          return ''
        }
      })
    } catch {
      throw new Error(`process ${pid} ended before it ran a thread named ${name}`)
    }
    if (names.includes(name.slice(0, 15))) return
    if (Date.now() - t0 > timeoutMs) throw new Error(`process ${pid} has no thread named ${name}: ${names}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** The only child of `pid` (the app that `unshare --fork` started). */
function childOf(pid) {
  const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
  expect(children).toHaveLength(1)
  return Number(children[0])
}

/** What the hook wrote: whether it held the lock when it started, and its last write's instant. */
function hookWrites(file) {
  const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n') : []
  const held = lines.filter((l) => l.startsWith('HELD ')).map((l) => l.slice(5))
  const times = lines.filter((l) => /^(W|LAST) /.test(l)).map((l) => BigInt(l.split(' ')[1]))
  // Written one after the other by one thread: the last line is the last write.
  return { held, writes: times.length, last: times.length ? times[times.length - 1] : 0n }
}

/**
 * Starts a holder that ends as `how` says once a waiter waits for the lock (on `url`, else in a
 * lock directory); returns what both did.
 */
async function race(how, { url = '', pid1 = false } = {}) {
  const dir = tempDir('exit-order')
  const hookFile = path.join(tempDir('exit-order-hook'), 'hook.log')
  const env = { HOOK_FILE: hookFile, PROCESSLOCK_URL: url }
  const holder = pid1
    ? watch(
        'unshare',
        ['--pid', '--fork', '--kill-child', process.execPath, path.join(FIXTURES, 'exit-hook.js'), how],
        {
          env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', ...env },
          stdin: 'pipe',
        },
      )
    : start('exit-hook.js', { dir, env, args: [how] })
  let waiter = null
  try {
    await holder.waitFor('READY', 30000)
    waiter = start('exit-waiter.js', { dir, env: { PROCESSLOCK_URL: url } })
    await waiter.waitFor('WAITING')
    // Its wait runs on a thread of its own: the lock is busy, and it waits for it.
    await threadNamed(waiter.pid, 'processlock-wait')
    if (how === 'signal') process.kill(pid1 ? childOf(holder.pid) : holder.pid, 'SIGTERM')
    else holder.child.stdin.write('end\n')
    const w = await waiter.done(60000)
    expect(w.stdout).toMatch(/ACQUIRED \d+/)
    const acquired = BigInt(w.stdout.match(/ACQUIRED (\d+)/)[1])
    if (how.startsWith('worker-')) {
      await holder.waitFor('WORKER_ENDED')
      holder.child.stdin.end()
    }
    const h = await holder.done(60000)
    return { h, pid: holder.pid, acquired, hook: hookWrites(hookFile), dir }
  } finally {
    holder.kill('SIGKILL')
    if (waiter) waiter.kill('SIGKILL')
  }
}

const RELEASED = (pid) => `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${pid} }`

/** The lock was given up after the hook's last write, and said so after the hook was done. */
function releasedAfterTheHook({ h, acquired, hook }, { pid, hookRan = true } = {}) {
  expect(hook.writes).toBeGreaterThan(10)
  // The waiter's acquire instant minus the instant of the hook's last write.
  const afterLastWriteMs = Number(acquired - hook.last) / 1e6
  expect(afterLastWriteMs).toBeGreaterThan(0)
  if (hookRan) {
    // Still the holder inside the app's own exit hook.
    expect(hook.held).toEqual(['true'])
    const lines = h.stdout.split('\n')
    const done = lines.indexOf('HOOK_DONE')
    const released = lines.findIndex((l) => l.startsWith('[PROCESS_LOCK_RELEASED]'))
    expect(done).toBeGreaterThanOrEqual(0)
    expect(released).toBeGreaterThan(done)
    expect(lines[released]).toBe(RELEASED(pid))
  }
}

const ENDINGS = [
  ['process.exit()', 'exit', { code: 0 }],
  ['the natural end', 'natural', { code: 0 }],
  ['an uncaught exception', 'throw', { code: 1 }],
  ['an unhandled rejection', 'reject', { code: 1 }],
  ["a worker thread's natural end", 'worker-natural', { code: 0 }],
  ["a worker thread's process.exit()", 'worker-exit', { code: 0 }],
]

describe.each([
  // The PostgreSQL tests do nothing where PostgreSQL is not installed (startPg says so).
  ['lock files', test, () => ''],
  ['a PostgreSQL server', pg.test, () => pg.url],
])("the app's 'exit' hooks run before the lock is given up: %s", (backend, it, url) => {
  const files = backend === 'lock files'

  for (const [name, how, status] of ENDINGS) {
    it(name, async () => {
      const r = await race(how, { url: url() })
      expect(r.h).toMatchObject({ ...status, signal: null })
      releasedAfterTheHook(r, { pid: r.pid })
      if (files) expect(fs.existsSync(path.join(r.dir, 'backend.short.lock'))).toBe(false)
    }, 120000)
  }

  it('worker.terminate(): released after the last write of the terminated worker', async () => {
    const r = await race('worker-terminate', { url: url() })
    expect(r.h).toMatchObject({ code: 0, signal: null })
    releasedAfterTheHook(r, { hookRan: false })
  }, 120000)

  const name = 'PID 1 of a PID namespace, SIGTERM without an app listener: exit hooks first, then the release'
  if (!canUnshare) test.skip(`${name} [skipped: needs root and unshare --pid]`, () => {})
  else
    it(name, async () => {
      const r = await race('signal', { url: url(), pid1: true })
      expect(r.h).toMatchObject({ code: 128 + 15 })
      releasedAfterTheHook(r, { pid: 1 })
    }, 120000)
})

test('SIGTERM without an app listener: no exit hook runs, the lock is released, the signal ends the process', async () => {
  const r = await race('signal')
  expect(r.h.signal).toBe('SIGTERM')
  // Node runs no 'exit' listener on a signal nobody listens to: nothing ran that could follow.
  expect(r.hook.writes).toBe(0)
  expect(r.h.stdout).not.toContain('HOOK_DONE')
  expect(r.h.stdout).toContain(RELEASED(r.pid))
  expect(fs.existsSync(path.join(r.dir, 'backend.short.lock'))).toBe(false)
}, 120000)
