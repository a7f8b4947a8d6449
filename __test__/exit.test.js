'use strict'
// acquireLockOrExit, the start-up guard: the lock, or the reason on the output and exit 1, with
// nothing of the app run after it.
const { start, run, tempDir } = require('./helpers/proc')

const conflict = (pid) => [
  '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
  expect.stringMatching(
    new RegExp(`^\\[PROCESS_LOCK_CONFLICT\\] Existing process: \\{ pid: ${pid}, started: '.+' \\}$`),
  ),
  `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${pid}`,
  `[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ${pid})`,
]

describe('acquireLockOrExit', () => {
  let dir
  let first
  beforeEach(async () => {
    dir = tempDir('exit')
    first = start('guard.js', { dir })
    await first.waitFor(`STARTED ${first.pid}`)
  })
  afterEach(async () => {
    first.kill('SIGKILL')
    await first.done()
  })

  test('the first instance starts; a second one prints the conflict and [FATAL] on stderr, exits 1, runs nothing more', async () => {
    const second = await run('guard.js', { dir })
    expect(second.code).toBe(1)
    expect(second.stderr.trim().split('\n')).toEqual(conflict(first.pid))
    expect(second.stdout).toBe('')
  })

  test('with a log function, every line goes to it, [FATAL] at level error', async () => {
    const second = await run('guard.js', { dir, args: ['log-function'] })
    expect(second.code).toBe(1)
    expect(second.stderr).toBe('')
    const lines = conflict(first.pid).map((l) => (typeof l === 'string' ? `app error: ${l}` : l))
    lines[1] = expect.stringMatching(
      new RegExp(`^app error: \\[PROCESS_LOCK_CONFLICT\\] Existing process: \\{ pid: ${first.pid}, `),
    )
    expect(second.stdout.trim().split('\n')).toEqual(lines)
  })

  test('an invalid lock name: [FATAL] with the LOCK_INVALID_NAME message, exit 1', async () => {
    const second = await run('guard.js', { dir, env: { TRADE_SIDE: 'no good' } })
    expect(second.code).toBe(1)
    expect(second.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^\[FATAL\] LOCK_INVALID_NAME: /)])
    expect(second.stdout).toBe('')
  })
})
