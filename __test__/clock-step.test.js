'use strict'
// Lock files of the older PID-only implementation (no OS lock, no start token) name a PID and
// nothing else. Linux keeps a process's start only as time since boot: a date computed from it
// takes the boot time of /proc/stat (`btime`), which is "now minus uptime" and moves with every
// step of the wall clock (`date -s`, NTP, a VM resumed or restored from a snapshot). A step
// forward must never turn the live holder of such a file into a stale lock to take over.
//
// The clock is not stepped for real here (it is the whole machine's, and other tests run
// beside these). Each acquirer runs in a mount namespace of its own where /proc/stat is a copy
// whose `btime` is moved the way a step moves it: that is all a step changes in what the
// acquirer reads (the holder's record and its start in ticks since boot stay as they were).
// Linux, as root (`unshare --mount` and a bind mount over /proc/stat).
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { FIXTURES, start, tempDir, watch, running } = require('./helpers/proc')

const { BINARY } = require('./helpers/cli-proc')
const { needs } = require('./helpers/skip')

const canBindMount =
  process.platform === 'linux' &&
  process.getuid() === 0 &&
  spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind /proc/stat /proc/stat'])
    .status === 0
const stepTest = needs(canBindMount, 'Linux, root and unshare --mount to show a stepped /proc/stat')

/** A copy of /proc/stat whose boot time is `seconds` later, as after a step of the clock forward. */
function steppedStat(seconds) {
  const real = fs.readFileSync('/proc/stat', 'utf8')
  const btime = Number(real.match(/^btime (\d+)$/m)[1])
  const file = path.join(tempDir('stat'), 'stat')
  fs.writeFileSync(file, real.replace(/^btime \d+$/m, `btime ${btime + seconds}`))
  return { file, btime: btime + seconds }
}

/** `argv` run where /proc/stat is `stat`; it first prints the boot time it sees. */
function afterStep(stat, argv, env) {
  const script = 'mount --bind "$0" /proc/stat && grep ^btime /proc/stat && exec "$@"'
  return watch('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, stat.file, ...argv], {
    env: { ...process.env, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', NO_COLOR: '1', ...env },
    doneMs: 30000,
  })
}

describe('a PID-only holder after a step of the clock', () => {
  // 5 s: what NTP does to a clock that drifted; a day: a VM resumed, or restored from a snapshot.
  stepTest.each([5, 86400])('a step of %i s forward: the live holder is a conflict, not a stale lock', async (step) => {
    const dir = tempDir('clock-step')
    const legacy = start('legacy-writer.js', { dir })
    try {
      await legacy.waitFor('READY')
      const file = path.join(dir, 'backend.short.lock')
      const before = fs.readFileSync(file, 'utf8')
      const stat = steppedStat(step)

      const taker = await afterStep(stat, [process.execPath, path.join(FIXTURES, 'acquire-each.js'), dir]).done()
      // The acquirer did see the stepped clock.
      expect(taker.stdout).toContain(`btime ${stat.btime}\n`)
      const outcome = JSON.parse(taker.stdout.match(/^OUTCOME (.*)$/m)[1])
      expect(outcome).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', holder: { pid: legacy.pid } })
      // The PID is all a PID-only file proves: the operator is told to look at that process before
      // killing it, and how to remove the file if the PID turns out to be another process.
      expect(taker.stderr).toContain(
        `[PROCESS_LOCK_CONFLICT] Its lock file holds only a PID (the older format): see what PID ${legacy.pid} runs first (ps -p ${legacy.pid} -o args=). If it is backend (SHORT), to force restart, run: kill ${legacy.pid}; if not, the PID was reused: remove the file (rm '${file}')`,
      )
      expect(taker.stderr).not.toContain('[PROCESS_LOCK_CONFLICT] To force restart, run: kill')
      expect(fs.readFileSync(file, 'utf8')).toBe(before)
      expect(running(legacy.pid)).toBe(true)

      // `processlock check` after the same step: still held by it.
      const check = await afterStep(stat, [BINARY, 'check', 'backend', '--dir', dir]).done()
      expect(check.code).toBe(0)
      expect(check.stdout).toContain(`backend (SHORT): held by PID ${legacy.pid}`)
      expect(check.stdout).toContain(
        `its record holds only a PID (the older format): PID ${legacy.pid} runs, but nothing proves it is the process that wrote the file; see what it is: ps -p ${legacy.pid} -o args=`,
      )
    } finally {
      legacy.kill('SIGKILL')
      await legacy.done()
    }
  })
})
