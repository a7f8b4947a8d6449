'use strict'
// The `processlock` command (check, clear, run) and its npm launcher, with real processes, real
// lock files and real signals. Needs `npm run build` first (the release binary).
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ROOT, tempDir, deadPid, lockDirEntries } = require('./helpers/proc')
const {
  BINARY,
  LAUNCHER,
  CHILD,
  cli,
  startCli,
  startRun,
  startHolder,
  startOnTerminal,
  hasScript,
  alive,
  waitGone,
} = require('./helpers/cli-proc')

const VERSION = require('../package.json').version
const { needs, onlyOn } = require('./helpers/skip')
const JSON_KEYS = [
  'file',
  'processType',
  'tradeSide',
  'state',
  'pid',
  'started',
  'uptimeMs',
  'processName',
  'hostname',
  'fencingToken',
  'problem',
]
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP']

const lockFile = (dir, name = 'backend.short.lock') => path.join(dir, name)
const readRecord = (dir, name) => JSON.parse(fs.readFileSync(lockFile(dir, name), 'utf8'))
const childPid = async (p) => Number((await p.waitFor(/CHILD READY (\d+)/))[1])
const count = (text, needle) => text.split(needle).length - 1

async function checkJson(dir) {
  const r = await cli(['check', '--json'], { dir })
  expect(r.code).toBe(0)
  const locks = JSON.parse(r.stdout)
  for (const lock of locks) expect(Object.keys(lock)).toEqual(JSON_KEYS)
  return locks
}

/** A holder that took `type` through the addon and was SIGKILLed: its file is left, unheld. */
async function staleLock(dir, type) {
  const holder = await startHolder(dir, type)
  holder.kill('SIGKILL')
  await holder.done()
  return holder.pid
}

describe('processlock check', () => {
  test('no locks: says so and names the directory it looked in', async () => {
    const dir = tempDir('cli-none')
    let r = await cli(['check'], { dir })
    expect(r).toMatchObject({ code: 0, stdout: `No locks in ${dir}\n`, stderr: '' })
    const missing = path.join(dir, 'not-there')
    r = await cli(['check'], { dir: missing })
    expect(r).toMatchObject({ code: 0, stdout: `No locks: ${missing} does not exist (yet)\n` })
    expect(fs.existsSync(missing)).toBe(false)
    expect(await checkJson(missing)).toEqual([])
  })

  test('held, stale and invalid locks: a table and a JSON array with stable keys', async () => {
    const dir = tempDir('cli-check')
    const holder = await startHolder(dir, 'backend')
    const stalePid = await staleLock(dir, 'worker')
    fs.writeFileSync(lockFile(dir, 'broken.lock'), '')
    const legacyPid = await deadPid()
    fs.writeFileSync(
      lockFile(dir, 'backend.long.lock'),
      JSON.stringify({
        pid: legacyPid,
        started: '2025-10-18T22:38:49.123Z',
        tradeSide: 'LONG',
        processName: 'trader-long-backend',
      }),
    )

    const locks = await checkJson(dir)
    expect(locks.map((l) => [path.basename(l.file), l.state])).toEqual([
      ['backend.long.lock', 'stale'],
      ['backend.short.lock', 'held'],
      ['broken.lock', 'invalid'],
      ['worker.short.lock', 'stale'],
    ])
    const [legacy, held, broken, stale] = locks
    expect(held).toMatchObject({
      file: lockFile(dir),
      processType: 'backend',
      tradeSide: 'SHORT',
      pid: holder.pid,
      processName: 'trader-short-backend',
      hostname: os.hostname(),
      problem: null,
    })
    expect(held.started).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    expect(held.uptimeMs).toBeGreaterThanOrEqual(0)
    expect(held.uptimeMs).toBeLessThan(120000)
    expect(stale).toMatchObject({ processType: 'worker', tradeSide: 'SHORT', pid: stalePid, uptimeMs: null })
    expect(legacy).toMatchObject({
      processType: 'backend',
      tradeSide: 'LONG',
      pid: legacyPid,
      started: '2025-10-18T22:38:49.123Z',
      hostname: null,
    })
    expect(broken).toMatchObject({ processType: 'broken', tradeSide: null, pid: null, started: null, uptimeMs: null })
    expect(broken.problem).toContain('empty')

    const text = await cli(['check'], { dir })
    expect(text.code).toBe(0)
    const lines = text.stdout.split('\n')
    expect(lines[0]).toBe(`Locks in ${dir}:`)
    expect(lines[2]).toMatch(/^TYPE\s+SIDE\s+PID\s+STARTED\s+UPTIME\s+STATE\s+PROCESS\s+TOKEN\s+FILE$/)
    const row = (file) => lines.find((l) => l.endsWith(` ${file}`))
    expect(row('backend.short.lock')).toMatch(
      new RegExp(
        `^backend\\s+SHORT\\s+${holder.pid}\\s+\\S+Z\\s+\\d.*\\s+held\\s+trader-short-backend\\s+[1-9][0-9]*\\s+backend\\.short\\.lock$`,
      ),
    )
    expect(row('worker.short.lock')).toMatch(new RegExp(`^worker\\s+SHORT\\s+${stalePid}\\s+\\S+Z\\s+-\\s+stale\\s+`))
    expect(row('broken.lock')).toMatch(/^broken\s+-\s+-\s+-\s+-\s+invalid\s+-\s+-\s+broken\.lock$/)
    expect(text.stdout).toContain('  broken.lock: ')
    expect(text.stdout).toContain(
      '2 lock file(s) belong to no running process: the next start removes them, or run: processlock clear',
    )
    expect(text.stdout).toContain('1 file(s) are not lock records: processlock clear keeps them')
    // Looking changes nothing.
    expect(lockDirEntries(dir).sort()).toEqual([
      'backend.long.lock',
      'backend.short.lock',
      'broken.lock',
      'worker.short.lock',
    ])
    holder.kill('SIGTERM')
    await holder.done()
  })

  test('the default directory: runtime/locks under the nearest package.json', async () => {
    const project = tempDir('cli-project')
    fs.writeFileSync(path.join(project, 'package.json'), '{}')
    const deep = path.join(project, 'server', 'lib')
    fs.mkdirSync(deep, { recursive: true })
    const locks = path.join(project, 'runtime', 'locks')
    const env = { PROCESSLOCK_DIR: undefined }
    const r = await cli(['check'], { cwd: deep, env })
    expect(r.stdout).toBe(`No locks: ${locks} does not exist (yet)\n`)
    const run = await cli(['run', 'backend', '--', process.execPath, CHILD, 'exit', '0'], { cwd: deep, env })
    expect(run.code).toBe(0)
    expect(run.stderr).toContain(`[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: `)
    expect(lockDirEntries(locks)).toEqual([])
    // --dir wins over $PROCESSLOCK_DIR, which wins over the default.
    const other = tempDir('cli-other')
    expect((await cli(['check', '--dir', other], { cwd: deep, env: { PROCESSLOCK_DIR: locks } })).stdout).toBe(
      `No locks in ${other}\n`,
    )
    expect((await cli(['check'], { cwd: deep, env: { PROCESSLOCK_DIR: other } })).stdout).toBe(`No locks in ${other}\n`)
  })
})

describe('processlock clear', () => {
  test('keeps held locks and files that are not lock records; removes stale ones and orphan temp files', async () => {
    const dir = tempDir('cli-clear')
    const holder = await startHolder(dir, 'backend')
    const stalePid = await staleLock(dir, 'worker')
    fs.writeFileSync(lockFile(dir, 'broken.lock'), 'not a record')
    const orphan = path.join(dir, `.backend.long.lock.${await deadPid()}.0.tmp`)
    fs.writeFileSync(orphan, '{"pid": 1}')
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'not a lock')

    const r = await cli(['clear'], { dir })
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(
      `kept            backend.short.lock (held by running PID ${holder.pid}, trader-short-backend)`,
    )
    expect(r.stdout).toContain(`removed stale   worker.short.lock (PID ${stalePid} is not running)`)
    expect(r.stdout).toMatch(/kept unknown {4}broken\.lock \(not a lock record: .+\)/)
    expect(r.stdout).toContain('removed 1 temp file(s) left by acquirers that died')
    expect(r.stdout).toContain(`pm2 stop all (or kill ${holder.pid})`)
    expect(lockDirEntries(dir).sort()).toEqual(['backend.short.lock', 'broken.lock', 'notes.txt'])
    expect(alive(holder.pid)).toBe(true)
    expect((await checkJson(dir)).map((l) => [l.state, l.pid])).toEqual([
      ['held', holder.pid],
      ['invalid', null],
    ])
    fs.unlinkSync(lockFile(dir, 'broken.lock'))

    // Nothing left to clear: it says so and still keeps the held lock.
    const again = await cli(['clear'], { dir })
    expect(again.stdout).toContain(`Nothing removed in ${dir}`)
    // The raw binding releases nothing on a signal: the file is left, unheld, and goes now.
    holder.kill('SIGTERM')
    await holder.done()
    expect((await cli(['clear'], { dir })).stdout).toBe(
      `removed stale   backend.short.lock (PID ${holder.pid} is not running)\n`,
    )
    expect((await cli(['clear'], { dir })).stdout).toBe(`No locks in ${dir}\n`)
  })

  test('--force removes held locks too, warning that the processes keep running', async () => {
    const dir = tempDir('cli-force')
    const holder = await startHolder(dir, 'backend')
    const r = await cli(['clear', '--force'], { dir })
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`removed HELD    backend.short.lock (PID ${holder.pid} keeps running)`)
    expect(r.stderr).toContain(
      `WARNING: this only deleted the lock files; it did NOT stop the running processes (${holder.pid}).`,
    )
    expect(r.stderr).toContain('pm2 stop all')
    expect(lockDirEntries(dir)).toEqual([])
    expect(alive(holder.pid)).toBe(true)
    holder.kill('SIGTERM')
    await holder.done()
  })

  test('a symbolic link or a directory named like a lock is left alone', async () => {
    const dir = tempDir('cli-notfile')
    const outside = path.join(tempDir('cli-outside'), 'precious.txt')
    fs.writeFileSync(outside, 'keep me')
    fs.symlinkSync(outside, lockFile(dir, 'link.lock'))
    fs.mkdirSync(lockFile(dir, 'dir.lock'))
    const r = await cli(['clear', '--force'], { dir })
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/left {12}dir\.lock: LOCK_NOT_A_FILE/)
    expect(r.stdout).toMatch(/left {12}link\.lock: LOCK_NOT_A_FILE/)
    expect(fs.readFileSync(outside, 'utf8')).toBe('keep me')
    expect(lockDirEntries(dir).sort()).toEqual(['dir.lock', 'link.lock'])
  })
})

describe('processlock run', () => {
  test('holds the lock while the command runs, names the command in the record, releases after', async () => {
    const dir = tempDir('cli-run')
    const run = startRun(['backend', '--name', 'api-server'], ['signal-exit', '7'], { dir })
    const pid = await childPid(run)
    expect(readRecord(dir)).toMatchObject({
      pid,
      tradeSide: 'SHORT',
      processName: 'api-server',
      processType: 'backend',
    })
    expect((await checkJson(dir)).map((l) => [l.state, l.pid, l.processName])).toEqual([['held', pid, 'api-server']])

    run.kill('SIGTERM')
    const r = await run.done()
    expect(r.code).toBe(7)
    expect(count(r.stdout, 'GOT SIGTERM')).toBe(1)
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: ${pid} }`,
      `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${pid} }`,
    ])
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('tells the command which inherited descriptors hold and hand over the lock, and where it is', async () => {
    const dir = tempDir('cli-inherited')
    const r = await startRun(['backend', '-q'], ['inherited'], { dir }).done()
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(
      new RegExp(
        `^INHERITED \\d+ ${lockFile(dir).replace(/[.]/g, '\\.')} true token true true\nSOCKET \\S+ true\nDIR ${dir}\n$`,
      ),
    )
    // The socket that hands the descriptors to claimants that did not inherit them is gone.
    const socket = r.stdout.match(/SOCKET (\S+)/)[1]
    if (process.platform === 'linux') {
      expect(socket).toMatch(/^@processlock-/)
      expect(fs.readFileSync('/proc/net/unix', 'utf8')).not.toContain(` ${socket}\n`)
    } else {
      expect(fs.existsSync(socket) || fs.existsSync(path.dirname(socket))).toBe(false)
    }
    // The directory given with --dir, not the environment's, is the command's too.
    const other = tempDir('cli-inherited-env')
    const viaOption = await startCli(
      ['--dir', dir, 'run', 'backend', '-q', '--', process.execPath, CHILD, 'inherited'],
      {
        dir: other,
      },
    ).done()
    expect(viaOption.code).toBe(0)
    expect(viaOption.stdout).toContain(`DIR ${dir}\n`)
    expect(fs.readdirSync(other)).toEqual([])
  })

  test.each([0, 3, 42])('exits with the command status %i', async (status) => {
    const dir = tempDir('cli-status')
    const r = await startRun(['worker', '--quiet'], ['exit', String(status)], { dir }).done()
    expect(r).toMatchObject({ code: status, signal: null, stderr: '' })
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('a command that cannot be started: 127, and the lock is released', async () => {
    const dir = tempDir('cli-enoent')
    const r = await cli(['run', 'backend', '--', path.join(dir, 'no-such-command')], { dir })
    expect(r.code).toBe(127)
    expect(r.stderr).toContain('processlock: cannot run ')
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('conflict: the operator log lines, exit 1, and the command is never started', async () => {
    const dir = tempDir('cli-conflict')
    const holder = await startHolder(dir, 'backend')
    const before = fs.readFileSync(lockFile(dir), 'utf8')
    const marker = path.join(dir, 'started.txt')
    const r = await startRun(['backend'], ['exit', '0'], { dir, env: { CHILD_MARKER: marker } }).done()
    expect(r.code).toBe(1)
    expect(r.stdout).toBe('')
    const { started } = JSON.parse(before)
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
      `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${holder.pid}, started: '${started}' }`,
      `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${holder.pid}`,
      `[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${holder.pid})`,
    ])
    expect(fs.existsSync(marker)).toBe(false)
    expect(fs.readFileSync(lockFile(dir), 'utf8')).toBe(before)
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    // Another side is another lock.
    const long = await startRun(['backend', '--side', 'long', '-q'], ['exit', '0'], { dir }).done()
    expect(long.code).toBe(0)
    holder.kill('SIGTERM')
    await holder.done()
  })

  test('a signal while the lock is being taken: the command never starts, processlock dies by it', async () => {
    const dir = tempDir('cli-abort')
    // A lock held by a background sleeper whose recorded PID (the shell) has exited: an acquirer
    // keeps looking at it for a moment before it calls it a conflict.
    const shell = await startCli(
      ['run', 'backend', '-q', '--', '/bin/sh', '-c', 'sleep 30 >/dev/null 2>&1 & echo $!'],
      { dir },
    ).exited()
    const sleeper = Number(shell.stdout.trim())
    try {
      const marker = path.join(dir, 'started.txt')
      const run = startRun(['backend'], ['exit', '0'], { dir, env: { CHILD_MARKER: marker } })
      // Its temp file shows that its handlers are installed and it is taking the lock.
      const until = Date.now() + 10000
      while (!fs.readdirSync(dir).some((n) => n.endsWith('.tmp')) && !run.ended && Date.now() < until) {
        await new Promise((r) => setImmediate(r))
      }
      run.kill('SIGTERM')
      const r = await run.done()
      expect(r.signal).toBe('SIGTERM')
      expect(fs.existsSync(marker)).toBe(false)
      expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    } finally {
      process.kill(sleeper, 'SIGKILL')
    }
  })

  const linuxOnly = onlyOn(['linux'], 'the fork is found through /proc')
  linuxOnly('SIGKILL of processlock while it takes the lock: the command never starts, nothing lingers', async () => {
    const dir = tempDir('cli-kill-early')
    const shell = await startCli(
      ['run', 'backend', '-q', '--', '/bin/sh', '-c', 'sleep 30 >/dev/null 2>&1 & echo $!'],
      { dir },
    ).exited()
    const sleeper = Number(shell.stdout.trim())
    // The fork of processlock that waits to become the command: a child running our binary.
    const forkOf = (parent) =>
      fs.readdirSync('/proc').find((p) => {
        try {
          const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8')
          const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
          return ppid === parent && fs.readlinkSync(`/proc/${p}/exe`) === BINARY
        } catch {
          return false
        }
      })
    let fork
    try {
      const marker = path.join(dir, 'started.txt')
      const run = startRun(['backend'], ['exit', '0'], { dir, env: { CHILD_MARKER: marker } })
      const until = Date.now() + 10000
      while (!(fork = forkOf(run.pid)) && !run.ended && Date.now() < until) {
        await new Promise((r) => setImmediate(r))
      }
      expect(fork).toBeDefined()
      run.kill('SIGKILL')
      expect((await run.exited()).signal).toBe('SIGKILL')
      // The fork ends at once instead of waiting forever for an answer.
      await waitGone(Number(fork), 5000)
      expect(fs.existsSync(marker)).toBe(false)
      expect(lockDirEntries(dir).filter((n) => !n.endsWith('.tmp'))).toEqual(['backend.short.lock'])
    } finally {
      process.kill(sleeper, 'SIGKILL')
      if (fork && alive(Number(fork))) process.kill(Number(fork), 'SIGKILL')
    }
  })

  test('a lock directory that cannot be made: [FATAL] LOCK_IO, exit 1, nothing started', async () => {
    const file = path.join(tempDir('cli-notdir'), 'plain-file')
    fs.writeFileSync(file, 'x')
    const marker = path.join(path.dirname(file), 'started.txt')
    const r = await startRun(['backend', '--dir', file], ['exit', '0'], { env: { CHILD_MARKER: marker } }).done()
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^\[FATAL\] LOCK_IO: mkdir .+plain-file failed: .+\n$/)
    expect(fs.existsSync(marker)).toBe(false)
  })

  test('--wait: waits for the holder to end, then runs the command', async () => {
    const dir = tempDir('cli-wait')
    const first = startRun(['backend'], ['signal-exit', '0'], { dir })
    const firstPid = await childPid(first)
    const marker = path.join(dir, 'started.txt')
    const second = startRun(['backend', '--wait', '20000'], ['exit', '0'], { dir, env: { CHILD_MARKER: marker } })
    // Wait for the whole line: output can arrive split in the middle of it.
    await second.waitFor(/\[PROCESS_LOCK_WAIT\] backend \(SHORT\) is held by PID \d+; waiting up to 20000 ms/)
    expect(second.stderr).toContain(`is held by PID ${firstPid}; waiting up to 20000 ms`)
    expect(fs.existsSync(marker)).toBe(false)
    const stopped = Date.now()
    first.kill('SIGTERM')
    expect((await first.done()).code).toBe(0)
    const r = await second.done()
    expect(r.code).toBe(0)
    expect(Date.now() - stopped).toBeLessThan(5000)
    expect(fs.existsSync(marker)).toBe(true)
    expect(r.stderr).toMatch(/\[PROCESS_LOCK_ACQUIRED\] \{ processType: 'backend', tradeSide: 'SHORT', pid: \d+ \}/)
    expect(lockDirEntries(dir).filter((n) => n !== 'started.txt')).toEqual([])
  })

  test('--wait: gives up after the time with the conflict lines; a signal ends the wait at once', async () => {
    const dir = tempDir('cli-wait-timeout')
    const holder = await startHolder(dir, 'backend')
    const marker = path.join(dir, 'started.txt')
    const began = Date.now()
    const r = await startRun(['backend', '--wait', '400'], ['exit', '0'], { dir, env: { CHILD_MARKER: marker } }).done()
    expect(Date.now() - began).toBeGreaterThanOrEqual(400)
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${holder.pid}`)
    expect(r.stderr).toContain(`[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${holder.pid})`)

    // Its own temp directory, where the socket that hands the lock to the command's processes lives.
    const tmp = tempDir('cli-wait-tmp')
    const waiting = startRun(['backend', '--wait', '60000'], ['exit', '0'], {
      dir,
      env: { CHILD_MARKER: marker, TMPDIR: tmp },
    })
    await waiting.waitFor('[PROCESS_LOCK_WAIT]')
    const signalled = Date.now()
    waiting.kill('SIGTERM')
    expect((await waiting.done()).signal).toBe('SIGTERM')
    expect(Date.now() - signalled).toBeLessThan(2000)
    expect(fs.existsSync(marker)).toBe(false)
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    holder.kill('SIGTERM')
    await holder.done()
    // Dying by the signal left nothing behind there either.
    expect(fs.readdirSync(tmp)).toEqual([])
  })

  test('takes over a stale lock with the stale-removal line', async () => {
    const dir = tempDir('cli-stale')
    const stalePid = await staleLock(dir, 'backend')
    const r = await startRun(['backend'], ['exit', '0'], { dir }).done()
    expect(r.code).toBe(0)
    expect(r.stderr.split('\n')[0]).toBe(`[PROCESS_LOCK_STALE] Found stale lock file for PID ${stalePid}, removing...`)
  })

  test.each(SIGNALS)('passes %s on to the command and dies by it as the command did', async (signal) => {
    const dir = tempDir('cli-signal')
    const run = startRun(['backend'], ['signal-die'], { dir })
    await childPid(run)
    run.kill(signal)
    const r = await run.done()
    expect(r).toMatchObject({ code: null, signal })
    expect(count(r.stdout, `GOT ${signal}`)).toBe(1)
    expect(r.stderr).toContain('[PROCESS_LOCK_RELEASED]')
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('SIGKILL of processlock leaves the lock held by the command until the command ends', async () => {
    const dir = tempDir('cli-sigkill')
    const run = startRun(['backend'], ['hold'], { dir })
    const pid = await childPid(run)
    run.kill('SIGKILL')
    expect((await run.exited()).signal).toBe('SIGKILL')
    expect(alive(pid)).toBe(true)

    expect((await checkJson(dir)).map((l) => [l.state, l.pid, l.problem])).toEqual([['held', pid, null]])
    const second = await startRun(['backend'], ['exit', '0'], { dir }).done()
    expect(second.code).toBe(1)
    expect(second.stderr).toContain(`[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${pid}`)
    const cleared = await cli(['clear'], { dir })
    expect(cleared.stdout).toContain(`kept            backend.short.lock (held by running PID ${pid}`)

    process.kill(pid, 'SIGTERM')
    await waitGone(pid)
    expect((await checkJson(dir)).map((l) => [l.state, l.pid])).toEqual([['stale', pid]])
    const third = await startRun(['backend'], ['exit', '0'], { dir }).done()
    expect(third.code).toBe(0)
    expect(third.stderr).toContain(`[PROCESS_LOCK_STALE] Found stale lock file for PID ${pid}, removing...`)
  })

  test('a grandchild that inherited the lock keeps it; check says who to look for', async () => {
    const dir = tempDir('cli-grandchild')
    // The shell starts a long sleeper in the background and exits at once.
    const r = await startCli(['run', 'backend', '-q', '--', '/bin/sh', '-c', 'sleep 30 >/dev/null 2>&1 & echo $!'], {
      dir,
    }).exited()
    expect(r.code).toBe(0)
    const sleeper = Number(r.stdout.trim())
    try {
      const [lock] = await checkJson(dir)
      expect(lock.state).toBe('held')
      expect(lock.problem).toContain('is not running, but a process it started still holds the lock')
      const conflict = await startRun(['backend'], ['exit', '0'], { dir }).done()
      expect(conflict.code).toBe(1)
      expect(conflict.stderr).toContain(`[PROCESS_LOCK_CONFLICT] To find it, run: fuser -v ${lockFile(dir)}`)
    } finally {
      process.kill(sleeper, 'SIGKILL')
    }
  })
})

describe('usage', () => {
  test.each([
    [[]],
    [['frobnicate']],
    [['--bogus']],
    [['check', '--force']],
    [['clear', 'extra']],
    [['check', '--dir']],
    [['run']],
    [['run', 'backend']],
    [['run', 'backend', '--side']],
    [['run', 'back/end', '--', 'true']],
    [['run', 'backend', '--side', 'SHORT LONG', '--', 'true']],
    [['run', 'backend', '--wait', 'soon', '--', 'true']],
  ])('%j: exit 2 with a one-line reason', async (args) => {
    const dir = tempDir('cli-usage')
    const r = await cli(args, { dir })
    expect(r.code).toBe(2)
    expect(r.stdout).toBe('')
    expect(r.stderr).toMatch(/^processlock: [^\n]+ \(see processlock --help\)\n$/)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('--help and --version', async () => {
    for (const args of [['--help'], ['-h'], ['run', '--help'], ['help']]) {
      const r = await cli(args)
      expect(r.code).toBe(0)
      expect(r.stdout).toContain('processlock run <type> [--side SIDE]')
    }
    expect(await cli(['--version'])).toMatchObject({ code: 0, stdout: `processlock ${VERSION}\n` })
  })
})

describe('the npm launcher (bin/processlock.js)', () => {
  test('finds the binary; passes arguments, output and exit status through', async () => {
    expect(await cli(['--version'], { via: 'launcher' })).toMatchObject({ code: 0, stdout: `processlock ${VERSION}\n` })
    const dir = tempDir('cli-launcher')
    expect((await cli(['check'], { via: 'launcher', dir })).stdout).toBe(`No locks in ${dir}\n`)
    expect((await cli(['frobnicate'], { via: 'launcher' })).code).toBe(2)
    const r = await startRun(['backend', '-q'], ['exit', '5'], { via: 'launcher', dir }).done()
    expect(r.code).toBe(5)
  })

  test('without an override it finds the build in the checkout', async () => {
    const r = await cli(['--version'], { via: 'launcher', env: { PROCESSLOCK_BINARY: undefined } })
    expect(r).toMatchObject({ code: 0, stdout: `processlock ${VERSION}\n` })
  })

  test.each(SIGNALS)('passes %s through to the command and dies by it', async (signal) => {
    const dir = tempDir('cli-launcher-signal')
    const run = startRun(['backend'], ['signal-die'], { via: 'launcher', dir })
    await childPid(run)
    run.kill(signal)
    const r = await run.done()
    expect(r).toMatchObject({ code: null, signal })
    expect(count(r.stdout, `GOT ${signal}`)).toBe(1)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('names the platform package the napi-rs way', () => {
    const { abi, candidates } = require('../bin/processlock.js')
    const name = abi()
    expect(name).toMatch(/^(linux-(x64|arm64)-(gnu|musl)|darwin-(x64|arm64)|win32-x64-msvc|[a-z0-9]+-[a-z0-9]+)$/)
    if (process.platform === 'linux' && process.arch === 'x64') expect(name).toMatch(/^linux-x64-(gnu|musl)$/)
    const { paths } = candidates()
    expect(paths).toContain(path.join(ROOT, 'npm', name, path.basename(BINARY)))
  })

  test('npx processlock runs it from the package', () => {
    const out = execFileSync('npx', ['--no-install', 'processlock', '--version'], { cwd: ROOT, encoding: 'utf8' })
    expect(out).toBe(`processlock ${VERSION}\n`)
  })
})

const onTerminal = needs(hasScript(), 'the script command (util-linux), for a terminal').describe

onTerminal('Ctrl+C on a terminal', () => {
  // The terminal sends SIGINT to its whole foreground process group: the command has it already,
  // and a second copy would stop "press Ctrl+C again to force" apps in the middle of their
  // shutdown. processlock must not pass that one on, and must drop its launcher's relay of it.
  test.each([
    ['the binary', [BINARY]],
    ['the launcher', [process.execPath, LAUNCHER]],
  ])('through %s, the command gets exactly one SIGINT', async (_label, head) => {
    const dir = tempDir('cli-tty')
    const term = startOnTerminal([...head, 'run', 'backend', '--', process.execPath, CHILD, 'count', '700'], { dir })
    await term.waitFor(/CHILD READY \d+/)
    term.child.stdin.write('\x03')
    const r = await term.done()
    expect(count(r.stdout, 'GOT SIGINT')).toBe(1)
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('[PROCESS_LOCK_RELEASED]')
    expect(lockDirEntries(dir)).toEqual([])
  })
})
