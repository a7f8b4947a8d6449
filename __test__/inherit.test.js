'use strict'
// `processlock run backend -- node server.js`: a process outside the command that merely claims
// the hand-over variable, with a descriptor of its own on the lock file, is refused. That the app
// the command runs owns the lock and other apps conflict is the lock contract's
// (contract/file.test.js).
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { start, tempDir, ROOT, lockDirEntries } = require('./helpers/proc')

test('a process with a descriptor of its own on the lock file and a made-up claim is refused', async () => {
  const dir = tempDir('inherit')
  const app = path.join(ROOT, '__test__', 'fixtures', 'server.js')
  const wrapped = start('../../bin/processlock.js', {
    dir,
    args: ['run', 'backend', '--side', 'SHORT', '--', process.execPath, app],
  })
  await wrapped.waitFor('READY')
  const record = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8'))

  // The claim is checked against the OS lock.
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
  expect(fake.stderr).toContain(`[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${record.pid})`)

  wrapped.kill('SIGTERM')
  const r = await wrapped.done()
  expect(r.signal === 'SIGTERM' || r.code === 143).toBe(true)
  expect(lockDirEntries(dir)).toEqual([])
})
