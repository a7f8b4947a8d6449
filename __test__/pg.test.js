'use strict'
// Locks on a PostgreSQL server through the same API, against a private server started for this
// file and real processes that share nothing but its URL (each has a lock directory of its own).
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const pl = require('..')
const { start, tempDir } = require('./helpers/proc')
const { LOST_EXIT_STATUS, held, usePg } = require('./helpers/pg')
const { cli } = require('./helpers/cli-proc')

const pg = usePg()
const pgTest = pg.test

function holder(mode, env = {}) {
  return start('pg-holder.js', { dir: tempDir('pg'), env: { PROCESSLOCK_URL: pg.url, ...env }, args: [mode] })
}

/** The server processes of the sessions that hold an advisory lock. */
async function advisoryHolders() {
  return pg.sql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'")
}

async function waitingSessions() {
  return (await pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))[0]
}

async function until(cond, what, timeoutMs = 30000) {
  const t0 = Date.now()
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting until ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const SHORT = (extra = {}) => ({ url: pg.url, tradeSide: 'SHORT', log: false, ...extra })

pgTest('two processes with different lock directories conflict through the server', async () => {
  const a = holder('hold')
  const info = await held(a)
  expect(info).toMatchObject({ pid: a.pid, tradeSide: 'SHORT', backend: 'postgres' })
  expect(info.fencingToken).toMatch(/^[0-9]+$/)
  const b = await start('try-acquire.js', { dir: tempDir('pg-other'), env: { PROCESSLOCK_URL: pg.url } }).done(30000)
  const out = JSON.parse(b.stdout.trim().split('\n').pop())
  expect(out).toMatchObject({ ok: false, isError: true, code: 'LOCK_CONFLICT' })
  expect(out.holder).toMatchObject({ pid: a.pid, fencingToken: info.fencingToken, backend: 'postgres' })
  // The same API in this process sees the holder too, and the listing names it.
  expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: a.pid, fencingToken: info.fencingToken })
  const listed = pl.listLocks({ url: pg.url }).find((l) => l.processType === 'backend' && l.tradeSide === 'SHORT')
  expect(listed).toMatchObject({ state: 'held', isOwn: false, record: { pid: a.pid } })
  a.child.stdin.write('release\n')
  expect((await a.done(30000)).code).toBe(0)
  expect(a.stdout).toContain('RELEASED')
  expect(pl.getLockInfo('backend', SHORT())).toBeNull()
})

pgTest('a holder killed with SIGKILL hands the lock over, with a larger fencing token', async () => {
  const a = holder('hold')
  const first = await held(a)
  a.kill('SIGKILL')
  await a.done()
  const info = await pl.acquireLockAsync('backend', SHORT({ timeoutMs: 30000 }))
  expect(info).toMatchObject({ pid: process.pid, backend: 'postgres' })
  expect(BigInt(info.fencingToken)).toBeGreaterThan(BigInt(first.fencingToken))
  expect(pl.isLockHeld('backend', SHORT())).toBe(true)
  expect(pl.releaseLock('backend', SHORT())).toBe(true)
  expect(pl.isLockHeld('backend', SHORT())).toBe(false)
})

pgTest("onLost 'exit' ends a process stuck in a synchronous loop when its session is ended", async () => {
  const a = holder('busy', { LEASE_MS: '2000' })
  await held(a)
  const [backendPid] = await advisoryHolders()
  await pg.sql(`SELECT pg_terminate_backend(${backendPid})`)
  const r = await a.done(60000)
  expect(r.code).toBe(LOST_EXIT_STATUS)
  expect(r.stdout).not.toContain('STILL RUNNING')
  expect(r.stderr).toMatch(
    /^\[PROCESS_LOCK_LOST\] \{ processType: 'backend', tradeSide: 'SHORT', pid: \d+, reason: '.+' \}$/m,
  )
})

pgTest("onLost 'exit' ends a busy process when the server stops", async () => {
  const a = holder('busy', { LEASE_MS: '2000' })
  await held(a)
  await pg.stop()
  try {
    const r = await a.done(60000)
    expect(r.code).toBe(LOST_EXIT_STATUS)
    expect(r.stdout).not.toContain('STILL RUNNING')
    expect(r.stderr).toContain('[PROCESS_LOCK_LOST]')
  } finally {
    await pg.start()
  }
})

pgTest("onLost 'signal': lockSignal aborts with LockLostError, and the loss is logged", async () => {
  const a = holder('signal', { LEASE_MS: '2000' })
  await held(a)
  const [backendPid] = await advisoryHolders()
  await pg.sql(`SELECT pg_terminate_backend(${backendPid})`)
  await a.waitFor('ABORTED', 30000)
  expect(a.stdout).toContain('ABORTED LockLostError LOCK_LOST')
  expect(a.stderr).toContain('[PROCESS_LOCK_LOST]')
  a.kill()
  await a.done()
})

pgTest('forceRemoveLock ends the holder session; an onLost function hears of it', async () => {
  const a = holder('signal', { LEASE_MS: '2000' })
  await held(a)
  expect(pl.forceRemoveLock('backend', SHORT())).toBe(true)
  await a.waitFor('ABORTED LockLostError LOCK_LOST', 30000)
  a.kill()
  await a.done()
  // A function as onLost, in this process.
  const losses = []
  pl.acquireLock('backend', SHORT({ leaseMs: 2000, onLost: (e) => losses.push(e) }))
  const signal = pl.lockSignal('backend', SHORT())
  expect(signal.aborted).toBe(false)
  const [backendPid] = await advisoryHolders()
  await pg.sql(`SELECT pg_terminate_backend(${backendPid})`)
  await until(() => losses.length === 1, 'the loss was reported')
  expect(losses[0]).toBeInstanceOf(pl.LockLostError)
  expect(losses[0].code).toBe('LOCK_LOST')
  expect(signal.aborted).toBe(true)
  expect(signal.reason).toBe(losses[0])
  expect(pl.isLockHeld('backend', SHORT())).toBe(false)
  expect(pl.releaseLock('backend', SHORT())).toBe(false)
})

pgTest('a wait blocked in the server is woken by the release, and an abort ends it', async () => {
  const a = holder('hold')
  await held(a)
  const w = holder('wait')
  await w.waitFor('WAITING')
  await until(async () => (await waitingSessions()) === '1', 'the waiter waits in the server')
  a.child.stdin.write('release\n')
  const got = await w.waitFor(/GOT (.*)\n/, 30000)
  expect(JSON.parse(got[1])).toMatchObject({ pid: w.pid, backend: 'postgres' })
  await w.done(30000)
  expect((await a.done(30000)).code).toBe(0)

  const b = holder('hold')
  await held(b)
  const aborted = holder('wait', { ABORT_ON_STDIN: '1' })
  await aborted.waitFor('WAITING')
  await until(async () => (await waitingSessions()) === '1', 'the waiter waits in the server')
  aborted.child.stdin.write('stop\n')
  await aborted.waitFor('FAILED LOCK_ABORTED', 30000)
  await aborted.done()
  expect(await waitingSessions()).toBe('0')
  b.kill()
  await b.done()
})

pgTest('a bad URL is LOCK_INVALID_OPTION; a server that is not there is LOCK_IO', async () => {
  for (const url of ['http://example.invalid/', 'postgres://127.0.0.1:5432/db?sslmode=bogus', 'not a url at all']) {
    let err
    try {
      pl.acquireLock('backend', SHORT({ url }))
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(pl.LockInvalidOptionError)
    expect(err.message).not.toContain('secret')
  }
  expect(() => pl.acquireLock('backend', SHORT({ leaseMs: 10 }))).toThrow(pl.LockInvalidOptionError)
  // A port nothing listens on: bound, then closed.
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port
      s.close(() => resolve(p))
    })
  })
  let err
  try {
    pl.acquireLock('backend', SHORT({ url: `postgres://postgres:secret@127.0.0.1:${port}/postgres` }))
  } catch (e) {
    err = e
  }
  expect(err).toBeInstanceOf(pl.LockIoError)
  expect(err.syscall).toBe('connect')
  expect(err.message).not.toContain('secret')
})

pgTest(
  'processlock check/clear --url list holders, clear what no session holds, and end sessions with --force',
  async () => {
    const dir = tempDir('pg-cli')
    const a = holder('hold')
    const info = await held(a)
    const listed = await cli(['check', '--url', pg.url, '--json'], { dir })
    expect(listed.code).toBe(0)
    const rows = JSON.parse(listed.stdout)
    expect(rows).toEqual([
      expect.objectContaining({
        lock: 'backend.short.lock',
        state: 'held',
        pid: a.pid,
        fencingToken: info.fencingToken,
        clientAddr: '127.0.0.1',
      }),
    ])
    // The environment variable works like the option; the table names the same holder.
    const table = await cli(['check'], { dir, env: { PROCESSLOCK_URL: pg.url } })
    expect(table.stdout).toMatch(new RegExp(`backend\\.short\\.lock +held +${a.pid} `))
    expect((await cli(['check', 'backend', '--url', pg.url], { dir })).code).toBe(0)
    // A holder that dies leaves its record; clear removes it and keeps held locks.
    a.kill('SIGKILL')
    await a.done()
    await until(async () => (await advisoryHolders()).length === 0, 'the server freed the lock')
    expect(JSON.parse((await cli(['check', '--url', pg.url, '--json'], { dir })).stdout)).toEqual([
      expect.objectContaining({ lock: 'backend.short.lock', state: 'stale', pid: a.pid }),
    ])
    expect((await cli(['check', 'backend', '--url', pg.url], { dir })).code).toBe(1)
    const b = holder('busy', { LEASE_MS: '2000', LOCK_TYPE: 'backend' })
    await held(b)
    const cleared = await cli(['clear', '--url', pg.url], { dir })
    expect(cleared.code).toBe(0)
    expect(cleared.stdout).toContain('kept            backend.short.lock')
    // --force ends the holder's session: it loses the lock and (onLost 'exit') ends itself.
    const forced = await cli(['clear', '--force', '--url', pg.url], { dir })
    expect(forced.code).toBe(0)
    expect(forced.stdout).toMatch(/ended session +backend\.short\.lock \(server process \d+; PID \d+ on /)
    expect((await b.done(60000)).code).toBe(LOST_EXIT_STATUS)
    expect(JSON.parse((await cli(['check', '--url', pg.url, '--json'], { dir })).stdout)).toEqual([])
  },
)

test('lockSignal of a lock file aborts when the file is removed', async () => {
  const dir = tempDir('pg-file-signal')
  const opts = { dir, tradeSide: 'SHORT', log: false }
  const info = pl.acquireLock('backend', opts)
  expect(info.backend).toBe('file')
  const signal = pl.lockSignal('backend', opts)
  expect(signal.aborted).toBe(false)
  fs.unlinkSync(path.join(dir, 'backend.short.lock'))
  await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }))
  expect(signal.reason).toBeInstanceOf(pl.LockLostError)
  expect(signal.reason.code).toBe('LOCK_LOST')
  expect(pl.isLockHeld('backend', opts)).toBe(false)
  // Not held: the signal is aborted from the start.
  expect(pl.lockSignal('backend', opts).aborted).toBe(true)
})
