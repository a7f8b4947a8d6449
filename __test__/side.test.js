'use strict'
// Which trade side a lock is taken for when the side is given empty, blank or with spaces around
// it. An empty side given on purpose would be another lock than the side meant (`--side "$SIDE"`
// with SIDE unset, a config value left empty, while the service runs as TRADE_SIDE says): it is
// refused, by the API and the command alike. "No side" is said with `tradeSide: null`, or an
// empty TRADE_SIDE. Spaces around a side are dropped, as its case is: that only ever makes two
// spellings of one side one lock.
const fs = require('node:fs')
const pl = require('..')
const { tempDir, lockDirEntries } = require('./helpers/proc')
const { cli, CHILD } = require('./helpers/cli-proc')

const EMPTY_SIDE = /^LOCK_INVALID_NAME: invalid tradeSide "\s*": an empty side is not "no side"/

describe('the API', () => {
  const saved = process.env.TRADE_SIDE
  beforeEach(() => {
    process.env.TRADE_SIDE = 'SHORT'
  })
  afterAll(() => {
    if (saved === undefined) delete process.env.TRADE_SIDE
    else process.env.TRADE_SIDE = saved
  })

  test.each([[''], ['   '], ['\t\n']])('tradeSide %j is refused with LOCK_INVALID_NAME, nothing is written', (side) => {
    const dir = tempDir('side-empty')
    let error
    try {
      pl.acquireLock('backend', { dir, tradeSide: side, log: false })
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(pl.LockInvalidNameError)
    expect(error.code).toBe('LOCK_INVALID_NAME')
    expect(error.message).toMatch(EMPTY_SIDE)
    expect(() => pl.getLockInfo('backend', { dir, tradeSide: side })).toThrow(pl.LockInvalidNameError)
    expect(lockDirEntries(dir)).toEqual([])
  })

  test('tradeSide: null is no side, whatever TRADE_SIDE says; an empty TRADE_SIDE is no side too', () => {
    const dir = tempDir('side-null')
    expect(pl.acquireLock('backend', { dir, tradeSide: null, log: false }).tradeSide).toBe(null)
    expect(lockDirEntries(dir)).toEqual(['backend.lock'])
    expect(pl.releaseLock('backend', { dir, tradeSide: null })).toBe(true)
    for (const empty of ['', '  ']) {
      process.env.TRADE_SIDE = empty
      expect(pl.acquireLock('backend', { dir, log: false }).tradeSide).toBe(null)
      expect(lockDirEntries(dir)).toEqual(['backend.lock'])
      expect(pl.releaseLock('backend', { dir })).toBe(true)
    }
  })

  test('spaces around a side are dropped, as its case is: the same lock as the side itself', () => {
    const dir = tempDir('side-trim')
    expect(pl.acquireLock('backend', { dir, tradeSide: ' short\n', log: false }).tradeSide).toBe('SHORT')
    expect(lockDirEntries(dir)).toEqual(['backend.short.lock'])
    expect(pl.isLockHeld('backend', { dir, tradeSide: 'SHORT' })).toBe(true)
    process.env.TRADE_SIDE = 'short '
    expect(pl.getLockInfo('backend', { dir })).toMatchObject({ tradeSide: 'SHORT', pid: process.pid })
    expect(pl.releaseLock('backend', { dir })).toBe(true)
  })
})

describe('processlock', () => {
  test.each([[['check', 'backend']], [['run', 'backend']]])(
    '%j --side "": a usage error, nothing run or looked at as another lock',
    async (args) => {
      const dir = tempDir('side-cli')
      const command = args[0] === 'run' ? ['--', process.execPath, CHILD, 'exit', '0'] : []
      const r = await cli([...args, '--side', '', ...command], { dir })
      expect(r.code).toBe(2)
      expect(r.stderr).toMatch(/^processlock: LOCK_INVALID_NAME: invalid tradeSide "": an empty side is not "no side"/)
      expect(r.stdout).toBe('')
      expect(lockDirEntries(dir)).toEqual([])
    },
  )

  test('an empty TRADE_SIDE is no side; spaces around --side are dropped', async () => {
    const dir = tempDir('side-cli-none')
    const none = await cli(['run', 'backend', '--', process.execPath, CHILD, 'exit', '0'], {
      dir,
      env: { TRADE_SIDE: '' },
    })
    expect(none.code).toBe(0)
    expect(none.stderr).toContain("[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: null")
    const spaced = await cli(['check', 'backend', '--side', ' short ', '--json'], { dir, env: { TRADE_SIDE: '' } })
    expect(JSON.parse(spaced.stdout)).toMatchObject({ tradeSide: 'SHORT', state: 'absent' })
    expect(JSON.parse(spaced.stdout).file.endsWith('backend.short.lock')).toBe(true)
    expect(fs.readdirSync(dir).filter((n) => n.endsWith('.lock'))).toEqual([])
  })
})
