'use strict'
// Many processes started together, ownership intervals compared: never two owners at once.
const fs = require('node:fs')
const { start, tempDir, lockDirEntries } = require('./helpers/proc')

const RACERS = 8
const ROUNDS = 40

/**
 * Long-lived racers: started once, then released together for each round by one line on
 * their stdin (written to all of them back to back), so every round is a real race between
 * processes that are already running.
 */
async function racers(dir, env = {}) {
  const procs = Array.from({ length: RACERS }, () => start('racer.js', { dir, env }))
  await Promise.all(procs.map((r) => r.waitFor('READY')))
  const seen = procs.map(() => 0)
  return {
    async round() {
      const before = procs.map((p) => p.stdout.split('DONE').length)
      const wonBefore = procs.map((p) => p.stdout.split('WON').length)
      for (const p of procs) p.child.stdin.write('go\n')
      if (env.HOLD === 'until-told') {
        // Every racer reports a loss or a win; only then do the winners let go.
        await Promise.all(procs.map((p, i) => waitAny(p, before[i], wonBefore[i])))
        procs.forEach((p, i) => {
          if (p.stdout.split('WON').length > wonBefore[i]) p.child.stdin.write('release\n')
        })
      }
      await Promise.all(procs.map((p, i) => waitCount(p, before[i])))
      const lines = []
      procs.forEach((p, i) => {
        const text = p.stdout.slice(seen[i])
        seen[i] = p.stdout.length
        for (const line of text.split('\n')) if (line.startsWith('{')) lines.push(JSON.parse(line))
      })
      return lines
    },
    async stop() {
      for (const p of procs) p.child.stdin.end()
      const results = await Promise.all(procs.map((p) => p.done()))
      for (const r of results) if (r.code !== 0) throw new Error(`racer failed: ${r.code} ${r.signal} ${r.stderr}`)
    },
  }
}

function waitAny(p, doneBefore, wonBefore) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    const tick = () => {
      if (p.stdout.split('DONE').length > doneBefore || p.stdout.split('WON').length > wonBefore) return resolve()
      if (p.child.exitCode !== null || Date.now() - t0 > 30000) return reject(new Error(`racer stuck: ${p.stderr}`))
      setTimeout(tick, 2)
    }
    tick()
  })
}

function waitCount(p, before) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    const tick = () => {
      if (p.stdout.split('DONE').length > before) return resolve()
      if (p.child.exitCode !== null || Date.now() - t0 > 30000) return reject(new Error(`racer stuck: ${p.stderr}`))
      setTimeout(tick, 5)
    }
    tick()
  })
}

/** One race of fresh processes (for the stale case each needs a fresh start too). */
async function race(dir, env) {
  const r = await racers(dir, env)
  const lines = await r.round()
  await r.stop()
  return { lines }
}

function intervals(lines) {
  return lines.filter((l) => l.start).map((l) => ({ pid: l.pid, start: BigInt(l.start), end: BigInt(l.end) }))
}

/** Pairs of ownership intervals of different processes that overlap. */
function overlaps(ivs) {
  const sorted = [...ivs].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
  const bad = []
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].start < sorted[i - 1].end) bad.push([sorted[i - 1], sorted[i]])
  }
  return bad
}

/** A stale lock: a real holder killed with SIGKILL, its file left behind. */
async function leaveStaleLock(dir) {
  const holder = start('server.js', { dir, env: { PROCESSLOCK_LOG: 'silent' } })
  await holder.waitFor('READY')
  holder.kill('SIGKILL')
  await holder.done()
  return holder.pid
}

function leftovers(dir) {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))
}

test('the interval checker itself catches an overlap', () => {
  expect(
    overlaps([
      { pid: 1, start: 0n, end: 10n },
      { pid: 2, start: 5n, end: 20n },
    ]),
  ).toHaveLength(1)
  expect(
    overlaps([
      { pid: 1, start: 0n, end: 10n },
      { pid: 2, start: 10n, end: 20n },
    ]),
  ).toHaveLength(0)
})

test(`fresh lock: ${RACERS} processes x ${ROUNDS} rounds, exactly one owner per round`, async () => {
  const dir = tempDir('race-fresh')
  const all = []
  // The winner holds until every loser has tried: a second owner would overlap it.
  const r = await racers(dir, { HOLD: 'until-told' })
  for (let round = 0; round < ROUNDS; round++) {
    const lines = await r.round()
    const owners = intervals(lines)
    expect(owners).toHaveLength(1)
    expect(lines.filter((l) => l.conflict === owners[0].pid)).toHaveLength(RACERS - 1)
    all.push(...owners)
    expect(lockDirEntries(dir)).toEqual([])
  }
  await r.stop()
  expect(overlaps(all)).toEqual([])
})

test(`stale lock left by SIGKILL: ${RACERS} processes x ${ROUNDS} rounds, one owner per round`, async () => {
  const dir = tempDir('race-stale')
  const r = await racers(dir, { HOLD: 'until-told' })
  for (let round = 0; round < ROUNDS; round++) {
    await leaveStaleLock(dir)
    const lines = await r.round()
    const owners = intervals(lines)
    expect(owners).toHaveLength(1)
    expect(overlaps(owners)).toEqual([])
    expect(lines.filter((l) => l.conflict === owners[0].pid)).toHaveLength(RACERS - 1)
    expect(leftovers(dir)).toEqual([])
  }
  await r.stop()
})

test(`contended loop: ${RACERS} processes x 25 acquisitions each never overlap`, async () => {
  const dir = tempDir('race-loop')
  const { lines } = await race(dir, { LOOPS: '25', HOLD_MS: '1' })
  const owners = intervals(lines)
  expect(owners).toHaveLength(RACERS * 25)
  expect(overlaps(owners)).toEqual([])
  expect(lockDirEntries(dir)).toEqual([])
})
