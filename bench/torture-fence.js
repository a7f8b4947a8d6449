'use strict'
// The lost-update torture of fenced writes (ours only), used by bench/torture.js. WORKERS
// long-lived processes increment one counter in a database under one lock: each takes the lock,
// then, BATCH times, reads the counter, pauses 0..PAUSE_MS at random, and writes it plus one in
// a transaction that also logs the value written; then it lets go and starts again. While they
// run, faults strike the holder, one per round:
//
//   fence-sqlite-force   SQLite (WAL) guarded by a lock file: the holder's lock file is removed
//                        by force (forceRemoveLock) while it is between a read and its write.
//   fence-node-sqlite-force  the same through node:sqlite, in a Node that has it (this one, or
//                        the one scripts/node-for-tests.js fetches).
//   fence-pg-stop        PostgreSQL guarded by a server lock (lease 1 s): the holder is stopped
//                        (SIGSTOP) between a read and its write, past its lease, then continued.
//   fence-pg-terminate   the same server lock: the holder's lock session is ended
//                        (pg_terminate_backend) between a read and its write.
//   fence-pg-restart     the server is restarted (stopped at once, started again) while a
//                        holder is between a read and its write.
// A holder is told of its loss (onLost 'signal') but does not look: it is the late writer the
// fence is for. A write that fails (refused, or its connection gone) ends the holder's batch;
// it reconnects and takes the lock again.
//
// Each kind runs with the fence off and on. A round ends when another holder has written after
// the fault. Counted: increments acknowledged (the write's COMMIT returned), the counter at the
// end, lost increments (acknowledged less the counter), and values written twice (the log).
// With the fence on, both must be 0; with it off, the torture shows it can find them.
//
//   node bench/torture-fence.js worker '<json>'   one incrementing process (used by the runner)

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const KINDS = [
  'fence-sqlite-force',
  'fence-node-sqlite-force',
  'fence-pg-stop',
  'fence-pg-terminate',
  'fence-pg-restart',
]
/** The kinds on a SQLite file guarded by a lock file: no server needed. */
const LOCAL = ['fence-sqlite-force', 'fence-node-sqlite-force']
/** Rounds each kind allows: what one fault costs in time (see `roundsFor`). */
const MAX_ROUNDS = {
  'fence-sqlite-force': 1000,
  'fence-node-sqlite-force': 1000,
  'fence-pg-terminate': 1000,
  'fence-pg-stop': 40,
  'fence-pg-restart': 20,
}
const WORKERS = 4
const BATCH = 20
const PAUSE_MS = 5
const LEASE_MS = 1000
const TYPE = 'counter'

const delay = (ms) => new Promise((r) => setTimeout(r, ms))

// ---- the worker ---------------------------------------------------------------------------

async function worker(cfg) {
  const pl = require(path.resolve(__dirname, '..'))
  const lockOpts = cfg.url
    ? { url: cfg.url, leaseMs: LEASE_MS, onLost: () => {}, log: false, tradeSide: null }
    : { dir: cfg.dir, log: false, tradeSide: null }
  const say = (line) => fs.writeSync(1, `${line}\n`)
  let stopping = false
  process.stdin.on('data', () => {
    stopping = true
  })
  process.stdin.on('end', () => {
    stopping = true
  })
  const db = await openDb(cfg)
  let acked = 0
  while (!stopping) {
    try {
      await pl.acquireLockAsync(TYPE, { ...lockOpts, timeoutMs: 30000 })
    } catch (e) {
      say(`E acquire ${e.code}`)
      await delay(50)
      continue
    }
    try {
      if (!db.ok) await db.reopen()
      if (cfg.fence) await pl.fenceWrites(db.handle, TYPE, { ...lockOpts, tables: ['counter', 'increments'] })
      for (let i = 0; i < BATCH && !stopping; i++) {
        const value = await db.read()
        say(`R ${process.pid}`)
        await delay(Math.random() * PAUSE_MS)
        await db.write(value + 1)
        acked++
        say(`W ${acked}`)
      }
    } catch (e) {
      // Refused, or the connection is gone: this batch is over.
      say(`F ${e.code || 'ERR'} ${String(e.message).split('\n')[0].slice(0, 120)}`)
      db.ok = false
    }
    try {
      pl.releaseLock(TYPE, lockOpts)
    } catch {}
    // Lets a waiter in before this process asks again.
    await delay(5 + Math.random() * 10)
  }
  say(`D ${acked}`)
  await db.close()
  process.exit(0)
}

async function openDb(cfg) {
  if (cfg.sqlite && cfg.driver === 'node:sqlite') return openNodeSqlite(cfg.sqlite)
  if (cfg.sqlite) {
    const Database = require('better-sqlite3')
    const handle = new Database(cfg.sqlite)
    handle.pragma('busy_timeout = 30000')
    const read = handle.prepare('SELECT value FROM counter WHERE id = 1')
    // Prepared at the first write, after the claim: once the fence is installed, SQLite cannot
    // prepare a write to a guarded table on a connection without the check function.
    let write = null
    const prepareWrite = () => {
      const update = handle.prepare('UPDATE counter SET value = ? WHERE id = 1')
      const log = handle.prepare('INSERT INTO increments (value) VALUES (?)')
      return handle.transaction((v) => {
        update.run(v)
        log.run(v)
      })
    }
    return {
      handle,
      ok: true,
      reopen() {},
      read: async () => read.get().value,
      write: async (v) => {
        if (!write) write = prepareWrite()
        write.immediate(v)
      },
      close: async () => handle.close(),
    }
  }
  const { Client } = require('pg')
  const db = {
    handle: null,
    ok: false,
    async reopen() {
      if (this.handle) this.handle.end().catch(() => {})
      this.handle = new Client(cfg.db)
      this.handle.on('error', () => {
        this.ok = false
      })
      await this.handle.connect()
      this.ok = true
    },
    read: async () => (await db.handle.query('SELECT value FROM counter WHERE id = 1')).rows[0].value,
    async write(v) {
      const c = db.handle
      await c.query('BEGIN')
      try {
        await c.query('UPDATE counter SET value = $1 WHERE id = 1', [v])
        await c.query('INSERT INTO increments (value) VALUES ($1)', [v])
        await c.query('COMMIT')
      } catch (e) {
        await c.query('ROLLBACK').catch(() => {})
        throw e
      }
    },
    close: async () => db.handle && db.handle.end().catch(() => {}),
  }
  await db.reopen().catch(() => {})
  return db
}

/** The worker's database through node:sqlite: the same statements, its own transaction calls. */
function openNodeSqlite(file) {
  const { DatabaseSync } = require('node:sqlite')
  const handle = new DatabaseSync(file)
  handle.exec('PRAGMA busy_timeout = 30000')
  const read = handle.prepare('SELECT value FROM counter WHERE id = 1')
  // Prepared at the first write, after the claim (see openDb).
  let statements = null
  return {
    handle,
    ok: true,
    reopen() {},
    read: async () => Number(read.get().value),
    write: async (v) => {
      if (!statements) {
        statements = [
          handle.prepare('UPDATE counter SET value = ? WHERE id = 1'),
          handle.prepare('INSERT INTO increments (value) VALUES (?)'),
        ]
      }
      handle.exec('BEGIN IMMEDIATE')
      try {
        for (const st of statements) st.run(v)
        handle.exec('COMMIT')
      } catch (e) {
        try {
          handle.exec('ROLLBACK')
        } catch {}
        throw e
      }
    },
    close: async () => handle.close(),
  }
}

/**
 * The Node a worker of `cfg` runs in: this one, or for node:sqlite, one that has it (this one,
 * else the one scripts/node-for-tests.js fetched); `null` when there is none.
 */
function nodeFor(cfg) {
  if (cfg.driver !== 'node:sqlite') return process.execPath
  const { hasNodeSqlite, cachedNode } = require('../scripts/node-for-tests.js')
  return hasNodeSqlite() ? process.execPath : cachedNode()
}

/** Why `kind` cannot run here, or null. */
function whyNot(kind) {
  if (kind !== 'fence-node-sqlite-force' || nodeFor({ driver: 'node:sqlite' })) return null
  return 'no Node with node:sqlite: run `node scripts/node-for-tests.js` to fetch one'
}

// ---- the runner ---------------------------------------------------------------------------

function spawnWorker(cfg) {
  const proc = spawn(nodeFor(cfg), [__filename, 'worker', JSON.stringify(cfg)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  const w = { proc, pid: proc.pid, reads: 0, writes: 0, acked: 0, lastRead: 0n, errors: {}, done: null }
  let partial = ''
  proc.stdout.setEncoding('utf8')
  proc.stdout.on('data', (d) => {
    const lines = (partial + d).split('\n')
    partial = lines.pop()
    for (const line of lines) {
      const [tag, a, b] = line.split(' ')
      if (tag === 'R') {
        w.reads++
        w.lastRead = process.hrtime.bigint()
      } else if (tag === 'W') {
        w.writes++
        w.acked = Number(a)
      } else if (tag === 'F' || tag === 'E') {
        const key = tag === 'F' ? `write ${a}` : `acquire ${b}`
        w.errors[key] = (w.errors[key] || 0) + 1
      } else if (tag === 'D') w.acked = Number(a)
    }
  })
  proc.stderr.setEncoding('utf8')
  let stderr = ''
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-2000)
  })
  w.exited = new Promise((resolve) =>
    proc.on('exit', (code, signal) => {
      w.dead = `exit ${code ?? signal}: ${stderr.trim().split('\n').slice(0, 3).join(' / ')}`
      resolve(stderr)
    }),
  )
  return w
}

/** Resolves once `cond()` holds, looking every 2 ms; false after `ms`. */
async function until(cond, ms) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) return false
    await delay(2)
  }
  return true
}

/** The worker that read last, and is so between a read and its write. */
function reader(workers) {
  return workers.reduce((x, y) => (y.lastRead > x.lastRead ? y : x))
}

async function prepareSqlite(file) {
  const Database = require('better-sqlite3')
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)')
  db.exec('CREATE TABLE increments (value INTEGER NOT NULL)')
  db.exec('INSERT INTO counter VALUES (1, 0)')
  db.close()
}

async function sqliteResult(file) {
  const Database = require('better-sqlite3')
  const db = new Database(file, { readonly: true })
  try {
    return {
      counter: db.prepare('SELECT value FROM counter').get().value,
      logged: db.prepare('SELECT count(*) AS n FROM increments').get().n,
      distinct: db.prepare('SELECT count(DISTINCT value) AS n FROM increments').get().n,
    }
  } finally {
    db.close()
  }
}

async function pgClient(url) {
  const { Client } = require('pg')
  const c = new Client(url)
  await c.connect()
  return c
}

async function preparePg(pg, name) {
  await pg.sql(`DROP DATABASE IF EXISTS ${name}`)
  await pg.sql(`CREATE DATABASE ${name}`)
  const url = new URL(pg.url)
  url.pathname = `/${name}`
  const c = await pgClient(url.href)
  await c.query('CREATE TABLE counter (id int PRIMARY KEY, value int NOT NULL)')
  await c.query('CREATE TABLE increments (value int NOT NULL)')
  await c.query('INSERT INTO counter VALUES (1, 0)')
  await c.end()
  return url.href
}

async function pgResult(url) {
  const c = await pgClient(url)
  try {
    const q = async (sql) => Number((await c.query(sql)).rows[0].n)
    return {
      counter: await q('SELECT value AS n FROM counter'),
      logged: await q('SELECT count(*) AS n FROM increments'),
      distinct: await q('SELECT count(DISTINCT value) AS n FROM increments'),
    }
  } finally {
    await c.end()
  }
}

/** Strikes the reader of `workers` with the kind's fault; resolves once it is over. */
async function strike(kind, workers, { pg, dir }) {
  const pl = require(path.resolve(__dirname, '..'))
  const victim = reader(workers)
  if (LOCAL.includes(kind)) {
    pl.forceRemoveLock(TYPE, { dir, log: false, tradeSide: null })
  } else if (kind === 'fence-pg-terminate') {
    pl.forceRemoveLock(TYPE, { url: pg.url, log: false, tradeSide: null })
  } else if (kind === 'fence-pg-stop') {
    process.kill(victim.pid, 'SIGSTOP')
    // Past its lease, and until another holder wrote.
    const others = workers.filter((w) => w !== victim)
    const before = others.reduce((x, w) => x + w.writes, 0)
    await delay(LEASE_MS * 1.5)
    await until(() => others.reduce((x, w) => x + w.writes, 0) > before, 10000)
    process.kill(victim.pid, 'SIGCONT')
  } else if (kind === 'fence-pg-restart') {
    await pg.stop()
    await pg.start()
  }
}

async function runKind(kind, { rounds, fence, base, pg }) {
  const n = Math.min(rounds, MAX_ROUNDS[kind])
  const st = { kind, fence, rounds: 0, acked: 0, counter: 0, lost: 0, twice: 0, unacked: 0, errors: {}, seconds: 0 }
  const t0 = Date.now()
  const kdir = path.join(base, `${kind}-${fence ? 'on' : 'off'}`)
  fs.mkdirSync(kdir, { recursive: true })
  let cfg
  let result
  if (LOCAL.includes(kind)) {
    const file = path.join(kdir, 'counter.db')
    await prepareSqlite(file)
    const driver = kind === 'fence-node-sqlite-force' ? 'node:sqlite' : 'better-sqlite3'
    cfg = { sqlite: file, driver, dir: path.join(kdir, 'locks'), fence }
    result = () => sqliteResult(file)
  } else {
    const db = await preparePg(pg, `fence_${kind.replace(/-/g, '_')}_${fence ? 'on' : 'off'}`)
    cfg = { db, url: pg.url, dir: path.join(kdir, 'locks'), fence }
    result = () => pgResult(db)
  }
  const workers = Array.from({ length: WORKERS }, () => spawnWorker(cfg))
  try {
    await until(() => workers.some((w) => w.reads > 0), 30000)
    for (let r = 0; r < n; r++) {
      // A holder between a read and its write, then the fault, then progress by someone.
      const reads = workers.reduce((x, w) => x + w.reads, 0)
      if (!(await until(() => workers.reduce((x, w) => x + w.reads, 0) > reads, 30000))) {
        st.errors['no progress'] = (st.errors['no progress'] || 0) + 1
        break
      }
      // The round is over once a holder other than the one struck has written since.
      const others = workers.filter((w) => w !== reader(workers))
      const writes = others.reduce((x, w) => x + w.writes, 0)
      await strike(kind, workers, { pg, dir: cfg.dir })
      if (!(await until(() => others.reduce((x, w) => x + w.writes, 0) > writes, 30000))) {
        st.errors['no other holder wrote within 30 s'] = (st.errors['no other holder wrote within 30 s'] || 0) + 1
      }
      st.rounds++
      const dead = workers.filter((w) => w.dead)
      if (dead.length) {
        for (const w of dead) st.errors[`worker ended (${w.dead})`] = 1
        break
      }
    }
  } finally {
    for (const w of workers) w.proc.stdin.end()
    await Promise.race([Promise.all(workers.map((w) => w.exited)), delay(60000)])
    for (const w of workers) w.proc.kill('SIGKILL')
  }
  const res = await result()
  st.acked = workers.reduce((x, w) => x + w.acked, 0)
  st.counter = res.counter
  st.lost = Math.max(0, st.acked - res.counter)
  // A COMMIT whose answer the connection lost (a restart): applied, never acknowledged.
  st.unacked = Math.max(0, res.counter - st.acked)
  st.twice = res.logged - res.distinct
  for (const w of workers) for (const [k, v] of Object.entries(w.errors)) st.errors[k] = (st.errors[k] || 0) + v
  st.seconds = (Date.now() - t0) / 1000
  return st
}

function line(st) {
  const errs = Object.entries(st.errors)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')
  return (
    `${st.kind} fence ${st.fence ? 'on' : 'off'}: ${st.rounds} rounds, ${st.acked} increments acknowledged, ` +
    `counter ${st.counter}, lost ${st.lost}, written twice ${st.twice}, applied with the answer lost ${st.unacked} ` +
    `(${st.seconds.toFixed(0)} s)${errs ? `; ${errs}` : ''}`
  )
}

/** Failures: any lost or twice-written increment with the fence on; a worker gone or stuck in any run. */
function failures(results) {
  const broken = (st) =>
    Object.keys(st.errors).filter((k) => k.startsWith('worker ended') || k.startsWith('no progress')).length
  return results.reduce((x, st) => x + broken(st) + (st.fence ? st.lost + st.twice : 0), 0)
}

function markdown(results, meta) {
  const rows = results.map(
    (st) =>
      `| ${st.kind} | ${st.fence ? 'on' : 'off'} | ${st.rounds} | ${st.acked} | ${st.counter} | ` +
      `${st.fence && st.lost ? `**${st.lost}**` : st.lost} | ${st.fence && st.twice ? `**${st.twice}**` : st.twice} | ` +
      `${st.unacked} | ` +
      `${Object.entries(st.errors)
        .map(([k, v]) => `${k}: ${v}`)
        .join(', ')} |`,
  )
  const offFound = results.filter((st) => !st.fence).some((st) => st.lost + st.twice > 0)
  return [
    '## Torture: fenced writes',
    '',
    `Command: \`${meta.command}\` (${meta.seconds.toFixed(0)} s). ${WORKERS} processes increment one counter ` +
      `(read, pause 0..${PAUSE_MS} ms, write with a log row, ${BATCH} per hold of the lock) while a fault strikes a ` +
      'holder between its read and its write, once per round; each kind with the fence off, then on. Rounds per ' +
      `kind: at most ${Object.entries(MAX_ROUNDS)
        .map(([k, v]) => `${v} for ${k}`)
        .join(', ')} (a stop lasts 1.5 leases, a restart about a second).`,
    '',
    `Machine: ${meta.machine.summary}`,
    '',
    '| kind | fence | rounds | increments acknowledged | counter | lost | written twice | applied, answer lost | refused or failed writes, failed acquires |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    'A server restart also ends the database sessions of every holder, the late one among them: its write fails ' +
      'with its connection, fence or not, so fence-pg-restart finds no lost increment either way; it shows that ' +
      'the fence lets the service ride out a restart, and that a commit whose answer was lost is not counted twice.',
    '',
    offFound
      ? 'With the fence off the torture finds lost increments; with it on, none.'
      : '**With the fence off no lost increment was found in this run: the torture did not show it can fail.**',
  ].join('\n')
}

module.exports = { KINDS, LOCAL, MAX_ROUNDS, runKind, line, markdown, failures, whyNot }

if (require.main === module && process.argv[2] === 'worker') {
  worker(JSON.parse(process.argv[3])).catch((e) => {
    fs.writeSync(2, `${e.stack}\n`)
    process.exit(1)
  })
}
