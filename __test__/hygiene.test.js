'use strict'
// Hostile and careless surroundings, with real processes and files: lock directories other users
// could tamper with, files of other programs next to ours, records crafted to rewrite a terminal
// or forge log lines, holders on another host, and the scriptable `processlock check <type>`.
// Needs `npm run build` first.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const pl = require('..')
const { ROOT, tempDir, lockDirEntries, watch, deadPid } = require('./helpers/proc')
const { cli, startHolder, startRun } = require('./helpers/cli-proc')
const { needs } = require('./helpers/skip')

const NOBODY = 65534
const isRoot = process.getuid && process.getuid() === 0
const SHORT = (dir, extra = {}) => ({ dir, tradeSide: 'SHORT', log: false, ...extra })
const lockFile = (dir, name = 'backend.short.lock') => path.join(dir, name)
const mode = (p) => fs.statSync(p).mode & 0o7777
// C0 controls (ESC, BEL, CR, LF...), DEL and C1: none may come out raw from a record.
// biome-ignore lint/suspicious/noControlCharactersInRegex: these control characters are what the test looks for
const RAW_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/

/** Every entry of `dir` with its content, mode and mtime: to prove nothing was touched. */
function snapshot(dir) {
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => {
      const p = path.join(dir, name)
      const st = fs.lstatSync(p)
      return [name, st.mode, st.mtimeMs, fs.readFileSync(p, 'utf8')]
    })
}

/** A directory with what an acquirer would clean up: a dead holder's record and an orphan temp file. */
async function dirWithLeftovers(label) {
  const dir = tempDir(label)
  const dead = await deadPid()
  fs.writeFileSync(
    lockFile(dir),
    JSON.stringify({
      pid: dead,
      started: '2025-10-18T22:38:49.123Z',
      tradeSide: 'SHORT',
      processName: 'trader-short-backend',
    }),
  )
  fs.writeFileSync(path.join(dir, `.backend.short.lock.${dead}.0.tmp`), '{}')
  return dir
}

/** A live process on this host that has nothing to do with locks, named by crafted records. */
async function sleeper() {
  const p = watch('sh', ['-c', 'echo SLEEPING; exec sleep 60'])
  await p.waitFor('SLEEPING')
  return p
}

/** `flock -x file` held by a real process until `release()`. */
async function flockHolder(file) {
  const p = watch('flock', ['-x', file, '-c', 'echo LOCKED; exec cat'], { stdin: 'pipe' })
  await p.waitFor('LOCKED')
  return {
    pid: p.pid,
    async release() {
      p.child.stdin.end()
      await p.done()
    },
  }
}

function hasFlock() {
  try {
    execFileSync('flock', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** Acquires in this process, collecting the log lines, and returns the thrown error with them. */
function conflictOf(dir, extra) {
  const lines = []
  let error
  try {
    pl.acquireLock('backend', SHORT(dir, { log: (line) => lines.push(line), ...extra }))
  } catch (e) {
    error = e
  }
  expect(error).toBeInstanceOf(pl.LockConflictError)
  return { error, lines }
}

describe('permissions', () => {
  test('under umask 000 the lock directory (and its parents) is created 0750 and the lock file 0600', async () => {
    const base = tempDir('perm-umask')
    const dir = path.join(base, 'runtime', 'locks')
    const script = `process.umask(0)
const pl = require(${JSON.stringify(ROOT)})
pl.acquireLock('backend', { dir: process.argv[1], tradeSide: 'SHORT', log: false })
console.log('HELD')
setInterval(() => {}, 1 << 30)`
    const holder = watch(process.execPath, ['-e', script, dir])
    await holder.waitFor('HELD')
    expect(mode(path.join(base, 'runtime'))).toBe(0o750)
    expect(mode(dir)).toBe(0o750)
    expect(mode(lockFile(dir))).toBe(0o600)
    holder.kill('SIGTERM')
    await holder.done()
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('a world-writable lock directory without the sticky bit is refused, and nothing in it is touched', async () => {
    const dir = await dirWithLeftovers('perm-loose')
    fs.chmodSync(dir, 0o777)
    const before = snapshot(dir)

    let error
    try {
      pl.acquireLock('backend', SHORT(dir))
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(Error)
    expect(error).toBeInstanceOf(pl.LockUnsafeDirError)
    expect(error).toMatchObject({ name: 'LockUnsafeDirError', code: 'LOCK_UNSAFE_DIR', path: dir })
    expect(error.message).toContain(`lock directory ${dir} has unsafe permissions (0777)`)
    expect(error.message).toContain(`chmod o-w '${dir}'`)

    // The command refuses to run a service there, and to clear it; it only warns when looking.
    const run = await startRun(['backend'], ['exit', '0'], { dir }).done()
    expect(run.code).toBe(1)
    expect(run.stderr).toContain('LOCK_UNSAFE_DIR')
    const clear = await cli(['clear', '--force'], { dir })
    expect(clear.code).toBe(1)
    expect(clear.stderr).toContain('LOCK_UNSAFE_DIR')
    const check = await cli(['check'], { dir })
    expect(check.code).toBe(0)
    expect(check.stderr).toContain('processlock: warning: LOCK_UNSAFE_DIR')
    expect(check.stdout).toContain('backend.short.lock')
    expect(snapshot(dir)).toEqual(before)
    expect(mode(dir)).toBe(0o777)
  })

  test('a sticky shared directory like /tmp is refused, a directory of our own inside it is not', async () => {
    const dir = await dirWithLeftovers('perm-sticky')
    fs.chmodSync(dir, 0o1777)
    const before = snapshot(dir)
    expect(() => pl.acquireLock('backend', SHORT(dir))).toThrow(
      expect.objectContaining({
        code: 'LOCK_UNSAFE_DIR',
        message: expect.stringContaining(`mkdir -m 0750 '${dir}/<service>'`),
      }),
    )
    expect(snapshot(dir)).toEqual(before)
    const own = path.join(dir, 'backend')
    fs.mkdirSync(own, { mode: 0o750 })
    expect(pl.acquireLock('backend', SHORT(own)).pid).toBe(process.pid)
    expect(pl.releaseLock('backend', SHORT(own))).toBe(true)
    expect(lockDirEntries(own)).toEqual([])
  })

  needs(isRoot, 'root, to give a directory to another user')(
    'a lock directory owned by another user is refused, for root too; its owner uses it',
    async () => {
      const dir = await dirWithLeftovers('perm-owner')
      fs.chmodSync(dir, 0o755)
      for (const name of fs.readdirSync(dir)) fs.chownSync(path.join(dir, name), NOBODY, NOBODY)
      fs.chownSync(dir, NOBODY, NOBODY)
      const before = snapshot(dir)
      expect(() => pl.acquireLock('backend', SHORT(dir))).toThrow(
        expect.objectContaining({
          code: 'LOCK_UNSAFE_DIR',
          message: expect.stringContaining('is owned by uid 65534, not by'),
        }),
      )
      expect(snapshot(dir)).toEqual(before)

      const script = `const pl = require(${JSON.stringify(ROOT)})
console.log(JSON.stringify(pl.acquireLock('backend', { dir: process.argv[1], tradeSide: 'SHORT', log: false })))`
      const owner = await watch(process.execPath, ['-e', script, dir], { uid: NOBODY, gid: NOBODY }).done()
      expect(owner.code).toBe(0)
      expect(JSON.parse(owner.stdout)).toMatchObject({ processName: 'trader-short-backend' })
    },
  )
})

describe('processlock clear and files that are not lock records', () => {
  test("another program's *.lock and an empty *.lock survive clear and clear --force, listed as unknown", async () => {
    const dir = tempDir('clear-unknown')
    fs.writeFileSync(lockFile(dir, 'other.lock'), 'state of another program\n')
    fs.writeFileSync(lockFile(dir, 'x.lock'), '')
    const holder = await startHolder(dir, 'backend')
    const stale = await startHolder(dir, 'worker')
    stale.kill('SIGKILL')
    await stale.done()

    const r = await cli(['clear'], { dir })
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^kept unknown {4}other\.lock \(not a lock record: .+\)$/m)
    expect(r.stdout).toContain('kept unknown    x.lock (empty file)')
    expect(r.stdout).toContain(`removed stale   worker.short.lock (PID ${stale.pid} is not running)`)
    expect(r.stdout).toContain(
      `kept            backend.short.lock (held by running PID ${holder.pid}, trader-short-backend)`,
    )
    expect(r.stdout).toContain('2 file(s) are not lock records of processlock and were kept')
    expect(lockDirEntries(dir).sort()).toEqual(['backend.short.lock', 'other.lock', 'x.lock'])

    const forced = await cli(['clear', '--force'], { dir })
    expect(forced.code).toBe(0)
    expect(forced.stdout).toContain(`removed HELD    backend.short.lock (PID ${holder.pid} keeps running)`)
    expect(forced.stdout).toContain('kept unknown    x.lock (empty file)')
    expect(forced.stdout).toMatch(/^kept unknown {4}other\.lock /m)
    expect(lockDirEntries(dir).sort()).toEqual(['other.lock', 'x.lock'])
    expect(fs.readFileSync(lockFile(dir, 'other.lock'), 'utf8')).toBe('state of another program\n')
    expect(fs.readFileSync(lockFile(dir, 'x.lock'), 'utf8')).toBe('')
    holder.kill('SIGTERM')
    await holder.done()
  })
})

describe('records crafted to rewrite the terminal or forge log lines', () => {
  const FORGED_STARTED = '\u001b[2J\n[FATAL] forged'
  const FORGED_NAME = '\u001b]0;owned\u0007\r\n[PROCESS_LOCK_ACQUIRED] forged\u009b2J\u007f'

  test('conflict lines, error messages and processlock check escape them; JSON stays exact JSON', async () => {
    const dir = tempDir('hostile-record')
    const live = await sleeper()
    try {
      const record = {
        pid: live.pid,
        started: FORGED_STARTED,
        tradeSide: 'SHORT',
        processName: FORGED_NAME,
        hostname: os.hostname(),
      }
      fs.writeFileSync(lockFile(dir), JSON.stringify(record))

      const { error, lines } = conflictOf(dir)
      expect(lines).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${live.pid}, started: '\\x1B[2J\\n[FATAL] forged' }`,
        `[PROCESS_LOCK_CONFLICT] Its lock file holds only a PID (the older format): see what PID ${live.pid} runs first (ps -p ${live.pid} -o args=). If it is backend (SHORT), to force restart, run: kill ${live.pid}; if not, the PID was reused: remove the file (rm '${lockFile(dir)}')`,
      ])
      expect(error.message).not.toMatch(RAW_CONTROL)
      // The record itself is returned as it is: it is data, not output.
      expect(error.holder).toMatchObject({ started: FORGED_STARTED, processName: FORGED_NAME })

      const run = await startRun(['backend'], ['exit', '0'], { dir }).done()
      expect(run.code).toBe(1)
      expect(run.stderr).toContain(
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${live.pid}, started: '\\x1B[2J\\n[FATAL] forged' }`,
      )

      for (const args of [['check'], ['check', 'backend'], ['clear']]) {
        const out = await cli(args, { dir })
        const text = out.stdout + out.stderr
        expect(text).not.toMatch(RAW_CONTROL)
        expect(
          text.split('\n').filter((l) => l.startsWith('[FATAL]') || l.startsWith('[PROCESS_LOCK_ACQUIRED]')),
        ).toEqual([])
        if (args[0] === 'check')
          expect(text).toContain('\\x1B]0;owned\\x07\\r\\n[PROCESS_LOCK_ACQUIRED] forged\\x9B2J\\x7F')
      }

      const json = await cli(['check', '--json'], { dir })
      expect(json.stdout).not.toMatch(RAW_CONTROL)
      const [lock] = JSON.parse(json.stdout)
      expect(lock).toMatchObject({ state: 'held', pid: live.pid, started: FORGED_STARTED, processName: FORGED_NAME })
      const one = JSON.parse((await cli(['check', 'backend', '--json'], { dir })).stdout)
      expect(one).toMatchObject({ held: true, started: FORGED_STARTED, processName: FORGED_NAME })
    } finally {
      live.kill('SIGKILL')
      await live.done()
    }
  })

  test('a file name with escape sequences is printed escaped', async () => {
    const dir = tempDir('hostile-name')
    fs.writeFileSync(path.join(dir, 'x\u001b[2J\n[FATAL] y.lock'), '')
    for (const args of [['check'], ['clear']]) {
      const out = await cli(args, { dir })
      expect(out.stdout + out.stderr).not.toMatch(RAW_CONTROL)
      expect(out.stdout).toContain('x\\x1B[2J\\n[FATAL] y.lock')
    }
  })

  test('a process name that is too long or has control characters is refused before anything is written', async () => {
    const dir = path.join(tempDir('hostile-option'), 'locks')
    for (const processName of ['x'.repeat(5 * 1024 * 1024), 'y'.repeat(257), '\u001b[2J', 'api\n[FATAL] forged']) {
      let error
      try {
        pl.acquireLock('backend', SHORT(dir, { processName }))
      } catch (e) {
        error = e
      }
      expect(error).toBeInstanceOf(pl.LockInvalidOptionError)
      expect(error.code).toBe('LOCK_INVALID_OPTION')
      expect(error.message).toMatch(/^LOCK_INVALID_OPTION: processName must /)
      expect(error.message.length).toBeLessThan(200)
      await expect(pl.acquireLockAsync('backend', SHORT(dir, { processName }))).rejects.toBeInstanceOf(
        pl.LockInvalidOptionError,
      )
      expect(fs.existsSync(dir)).toBe(false)
    }
    const longest = 'z'.repeat(256)
    expect(pl.acquireLock('backend', SHORT(dir, { processName: longest })).processName).toBe(longest)
    expect(pl.getLockInfo('backend', SHORT(dir)).processName).toBe(longest)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)

    const r = await cli(['run', 'backend', '--name', 'a\u001b[2Jb', '--', process.execPath, '-e', '0'], { dir })
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('LOCK_INVALID_OPTION: processName must not contain control characters')
    expect(lockDirEntries(dir)).toEqual([])
  })
})

needs(hasFlock(), 'the flock command (util-linux)').describe('a holder on another host', () => {
  const HOST = 'trader-9.elsewhere'

  test('the conflict names its host and advises no kill; check shows the host', async () => {
    const dir = tempDir('remote-holder')
    // A container with its own host name sharing this volume: same kernel, so its lock is real.
    const record = {
      pid: 4242,
      started: '2025-10-18T22:38:49.123Z',
      tradeSide: 'SHORT',
      processName: 'trader-short-backend',
      processType: 'backend',
      hostname: HOST,
      startToken: 'linux:other-boot:1',
      protocol: 'processlock/1',
    }
    fs.writeFileSync(lockFile(dir), JSON.stringify(record))
    const holder = await flockHolder(lockFile(dir))
    try {
      const { error, lines } = conflictOf(dir)
      expect(lines).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: 4242, started: '2025-10-18T22:38:49.123Z', hostname: '${HOST}' }`,
        `[PROCESS_LOCK_CONFLICT] It runs on host '${HOST}', not on this one: stop it there (its PID means nothing here)`,
      ])
      expect(error.message).toBe(`LOCK_CONFLICT: backend (SHORT) is already running on host ${HOST} (PID: 4242)`)

      const run = await startRun(['backend'], ['exit', '0'], { dir }).done()
      expect(run.code).toBe(1)
      expect(run.stderr).toContain(`It runs on host '${HOST}'`)
      expect(run.stderr).not.toContain('kill 4242')

      const check = await cli(['check'], { dir })
      const header = check.stdout.split('\n')[2]
      expect(header).toMatch(/^TYPE\s+SIDE\s+PID\s+STARTED\s+UPTIME\s+STATE\s+PROCESS\s+HOST\s+FILE$/)
      expect(check.stdout).toMatch(
        new RegExp(
          `^backend\\s+SHORT\\s+4242\\s+\\S+\\s+\\d+d \\d+h\\s+held\\s+trader-short-backend\\s+${HOST.replace(/\./g, '\\.')}\\s+backend\\.short\\.lock$`,
          'm',
        ),
      )
      const one = await cli(['check', 'backend'], { dir })
      expect(one.code).toBe(0)
      expect(one.stdout).toContain(`backend (SHORT): held by PID 4242 on host ${HOST} (trader-short-backend)`)
      const clear = await cli(['clear'], { dir })
      expect(clear.stdout).toContain(
        `kept            backend.short.lock (held by PID 4242 on host ${HOST}, trader-short-backend)`,
      )
      expect(clear.stdout).toContain('stop those processes there')
      expect(clear.stdout).not.toContain('kill 4242')
    } finally {
      await holder.release()
    }
  })

  test('a holder on this host keeps the original lines, kill advice included', async () => {
    const dir = tempDir('local-holder')
    const live = await startHolder(dir)
    try {
      const { started } = JSON.parse(fs.readFileSync(lockFile(dir), 'utf8'))
      const { error, lines } = conflictOf(dir)
      expect(lines).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${live.pid}, started: '${started}' }`,
        `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${live.pid}`,
      ])
      expect(error.message).toBe(`LOCK_CONFLICT: backend (SHORT) is already running (PID: ${live.pid})`)
      const check = await cli(['check'], { dir })
      expect(check.stdout.split('\n')[2]).toMatch(
        /^TYPE\s+SIDE\s+PID\s+STARTED\s+UPTIME\s+STATE\s+PROCESS\s+TOKEN\s+FILE$/,
      )
    } finally {
      live.kill('SIGKILL')
      await live.done()
    }
  })
})

describe('processlock check <type>: a verdict in the exit status', () => {
  const JSON_KEYS = [
    'file',
    'processType',
    'tradeSide',
    'state',
    'held',
    'pid',
    'started',
    'uptimeMs',
    'processName',
    'hostname',
    'fencingToken',
    'problem',
  ]

  async function verdict(dir, args, opts = {}) {
    const text = await cli(['check', ...args], { dir, ...opts })
    const json = await cli(['check', ...args, '--json'], { dir, ...opts })
    expect(json.code).toBe(text.code)
    const object = JSON.parse(json.stdout)
    expect(Object.keys(object)).toEqual(JSON_KEYS)
    return { code: text.code, text: text.stdout, json: object }
  }

  test('0 while a live process holds it, 1 when there is no lock, a stale one or not a lock record', async () => {
    const dir = tempDir('check-one')
    let v = await verdict(dir, ['backend'])
    expect(v.code).toBe(1)
    expect(v.text).toBe(`backend (SHORT): not held (no lock file)\n  file: ${lockFile(dir)}\n`)
    expect(v.json).toMatchObject({
      file: lockFile(dir),
      processType: 'backend',
      tradeSide: 'SHORT',
      state: 'absent',
      held: false,
      pid: null,
    })

    const holder = await startHolder(dir, 'backend')
    v = await verdict(dir, ['backend'])
    expect(v.code).toBe(0)
    expect(v.text).toMatch(
      new RegExp(
        `^backend \\(SHORT\\): held by PID ${holder.pid} \\(trader-short-backend\\) since \\S+Z, up \\d+s, fencing token [1-9][0-9]*\\n  file: ${lockFile(dir).replace(/[.]/g, '\\.')}\\n$`,
      ),
    )
    expect(v.json).toMatchObject({
      state: 'held',
      held: true,
      pid: holder.pid,
      processName: 'trader-short-backend',
      hostname: os.hostname(),
    })

    // The side: --side, else $TRADE_SIDE.
    expect((await verdict(dir, ['backend', '--side', 'LONG'])).code).toBe(1)
    expect((await verdict(dir, ['backend'], { env: { TRADE_SIDE: 'LONG' } })).code).toBe(1)
    expect((await verdict(dir, ['backend', '--side=short'], { env: { TRADE_SIDE: 'LONG' } })).code).toBe(0)
    expect((await verdict(dir, ['worker'])).code).toBe(1)

    holder.kill('SIGKILL')
    await holder.done()
    v = await verdict(dir, ['backend'])
    expect(v.code).toBe(1)
    expect(v.text).toContain(`backend (SHORT): not held (stale: PID ${holder.pid} is not running)`)
    expect(v.json).toMatchObject({ state: 'stale', held: false, pid: holder.pid })

    fs.writeFileSync(lockFile(dir), 'garbage')
    v = await verdict(dir, ['backend'])
    expect(v.code).toBe(1)
    expect(v.json).toMatchObject({ state: 'invalid', held: false })
    expect(v.json.problem).toContain('not a lock record')
    // Looking changes nothing.
    expect(fs.readFileSync(lockFile(dir), 'utf8')).toBe('garbage')
  })

  test('a lock held through processlock run: 0, then 1 once the command ended', async () => {
    const dir = tempDir('check-run')
    const run = startRun(['backend'], ['hold'], { dir })
    const pid = Number((await run.waitFor(/CHILD READY (\d+)/))[1])
    const v = await verdict(dir, ['backend'])
    expect(v).toMatchObject({ code: 0, json: { held: true, pid } })
    run.kill('SIGTERM')
    await run.done()
    expect((await verdict(dir, ['backend'])).code).toBe(1)
  })

  test('3 when it cannot tell; 2 on a usage error; the listing exits 0 whatever it finds', async () => {
    const base = tempDir('check-error')
    const file = path.join(base, 'a-file')
    fs.writeFileSync(file, '')
    const r = await cli(['check', 'backend', '--dir', path.join(file, 'locks')], { dir: base })
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('LOCK_IO')
    expect((await cli(['check', 'backend', 'worker'], { dir: base })).code).toBe(2)
    expect((await cli(['check', '--side', 'SHORT'], { dir: base })).code).toBe(2)
    expect((await cli(['check', 'bad.name'], { dir: base })).code).toBe(2)
    fs.writeFileSync(lockFile(base), '')
    expect((await cli(['check'], { dir: base })).code).toBe(0)
  })
})
