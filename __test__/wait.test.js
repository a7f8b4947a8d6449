'use strict'
// Waiting acquisition against real processes: the waiter is told when the holder lets
// go (release, exit, SIGKILL) and owns the lock moments later; timeouts and aborts leave nothing
// behind; many waiters take turns without overlaps; an async wait leaves the event loop and
// libuv's pool alone.
const fs = require('node:fs')
const path = require('node:path')
const pl = require('..')
const { start, tempDir, lockDirEntries } = require('./helpers/proc')

const lockFile = (dir) => path.join(dir, 'backend.short.lock')
const SHORT = (dir, extra = {}) => ({ dir, tradeSide: 'SHORT', log: false, ...extra })
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Blocked flock requests of a process ("N: -> FLOCK ADVISORY READ <pid> ..." in /proc/locks). */
function blockedIn(pid) {
  return fs
    .readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .filter((l) => l.includes('->') && l.split(/\s+/).includes(String(pid))).length
}

async function until(cond, what, timeoutMs = 10000) {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting until ${what}`)
    await delay(2)
  }
}

async function holder(dir, env = {}) {
  const p = start('wait-holder.js', { dir, env })
  await p.waitFor('READY')
  return p
}

/** A waiter that is blocked in the kernel on the holder's lock file (not polling). */
async function blockedWaiter(dir, env) {
  const w = start('waiter.js', { dir, env })
  await w.waitFor('WAITING')
  await until(() => blockedIn(w.pid) === 1, `waiter ${w.pid} is blocked in flock`)
  return w
}

async function jsonLine(p, marker = '"ok"') {
  await p.waitFor(marker, 30000)
  return JSON.parse(p.stdout.split('\n').find((l) => l.startsWith('{')))
}

function ns(line, word) {
  return BigInt(line.match(new RegExp(`${word} (\\d+)`))[1])
}

function temps(dir) {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))
}

function stats(ms) {
  const s = [...ms].sort((a, b) => a - b)
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
  return { median: at(0.5), p95: at(0.95), max: s[s.length - 1] }
}

/** Holder's last moment -> waiter's ownership, in ms. */
async function handover(api, how) {
  const dir = tempDir(`wait-${api}-${how}`)
  const h = await holder(dir)
  const w = await blockedWaiter(dir, { API: api })
  let gone
  if (how === 'release') {
    h.child.stdin.write('release\n')
    await h.waitFor('RELEASED')
    gone = ns(h.stdout, 'RELEASED')
  } else if (how === 'exit') {
    h.child.stdin.write('exit\n')
    await h.waitFor('EXITING')
    gone = ns(h.stdout, 'EXITING')
  } else {
    gone = process.hrtime.bigint()
    h.kill('SIGKILL')
  }
  const r = await jsonLine(w)
  expect(r).toMatchObject({ ok: true, pid: w.pid })
  expect((await w.done()).code).toBe(0)
  h.child.stdin.end()
  await h.done()
  expect(lockDirEntries(dir)).toEqual([])
  return Number(BigInt(r.t) - gone) / 1e6
}

describe('handover: the waiter owns the lock as soon as the holder lets go', () => {
  const RUNS = 5
  test.each([
    ['sync', 'release'],
    ['sync', 'exit'],
    ['sync', 'SIGKILL'],
    ['async', 'release'],
    ['async', 'exit'],
    ['async', 'SIGKILL'],
  ])('%s wait, holder ends by %s', async (api, how) => {
    const ms = []
    for (let i = 0; i < RUNS; i++) ms.push(await handover(api, how))
    const s = stats(ms)
    console.log(
      `handover (${api === 'sync' ? 'acquireLock waitMs' : 'acquireLockAsync'}) after ${how}: ` +
        `median ${s.median.toFixed(2)} ms, max ${s.max.toFixed(2)} ms over ${RUNS} runs [${ms.map((m) => m.toFixed(2)).join(', ')}]`,
    )
    for (const m of ms) expect(m).toBeGreaterThan(0)
    // Told, not found by the once-a-second re-check (the handover target is < 5 ms; the
    // benchmark measures it on a quiet machine).
    expect(s.median).toBeLessThan(100)
    expect(s.max).toBeLessThan(900)
  })
})

describe('giving up', () => {
  test.each([['sync'], ['async']])('%s: the timeout gives LOCK_CONFLICT with waitedMs >= the timeout', async (api) => {
    const dir = tempDir(`wait-timeout-${api}`)
    const h = await holder(dir)
    const t0 = Date.now()
    const w = start('waiter.js', { dir, env: { API: api, WAIT_MS: '300' } })
    const r = await jsonLine(w)
    expect(r).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', isError: true })
    expect(r.waitedMs).toBeGreaterThanOrEqual(300)
    expect(r.waitedMs).toBeLessThan(2000)
    expect(r.message).toMatch(new RegExp(`already running \\(PID: ${h.pid}\\); gave up after waiting \\d+ ms`))
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300)
    await w.done()
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    h.kill('SIGKILL')
    await h.done()
  })

  test('timeoutMs 0 is one attempt; waitMs 0 too', async () => {
    const dir = tempDir('wait-zero')
    const h = await holder(dir)
    await expect(pl.acquireLockAsync('backend', SHORT(dir, { timeoutMs: 0 }))).rejects.toMatchObject({
      code: 'LOCK_CONFLICT',
      holder: { pid: h.pid },
    })
    expect(() => pl.acquireLock('backend', SHORT(dir, { waitMs: 0 }))).toThrow(pl.LockConflictError)
    h.kill('SIGKILL')
    await h.done()
  })

  test('abort during the wait: LOCK_ABORTED at once, no waiter left, no temp file, the process ends by itself', async () => {
    const dir = tempDir('wait-abort')
    const h = await holder(dir)
    const w = await blockedWaiter(dir, { API: 'async', WAIT_MS: 'none', ABORT_ON_STDIN: '1' })
    const asked = Date.now()
    w.child.stdin.write('abort\n')
    const r = await jsonLine(w)
    const answered = Date.now()
    expect(r).toMatchObject({ ok: false, code: 'LOCK_ABORTED', isError: true, cause: 'asked to stop' })
    expect(answered - asked).toBeLessThan(1000)
    // The promise settles only after the waiting thread left the kernel.
    expect(blockedIn(w.pid)).toBe(0)
    const d = await w.done()
    expect(d.code).toBe(0)
    expect(Date.now() - answered).toBeLessThan(3000)
    expect(temps(dir)).toEqual([])
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    // The holder never noticed anything.
    expect(JSON.parse(fs.readFileSync(lockFile(dir), 'utf8')).pid).toBe(h.pid)
    h.kill('SIGKILL')
    await h.done()
  })

  test('an already aborted signal rejects at once and touches nothing', async () => {
    const dir = path.join(tempDir('wait-pre-aborted'), 'locks')
    const reason = new Error('no')
    const p = pl.acquireLockAsync('backend', SHORT(dir, { signal: AbortSignal.abort(reason) }))
    await expect(p).rejects.toBeInstanceOf(pl.LockAbortedError)
    await expect(p).rejects.toMatchObject({ code: 'LOCK_ABORTED', cause: reason })
    expect(fs.existsSync(dir)).toBe(false)
  })

  test('bad options reject, they do not throw', async () => {
    const p = pl.acquireLockAsync('backend', { timeoutMs: -1 })
    await expect(p).rejects.toMatchObject({ code: 'LOCK_INVALID_OPTION' })
    await expect(pl.acquireLockAsync('backend', { signal: {} })).rejects.toMatchObject({ code: 'LOCK_INVALID_OPTION' })
    await expect(pl.acquireLockAsync('bad name')).rejects.toMatchObject({ code: 'LOCK_INVALID_NAME' })
  })
})

describe('in one process', () => {
  test('a free lock resolves at once; again while held: the same info (idempotent)', async () => {
    const dir = tempDir('wait-free')
    const lines = []
    const info = await pl.acquireLockAsync('backend', SHORT(dir, { log: (l) => lines.push(l) }))
    expect(info).toMatchObject({ pid: process.pid, tradeSide: 'SHORT' })
    expect(await pl.acquireLockAsync('backend', SHORT(dir))).toEqual(info)
    expect(pl.acquireLock('backend', SHORT(dir, { waitMs: 100 }))).toEqual(info)
    expect(lines.filter((l) => l.includes('ACQUIRED'))).toHaveLength(1)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('two waits of one process for one lock both resolve when it is taken, with one lock file', async () => {
    const dir = tempDir('wait-twice')
    const h = await holder(dir)
    const a = pl.acquireLockAsync('backend', SHORT(dir))
    const b = pl.acquireLockAsync('backend', SHORT(dir))
    await until(() => blockedIn(process.pid) === 2, 'both waits are blocked')
    h.child.stdin.write('release\n')
    const [ia, ib] = await Promise.all([a, b])
    expect(ia).toEqual(ib)
    expect(ia.pid).toBe(process.pid)
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    h.kill('SIGKILL')
    await h.done()
  })

  test('a sync acquire while an async wait is pending: the wait finds the lock ours and resolves', async () => {
    const dir = tempDir('wait-mixed')
    const h = await holder(dir)
    const pending = pl.acquireLockAsync('backend', SHORT(dir, { timeoutMs: 20000 }))
    await until(() => blockedIn(process.pid) === 1, 'the async wait is blocked')
    h.kill('SIGKILL')
    await h.done()
    // Taken over by whichever comes first; the other one must not wait for ourselves.
    const t0 = Date.now()
    const info = pl.acquireLock('backend', SHORT(dir, { waitMs: 5000 }))
    expect(await pending).toEqual(info)
    expect(Date.now() - t0).toBeLessThan(900)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    expect(lockDirEntries(dir)).toEqual([])
  })
})

describe('many waiters', () => {
  const LOOPERS = 6
  const APIS = ['sync', 'async', 'mixed', 'sync', 'async', 'mixed']
  const RUN_MS = 3000

  test(`${LOOPERS} processes looping wait/hold/release for ${RUN_MS} ms: one owner at a time, everyone wins`, async () => {
    const dir = tempDir('wait-many')
    const procs = APIS.map((api) => start('wait-looper.js', { dir, env: { API: api, HOLD_MS: '5' } }))
    await Promise.all(procs.map((p) => p.waitFor('READY')))
    for (const p of procs) p.child.stdin.write('go\n')
    await delay(RUN_MS)
    for (const p of procs) p.child.stdin.write('stop\n')
    const results = await Promise.all(procs.map((p) => p.done()))
    for (const r of results) expect(r.code).toBe(0)

    const owned = []
    for (const r of results) {
      for (const line of r.stdout.split('\n')) {
        if (line.startsWith('{')) {
          const o = JSON.parse(line)
          owned.push({ pid: o.pid, start: BigInt(o.start), end: BigInt(o.end), waited: Number(BigInt(o.waited)) / 1e6 })
        }
      }
    }
    owned.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
    const overlaps = []
    for (let i = 1; i < owned.length; i++)
      if (owned[i].start < owned[i - 1].end) overlaps.push([owned[i - 1], owned[i]])
    expect(overlaps).toEqual([])

    const wins = procs.map((p) => owned.filter((o) => o.pid === p.pid).length)
    const gaps = []
    for (let i = 1; i < owned.length; i++)
      if (owned[i].pid !== owned[i - 1].pid) gaps.push(Number(owned[i].start - owned[i - 1].end) / 1e6)
    const g = stats(gaps)
    const w = stats(owned.map((o) => o.waited))
    console.log(
      `${owned.length} ownerships in ${RUN_MS} ms; wins per process (${APIS.join(', ')}): ${wins.join(', ')}; ` +
        `handover gap between different owners: median ${g.median.toFixed(3)} ms, p95 ${g.p95.toFixed(3)} ms; ` +
        `wait per acquisition: median ${w.median.toFixed(1)} ms, max ${w.max.toFixed(1)} ms`,
    )
    // Everyone got the lock, and more than once: nobody is starved while the others loop.
    for (const n of wins) expect(n).toBeGreaterThanOrEqual(3)
    expect(lockDirEntries(dir)).toEqual([])
  })
})

describe('the event loop during async waits', () => {
  test('4 pending waits: a 10 ms interval stays on time, fs calls complete at once, abort ends the process', async () => {
    const dir = tempDir('wait-loop')
    const types = 'alpha,beta,gamma,delta'
    const h = await holder(dir, { TYPES: types })
    const p = start('wait-responsive.js', { dir, env: { UV_THREADPOOL_SIZE: '4' } })
    const r = await jsonLine(p, '"outcomes"')
    console.log(
      `4 async waits blocked: interval max lateness ${r.maxLateMs.toFixed(2)} ms over ${r.ticks} ticks; fs read+stat max ${r.maxReadMs.toFixed(2)} ms`,
    )
    // Four threads blocked in flock, none of them libuv's: its 4-thread pool still serves fs.
    expect(r.blocked).toBe(4)
    expect(r.maxReadMs).toBeLessThan(250)
    expect(r.maxLateMs).toBeLessThan(250)
    expect(r.outcomes).toEqual(['LOCK_ABORTED', 'LOCK_ABORTED', 'LOCK_ABORTED', 'LOCK_ABORTED'])
    const d = await p.done()
    expect(d.code).toBe(0)
    expect(temps(dir)).toEqual([])
    h.kill('SIGKILL')
    await h.done()
  })
})
