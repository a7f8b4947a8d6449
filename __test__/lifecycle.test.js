'use strict'
// Every way a process can end releases its lock, and the app's own shutdown is left alone.
const fs = require('node:fs')
const path = require('node:path')
const { start, tempDir, lockDirEntries } = require('./helpers/proc')

const lockFile = (dir) => path.join(dir, 'backend.short.lock')

async function holder(how) {
  const dir = tempDir(`life-${how}`)
  const p = start('ending.js', { dir, args: [how] })
  await p.waitFor('READY')
  expect(fs.existsSync(lockFile(dir))).toBe(true)
  return { dir, p }
}

describe('release at exit', () => {
  test.each([
    ['exit', 3],
    ['natural', 0],
    ['throw', 1],
    ['reject', 1],
  ])('%s: exit status %i and the lock file is gone', async (how, status) => {
    const { dir, p } = await holder(how)
    const r = await p.done()
    expect(r.code).toBe(status)
    expect(r.signal).toBe(null)
    expect(fs.existsSync(lockFile(dir))).toBe(false)
    expect(r.stdout).toContain(`[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${p.pid} }`)
    if (how === 'throw') expect(r.stderr).toContain('Error: boom')
    if (how === 'reject') expect(r.stderr).toContain('rejected')
  })

  test.each([['SIGINT'], ['SIGTERM'], ['SIGHUP']])(
    '%s without app listeners: released, then the process dies by the same signal',
    async (signal) => {
      const { dir, p } = await holder('wait')
      p.kill(signal)
      const r = await p.done()
      expect(r.signal).toBe(signal)
      expect(fs.existsSync(lockFile(dir))).toBe(false)
      expect(lockDirEntries(dir)).toEqual([])
    },
  )

  test.each([['SIGINT'], ['SIGTERM'], ['SIGHUP']])(
    '%s with signal-exit loaded (lockfile, execa, ...): still released, still dies by the signal',
    async (signal) => {
      const { dir, p } = await holder('with-signal-exit')
      p.kill(signal)
      const r = await p.done()
      expect(r.signal).toBe(signal)
      expect(fs.existsSync(lockFile(dir))).toBe(false)
    },
  )

  test('SIGKILL: nothing runs, the file stays, and the next acquirer takes it at once', async () => {
    const { dir, p } = await holder('wait')
    p.kill('SIGKILL')
    expect((await p.done()).signal).toBe('SIGKILL')
    expect(fs.existsSync(lockFile(dir))).toBe(true)
    const { acquireLock, releaseLock } = require('..')
    const t0 = process.hrtime.bigint()
    const info = acquireLock('backend', { dir, tradeSide: 'SHORT', log: false })
    const tookMs = Number(process.hrtime.bigint() - t0) / 1e6
    expect(info.pid).toBe(process.pid)
    expect(tookMs).toBeLessThan(1000) // no stale timeout to wait out
    expect(releaseLock('backend', { dir, tradeSide: 'SHORT', log: false })).toBe(true)
  })
})

describe("the app's own shutdown", () => {
  test('an app SIGTERM listener drains with the lock held, then exit releases it', async () => {
    const { dir, p } = await holder('app-listener')
    p.kill('SIGTERM')
    await p.waitFor('APP_SHUTDOWN_START')
    // Still draining: still the owner.
    expect(JSON.parse(fs.readFileSync(lockFile(dir), 'utf8')).pid).toBe(p.pid)
    const r = await p.done()
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('APP_SHUTDOWN_DONE')
    expect(fs.existsSync(lockFile(dir))).toBe(false)
  })

  test('a listener that removes itself during the signal (Temporal Runtime) is not cut short', async () => {
    const { dir, p } = await holder('self-removing-listener')
    p.kill('SIGINT')
    await p.waitFor('APP_SHUTDOWN_START')
    expect(fs.existsSync(lockFile(dir))).toBe(true)
    const r = await p.done()
    expect(r.signal).toBe(null)
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('APP_SHUTDOWN_DONE')
    expect(fs.existsSync(lockFile(dir))).toBe(false)
  })

  test('nothing is installed at require time, and everything goes after the last release', async () => {
    const dir = tempDir('life-listeners')
    const r = await start('ending.js', { dir, args: ['nothing-installed-before-acquire'] }).done()
    expect(r.code).toBe(0)
    const { before, during, after } = JSON.parse(r.stdout.trim().split('\n').pop())
    // exit, SIGINT, SIGTERM, SIGHUP, uncaughtException. No 'exit' listener: the release at the
    // end comes after the app's own 'exit' listeners, natively.
    expect(before).toEqual([0, 0, 0, 0, 0])
    expect(during).toEqual([0, 1, 1, 1, 0])
    expect(after).toEqual([0, 0, 0, 0, 0])
  })
})
