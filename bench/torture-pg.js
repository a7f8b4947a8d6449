'use strict'
// The torture race kind for locks on a PostgreSQL server (ours only), used by bench/torture.js:
//
//   pg-race   N long-lived racer processes (bench/pg-client.js) with the same URL and each a
//             lock directory of its own, so that only the server can keep them apart. Each
//             round they try once at one start instant; a winner holds for a random 0..hold-us
//             microseconds and releases. Every round takes the same lock.
//
// A round counts a double owner when two ownership intervals (hrtime right after acquire
// returned .. right before release) overlap. Over the whole run, the fencing tokens of the
// owners, in the order they acquired, must strictly increase. At the end no advisory lock may
// be left held on the server, no holder record left standing, and no file in the directories.

const fs = require('node:fs')
const path = require('node:path')
const { Worker } = require('./pool')
const report = require('./report')

const KINDS = ['pg-race']
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

async function runKind(kind, n, { rounds, duration, holdUs, base, keep, pg }) {
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

const lastOf = (a) => a[a.length - 1]
const min = (xs) => Math.min(...xs.map(Number))
const max = (xs) => Math.max(...xs.map(Number))

module.exports = { KINDS, startServer, runKind, tokensOutOfOrder }
