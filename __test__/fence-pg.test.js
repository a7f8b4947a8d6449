'use strict'
// Fenced writes on PostgreSQL: a holder whose server lock was lost (its session ended) keeps
// running with onLost 'signal', and the database refuses its late writes once the newer holder
// claimed the lock there with its larger fencing token. Real processes, a private server, the
// node-postgres Client and Pool the service already has.
const { Client } = require('pg')
const pl = require('..')
const { start, tempDir } = require('./helpers/proc')
const { usePg } = require('./helpers/pg')

const pg = usePg()
const pgTest = pg.test

let databases = 0
/** A database of its own for a test, with the table the service writes: its URL. */
async function database() {
  const name = `fence_${process.pid}_${++databases}`
  await pg.sql(`CREATE DATABASE ${name}`)
  const url = new URL(pg.url)
  url.pathname = `/${name}`
  const c = new Client(url.href)
  await c.connect()
  await c.query('CREATE TABLE orders (id serial PRIMARY KEY, note text NOT NULL)')
  await c.end()
  return url.href
}

async function withClient(url, fn) {
  const c = new Client(url)
  await c.connect()
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

const notes = (url) =>
  withClient(url, async (c) => (await c.query('SELECT note FROM orders ORDER BY id')).rows.map((r) => r.note))

function service(db, { driver = 'pg', server = true, lockDir = tempDir('fence-pg'), env = {} } = {}) {
  const p = start('fence-holder.js', {
    dir: lockDir,
    env: { FENCE_DB: `${driver}:${db}`, PROCESSLOCK_URL: server ? pg.url : '', ...env },
  })
  let n = 0
  return {
    p,
    lockDir,
    async ready() {
      const m = await p.waitFor(/^(HELD (.*)\n)?READY$/m, 30000)
      return m[2] ? JSON.parse(m[2]) : null
    },
    async ask(cmd) {
      n++
      p.child.stdin.write(`${cmd} ${n}\n`)
      const m = await p.waitFor(new RegExp(`^(\\w+) ${n}(?: (.*))?$`, 'm'), 30000)
      return { reply: m[1], rest: m[2] ?? '' }
    },
    async stop() {
      p.kill('SIGKILL')
      await p.done()
    },
  }
}

const started = []
afterEach(async () => {
  for (const s of started.splice(0)) await s.stop()
})
const track = (s) => {
  started.push(s)
  return s
}

const FENCED_LATE =
  /^LockFencedError LOCK_FENCED LOCK_FENCED: backend:SHORT: this session claimed backend:SHORT=\d+, but generation \d+ was claimed since/

describe.each([
  ['Client', 'pg'],
  ['Pool', 'pg-pool'],
])('node-postgres %s', (_, driver) => {
  pgTest(
    'a holder whose session was ended has its late writes refused once the next holder claimed with its larger token',
    async () => {
      const db = await database()
      const old = track(service(db, { driver }))
      const info = await old.ready()
      expect(await old.ask('claim')).toEqual({ reply: 'CLAIMED', rest: info.fencingToken })
      // The app's own statements, unchanged, go through while it is the newest holder.
      expect((await old.ask('write')).reply).toBe('WROTE')
      expect((await old.ask('update')).reply).toBe('WROTE')

      // The operator ends its session (the lock is free at once); it keeps running.
      expect(pl.forceRemoveLock('backend', { url: pg.url, tradeSide: 'SHORT', log: false })).toBe(true)
      const next = track(service(db, { driver }))
      const nextInfo = await next.ready()
      expect(BigInt(nextInfo.fencingToken)).toBeGreaterThan(BigInt(info.fencingToken))
      expect(await next.ask('claim')).toEqual({ reply: 'CLAIMED', rest: nextInfo.fencingToken })

      for (const op of ['write', 'update', 'delete']) {
        const late = await old.ask(op)
        expect([op, late.reply]).toEqual([op, 'REFUSED'])
        expect(late.rest).toMatch(FENCED_LATE)
      }
      expect((await next.ask('write')).reply).toBe('WROTE')
      expect(await notes(db)).toEqual(['updated 3', `order 2 of ${next.p.pid}`])
    },
    90000,
  )
})

pgTest(
  'a connection that never claimed is refused with LOCK_FENCED, and reads are not guarded',
  async () => {
    const db = await database()
    const holder = track(service(db))
    await holder.ready()
    await holder.ask('claim')
    await withClient(db, async (c) => {
      await expect(c.query("INSERT INTO orders (note) VALUES ('bare')")).rejects.toMatchObject({
        code: 'P0001',
        message: 'LOCK_FENCED: backend:SHORT: this session has not claimed the lock, so it may not write orders',
      })
      await expect(c.query('TRUNCATE orders')).rejects.toThrow(/^LOCK_FENCED: /)
      // A session setting of its own making names no generation that was claimed.
      await c.query("SELECT set_config('processlock.token', 'backend:SHORT=1', false)")
      await expect(c.query("INSERT INTO orders (note) VALUES ('forged')")).rejects.toThrow(/^LOCK_FENCED: /)
      expect((await c.query('SELECT count(*)::int AS n FROM orders')).rows[0].n).toBe(0)
    })
    expect((await holder.ask('write')).reply).toBe('WROTE')
  },
  60000,
)

pgTest(
  'a claim with an older token than the one stored is refused, and fences nothing',
  async () => {
    const db = await database()
    const holder = track(service(db))
    const info = await holder.ready()
    await holder.ask('claim')
    // A newer holder's claim, as the database would have it.
    const newer = (BigInt(info.fencingToken) + 1000n).toString()
    await withClient(db, (c) => c.query('UPDATE processlock_fence SET generation = $1', [newer]))
    const again = await holder.ask('claim')
    expect(again.rest).toBe(
      `LockFencedError LOCK_FENCED LOCK_FENCED: backend (SHORT): fencing token ${info.fencingToken} is older than generation ${newer} already claimed: another holder has had the lock since`,
    )
    expect((await holder.ask('write')).rest).toMatch(FENCED_LATE)
    await withClient(db, async (c) =>
      expect((await c.query('SELECT generation::text AS g FROM processlock_fence')).rows).toEqual([{ g: newer }]),
    )
  },
  60000,
)

pgTest(
  'a lock file guarding PostgreSQL gets generations minted by the database, which outlive the lock file',
  async () => {
    const db = await database()
    const old = track(service(db, { server: false }))
    await old.ready()
    expect(await old.ask('claim')).toEqual({ reply: 'CLAIMED', rest: '1' })
    expect((await old.ask('write')).reply).toBe('WROTE')
    pl.forceRemoveLock('backend', { dir: old.lockDir, tradeSide: 'SHORT', log: false })
    const next = track(service(db, { server: false, lockDir: old.lockDir }))
    await next.ready()
    expect(await next.ask('claim')).toEqual({ reply: 'CLAIMED', rest: '2' })
    expect((await old.ask('write')).rest).toMatch(
      /^LockFencedError LOCK_FENCED LOCK_FENCED: backend:SHORT: this session claimed backend:SHORT=1, but generation 2 was claimed since/,
    )
    expect((await next.ask('write')).reply).toBe('WROTE')
  },
  60000,
)

pgTest(
  'the fence is removed by the SQL the guide shows',
  async () => {
    const db = await database()
    const holder = track(service(db))
    await holder.ready()
    await holder.ask('claim')
    await withClient(db, async (c) => {
      await expect(c.query("INSERT INTO orders (note) VALUES ('before')")).rejects.toThrow(/^LOCK_FENCED: /)
      await c.query('DROP TRIGGER processlock_fence_orders ON orders')
      await c.query('DROP FUNCTION processlock_fence_check()')
      await c.query('DROP TABLE processlock_fence')
      await c.query("INSERT INTO orders (note) VALUES ('after')")
    })
    expect(await notes(db)).toEqual(['after'])
  },
  60000,
)
