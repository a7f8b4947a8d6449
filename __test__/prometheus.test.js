'use strict'
// `processlock check --format prometheus`, read back by a real exposition-format parser (the
// Prometheus project's Python client; helpers/prometheus.js), for lock files (--dir) and for
// locks on a private PostgreSQL server (--url): real holders, a holder killed with SIGKILL, a
// holder on another host (a UTS namespace of its own, with a host name that needs escaping).
const fs = require('node:fs')
const path = require('node:path')
const { FIXTURES, start, tempDir, watch } = require('./helpers/proc')
const { cli } = require('./helpers/cli-proc')
const { held, usePg } = require('./helpers/pg')
const { havePythonPip, parseExposition } = require('./helpers/prometheus')
const { needs, onlyOn } = require('./helpers/skip')

const parserTest = needs(havePythonPip(), 'python3 with pip, for the prometheus_client parser')
const FAMILIES = [
  'processlock_lock_held',
  'processlock_holder_pid',
  'processlock_holder_uptime_seconds',
  'processlock_fencing_token',
]

/** `check --format prometheus`, parsed: { families, value(name, labels) }. */
async function metrics(args, opts) {
  const r = await cli(['check', '--format', 'prometheus', ...args], opts)
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' })
  const families = await parseExposition(r.stdout)
  expect(families.map((f) => [f.name, f.type])).toEqual(FAMILIES.map((n) => [n, 'gauge']))
  for (const f of families) expect(f.help).not.toBe('')
  const samples = (name) => families.find((f) => f.name === name).samples
  return {
    families,
    samples,
    /** The value of the one series of `name` whose labels include `labels`; undefined if none. */
    value(name, labels) {
      const found = samples(name).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      expect(found.length).toBeLessThanOrEqual(1)
      return found[0]?.value
    },
  }
}

/** A process holding `type` (side from TRADE_SIDE) in `dir` until its stdin gets a line. */
async function holder(dir, type, side) {
  const p = start('wait-holder.js', { dir, env: { TYPES: type, TRADE_SIDE: side } })
  await p.waitFor(/READY \d+/)
  return p
}

describe('lock files (--dir)', () => {
  const procs = []
  afterAll(() => {
    for (const p of procs) if (!p.ended) p.kill('SIGKILL')
  })

  parserTest('held, stale and unreadable locks; the holder PID and uptime of the held ones', async () => {
    const dir = tempDir('prom')
    const backend = await holder(dir, 'backend', 'SHORT')
    const worker = await holder(dir, 'worker', 'LONG')
    const killed = await holder(dir, 'backend', 'LONG')
    procs.push(backend, worker, killed)
    killed.kill('SIGKILL')
    await killed.done()
    fs.writeFileSync(path.join(dir, 'junk.lock'), '')
    const host = require('node:os').hostname()

    const m = await metrics([], { dir })
    const labels = (type, side, h = host) => ({ type, side, host: h, backend: 'file' })
    expect(m.value('processlock_lock_held', labels('backend', 'SHORT'))).toBe(1)
    expect(m.value('processlock_lock_held', labels('worker', 'LONG'))).toBe(1)
    expect(m.value('processlock_lock_held', labels('backend', 'LONG'))).toBe(0)
    expect(m.value('processlock_holder_pid', labels('backend', 'SHORT'))).toBe(backend.pid)
    expect(m.value('processlock_holder_pid', labels('worker', 'LONG'))).toBe(worker.pid)
    // Only held locks have a holder.
    expect(m.value('processlock_holder_pid', labels('backend', 'LONG'))).toBeUndefined()
    const uptime = m.value('processlock_holder_uptime_seconds', labels('backend', 'SHORT'))
    expect(uptime).toBeGreaterThanOrEqual(0)
    expect(uptime).toBeLessThan(600)
    // A file that is not a lock record is not held, by no host.
    expect(m.samples('processlock_lock_held').filter((s) => s.value === 0 && s.labels.host === '')).toHaveLength(1)
    // The held lock files' holders' fencing tokens; none for the stale file or the junk.
    const tokens = require('..')
      .listLocks({ dir })
      .filter((l) => l.state === 'held')
      .map((l) => [l.processType, Number(l.record.fencingToken)])
    expect(tokens).toHaveLength(2)
    expect(m.samples('processlock_fencing_token').map((s) => [s.labels.type, s.value])).toEqual(
      expect.arrayContaining(tokens),
    )
    expect(m.samples('processlock_fencing_token')).toHaveLength(2)

    backend.child.stdin.write('release\n')
    await backend.waitFor(/RELEASED/)
    // A released lock has no file, and so no series: alerts use absent(... == 1).
    const after = await metrics([], { dir })
    expect(after.value('processlock_lock_held', labels('backend', 'SHORT'))).toBeUndefined()
  })

  const utsTest =
    process.platform !== 'linux'
      ? onlyOn(['linux'], 'a host of its own is a UTS namespace')
      : needs(process.getuid() === 0 && havePythonPip(), 'root (a UTS namespace of its own) and python3 with pip')

  utsTest(
    'a host name with a double quote, a backslash and a line feed is escaped and read back as it is',
    async () => {
      const dir = tempDir('prom-host')
      const name = 'trader"9\\east\nrack'
      // Python sets the host name: the hostname command refuses these characters.
      const set = `import os, socket, sys; socket.sethostname(${JSON.stringify(name)}); os.execv(sys.argv[1], sys.argv[1:])`
      const p = watch(
        'unshare',
        ['--uts', 'python3', '-c', set, process.execPath, path.join(FIXTURES, 'wait-holder.js')],
        {
          env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', TYPES: 'backend' },
          stdin: 'pipe',
        },
      )
      procs.push(p)
      await p.waitFor(/READY \d+/)
      const r = await cli(['check', '--format', 'prometheus'], { dir })
      expect(r.stdout).toContain('host="trader\\"9\\\\east\\nrack"')
      const m = await metrics([], { dir })
      expect(m.value('processlock_lock_held', { type: 'backend', side: 'SHORT', host: name })).toBe(1)
      p.child.stdin.write('release\n')
      await p.waitFor(/RELEASED/)
    },
  )
})

describe('locks on a server (--url)', () => {
  const pg = usePg()
  const procs = []
  afterAll(() => {
    for (const p of procs) if (!p.ended) p.kill('SIGKILL')
  })

  const pgParserTest = havePythonPip() ? pg.test : parserTest

  pgParserTest(
    'held: PID, uptime and fencing token as the holder has them; a holder killed leaves a record that is 0',
    async () => {
      const env = (side) => ({ PROCESSLOCK_URL: pg.url, TRADE_SIDE: side })
      const short = start('pg-holder.js', { dir: tempDir('prom-pg'), env: env('SHORT'), args: ['hold'] })
      const long = start('pg-holder.js', { dir: tempDir('prom-pg'), env: env('LONG'), args: ['hold'] })
      procs.push(short, long)
      const [a, b] = [await held(short), await held(long)]
      long.kill('SIGKILL')
      await long.done()

      // The URL in the environment, as a service keeps it: one with a password on the command line
      // would add a warning line.
      const m = await metrics([], { dir: tempDir('prom-pg-none'), env: { PROCESSLOCK_URL: pg.url } })
      const host = require('node:os').hostname()
      const labels = (side) => ({ type: 'backend', side, host, backend: 'postgres' })
      expect(m.value('processlock_lock_held', labels('SHORT'))).toBe(1)
      expect(m.value('processlock_holder_pid', labels('SHORT'))).toBe(short.pid)
      expect(m.value('processlock_fencing_token', labels('SHORT'))).toBe(Number(a.fencingToken))
      const uptime = m.value('processlock_holder_uptime_seconds', labels('SHORT'))
      expect(uptime).toBeGreaterThanOrEqual(0)
      expect(uptime).toBeLessThan(600)
      // The killed holder's session is gone: its record is left, and not held.
      expect(b.pid).toBe(long.pid)
      expect(m.value('processlock_lock_held', labels('LONG'))).toBe(0)
      expect(m.value('processlock_fencing_token', labels('LONG'))).toBeUndefined()

      short.child.stdin.write('release\n')
      expect((await short.done()).code).toBe(0)
    },
  )

  test('a server that cannot be reached: exit status 1 and nothing on stdout (the last good file stays)', async () => {
    const r = await cli(['check', '--format', 'prometheus', '--url', 'postgres://nobody@127.0.0.1:1/none'], {
      dir: tempDir('prom-pg-down'),
    })
    expect(r.code).toBe(1)
    expect(r.stdout).toBe('')
    expect(r.stderr).toMatch(/^processlock: /)
  })
})
