'use strict'
// `processlock run backend -- node server.js` where server.js takes the same lock itself:
// the app finds it already owns the lock its wrapper took, and nobody else can take it.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { start, tempDir, ROOT, lockDirEntries } = require('./helpers/proc')

test('a wrapped app that takes the same lock owns it, and a second app still conflicts', async () => {
  const dir = tempDir('inherit')
  const app = path.join(ROOT, '__test__', 'fixtures', 'server.js')
  const wrapped = start('../../bin/processlock.js', {
    dir,
    args: ['run', 'backend', '--side', 'SHORT', '--', process.execPath, app],
  })
  await wrapped.waitFor('READY')
  // The app's own acquireLock succeeded: it printed the line and named its own PID.
  expect(wrapped.stdout).toMatch(/\[PROCESS_LOCK_ACQUIRED\] \{ processType: 'backend', tradeSide: 'SHORT', pid: \d+ \}/)
  const record = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8'))
  expect(wrapped.stdout).toContain(`pid: ${record.pid} }`)

  // A second instance, wrapped or not, still conflicts.
  const second = spawnSync(process.execPath, [app], {
    env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT' },
    encoding: 'utf8',
  })
  expect(second.status).toBe(1)
  expect(second.stderr).toContain(`[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${record.pid})`)

  // A process that merely claims the variable, with a descriptor of its own on the same file,
  // is refused: the claim is checked against the OS lock.
  const fake = spawnSync(
    '/bin/sh',
    ['-c', `exec 7<"${path.join(dir, 'backend.short.lock')}" 8</dev/null; exec "${process.execPath}" "${app}"`],
    {
      env: {
        ...process.env,
        PROCESSLOCK_DIR: dir,
        TRADE_SIDE: 'SHORT',
        PROCESSLOCK_INHERITED: `7:8:${fs.statSync('/dev/null').ino}:`,
      },
      encoding: 'utf8',
    },
  )
  expect(fake.status).toBe(1)
  expect(fake.stderr).toContain('LOCK_CONFLICT')

  wrapped.kill('SIGTERM')
  const r = await wrapped.done()
  expect(r.signal === 'SIGTERM' || r.code === 143).toBe(true)
  expect(lockDirEntries(dir)).toEqual([])
})
