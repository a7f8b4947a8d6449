'use strict'
// Locks on a PostgreSQL server when things go wrong, through the API services call: a holder
// frozen (SIGSTOP), cut off from the server (iptables on loopback), killed, or on another host
// (a UTS namespace and a boot id of its own), and a server that stops under its holders. Processes share only
// the server's URL (each has a lock directory of its own). Events are ordered by what the
// processes report (fencing tokens, the state of the old holder at the handover), never by time.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const pl = require('..')
const { FIXTURES, start, tempDir, watch } = require('./helpers/proc')
const { LOST_EXIT_STATUS, held, usePg } = require('./helpers/pg')
const { needs, onlyOn } = require('./helpers/skip')

/** Short enough to keep the tests short, long enough for heartbeats on a loaded machine. */
const LEASE_MS = 3000

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)

/** `node pg-lease.js <mode>` with a lock directory of its own and the server's URL. */
function lease(mode, env = {}) {
  return start('pg-lease.js', {
    dir: tempDir('pg-fail'),
    env: { PROCESSLOCK_URL: pg.url, LEASE_MS: String(LEASE_MS), ...env },
    args: [mode],
  })
}

/** The waiter's outcome: { old: the old holder's state at the handover, info }. */
async function got(p) {
  const m = await p.waitFor(/GOT (\S+) (.*)\n/, 60000)
  return { old: m[1], info: JSON.parse(m[2]) }
}

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

/** `node pg-lease.js <mode>` (wait or await), once it waits in the server for the lock. */
async function waiterFor(mode, env = {}) {
  const waiter = lease(mode, env)
  await until(async () => (await waitingSessions()) === '1', 'the waiter waits in the server')
  return waiter
}

/**
 * The waiter got the lock after the holder whose info is `first`: a newer holder, by its fencing
 * token, and it ended well. Resolves with the old holder's state at the handover.
 */
async function tookOver(waiter, first) {
  const { old, info } = await got(waiter)
  expect(info).toMatchObject({ pid: waiter.pid, backend: 'postgres' })
  expect(BigInt(info.fencingToken)).toBeGreaterThan(BigInt(first.fencingToken))
  expect((await waiter.done(30000)).code).toBe(0)
  return old
}

/** The server process of the session holding the lock for the process `pid`. */
async function sessionOf(pid) {
  const [backendPid] = await pg.sql(
    `SELECT backend_pid FROM processlock_holders WHERE (record->>'pid')::int = ${pid} AND backend_pid IS NOT NULL`,
  )
  return backendPid
}

const SHORT = (extra = {}) => ({ url: pg.url, tradeSide: 'SHORT', log: false, ...extra })

const LOST_LINE = /^\[PROCESS_LOCK_LOST\] \{ processType: 'backend', tradeSide: 'SHORT', pid: \d+, reason: '.+' \}$/m

describe('a frozen holder (SIGSTOP) with a short lease', () => {
  let frozen = null
  afterEach(() => {
    // A failed test must not leave a stopped process behind.
    if (frozen && !frozen.ended) {
      frozen.kill('SIGCONT')
      frozen.kill('SIGKILL')
    }
    frozen = null
  })

  pgTest("is taken over by a waiter (waitMs); woken, it reports the loss and exits (onLost 'exit')", async () => {
    frozen = lease('hold')
    const first = await held(frozen)
    const waiter = await waiterFor('wait', { OLD_PID: String(frozen.pid) })
    frozen.kill('SIGSTOP')
    // The handover happened while the old holder was still frozen, and the new holder is newer.
    expect(await tookOver(waiter, first)).toBe('T')
    frozen.kill('SIGCONT')
    const r = await frozen.done(30000)
    expect(r.code).toBe(LOST_EXIT_STATUS)
    expect(r.stderr).toMatch(LOST_LINE)
    // Had JavaScript run before the exit, it would not have believed the lock was still its own.
    expect(r.stdout).not.toContain('held=true')
    expect(r.stdout).not.toContain('RELEASED')
  })

  pgTest("is taken over by a waiter (acquireLockAsync); woken, its lockSignal aborts (onLost 'signal')", async () => {
    frozen = lease('hold', { ON_LOST: 'signal' })
    const first = await held(frozen)
    const waiter = await waiterFor('await', { OLD_PID: String(frozen.pid) })
    frozen.kill('SIGSTOP')
    expect(await tookOver(waiter, first)).toBe('T')
    frozen.kill('SIGCONT')
    // The moment it runs again it knows the lock is not its own, whatever the heartbeat says later.
    await frozen.waitFor('CONTINUED held=false', 30000)
    await frozen.waitFor('LOST LockLostError LOCK_LOST', 30000)
    // stderr is a pipe of its own: its line may reach this process after the stdout one.
    await frozen.waitFor(LOST_LINE, 30000)
    // Still running, and it knows the lock is not its own: releasing finds nothing to let go.
    frozen.child.stdin.write('release\n')
    expect((await frozen.done(30000)).code).toBe(0)
    expect(pl.getLockInfo('backend', SHORT())).toBeNull()
  })
})

/** Whether iptables can be used here: it is installed and this process is root. */
function canCut() {
  if (process.getuid() !== 0) return false
  try {
    execFileSync('iptables', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** The iptables rules that drop every loopback packet from and to a client port. */
const cutRules = (port) =>
  ['--sport', '--dport'].map((dir) => ['INPUT', '-i', 'lo', '-p', 'tcp', dir, String(port), '-j', 'DROP'])

const iptables = (action, rule) => execFileSync('iptables', ['-w', action, ...rule], { stdio: 'ignore' })

/** A test that cuts connections: registered as skipped, saying why, where it cannot. */
const cutTest =
  process.platform !== 'linux'
    ? onlyOn(['linux'], 'connections are cut with iptables')
    : canCut()
      ? pgTest
      : needs(false, 'iptables and root, to cut a connection')

/** The client port of the session that holds the lock for the process `pid`. */
async function clientPort(pid) {
  const backendPid = await sessionOf(pid)
  const [port] = await pg.sql(`SELECT client_port FROM pg_stat_activity WHERE pid = ${backendPid}`)
  expect(port).toMatch(/^[0-9]+$/)
  return port
}

describe('a connection cut off from the server (iptables on loopback)', () => {
  let cutPort = null
  let holder = null
  afterEach(() => {
    if (cutPort !== null) {
      for (const rule of cutRules(cutPort)) {
        // Removed until none is left; none at all when the insert failed.
        for (let i = 0; i < 4; i++) {
          try {
            iptables('-D', rule)
          } catch {
            break
          }
        }
      }
    }
    cutPort = null
    if (holder && !holder.ended) holder.kill('SIGKILL')
    holder = null
  })

  cutTest(
    "a holder gives up (onLost 'exit': status 75) before a waiter takes the lock, about a lease later",
    async () => {
      holder = lease('hold')
      const first = await held(holder)
      const waiter = await waiterFor('await', { OLD_PID: String(holder.pid) })
      cutPort = await clientPort(holder.pid)
      for (const rule of cutRules(cutPort)) iptables('-I', rule)
      const r = await holder.done(30000)
      expect(r.code).toBe(LOST_EXIT_STATUS)
      expect(r.stderr).toMatch(LOST_LINE)
      // The old holder had ended before the server let the waiter have the lock.
      expect(await tookOver(waiter, first)).toBe('gone')
    },
  )

  cutTest(
    "a holder gives up (onLost 'signal'), lets go without waiting on the dead connection, and is taken over",
    async () => {
      holder = lease('hold', { ON_LOST: 'signal' })
      const first = await held(holder)
      const waiter = await waiterFor('await')
      cutPort = await clientPort(holder.pid)
      for (const rule of cutRules(cutPort)) iptables('-I', rule)
      await holder.waitFor('LOST LockLostError LOCK_LOST', 30000)
      await holder.waitFor(LOST_LINE, 30000)
      // Still cut off: letting go must not hang on the connection nobody answers.
      holder.child.stdin.write('release\n')
      expect((await holder.done(30000)).code).toBe(0)
      await tookOver(waiter, first)
    },
  )

  cutTest('a waiter cut off while the lock changes hands does not hold it up: the next waiter gets it', async () => {
    holder = lease('hold')
    const first = await held(holder)
    const cutOff = await waiterFor('await')
    const [waitingPid] = await pg.sql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    ;[cutPort] = await pg.sql(`SELECT client_port FROM pg_stat_activity WHERE pid = ${waitingPid}`)
    for (const rule of cutRules(cutPort)) iptables('-I', rule)
    // The cut-off waiter holds nothing while it waits, so it cannot be handed the lock.
    holder.child.stdin.write('release\n')
    expect((await holder.done(30000)).code).toBe(0)
    const next = lease('await')
    const { info } = await got(next)
    expect(info).toMatchObject({ pid: next.pid, backend: 'postgres' })
    expect(BigInt(info.fencingToken)).toBeGreaterThan(BigInt(first.fencingToken))
    expect(cutOff.stdout).not.toContain('GOT')
    expect((await next.done(30000)).code).toBe(0)
    // Its connection given up, it connects again (from another port) and waits on: the lock
    // is its own only after the next waiter let go.
    const late = await got(cutOff)
    expect(BigInt(late.info.fencingToken)).toBeGreaterThan(BigInt(info.fencingToken))
    expect(cutOff.stdout).toMatch(
      /^\[PROCESS_LOCK_WAIT\] backend \(SHORT\): the server went away \(.+\); still waiting, connecting again$/m,
    )
    expect(cutOff.stdout).toMatch(
      /^\[PROCESS_LOCK_WAIT\] backend \(SHORT\): the server is back after \d+ ms; still waiting$/m,
    )
    expect((await cutOff.done(30000)).code).toBe(0)
  })
})

const utsTest =
  process.platform !== 'linux'
    ? onlyOn(['linux'], 'a host of its own is a UTS namespace')
    : process.getuid() === 0
      ? pgTest
      : needs(false, 'root, for UTS and mount namespaces of its own')

utsTest('a holder on another host (its own UTS namespace) is named by host, and no kill is advised', async () => {
  const env = {
    ...process.env,
    PROCESSLOCK_DIR: tempDir('pg-host'),
    PROCESSLOCK_URL: pg.url,
    TRADE_SIDE: 'SHORT',
    PROCESSLOCK_LOG: '',
    LEASE_MS: String(LEASE_MS),
  }
  // Another machine: another host name and another boot id (a host name alone is a renamed host,
  // or a UTS namespace, of this machine, whose start tokens say so).
  const bootId = path.join(tempDir('pg-boot'), 'boot_id')
  fs.writeFileSync(bootId, '00000000-0000-4000-8000-000000000000\n')
  const other = watch(
    'unshare',
    [
      '--uts',
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      'hostname other-host && mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"',
      bootId,
      process.execPath,
      path.join(FIXTURES, 'pg-lease.js'),
      'hold',
    ],
    { env, stdin: 'pipe' },
  )
  try {
    const info = await held(other)
    expect(info).toMatchObject({ pid: other.pid, hostname: 'other-host', backend: 'postgres' })
    const here = await start('guard.js', { dir: tempDir('pg-here'), env: { PROCESSLOCK_URL: pg.url } }).done(30000)
    expect(here.code).toBe(1)
    expect(here.stdout).toBe('')
    const lines = here.stderr.trim().split('\n')
    expect(lines).toEqual([
      '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
      expect.stringMatching(
        new RegExp(
          `^\\[PROCESS_LOCK_CONFLICT\\] Existing process: \\{ pid: ${other.pid}, started: '.+', hostname: 'other-host' \\}$`,
        ),
      ),
      "[PROCESS_LOCK_CONFLICT] It runs on host 'other-host', not on this one: stop it there (its PID means nothing here)",
      `[FATAL] LOCK_CONFLICT: backend (SHORT) is already running on host other-host (PID: ${other.pid})`,
    ])
    expect(here.stderr).not.toMatch(/\bkill\b/)
    expect(pl.getLockInfo('backend', SHORT())).toMatchObject({
      pid: other.pid,
      hostname: 'other-host',
      fencingToken: info.fencingToken,
    })
    other.child.stdin.write('release\n')
    expect((await other.done(30000)).code).toBe(0)
    expect(pl.getLockInfo('backend', SHORT())).toBeNull()
  } finally {
    other.kill('SIGKILL')
  }
})

/** A loopback port nothing listens on: bound, then closed. */
function closedPort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

pgTest(
  'acquireLockOrExit with a URL: the first instance holds; a second prints the conflict and exits 1, as when the server is not there',
  async () => {
    const first = start('guard.js', { dir: tempDir('pg-guard'), env: { PROCESSLOCK_URL: pg.url } })
    try {
      await first.waitFor(`STARTED ${first.pid}`, 30000)
      expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: first.pid, backend: 'postgres' })
      const second = await start('guard.js', { dir: tempDir('pg-guard'), env: { PROCESSLOCK_URL: pg.url } }).done(30000)
      expect(second.code).toBe(1)
      expect(second.stdout).toBe('')
      expect(second.stderr.trim().split('\n')).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        expect.stringMatching(
          new RegExp(`^\\[PROCESS_LOCK_CONFLICT\\] Existing process: \\{ pid: ${first.pid}, started: '.+' \\}$`),
        ),
        `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${first.pid}`,
        `[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${first.pid})`,
      ])
      // The first instance still holds.
      expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: first.pid })
      // A server that is not there: the [FATAL] line with the code, without the password.
      const url = `postgres://postgres:secret@127.0.0.1:${await closedPort()}/postgres`
      const nowhere = await start('guard.js', { dir: tempDir('pg-guard'), env: { PROCESSLOCK_URL: url } }).done(30000)
      expect(nowhere.code).toBe(1)
      expect(nowhere.stdout).toBe('')
      expect(nowhere.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^\[FATAL\] LOCK_IO: connect /)])
      expect(nowhere.stderr).not.toContain('secret')
    } finally {
      first.kill('SIGKILL')
      await first.done(30000)
    }
  },
)

describe('waits', () => {
  let holder = null
  afterEach(async () => {
    if (holder) {
      holder.kill('SIGKILL')
      await holder.done(30000)
    }
    holder = null
  })

  pgTest('a wait in acquireLockAsync is woken by the kill -9 of the holder, with a larger token', async () => {
    holder = lease('hold')
    const first = await held(holder)
    const waiter = await waiterFor('await', { OLD_PID: String(holder.pid) })
    holder.kill('SIGKILL')
    expect(await tookOver(waiter, first)).toBe('gone')
  })

  pgTest('a wait that runs out is LOCK_CONFLICT naming the holder, and leaves no session behind', async () => {
    holder = lease('hold')
    await held(holder)
    const holderSession = await sessionOf(holder.pid)
    const others = async () =>
      (
        await pg.sql(
          `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'processlock' AND pid <> ${holderSession}`,
        )
      )[0]

    let err = null
    try {
      pl.acquireLock('backend', SHORT({ waitMs: 300 }))
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(pl.LockConflictError)
    expect(err.holder).toMatchObject({ pid: holder.pid })
    expect(err.waitedMs).toBeGreaterThanOrEqual(300)
    await expect(pl.acquireLockAsync('backend', SHORT({ timeoutMs: 300 }))).rejects.toMatchObject({
      code: 'LOCK_CONFLICT',
      holder: { pid: holder.pid },
    })
    // The same in a process of its own, which stays alive while the server is looked at.
    const waiter = lease('wait', { WAIT_MS: '300' })
    await waiter.waitFor(`FAILED LOCK_CONFLICT ${holder.pid}`, 30000)
    await waiter.done(30000)
    // No wait is left in the server, and the sessions that waited are closed.
    await until(async () => (await waitingSessions()) === '0', 'no session waits')
    await until(async () => (await others()) === '0', 'the sessions that waited are closed')
    expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: holder.pid })
  })
})

pgTest(
  'a server that stops under a holder and a waiter: the holder is told, the waiter (no timeout) waits on and takes the lock after the restart',
  async () => {
    const holder = lease('hold', { ON_LOST: 'signal' })
    let waiter = null
    let stopped = false
    try {
      const first = await held(holder)
      waiter = await waiterFor('await', { WAIT_MS: 'Infinity' })
      await pg.stop()
      stopped = true
      await holder.waitFor('LOST LockLostError LOCK_LOST', 30000)
      await holder.waitFor(LOST_LINE, 30000)
      await pg.start()
      stopped = false
      const { info } = await got(waiter)
      expect(info).toMatchObject({ pid: waiter.pid, backend: 'postgres' })
      // The token goes on growing across the restart: the new holder is the newest.
      expect(BigInt(info.fencingToken)).toBeGreaterThan(BigInt(first.fencingToken))
      expect((await waiter.done(30000)).code).toBe(0)
      expect(waiter.stdout).not.toContain('FAILED')
      // What the wait said while the server was away: once when it went, once when it was back,
      // logged before the lock was returned.
      const lines = waiter.stdout.split('\n').filter((l) => l.startsWith('[PROCESS_LOCK_'))
      expect(lines).toEqual([
        expect.stringMatching(
          /^\[PROCESS_LOCK_WAIT\] backend \(SHORT\): the server went away \(.+\); still waiting, connecting again$/,
        ),
        expect.stringMatching(
          /^\[PROCESS_LOCK_WAIT\] backend \(SHORT\): the server is back after \d+ ms; still waiting$/,
        ),
        expect.stringMatching(/^\[PROCESS_LOCK_ACQUIRED\]/),
        expect.stringMatching(/^\[PROCESS_LOCK_RELEASED\]/),
      ])
    } finally {
      if (stopped) await pg.start()
      for (const p of [holder, waiter].filter(Boolean)) {
        p.kill('SIGKILL')
        await p.done(30000)
      }
    }
  },
)

pgTest(
  'a lock taken again before the notice of its loss arrived stays held; the notice goes to the lost hold',
  async () => {
    const p = lease('retake')
    try {
      const first = await held(p)
      await pg.sql(`SELECT pg_terminate_backend(${await sessionOf(p.pid)})`)
      const again = JSON.parse((await p.waitFor(/AGAIN (.*)\n/, 30000))[1])
      expect(BigInt(again.fencingToken)).toBeGreaterThan(BigInt(first.fencingToken))
      // The first hold's signal aborted; the new hold is still this process's, on the server too.
      await p.waitFor('AFTER ', 30000)
      expect(p.stdout).toContain('AFTER held=true second=false')
      // stderr is a pipe of its own: its line may reach this process after the stdout one.
      await p.waitFor(LOST_LINE, 30000)
      expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: p.pid, fencingToken: again.fencingToken })
      p.child.stdin.write('release\n')
      await p.waitFor('RELEASED true', 30000)
      const ended = await p.done(30000)
      expect(ended.code).toBe(0)
      // One loss, one line: the new hold was never reported lost.
      expect(ended.stderr.match(/\[PROCESS_LOCK_LOST\]/g)).toHaveLength(1)
      expect(pl.getLockInfo('backend', SHORT())).toBeNull()
    } finally {
      p.kill('SIGKILL')
    }
  },
)
