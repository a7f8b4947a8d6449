'use strict'
// A service that is PID 1 of its PID namespace, as a container's app without an init process
// (`docker run` without --init, most Kubernetes pods). The kernel spares PID 1 from every signal
// it has no handler for: the SIGTERM of `docker stop` re-raised after the release would be
// dropped, and the service would go on running without its lock until the SIGKILL, 10 to 30 s
// later, while a second instance could take the lock. It must end as the signal asked.
// Linux, as root (a new PID namespace through util-linux's `unshare`).
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { FIXTURES, tempDir, lockDirEntries, watch, running } = require('./helpers/proc')
const pl = require('..')
const { needs, onlyOn } = require('./helpers/skip')

const canUnshare =
  process.platform === 'linux' &&
  process.getuid() === 0 &&
  spawnSync('unshare', ['--pid', '--fork', '--kill-child', 'true']).status === 0
const describeNamespaces = (
  process.platform !== 'linux'
    ? onlyOn(['linux'], 'PID namespaces are Linux only')
    : needs(canUnshare, 'root and unshare --pid')
).describe

/** The host PID of the only child of `pid`. */
function childOf(pid) {
  const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
  expect(children).toHaveLength(1)
  return Number(children[0])
}

describeNamespaces('a service that is PID 1 in its PID namespace', () => {
  test.each(['SIGTERM', 'SIGINT', 'SIGHUP'])(
    '%s from outside: it releases its lock and ends (128 + the signal)',
    async (signal) => {
      const dir = tempDir('pid1')
      const p = watch(
        'unshare',
        ['--pid', '--fork', '--kill-child', process.execPath, path.join(FIXTURES, 'ending.js'), 'wait'],
        {
          env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '' },
          doneMs: 20000,
        },
      )
      try {
        await p.waitFor('READY')
        const info = pl.getLockInfo('backend', { dir, tradeSide: 'SHORT', log: false })
        expect(info.pid).toBe(1)
        const service = childOf(p.pid)
        process.kill(service, signal)
        // unshare ends with its child's status.
        const r = await p.done()
        expect(r).toMatchObject({ code: 128 + require('node:os').constants.signals[signal] })
        expect(r.stdout).toContain("[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: 1 }")
        expect(running(service)).toBe(false)
        expect(lockDirEntries(dir)).toEqual([])
      } finally {
        p.kill('SIGKILL')
        await p.done().catch(() => {})
      }
    },
  )
})
