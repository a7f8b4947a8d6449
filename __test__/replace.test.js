'use strict'
// `processlock run --replace`: the holder on this host is asked to go (SIGTERM), killed after the
// grace period if it does not, and the command starts once the lock is free; a holder whose record
// names another host is never signalled. Real processes, real signals. A holder that lets go
// when asked is replaced on every backend: that is the lock contract's (contract/).
const fs = require('node:fs')
const path = require('node:path')
const { start, tempDir, lockDirEntries, watch } = require('./helpers/proc')
const { CHILD, cli, alive } = require('./helpers/cli-proc')

async function holder(dir, mode) {
  const h = start('replace-holder.js', { dir, env: { HOLDER_MODE: mode } })
  await h.waitFor(/READY \d+/)
  return h
}

/**
 * A lock held (flock) by a process of this host whose record says another host and names that
 * very process: a replace that trusted the PID would kill it.
 */
async function remoteHolder(dir) {
  const file = path.join(dir, 'backend.short.lock')
  fs.writeFileSync(file, '')
  const locker = watch('/bin/sh', ['-c', 'exec 9<>"$0"; flock -x 9; echo LOCKED; exec sleep 60', file], {})
  fs.writeFileSync(
    file,
    JSON.stringify({
      pid: locker.pid,
      started: new Date().toISOString(),
      tradeSide: 'SHORT',
      processName: 'trader-short-backend',
      processType: 'backend',
      hostname: 'elsewhere.invalid',
      startToken: 'linux:elsewhere:1',
      protocol: 'processlock/1',
    }),
  )
  await locker.waitFor('LOCKED')
  return locker
}

const replaceRun = (dir, grace) =>
  cli(['run', 'backend', '--replace', '--grace', String(grace), '--', process.execPath, CHILD, 'exit', '0'], { dir })

test('a holder that ignores SIGTERM is killed after the grace period', async () => {
  const dir = tempDir('replace-ignore')
  const h = await holder(dir, 'ignore')
  const r = await replaceRun(dir, 300)
  expect(r.code).toBe(0)
  expect(r.stderr).toContain(`[PROCESS_LOCK_REPLACE] Sent SIGTERM to backend (SHORT) (PID ${h.pid}`)
  expect(r.stderr).toContain(
    `[PROCESS_LOCK_REPLACE] PID ${h.pid} still held backend (SHORT) after 300 ms; sent SIGKILL\n`,
  )
  expect(r.stdout).toMatch(/CHILD READY \d+/)
  const end = await h.done()
  expect(end.signal).toBe('SIGKILL')
  expect(end.stdout).toContain('IGNORED')
  expect(lockDirEntries(dir)).toEqual([])
})

test('a holder whose record names another host is refused, and nothing is signalled', async () => {
  const dir = tempDir('replace-remote')
  const locker = await remoteHolder(dir)
  const r = await replaceRun(dir, 300)
  expect(r.code).toBe(1)
  expect(r.stderr).toContain(
    `[PROCESS_LOCK_REPLACE] Not replacing backend (SHORT) (PID ${locker.pid}): the holder runs on host 'elsewhere.invalid', not on this host; stop it there\n`,
  )
  expect(r.stderr).toContain('[FATAL] LOCK_CONFLICT: backend (SHORT) is already running')
  expect(r.stderr).not.toContain('Sent SIGTERM')
  expect(r.stdout).not.toContain('CHILD READY')
  expect(alive(locker.pid)).toBe(true)
  locker.kill('SIGKILL')
  await locker.done()
})

describe('acquireLock with replace: the same steps from the library', () => {
  const pl = require('..')
  const options = (dir, extra) => {
    const lines = []
    return { lines, opts: { dir, tradeSide: 'SHORT', replace: true, log: (line) => lines.push(line), ...extra } }
  }

  test('a holder that ignores SIGTERM is killed after waitMs', async () => {
    const dir = tempDir('replace-api-ignore')
    const h = await holder(dir, 'ignore')
    const { lines, opts } = options(dir, { waitMs: 300 })
    expect(pl.acquireLock('backend', opts).pid).toBe(process.pid)
    expect(lines).toContain(`[PROCESS_LOCK_REPLACE] PID ${h.pid} still held backend (SHORT) after 300 ms; sent SIGKILL`)
    const end = await h.done()
    expect(end.signal).toBe('SIGKILL')
    expect(end.stdout).toContain('IGNORED')
    expect(pl.releaseLock('backend', opts)).toBe(true)
  })

  test('a holder whose record names another host: LockConflictError, nothing signalled', async () => {
    const dir = tempDir('replace-api-remote')
    const locker = await remoteHolder(dir)
    const { lines, opts } = options(dir, { waitMs: 300 })
    let error
    try {
      pl.acquireLock('backend', opts)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(pl.LockConflictError)
    expect(error.holder.pid).toBe(locker.pid)
    expect(lines[0]).toBe(
      `[PROCESS_LOCK_REPLACE] Not replacing backend (SHORT) (PID ${locker.pid}): the holder runs on host 'elsewhere.invalid', not on this host; stop it there`,
    )
    expect(lines.some((l) => l.includes('Sent SIGTERM'))).toBe(false)
    expect(alive(locker.pid)).toBe(true)
    expect(pl.isLockHeld('backend', opts)).toBe(false)
    locker.kill('SIGKILL')
    await locker.done()
  })

  test('replace must be a boolean', () => {
    expect(() => pl.acquireLock('backend', { dir: tempDir('replace-api-bad'), replace: 'yes' })).toThrow(
      expect.objectContaining({ code: 'LOCK_INVALID_OPTION' }),
    )
  })
})
