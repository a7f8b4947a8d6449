'use strict'
// Wait limits too long to count to. `Number.MAX_VALUE` is a common way to say "forever", and
// anything from about 1e22 ms is more than the native side's clock and durations can hold: such
// a limit means no limit, as `Infinity` does. The process must never abort (a Rust panic that
// reaches Node is SIGABRT and a core dump): it gets the lock, or a coded error. Each call runs in
// a process of its own, so that an abort is seen as one.
const fs = require('node:fs')
const path = require('node:path')
const { ROOT, start, tempDir } = require('./helpers/proc')
const { usePg } = require('./helpers/pg')
const binding = require('../lib/binding.js')
const { LockIoError } = require('..')

const pg = usePg()

const FOREVER = ['MAX_VALUE', '1e22', '1e300', 'Infinity']

/** Runs the wait-limit fixture; resolves with its result once it ended by itself. */
async function limited(call, limit, { dir = tempDir('limits'), env = {}, whileWaiting } = {}) {
  const p = start('wait-limit.js', { dir, env, args: [call, limit] })
  try {
    await p.waitFor('WAITING')
    if (whileWaiting) await whileWaiting()
    const r = await p.done(60000)
    // Neither an abort nor any other signal, and no panic on the way.
    expect({ signal: r.signal, code: r.code }).toEqual({ signal: null, code: 0 })
    expect(r.stderr).not.toMatch(/panicked|SIGABRT|core dumped/)
    return { ...JSON.parse(r.stdout.match(/^RESULT (.*)$/m)[1]), pid: p.pid }
  } finally {
    p.kill('SIGKILL')
  }
}

/** A live holder of the lock in `dir`, which lets go when told. */
async function holder(dir, env = {}) {
  const h = start('wait-holder.js', { dir, env })
  await h.waitFor('READY')
  return h
}

describe.each(FOREVER)('a wait limit of %s ms means no limit', (limit) => {
  test.each(['acquireLock', 'acquireLockAsync'])(
    '%s waits for the holder to let go, then has the lock',
    async (call) => {
      const dir = tempDir('limits-held')
      const h = await holder(dir)
      try {
        const r = await limited(call, limit, {
          dir,
          whileWaiting: async () => {
            h.child.stdin.write('release\n')
            await h.waitFor('RELEASED')
          },
        })
        expect(r).toMatchObject({ ok: true })
      } finally {
        h.kill('SIGKILL')
      }
    },
    60000,
  )

  test('acquireLockOrExit takes a free lock and the app goes on', async () => {
    const r = await limited('acquireLockOrExit', limit)
    expect(r).toMatchObject({ ok: true })
  }, 60000)

  test('with replace, the grace before SIGKILL must end: LOCK_INVALID_OPTION, nobody signalled', async () => {
    const dir = tempDir('limits-replace')
    const h = await holder(dir)
    try {
      const r = await limited('replace', limit, { dir })
      expect(r).toMatchObject({ ok: false, code: 'LOCK_INVALID_OPTION', isError: true })
      expect(r.message).toMatch(/^LOCK_INVALID_OPTION: /)
      expect(h.ended).toBe(false)
    } finally {
      h.kill('SIGKILL')
    }
  }, 60000)

  pg.test(
    'on a server: waitMs that long waits without a limit; leaseMs or connectTimeoutMs that long is LOCK_INVALID_OPTION',
    async () => {
      const env = { PROCESSLOCK_URL: pg.url }
      expect(await limited('server-wait', limit, { env })).toMatchObject({ ok: true })
      // A lease and a connect timeout have ranges: Infinity is refused by the JS layer, a huge
      // finite number by the server backend's range check.
      for (const call of ['server-lease', 'server-connect']) {
        const r = await limited(call, limit, { env })
        expect(r).toMatchObject({ ok: false, code: 'LOCK_INVALID_OPTION', isError: true })
      }
    },
    60000,
  )
})

test('anything the native side throws (a caught panic, an argument it cannot take) is LockIoError', () => {
  const thrown = (fn) => {
    try {
      fn()
    } catch (e) {
      return e
    }
    throw new Error('expected an error')
  }
  const lock = binding.openLock('backend', { dir: tempDir('limits-guard'), holder: 0 })
  expect(lock).toBeInstanceOf(binding.NativeLock)
  // A function of the addon, and a method of one of its classes.
  for (const [e, name] of [
    [thrown(() => binding.openLock(42)), 'openLock'],
    [thrown(() => lock.acquireWait('soon')), 'acquireWait'],
  ]) {
    expect(e).toBeInstanceOf(LockIoError)
    expect(e).toBeInstanceOf(Error)
    expect(e.code).toBe('LOCK_IO')
    expect(e.message).toMatch(new RegExp(`^LOCK_IO: ${name} failed inside the native addon`))
    expect(e.cause).toBeDefined()
  }
})

test('panics unwind in every profile, so that the boundary can catch them (panic = "abort" would end the process)', () => {
  const manifest = fs.readFileSync(path.join(ROOT, 'Cargo.toml'), 'utf8')
  expect(manifest).not.toMatch(/^\s*panic\s*=/m)
})
