'use strict'
// The sections of bench/run.js for locks on a PostgreSQL server, over loopback against a private
// server the run starts itself (__test__/helpers/pg.js: initdb into a temporary directory,
// 127.0.0.1, a free port). Ours beside two others:
//   the floor          crates/processlock-pg/examples/pg_floor.rs: the statements our lock sends,
//                      from a minimal Rust client with no checks
//   node-postgres      what users script by hand with the `pg` package: one connection with its
//                      defaults, `pg_try_advisory_lock`, and to wait the same every 100 ms
// Sections:
//   pg-cycle     uncontended acquire + release
//   pg-takeover  from SIGKILL / SIGSTOP / a network cut of the holder to another process
//                holding the lock, for a few `leaseMs`
//   pg-handover  from release to a waiting process holding the lock
// Where PostgreSQL is not installed, each section says so in one line and the run goes on.

const { execFileSync, spawnSync } = require('node:child_process')
const execFile = require('node:util').promisify(require('node:child_process').execFile)
const path = require('node:path')
const { Worker } = require('./pool')
const { ROOT, LABELS } = require('./impls')
const R = require('./report')

const SECTIONS = ['pg-cycle', 'pg-takeover', 'pg-handover']
const CLIENT = path.join(__dirname, 'pg-client.js')
const FLOOR = path.join(ROOT, 'target', 'release', 'examples', 'pg_floor')
const POLL_MS = 100
const NP = `node-postgres ${readVersion('pg')}`
const POLLER = `${NP}, \`pg_try_advisory_lock\` every ${POLL_MS} ms`

const now = () => process.hrtime.bigint()
const delay = (ms) => new Promise((r) => setTimeout(r, ms))

function readVersion(pkg) {
  try {
    return require(`${pkg}/package.json`).version
  } catch {
    return null
  }
}

function median(a) {
  const s = Float64Array.from(a).sort()
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null
}
const sec = (ns) => (ns / 1e9).toFixed(ns < 1e9 ? 3 : 2)

// ---- the server ------------------------------------------------------------------------

/** The server of this run (started on first use), or null after printing why not. */
async function server(ctx) {
  if (ctx.pg !== undefined) return ctx.pg
  ctx.pg = null
  try {
    const { startPg } = require('../__test__/helpers/pg.js')
    const pg = await startPg()
    if (!pg) {
      ctx.pgWhy = 'PostgreSQL is not installed'
      return null
    }
    ctx.pg = pg
    ctx.pgPort = Number(new URL(pg.url).port)
    if (readVersion('pg')) {
      const { Client } = require('pg')
      ctx.pgAdmin = new Client({ connectionString: pg.url })
      await ctx.pgAdmin.connect()
      ctx.pgVersion = (await ctx.pgAdmin.query('SHOW server_version')).rows[0].server_version
    }
  } catch (e) {
    ctx.pgWhy = `cannot start a PostgreSQL server: ${String(e.message).split('\n')[0]}`
    console.log(`bench: ${ctx.pgWhy}`)
  }
  return ctx.pg
}

async function closeServer(ctx) {
  if (ctx.pgAdmin) await ctx.pgAdmin.end().catch(() => {})
  if (ctx.pg) await ctx.pg.close()
}

/** One column of the rows of `sql`, through the run's own connection. */
async function admin(ctx, sql, params = []) {
  return (await ctx.pgAdmin.query({ text: sql, values: params, rowMode: 'array' })).rows.map((r) => r[0])
}

/** Why a section cannot run here (it is then one line in the output and in the file), or null. */
async function whyNot(title, ctx, { poller = true } = {}) {
  let why = null
  if (!ctx.ours) why = 'our package is not loaded'
  else if (!(await server(ctx))) why = ctx.pgWhy
  else if (poller && !ctx.pgAdmin) why = 'the `pg` package (a devDependency) is not installed'
  if (!why) return null
  console.log(`bench: ${title}: skipped (${why})`)
  return { md: `## ${title}\n\nSkipped: ${why}.` }
}

function client(ctx, impl, extra = {}) {
  return new Worker(impl, { url: ctx.pg.url, dir: ctx.freshDir(`pg-${impl}`), ...extra }, [], {
    script: CLIENT,
    quiet: true,
  }).ready
}

const lastLine = (lines) => lines[lines.length - 1] || ''

async function hold(w) {
  w.send({ op: 'hold' })
  const line = lastLine(await w.until((l) => l.startsWith('A ') || l.startsWith('E ')))
  if (!line.startsWith('A ')) throw new Error(`${w.impl} holder could not take the lock: ${line} ${w.stderr}`)
}

/** Resolves once some session waits in the server for an advisory lock (ours waits there). */
async function waitingInServer(ctx) {
  const end = Date.now() + 10000
  while (Date.now() < end) {
    const [n] = await admin(ctx, "SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    if (n > 0) return
    await delay(5)
  }
  throw new Error('the waiter never waited in the server')
}

/** Makes the taker start waiting, and lets it settle into it. */
async function startTaking(ctx, taker, waitMs) {
  taker.send({ op: 'take', waitMs })
  await taker.until((l) => l === 'W')
  // Ours waits in the server: wait for that. The poller: a random phase against its period.
  if (taker.impl === 'ours') {
    await waitingInServer(ctx)
    await delay(20 + Math.random() * 30)
  } else await delay(POLL_MS + Math.random() * POLL_MS)
}

// ---- pg-cycle --------------------------------------------------------------------------

function buildFloor() {
  try {
    execFileSync('cargo', ['build', '--release', '-q', '-p', 'processlock-pg', '--example', 'pg_floor'], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    return true
  } catch (e) {
    console.log(
      `bench: cannot build the PostgreSQL floor: ${
        String(e.stderr || e.message)
          .trim()
          .split('\n')[0]
      }`,
    )
    return false
  }
}

async function cycleSection(a, ctx) {
  const title = 'PostgreSQL: uncontended acquire + release'
  const skip = await whyNot(title, ctx, { poller: false })
  if (skip) return skip
  const reps = a.quick ? 1 : 5
  const rows = [
    {
      id: 'ours',
      label: `${LABELS.ours} (\`acquireLock\`/\`releaseLock\` with \`url\`)`,
      n: a.quick ? 30 : 300,
      warmup: a.quick ? 5 : 20,
    },
    ...(readVersion('pg')
      ? [{ id: 'np', label: `${NP}: \`pg_try_advisory_lock\` + \`pg_advisory_unlock\``, n: a.quick ? 200 : 3000 }]
      : []),
    ...(buildFloor()
      ? [
          { id: 'floor-once', label: 'floor (Rust, same statements), one connection', n: a.quick ? 200 : 3000 },
          {
            id: 'floor-each',
            label: 'floor (Rust, same statements), a connection per cycle',
            n: a.quick ? 30 : 300,
            warmup: a.quick ? 5 : 20,
          },
        ]
      : []),
  ]
  const maxMs = a.quick ? 1500 : 6000
  const got = Object.fromEntries(rows.map((r) => [r.id, { med: [], p95: [], n: 0 }]))
  for (let rep = 0; rep < reps; rep++) {
    // A different order each run: what one leaves behind on the server (dead rows to vacuum,
    // sessions still ending) falls on each of the others in turn.
    for (const row of rows.map((_, i) => rows[(i + rep) % rows.length])) {
      const warmup = row.warmup ?? 100
      let st
      if (row.id.startsWith('floor')) {
        const mode = row.id === 'floor-once' ? 'once' : 'each'
        // Not execFileSync: this process must go on reading the server's output meanwhile.
        const { stdout } = await execFile(FLOOR, [ctx.pg.url, String(row.n), String(warmup), mode])
        st = JSON.parse(stdout)
      } else {
        const w = await client(ctx, row.id === 'ours' ? 'ours' : 'node-postgres')
        try {
          w.send({ op: 'cycles', n: row.n, warmup, maxMs })
          st = await w.json()
        } finally {
          await w.stop()
        }
      }
      await settle(ctx)
      got[row.id].med.push(st.median_ns)
      got[row.id].p95.push(st.p95_ns)
      got[row.id].n += st.n
    }
  }
  for (const row of rows) {
    row.median = median(got[row.id].med)
    row.p95 = median(got[row.id].p95)
    row.cycles = got[row.id].n
  }
  const by = Object.fromEntries(rows.map((r) => [r.id, r]))
  const x = (r, base) => (base ? R.ratio(r.median / base.median) : 'n/a')
  const md = [
    `## ${title}`,
    '',
    `One process, a loop of acquire then release of one lock on a server on 127.0.0.1 (PostgreSQL ${ctx.pgVersion || '?'},` +
      ' password login), each cycle timed with `process.hrtime.bigint()` (the floor: `Instant`);' +
      ` ${reps > 1 ? `${reps} interleaved runs (a fresh process each, in a rotating order, the tables vacuumed after each), the median of their medians and p95s` : 'one run'},` +
      ` up to ${maxMs / 1000} s each after a warm-up. Ours opens a session of its own for every held lock (connect, the` +
      ' session checks and settings, `pg_try_advisory_lock`, the holder record, then the record cleared and' +
      ' `pg_advisory_unlock`, and the session closed), so the floor is shown both on one connection and with a' +
      ` connection per cycle sending the same statements. ${NP} on one open connection takes and lets go of the` +
      ' advisory lock only (no record, no lease).',
    '',
    R.table(
      [
        'implementation',
        'cycles',
        'median (us)',
        'p95 (us)',
        'x floor (one connection)',
        'x floor (connection per cycle)',
      ],
      rows.map((r) => [r.label, r.cycles, R.us(r.median), R.us(r.p95), x(r, by['floor-once']), x(r, by['floor-each'])]),
    ),
  ].join('\n')
  return { md, rows }
}

// Vacuums the tables the cycles update, so that no run inherits another's dead rows or an
// autovacuum started by them (the floor on one connection updates its row 3,000 times a run).
async function settle(ctx) {
  if (!ctx.pgAdmin) return
  for (const table of [
    'processlock_holders',
    'processlock_holders_secret',
    'processlock_floor_holders',
    'processlock_floor_holders_secret',
  ]) {
    await ctx.pgAdmin.query(`VACUUM ${table}`).catch(() => {}) // not created yet
  }
}

// ---- pg-takeover -----------------------------------------------------------------------

function iptablesWhyNot() {
  if (process.getuid && process.getuid() !== 0) return 'not root'
  const r = spawnSync('iptables', ['-w', '-L', 'INPUT', '-n'], { stdio: 'ignore' })
  if (r.error) return 'iptables is missing'
  if (r.status !== 0) return `iptables -L failed (status ${r.status})`
  return null
}

// Rules that drop both directions of one loopback connection, removed again at the end (and
// at exit if something throws in between).
const cuts = new Set()
function cutRules(clientPort, serverPort) {
  const spec = (from, to) => [
    'INPUT',
    '-i',
    'lo',
    '-p',
    'tcp',
    '--sport',
    String(from),
    '--dport',
    String(to),
    '-j',
    'DROP',
  ]
  return [spec(clientPort, serverPort), spec(serverPort, clientPort)]
}
let onSignals = false
function cut(rules) {
  if (!onSignals) {
    // Interrupted while a connection is cut: end through 'exit', which takes the rules away.
    onSignals = true
    process.on('SIGINT', () => process.exit(130))
    process.on('SIGTERM', () => process.exit(143))
  }
  for (const r of rules) execFileSync('iptables', ['-w', '-I', ...r])
  cuts.add(rules)
}
function uncut(rules) {
  if (!cuts.delete(rules)) return
  for (const r of rules) spawnSync('iptables', ['-w', '-D', ...r], { stdio: 'ignore' })
}
process.on('exit', () => {
  for (const rules of cuts) uncut(rules)
})

/** The client port of the session that holds an advisory lock (only one does at a time here). */
async function holderSession(ctx) {
  const rows = (
    await ctx.pgAdmin.query(
      "SELECT a.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'",
    )
  ).rows
  if (rows.length !== 1) throw new Error(`expected one session holding an advisory lock, found ${rows.length}`)
  return rows[0]
}

// One takeover: a fresh holder takes the lock, `taker` waits for it, then the event.
async function takeover(ctx, impl, event, leaseMs, boundMs, taker) {
  const holder = await client(ctx, impl, impl === 'ours' ? { leaseMs } : {})
  let rules = null
  let session = null
  try {
    await hold(holder)
    await startTaking(ctx, taker, boundMs)
    if (event === 'cut') {
      session = await holderSession(ctx)
      rules = cutRules(session.client_port, ctx.pgPort)
    }
    // A random phase against the holder's heartbeat (every quarter lease).
    await delay(Math.random() * (leaseMs / 4))
    const t0 = now()
    if (event === 'SIGKILL') holder.kill('SIGKILL')
    else if (event === 'SIGSTOP') holder.kill('SIGSTOP')
    else cut(rules)
    const r = await taker.json()
    if (r.ok) await taker.until((l) => l.startsWith('X '))
    const res = { ok: r.ok, ns: r.ok ? Number(BigInt(r.tA) - t0) : null, code: r.code }
    if (event === 'cut') {
      // Ours gives up by itself (onLost: 'exit', status 75) before the server lets anyone in.
      await Promise.race([holder.exited, delay(1000)])
      if (holder.exitCode != null) {
        res.holderExit = holder.exitCode
        res.holderGaveUpNs = Number(holder.exitedAt - t0)
        // Seen to have ended (the exit event comes after the exit) before the waiter had the lock.
        res.holderFirst = r.ok && holder.exitedAt < BigInt(r.tA)
      }
    }
    if (event === 'SIGSTOP') {
      // Woken, ours finds its lock lost and ends itself with status 75.
      holder.kill('SIGCONT')
      await Promise.race([holder.exited, delay(3000)])
      if (holder.exitCode != null) res.holderExit = holder.exitCode
      else if (impl !== 'ours') res.holderExit = 'still running'
    }
    return res
  } finally {
    holder.kill('SIGKILL')
    await holder.exited
    // Nothing ends the poller's old session after a freeze or a cut (no keepalive, no
    // timeout): the server would keep its lock for hours.
    await endHolders(ctx)
    if (rules) uncut(rules)
  }
}

/** Ends every session holding an advisory lock, and waits until none does. */
async function endHolders(ctx) {
  const held = "FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'"
  const end = Date.now() + 30000
  while (Date.now() < end) {
    const pids = await admin(ctx, `SELECT pid ${held}`)
    if (pids.length === 0) return
    for (const pid of pids) await admin(ctx, 'SELECT pg_terminate_backend($1)', [pid])
    await delay(20)
  }
  throw new Error('sessions holding advisory locks did not end within 30 s')
}

async function takeoverSection(a, ctx) {
  const title = 'PostgreSQL: takeover after the holder dies, freezes or is cut off'
  const skip = await whyNot(title, ctx)
  if (skip) return skip
  const leases = a.quick ? [1000] : [2000, 5000]
  const reps = a.quick ? { SIGKILL: 1, SIGSTOP: 1, cut: 1 } : { SIGKILL: 5, SIGSTOP: 3, cut: 3 }
  const noCut = iptablesWhyNot()
  if (noCut) console.log(`bench: network cut: skipped (${noCut})`)
  const events = ['SIGKILL', 'SIGSTOP', ...(noCut ? [] : ['cut'])]
  const pollerBoundMs = 3 * Math.max(...leases)
  const runs = []
  for (const event of events) {
    for (const leaseMs of leases) runs.push({ impl: 'ours', event, leaseMs, bound: 3 * leaseMs, n: reps[event] })
    runs.push({
      impl: 'node-postgres',
      event,
      leaseMs: null,
      bound: pollerBoundMs,
      n: event === 'SIGKILL' ? reps[event] : 1,
    })
  }
  const rows = []
  for (const run of runs) {
    const taker = await client(ctx, run.impl)
    const got = []
    try {
      for (let i = 0; i < run.n; i++)
        got.push(await takeover(ctx, run.impl, run.event, run.leaseMs || 2000, run.bound, taker))
    } finally {
      await taker.stop()
    }
    const ok = got.filter((g) => g.ok).map((g) => g.ns)
    const missed = got.length - ok.length
    const notes = []
    const exits = got.filter((g) => g.holderExit !== undefined).map((g) => g.holderExit)
    if (run.event === 'cut' && run.impl === 'ours') {
      const gaveUp = got.filter((g) => g.holderGaveUpNs != null)
      notes.push(
        `the cut-off holder ended itself (status ${[...new Set(gaveUp.map((g) => g.holderExit))].join('/') || '-'}) in ${gaveUp.length}/${got.length},` +
          ` ${gaveUp.length ? sec(median(gaveUp.map((g) => g.holderGaveUpNs))) : '-'} s after the cut (median),` +
          ` before the waiter had the lock in ${got.filter((g) => g.holderFirst).length}/${got.length}`,
      )
    } else if (run.event === 'SIGSTOP') {
      const seen = Object.entries(countBy(exits.map((e) => (typeof e === 'number' ? `ended itself (status ${e})` : e))))
      notes.push(`after SIGCONT the old holder: ${seen.map(([k, v]) => `${k} ${v}/${got.length}`).join(', ')}`)
    }
    rows.push({
      ...run,
      runs: got.length,
      median: median(ok),
      max: ok.length ? Math.max(...ok) : null,
      missed,
      notes,
    })
    console.log(
      `  ${run.impl} ${run.event}${run.leaseMs ? ` leaseMs ${run.leaseMs}` : ''}: ${ok.map((n) => sec(n)).join(' ')}${missed ? ` (${missed} x > ${run.bound / 1000} s)` : ''}`,
    )
  }
  const cell = (r, v) => (v == null ? `> ${r.bound / 1000} s` : `${sec(v)} s`)
  const md = [
    `## ${title}`,
    '',
    'A holder process takes the lock; another process waits for it (ours: `acquireLockAsync`, waiting in the server;' +
      ` the poller: \`pg_try_advisory_lock\` every ${POLL_MS} ms); then, at a random phase of the holder's heartbeat,` +
      ' the holder is SIGKILLed, frozen with SIGSTOP, or cut off (`iptables` drops both directions of its loopback' +
      " connection). Time = the waiter's acquisition returned - the event, both `process.hrtime.bigint()`. A wait is" +
      ` given up after 3x the lease (the poller: ${pollerBoundMs / 1000} s), shown as "> N s". The poller runs with` +
      ` node-postgres's defaults (no keepalive, no timeout), as users script it; it has no lease.` +
      (noCut ? ` Network cut not measured: ${noCut}.` : ''),
    '',
    R.table(
      ['event', 'implementation', 'leaseMs', 'runs', 'median (s)', 'max (s)', 'median / lease', 'notes'],
      rows.map((r) => [
        r.event === 'cut' ? 'network cut' : r.event,
        r.impl === 'ours' ? LABELS.ours : POLLER,
        r.leaseMs ?? '',
        r.runs,
        cell(r, r.missed > r.runs / 2 ? null : r.median),
        cell(r, r.missed ? null : r.max),
        r.leaseMs && r.median != null ? R.ratio(r.median / 1e6 / r.leaseMs) : '',
        r.notes.join('; '),
      ]),
    ),
  ].join('\n')
  return { md, rows }
}

function countBy(xs) {
  const o = {}
  for (const x of xs) o[x] = (o[x] || 0) + 1
  return o
}

// ---- pg-handover -----------------------------------------------------------------------

async function handoverSection(a, ctx) {
  const title = 'PostgreSQL: handover to a waiting process'
  const skip = await whyNot(title, ctx)
  if (skip) return skip
  const reps = a.quick ? 2 : 20
  const rows = []
  let oursMedian = null
  for (const impl of ['ours', 'node-postgres']) {
    const holder = await client(ctx, impl)
    const waiter = await client(ctx, impl)
    const lat = []
    const errs = []
    try {
      for (let i = 0; i < reps; i++) {
        await hold(holder)
        await startTaking(ctx, waiter, 10000)
        holder.send({ op: 'release' })
        const tR = BigInt(lastLine(await holder.until((l) => l.startsWith('R '))).split(' ')[1])
        await holder.until((l) => l.startsWith('X '))
        const r = await waiter.json()
        if (r.ok) await waiter.until((l) => l.startsWith('X '))
        if (r.ok) lat.push(Number(BigInt(r.tA) - tR))
        else errs.push(r.code)
      }
    } finally {
      await Promise.all([holder.stop(), waiter.stop()])
    }
    const s = Float64Array.from(lat).sort()
    const m = median(lat)
    if (impl === 'ours') oursMedian = m
    rows.push([
      impl === 'ours' ? `${LABELS.ours} \`acquireLockAsync(type, { url, timeoutMs })\`` : POLLER,
      lat.length,
      R.us(m),
      m != null && oursMedian ? R.ratio(m / oursMedian) : 'n/a',
      R.us(s[Math.round((s.length - 1) * 0.95)]),
      R.us(s.length ? s[s.length - 1] : null),
      errs.length ? `${errs.length} failed (${errs[0]})` : '',
    ])
  }
  const md = [
    `## ${title}`,
    '',
    'A holder process holds the lock; a second process waits for it (ours: in the server; the poller: a random' +
      " phase against its period); the holder releases. Latency = the waiter's acquisition returned - release called," +
      ` both \`process.hrtime.bigint()\`; ${reps} handovers each.`,
    '',
    R.table(['waiter', 'runs', 'median (us)', 'x ours', 'p95 (us)', 'max (us)', 'notes'], rows),
  ].join('\n')
  return { md }
}

module.exports = {
  SECTIONS,
  server,
  closeServer,
  sections: { 'pg-cycle': cycleSection, 'pg-takeover': takeoverSection, 'pg-handover': handoverSection },
}
