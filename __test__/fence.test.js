'use strict'
// Fenced writes on SQLite: a holder that lost its lock file (removed by force, cleared, its
// directory deleted) keeps running, and the database refuses its late writes once a newer holder
// claimed the lock there. Real processes, a real database file in WAL mode, better-sqlite3 and
// node:sqlite (run by Node 22 when this Node has no node:sqlite: helpers/node-sqlite.js).
const fs = require('node:fs')
const path = require('node:path')
const Database = require('better-sqlite3')
const pl = require('..')
const { FIXTURES, start, tempDir, watch } = require('./helpers/proc')
const { cli } = require('./helpers/cli-proc')
const { nodeSqlite } = require('./helpers/node-sqlite')
const { needs } = require('./helpers/skip')

/** The SQLite drivers: the Node that runs their processes, and how their tests run here. */
const DRIVERS = [
  ['better-sqlite3', { driver: 'sqlite', node: process.execPath, t: needs(true) }],
  ['node:sqlite', { driver: 'node-sqlite', node: nodeSqlite.execPath, t: nodeSqlite.test }],
]

/** How a process of each driver opens the database file named by its first argument. */
const OPEN = {
  sqlite: "new (require('better-sqlite3'))(process.argv[1])",
  'node-sqlite': "new (require('node:sqlite').DatabaseSync)(process.argv[1])",
}

/** A database file with the table the service writes, in WAL mode. */
function database(label) {
  const dir = tempDir(label)
  const file = path.join(dir, 'app.db')
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)')
  db.close()
  return { dir, file }
}

/** A service process (fixtures/fence-holder.js) that answers numbered commands. */
function service(lockDir, db, { driver = 'sqlite', node = process.execPath, env = {} } = {}) {
  const p = start('fence-holder.js', { dir: lockDir, node, env: { FENCE_DB: `${driver}:${db}`, ...env } })
  let n = 0
  return {
    p,
    ready: () => p.waitFor('READY'),
    async ask(cmd) {
      n++
      p.child.stdin.write(`${cmd} ${n}\n`)
      const m = await p.waitFor(new RegExp(`^(\\w+) ${n}(?: (.*))?$`, 'm'))
      return { reply: m[1], rest: m[2] ?? '' }
    },
    async stop() {
      p.child.stdin.end()
      p.kill('SIGKILL')
      await p.done()
    },
  }
}

const rows = (file) => {
  const db = new Database(file, { readonly: true })
  try {
    return db
      .prepare('SELECT note FROM orders ORDER BY id')
      .all()
      .map((r) => r.note)
  } finally {
    db.close()
  }
}

const started = []
afterEach(async () => {
  for (const s of started.splice(0)) await s.stop()
})
function track(s) {
  started.push(s)
  return s
}

/** How a running holder loses its lock file to an operator, while it keeps running. */
const LOSSES = {
  'forceRemoveLock by another process': async (dir) => {
    pl.forceRemoveLock('backend', { dir, tradeSide: 'SHORT', log: false })
  },
  'processlock clear --force': async (dir) => {
    const r = await cli(['clear', '--force'], { dir })
    expect(r.code).toBe(0)
  },
  'the lock directory deleted': async (dir) => {
    fs.rmSync(dir, { recursive: true, force: true })
  },
}

describe.each(DRIVERS)('SQLite through %s', (_, { driver, node, t }) => {
  t.each(Object.keys(LOSSES))(
    'a holder whose lock file was lost (%s) has its late writes refused once the new holder claimed',
    async (how) => {
      const { dir: home, file } = database('fence-lost')
      const lockDir = path.join(home, 'locks')
      const old = track(service(lockDir, file, { driver, node }))
      await old.ready()
      expect(await old.ask('claim')).toEqual({ reply: 'CLAIMED', rest: '1' })
      // The app's own statements, unchanged, go through while it is the newest holder.
      expect((await old.ask('write')).reply).toBe('WROTE')
      expect((await old.ask('update')).reply).toBe('WROTE')

      await LOSSES[how](lockDir)
      const next = track(service(lockDir, file, { driver, node }))
      await next.ready()
      // The generation lives in the guarded database: nothing done to the lock directory
      // takes it back.
      expect(await next.ask('claim')).toEqual({ reply: 'CLAIMED', rest: '2' })

      for (const op of ['write', 'update', 'delete']) {
        const late = await old.ask(op)
        expect([op, late.reply]).toEqual([op, 'REFUSED'])
        expect(late.rest).toMatch(
          /^LockFencedError LOCK_FENCED LOCK_FENCED: backend \(SHORT\): this connection claimed generation 1, but generation 2 was claimed since/,
        )
      }
      expect((await next.ask('write')).reply).toBe('WROTE')
      // Its claim again is refused too: it no longer holds the lock.
      const again = await old.ask('claim')
      expect(again.rest).toMatch(/^LockFencedError LOCK_FENCED LOCK_FENCED: backend is not held by this process/)
      const notes = rows(file)
      expect(notes).toHaveLength(2)
      expect(notes).toEqual(['updated 3', `order 2 of ${next.p.pid}`])
    },
    60000,
  )

  t(
    'a connection that never claimed is refused: one without the check function cannot even prepare a write',
    async () => {
      const { dir: home, file } = database('fence-unclaimed')
      const lockDir = path.join(home, 'locks')
      const holder = track(service(lockDir, file, { driver, node }))
      await holder.ready()
      await holder.ask('claim')

      // A process that loaded no fence at all.
      const bare = new Database(file)
      try {
        expect(() => bare.prepare("INSERT INTO orders (note) VALUES ('bare')").run()).toThrow(
          'no such function: processlock_fence_check',
        )
        // Reads are not guarded.
        expect(bare.prepare('SELECT count(*) AS n FROM orders').get().n).toBe(0)
      } finally {
        bare.close()
      }

      // The same package in a process that holds no lock: it cannot claim, and cannot write.
      const stranger = track(service(lockDir, file, { driver, node, env: { FENCE_NO_LOCK: '1' } }))
      await stranger.ready()
      expect((await stranger.ask('claim')).rest).toMatch(/^LockFencedError LOCK_FENCED /)
      // Each driver's own error (better-sqlite3: SqliteError; node:sqlite: Error ERR_SQLITE_ERROR).
      expect((await stranger.ask('write')).rest).toMatch(
        /^(SqliteError (undefined|SQLITE_ERROR)|Error ERR_SQLITE_ERROR) no such function: processlock_fence_check/,
      )
      expect((await holder.ask('write')).reply).toBe('WROTE')
      expect(rows(file)).toHaveLength(1)
    },
    60000,
  )

  t(
    'claims of many processes at once get distinct generations, in the order they held the lock',
    async () => {
      // Each takes the lock (waiting for it), claims, writes its generation, and lets go.
      const { dir: home, file } = database('fence-order')
      const lockDir = path.join(home, 'locks')
      const script = `
      const pl = require(${JSON.stringify(path.resolve(__dirname, '..'))})
      const db = ${OPEN[driver]}
      db.exec('PRAGMA busy_timeout = 10000')
      ;(async () => {
        for (let i = 0; i < 5; i++) {
          await pl.acquireLockAsync('backend', { dir: process.argv[2], tradeSide: 'SHORT', log: false, timeoutMs: 60000 })
          const f = await pl.fenceWrites(db, 'backend', { dir: process.argv[2], tradeSide: 'SHORT', tables: ['orders'] })
          db.prepare('INSERT INTO orders (note) VALUES (?)').run(f.generation)
          pl.releaseLock('backend', { dir: process.argv[2], tradeSide: 'SHORT', log: false })
        }
        console.log('DONE')
      })()`
      const procs = Array.from({ length: 6 }, () => watch(node, ['-e', script, file, lockDir]))
      for (const p of procs) await p.waitFor('DONE', 60000)
      for (const p of procs) await p.done()
      expect(rows(file).map(Number)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
    },
    90000,
  )

  /** Runs fixtures/fence-claims.js's `scenario` with this driver; resolves with what it printed. */
  async function claims(scenario, file, lockDir) {
    const p = watch(node, [path.join(FIXTURES, 'fence-claims.js'), driver, scenario, file, lockDir])
    const [, json] = await p.waitFor(/^RESULT (.*)$/m, 30000)
    await p.done()
    return JSON.parse(json)
  }

  t(
    'a second connection of the holder is refused until it claims, and its claim fences the first (a minted generation is one per claim)',
    async () => {
      const { dir: home, file } = database('fence-second')
      const r = await claims('second', file, path.join(home, 'locks'))
      expect(r.claimA).toEqual({ ok: { lock: 'backend:SHORT', generation: '1', tables: ['orders'] } })
      // b has the check function only once it claims; before that, SQLite cannot prepare its write.
      expect(r.writeBBeforeItsClaim.error.message).toMatch(/no such function: processlock_fence_check/)
      expect(r.claimB).toBe('2')
      // A minted generation fences every earlier claim, the holder's own included: claim once
      // per process, or once per connection before its first write.
      expect(r.writeA.error).toMatchObject({
        fenced: true,
        code: 'LOCK_FENCED',
        lock: 'backend:SHORT',
        generation: '1',
        current: '2',
      })
      expect(r.writeB).toEqual({ ok: 'inserted' })
      expect(r.writeBUnbound.error).toMatchObject({ fenced: true, code: 'LOCK_FENCED' })
      expect(r.writeBUnbound.error.message).toMatch(
        /^LOCK_FENCED: backend \(SHORT\): this connection has not claimed the lock/,
      )
      expect(rows(file)).toEqual(['b'])
    },
    60000,
  )

  t(
    'a server lock claims with its fencing token, beyond 2^53 too; a claim with an older token than the stored one is refused',
    async () => {
      const { dir: home, file } = database('fence-token')
      const r = await claims('token', file, path.join(home, 'locks'))
      expect(r.claim).toEqual({ ok: '9007199254740993' })
      expect(r.older.error).toMatchObject({
        fenced: true,
        code: 'LOCK_FENCED',
        message:
          'LOCK_FENCED: worker: fencing token 9007199254740992 is older than generation 9007199254740993 already claimed: another holder has had the lock since',
      })
      // The refused claim changed nothing: the newer claim's connection still writes.
      expect(r.write).toEqual({ ok: 'inserted' })
      expect(r.stored).toBe('9007199254740993')
    },
    60000,
  )
})

test('bad arguments are refused before anything is written', async () => {
  const { dir: home, file } = database('fence-args')
  const db = new Database(file)
  try {
    await expect(pl.fenceWrites({}, 'backend', { tables: ['orders'] })).rejects.toMatchObject({
      code: 'LOCK_INVALID_OPTION',
    })
    for (const tables of [undefined, [], ['x; DROP TABLE orders'], ['main.orders']]) {
      await expect(pl.fenceWrites(db, 'backend', { dir: home, tables })).rejects.toMatchObject({
        code: 'LOCK_INVALID_OPTION',
      })
    }
    await expect(pl.fenceWrites(db, 42, { dir: home, tables: ['orders'] })).rejects.toMatchObject({
      code: 'LOCK_INVALID_NAME',
    })
    await expect(pl.fenceWrites(db, 'backend', { dir: home, tables: ['orders'] })).rejects.toMatchObject({
      code: 'LOCK_FENCED',
    })
    expect(db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name LIKE 'processlock%'").get().n).toBe(0)
  } finally {
    db.close()
  }
})

test('a table guarded by one lock is not taken over by the claim of another', async () => {
  const { dir: home, file } = database('fence-two-locks')
  const lockDir = path.join(home, 'locks')
  const opts = { dir: lockDir, tradeSide: null, log: false }
  const db = new Database(file)
  try {
    pl.acquireLock('backend', opts)
    pl.acquireLock('worker', opts)
    await pl.fenceWrites(db, 'backend', { ...opts, tables: ['orders'] })
    await expect(pl.fenceWrites(db, 'worker', { ...opts, tables: ['orders'] })).rejects.toMatchObject({
      code: 'LOCK_INVALID_OPTION',
      message: expect.stringContaining('trigger processlock_fence_orders_insert already guards its table another way'),
    })
    // The refused claim changed nothing: the first lock's claim still writes.
    db.prepare("INSERT INTO orders (note) VALUES ('backend')").run()
    expect(db.prepare('SELECT lock FROM processlock_fence').all()).toEqual([{ lock: 'backend' }])
  } finally {
    db.close()
    pl.releaseLock('backend', opts)
    pl.releaseLock('worker', opts)
  }
})
