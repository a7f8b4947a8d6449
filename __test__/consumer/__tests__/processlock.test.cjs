// The trader's own jest test of its start-up guard, using the installed package.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { acquireLock, releaseLock, getLockInfo, LockConflictError } = require('@trader/processlock')

const options = (dir) => ({ dir, tradeSide: 'SHORT', log: false })

/** Another trader process that takes the backend lock and holds it until killed. */
function otherInstance(dir) {
  const code = `
    const { acquireLock } = require('@trader/processlock')
    acquireLock('backend', { dir: ${JSON.stringify(dir)}, tradeSide: 'SHORT', log: false })
    console.log('HOLDING')
    setInterval(() => {}, 1000)`
  const child = spawn(process.execPath, ['-e', code], {
    cwd: path.join(__dirname, '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const holding = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => String(d).includes('HOLDING') && resolve())
    child.on('exit', (code) => reject(new Error(`other instance exited with ${code}`)))
  })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  return { child, holding, exited }
}

test('the backend lock is ours until released', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trader-test-'))
  const info = acquireLock('backend', options(dir))
  expect(info).toMatchObject({ pid: process.pid, tradeSide: 'SHORT', processName: 'trader-short-backend' })
  expect(getLockInfo('backend', options(dir))).toEqual(info)
  expect(fs.existsSync(path.join(dir, 'backend.short.lock'))).toBe(true)
  expect(releaseLock('backend', options(dir))).toBe(true)
  expect(getLockInfo('backend', options(dir))).toBeNull()
})

test('a second instance is turned away, and a killed one is replaced at once', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trader-test-'))
  const other = otherInstance(dir)
  await other.holding
  let error
  try {
    acquireLock('backend', options(dir))
  } catch (e) {
    error = e
  }
  expect(error).toBeInstanceOf(Error)
  expect(error).toBeInstanceOf(LockConflictError)
  expect(error.code).toBe('LOCK_CONFLICT')
  expect(error.holder.pid).toBe(other.child.pid)
  expect(error.message).toBe(`LOCK_CONFLICT: backend (SHORT) is already running (PID: ${other.child.pid})`)

  other.child.kill('SIGKILL')
  await other.exited
  expect(acquireLock('backend', options(dir)).pid).toBe(process.pid)
  releaseLock('backend', options(dir))
}, 30000)
