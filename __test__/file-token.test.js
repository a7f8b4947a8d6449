'use strict'
// Fencing tokens of lock files: every new owner of a lock gets a larger token than every owner
// before it, whatever removed the previous owner's file (release, `clear`, a forced removal, the
// lock directory deleted, a reboot that emptied it), and every reader that shows a token shows
// the one its holder was given. Real processes throughout.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { FIXTURES, start, tempDir, watch } = require('./helpers/proc')
const { cli, startCli } = require('./helpers/cli-proc')
const { needs, onlyOn } = require('./helpers/skip')

const RACERS = 6
const LOOPS = 25

/** An LD_PRELOAD shim that moves this process's wall clock by $SHIFT_CLOCK_S seconds (Linux). */
const shim = (() => {
  if (process.platform !== 'linux') return null
  try {
    const out = path.join(tempDir('token-shim'), 'shift.so')
    execFileSync('cc', ['-shared', '-fPIC', '-o', out, path.join(FIXTURES, 'clock-shift.c'), '-ldl'])
    return out
  } catch {
    return null
  }
})()

/** A process holding backend (SHORT) in `dir` until `stop`; `info` is its acquireLock result. */
async function holder(dir, env = {}) {
  const p = start('token-holder.js', { dir, env })
  const m = await p.waitFor(/HELD (.*)\n/)
  return {
    p,
    info: JSON.parse(m[1]),
    async stop() {
      p.child.stdin.end()
      const r = await p.done(15000)
      if (r.code !== 0) throw new Error(`holder failed: ${p.describe()}`)
      return r.stdout.includes('LOST') ? 'lost' : 'released'
    },
  }
}

/** The token of one holder that took the lock and let it go. */
async function oneToken(dir, env) {
  const h = await holder(dir, env)
  await h.stop()
  return BigInt(h.info.fencingToken)
}

const token = (info) => {
  expect(info.fencingToken).toMatch(/^[1-9][0-9]*$/)
  return BigInt(info.fencingToken)
}

/** Ownerships of `backend` by RACERS processes that each take it LOOPS times, waiting for it. */
async function race(dir, envOf) {
  const procs = Array.from({ length: RACERS }, (_, i) => start('token-racer.js', { dir, env: envOf(i) }))
  await Promise.all(procs.map((p) => p.waitFor('READY')))
  for (const p of procs) p.child.stdin.end('go\n')
  const results = await Promise.all(procs.map((p) => p.done(120000)))
  const owned = []
  results.forEach((r, i) => {
    if (r.code !== 0) throw new Error(`racer failed: ${procs[i].describe()}`)
    for (const line of r.stdout.split('\n')) if (line.startsWith('{')) owned.push(JSON.parse(line))
  })
  expect(owned).toHaveLength(RACERS * LOOPS)
  owned.sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : 1))
  for (let i = 1; i < owned.length; i++) {
    // One owner at a time, and each one's token above the one before.
    expect(BigInt(owned[i].start)).toBeGreaterThan(BigInt(owned[i - 1].end))
    expect(token(owned[i])).toBeGreaterThan(token(owned[i - 1]))
  }
}

test('racers that wait for the lock get tokens in the order they owned it', async () => {
  await race(tempDir('token-race'), () => ({ LOOPS: String(LOOPS) }))
}, 180000)

// Half of them with a wall clock an hour behind: their tokens come from the stored generation
// alone, which only the owner of the moment writes, one minter at a time.
needs(shim !== null, 'Linux and a C compiler for the clock shim')(
  'racers whose clocks disagree still get tokens in the order they owned the lock',
  async () => {
    await race(tempDir('token-race-clock'), (i) =>
      i % 2 ? { LOOPS: String(LOOPS), LD_PRELOAD: shim, SHIFT_CLOCK_S: '-3600' } : { LOOPS: String(LOOPS) },
    )
  },
  180000,
)

test('tokens grow over clear, a forced removal of a running holder, a deleted directory and an emptied one', async () => {
  const dir = tempDir('token-removals')
  const seen = [await oneToken(dir)]

  // A holder killed outright: its file stays until `clear` removes it.
  const killed = await holder(dir)
  seen.push(token(killed.info))
  killed.p.kill('SIGKILL')
  await killed.p.done(15000)
  const cleared = await cli(['clear', '--dir', dir])
  expect(cleared.code).toBe(0)
  expect(fs.existsSync(path.join(dir, 'backend.short.lock'))).toBe(false)
  seen.push(await oneToken(dir))

  // A running holder's file removed by force: the next owner comes while it still runs.
  const running = await holder(dir)
  seen.push(token(running.info))
  const forced = await cli(['clear', '--force', '--dir', dir])
  expect(forced.code).toBe(0)
  const next = await holder(dir)
  seen.push(token(next.info))
  expect(await running.stop()).toBe('lost')
  await next.stop()

  // The directory deleted and made again, then emptied as a reboot empties a tmpfs.
  fs.rmSync(dir, { recursive: true })
  fs.mkdirSync(dir, { mode: 0o700 })
  seen.push(await oneToken(dir))
  for (const name of fs.readdirSync(dir)) fs.rmSync(path.join(dir, name))
  seen.push(await oneToken(dir))

  for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1])
}, 60000)

// A wall clock stepped back must not take tokens back while the lock's generation file is
// there: a holder whose clock reads a day ahead (an LD_PRELOAD shim, this process only) is
// followed by holders on the real clock.
needs(shim !== null, 'Linux and a C compiler for the clock shim')(
  'a clock stepped back does not take tokens back',
  async () => {
    const dir = tempDir('token-clock')
    const ahead = await oneToken(dir, { LD_PRELOAD: shim, SHIFT_CLOCK_S: '86400' })
    expect(ahead).toBeGreaterThan(BigInt(Date.now() + 86_000_000) * 1000n)
    const after = await oneToken(dir)
    expect(after).toBe(ahead + 1n)
    expect(await oneToken(dir)).toBe(ahead + 2n)
  },
  30000,
)

test('check shows the holder’s token as text, JSON and a Prometheus gauge; readers of another process’s lock see it too', async () => {
  const dir = tempDir('token-check')
  const h = await holder(dir)
  const t = h.info.fencingToken
  const text = await cli(['check', 'backend', '--side', 'SHORT', '--dir', dir])
  expect(text.stdout).toContain(`fencing token ${t}`)
  const one = await cli(['check', 'backend', '--side', 'SHORT', '--json', '--dir', dir])
  expect(JSON.parse(one.stdout).fencingToken).toBe(t)
  const all = await cli(['check', '--format', 'json', '--dir', dir])
  expect(JSON.parse(all.stdout)[0].fencingToken).toBe(t)
  const table = await cli(['check', '--dir', dir])
  expect(table.stdout).toMatch(/TOKEN/)
  expect(table.stdout).toContain(t)
  const prom = await cli(['check', '--format', 'prometheus', '--dir', dir])
  expect(prom.stdout).toMatch(
    new RegExp(`^processlock_fencing_token\\{type="backend",side="SHORT",host="[^"]*",backend="file"\\} ${t}$`, 'm'),
  )
  const lib = require('..')
  expect(lib.getLockInfo('backend', { dir, tradeSide: 'SHORT' }).fencingToken).toBe(t)
  const listed = lib.listLocks({ dir })
  expect(listed[0].record.fencingToken).toBe(t)
  await h.stop()
  // Released: nothing is held, no token is shown.
  const gone = await cli(['check', 'backend', '--side', 'SHORT', '--json', '--dir', dir])
  expect(JSON.parse(gone.stdout).fencingToken).toBeNull()
}, 30000)

onlyOn(['linux', 'darwin'], 'processlock run is not available on Windows')(
  'a command under processlock run gets the token run was given',
  async () => {
    const dir = tempDir('token-run')
    const before = await oneToken(dir)
    const run = startCli(
      [
        'run',
        'backend',
        '--side',
        'SHORT',
        '--dir',
        dir,
        '--',
        process.execPath,
        path.join(FIXTURES, 'token-holder.js'),
      ],
      { dir, stdin: 'pipe' },
    )
    const m = await run.waitFor(/HELD (.*)\n/)
    const child = JSON.parse(m[1])
    expect(token(child)).toBeGreaterThan(before)
    const checked = await cli(['check', 'backend', '--side', 'SHORT', '--json', '--dir', dir])
    expect(JSON.parse(checked.stdout).fencingToken).toBe(child.fencingToken)
    run.child.stdin.end()
    expect((await run.done(15000)).code).toBe(0)
    expect(await oneToken(dir)).toBeGreaterThan(token(child))
  },
  30000,
)

test('a reader never shows a token other than the one its holder was given', async () => {
  const dir = tempDir('token-readers')
  const env = { LOOPS: '40', SPIN_US: '50' }
  const procs = Array.from({ length: 3 }, () => start('token-racer.js', { dir, env }))
  await Promise.all(procs.map((p) => p.waitFor('READY')))
  const reader = watch(
    process.execPath,
    [
      '-e',
      `const { getLockInfo } = require(${JSON.stringify(path.resolve(__dirname, '..'))})
       const seen = []
       const until = Date.now() + 20000
       let n = 0
       process.stdout.write('READING\\n')
       while (n < 20000 && Date.now() < until && !require('node:fs').existsSync(process.argv[1])) {
         const info = getLockInfo('backend', { dir: ${JSON.stringify(dir)}, tradeSide: 'SHORT' })
         if (info && info.fencingToken) seen.push(info.pid + ' ' + info.fencingToken)
         n++
       }
       process.stdout.write(JSON.stringify(seen) + '\\n')`,
      path.join(dir, 'stop-reading'),
    ],
    { env: process.env },
  )
  await reader.waitFor('READING')
  for (const p of procs) p.child.stdin.end('go\n')
  const results = await Promise.all(procs.map((p) => p.done(120000)))
  fs.writeFileSync(path.join(dir, 'stop-reading'), '')
  const read = await reader.done(30000)
  const given = new Set()
  for (const r of results) {
    expect(r.code).toBe(0)
    for (const line of r.stdout.split('\n')) {
      if (line.startsWith('{')) {
        const o = JSON.parse(line)
        given.add(`${o.pid} ${o.fencingToken}`)
      }
    }
  }
  const seen = JSON.parse(read.stdout.trim().split('\n').pop())
  expect(seen.length).toBeGreaterThan(0)
  for (const s of seen) expect(given).toContain(s)
}, 180000)

test('records of older writers show no token, and a new owner after them still gets a larger one', async () => {
  const dir = tempDir('token-legacy')
  const first = await oneToken(dir)
  // A PID-only file of a dead writer: read, shown with no token, taken over.
  const dead = start('noop.js', {})
  await dead.done()
  fs.writeFileSync(path.join(dir, 'backend.short.lock'), `${dead.pid}\n`)
  const checked = await cli(['check', 'backend', '--side', 'SHORT', '--json', '--dir', dir])
  expect(JSON.parse(checked.stdout).fencingToken).toBeNull()
  expect(await oneToken(dir)).toBeGreaterThan(first)
}, 30000)

test('the generation file is left alone by clear and never listed', async () => {
  const dir = tempDir('token-files')
  await oneToken(dir)
  expect(fs.readdirSync(dir)).toContain('.backend.short.lock.fencing')
  expect(JSON.parse((await cli(['check', '--format', 'json', '--dir', dir])).stdout)).toEqual([])
  await cli(['clear', '--force', '--dir', dir])
  expect(fs.readdirSync(dir)).toContain('.backend.short.lock.fencing')
}, 30000)
