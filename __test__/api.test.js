'use strict'
// The API's promises and its answers to bad input and bad state, against real files and
// real processes.
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const pl = require('..')
const { start, watch, tempDir, deadPid, ROOT, lockDirEntries } = require('./helpers/proc')
const { stageForOtherUsers } = require('./helpers/stage')
const { SHORT, lockFile, recordOf, asInfo, holder, stop } = require('./helpers/lock')
const { needs, onlyOn } = require('./helpers/skip')

function capture() {
  const lines = []
  return { lines, log: (line, level) => lines.push(`${level} ${line}`) }
}

/** This process takes the lock in `dir` over from dead `pid`, says so first, and lets it go. */
function expectTakeoverFrom(dir, pid) {
  const c = capture()
  expect(pl.acquireLock('backend', SHORT(dir, { log: c.log })).pid).toBe(process.pid)
  expect(c.lines[0]).toBe(`warn [PROCESS_LOCK_STALE] Found stale lock file for PID ${pid}, removing...`)
  expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
}

/** A live process unrelated to any lock, standing in for whoever got a recycled PID. */
function bystander() {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' })
  return child
}

function ownToken(pid) {
  // The same token the core writes (Linux): boot id and start time in clock ticks.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const ticks = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  return `linux:${boot}:${ticks}`
}

/** For tests that compute a start token from /proc: elsewhere they are skipped, saying why. */
const linuxOnly = onlyOn(['linux'], 'the start token is read from /proc')

describe('API behaviour', () => {
  test('acquire is idempotent in the holding process; release reports what it did', () => {
    const dir = tempDir('api-idem')
    const c = capture()
    const a = pl.acquireLock('backend', SHORT(dir, { log: c.log }))
    const b = pl.acquireLock('backend', SHORT(dir, { log: c.log }))
    expect(b).toEqual(a)
    expect(c.lines.filter((l) => l.includes('ACQUIRED'))).toHaveLength(1)
    expect(pl.getLockInfo('backend', SHORT(dir))).toEqual(a)
    expect(pl.releaseLock('backend', SHORT(dir, { log: c.log }))).toBe(true)
    expect(c.lines).toContain(
      `info [PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${process.pid} }`,
    )
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(false)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('the record: legacy keys first, side upper-cased, name defaults and options', () => {
    const dir = tempDir('api-record')
    const info = pl.acquireLock('worker', { dir, tradeSide: 'long', log: false })
    expect(info).toMatchObject({
      pid: process.pid,
      tradeSide: 'LONG',
      processName: 'trader-long-worker',
      processType: 'worker',
      protocol: 'processlock/1',
    })
    const text = fs.readFileSync(path.join(dir, 'worker.long.lock'), 'utf8')
    expect(Object.keys(JSON.parse(text)).slice(0, 4)).toEqual(['pid', 'started', 'tradeSide', 'processName'])
    expect(text).toMatch(/^\{\n {2}"pid": \d+,\n/)
    pl.releaseLock('worker', { dir, tradeSide: 'long', log: false })
    const named = pl.acquireLock('worker', { dir, tradeSide: null, processName: 'my-worker', log: false })
    expect(named).toMatchObject({ tradeSide: null, processName: 'my-worker' })
    expect(fs.existsSync(path.join(dir, 'worker.lock'))).toBe(true)
    pl.releaseLock('worker', { dir, tradeSide: null, log: false })
  })

  test('releaseLock never removes a lock held by another process', async () => {
    const dir = tempDir('api-foreign')
    const p = await holder(dir)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(false)
    expect(recordOf(lockFile(dir)).pid).toBe(p.pid)
    const info = pl.getLockInfo('backend', SHORT(dir))
    expect(info.pid).toBe(p.pid)
    const err = (() => {
      try {
        pl.acquireLock('backend', SHORT(dir))
      } catch (e) {
        return e
      }
    })()
    expect(err).toBeInstanceOf(Error)
    expect(err).toBeInstanceOf(pl.LockConflictError)
    expect(err.code).toBe('LOCK_CONFLICT')
    expect(err.message).toBe(`LOCK_CONFLICT: backend (SHORT) is already running (PID: ${p.pid})`)
    expect(info.fencingToken).toMatch(/^[1-9][0-9]*$/)
    expect(err.holder).toEqual(info)
    expect(err.lockFile).toBe(lockFile(dir))
    await stop(p)
    expect(pl.getLockInfo('backend', SHORT(dir))).toBe(null)
  })

  test('getLockInfo is null for a stale lock and leaves it for the next acquirer', async () => {
    const dir = tempDir('api-stale-info')
    const p = await holder(dir)
    await stop(p, 'SIGKILL')
    expect(pl.getLockInfo('backend', SHORT(dir))).toBe(null)
    expect(fs.existsSync(lockFile(dir))).toBe(true)
    expectTakeoverFrom(dir, p.pid)
  })

  test("forceRemoveLock: the old holder, still running, does not remove the new holder's file", async () => {
    const dir = tempDir('api-force')
    const old = await holder(dir)
    expect(pl.forceRemoveLock('backend', SHORT(dir))).toBe(true)
    expect(pl.forceRemoveLock('backend', SHORT(dir))).toBe(false)
    const mine = pl.acquireLock('backend', SHORT(dir))
    const r = await stop(old) // it releases at its exit
    expect(r.signal).toBe('SIGTERM')
    expect(asInfo(recordOf(lockFile(dir)), mine.fencingToken)).toEqual(mine)
    expect(pl.getLockInfo('backend', SHORT(dir)).pid).toBe(process.pid)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
  })

  test('listLocks: held, stale and invalid files, nothing else', async () => {
    const dir = tempDir('api-list')
    const p = await holder(dir)
    const dead = start('ending.js', { dir, args: ['wait'], env: { TRADE_SIDE: 'LONG', PROCESSLOCK_LOG: 'silent' } })
    await dead.waitFor('READY')
    await stop(dead, 'SIGKILL')
    fs.writeFileSync(path.join(dir, 'worker.lock'), '{"pid": 12')
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'not a lock')
    fs.writeFileSync(path.join(dir, '.backend.short.lock.1.1.tmp'), '')
    const list = pl.listLocks({ dir })
    expect(list.map((l) => [path.basename(l.file), l.state, l.record && l.record.pid])).toEqual([
      ['backend.long.lock', 'stale', dead.pid],
      ['backend.short.lock', 'held', p.pid],
      ['worker.lock', 'invalid', null],
    ])
    expect(list[2].problem).toMatch(/not a lock record/)
    expect(list[1]).toMatchObject({ processType: 'backend', tradeSide: 'SHORT', isOwn: false })
    await stop(p)
  })

  test('the first acquire removes temp files left by acquirers killed half-way, once', async () => {
    const dir = tempDir('api-orphans')
    const orphan = path.join(dir, `.backend.short.lock.${await deadPid()}.0.tmp`)
    fs.writeFileSync(orphan, '')
    const live = path.join(dir, `.backend.short.lock.${process.pid}.999999.tmp`)
    fs.writeFileSync(live, '') // our own PID: never swept
    const c = capture()
    pl.acquireLock('backend', SHORT(dir, { log: c.log }))
    expect(c.lines).toContain('warn [PROCESS_LOCK_STALE] Removed 1 temporary file(s) left by acquirers that died')
    expect(fs.existsSync(orphan)).toBe(false)
    expect(fs.existsSync(live)).toBe(true)
    pl.releaseLock('backend', SHORT(dir))
    fs.unlinkSync(live)
  })

  test('ESM import and the package name resolve to the same API', () => {
    const r = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "import { acquireLock, LockConflictError } from '@trader/processlock'; import cjs from '@trader/processlock'; console.log(typeof acquireLock, acquireLock === cjs.acquireLock, typeof LockConflictError)",
      ],
      { cwd: ROOT, encoding: 'utf8' },
    )
    expect(r.stderr).toBe('')
    expect(r.stdout.trim()).toBe('function true function')
  })

  test('default directory without an entry script: runtime/locks under the package.json nearest the working directory', async () => {
    const project = tempDir('api-project')
    fs.writeFileSync(path.join(project, 'package.json'), '{"name":"app"}')
    const sub = path.join(project, 'server', 'lib')
    fs.mkdirSync(sub, { recursive: true })
    // `node -e` has no entry script.
    const code = `const { acquireLock } = require(${JSON.stringify(ROOT)}); console.log(JSON.stringify({ ok: !!acquireLock('backend', { log: false }) }))`
    const r = spawnSync(process.execPath, ['-e', code], {
      cwd: sub,
      encoding: 'utf8',
      env: { ...process.env, PROCESSLOCK_DIR: '', TRADE_SIDE: 'SHORT' },
    })
    expect(r.stderr).toBe('')
    expect(JSON.parse(r.stdout).ok).toBe(true)
    // It exited, so it released; the directory was created where expected.
    expect(fs.existsSync(path.join(project, 'runtime', 'locks'))).toBe(true)
    expect(fs.existsSync(path.join(sub, 'runtime'))).toBe(false)
  })
})

describe('bad input', () => {
  test.each([['bad name'], ['../x'], [''], ['a.b'], ['x'.repeat(65)], ['a/b'], ['é']])(
    'process type %j: LOCK_INVALID_NAME, nothing on disk',
    (name) => {
      const dir = path.join(tempDir('api-name'), 'locks')
      for (const fn of [pl.acquireLock, pl.releaseLock, pl.getLockInfo, pl.forceRemoveLock]) {
        let err
        try {
          fn(name, SHORT(dir))
        } catch (e) {
          err = e
        }
        expect(err).toBeInstanceOf(Error)
        expect(err).toBeInstanceOf(pl.LockInvalidNameError)
        expect(err.code).toBe('LOCK_INVALID_NAME')
      }
      expect(fs.existsSync(dir)).toBe(false)
    },
  )

  test('bad side, bad types, bad options', () => {
    const dir = path.join(tempDir('api-types'), 'locks')
    const codeOf = (f) => {
      try {
        f()
      } catch (e) {
        expect(e).toBeInstanceOf(Error)
        return e.code
      }
      return 'no error'
    }
    expect(codeOf(() => pl.acquireLock('backend', { dir, tradeSide: 'lo.ng' }))).toBe('LOCK_INVALID_NAME')
    expect(codeOf(() => pl.acquireLock(42, { dir }))).toBe('LOCK_INVALID_NAME')
    expect(codeOf(() => pl.acquireLock(undefined))).toBe('LOCK_INVALID_NAME')
    expect(codeOf(() => pl.acquireLock('backend', 'nope'))).toBe('LOCK_INVALID_OPTION')
    expect(codeOf(() => pl.acquireLock('backend', { dir: 5 }))).toBe('LOCK_INVALID_OPTION')
    expect(codeOf(() => pl.acquireLock('backend', { dir, log: 'loud' }))).toBe('LOCK_INVALID_OPTION')
    expect(codeOf(() => pl.acquireLock('backend', { dir, waitMs: -1 }))).toBe('LOCK_INVALID_OPTION')
    expect(codeOf(() => pl.listLocks({ dir: {} }))).toBe('LOCK_INVALID_OPTION')
    expect(fs.existsSync(dir)).toBe(false)
  })

  test('the lock directory is a file: LOCK_IO ENOTDIR, the file untouched', () => {
    const file = path.join(tempDir('api-dirfile'), 'locks')
    fs.writeFileSync(file, 'precious')
    let err
    try {
      pl.acquireLock('backend', SHORT(file))
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(pl.LockIoError)
    expect(err).toMatchObject({ code: 'LOCK_IO', osCode: 'ENOTDIR', syscall: 'mkdir', path: file })
    expect(err.errno).toBeLessThan(0)
    expect(fs.readFileSync(file, 'utf8')).toBe('precious')
  })

  test('a directory at the lock path: LOCK_NOT_A_FILE, left untouched', () => {
    const dir = tempDir('api-isdir')
    fs.mkdirSync(lockFile(dir))
    fs.writeFileSync(path.join(lockFile(dir), 'inside'), 'keep')
    for (const fn of [pl.acquireLock, pl.forceRemoveLock]) {
      let err
      try {
        fn('backend', SHORT(dir))
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(pl.LockNotAFileError)
      expect(err.code).toBe('LOCK_NOT_A_FILE')
    }
    expect(() => pl.getLockInfo('backend', SHORT(dir))).toThrow(/is a directory/)
    expect(pl.listLocks({ dir })[0]).toMatchObject({ state: 'invalid' })
    expect(fs.readFileSync(path.join(lockFile(dir), 'inside'), 'utf8')).toBe('keep')
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
  })

  test('a symlink at the lock path is never followed', () => {
    const dir = tempDir('api-symlink')
    const outside = path.join(tempDir('api-outside'), 'victim.json')
    fs.writeFileSync(outside, JSON.stringify({ pid: 1, started: new Date().toISOString() }))
    const before = fs.readFileSync(outside, 'utf8')
    fs.symlinkSync(outside, lockFile(dir))
    let err
    try {
      pl.acquireLock('backend', SHORT(dir))
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(pl.LockNotAFileError)
    expect(err.message).toContain('symbolic link')
    let infoErr
    try {
      pl.getLockInfo('backend', SHORT(dir))
    } catch (e) {
      infoErr = e
    }
    expect(infoErr.code).toBe('LOCK_NOT_A_FILE')
    expect(pl.listLocks({ dir })[0]).toMatchObject({ state: 'invalid' })
    expect(fs.readFileSync(outside, 'utf8')).toBe(before)
    expect(fs.readlinkSync(lockFile(dir))).toBe(outside)
    // A dangling link is refused too, and nothing gets created at its target.
    fs.unlinkSync(lockFile(dir))
    const nowhere = path.join(path.dirname(outside), 'created-through-link')
    fs.symlinkSync(nowhere, lockFile(dir))
    expect(() => pl.acquireLock('backend', SHORT(dir))).toThrow(pl.LockNotAFileError)
    expect(fs.existsSync(nowhere)).toBe(false)
    // forceRemoveLock removes the link itself, never its target.
    expect(pl.forceRemoveLock('backend', SHORT(dir))).toBe(true)
    expect(fs.readFileSync(outside, 'utf8')).toBe(before)
  })

  test.each([
    ['empty', ''],
    ['whitespace', '  \n'],
    ['garbage', "ceci n'est pas un lock"],
    ['truncated JSON', '{\n  "pid": 51172,\n  "started": "2025-10'],
    ['binary', Buffer.from([0xff, 0xfe, 0x00, 0x01])],
  ])('%s lock file with no holder: logged and taken over', (_label, content) => {
    const dir = tempDir('api-garbage')
    fs.writeFileSync(lockFile(dir), content)
    // Old enough not to be a PID-only writer caught between truncating and writing.
    const past = new Date(Date.now() - 5000)
    fs.utimesSync(lockFile(dir), past, past)
    const c = capture()
    const info = pl.acquireLock('backend', SHORT(dir, { log: c.log }))
    expect(info.pid).toBe(process.pid)
    expect(c.lines[0]).toMatch(
      /^warn \[PROCESS_LOCK_STALE\] Found unreadable lock file .*backend\.short\.lock \(.+\) held by no process, removing\.\.\.$/,
    )
    pl.releaseLock('backend', SHORT(dir))
  })
})

describe('files of the older PID-only implementation, and PID reuse', () => {
  test('a live legacy holder means conflict; once it is dead the lock is taken over', async () => {
    const dir = tempDir('api-legacy')
    const legacy = start('legacy-writer.js', { dir })
    await legacy.waitFor('READY')
    expect(() => pl.acquireLock('backend', SHORT(dir))).toThrow(`(PID: ${legacy.pid})`)
    expect(pl.getLockInfo('backend', SHORT(dir))).toMatchObject({ pid: legacy.pid, tradeSide: 'SHORT' })
    await stop(legacy, 'SIGKILL')
    expectTakeoverFrom(dir, legacy.pid)
  })

  test('bare PID files: alive is a conflict, dead is stale', async () => {
    const dir = tempDir('api-barepid')
    const b = bystander()
    fs.writeFileSync(lockFile(dir), `${b.pid}\n`)
    expect(() => pl.acquireLock('backend', SHORT(dir))).toThrow(pl.LockConflictError)
    b.kill('SIGKILL')
    await new Promise((r) => b.on('exit', r))
    fs.writeFileSync(lockFile(dir), `${await deadPid()}\n`)
    expect(pl.acquireLock('backend', SHORT(dir)).pid).toBe(process.pid)
    pl.releaseLock('backend', SHORT(dir))
  })

  linuxOnly('recycled PIDs: never a live holder of our format; a PID-only file proves only its PID', async () => {
    const dir = tempDir('api-recycled')
    const b = bystander()
    try {
      // Our format, naming a live process of this host with its exact start token, and no one
      // holds the OS lock: that process may be the holder, which closed its descriptor. Taking
      // the lock over would start a second instance: a conflict that says why.
      const record = {
        pid: b.pid,
        started: new Date().toISOString(),
        tradeSide: 'SHORT',
        processName: 'trader-short-backend',
        processType: 'backend',
        hostname: os.hostname(),
        startToken: ownToken(b.pid),
        protocol: 'processlock/1',
      }
      fs.writeFileSync(lockFile(dir), JSON.stringify(record, null, 2))
      expect(() => pl.acquireLock('backend', SHORT(dir, { log: false }))).toThrow(
        /OS lock on the lock file is not held/,
      )
      expect(fs.readFileSync(lockFile(dir), 'utf8')).toBe(JSON.stringify(record, null, 2))

      // The same PID with another start token: a later process that got the PID. Stale.
      record.startToken = `${ownToken(b.pid)}0`
      fs.writeFileSync(lockFile(dir), JSON.stringify(record, null, 2))
      expect(pl.getLockInfo('backend', SHORT(dir))).toBe(null)
      expectTakeoverFrom(dir, b.pid)

      // The legacy PID-only format, naming a live process that started after the lock was taken.
      // Linux tells a start only as time since boot, and a date computed from it moves with every
      // step of the clock: the PID is all there is, and a live PID is a conflict. What to do is
      // said: look at that process first; remove the file if it is not the service.
      const legacy = {
        pid: b.pid,
        started: '2025-10-18T22:38:49.123Z',
        tradeSide: 'SHORT',
        processName: 'trader-short-backend',
      }
      fs.writeFileSync(lockFile(dir), JSON.stringify(legacy, null, 2))
      expect(pl.getLockInfo('backend', SHORT(dir))).toMatchObject({ pid: b.pid })
      const c = capture()
      expect(() => pl.acquireLock('backend', SHORT(dir, { log: c.log }))).toThrow(pl.LockConflictError)
      expect(c.lines).toContain(
        `error [PROCESS_LOCK_CONFLICT] Its lock file holds only a PID (the older format): see what PID ${b.pid} runs first (ps -p ${b.pid} -o args=). If it is backend (SHORT), to force restart, run: kill ${b.pid}; if not, the PID was reused: remove the file (rm '${lockFile(dir)}')`,
      )
      expect(c.lines.join('\n')).not.toContain('[PROCESS_LOCK_CONFLICT] To force restart, run: kill')
      expect(fs.readFileSync(lockFile(dir), 'utf8')).toBe(JSON.stringify(legacy, null, 2))
    } finally {
      b.kill('SIGKILL')
    }
  })
})

const asNobody = process.getuid && process.getuid() === 0
const describeAsNobody = needs(asNobody, 'root, to run a child as another user').describe

describeAsNobody('another user', () => {
  const NOBODY = 65534
  // What the other user runs, where it can read it wherever the checkout lives.
  let staged
  beforeAll(() => {
    staged = stageForOtherUsers()
  })
  afterAll(() => fs.rmSync(staged.root, { recursive: true, force: true }))
  const runAsNobody = (dir) =>
    watch(process.execPath, [path.join(staged.fixtures, 'try-acquire.js')], {
      cwd: staged.root,
      env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '' },
      uid: NOBODY,
      gid: NOBODY,
    }).done()

  /** A lock directory shared with nobody the safe way: through its group, inherited (setgid). */
  function sharedDir(label) {
    const dir = tempDir(label)
    fs.chownSync(dir, 0, NOBODY)
    fs.chmodSync(dir, 0o2770)
    return dir
  }

  test("another user's live process is alive (EPERM from kill), so its lock conflicts", async () => {
    const dir = sharedDir('api-eperm')
    // A legacy record naming this (root) test process, written after it started.
    fs.writeFileSync(
      lockFile(dir),
      JSON.stringify({ pid: process.pid, started: new Date().toISOString(), tradeSide: 'SHORT' }),
    )
    const r = JSON.parse((await runAsNobody(dir)).stdout)
    expect(r).toMatchObject({ ok: false, isError: true, code: 'LOCK_CONFLICT' })
    expect(r.holder.pid).toBe(process.pid)
    expect(fs.existsSync(lockFile(dir))).toBe(true)
  })

  test('an unwritable lock directory: LOCK_IO EACCES with the path', async () => {
    const dir = tempDir('api-eacces')
    fs.chmodSync(dir, 0o755)
    const r = JSON.parse((await runAsNobody(dir)).stdout)
    expect(r).toMatchObject({ ok: false, isError: true, code: 'LOCK_IO', osCode: 'EACCES', syscall: 'open' })
    expect(r.path.startsWith(dir)).toBe(true)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('a root-held lock seen by another user: conflict, and its file is kept', async () => {
    const dir = sharedDir('api-otheruser')
    pl.acquireLock('backend', SHORT(dir))
    const r = JSON.parse((await runAsNobody(dir)).stdout)
    expect(r).toMatchObject({ ok: false, code: 'LOCK_CONFLICT' })
    expect(r.holder.pid).toBe(process.pid)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
  })
})

/** For tests that count a process's threads in /proc: elsewhere they are skipped, saying why. */
const countsThreads = onlyOn(['linux'], 'threads are counted in /proc')

countsThreads('loading the package and holding a lock file start no thread', () => {
  // In a process of its own: jest's threads come and go. The PostgreSQL client and the threads
  // of waits start only when a call needs them.
  const dir = tempDir('api-threads')
  const opts = JSON.stringify({ dir, tradeSide: 'SHORT', log: false })
  const code = `
    const fs = require('node:fs')
    const threads = () => fs.readdirSync('/proc/self/task').length
    const before = threads()
    const pl = require(${JSON.stringify(ROOT)})
    const loaded = threads()
    pl.acquireLock('backend', ${opts})
    const holding = threads()
    pl.releaseLock('backend', ${opts})
    console.log(JSON.stringify({ loaded: loaded - before, holding: holding - before }))`
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' })
  expect(r.stderr).toBe('')
  expect(JSON.parse(r.stdout)).toEqual({ loaded: 0, holding: 0 })
})
