'use strict'
// A lock directory on a file system that is full: no free inode, no free block, or neither.
// Each test mounts a small tmpfs of its own and fills it to the brim (as root, Linux).
// - A holder releases on a full file system: the directory's removal guard was made when the
//   lock was taken, so the release needs no room.
// - A release that fails all the same says so, on a line a user sees; the file stays.
// - The next start takes a dead holder's file over where it is: no new inode or block needed.
// - A live holder is still a conflict, whoever is short of room.
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { start, tempDir } = require('./helpers/proc')

const LINE = (pid) => `{ processType: 'backend', tradeSide: 'SHORT', pid: ${pid}`

/** Why a tmpfs cannot be mounted here, or null. */
function whyNoMount() {
  if (process.platform !== 'linux') return 'tmpfs is a Linux file system'
  const dir = tempDir('full-probe')
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,nr_inodes=8', 'tmpfs', dir])
  if (r.status !== 0) return `mount -t tmpfs is not permitted here: ${String(r.stderr).trim() || r.error}`
  spawnSync('umount', [dir])
  return null
}

const why = whyNoMount()
const describeMounted = why ? describe.skip : describe
if (why) {
  describe('a full file system', () => {
    test.skip(`[skipped: ${why}]`, () => {})
  })
}

/** Fills `dir`'s file system: every block (one file grown until ENOSPC), then every inode. */
function fill(dir, { blocks = true, inodes = true } = {}) {
  const grow = (fd, chunk) => {
    try {
      for (;;) fs.writeSync(fd, chunk)
    } catch (e) {
      if (e.code !== 'ENOSPC') throw e
    }
  }
  if (blocks) {
    const fd = fs.openSync(path.join(dir, 'fill-blocks'), 'w')
    grow(fd, Buffer.alloc(4096))
    // The last page may have room left: byte by byte.
    grow(fd, Buffer.alloc(1))
    fs.closeSync(fd)
    expect(() => fs.appendFileSync(path.join(dir, 'fill-blocks'), 'x')).toThrow(/ENOSPC/)
  }
  if (inodes) {
    try {
      for (let i = 0; ; i++) fs.closeSync(fs.openSync(path.join(dir, `fill-inode-${i}`), 'wx'))
    } catch (e) {
      if (e.code !== 'ENOSPC') throw e
    }
    expect(() => fs.closeSync(fs.openSync(path.join(dir, 'one-more'), 'wx'))).toThrow(/ENOSPC/)
  }
}

describeMounted('a full file system', () => {
  let mnt
  let locks
  let procs
  beforeEach(() => {
    mnt = tempDir('full')
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,nr_inodes=48,mode=0750', 'tmpfs', mnt])
    locks = path.join(mnt, 'locks')
    procs = []
  })
  afterEach(async () => {
    for (const p of procs) p.kill('SIGKILL')
    await Promise.all(procs.map((p) => p.done()))
    execFileSync('umount', [mnt])
  })

  const lockFile = () => path.join(locks, 'backend.short.lock')
  const holder = (log = 'console') => {
    const p = start('full-holder.js', { dir: locks, args: [log] })
    procs.push(p)
    return p
  }
  /** A holder that was SIGKILLed: its file stays, with nobody holding it. */
  async function deadHolder() {
    const p = holder()
    await p.waitFor('READY')
    p.kill('SIGKILL')
    await p.done()
    expect(fs.existsSync(lockFile())).toBe(true)
    return p.pid
  }
  const record = () => JSON.parse(fs.readFileSync(lockFile(), 'utf8'))

  test('the removal guard is made when the lock is taken, so the release at exit needs no room', async () => {
    const p = holder()
    await p.waitFor('READY')
    const taken = fs.readdirSync(locks).sort()
    fill(mnt)
    p.child.stdin.write('exit\n')
    const r = await p.done()
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`[PROCESS_LOCK_RELEASED] ${LINE(p.pid)} }`)
    expect(r.stderr).toBe('')
    expect(fs.existsSync(lockFile())).toBe(false)
    expect(taken).toEqual(['.backend.short.lock.fencing', '.processlock.guard', 'backend.short.lock'])
  })

  // A directory without a removal guard (used by an older version that made it only at the first
  // removal, or the guard deleted by hand) and a dead holder's file in it, on a full file system:
  // a new holder takes the file over in place, but its release has no guard and no room to make
  // one.
  describe('a release that fails (no removal guard, and no room to make one)', () => {
    async function failing(log) {
      await deadHolder()
      fs.rmSync(path.join(locks, '.processlock.guard'))
      fill(mnt)
      const p = holder(log)
      await p.waitFor('READY')
      expect(fs.readdirSync(locks).sort()).toEqual(['.backend.short.lock.fencing', 'backend.short.lock'])
      return p
    }
    const FAILED = (pid) =>
      new RegExp(
        `^\\[PROCESS_LOCK_RELEASE_FAILED\\] \\{ processType: 'backend', tradeSide: 'SHORT', pid: ${pid}, reason: 'LOCK_IO: .*No space left on device.*; the lock is free, and its file stays until the next start takes it over as stale' \\}$`,
        'm',
      )

    test.each(['console', 'function'])(
      'at exit, with the %s as log: [PROCESS_LOCK_RELEASE_FAILED] on stderr, the file stays',
      async (log) => {
        const p = await failing(log)
        p.child.stdin.write('exit\n')
        const r = await p.done()
        expect(r.code).toBe(0)
        // Written natively: a function can no longer be called once the process ends.
        expect(r.stderr).toMatch(FAILED(p.pid))
        expect(r.stdout).not.toContain('RELEASED')
        expect(record().pid).toBe(p.pid)
      },
    )

    test('releaseLock: LockIoError, and the line on the log', async () => {
      const p = await failing('function')
      p.child.stdin.write('release\n')
      await p.waitFor('RELEASE ')
      expect(p.stdout).toMatch(/^RELEASE \{"ok":false,"code":"LOCK_IO","isError":true\}$/m)
      expect(p.stdout.replace(/^app error: /gm, '')).toMatch(FAILED(p.pid))
      expect(p.stdout).toMatch(/^app error: \[PROCESS_LOCK_RELEASE_FAILED\]/m)
      expect(record().pid).toBe(p.pid)
    })

    test('the next start takes the file over in place, and its own release fails the same way', async () => {
      const first = await failing('console')
      first.child.stdin.write('exit\n')
      await first.done()
      const next = holder()
      await next.waitFor('READY')
      expect(next.stderr).toContain(`[PROCESS_LOCK_STALE] Found stale lock file for PID ${first.pid}, removing...`)
      expect(record().pid).toBe(next.pid)
      next.child.stdin.write('exit\n')
      expect((await next.done()).stderr).toMatch(FAILED(next.pid))
    })
  })

  test.each([
    ['no free inode', { blocks: false, inodes: true }],
    ['no free block', { blocks: true, inodes: false }],
    ['neither', { blocks: true, inodes: true }],
  ])("%s: the next start takes a dead holder's file over where it is, and releases it", async (_, what) => {
    const dead = await deadHolder()
    const before = fs.readFileSync(lockFile(), 'utf8')
    fill(mnt, what)
    const next = holder()
    await next.waitFor('READY')
    expect(next.stderr).toContain(`[PROCESS_LOCK_STALE] Found stale lock file for PID ${dead}, removing...`)
    // A whole record, its own: the old one was written over in one go, padded to its length.
    const text = fs.readFileSync(lockFile(), 'utf8')
    expect(text.length).toBeGreaterThanOrEqual(before.length)
    expect(text.endsWith('\n')).toBe(true)
    expect(record()).toMatchObject({ pid: next.pid, tradeSide: 'SHORT', protocol: expect.any(String) })
    // No temp file was left behind.
    expect(fs.readdirSync(locks).sort()).toEqual([
      '.backend.short.lock.fencing',
      '.processlock.guard',
      'backend.short.lock',
    ])
    next.child.stdin.write('exit\n')
    const r = await next.done()
    expect(r.stdout).toContain(`[PROCESS_LOCK_RELEASED] ${LINE(next.pid)} }`)
    expect(fs.existsSync(lockFile())).toBe(false)
  })

  test("starters racing for a dead holder's file on a full file system: one owner, the others a conflict", async () => {
    await deadHolder()
    fill(mnt)
    const racers = Array.from({ length: 8 }, () => holder())
    const outcomes = await Promise.all(racers.map((p) => p.waitFor(/^(READY|FAILED .*)$/m).then((m) => m[1])))
    const owners = racers.filter((_, i) => outcomes[i] === 'READY')
    // Every loser failed while the owner held on (it holds until told): one owner at a time.
    expect(owners).toHaveLength(1)
    for (const o of outcomes.filter((x) => x !== 'READY')) {
      expect(o).toMatch(
        new RegExp(
          `^FAILED LOCK_CONFLICT LOCK_CONFLICT: backend \\(SHORT\\) is already running \\(PID: ${owners[0].pid}\\)`,
        ),
      )
    }
    expect(record().pid).toBe(owners[0].pid)
  })

  test('a live holder is a conflict, not a full disk', async () => {
    const live = holder()
    await live.waitFor('READY')
    fill(mnt)
    const second = holder()
    const r = await second.done()
    expect(r.code).toBe(1)
    expect(r.stdout).toContain(
      `FAILED LOCK_CONFLICT LOCK_CONFLICT: backend (SHORT) is already running (PID: ${live.pid})`,
    )
  })

  test('nothing to take over: LOCK_IO naming the full disk', async () => {
    fs.mkdirSync(locks)
    fill(mnt)
    const r = await holder().done()
    expect(r.code).toBe(1)
    expect(r.stdout).toMatch(/^FAILED LOCK_IO LOCK_IO: .*No space left on device/m)
  })
})
