'use strict'
// The README's scenarios, with real processes and the exact log lines operators see.
const fs = require('node:fs')
const path = require('node:path')
const { start, tempDir, lockDirEntries } = require('./helpers/proc')

const ACQUIRED = (pid) => `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: ${pid} }`

describe('README scenarios', () => {
  let dir
  beforeEach(() => {
    dir = tempDir('scenario')
  })

  test('normal start: backend and worker take their locks', async () => {
    const backend = start('server.js', { dir })
    const worker = start('server.js', { dir, env: { LOCK_TYPE: 'worker' } })
    await Promise.all([backend.waitFor('READY'), worker.waitFor('READY')])
    expect(backend.stdout.split('\n')[0]).toBe(ACQUIRED(backend.pid))
    expect(worker.stdout.split('\n')[0]).toBe(
      `[PROCESS_LOCK_ACQUIRED] { processType: 'worker', tradeSide: 'SHORT', pid: ${worker.pid} }`,
    )
    const record = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8'))
    expect(record).toMatchObject({ pid: backend.pid, tradeSide: 'SHORT', processName: 'trader-short-backend' })
    expect(record.started).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    expect(fs.existsSync(path.join(dir, 'worker.short.lock'))).toBe(true)
    backend.kill('SIGTERM')
    worker.kill('SIGTERM')
    await Promise.all([backend.done(), worker.done()])
  })

  test('duplicate start: the second instance stops naming the first one', async () => {
    const first = start('server.js', { dir })
    await first.waitFor('READY')
    const started = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8')).started
    const second = await start('server.js', { dir }).done()
    expect(second.code).toBe(1)
    expect(second.stdout).toBe('')
    expect(second.stderr.trimEnd().split('\n')).toEqual([
      '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
      `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${first.pid}, started: '${started}' }`,
      `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${first.pid}`,
      `[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${first.pid})`,
    ])
    // The first instance is untouched and still holds the lock.
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8')).pid).toBe(first.pid)
    first.kill('SIGTERM')
    await first.done()
  })

  test('stale lock: a SIGKILLed holder is taken over at once', async () => {
    const dead = start('server.js', { dir })
    await dead.waitFor('READY')
    dead.kill('SIGKILL')
    expect((await dead.done()).signal).toBe('SIGKILL')
    expect(fs.existsSync(path.join(dir, 'backend.short.lock'))).toBe(true)

    const next = start('server.js', { dir })
    await next.waitFor('READY')
    expect(next.stderr.split('\n')[0]).toBe(
      `[PROCESS_LOCK_STALE] Found stale lock file for PID ${dead.pid}, removing...`,
    )
    expect(next.stdout.split('\n')[0]).toBe(ACQUIRED(next.pid))
    next.kill('SIGTERM')
    await next.done()
  })

  test('trade sides: SHORT and LONG side by side, same side conflicts', async () => {
    const short = start('server.js', { dir, env: { TRADE_SIDE: 'SHORT' } })
    const long = start('server.js', { dir, env: { TRADE_SIDE: 'long' } })
    await Promise.all([short.waitFor('READY'), long.waitFor('READY')])
    expect(long.stdout).toContain(`tradeSide: 'LONG', pid: ${long.pid}`)
    expect(lockDirEntries(dir).sort()).toEqual(['backend.long.lock', 'backend.short.lock'])
    const again = await start('server.js', { dir, env: { TRADE_SIDE: 'LONG' } }).done()
    expect(again.code).toBe(1)
    expect(again.stderr).toContain(`[FATAL] LOCK_CONFLICT: backend (LONG) is already running (PID: ${long.pid})`)
    const noSide = start('server.js', { dir, env: { TRADE_SIDE: '' } })
    await noSide.waitFor('READY')
    expect(noSide.stdout).toContain(
      `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: null, pid: ${noSide.pid} }`,
    )
    expect(fs.existsSync(path.join(dir, 'backend.lock'))).toBe(true)
    for (const p of [short, long, noSide]) p.kill('SIGTERM')
    await Promise.all([short.done(), long.done(), noSide.done()])
    expect(lockDirEntries(dir)).toEqual([])
  })
})
