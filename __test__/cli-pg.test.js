'use strict'
const { execFileSync, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
// `processlock run` with the lock on a PostgreSQL server: a private server started for this file,
// real `processlock` processes, real commands and real signals. Needs `npm run build` first.
// What `run` does on every backend (conflict, --wait, the hand-over, release) is the lock
// contract's (contract/postgres.test.js); here, what only a server lock does.
const pl = require('..')
const { tempDir, watch } = require('./helpers/proc')
const { LOST_EXIT_STATUS, usePg } = require('./helpers/pg')
const { BINARY, cli, startRun, waitGone, alive } = require('./helpers/cli-proc')
const { saltedKey, saltOf } = require('./helpers/pg-key')

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)

/**
 * The advisory key of a lock (side SHORT) in the default namespace, as every holder computes it: keyed
 * with the database's salt, which the first lock ever taken there creates.
 */
async function lockKey(type) {
  let salt = await saltOf(pg)
  if (salt === null) {
    pl.acquireLock('salt', { url: pg.url, log: false })
    pl.releaseLock('salt', { url: pg.url })
    salt = await saltOf(pg)
  }
  return saltedKey(salt, `${type}.short.lock`)
}

/** The server processes of the sessions that hold the lock `type` (at most one). */
async function holdersOf(type) {
  const key = BigInt.asUintN(64, await lockKey(type))
  return pg.sql(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 1 AND classid::text::int8 = ${key >> 32n} AND objid::text::int8 = ${key & 0xffffffffn}`,
  )
}

async function until(cond, what, timeoutMs = 30000) {
  const t0 = Date.now()
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting until ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const childPid = async (p) => Number((await p.waitFor(/CHILD READY (\d+)/, 30000))[1])

/** `processlock run <type> --url ... [...extra] -- node cli-child.js ...childArgs` */
function runOnServer(type, extra, childArgs) {
  return startRun([type, '--url', pg.url, ...extra], childArgs, { dir: tempDir('cli-pg') })
}

/** A second instance: `processlock run <type>` of a command that would print RAN. */
function tryRun(type, env = {}, args = ['--url', pg.url]) {
  return cli(['run', type, ...args, '--', process.execPath, '-e', 'console.log("RAN")'], {
    dir: tempDir('cli-pg-other'),
    env,
  })
}

test('the test computes lock keys as the library does', () => {
  // Pinned in the library's own tests: backend (SHORT) in the default namespace, salt (1, 2).
  expect(saltedKey('00000000000000010000000000000002', 'backend.short.lock')).toBe(206270567605668656n)
})

pgTest('the command gets its fencing token, larger for each new holder', async () => {
  const printToken = ['-e', 'console.log("TOKEN " + process.env.PROCESSLOCK_FENCING_TOKEN)']
  const tokens = []
  for (let i = 0; i < 2; i++) {
    const r = await cli(['run', 'feed', '--url', pg.url, '--', process.execPath, ...printToken], {
      dir: tempDir('cli-pg'),
    })
    expect(r.code).toBe(0)
    const token = r.stdout.match(/^TOKEN ([0-9]+)$/m)[1]
    // The token the server gave this holder.
    expect(await pg.sql("SELECT token FROM processlock_holders WHERE lock_name = 'feed.short.lock'")).toEqual([token])
    tokens.push(BigInt(token))
  }
  expect(tokens[1]).toBeGreaterThan(tokens[0])
})

pgTest('processlock killed with SIGKILL: its session ends, the lock is free, and the command goes too', async () => {
  const run = runOnServer('killed', [], ['hold'])
  const child = await childPid(run)
  expect(await holdersOf('killed')).toHaveLength(1)
  run.kill('SIGKILL')
  await run.done(30000)
  await until(async () => (await holdersOf('killed')).length === 0, 'the server freed the lock')
  // The kernel sends the command SIGKILL when processlock dies (Linux); elsewhere it would stay.
  if (process.platform === 'linux') await waitGone(child, 30000)
  else if (alive(child)) process.kill(child, 'SIGKILL')
  const info = pl.acquireLock('killed', { url: pg.url, tradeSide: 'SHORT', log: false })
  expect(info.backend).toBe('postgres')
  pl.releaseLock('killed', { url: pg.url, tradeSide: 'SHORT', log: false })
})

pgTest(
  'a lost lock stops the command: the LOST line, SIGTERM, SIGKILL after --grace, exit status 75',
  async () => {
    // The holder's session is ended by an administrator: SIGTERM, and the command exits.
    const run = runOnServer('lost', ['--lease', '2000'], ['signal-exit', '0'])
    await childPid(run)
    const [session] = await holdersOf('lost')
    expect(await pg.sql(`SELECT pg_terminate_backend(${session})`)).toEqual(['t'])
    const r = await run.done(30000)
    expect(r.code).toBe(LOST_EXIT_STATUS)
    expect(r.stdout).toContain('GOT SIGTERM')
    expect(r.stderr).toContain(
      `[PROCESS_LOCK_LOST] { processType: 'lost', tradeSide: 'SHORT', pid: ${run.pid}, reason: `,
    )
    expect(r.stderr).not.toContain('[PROCESS_LOCK_RELEASED]')

    // A command that does not exit on SIGTERM gets SIGKILL once --grace has passed.
    const stubborn = runOnServer('lost', ['--lease', '2000', '--grace', '200'], ['count', '600000'])
    const child = await childPid(stubborn)
    const [again] = await holdersOf('lost')
    await pg.sql(`SELECT pg_terminate_backend(${again})`)
    const s = await stubborn.done(30000)
    expect(s.code).toBe(LOST_EXIT_STATUS)
    expect(s.stdout).toContain('GOT SIGTERM')
    expect(s.stderr).toContain(`processlock: still running 200 ms after SIGTERM, sent SIGKILL: PID ${child}`)
    expect(alive(child)).toBe(false)

    // The server stops while the lock is held: every session ends, and so does the command.
    const stopped = runOnServer('lost', ['--lease', '2000'], ['signal-exit', '0'])
    await childPid(stopped)
    await pg.stop()
    try {
      const t = await stopped.done(30000)
      expect(t.code).toBe(LOST_EXIT_STATUS)
      expect(t.stdout).toContain('GOT SIGTERM')
      expect(t.stderr).toContain('[PROCESS_LOCK_LOST]')
    } finally {
      await pg.start()
    }
  },
  120000,
)

pgTest(
  'a processlock frozen past its lease: another instance takes over, and on waking it stops its command',
  async () => {
    const run = runOnServer('frozen', ['--lease', '2000'], ['signal-exit', '0'])
    await childPid(run)
    process.kill(run.pid, 'SIGSTOP')
    let resumed = false
    try {
      // The server ends the silent session after the lease; the next instance was waiting for it.
      const next = await tryRun('frozen', {}, ['--url', pg.url, '--wait', '30000'])
      expect(next.code).toBe(0)
      expect(next.stdout).toContain('RAN')
      process.kill(run.pid, 'SIGCONT')
      resumed = true
      const r = await run.done(30000)
      expect(r.code).toBe(LOST_EXIT_STATUS)
      expect(r.stdout).toContain('GOT SIGTERM')
      expect(r.stderr).toContain('no heartbeat was confirmed')
    } finally {
      if (!resumed) process.kill(run.pid, 'SIGCONT')
    }
  },
)

pgTest('a holder session that wrote no record is named by its server process, with no fuser hint', async () => {
  // A session that takes the lock without this library (so without a record), and keeps it.
  const other = watch(
    'psql',
    [pg.url, '-c', `SELECT pg_advisory_lock(${await lockKey('bare')})`, '-c', 'SELECT pg_sleep(600)'],
    {
      env: process.env,
    },
  )
  try {
    await until(async () => (await holdersOf('bare')).length === 1, 'psql holds the lock')
    const [session] = await holdersOf('bare')
    const hint = `SELECT client_addr, application_name, backend_start FROM pg_stat_activity WHERE pid = ${session}`
    const r = await tryRun('bare')
    expect(r.code).toBe(1)
    expect(r.stdout).not.toContain('RAN')
    expect(r.stderr).toContain(
      `Existing process: unknown (server process ${session} holds the lock; no record of it can be read here)`,
    )
    expect(r.stderr).toContain(hint)
    expect(r.stderr).not.toContain('fuser')
    // The addon's conflict lines say the same.
    const lines = []
    expect(() => pl.acquireLock('bare', { url: pg.url, tradeSide: 'SHORT', log: (line) => lines.push(line) })).toThrow(
      pl.LockConflictError,
    )
    expect(lines.join('\n')).toContain(hint)
    expect(lines.join('\n')).not.toContain('fuser')
  } finally {
    await pg.sql(`SELECT pg_terminate_backend(${(await holdersOf('bare')).join('), pg_terminate_backend(') || 'NULL'})`)
    other.kill('SIGKILL')
    await other.done(30000)
  }
})

pgTest('a bad URL or lease is a usage error, an unreachable server an I/O error; nothing runs', async () => {
  for (const url of ['not a url at all', 'postgres://trader:secret@127.0.0.1:5432/db?sslmode=bogus']) {
    const r = await tryRun('backend', {}, ['--url', url])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('LOCK_INVALID_OPTION')
    expect(r.stderr).not.toContain('secret')
    expect(r.stdout).not.toContain('RAN')
    // check and clear say the same, with the same status: whether a lock is held cannot be asked
    // of a URL that names no server.
    for (const args of [['check'], ['check', 'backend'], ['clear'], ['clear', '--force']]) {
      const c = await cli([...args, '--url', url], { dir: tempDir('pg-bad-url') })
      expect(c.code).toBe(2)
      expect(c.stderr).toContain('LOCK_INVALID_OPTION')
      expect(c.stderr).not.toContain('secret')
    }
  }
  const short = await tryRun('backend', {}, ['--url', pg.url, '--lease', '10'])
  expect(short.code).toBe(2)
  expect(short.stderr).toContain('LOCK_INVALID_OPTION')
  // --replace with nobody to replace takes the lock on the server and runs the command.
  const replace = await tryRun('backend', {}, ['--url', pg.url, '--replace'])
  expect(replace.code).toBe(0)
  expect(replace.stdout).toContain('RAN')
  expect(replace.stderr).not.toContain('[PROCESS_LOCK_REPLACE]')
  // A port nothing listens on.
  const gone = await tryRun('backend', {}, ['--url', 'postgres://trader:secret@127.0.0.1:1/db'])
  expect(gone.code).toBe(1)
  expect(gone.stderr).toContain('[FATAL] LOCK_IO: connect')
  expect(gone.stderr).not.toContain('secret')
  expect(gone.stdout).not.toContain('RAN')
  // A command that cannot be run: 127, and the lock it was taken for is let go.
  const missing = await cli(['run', 'backend', '--url', pg.url, '--', '/nonexistent/command'], {
    dir: tempDir('cli-pg'),
  })
  expect(missing.code).toBe(127)
  expect(missing.stderr).not.toContain('[PROCESS_LOCK_ACQUIRED]')
  expect(await holdersOf('backend')).toEqual([])
  // Without a server, --lease means nothing, and --grace only goes with --replace.
  expect((await tryRun('backend', {}, ['--lease', '3000'])).code).toBe(2)
  expect((await tryRun('backend', {}, ['--grace', '3000'])).code).toBe(2)
})

/**
 * A writing end whose reader is already gone (a FIFO whose only reader closed): every write to it
 * fails with EPIPE, whatever the timing.
 */
function closedPipe(dir) {
  const fifo = path.join(dir, 'out')
  if (!fs.existsSync(fifo)) execFileSync('mkfifo', [fifo])
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  const writer = fs.openSync(fifo, 'w')
  fs.closeSync(reader)
  return writer
}

pgTest('a reader that left: check, clear and run on a server end quietly with their own status', async () => {
  const dir = tempDir('cli-pg-pipe')
  const env = { ...process.env, PROCESSLOCK_URL: pg.url, TRADE_SIDE: 'SHORT', NO_COLOR: '1' }
  for (const [args, status] of [
    [['check', 'piped'], 1],
    [['check', 'piped', '--json'], 1],
    [['check'], 0],
    [['check', '--json'], 0],
    [['clear'], 0],
    [['clear', '--force'], 0],
  ]) {
    const out = closedPipe(dir)
    const r = spawnSync(BINARY, args, { stdio: ['ignore', out, 'pipe'], env, timeout: 30000 })
    fs.closeSync(out)
    expect({ args, status: r.status, stderr: r.stderr.toString() }).toEqual({ args, status, stderr: '' })
  }
  // `run` says what it does on stderr: a reader of it that left does not end `run` before its
  // command, and the command's status is still the one `run` ends with.
  const err = closedPipe(dir)
  const run = spawnSync(BINARY, ['run', 'piped', '--', process.execPath, '-e', 'console.log("RAN"); process.exit(7)'], {
    stdio: ['ignore', 'pipe', err],
    env,
    timeout: 30000,
  })
  fs.closeSync(err)
  expect({ status: run.status, stdout: run.stdout.toString() }).toEqual({ status: 7, stdout: 'RAN\n' })
})

pgTest('a run under a run of the same lock does not take the hold handed down: it conflicts', async () => {
  const inner = [BINARY, 'run', 'nested', '--url', pg.url, '--', process.execPath, '-e', 'console.log("RAN")']
  const r = await cli(['run', 'nested', '--url', pg.url, '--', ...inner], { dir: tempDir('cli-pg-nested') })
  expect(r.stdout).not.toContain('RAN')
  expect(r.stderr).toMatch(/^\[FATAL\] LOCK_CONFLICT/m)
  expect(r.code).toBe(1)
  expect(await holdersOf('nested')).toEqual([])
})
