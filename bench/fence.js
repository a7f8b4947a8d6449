'use strict'
// The cost of a fenced write (bench/run.js --sections fence): one-row writes, each its own
// transaction, to a table guarded by fenceWrites beside the same writes to an unguarded twin,
// in turns, on SQLite in WAL mode (better-sqlite3, synchronous NORMAL) and on PostgreSQL over
// loopback (node-postgres, the run's private server). The lock is a lock file; a server lock's
// fence costs the same (the trigger does not know where the generation came from).

const fs = require('node:fs')
const path = require('node:path')
const R = require('./report')
const PG = require('./pg')

const SECTIONS = ['fence']

const median = (xs) => {
  const s = xs.slice().sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

/** Times `n` calls of `write(i)`, in ns per call, `reps` times; the median of the reps. */
async function timed(write, n, reps) {
  const per = []
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) await write(i)
    per.push(Number(process.hrtime.bigint() - t0) / n)
  }
  return median(per)
}

/** Guarded and plain, in turns, rep by rep: both see the same machine load. */
async function compare(writes, n, reps) {
  const g = []
  const p = []
  for (let r = 0; r < reps; r++) {
    p.push(await timed(writes.plain, n, 1))
    g.push(await timed(writes.guarded, n, 1))
  }
  return { plain: median(p), guarded: median(g) }
}

function lockFor(ctx, name) {
  const pl = require(path.resolve(__dirname, '..'))
  const dir = ctx.freshDir(name)
  const opts = { dir, log: false, tradeSide: null }
  pl.acquireLock('bench', opts)
  return { pl, opts, release: () => pl.releaseLock('bench', opts) }
}

async function sqliteRows(a, ctx) {
  let Database
  try {
    Database = require('better-sqlite3')
  } catch {
    return [['SQLite (better-sqlite3 not installed)', 'n/a', 'n/a', 'n/a']]
  }
  const file = path.join(ctx.freshDir('fence-sqlite'), 'bench.db')
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  db.exec('CREATE TABLE plain (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)')
  db.exec('CREATE TABLE guarded (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)')
  const lock = lockFor(ctx, 'fence-sqlite-lock')
  try {
    await lock.pl.fenceWrites(db, 'bench', { ...lock.opts, tables: ['guarded'] })
    const rows = []
    for (const op of ['INSERT', 'UPDATE']) {
      const sql = (t) => (op === 'INSERT' ? `INSERT INTO ${t} (v) VALUES (?)` : `UPDATE ${t} SET v = ? WHERE id = 1`)
      const plain = db.prepare(sql('plain'))
      const guarded = db.prepare(sql('guarded'))
      const r = await compare(
        { plain: (i) => plain.run(i), guarded: (i) => guarded.run(i) },
        a.quick ? 500 : 5000,
        a.quick ? 3 : 7,
      )
      rows.push([`SQLite, WAL: one-row ${op}`, R.us(r.plain), R.us(r.guarded), R.ratio(r.guarded / r.plain)])
    }
    return rows
  } finally {
    db.close()
    lock.release()
    fs.rmSync(file, { force: true })
  }
}

async function pgRows(a, ctx) {
  const pg = await PG.server(ctx)
  if (!pg) return [[`PostgreSQL (${ctx.pgWhy || 'not available'})`, 'n/a', 'n/a', 'n/a']]
  const { Client } = require('pg')
  await ctx.pgAdmin.query('DROP DATABASE IF EXISTS bench_fence')
  await ctx.pgAdmin.query('CREATE DATABASE bench_fence')
  const url = new URL(pg.url)
  url.pathname = '/bench_fence'
  const c = new Client(url.href)
  await c.connect()
  const lock = lockFor(ctx, 'fence-pg-lock')
  try {
    await c.query('CREATE TABLE plain (id serial PRIMARY KEY, v int NOT NULL)')
    await c.query('CREATE TABLE guarded (id serial PRIMARY KEY, v int NOT NULL)')
    await c.query('INSERT INTO plain (v) VALUES (0)')
    await c.query('INSERT INTO guarded (v) VALUES (0)')
    await lock.pl.fenceWrites(c, 'bench', { ...lock.opts, tables: ['guarded'] })
    const rows = []
    for (const op of ['INSERT', 'UPDATE']) {
      const sql = (t) => (op === 'INSERT' ? `INSERT INTO ${t} (v) VALUES ($1)` : `UPDATE ${t} SET v = $1 WHERE id = 1`)
      const r = await compare(
        { plain: (i) => c.query(sql('plain'), [i]), guarded: (i) => c.query(sql('guarded'), [i]) },
        a.quick ? 200 : 2000,
        a.quick ? 3 : 7,
      )
      rows.push([
        `PostgreSQL ${(ctx.pgVersion || '').split(' ')[0]}, loopback: one-row ${op}`,
        R.us(r.plain),
        R.us(r.guarded),
        R.ratio(r.guarded / r.plain),
      ])
    }
    return rows
  } finally {
    await c.end()
    lock.release()
  }
}

async function fenceSection(a, ctx) {
  const rows = [...(await sqliteRows(a, ctx)), ...(await pgRows(a, ctx))]
  const md = [
    '### Fenced writes: a guarded write beside an unguarded one',
    '',
    'One-row writes, each its own transaction (autocommit), median per write of ' +
      `${a.quick ? 3 : 7} runs, guarded and plain tables in turns. SQLite: a file in WAL mode, ` +
      'synchronous NORMAL, better-sqlite3; PostgreSQL: the private server of this run, node-postgres over loopback.',
    '',
    R.table(['write', 'unguarded (us)', 'guarded (us)', 'guarded / unguarded'], rows),
  ].join('\n')
  return { md }
}

module.exports = { SECTIONS, sections: { fence: fenceSection } }
