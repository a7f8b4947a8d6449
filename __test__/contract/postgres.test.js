'use strict'
// The lock contract (./suite.js) against a private PostgreSQL server started for this file:
// each test's locks in a database of its own (advisory locks and the record table are per
// database), so no test sees another's records.
const { tempDir } = require('../helpers/proc')
const { usePg } = require('../helpers/pg')
const { contract } = require('./suite')

const pg = usePg()
let databases = 0

/** Server processes of the sessions with an advisory lock in database `db`, granted or waiting. */
const advisory = (db, granted) =>
  pg.sql(
    `SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND ${granted ? '' : 'NOT '}l.granted AND d.datname = '${db}'`,
  )

contract({
  name: 'PostgreSQL',
  backend: 'postgres',
  test: pg.test,
  async place() {
    const db = `contract_${++databases}`
    await pg.sql(`CREATE DATABASE ${db}`)
    const url = new URL(pg.url)
    url.pathname = `/${db}`
    // A lock directory is never used with a URL; one is given so that a lock taken in a
    // directory by mistake lands in it, not in the checkout's default one.
    const dir = tempDir('contract-pg')
    return {
      db,
      options: { url: url.href, dir },
      env: { PROCESSLOCK_URL: url.href, PROCESSLOCK_DIR: dir },
      cli: ['--url', url.href],
    }
  },
  async loseHold(at) {
    const sessions = await advisory(at.db, true)
    if (sessions.length === 0) throw new Error(`no session holds a lock in ${at.db}`)
    for (const session of sessions) expect(await pg.sql(`SELECT pg_terminate_backend(${session})`)).toEqual(['t'])
  },
  // A waiting session is not tied to the client's PID here: one waiter at a time is enough.
  waiting: async (at) => (await advisory(at.db, false)).length,
  capabilities: {
    fencingToken: true,
    onLostFunction: true,
    // onLost 'exit', the default for server locks.
    lossEndsProcess: true,
    // A server session cannot be handed on: processlock holds the lock and the app adopts it.
    runHolds: 'processlock',
    // The holder may run on any host: how it is asked to stop is the backend's business.
    replaceSignals: false,
  },
})
