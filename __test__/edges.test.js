'use strict'
// The edges where a lock could get two owners, or a holder could believe it still holds a lock
// it lost: forced removal of our own lock against a waiter, worker threads, an aborted wait
// beside a successful one, the lock directory seen from another working directory or through
// a symlink, and a lock file removed, replaced or moved under its holder.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const pl = require('..')
const { ROOT, FIXTURES, tempDir, watch, start, lockDirEntries } = require('./helpers/proc')

const { SHORT, lockFile, recordOf, asInfo, holder, stop } = require('./helpers/lock')
const { onlyOn } = require('./helpers/skip')

/** Another process tries the lock once: its JSON outcome. */
async function tryFromAnotherProcess(dir) {
  const r = await start('try-acquire.js', { dir }).done()
  return JSON.parse(r.stdout)
}

function lastJson(text) {
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
  return JSON.parse(lines[lines.length - 1])
}

describe('forceRemoveLock on a lock this process holds', () => {
  // The forcer's unlinks are slowed down at the system call, so that a waiter has all the time
  // it needs to take the lock between the forcer letting go and its unlink, if that gap exists.
  test('removes only its own file: a waiter that takes the lock next never loses its file', async () => {
    expect(spawnSync('strace', ['-V']).status).toBe(0) // this test needs strace (apt-get install strace)
    const dir = tempDir('edges-force')
    const state = path.join(tempDir('edges-force-state'), 'state')
    const env = { PROCESSLOCK_LOG: 'silent', STATE: state }
    const waiter = start('hold-verifier.js', { dir, env })
    await waiter.waitFor('READY')
    const forcer = watch(
      'strace',
      [
        '-f',
        '-qq',
        '-o',
        '/dev/null',
        '-e',
        'trace=unlink,unlinkat',
        '-e',
        'inject=unlink,unlinkat:delay_enter=30000',
        process.execPath,
        path.join(FIXTURES, 'force-own.js'),
      ],
      { env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', ...env, ROUNDS: '12' } },
    )
    const f = await forcer.done(120000)
    expect(f.code).toBe(0)
    expect(JSON.parse(f.stdout)).toEqual({ rounds: 12, removed: 12 })
    const w = await waiter.done(120000)
    expect(w.code).toBe(0)
    const result = lastJson(w.stdout)
    expect(result.rounds).toBeGreaterThanOrEqual(1)
    expect(result.lost).toBe(0)
    expect(lockDirEntries(dir)).toEqual([])
  })
})

describe("worker threads share the process's locks", () => {
  async function scenario(how, who) {
    const dir = tempDir(`edges-worker-${how}-${who}`)
    const p = start('worker-threads.js', { dir, args: [how, who], env: { PROCESSLOCK_LOG: 'silent' } })
    await p.waitFor('READY')
    const seen = lastJson(p.stdout)
    const other = await tryFromAnotherProcess(dir)
    p.child.stdin.end()
    const r = await p.done(60000)
    return { dir, seen, other, r, pid: p.pid }
  }

  test.each([['natural'], ['exit'], ['terminate']])(
    "a worker that takes the main thread's lock and ends (%s) leaves it held by the main thread",
    async (how) => {
      const { seen, other, r, pid } = await scenario(how, 'both')
      expect(seen).toMatchObject({ acquired: pid, held: true, exists: true })
      expect(other).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', holder: { pid } })
      expect(r.code).toBe(0)
    },
  )

  test('releaseLock in a worker while the main thread holds the lock: false, the lock stays', async () => {
    const { seen, other } = await scenario('release', 'both')
    expect(seen).toMatchObject({ released: false, heldAfterRelease: true, held: true, exists: true })
    expect(other).toMatchObject({ ok: false, code: 'LOCK_CONFLICT' })
  })

  test.each([['natural'], ['exit'], ['terminate'], ['release']])(
    'a lock only a worker took is released when the worker ends (%s)',
    async (how) => {
      const { dir, seen, other } = await scenario(how, 'worker-only')
      expect(seen).toMatchObject({ held: false, exists: false })
      expect(other).toMatchObject({ ok: true })
      expect(lockDirEntries(dir)).toEqual([])
    },
  )
})

describe('which thread takes the lock', () => {
  // The main thread is told apart from a worker without loading worker_threads where Node has
  // not loaded it (lib/entry.js); a worker started any way must still be known as one: its entry
  // script is not the application's, and it installs no signal listeners.
  const ENTRY = JSON.stringify(path.join(ROOT, 'lib', 'entry.js'))
  const REPORT = `const { isMainThread } = require(${ENTRY})
const { parentPort } = require('node:worker_threads')
parentPort.postMessage(isMainThread())
`
  const SCRIPTS = {
    'worker.cjs': REPORT,
    'worker.mjs': `import { createRequire } from 'node:module'\nconst require = createRequire(import.meta.url)\n${REPORT}`,
  }

  test.each([
    ['a CommonJS file', 'worker.cjs'],
    ['an ES module', 'worker.mjs'],
    ['code given to eval', 'eval'],
  ])('a worker running %s is not the main thread', (_, script) => {
    const dir = tempDir('edges-worker-thread')
    for (const [name, text] of Object.entries(SCRIPTS)) fs.writeFileSync(path.join(dir, name), text)
    const make =
      script === 'eval'
        ? `new Worker(${JSON.stringify(REPORT)}, { eval: true })`
        : `new Worker(${JSON.stringify(path.join(dir, script))})`
    const code = `const { Worker } = require('node:worker_threads'); const w = ${make};
      w.on('message', (m) => console.log(JSON.stringify({ main: m }))); w.on('error', (e) => console.log(String(e)))`
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 60000 })
    expect(r.stdout.trim()).toBe('{"main":false}')
  })

  test('the main thread takes and releases a lock without loading worker_threads', () => {
    const dir = tempDir('edges-main-thread')
    const code = `const pl = require(${JSON.stringify(ROOT)});
      const opts = { dir: ${JSON.stringify(dir)}, log: false };
      pl.acquireLock('backend', opts); pl.releaseLock('backend', opts);
      console.log(JSON.stringify({ main: require(${ENTRY}).isMainThread(),
        loaded: process.moduleLoadList.includes('NativeModule worker_threads') }))`
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 60000 })
    expect(JSON.parse(r.stdout)).toEqual({ main: true, loaded: false })
  })
})

describe('an aborted wait beside another wait for the same lock', () => {
  const sleepMs = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

  /**
   * Starts an abortable wait behind a holder, SIGKILLs the holder and returns once the wait has
   * taken the lock. The event loop is kept busy from then on, so no result reaches JavaScript
   * until the caller lets it.
   */
  async function waitThatTookTheLock(dir) {
    const file = lockFile(dir)
    const p = await holder(dir)
    const ctrl = new AbortController()
    const aborted = pl.acquireLockAsync('backend', SHORT(dir, { signal: ctrl.signal }))
    process.kill(p.pid, 'SIGKILL')
    for (const until = Date.now() + 20000; Date.now() < until; ) {
      try {
        if (recordOf(file).pid === process.pid) break
      } catch {}
    }
    return { file, p, ctrl, aborted }
  }

  test('aborting the wait that took the lock does not release what the other call returned', async () => {
    const dir = tempDir('edges-abort')
    // Both native calls finish before any result reaches JavaScript: the wait takes the lock
    // when the holder dies ...
    const { file, p, ctrl, aborted } = await waitThatTookTheLock(dir)
    expect(recordOf(file).pid).toBe(process.pid)
    // ... then a second call finds it held by this process and returns it ...
    const other = pl.acquireLockAsync('backend', SHORT(dir, { timeoutMs: 0 }))
    sleepMs(200)
    // ... and the first is aborted before its result is handled.
    ctrl.abort()
    const [a, b] = await Promise.allSettled([aborted, other])
    expect(a.status).toBe('rejected')
    expect(a.reason.code).toBe('LOCK_ABORTED')
    expect(b.status).toBe('fulfilled')
    expect(b.value.pid).toBe(process.pid)
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(true)
    expect(recordOf(file).pid).toBe(process.pid)
    expect(await tryFromAnotherProcess(dir)).toMatchObject({
      ok: false,
      code: 'LOCK_CONFLICT',
      holder: { pid: process.pid },
    })
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    await p.done()
  })

  test('an aborted wait alone still gives back the lock it took', async () => {
    const dir = tempDir('edges-abort-alone')
    const { p, ctrl, aborted } = await waitThatTookTheLock(dir)
    ctrl.abort()
    await expect(aborted).rejects.toMatchObject({ code: 'LOCK_ABORTED' })
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(false)
    expect(lockDirEntries(dir)).toEqual([])
    await p.done()
  })
})

describe('where the lock file lives', () => {
  /** A project with its entry script in dist/, and a place to start it from outside. */
  function project(label) {
    const base = tempDir(label)
    const app = path.join(base, 'app')
    fs.mkdirSync(path.join(app, 'dist'), { recursive: true })
    fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","private":true}')
    // What TypeScript builds often leave in their output: a module-type marker, not a project.
    fs.writeFileSync(path.join(app, 'dist', 'package.json'), '{ "type": "commonjs" }')
    fs.copyFileSync(path.join(FIXTURES, 'app-entry.js'), path.join(app, 'dist', 'server.js'))
    fs.writeFileSync(
      path.join(app, 'dist', 'server.mjs'),
      `await import(${JSON.stringify(require('node:url').pathToFileURL(path.join(app, 'dist', 'server.js')).href)})\n`,
    )
    return { base, app, locks: path.join(app, 'runtime', 'locks') }
  }

  function startApp(script, cwd, env = {}) {
    return watch(process.execPath, [script], {
      cwd,
      stdin: 'pipe',
      env: {
        ...process.env,
        PROCESSLOCK_DIR: undefined,
        PROCESSLOCK_LOG: 'silent',
        TRADE_SIDE: 'SHORT',
        PROCESSLOCK_PACKAGE: ROOT,
        ...env,
      },
    })
  }

  /** As `pm2 start <script>` runs it in fork mode: through PM2's own container script. */
  function startUnderPm2Container(script, cwd) {
    const container = path.join(ROOT, 'node_modules', 'pm2', 'lib', 'ProcessContainerFork.js')
    return startApp(container, cwd, { pm_exec_path: script, pmx: 'false' })
  }

  test('the same service started from / and from its project directory uses one lock file', async () => {
    const { app, locks } = project('edges-entry')
    const rootLocksExisted = fs.existsSync('/runtime')
    const first = startApp(path.join(app, 'dist', 'server.js'), '/')
    try {
      await first.waitFor('READY')
      const held = lastJson(first.stdout)
      // The lock is under the project, and a later chdir (to /) does not move it.
      expect(held).toEqual({ ok: true, before: lockFile(locks), after: lockFile(locks), held: true })
      const starts = [
        () => startApp(path.join(app, 'dist', 'server.js'), app),
        () => startApp(path.join(app, 'dist', 'server.js'), path.join(app, 'dist')),
        () => startApp(path.join(app, 'dist', 'server.mjs'), '/'),
        () => startUnderPm2Container(path.join(app, 'dist', 'server.js'), '/'),
        () => startUnderPm2Container(path.join(app, 'dist', 'server.mjs'), '/'),
      ]
      for (const startSecond of starts) {
        const second = await startSecond().done(60000)
        expect(lastJson(second.stdout)).toEqual({
          ok: false,
          code: 'LOCK_CONFLICT',
          holder: first.pid,
          lockFile: lockFile(locks),
        })
      }
      first.child.stdin.end()
      const r = await first.done(60000)
      // Released from where it was taken, although the working directory changed.
      expect(lastJson(r.stdout)).toEqual({ released: true })
      expect(lockDirEntries(locks)).toEqual([])
    } finally {
      first.kill('SIGKILL')
      if (!rootLocksExisted) fs.rmSync('/runtime', { recursive: true, force: true })
    }
  })

  test('a lock taken with a relative dir is released at SIGTERM after chdir and a change of $TRADE_SIDE', async () => {
    const base = tempDir('edges-relative')
    const code = `
      const pl = require(${JSON.stringify(ROOT)})
      pl.acquireLock('backend', { dir: 'locks' })
      process.chdir('/')
      process.env.TRADE_SIDE = 'LONG'
      console.log('READY')
      setInterval(() => {}, 1000)`
    const p = watch(process.execPath, ['-e', code], {
      cwd: base,
      env: { ...process.env, PROCESSLOCK_DIR: undefined, PROCESSLOCK_LOG: '', TRADE_SIDE: 'SHORT' },
    })
    await p.waitFor('READY')
    expect(lockDirEntries(path.join(base, 'locks'))).toEqual(['backend.short.lock'])
    p.kill('SIGTERM')
    const r = await p.done(60000)
    expect(r.signal).toBe('SIGTERM')
    expect(r.stdout).toContain(`[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${p.pid} }`)
    expect(lockDirEntries(path.join(base, 'locks'))).toEqual([])
  })

  test('a relative dir names the directory under the working directory of each call, also for a lock named before', () => {
    const [a, b] = [tempDir('edges-cwd-a'), tempDir('edges-cwd-b')].map((d) => fs.realpathSync(d))
    const before = process.cwd()
    try {
      process.chdir(a)
      expect(pl.lockFilePath('backend', SHORT('locks'))).toBe(lockFile(path.join(a, 'locks')))
      expect(pl.acquireLock('backend', SHORT('locks')).pid).toBe(process.pid)
      process.chdir(b)
      expect(pl.lockFilePath('backend', SHORT('locks'))).toBe(lockFile(path.join(b, 'locks')))
      expect(pl.isLockHeld('backend', SHORT('locks'))).toBe(false)
      process.chdir(a)
      expect(pl.isLockHeld('backend', SHORT('locks'))).toBe(true)
      expect(pl.releaseLock('backend', SHORT('locks'))).toBe(true)
    } finally {
      process.chdir(before)
    }
  })

  test('a lock directory reached through a symlink or .. is the same lock, not a conflict with itself', () => {
    const base = tempDir('edges-symlink')
    const real = path.join(base, 'real')
    fs.mkdirSync(path.join(real, 'sub'), { recursive: true })
    const link = path.join(base, 'link')
    fs.symlinkSync(real, link)
    const info = pl.acquireLock('backend', SHORT(real))
    for (const dir of [link, path.join(real, 'sub', '..'), path.join(link, 'sub', '..')]) {
      expect(pl.acquireLock('backend', SHORT(dir))).toEqual(info)
      expect(pl.isLockHeld('backend', SHORT(dir))).toBe(true)
      expect(pl.getLockInfo('backend', SHORT(dir))).toEqual(info)
      expect(pl.lockFilePath('backend', SHORT(dir))).toBe(lockFile(real))
      expect(pl.listLocks({ dir }).map((l) => [l.file, l.isOwn])).toEqual([[lockFile(real), true]])
    }
    expect(pl.releaseLock('backend', SHORT(link))).toBe(true)
    expect(pl.isLockHeld('backend', SHORT(real))).toBe(false)
    expect(lockDirEntries(real)).toEqual(['sub'])
  })
})

describe('a holder whose lock file was removed, replaced or moved knows it', () => {
  function forceRemoveFromAnotherProcess(dir) {
    const code = `process.stdout.write(String(require(${JSON.stringify(ROOT)}).forceRemoveLock('backend', { dir: ${JSON.stringify(dir)}, tradeSide: 'SHORT', log: false })))`
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' })
    expect(r.stderr).toBe('')
    expect(r.stdout).toBe('true')
  }

  test('isLockHeld: false before, true while held, false after release; bad names throw', () => {
    const dir = tempDir('edges-isheld')
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(false)
    pl.acquireLock('backend', SHORT(dir))
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(true)
    expect(pl.isLockHeld('backend', SHORT(dir, { tradeSide: 'LONG' }))).toBe(false)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(false)
    expect(() => pl.isLockHeld('bad name', SHORT(dir))).toThrow(expect.objectContaining({ code: 'LOCK_INVALID_NAME' }))
    expect(() => pl.isLockHeld('backend', { dir: 5 })).toThrow(expect.objectContaining({ code: 'LOCK_INVALID_OPTION' }))
  })

  const linuxTest = onlyOn(['linux'], 'threads are named in /proc')

  // The fixture reads its threads' names in /proc to know that the native watcher has sent
  // the loss notice before it takes the lock again, in the same JavaScript turn.
  linuxTest('a lock file taken again before the notice of its loss arrived stays held', async () => {
    const dir = tempDir('edges-retake')
    const p = start('file-retake.js', { dir })
    await p.waitFor('HELD\n')
    fs.unlinkSync(lockFile(dir))
    const after = JSON.parse((await p.waitFor(/AFTER (.*)\n/))[1])
    // The signal asked for before the loss learns of it; the hold taken since stays, its file
    // too, and a signal asked for now is a new one.
    expect(after).toEqual({ held: true, beforeAborted: true, beforeReason: 'LOCK_LOST', newAborted: false, file: true })
    expect((await p.done()).code).toBe(0)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('removed by another process: not ours any more; acquireLock takes it anew', () => {
    const dir = tempDir('edges-removed')
    const first = pl.acquireLock('backend', SHORT(dir))
    forceRemoveFromAnotherProcess(dir)
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(false)
    expect(pl.getLockInfo('backend', SHORT(dir))).toBe(null)
    expect(pl.listLocks({ dir })).toEqual([])
    const again = pl.acquireLock('backend', SHORT(dir))
    expect(again.pid).toBe(process.pid)
    expect(again.started >= first.started).toBe(true)
    expect(asInfo(recordOf(lockFile(dir)), again.fencingToken)).toEqual(again)
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(true)
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test("replaced by another process's lock: its record, isOwn false, acquireLock conflicts", async () => {
    const dir = tempDir('edges-replaced')
    pl.acquireLock('backend', SHORT(dir))
    forceRemoveFromAnotherProcess(dir)
    const p = await holder(dir)
    try {
      expect(pl.isLockHeld('backend', SHORT(dir))).toBe(false)
      expect(pl.getLockInfo('backend', SHORT(dir)).pid).toBe(p.pid)
      expect(pl.listLocks({ dir }).map((l) => [l.state, l.record.pid, l.isOwn])).toEqual([['held', p.pid, false]])
      expect(() => pl.acquireLock('backend', SHORT(dir))).toThrow(
        expect.objectContaining({ code: 'LOCK_CONFLICT', holder: expect.objectContaining({ pid: p.pid }) }),
      )
      // Our release removes nothing of theirs.
      expect(pl.releaseLock('backend', SHORT(dir))).toBe(false)
      expect(recordOf(lockFile(dir)).pid).toBe(p.pid)
    } finally {
      await stop(p)
    }
  })

  test('its directory moved away: not ours at the path any more; acquireLock takes it anew there', () => {
    const base = tempDir('edges-moved')
    const dir = path.join(base, 'locks')
    pl.acquireLock('backend', SHORT(dir))
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(true)
    fs.renameSync(dir, path.join(base, 'moved'))
    expect(pl.isLockHeld('backend', SHORT(dir))).toBe(false)
    expect(pl.getLockInfo('backend', SHORT(dir))).toBe(null)
    pl.acquireLock('backend', SHORT(dir))
    expect(recordOf(lockFile(dir)).pid).toBe(process.pid)
    expect(pl.listLocks({ dir }).map((l) => l.isOwn)).toEqual([true])
    expect(pl.releaseLock('backend', SHORT(dir))).toBe(true)
    // The old file went with its directory; it is nobody's lock and stays there.
    expect(lockDirEntries(path.join(base, 'moved'))).toEqual(['backend.short.lock'])
  })
})
