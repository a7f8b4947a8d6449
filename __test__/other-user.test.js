'use strict'
// A hostile local user: another uid on the same host, created for this file and removed after it,
// tries what it should not be able to do to a service run by root. Each test runs the attack the
// way that user would (as that user: runuser) against the real command and the real addon, and
// checks that it fails, with words an operator understands. Needs `npm run build` first, root and
// Linux (useradd, runuser, flock, python3 for renameat2).
const { execFileSync, spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { tempDir, watch, running, deadPid, ROOT } = require('./helpers/proc')
const { CHILD, cli } = require('./helpers/cli-proc')
const { needs } = require('./helpers/skip')

const USER = `plhostile${process.pid}`
const canAddUser = process.platform === 'linux' && process.getuid() === 0
let uid = null
let gid = null
/** Processes of the other user that a test left running: stopped after each test. */
let theirs = []

beforeAll(() => {
  if (!canAddUser) return
  execFileSync('useradd', ['--no-create-home', '--user-group', '--shell', '/usr/sbin/nologin', USER])
  uid = Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' }))
  gid = Number(execFileSync('id', ['-g', USER], { encoding: 'utf8' }))
})

/** Ends everything the other user runs (all of it started by these tests), by PID. */
async function stopTheirs() {
  if (uid !== null) {
    const left = require('node:child_process').spawnSync('ps', ['-u', String(uid), '-o', 'pid='], { encoding: 'utf8' })
    for (const pid of left.stdout.split('\n').map(Number).filter(Boolean)) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {}
    }
  }
  for (const p of theirs) await p.done()
  theirs = []
}

afterEach(stopTheirs)

afterAll(() => {
  if (uid !== null) execFileSync('userdel', [USER])
})

const hostile = needs(canAddUser, 'root on Linux, to create a second local user')

/** Runs `sh -c script` as the other user to its end: { code, out }. */
function asThem(script, ...args) {
  const r = require('node:child_process').spawnSync('runuser', ['-u', USER, '--', 'sh', '-c', script, 'sh', ...args], {
    encoding: 'utf8',
    timeout: 20000,
  })
  return { code: r.status, out: `${r.stdout}${r.stderr}` }
}

/** Starts `sh -c script` as the other user, kept until the test ends; resolves once it printed `ready`. */
async function startAsThem(ready, script, ...args) {
  const p = watch('runuser', ['-u', USER, '--', 'sh', '-c', script, 'sh', ...args], { waitMs: 20000 })
  theirs.push(p)
  await p.waitFor(ready)
  return p
}

/** A directory tree for one test that every user may enter: `base` (root, 0755). */
function base(label) {
  const dir = tempDir(`hostile-${label}`)
  fs.chmodSync(dir, 0o755)
  return dir
}

function mkdir(dir, mode, owner = [0, 0]) {
  fs.mkdirSync(dir)
  fs.chownSync(dir, ...owner)
  fs.chmodSync(dir, mode)
  return dir
}

/** The record a lock file of `pid` holds, start token included, as anyone can make it from /proc. */
function recordNaming(pid) {
  const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const ticks = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  return JSON.stringify({
    pid,
    started: new Date().toISOString(),
    tradeSide: 'SHORT',
    processName: 'trader-short-backend',
    processType: 'backend',
    hostname: require('node:os').hostname(),
    startToken: `linux:${boot}:${ticks}`,
    protocol: 'processlock/1',
  })
}

/** A root process that must survive: what the other user wants killed. */
function victim() {
  const p = spawn('sleep', ['120'], { stdio: 'ignore' })
  return p
}

const THE_LOCK = 'backend.short.lock'

/** `acquireLock` in a process of its own: { pid } or { code, message }. */
async function tryAcquire(dir) {
  const script = `const pl = require(${JSON.stringify(ROOT)})
try {
  pl.acquireLock('backend', { dir: process.argv[1], tradeSide: 'SHORT', log: false })
  console.log(JSON.stringify({ pid: process.pid }))
} catch (e) {
  console.log(JSON.stringify({ code: e.code, message: e.message }))
}`
  const r = await watch(process.execPath, ['-e', script, dir]).done()
  return JSON.parse(r.stdout)
}

/** A root service holding the lock in `dir` until killed, or its refusal ({ code, message }). */
async function holder(dir) {
  const script = `const pl = require(${JSON.stringify(ROOT)})
try {
  pl.acquireLock('backend', { dir: process.argv[1], tradeSide: 'SHORT', log: false })
  console.log('HELD')
  setInterval(() => {}, 1 << 30)
} catch (e) {
  console.log(JSON.stringify({ code: e.code, message: e.message }))
}`
  const p = watch(process.execPath, ['-e', script, dir])
  const [said] = await p.waitFor(/HELD|\{.*\}/)
  if (said === 'HELD') return { p }
  await p.done()
  return { refused: JSON.parse(said) }
}

describe('replace signals only a holder its lock file proves', () => {
  hostile(
    'a lock file another user wrote in a shared sticky directory, naming a root process, gets nothing killed',
    async () => {
      const dir = mkdir(path.join(base('replace-sticky'), 'locks'), 0o1777)
      const v = victim()
      // The other user names the root process, start token and all, and holds the file's lock.
      await startAsThem(
        'LOCKED',
        'printf %s "$1" > "$2" && exec flock -x "$2" sh -c "echo LOCKED; exec sleep 60"',
        recordNaming(v.pid),
        path.join(dir, THE_LOCK),
      )

      const r = await cli(
        ['run', 'backend', '--replace', '--grace', '500', '--', process.execPath, CHILD, 'exit', '0'],
        { dir },
      )
      expect(running(v.pid)).toBe(true)
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain('LOCK_UNSAFE_DIR')
      expect(r.stderr).toContain('is shared by every user (1777')
      v.kill('SIGKILL')
    },
  )

  hostile(
    "a lock file a member of the directory's group wrote, naming a root process, gets nothing killed",
    async () => {
      // A directory its group shares (how services of several users share one): the other user is
      // a member of that group.
      const dir = mkdir(path.join(base('replace-group'), 'locks'), 0o2770, [0, gid])
      const v = victim()
      await startAsThem(
        'LOCKED',
        'printf %s "$1" > "$2" && exec flock -x "$2" sh -c "echo LOCKED; exec sleep 60"',
        recordNaming(v.pid),
        path.join(dir, THE_LOCK),
      )

      const r = await cli(
        ['run', 'backend', '--replace', '--grace', '500', '--', process.execPath, CHILD, 'exit', '0'],
        { dir },
      )
      expect(running(v.pid)).toBe(true)
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain(
        `[PROCESS_LOCK_REPLACE] Not replacing backend (SHORT) (PID ${v.pid}): other users can change the lock directory`,
      )
      expect(r.stderr).toContain('its group may create and rename files in it')
      expect(r.stderr).not.toContain('Sent SIGTERM')
      v.kill('SIGKILL')
    },
  )
})

describe('a directory above the lock directory that another user controls', () => {
  hostile('renamed and replaced by a link, it cannot give a second instance the lock', async () => {
    const root = base('parent-swap')
    // The other user's directory, with root's lock directory in it.
    const shared = mkdir(path.join(root, 'shared'), 0o755, [uid, gid])
    const locks = mkdir(path.join(shared, 'locks'), 0o750)
    const sticky = mkdir(path.join(root, 'sticky'), 0o1777)

    const first = await holder(locks)
    asThem('mv "$1/locks" "$1/old" && ln -s "$2" "$1/locks"', shared, sticky)
    const second = await tryAcquire(locks)
    const owners = [first.p ? 'first' : null, second.pid ? 'second' : null].filter(Boolean)
    expect(owners.length).toBeLessThan(2)
    // Refused from the start, saying which directory and why.
    expect(first.refused).toMatchObject({ code: 'LOCK_UNSAFE_DIR' })
    expect(first.refused.message).toContain(`is below ${shared}, which is owned by uid ${uid}`)
    expect(second).toMatchObject({ code: 'LOCK_UNSAFE_DIR' })
    if (first.p) {
      first.p.kill('SIGKILL')
      await first.p.done()
    }
  })
})

describe('processlock clear never works in a directory it did not check', () => {
  /** Another service's lock directory with its held lock: what must never be touched. */
  async function otherService(root) {
    const dir = mkdir(path.join(root, 'other-service'), 0o750)
    const held = await holder(dir)
    expect(held.p).toBeDefined()
    return { dir, held: held.p }
  }

  hostile(
    "root's clear --force on a lock directory swapped for a link removes nothing of another service",
    async () => {
      const root = base('clear-link')
      const shared = mkdir(path.join(root, 'shared'), 0o755, [uid, gid])
      mkdir(path.join(shared, 'locks'), 0o750)
      const other = await otherService(root)
      asThem('mv "$1/locks" "$1/old" && ln -s "$2" "$1/locks"', shared, other.dir)

      const r = await cli(['clear', '--force'], { dir: path.join(shared, 'locks') })
      expect(fs.existsSync(path.join(other.dir, THE_LOCK))).toBe(true)
      expect(r.code).toBe(1)
      expect(r.stderr).toContain('LOCK_UNSAFE_DIR')
      other.held.kill('SIGKILL')
      await other.held.done()
    },
  )

  hostile(
    "names swapped in a loop (renameat2 RENAME_EXCHANGE) never make root's clear remove a file elsewhere",
    async () => {
      const root = base('clear-exchange')
      const shared = mkdir(path.join(root, 'shared'), 0o755, [uid, gid])
      const locks = mkdir(path.join(shared, 'locks'), 0o750)
      // The other user's own directory, with a stale lock record in it: root's clear must never
      // remove a file there (the check refuses that directory when it is named directly). A hard
      // link to it in a directory nobody swaps tells whether it was removed, wherever its
      // directory's name points at that instant.
      const theirsDir = path.join(shared, 'theirs')
      const keep = path.join(shared, 'keep')
      const decoy = path.join(keep, 'decoy')
      const dead = await deadPid()
      const record = JSON.stringify({
        pid: dead,
        started: new Date().toISOString(),
        tradeSide: 'SHORT',
        processName: 'decoy',
        processType: 'decoy',
        protocol: 'processlock/1',
      })
      const made = asThem(
        'mkdir -m 0755 "$1" "$2" && printf %s "$3" > "$4" && ln "$4" "$1/decoy.short.lock"',
        theirsDir,
        keep,
        record,
        decoy,
      )
      expect(made).toEqual({ code: 0, out: '' })
      const replant = () =>
        asThem(
          'until ln "$1" "$2/decoy.short.lock" 2>/dev/null || ln "$1" "$3/decoy.short.lock" 2>/dev/null; do :; done',
          decoy,
          theirsDir,
          locks,
        )
      const direct = await cli(['clear'], { dir: theirsDir })
      expect(direct.code).toBe(1)
      expect(direct.stderr).toContain('LOCK_UNSAFE_DIR')
      expect(fs.statSync(decoy).nlink).toBe(2)

      // Bounded: 30 s or 5 million swaps, whichever comes first; stopped after the rounds anyway.
      const swap = `import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
print("SWAPPING", flush=True)
end, n = time.monotonic() + 30, 0
while time.monotonic() < end and n < 5000000:
    libc.renameat2(-100, a, -100, b, 2)
    n += 1
`
      await startAsThem('SWAPPING', 'exec python3 -c "$1" "$2" "$3"', swap, locks, theirsDir)

      const ROUNDS = 150
      let wrong = 0
      let refused = 0
      for (let i = 0; i < ROUNDS; i++) {
        const r = await cli(['clear'], { dir: locks })
        if (r.stderr.includes('LOCK_UNSAFE_DIR')) refused++
        if (fs.statSync(decoy).nlink !== 2) {
          wrong++
          replant()
        }
      }
      expect({ wrong, refused }).toEqual({ wrong: 0, refused: ROUNDS })
    },
    120000,
  )
})

describe('files the service did not create cannot stop it', () => {
  /** A root service that held the lock in `dir` and was killed: its file stays, stale. */
  async function staleLock(dir) {
    const h = await holder(dir)
    expect(h.p).toBeDefined()
    h.p.kill('SIGKILL')
    await h.p.done()
    expect(fs.existsSync(path.join(dir, THE_LOCK))).toBe(true)
  }

  hostile("a member of the directory's group cannot hold a dead holder's file to block the next start", async () => {
    // The directory's group may read it (2750), not write it: group members are not removers.
    const dir = mkdir(path.join(base('group-read'), 'locks'), 0o2750, [0, gid])
    await staleLock(dir)
    const hold = asThem('exec flock -n -s "$1" true', path.join(dir, THE_LOCK))
    expect(hold.code).not.toBe(0)
    expect(hold.out).toContain('Permission denied')
    const again = await tryAcquire(dir)
    expect(again.pid).toBeDefined()
  })

  hostile(
    "where the group shares the directory, a lock one of them holds on a dead holder's file is named, and check agrees",
    async () => {
      const dir = mkdir(path.join(base('group-shared'), 'locks'), 0o2770, [0, gid])
      await staleLock(dir)
      const theirLock = await startAsThem(
        'HOLDING',
        'exec flock -s "$1" sh -c "echo HOLDING; exec sleep 60"',
        path.join(dir, THE_LOCK),
      )
      const flockPid = Number(
        fs
          .readFileSync('/proc/locks', 'utf8')
          .match(
            new RegExp(`FLOCK\\s+ADVISORY\\s+READ\\s+(\\d+)\\s+\\S+:${fs.statSync(path.join(dir, THE_LOCK)).ino} `),
          )[1],
      )

      const start = await tryAcquire(dir)
      expect(start.code).toBe('LOCK_CONFLICT')
      expect(start.message).toMatch(/the lock is held, but not by PID \d+, which is not running/)
      expect(start.message).toContain(
        `: PID ${flockPid} (uid ${uid}) holds a lock on the lock file (owned by uid 0, group ${gid}, mode 0640)`,
      )
      expect(start.message).toContain(`fuser -v ${path.join(dir, THE_LOCK)}`)

      const check = await cli(['check', 'backend'], { dir })
      expect(check.stdout).not.toMatch(/stale/i)
      expect(check.stdout).toContain(`PID ${flockPid} (uid ${uid}) holds a lock on the lock file`)

      expect(theirLock.pid).toBeDefined()
      await stopTheirs()
      expect((await tryAcquire(dir)).pid).toBeDefined()
    },
  )

  hostile("a member of the directory's group cannot open the removal guard to make releases fail", async () => {
    const dir = mkdir(path.join(base('guard'), 'locks'), 0o2750, [0, gid])
    const h = await holder(dir)
    expect(h.p).toBeDefined()
    const guard = path.join(dir, '.processlock.guard')
    const hold = asThem('exec flock -n -s "$1" true', guard)
    expect(hold.code).not.toBe(0)
    expect(hold.out).toContain('Permission denied')
    expect(fs.statSync(guard).mode & 0o777).toBe(0o600)
    h.p.kill('SIGTERM')
    const end = await h.p.done()
    expect(end.signal).toBe('SIGTERM')
    // Released: the file is gone.
    expect(fs.existsSync(path.join(dir, THE_LOCK))).toBe(false)
  })

  hostile(
    'in a shared sticky directory, a file the other user planted at the lock path is refused with the fix',
    async () => {
      const dir = mkdir(path.join(base('sticky-plant'), 'locks'), 0o1777)
      await startAsThem(
        'PLANTED',
        'printf junk > "$1" && exec flock -x "$1" sh -c "echo PLANTED; exec sleep 60"',
        path.join(dir, THE_LOCK),
      )
      const start = await tryAcquire(dir)
      expect(start.code).toBe('LOCK_UNSAFE_DIR')
      expect(start.message).toContain(`mkdir -m 0750 '${dir}/<service>'`)
      // A directory of the service's own inside it works.
      const own = mkdir(path.join(dir, 'backend'), 0o750)
      expect((await tryAcquire(own)).pid).toBeDefined()
    },
  )
})
