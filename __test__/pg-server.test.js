'use strict'
// Locks on a PostgreSQL server seen from what the server does: a session it ends, another role
// looking at a lock it cannot read the record of, and the errors it gives. Processes share only
// the server's URL. A private server for this file; events are ordered by what the processes
// report, never by how long something took.
const pl = require('..')
const { start, tempDir } = require('./helpers/proc')
const { LOST_EXIT_STATUS, held, usePg } = require('./helpers/pg')
const { cli, startCli } = require('./helpers/cli-proc')

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)

/** A heartbeat every 15 minutes: a loss heard within a test is heard from the connection. */
const HOUR_MS = 3600000

/** `node pg-lease.js <mode>` with a lock directory of its own and the server's URL. */
function lease(mode, env = {}) {
  return start('pg-lease.js', {
    dir: tempDir('pg-server'),
    env: { PROCESSLOCK_URL: pg.url, LEASE_MS: String(HOUR_MS), ...env },
    args: [mode],
  })
}

/** The server process of the session holding the lock for the process `pid`. */
async function sessionOf(pid) {
  const [backendPid] = await pg.sql(
    `SELECT backend_pid FROM processlock_holders WHERE (record->>'pid')::int = ${pid} AND backend_pid IS NOT NULL`,
  )
  return backendPid
}

/** The URL of a new role that logs in with a password; with `ownSchema`, a schema of its own. */
async function role(name, ownSchema) {
  await pg.sql(`CREATE ROLE ${name} LOGIN PASSWORD '${name}-secret'`)
  if (ownSchema) await pg.sql(`CREATE SCHEMA ${name} AUTHORIZATION ${name}`)
  const url = new URL(pg.url)
  url.username = name
  url.password = `${name}-secret`
  return url.toString()
}

const SHORT = (extra = {}) => ({ tradeSide: 'SHORT', log: false, ...extra })

async function until(cond, what, timeoutMs = 30000) {
  const t0 = Date.now()
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting until ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function waitingSessions() {
  return (await pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))[0]
}

pgTest(
  "a holder whose session the server ends hears it from the connection, not a heartbeat later (onLost 'signal')",
  async () => {
    const holder = lease('hold', { ON_LOST: 'signal' })
    try {
      const first = await held(holder)
      await pg.sql(`SELECT pg_terminate_backend(${await sessionOf(holder.pid)})`)
      await holder.waitFor('LOST LockLostError LOCK_LOST', 30000)
      await holder.waitFor(/\[PROCESS_LOCK_LOST\] .*terminating connection due to administrator command/, 30000)
      // Only now may a successor try: the lock is free, and its token is newer.
      const info = pl.acquireLock('backend', SHORT({ url: pg.url }))
      expect(BigInt(info.fencingToken)).toBeGreaterThan(BigInt(first.fencingToken))
      expect(pl.releaseLock('backend', SHORT({ url: pg.url }))).toBe(true)
    } finally {
      holder.kill('SIGKILL')
      await holder.done(30000)
    }
  },
)

pgTest("a holder whose session the server ends exits with status 75 at once (onLost 'exit')", async () => {
  const holder = lease('hold')
  try {
    await held(holder)
    await pg.sql(`SELECT pg_terminate_backend(${await sessionOf(holder.pid)})`)
    const r = await holder.done(30000)
    expect(r.code).toBe(LOST_EXIT_STATUS)
    expect(r.stderr).toMatch(/\[PROCESS_LOCK_LOST\] .*terminating connection due to administrator command/)
  } finally {
    holder.kill('SIGKILL')
  }
})

pgTest('another role looks at a lock only once granted to read the holder table and its secret', async () => {
  const holder = lease('hold')
  try {
    const first = await held(holder)
    // A schema of its own, or none: the lock's key is made with a secret this role may not read,
    // and it is told what it lacks, with the server's SQLSTATE.
    for (const url of [await role('alice', true), await role('bob', false)]) {
      let err = null
      try {
        pl.getLockInfo('backend', SHORT({ url }))
      } catch (e) {
        err = e
      }
      expect(err).toMatchObject({ code: 'LOCK_IO', sqlstate: '42501' })
      expect(err.message).toContain('may not read public.processlock_holders_secret')
      const check = await cli(['check', 'backend', '--side', 'SHORT', '--url', url])
      expect(check.code).toBe(3)
      expect(check.stderr).toContain('may not read public.processlock_holders_secret')
    }
    // Allowed to read both, the role reads the record.
    await pg.sql('GRANT SELECT ON processlock_holders, processlock_holders_secret TO bob')
    const bob = new URL(pg.url)
    bob.username = 'bob'
    bob.password = 'bob-secret'
    expect(pl.getLockInfo('backend', SHORT({ url: bob.toString() }))).toMatchObject({
      pid: holder.pid,
      fencingToken: first.fencingToken,
    })
    holder.child.stdin.write('release\n')
    expect((await holder.done(30000)).code).toBe(0)
    expect(pl.getLockInfo('backend', SHORT({ url: bob.toString() }))).toBeNull()
  } finally {
    holder.kill('SIGKILL')
  }
})

pgTest(
  'processlock run --url --wait rides out a server restart, says so as it happens, then runs the command',
  async () => {
    const holder = lease('hold')
    let stopped = false
    let run = null
    try {
      await held(holder)
      run = startCli(
        ['run', 'backend', '--url', pg.url, '--wait', '120000', '--', process.execPath, '-e', 'console.log("RAN")'],
        { dir: tempDir('pg-server-run') },
      )
      await run.waitFor(`[PROCESS_LOCK_WAIT] backend (SHORT) is held by PID ${holder.pid}`, 30000)
      // Once it waits in the server: a wait that cannot reach the server at its start fails at
      // once, as an acquire does.
      await until(async () => (await waitingSessions()) === '1', 'processlock run waits in the server')
      await pg.stop()
      stopped = true
      expect((await holder.done(30000)).code).toBe(LOST_EXIT_STATUS)
      // Said while the server is still away.
      await run.waitFor(
        /\[PROCESS_LOCK_WAIT\] backend \(SHORT\): the server went away \(.+\); still waiting, connecting again\n/,
        30000,
      )
      await pg.start()
      stopped = false
      const r = await run.done(60000)
      expect(r.code).toBe(0)
      expect(r.stdout).toContain('RAN')
      expect(r.stderr).toMatch(
        /\[PROCESS_LOCK_WAIT\] backend \(SHORT\): the server is back after \d+ ms; still waiting\n/,
      )
      expect(r.stderr).not.toContain('[FATAL]')
    } finally {
      if (stopped) await pg.start()
      holder.kill('SIGKILL')
      if (run) run.kill('SIGKILL')
    }
  },
)

pgTest('LOCK_IO from the server: osCode and errno for an OS error, sqlstate for the server’s own', async () => {
  const refused = new URL(pg.url)
  refused.port = String(await closedPort())
  let err = null
  try {
    pl.acquireLock('backend', SHORT({ url: refused.toString() }))
  } catch (e) {
    err = e
  }
  expect(err).toBeInstanceOf(pl.LockIoError)
  expect(err).toMatchObject({ code: 'LOCK_IO', osCode: 'ECONNREFUSED', syscall: 'connect' })
  expect(err.errno).toBe(require('node:os').constants.errno.ECONNREFUSED * -1)
  expect(err.sqlstate).toBeUndefined()

  const wrong = new URL(pg.url)
  wrong.password = 'wrong'
  err = null
  try {
    pl.acquireLock('backend', SHORT({ url: wrong.toString() }))
  } catch (e) {
    err = e
  }
  expect(err).toMatchObject({ code: 'LOCK_IO', sqlstate: '28P01', syscall: 'connect' })
  expect(err.osCode).toBeUndefined()
  expect(err.errno).toBeUndefined()
})

/** A loopback port nothing listens on: bound, then closed. */
function closedPort() {
  const net = require('node:net')
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}
