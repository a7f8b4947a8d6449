'use strict'
// A private PostgreSQL server for a test file, started by the crate's own harness (the
// `pg_server` example of processlock-pg, which is `tests/support` of that crate): initdb into a
// temporary directory, 127.0.0.1 on a free port. It stops when `close` is called, and also when
// this process dies (the server program ends at the end of its input).
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { buildDir } = require('../../bin/processlock.js')
const { ROOT, watch } = require('./proc.js')
const { needs } = require('./skip.js')

/**
 * The exit status of a process that lost its lock with `onLost: 'exit'`, and of `processlock run`
 * whose lock was lost (processlock::report::LOST_EXIT_STATUS).
 */
const LOST_EXIT_STATUS = 75

const EXE = path.join(buildDir('release'), 'examples', 'pg_server')

function build() {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'build.js'), '--test-tools'], {
    cwd: ROOT,
    stdio: 'inherit',
  })
}

/**
 * Whether PostgreSQL's server programs are installed, found as the server program finds them
 * (processlock-pg's tests/support: `pg_config --bindir`, else /usr/lib/postgresql/<version>/bin).
 */
function postgresInstalled() {
  try {
    const dir = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    if (fs.existsSync(path.join(dir.trim(), 'initdb'))) return true
  } catch {}
  try {
    return fs
      .readdirSync('/usr/lib/postgresql')
      .some((v) => fs.existsSync(path.join('/usr/lib/postgresql', v, 'bin', 'initdb')))
  } catch {
    return false
  }
}

/**
 * Resolves with the server, or with null (after printing why) where PostgreSQL is not installed.
 * The server: { url, socketUrl, ca, stop(), stopFast(), start(), sql(statement) -> first column of
 * the rows, close() }. `stop` ends every session at once (`immediate`); `stopFast` shuts down
 * cleanly, telling each session it is ended (`fast`).
 * With `{ tls: true }` the server offers TLS with a certificate for `localhost` signed by the
 * test CA whose PEM file is `ca`.
 */
async function startPg({ tls = false } = {}) {
  if (!fs.existsSync(EXE)) build()
  const proc = watch(EXE, tls ? ['--tls'] : [], { stdin: 'pipe', waitMs: 120000 })
  const first = await proc.waitFor(/^(url|skip) (.*)$/m)
  if (first[1] === 'skip') {
    console.log(`SKIPPED: ${first[2]}`)
    await proc.done()
    return null
  }
  const socket = await proc.waitFor(/^socket (.*)$/m)
  const ca = tls ? (await proc.waitFor(/^ca (.*)$/m))[1] : null
  // Every command gets one answer line, in order.
  const answers = []
  const pending = []
  let partial = ''
  proc.child.stdout.on('data', (d) => {
    const lines = (partial + d).split('\n')
    partial = lines.pop()
    for (const line of lines) {
      if (!/^(stopped|started|rows |unknown )/.test(line)) continue
      if (pending.length > 0) pending.shift()(line)
      else answers.push(line)
    }
  })
  const command = (line) =>
    new Promise((resolve) => {
      pending.push(resolve)
      proc.child.stdin.write(`${line}\n`)
    })
  return {
    url: first[2],
    socketUrl: socket[1],
    ca,
    stop: () => command('stop'),
    stopFast: () => command('stop fast'),
    start: () => command('start'),
    /** Runs one statement; the first column of its rows, as text. */
    async sql(statement) {
      const answer = await command(`sql ${statement.replace(/\n/g, ' ')}`)
      const rows = answer.slice('rows '.length)
      return rows === '' ? [] : rows.split(',')
    },
    async close() {
      proc.child.stdin.end()
      await proc.done(60000)
    },
  }
}

/**
 * The private server of one test file: started before its tests, stopped after them. Returns an
 * object that holds the server's fields once it runs (`url`, `sql`, ...), with `available`, and
 * `test`: a jest `test`, registered as skipped (needs PostgreSQL) where PostgreSQL is not
 * installed.
 */
function usePg(options) {
  const installed = postgresInstalled()
  const pg = { available: false, installed }
  beforeAll(async () => {
    if (!installed) return
    const server = await startPg(options)
    if (server) Object.assign(pg, server, { available: true })
  }, 180000)
  afterAll(async () => {
    if (pg.available) await pg.close()
  })
  const gated = needs(installed, 'PostgreSQL (initdb)')
  pg.test = (name, fn, timeout) =>
    gated(
      name,
      async () => {
        if (!pg.available) throw new Error('PostgreSQL is installed but the private server did not start')
        await fn()
      },
      timeout,
    )
  return pg
}

/** The lock information a holder fixture prints in its `HELD <json>` line. */
async function held(p) {
  const m = await p.waitFor(/HELD (.*)\n/, 30000)
  return JSON.parse(m[1])
}

module.exports = { LOST_EXIT_STATUS, held, startPg, usePg }
