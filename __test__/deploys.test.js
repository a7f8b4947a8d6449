'use strict'
// Release-directory deploys (Capistrano, Deployer, Ansistrano): `<base>/current` is a symbolic
// link to `<base>/releases/<name>`, switched to each new release, and what outlives a release
// lives in `<base>/shared`. Every release is the same service: with the default lock directory,
// the old release's process and the new one's must meet at one lock, whichever of them is
// started first and through whichever path. Real directory layouts, real processes.
const fs = require('node:fs')
const { onlyOn } = require('./helpers/skip')
const path = require('node:path')
const { ROOT, tempDir, watch, running } = require('./helpers/proc')
const { cli } = require('./helpers/cli-proc')

const posix =
  process.platform === 'win32' ? onlyOn(['linux', 'darwin'], 'symbolic links of a release layout').describe : describe

/** A release of the service: its package.json and an entry script that takes `backend`. */
function release(base, name, { esm = false } = {}) {
  const dir = path.join(base, 'releases', name)
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'trader', version: name }))
  const take = `try {
  const info = acquireLock('backend')
  console.log('READY ' + JSON.stringify(info))
} catch (e) {
  console.log('REFUSED ' + JSON.stringify({ code: e.code, holder: e.holder }))
  process.exit(1)
}
if (process.env.HOLD === '1') setInterval(() => {}, 1 << 30)
`
  const entry = esm
    ? `import { acquireLock } from ${JSON.stringify(path.join(ROOT, 'index.mjs'))}\n${take}`
    : `const { acquireLock } = require(${JSON.stringify(ROOT)})\n${take}`
  fs.writeFileSync(path.join(dir, esm ? 'server.mjs' : 'server.js'), entry)
  return dir
}

/** Points `<base>/current` at `target` the way the deploy tools do: a new link renamed over it. */
function switchCurrent(base, target) {
  const next = path.join(base, 'current.next')
  fs.symlinkSync(target, next)
  fs.renameSync(next, path.join(base, 'current'))
}

/**
 * The service started as a supervisor starts it: through `<base>/current`, defaults only. With
 * `hold` it keeps the lock until signalled; else it ends once it has taken it (or was refused).
 */
function startService(base, { script = 'server.js', hold = false } = {}) {
  const env = { ...process.env, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', PROCESSLOCK_DIR: undefined }
  if (hold) env.HOLD = '1'
  return watch(process.execPath, [path.join(base, 'current', script)], { cwd: path.join(base, 'current'), env })
}

const said = (p, word) => JSON.parse(p.stdout.match(new RegExp(`^${word} (.*)$`, 'm'))[1])

posix('a release-directory deploy', () => {
  test("the old and the new release's processes conflict; processlock check from current names the lock", async () => {
    const base = fs.realpathSync(tempDir('deploy'))
    release(base, '20250101120000')
    release(base, '20250102120000', { esm: true })
    fs.mkdirSync(path.join(base, 'shared'))
    // Deployer writes a relative link, Capistrano and Ansistrano an absolute one.
    switchCurrent(base, 'releases/20250101120000')
    const shared = path.join(base, 'shared', 'runtime', 'locks', 'backend.short.lock')

    const old = startService(base, { hold: true })
    const others = []
    try {
      await old.waitFor('READY')

      switchCurrent(base, path.join(base, 'releases', '20250102120000'))
      const next = startService(base, { script: 'server.mjs' })
      others.push(next)
      expect(await next.done(30000)).toMatchObject({ code: 1 })
      expect(said(next, 'REFUSED')).toMatchObject({ code: 'LOCK_CONFLICT', holder: { pid: old.pid } })
      expect(next.stderr).toContain(`[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${old.pid}`)
      expect(fs.existsSync(shared)).toBe(true)

      // The command, from the directory operators go to, and from the deploy's base.
      for (const cwd of [path.join(base, 'current'), base]) {
        const check = await cli(['check', 'backend'], { dir: undefined, cwd })
        expect(check.code).toBe(0)
        expect(check.stdout).toContain(`backend (SHORT): held by PID ${old.pid}`)
        expect(check.stdout).toContain(`file: ${shared}`)
      }

      // A release that links `runtime` into shared/ itself (Capistrano's linked_dirs) meets the
      // same lock: a directory is known by its real path.
      const linked = release(base, '20250103120000')
      fs.symlinkSync(path.join(base, 'shared', 'runtime'), path.join(linked, 'runtime'))
      switchCurrent(base, linked)
      const third = startService(base)
      others.push(third)
      expect(await third.done(30000)).toMatchObject({ code: 1 })
      expect(said(third, 'REFUSED')).toMatchObject({ code: 'LOCK_CONFLICT', holder: { pid: old.pid } })
    } finally {
      for (const p of others) p.kill('SIGKILL')
      old.kill('SIGTERM')
      await old.done()
    }
    expect(fs.existsSync(shared)).toBe(false)

    // Once the old release's process is gone, the current one starts.
    const now = startService(base, { hold: true })
    try {
      await now.waitFor('READY')
      expect(said(now, 'READY').pid).toBe(now.pid)
      expect(fs.existsSync(shared)).toBe(true)
    } finally {
      now.kill('SIGTERM')
      await now.done()
    }
    for (const p of others) expect(running(p.pid)).toBe(false)
  })

  test('without a current link into releases/, a directory named releases is nothing special', async () => {
    const base = fs.realpathSync(tempDir('not-deploy'))
    const dir = release(base, 'v1')
    fs.mkdirSync(path.join(base, 'current'))
    fs.cpSync(dir, path.join(base, 'current'), { recursive: true })
    const p = startService(base, { hold: true })
    try {
      await p.waitFor('READY')
      expect(fs.existsSync(path.join(base, 'current', 'runtime', 'locks', 'backend.short.lock'))).toBe(true)
      expect(fs.existsSync(path.join(base, 'shared'))).toBe(false)
    } finally {
      p.kill('SIGTERM')
      await p.done()
    }
  })
})
