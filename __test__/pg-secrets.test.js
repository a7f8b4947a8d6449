'use strict'
// Keeping the server's password out of every command line. `processlock` and the addon take it
// from a password file or the environment, as libpq does, so the URL can go without it; a second
// local user, created for this file and removed after it, reads what every user of the host can
// read (ps, /proc/PID/cmdline) and tries what it should not be able to (/proc/PID/environ, the
// password file). Needs `npm run build` first; the second user needs root (useradd, runuser).
const { execFileSync, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { start, tempDir } = require('./helpers/proc')
const { needs } = require('./helpers/skip')
const { held, usePg } = require('./helpers/pg')
const { cli, startRun } = require('./helpers/cli-proc')

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)

/** Unsets every PG* variable of whoever runs the tests: each test says what it sets. */
const NO_PG_ENV = Object.fromEntries(
  Object.keys(process.env)
    .filter((k) => k.startsWith('PG'))
    .map((k) => [k, undefined]),
)

/** The test server's URL without its password, the password, and the port. */
function server() {
  const url = new URL(pg.url)
  const password = decodeURIComponent(url.password)
  url.password = ''
  return { bare: url.toString(), password, port: url.port }
}

/** A password file of `mode` for the test server, in a directory every user may enter. */
function passwordFile(mode) {
  const { password, port } = server()
  const dir = tempDir('pgpass')
  fs.chmodSync(dir, 0o755)
  const file = path.join(dir, 'pgpass')
  fs.writeFileSync(file, `# the lock server\n127.0.0.1:${port}:postgres:postgres:${password}\n`)
  fs.chmodSync(file, mode)
  return file
}

/** The environment of a service whose URL has no password: HOME has no .pgpass either. */
function serviceEnv(extra) {
  return { ...NO_PG_ENV, HOME: tempDir('home'), ...extra }
}

const OTHER_USER = `plpeek${process.pid}`
/** The second local user's name, or null where it cannot be created here. */
let otherUser = null

const canAddUser = process.platform === 'linux' && process.getuid() === 0

beforeAll(() => {
  if (!canAddUser) return
  execFileSync('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', OTHER_USER])
  otherUser = OTHER_USER
})

afterAll(() => {
  if (otherUser) execFileSync('userdel', [otherUser])
})

// The tests below look through a second user's eyes only where one can be created: this one says
// whether they did (skipped, with the reason, where they could not).
needs(canAddUser, 'root on Linux, to create a second local user')('the checks as a second local user run', () => {
  expect(otherUser).toBe(OTHER_USER)
})

/** Runs `cmd ...args` as the other user: { code, out } (stdout and stderr). */
function asOtherUser(cmd, args) {
  const r = spawnSync('runuser', ['-u', otherUser, '--', cmd, ...args], { encoding: 'utf8', timeout: 10000 })
  return { code: r.status, out: `${r.stdout}${r.stderr}` }
}

/** What the other user sees of process `pid`: its command line as /proc and ps show it. */
function visibleCommandLine(pid) {
  const proc = asOtherUser('cat', [`/proc/${pid}/cmdline`])
  expect(proc.code).toBe(0)
  const ps = asOtherUser('ps', ['-ww', '-o', 'args=', '-p', String(pid)])
  expect(ps.code).toBe(0)
  return `${proc.out.replace(/\0/g, ' ')}\n${ps.out}`
}

const acquired = (pid) => `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: ${pid} }`

pgTest(
  'run with a URL without password and a 0600 password file: held, and no other user sees the password',
  async () => {
    const { bare, password } = server()
    const file = passwordFile(0o600)
    const run = startRun(['backend'], ['hold'], {
      dir: tempDir('cli-pg'),
      env: serviceEnv({ PROCESSLOCK_URL: bare, PGPASSFILE: file }),
    })
    try {
      await run.waitFor(acquired(run.pid), 30000)
      const child = Number((await run.waitFor(/CHILD READY (\d+)/, 30000))[1])
      expect(run.stderr).not.toContain('WARNING')
      if (otherUser) {
        for (const pid of [run.pid, child]) {
          expect(visibleCommandLine(pid)).not.toContain(password)
          // The environment and the password file are the service user's alone.
          expect(asOtherUser('cat', [`/proc/${pid}/environ`]).code).not.toBe(0)
        }
        expect(asOtherUser('cat', [file])).toMatchObject({ code: 1, out: expect.stringMatching(/Permission denied/) })
      }
    } finally {
      run.kill('SIGTERM')
      await run.done(30000)
    }
    expect(`${run.stdout}${run.stderr}`).not.toContain(password)
  },
)

pgTest(
  'a password on the command line: one warning line that does not show it, because every user can read it',
  async () => {
    const { password } = server()
    const run = startRun(['backend', '--url', pg.url], ['hold'], { dir: tempDir('cli-pg'), env: serviceEnv({}) })
    try {
      await run.waitFor(acquired(run.pid), 30000)
      const warnings = run.stderr.split('\n').filter((l) => l.includes('WARNING'))
      expect(warnings).toEqual([
        expect.stringContaining('the password in --url can be read by every user of this host'),
      ])
      expect(warnings[0]).toMatch(/PGPASSFILE/)
      if (otherUser) expect(visibleCommandLine(run.pid)).toContain(password)
    } finally {
      run.kill('SIGTERM')
      await run.done(30000)
    }
    expect(run.stderr).not.toContain(password)
    // check and clear warn the same way; a password in $PROCESSLOCK_URL is not on the command line.
    for (const args of [
      ['check', '--url', pg.url],
      ['clear', `--url=${pg.url}`],
    ]) {
      const r = await cli(args, { dir: tempDir('cli-pg'), env: serviceEnv({}) })
      expect(r.code).toBe(0)
      expect(r.stderr).toContain('WARNING: the password in --url')
      expect(`${r.stdout}${r.stderr}`).not.toContain(password)
    }
    const fromEnv = await cli(['check'], { dir: tempDir('cli-pg'), env: serviceEnv({ PROCESSLOCK_URL: pg.url }) })
    expect(fromEnv.code).toBe(0)
    expect(fromEnv.stderr).not.toContain('WARNING')
  },
)

pgTest('the addon takes the password from PGPASSFILE, ~/.pgpass or PGPASSWORD, and the server from PG*', async () => {
  const { bare, password, port } = server()
  const file = passwordFile(0o600)
  const home = tempDir('home')
  fs.copyFileSync(file, path.join(home, '.pgpass'))
  fs.chmodSync(path.join(home, '.pgpass'), 0o600)
  const ways = [
    { PROCESSLOCK_URL: bare, PGPASSFILE: file },
    { PROCESSLOCK_URL: bare, HOME: home },
    { PROCESSLOCK_URL: bare, PGPASSWORD: password },
    {
      PROCESSLOCK_URL: 'postgres://',
      PGHOST: '127.0.0.1',
      PGPORT: port,
      PGUSER: 'postgres',
      PGDATABASE: 'postgres',
      PGPASSFILE: file,
    },
  ]
  for (const env of ways) {
    const holder = start('pg-holder.js', { dir: tempDir('pg'), env: serviceEnv(env), args: ['hold'] })
    const info = await held(holder)
    expect(info).toMatchObject({ pid: holder.pid, backend: 'postgres' })
    holder.child.stdin.write('release\n')
    expect((await holder.done(30000)).code).toBe(0)
    expect(`${holder.stdout}${holder.stderr}`).not.toContain(password)
  }
})

pgTest('a password file that others may read is ignored, with one warning line naming it', async () => {
  const { bare, password } = server()
  const file = passwordFile(0o644)
  const r = await cli(['check', '--url', bare], { dir: tempDir('cli-pg'), env: serviceEnv({ PGPASSFILE: file }) })
  expect(r.code).toBe(1)
  const warnings = r.stderr.split('\n').filter((l) => l.includes('WARNING'))
  expect(warnings).toEqual([
    `processlock: WARNING: password file "${file}" has group or world access; permissions should be u=rw (0600) or less; it is ignored`,
  ])
  expect(r.stderr).toMatch(/LOCK_IO/)
  expect(`${r.stdout}${r.stderr}`).not.toContain(password)
  // Why: the other user reads it.
  if (otherUser) expect(asOtherUser('cat', [file]).out).toContain(password)
})
