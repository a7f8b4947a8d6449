'use strict'
// The torture kinds for locks on a PostgreSQL server (ours only), used by bench/torture.js. N
// long-lived racer processes (bench/pg-client.js) with the same URL and each a lock directory of
// its own, so that only the server can keep them apart; every round takes the same lock.
//
//   pg-race        each round the racers try once at one start instant; a winner holds for a
//                  random 0..hold-us microseconds and releases.
//   pg-terminate   the session ended by the server: each round one racer holds and the others
//                  wait in acquireLockAsync; the holder's session is ended
//                  (pg_terminate_backend) while it holds; it is let go only once another racer
//                  has the lock; then the lock goes round the waiters.
//   pg-restart     the server restarted: the same, but instead the server stops (fast and
//                  immediate in turn) and starts again while the racer holds and the others wait,
//                  which must ride it out (no timeout: they wait on).
//   pg-frozen      a frozen waiter: the same, but one waiter, chosen at random, is stopped
//                  (SIGSTOP) while it waits and the holder lets go; every other waiter must get
//                  the lock while it is stopped (a round where they do not within 5 s is
//                  counted as held up); then it is continued (SIGCONT) and gets it last.
// The holders table is emptied (TRUNCATE) before every 10th round of these three (from round 10).
//
// A holder owns the lock from right after its acquire returned to the last moment it knew the
// lock as its own: right before its release, or its last check (isLockHeld, every millisecond
// or pollUs) that found it held before one found it lost. A round counts a double owner when two
// ownerships overlap. Over the whole run of a kind, the fencing tokens of the owners, in the
// order they acquired, must strictly increase. At the end no advisory lock may be left held on
// the server, no holder record left standing, and no file in the directories.

const fs = require('node:fs')
const path = require('node:path')
const { Worker } = require('./pool')
const report = require('./report')

const FAULT_KINDS = ['pg-terminate', 'pg-restart', 'pg-frozen']
const KINDS = ['pg-race', ...FAULT_KINDS]
const CLIENT = path.join(__dirname, 'pg-client.js')

const now = () => process.hrtime.bigint()

/** The private server of the run, or { why } where there is none. */
async function startServer() {
  try {
    const { startPg } = require('../__test__/helpers/pg.js')
    const pg = await startPg()
    return pg || { why: 'PostgreSQL is not installed' }
  } catch (e) {
    return { why: `cannot start a PostgreSQL server: ${String(e.message).split('\n')[0]}` }
  }
}

/** Ownerships out of order: owners (acquired at `a`, with `token`) whose token is not above the previous owner's. */
function tokensOutOfOrder(owners) {
  const sorted = owners.slice().sort((x, y) => (x.a < y.a ? -1 : x.a > y.a ? 1 : 0))
  let bad = 0
  for (let i = 1; i < sorted.length; i++) if (!(sorted[i].token > sorted[i - 1].token)) bad++
  return bad
}

async function runKind(kind, n, opts) {
  return FAULT_KINDS.includes(kind) ? runFaultKind(kind, n, opts) : runRaceKind(kind, n, opts)
}

async function runRaceKind(kind, n, { rounds, duration, holdUs, base, keep, pg }) {
  const st = { ...report.emptyTortureStats(kind), impl: 'ours', n, notes: [], tokensOutOfOrder: 0 }
  const bump = (k) => {
    st.errors[k] = (st.errors[k] || 0) + 1
  }
  const kdir = path.join(base, `${kind}-${n}`)
  const dirs = Array.from({ length: n }, (_, i) => path.join(kdir, String(i)))
  for (const d of dirs) fs.mkdirSync(d, { recursive: true })
  const racers = await Promise.all(
    dirs.map((dir) => new Worker('ours', { url: pg.url, dir }, [], { script: CLIENT, quiet: true }).ready),
  )
  const owners = []
  // Descriptors each racer holds once it has been through a round (the first lock starts
  // threads and a runtime for good), to compare with what it holds at the end.
  let baseFds = null
  const fds = () =>
    Promise.all(
      racers.map(async (w) => {
        w.send({ op: 'fds' })
        return Number(lastOf(await w.until((l) => l.startsWith('F '))).split(' ')[1])
      }),
    )
  const started = Date.now()
  const until = duration > 0 ? started + duration * 1000 : Infinity
  try {
    for (let r = 0; r < rounds && Date.now() < until; r++) {
      // Time enough for every racer to read its command and go to sleep until t0.
      const t0 = now() + BigInt(10e6 + 1e6 * n)
      const lines = await Promise.all(
        racers.map((w) => {
          w.send({ op: 'round', r, t0: String(t0), holdUs })
          return w.until((l) => l === `D ${r}`)
        }),
      )
      const intervals = []
      for (const [i, ls] of lines.entries()) {
        let open = null
        for (const line of ls) {
          const [tag, , t, token] = line.split(' ')
          if (tag === 'A') {
            open = BigInt(t)
            owners.push({ a: open, token: BigInt(token) })
          } else if (tag === 'R' && open != null) {
            intervals.push([open, BigInt(t)])
            open = null
          } else if (tag === 'X') st.releaseNotOurs++
          else if (tag === 'E') bump(line.split(' ')[2])
        }
        if (open != null) bump('no-release')
        if (lastOf(ls) !== `D ${r}`) throw new Error(`racer ${i} ended: ${racers[i].stderr.trim()}`)
      }
      report.countRound(st, intervals)
      st.rounds++
      if (r === 0) baseFds = await fds()
    }
    if (baseFds) {
      for (const [i, n] of (await fds()).entries()) st.fdLeak += Math.max(0, n - baseFds[i])
    }
  } finally {
    await Promise.all(racers.map((w) => w.stop()))
  }
  st.seconds = (Date.now() - started) / 1000
  st.tokensOutOfOrder = tokensOutOfOrder(owners)
  // Nothing may be left: no lock held on the server, no record standing, no file on disk.
  const [held] = await pg.sql(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'",
  )
  const [standing] = await pg.sql('SELECT count(*) FROM processlock_holders WHERE record IS NOT NULL')
  st.leftoverLocks = Number(held) + Number(standing)
  for (const d of dirs) {
    for (const name of fs.readdirSync(d)) {
      st.leftoverTemp++
      if (st.tempSamples.length < 3) st.tempSamples.push(name)
    }
  }
  if (!keep) fs.rmSync(kdir, { recursive: true, force: true })
  const tokens = owners.map((o) => o.token)
  st.notes.push(
    `fencing tokens of ${owners.length} owners ${tokens.length ? `(${min(tokens)}..${max(tokens)})` : ''} in the order they acquired: ` +
      (st.tokensOutOfOrder ? `**${st.tokensOutOfOrder} not above the previous owner's**` : 'strictly increasing'),
  )
  return st
}

/** Every round of a fault kind empties the holders table first, when its number is a multiple of this. */
const TRUNCATE_EVERY = 10
/** How long the other waiters have to take the lock while one is frozen, in ms. */
const FROZEN_MS = 5000
/** How often a waiter checks that its hold is still its own, in us. */
const POLL_US = 50
/** The lease of the fault kinds (ms): the default's. */
const LEASE_MS = 10000

const delay = (ms) => new Promise((r) => setTimeout(r, ms))

/**
 * Waits for racer `w` to end round `r` (its line `D r`); `lines()` are its lines of the round so
 * far, also before it ended.
 */
function roundOf(w, r) {
  const round = { ended: null }
  const ended = w
    .until((l) => l === `D ${r}`)
    .then((ls) => {
      round.ended = ls
      return ls
    })
  round.done = ended
  round.lines = () => round.ended || (w.waiter ? w.waiter.taken : []).concat(w.queue)
  return round
}

/** Resolves true once `cond()` holds (checked every millisecond), false after `ms`. */
async function within(ms, cond) {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) return false
    await delay(1)
  }
  return true
}

/** Whether every thread of `pid` is stopped (Linux: /proc/<pid>/task/<tid>/stat). */
function everyThreadStopped(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).every((tid) => {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2)[0]
      return state === 'T' || state === 't'
    })
  } catch {
    return false
  }
}

async function waitingSessions(pg) {
  const [count] = await pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
  return Number(count)
}

async function runFaultKind(kind, n, { rounds, duration, holdUs, base, keep, pg }) {
  const st = {
    ...report.emptyTortureStats(kind),
    impl: 'ours',
    n,
    notes: [],
    tokensOutOfOrder: 0,
  }
  const bump = (k) => {
    st.errors[k] = (st.errors[k] || 0) + 1
  }
  if (kind === 'pg-frozen' && n < 3) throw new Error('pg-frozen needs 3 racers or more')
  const kdir = path.join(base, `${kind}-${n}`)
  const dirs = Array.from({ length: n }, (_, i) => path.join(kdir, String(i)))
  for (const d of dirs) fs.mkdirSync(d, { recursive: true })
  const racers = await Promise.all(
    dirs.map(
      (dir) =>
        new Worker('ours', { url: pg.url, dir, leaseMs: LEASE_MS, onLost: 'signal' }, [], {
          script: CLIENT,
          quiet: true,
        }).ready,
    ),
  )
  const owners = []
  // told: for each hold found lost, when its holder first found it lost, less when the next
  // owner's acquire returned (us; negative: it knew first).
  const faults = { hit: 0, lost: 0, heldUp: 0, truncated: 0, restarts: 0, told: [] }
  const started = Date.now()
  const until = duration > 0 ? started + duration * 1000 : Infinity
  let frozen = null
  try {
    for (let r = 0; r < rounds && Date.now() < until; r++) {
      if (r > 0 && r % TRUNCATE_EVERY === 0) {
        await pg.sql('TRUNCATE processlock_holders')
        faults.truncated++
      }
      const h = r % n
      const holder = racers[h]
      const ofRound = racers.map((w) => roundOf(w, r))
      const sofar = (w) => ofRound[racers.indexOf(w)].lines()
      holder.send({ op: 'own', r })
      const took = await within(30000, () => sofar(holder).some((l) => l.startsWith(`A ${r} `) || l === `D ${r}`))
      if (!took || !sofar(holder).some((l) => l.startsWith(`A ${r} `))) bump('holder did not take the free lock')
      for (const [i, w] of racers.entries()) {
        if (i !== h) w.send({ op: 'queue', r, holdUs, pollUs: POLL_US })
      }
      if (!(await within(30000, async () => (await waitingSessions(pg)) === n - 1))) bump('waiters not in the server')
      const someoneElse = () => racers.some((w, i) => i !== h && sofar(w).some((l) => l.startsWith(`A ${r} `)))
      if (kind === 'pg-terminate') {
        const [ended] = await pg.sql(
          "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'",
        )
        if (ended === '1') faults.hit++
        // Let go only once another racer has the lock: a holder that did not hear of its loss
        // would own it then at once with the new one.
        if (!(await within(30000, someoneElse))) bump('nobody took the lock after the session ended')
        holder.send({ op: 'let', r })
      } else if (kind === 'pg-restart') {
        if (r % 2 === 0) await pg.stopFast()
        else await pg.stop()
        await pg.start()
        faults.restarts++
        if (!(await within(30000, someoneElse))) bump('nobody took the lock after the restart')
        holder.send({ op: 'let', r })
      } else {
        const waiters = racers.map((_, i) => i).filter((i) => i !== h)
        const f = waiters[Math.floor(Math.random() * waiters.length)]
        frozen = racers[f]
        frozen.kill('SIGSTOP')
        // One thread takes the stop signal and stops the others: until then the lock's thread
        // may still run. The holder lets go once the waiter is wholly stopped.
        if (!(await within(30000, () => everyThreadStopped(frozen.pid)))) bump('waiter did not stop')
        holder.send({ op: 'let', r })
        const others = racers.filter((_, i) => i !== f)
        const ok = await within(FROZEN_MS, () => others.every((w) => sofar(w).includes(`D ${r}`)))
        if (!ok) {
          faults.heldUp++
          if (process.env.TORTURE_PG_DEBUG) {
            console.error(`held up, round ${r}, holder ${h}, frozen ${f}`)
            for (const [i, w] of racers.entries()) console.error(i, JSON.stringify(sofar(w)))
            console.error(
              await pg.sql("SELECT pid || ':' || mode || ':' || granted FROM pg_locks WHERE locktype = 'advisory'"),
            )
            console.error(
              await pg.sql(
                "SELECT pid || ':' || state || ':' || left(query, 60) FROM pg_stat_activity WHERE application_name = 'processlock'",
              ),
            )
          }
        }
        frozen.kill('SIGCONT')
        frozen = null
      }
      const lines = await Promise.all(ofRound.map((x) => x.done))
      const intervals = []
      const losses = []
      for (const [i, ls] of lines.entries()) {
        let open = null
        for (const line of ls) {
          const [tag, , t, x] = line.split(' ')
          if (tag === 'A') {
            open = BigInt(t)
            owners.push({ a: open, token: BigInt(x) })
          } else if (tag === 'R' && open != null) {
            intervals.push([open, BigInt(t)])
            open = null
          } else if (tag === 'L' && open != null) {
            intervals.push([open, BigInt(t)])
            faults.lost++
            losses.push({ a: open, found: BigInt(x) })
            open = null
          } else if (tag === 'X') st.releaseNotOurs++
          else if (tag === 'E') bump(line.split(' ')[2])
        }
        if (open != null) bump('no-release')
        if (lastOf(ls) !== `D ${r}`) throw new Error(`racer ${i} ended: ${racers[i].stderr.trim()}`)
      }
      for (const loss of losses) {
        const [next] = intervals
          .map(([a]) => a)
          .filter((a) => a > loss.a)
          .sort((x, y) => (x < y ? -1 : x > y ? 1 : 0))
        if (next != null) faults.told.push(Number(loss.found - next) / 1000)
      }
      report.countRound(st, intervals)
      st.rounds++
    }
  } finally {
    if (frozen) frozen.kill('SIGCONT')
    await Promise.all(racers.map((w) => w.stop()))
  }
  st.seconds = (Date.now() - started) / 1000
  st.tokensOutOfOrder = tokensOutOfOrder(owners)
  const [held] = await pg.sql(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'",
  )
  const [standing] = await pg.sql('SELECT count(*) FROM processlock_holders WHERE record IS NOT NULL')
  st.leftoverLocks = Number(held) + Number(standing)
  if (!keep) fs.rmSync(kdir, { recursive: true, force: true })
  const tokens = owners.map((o) => o.token)
  const what = {
    'pg-terminate': `sessions ended while held ${faults.hit}`,
    'pg-restart': `server restarts while held ${faults.restarts}`,
    'pg-frozen': `rounds a frozen waiter held up the others ${faults.heldUp}`,
  }[kind]
  if (faults.heldUp) st.errors['held up by a frozen waiter'] = faults.heldUp
  const told = faults.told.sort((x, y) => x - y)
  const us = (v) => `${v >= 0 ? '+' : ''}${v.toFixed(0)} us`
  st.notes.push(
    `${what}; holds found lost ${faults.lost}` +
      (told.length
        ? ` (found lost, against the next owner's acquire: median ${us(told[told.length >> 1])}, max ${us(told[told.length - 1])})`
        : '') +
      `; holders table emptied ${faults.truncated} times`,
  )
  st.notes.push(
    `fencing tokens of ${owners.length} owners ${tokens.length ? `(${min(tokens)}..${max(tokens)})` : ''} in the order they acquired: ` +
      (st.tokensOutOfOrder ? `**${st.tokensOutOfOrder} not above the previous owner's**` : 'strictly increasing'),
  )
  return st
}

const lastOf = (a) => a[a.length - 1]
const min = (xs) => Math.min(...xs.map(Number))
const max = (xs) => Math.max(...xs.map(Number))

module.exports = { KINDS, startServer, runKind, tokensOutOfOrder }
