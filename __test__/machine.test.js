'use strict'
// Which holders are this machine's, and which one is this very process. The host name a record
// carries does not decide: a host renamed after its holder started still runs that holder, whose
// start token (boot id and start time) says it is here. A process that reaches the lock through
// a second path (a bind mount) or through a second copy of the module is told that it holds the
// lock itself, not to kill its own PID. Real processes; the renamed host is a UTS namespace with
// another host name (`unshare --uts`), the second path a bind mount in a mount namespace of the
// test's own (`unshare --mount`), both as root on Linux.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { FIXTURES, ROOT, tempDir, watch, running, lockDirEntries } = require('./helpers/proc')
const { cli, startCli, CHILD } = require('./helpers/cli-proc')
const pl = require('..')
const { needs, onlyOn } = require('./helpers/skip')

const asRoot = process.platform === 'linux' && process.getuid() === 0
const can = (args) => asRoot && spawnSync('unshare', args).status === 0
const renamedTest = needs(can(['--uts', 'hostname', 'renamed-vm']), 'Linux, root and unshare --uts')
const bindTest = needs(
  can(['--mount', '--propagation', 'private', 'mount', '--bind', os.tmpdir(), os.tmpdir()]),
  'Linux, root and unshare --mount with mount --bind',
)

/** `node <fixture>` run as if on a host named `name` (this machine, another host name). */
function onRenamedHost(name, fixture, { dir, env = {}, args = [] }) {
  return watch(
    'unshare',
    ['--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', name, process.execPath, path.join(FIXTURES, fixture), ...args],
    { env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', ...env }, stdin: 'pipe' },
  )
}

const outcomes = (stdout) => [...stdout.matchAll(/^OUTCOME (.*)$/gm)].map((m) => JSON.parse(m[1]))

describe('a holder whose host name is not this one, running on this machine', () => {
  renamedTest('a conflict names it with kill advice, check sees it here, run --replace replaces it', async () => {
    expect(os.hostname()).not.toBe('renamed-vm')
    const dir = tempDir('renamed')
    const holder = onRenamedHost('renamed-vm', 'replace-holder.js', { dir, env: { HOLDER_MODE: 'drain' } })
    try {
      await holder.waitFor(/READY \d+/)
      const record = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8'))
      expect(record).toMatchObject({ pid: holder.pid, hostname: 'renamed-vm' })

      const lines = []
      expect(() => pl.acquireLock('backend', { dir, tradeSide: 'SHORT', log: (l) => lines.push(l) })).toThrow(
        pl.LockConflictError,
      )
      expect(lines).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${holder.pid}, started: '${record.started}', hostname: 'renamed-vm' }`,
        `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${holder.pid}`,
      ])

      const check = await cli(['check', 'backend'], { dir })
      expect(check.code).toBe(0)
      expect(check.stdout).toContain(`backend (SHORT): held by PID ${holder.pid} (trader-short-backend)`)
      expect(check.stdout).not.toContain('on host')

      const r = await cli(
        ['run', 'backend', '--replace', '--grace', '60000', '--', process.execPath, CHILD, 'exit', '0'],
        {
          dir,
        },
      )
      expect(r.stderr).toContain(`[PROCESS_LOCK_REPLACE] Sent SIGTERM to backend (SHORT) (PID ${holder.pid}`)
      expect(r.code).toBe(0)
      expect(r.stdout).toMatch(/CHILD READY \d+/)
      const end = await holder.done()
      expect(end).toMatchObject({ code: 0, signal: null })
      expect(end.stdout).toContain('DRAINING\nDRAINED\n')
      expect(lockDirEntries(dir)).toEqual([])
    } finally {
      holder.kill('SIGKILL')
      await holder.done()
    }
  })
})

describe('a conflict with this very process', () => {
  bindTest('the same directory through a bind mount: it holds the lock itself, no kill advice', async () => {
    const real = tempDir('bind-real')
    const other = tempDir('bind-other')
    const p = watch(
      'unshare',
      [
        '--mount',
        '--propagation',
        'private',
        'sh',
        '-c',
        'mount --bind "$0" "$1" && shift && exec "$@"',
        real,
        other,
        process.execPath,
        path.join(FIXTURES, 'acquire-each.js'),
        real,
        other,
      ],
      { env: { ...process.env, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '' }, doneMs: 30000 },
    )
    const r = await p.done()
    const [first, second] = outcomes(r.stdout)
    expect(first).toMatchObject({ ok: true, info: { pid: p.pid } })
    expect(second).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', holder: { pid: p.pid } })
    expect(r.stderr).toContain(
      '[PROCESS_LOCK_CONFLICT] That is this very process: it already holds backend (SHORT) through another path to the lock directory (a bind mount, a second mount) or another copy of this module; take the lock through one path and one copy',
    )
    expect(r.stderr).not.toContain(`kill ${p.pid}`)
    // Its exit released the lock through the path it took it by.
    expect(lockDirEntries(real)).toEqual([])
    expect(running(p.pid)).toBe(false)
  })

  test('a second copy of the module in the process: it holds the lock itself, no kill advice', async () => {
    const copy = path.join(tempDir('copy'), 'processlock')
    fs.mkdirSync(copy)
    for (const f of ['package.json', 'index.js', 'binding.js', 'lib']) {
      fs.cpSync(path.join(ROOT, f), path.join(copy, f), { recursive: true })
    }
    for (const f of fs.readdirSync(ROOT).filter((n) => n.endsWith('.node'))) {
      fs.copyFileSync(path.join(ROOT, f), path.join(copy, f))
    }
    const dir = tempDir('copies')
    const p = watch(process.execPath, [path.join(FIXTURES, 'two-copies.js'), copy], {
      env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '' },
      doneMs: 30000,
    })
    const r = await p.done()
    expect(r.code).toBe(0)
    const [first, second] = outcomes(r.stdout)
    expect(first).toMatchObject({ ok: true, info: { pid: p.pid } })
    expect(second).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', holder: { pid: p.pid } })
    expect(r.stderr).toContain('[PROCESS_LOCK_CONFLICT] That is this very process: it already holds backend (SHORT)')
    expect(r.stderr).not.toContain(`kill ${p.pid}`)
    expect(lockDirEntries(dir)).toEqual([])
  })
})

describe('a holder whose recorded process has exited', () => {
  const unixTest = process.platform === 'win32' ? onlyOn(['linux', 'darwin'], 'signals and POSIX processes') : test
  unixTest('a process it started still holds the lock: the dead PID is not to be killed', async () => {
    const dir = tempDir('exited-holder')
    // `processlock run` ends with its command, a shell that leaves a sleeper holding the lock.
    const r = await startCli(['run', 'backend', '-q', '--', '/bin/sh', '-c', 'sleep 30 >/dev/null 2>&1 & echo $!'], {
      dir,
    }).exited()
    expect(r.code).toBe(0)
    const sleeper = Number(r.stdout.trim())
    try {
      const file = path.join(dir, 'backend.short.lock')
      const record = JSON.parse(fs.readFileSync(file, 'utf8'))
      expect(running(record.pid)).toBe(false)
      const lines = []
      expect(() => pl.acquireLock('backend', { dir, tradeSide: 'SHORT', log: (l) => lines.push(l) })).toThrow(
        pl.LockConflictError,
      )
      expect(lines).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${record.pid}, started: '${record.started}' } has exited, but a process it started still holds the lock`,
        `[PROCESS_LOCK_CONFLICT] To find it, run: fuser -v ${file}`,
      ])
    } finally {
      process.kill(sleeper, 'SIGKILL')
    }
  })
})
