'use strict'
// Locks on a PostgreSQL server through the same API, against a private server started for this
// file and real processes that share nothing but its URL (each has a lock directory of its own).
// What every backend promises (conflict, takeover, release, waits, loss notice, info and list)
// is the lock contract's (contract/postgres.test.js); here, what only a server does.
const net = require('node:net')
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

const SHORT = (extra = {}) => ({ url: pg.url, tradeSide: 'SHORT', log: false, ...extra })

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
  'processlock check --url shows the fencing token and the client address; clear --force says which session it ended',
  async () => {
    // What every backend does with check and clear is in the lock contract (contract/); here,
    // what only a server has to show.
    const dir = tempDir('pg-cli')
    const a = holder('busy', { LEASE_MS: '2000' })
    const info = await held(a)
    const listed = await cli(['check', '--url', pg.url, '--json'], { dir })
    expect(listed.code).toBe(0)
    expect(JSON.parse(listed.stdout)).toEqual([
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
    const forced = await cli(['clear', '--force', '--url', pg.url], { dir })
    expect(forced.code).toBe(0)
    expect(forced.stdout).toMatch(/ended session +backend\.short\.lock \(server process \d+; PID \d+ on /)
    expect((await a.done(60000)).code).toBe(LOST_EXIT_STATUS)
  },
)
