'use strict'
// Fenced writes: the database the lock protects refuses the writes of a holder that is no longer
// the newest one to claim it. A claim raises the lock's generation in the guarded database and
// binds the claiming connection to it; a trigger on every guarded table, run by the database
// itself, lets a write through only on a connection bound to the current generation.
//
// For a server lock the generation is its fencing token (larger for every new holder, and a
// claim may only raise it). A lock file has no token: the guarded database mints one, in the
// same transaction that checks this process still holds the lock file, so generations follow
// the order in which holders held the lock. Nothing of it lives in the lock directory: clearing
// locks, removing them by force or deleting the directory cannot take a generation back.
//
// No database driver is a dependency: the fence works on the connection the application has.
//   SQLite (better-sqlite3, node:sqlite): the connection gets a function of its own,
//     processlock_fence_check, which the triggers call; it throws LockFencedError, which the
//     driver hands to the application as the statement's error. A connection that never claimed
//     has no such function: its writes to guarded tables cannot even be prepared.
//   PostgreSQL (node-postgres Client or Pool): the session carries the setting
//     processlock.token ('<lock>=<generation>'); the trigger compares it with the stored
//     generation, which it reads FOR SHARE, so a claim waits for the writes in flight to commit.

const { LockFencedError, invalidOption } = require('./errors.js')

const TABLE = 'processlock_fence'
const CHECK = 'processlock_fence_check'
const SETTING = 'processlock.token'
/** A table name as the fence accepts it: `name` or `schema.name`, of plain identifiers. */
const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$/
const MAX_SQLITE_GENERATION = (1n << 63n) - 1n

/** The generation row's key: `backend`, or `backend:SHORT` for a lock with a trade side. */
function lockKey(processType, tradeSide) {
  return tradeSide ? `${processType}:${tradeSide}` : processType
}

/** How the lock is named in messages: `backend (SHORT)`. */
function lockLabel(key) {
  const [type, side] = key.split(':')
  return side ? `${type} (${side})` : type
}

function fenced(message, props) {
  return new LockFencedError(`LOCK_FENCED: ${message}`, 'LOCK_FENCED', props)
}

const quote = (name) =>
  name
    .split('.')
    .map((part) => `"${part}"`)
    .join('.')
const literal = (s) => `'${s.replace(/'/g, "''")}'`
/** A trigger's name for a table: its dots made underscores (a trigger lives in its table's schema). */
const triggerBase = (table) => `processlock_fence_${table.split('.').pop()}`

function kindOf(db) {
  if (db && typeof db.prepare === 'function' && typeof db.function === 'function' && typeof db.exec === 'function') {
    return 'sqlite'
  }
  if (db && typeof db.query === 'function') return 'pg'
  throw invalidOption(
    'fenceWrites takes a better-sqlite3 Database, a node:sqlite DatabaseSync, or a node-postgres Client or Pool',
  )
}

// ---- SQLite -------------------------------------------------------------------------------

/** The statements that install the fence on `tables` in SQLite (`IF NOT EXISTS`: idempotent). */
function sqliteInstallSql(key, tables) {
  const out = [`CREATE TABLE IF NOT EXISTS ${TABLE} (lock TEXT PRIMARY KEY, generation INTEGER NOT NULL)`]
  for (const table of tables) {
    for (const op of ['INSERT', 'UPDATE', 'DELETE']) {
      out.push(
        `CREATE TRIGGER IF NOT EXISTS ${quote(triggerBase(table) + `_${op.toLowerCase()}`)} ` +
          `BEFORE ${op} ON ${quote(table)} FOR EACH ROW BEGIN ` +
          `SELECT ${CHECK}(${literal(key)}, ` +
          `(SELECT CAST(generation AS TEXT) FROM ${TABLE} WHERE lock = ${literal(key)})); END`,
      )
    }
  }
  return out
}

/** The generations this SQLite connection is bound to, by lock key; set once per connection. */
const sqliteBindings = new WeakMap()

function bindSqlite(db) {
  let bound = sqliteBindings.get(db)
  if (bound) return bound
  bound = new Map()
  const check = (key, current) => {
    const mine = bound.get(key)
    if (mine === undefined) {
      throw fenced(`${lockLabel(key)}: this connection has not claimed the lock (fenceWrites), so it may not write`, {
        lock: key,
      })
    }
    if (mine !== current) {
      throw fenced(
        `${lockLabel(key)}: this connection claimed generation ${mine}, but generation ${current} was claimed since: ` +
          'another holder has the lock',
        { lock: key, generation: mine, current },
      )
    }
    return 1
  }
  // Both drivers call it with the text the trigger passes; not deterministic: it reads state.
  db.function(CHECK, { varargs: false }, check)
  sqliteBindings.set(db, bound)
  return bound
}

/** Runs `fn` in a write transaction taken at once (BEGIN IMMEDIATE): claims are serialised. */
function sqliteImmediate(db, fn) {
  db.exec('BEGIN IMMEDIATE')
  try {
    const result = fn()
    db.exec('COMMIT')
    return result
  } catch (e) {
    try {
      db.exec('ROLLBACK')
    } catch {}
    throw e
  }
}

function claimSqlite(db, key, tables, token, stillHeld) {
  const bound = bindSqlite(db)
  const install = sqliteInstallSql(key, tables)
  const generation = sqliteImmediate(db, () => {
    for (const statement of install) db.exec(statement)
    checkTriggers(db, key, install)
    const row = db.prepare(`SELECT CAST(generation AS TEXT) AS g FROM ${TABLE} WHERE lock = ?`).get(key)
    const current = row ? BigInt(row.g) : null
    let next
    if (token === null) {
      // Checked inside the write transaction: a holder that took the lock after this check
      // claims after this commit, so gets the larger generation.
      stillHeld()
      next = current === null ? 1n : current + 1n
    } else {
      next = BigInt(token)
      if (next > MAX_SQLITE_GENERATION) throw invalidOption(`fencing token ${token} is beyond SQLite's integers`)
      if (current !== null && next < current) {
        throw fenced(
          `${lockLabel(key)}: fencing token ${token} is older than generation ${current} already claimed: ` +
            'another holder has had the lock since',
          { lock: key, generation: String(token), current: String(current) },
        )
      }
    }
    db.prepare(
      `INSERT INTO ${TABLE} (lock, generation) VALUES (?, ?) ON CONFLICT (lock) DO UPDATE SET generation = excluded.generation`,
    ).run(key, next)
    return String(next)
  })
  bound.set(key, generation)
  return {
    lock: key,
    generation,
    tables: [...tables],
    unbind() {
      if (bound.get(key) === generation) bound.delete(key)
    },
  }
}

/** A trigger of that name guarding for another lock (or an older definition) is not ours to replace. */
function checkTriggers(db, key, install) {
  const expected = new Map()
  for (const statement of install.slice(1)) {
    const name = /^CREATE TRIGGER IF NOT EXISTS "([^"]+)"/.exec(statement)[1]
    expected.set(name, statement.replace('IF NOT EXISTS ', ''))
  }
  const list = db.prepare(
    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'processlock_fence_%'",
  )
  for (const { name, sql } of list.all()) {
    const want = expected.get(name)
    if (want !== undefined && sql !== want) {
      throw invalidOption(
        `trigger ${name} already guards its table another way (another lock than ${lockLabel(key)}?): ` +
          `drop it first (DROP TRIGGER "${name}") if that fence is no longer wanted`,
      )
    }
  }
}

// ---- PostgreSQL ---------------------------------------------------------------------------

/** The statements that install the fence on `tables` in PostgreSQL (idempotent). */
function pgInstallSql(key, tables) {
  const out = [
    `CREATE TABLE IF NOT EXISTS ${TABLE} (lock text PRIMARY KEY, generation numeric(20, 0) NOT NULL)`,
    `CREATE OR REPLACE FUNCTION ${CHECK}() RETURNS trigger LANGUAGE plpgsql AS $fence$
DECLARE
  bound text := current_setting('${SETTING}', true);
  current_generation numeric;
BEGIN
  SELECT generation INTO current_generation FROM ${TABLE} WHERE lock = TG_ARGV[0] FOR SHARE;
  IF bound IS NULL OR bound = '' THEN
    RAISE EXCEPTION 'LOCK_FENCED: %: this session has not claimed the lock, so it may not write %', TG_ARGV[0], TG_TABLE_NAME
      USING ERRCODE = 'P0001', HINT = 'fenceWrites binds the session';
  END IF;
  IF current_generation IS NULL OR bound IS DISTINCT FROM TG_ARGV[0] || '=' || current_generation THEN
    RAISE EXCEPTION 'LOCK_FENCED: %: this session claimed %, but generation % was claimed since: another holder has the lock',
      TG_ARGV[0], bound, current_generation USING ERRCODE = 'P0001';
  END IF;
  RETURN NULL;
END
$fence$`,
  ]
  for (const table of tables) out.push(pgTriggerSql(key, table))
  return out
}

function pgTriggerSql(key, table) {
  return (
    `CREATE TRIGGER ${quote(triggerBase(table))} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON ${quote(table)} ` +
    `FOR EACH STATEMENT EXECUTE FUNCTION ${CHECK}(${literal(key)})`
  )
}

const pgPatched = new WeakSet()

/** Fence refusals reach the application as LockFencedError, whatever else the driver reports. */
function translated(error) {
  if (error && typeof error.message === 'string' && error.message.startsWith('LOCK_FENCED: ')) {
    return new LockFencedError(error.message, 'LOCK_FENCED', { cause: error, sqlstate: error.code })
  }
  return error
}

/** Wraps `query` of a Client or Pool so that a fence refusal rejects with LockFencedError. */
function patchQuery(db) {
  if (pgPatched.has(db)) return
  pgPatched.add(db)
  const original = db.query
  db.query = function query(...args) {
    const last = args[args.length - 1]
    if (typeof last === 'function') {
      args[args.length - 1] = (err, res) => last(translated(err), res)
      return original.apply(this, args)
    }
    const result = original.apply(this, args)
    // A submittable (a cursor, a stream) is the application's to read: left as it is.
    if (result && typeof result.then === 'function' && typeof result.submit !== 'function') {
      return result.then(undefined, (e) => {
        throw translated(e)
      })
    }
    return result
  }
}

const isPool = (db) => typeof db.connect === 'function' && typeof db.on === 'function' && 'totalCount' in db

async function claimPg(db, key, tables, token, stillHeld) {
  const pool = isPool(db)
  const client = pool ? await db.connect() : db
  let generation
  try {
    await client.query('BEGIN')
    try {
      // Claims of every lock in this database, one at a time: their DDL would otherwise
      // collide (CREATE OR REPLACE of one function by two sessions fails).
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('${TABLE}'))`)
      for (const statement of pgInstallSql(key, [])) await client.query(statement)
      for (const table of tables) {
        // Created only where missing: CREATE TRIGGER locks the table against writes.
        const { rows } = await client.query('SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2', [
          quote(table),
          triggerBase(table),
        ])
        if (rows.length === 0) await client.query(pgTriggerSql(key, table))
      }
      await client.query(`INSERT INTO ${TABLE} (lock, generation) VALUES ($1, 0) ON CONFLICT (lock) DO NOTHING`, [key])
      const { rows } = await client.query(`SELECT generation::text AS g FROM ${TABLE} WHERE lock = $1 FOR UPDATE`, [
        key,
      ])
      const current = BigInt(rows[0].g)
      let next
      if (token === null) {
        stillHeld()
        next = current + 1n
      } else {
        next = BigInt(token)
        if (next < current) {
          throw fenced(
            `${lockLabel(key)}: fencing token ${token} is older than generation ${current} already claimed: ` +
              'another holder has had the lock since',
            { lock: key, generation: String(token), current: String(current) },
          )
        }
      }
      generation = String(next)
      await client.query(`UPDATE ${TABLE} SET generation = $2 WHERE lock = $1`, [key, generation])
      await client.query('COMMIT')
    } catch (e) {
      await client.query('ROLLBACK').catch(() => {})
      throw e
    }
  } finally {
    if (pool) client.release()
  }
  const value = `${key}=${generation}`
  const bindSql = `SELECT set_config('${SETTING}', $1, false)`
  if (pool) {
    // Every client the pool hands out carries the setting: the statement is queued on the
    // client before the application's first query on it.
    const bind = (c) => {
      patchQuery(c)
      c.query(bindSql, [value]).catch(() => {}) // a client that cannot take it is refused by the trigger
    }
    db.on('acquire', bind)
    patchQuery(db)
    return {
      lock: key,
      generation,
      tables: [...tables],
      unbind() {
        db.removeListener('acquire', bind)
      },
    }
  }
  await client.query(bindSql, [value])
  patchQuery(client)
  return {
    lock: key,
    generation,
    tables: [...tables],
    async unbind() {
      await client.query(`SELECT set_config('${SETTING}', '', false)`)
    },
  }
}

// ---- the API ------------------------------------------------------------------------------

/**
 * Claims the lock `processType` (held by this process, named with the options it was taken
 * with) in the database of `db`, and guards `tables` there: from now on, a write to them from a
 * connection not bound to the newest claim fails with LockFencedError.
 */
async function fenceWrites(lockApi, db, processType, options) {
  const kind = kindOf(db)
  if (options === null || typeof options !== 'object') throw invalidOption('fenceWrites needs options with tables')
  const { tables, ...lockOptions } = options
  if (
    !Array.isArray(tables) ||
    tables.length === 0 ||
    !tables.every((t) => typeof t === 'string' && TABLE_NAME.test(t))
  ) {
    throw invalidOption('tables must be a non-empty array of table names (name or schema.name, letters, digits, _)')
  }
  if (kind === 'sqlite' && tables.some((t) => t.includes('.'))) {
    throw invalidOption('SQLite tables are named without a schema: the fence lives in the main database')
  }
  const info = lockApi.getLockInfo(processType, lockOptions)
  const notHeld = () =>
    fenced(`${processType} is not held by this process: only its holder may claim it`, { lock: processType })
  if (!info || info.pid !== process.pid || !lockApi.isLockHeld(processType, lockOptions)) throw notHeld()
  const key = lockKey(processType, info.tradeSide)
  // A lock file's token is not used: it can go back in one case (its generation file lost and
  // the wall clock stepped back, docs/PROTOCOL.md), where the database's own generation cannot.
  const token = info.backend === 'file' ? null : (info.fencingToken ?? null)
  const stillHeld = () => {
    if (!lockApi.isLockHeld(processType, lockOptions)) throw notHeld()
  }
  return kind === 'sqlite' ? claimSqlite(db, key, tables, token, stillHeld) : claimPg(db, key, tables, token, stillHeld)
}

module.exports = { fenceWrites, sqliteInstallSql, pgInstallSql, lockKey }
