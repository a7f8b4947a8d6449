#!/usr/bin/env node
'use strict'
// npm run bench [-- --quick] [--write | --no-write] [--out FILE] [--dir D]
//               [--sections cycle,startup,contention,memory,handover,
//                           pg-cycle,pg-takeover,pg-handover,fence]
//
// One run, one machine, ours and the peers side by side:
//   cycle       uncontended acquire+release: ours, proper-lockfile (sync and
//               async API), lockfile, and the floor (bench/floor.c: the same
//               syscalls as our protocol from a minimal C program)
//   startup     `node -e "require(pkg).acquireLock(...)"` against `node -e ''`
//   contention  8 processes x 500 acquisitions each, retried until success
//   memory      100,000 cycles in one process: RSS and open descriptors
//   handover    latency from release / SIGKILL of the holder to a
//               waiting acquisition; skipped while the package cannot wait
//   pg-*        locks on a PostgreSQL server the run starts (bench/pg.js): the
//               cycle, takeover after SIGKILL / SIGSTOP / a network cut, and
//               handover to a waiter; skipped where PostgreSQL is not installed
//   fence       a write to a table guarded by fenceWrites beside one to an
//               unguarded twin: SQLite in WAL mode, PostgreSQL on loopback
//               (bench/fence.js; its own block, "bench-fence")
// Writes BENCHMARKS.md (the "bench" block, and "bench-pg" for the pg-* sections;
// a block none of whose sections ran, and the "torture" block written by
// bench/torture.js --write, are kept). --quick is a short CI smoke run: smaller
// counts, and BENCHMARKS.md is left alone unless --write is given.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { eachOption } = require('./args')
const { Worker } = require('./pool')
const { ROOT, LABELS, oursUnavailable } = require('./impls')
const R = require('./report')
const PG = require('./pg')
const FENCE = require('./fence')

const SECTIONS = ['cycle', 'startup', 'contention', 'memory', 'handover', ...PG.SECTIONS, ...FENCE.SECTIONS]

function parseArgs(argv) {
  const a = { quick: false, write: null, out: null, dir: null, sections: SECTIONS, peersOnly: false }
  eachOption(argv, __filename, (k, v) => {
    switch (k) {
      case '--quick':
        a.quick = true
        break
      case '--write':
        a.write = true
        break
      case '--no-write':
        a.write = false
        break
      case '--out':
        a.out = path.resolve(v())
        break
      case '--dir':
        a.dir = path.resolve(v())
        break
      case '--sections':
        a.sections = v().split(',')
        break
      case '--peers-only':
        a.peersOnly = true
        break
      default:
        return false
    }
    return true
  })
  if (a.write == null) a.write = !a.quick
  for (const s of a.sections) if (!SECTIONS.includes(s)) throw new Error(`unknown section ${s}`)
  return a
}

const now = () => process.hrtime.bigint()
const delay = (ms) => new Promise((r) => setTimeout(r, ms))

function pct(sorted, q) {
  return sorted.length ? sorted[Math.round((sorted.length - 1) * q)] : null
}
function median(a) {
  const s = Float64Array.from(a).sort()
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null
}

let counter = 0
function freshDir(root, name) {
  const d = path.join(root, `${name}-${counter++}`)
  fs.mkdirSync(d, { recursive: true })
  return d
}

async function withWorker(impl, fn, nodeArgs = []) {
  const w = await new Worker(impl, {}, nodeArgs).ready
  try {
    return await fn(w)
  } finally {
    await w.stop()
  }
}

// ---- (a) uncontended cycle ---------------------------------------------------

function buildFloor(tmp) {
  const exe = path.join(tmp, 'floor')
  try {
    execFileSync('cc', ['-O2', '-o', exe, path.join(__dirname, 'floor.c')], { stdio: ['ignore', 'ignore', 'pipe'] })
    return exe
  } catch (e) {
    console.error(`bench: cannot build the floor with cc: ${String(e.stderr || e.message).trim()}`)
    return null
  }
}

function runFloor(exe, dir, n, warmup) {
  const outText = execFileSync(exe, [dir, String(n), String(warmup)], { encoding: 'utf8' })
  return JSON.parse(outText)
}

// Where a cycle's time over the floor goes, profiled apart from this run (perf, 40,000 cycles in
// a tmpfs directory, where the file system's part is small and steady).
const CYCLE_PROFILE =
  'where the time over the floor goes (profiled with `perf` in a tmpfs directory: the floor 19.6 us, our two' +
  ' native calls alone 27.3 us, the API 29.0 us): the JS layer 1.7 us; Node-API about 4 us (result objects' +
  ' built property by property, strings copied in and out); the allocator and libc about 3 us; the binding and' +
  ' the core about 2 us (the record, the temporary file name, the registry); three getpid the floor does not make'

async function cycleSection(a, ctx) {
  const n = a.quick ? 2000 : 10000
  const reps = a.quick ? 1 : 3
  // Per run and implementation: n cycles or this budget, whichever comes first
  // (proper-lockfile's sync API takes milliseconds per cycle).
  const maxMs = a.quick ? 1000 : 4000
  const warmup = a.quick ? 500 : 1000
  const warmMs = a.quick ? 600 : 2500
  const rows = [
    ...(ctx.ours ? [{ id: 'ours', impl: 'ours', api: 'sync', label: `${LABELS.ours} (acquireLock/releaseLock)` }] : []),
    { id: 'plf-sync', impl: 'proper-lockfile', api: 'sync', label: `${LABELS['proper-lockfile']} lockSync/unlockSync` },
    {
      id: 'plf-async',
      impl: 'proper-lockfile',
      api: 'async',
      label: `${LABELS['proper-lockfile']} lock/release (async)`,
    },
    { id: 'lf', impl: 'lockfile', api: 'sync', label: `${LABELS.lockfile} lockSync/unlockSync` },
    ...(ctx.floorExe ? [{ id: 'floor', impl: 'floor', label: LABELS.floor }] : []),
  ]
  const medians = Object.fromEntries(rows.map((r) => [r.id, []]))
  const p95s = Object.fromEntries(rows.map((r) => [r.id, []]))
  // Interleave the repetitions so drift on a busy machine hits everyone alike.
  for (let rep = 0; rep < reps; rep++) {
    for (const row of rows) {
      const dir = freshDir(ctx.root, `cycle-${row.id}`)
      let st
      if (row.impl === 'floor') {
        st = runFloor(ctx.floorExe, dir, n, warmup)
      } else {
        st = await withWorker(row.impl, async (w) => {
          w.send({ op: 'cycles', dir, n, warmup, warmMs, api: row.api, maxMs })
          return w.json()
        })
      }
      medians[row.id].push(st.median_ns)
      p95s[row.id].push(st.p95_ns)
      row.n = (row.n || 0) + st.n
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  for (const row of rows) {
    row.median = median(medians[row.id])
    row.p95 = median(p95s[row.id])
  }
  const by = Object.fromEntries(rows.map((r) => [r.id, r]))
  const ours = by.ours
  const floor = by.floor
  const table = R.table(
    ['implementation', 'cycles', 'median (us)', 'p95 (us)', 'x floor', 'ours is faster by'],
    rows.map((r) => [
      r.label,
      r.n,
      R.us(r.median),
      R.us(r.p95),
      floor ? R.ratio(r.median / floor.median) : 'n/a',
      ours && r !== ours ? R.ratio(r.median / ours.median) : '',
    ]),
  )
  const targets = []
  if (ours && floor) {
    const x = ours.median / floor.median
    targets.push(`ours / floor = ${R.ratio(x)} (target <= 1.1x): **${x <= 1.1 ? 'met' : 'missed'}**`)
    if (x > 1.1) targets.push(CYCLE_PROFILE)
  }
  if (ours) {
    const best = Math.min(by['plf-sync'].median, by['plf-async'].median)
    const x = best / ours.median
    targets.push(
      `proper-lockfile (its faster API) / ours = ${R.ratio(x)} (target >= 5x): **${x >= 5 ? 'met' : 'missed'}**`,
    )
  }
  const md = [
    '## Uncontended acquire + release',
    '',
    `One process, a loop of acquire then release of one lock, each cycle timed with \`process.hrtime.bigint()\`` +
      ` (the floor: \`clock_gettime\`); ${reps > 1 ? `${reps} interleaved runs (fresh process each), the median of their medians and p95s` : 'one run'}` +
      ` of ${n} cycles or ${maxMs / 1000} s, whichever comes first ("cycles": the total measured), after ${warmup}` +
      ` warm-up cycles or ${warmMs / 1000} s (the floor: ${warmup} cycles). Ours with \`log: false\`; proper-lockfile with \`realpath: false\`.` +
      " proper-lockfile's sync API re-probes the mtime precision (an extra utimes + stat) on every lock because its" +
      ' sync adapter builds a new fs object each call, so its async API is shown too.',
    '',
    table,
    '',
    ...targets.map((t) => `- ${t}`),
  ].join('\n')
  return { md, rows }
}

// ---- (b) start-up cost -------------------------------------------------------------

// Where the start-up time goes, profiled apart from this run (each require timed in one process).
const STARTUP_PROFILE =
  "where it goes (each require timed inside one process): the addon's dlopen and registration 0.8 ms, found" +
  ' directly for this platform (lib/abi.js, 0.4 ms; the loader `napi build` generates is only the fallback),' +
  ' our other JS files 0.2 to 1.1 ms each (module resolution and compilation, about 3 ms in all), and the' +
  ' first acquire about 0.9 ms (on the main thread `node:worker_threads` is not loaded)'

/** What a user downloads for this platform: the addon, the command and the JS files. */
function packageSizes() {
  const zlib = require('node:zlib')
  const size = (file) => {
    const bytes = fs.readFileSync(file)
    return `${R.kb(bytes.length)} KB (gzip -9: ${R.kb(zlib.gzipSync(bytes, { level: 9 }).length)} KB)`
  }
  const addon = fs.readdirSync(ROOT).find((n) => /^processlock\..*\.node$/.test(n))
  const { buildDir, EXE } = require('../bin/processlock.js')
  const cli = path.join(buildDir('release'), EXE)
  const { files } = require('../package.json')
  const js = files
    .flatMap((f) =>
      f.endsWith('/') ? fs.readdirSync(path.join(ROOT, f)).map((n) => path.join(ROOT, f, n)) : [path.join(ROOT, f)],
    )
    .filter((f) => fs.existsSync(f))
    .reduce((sum, f) => sum + fs.statSync(f).size, 0)
  return (
    `package size on this platform: the addon \`${addon}\` ${size(path.join(ROOT, addon))}` +
    ` (the PostgreSQL client and TLS included), the \`processlock\` command ${fs.existsSync(cli) ? size(cli) : 'not built'},` +
    ` the JS files and typings ${R.kb(js)} KB`
  )
}

function startupSection(a, ctx) {
  const runs = a.quick ? 5 : 20
  const pkg = JSON.stringify(ROOT)
  const dirs = {}
  const q = JSON.stringify
  // Each variant: what it loads, and what it does with it. Besides the wall
  // time of the process, each one reports (fs.writeSync, cheap) how long its
  // require() and its first acquire took inside the process.
  const variants = [
    { id: 'bare', label: "`node -e ''`" },
    ...(ctx.ours
      ? [
          { id: 'require', label: '`node -e "require(pkg)"`', req: `require(${pkg})` },
          {
            id: 'ours',
            label: '`node -e "require(pkg).acquireLock(...)"` (held until exit, released at exit)',
            req: `require(${pkg})`,
            acq: (d) => `m.acquireLock('backend',{dir:${q(d)},tradeSide:'SHORT',log:false})`,
          },
        ]
      : []),
    {
      id: 'plf',
      label: "`require('proper-lockfile').lockSync(...)`",
      req: "require('proper-lockfile')",
      acq: (d) =>
        `m.lockSync(${q(path.join(d, 'backend'))},{realpath:false,lockfilePath:${q(path.join(d, 'backend.short.lock'))}})`,
    },
    {
      id: 'lf',
      label: "`require('lockfile').lockSync(...)`",
      req: "require('lockfile')",
      acq: (d) => `m.lockSync(${q(path.join(d, 'backend.short.lock'))})`,
    },
  ]
  const code = (v, d) => {
    if (!v.req) return ''
    return (
      'const h=process.hrtime.bigint;const t0=h();' +
      `const m=${v.req};const t1=h();${v.acq ? v.acq(d) : ''};const t2=h();` +
      "require('fs').writeSync(1,JSON.stringify({req:Number(t1-t0),acq:Number(t2-t1)}))"
    )
  }
  const times = Object.fromEntries(variants.map((v) => [v.id, []]))
  const inner = Object.fromEntries(variants.map((v) => [v.id, { req: [], acq: [] }]))
  const failures = Object.fromEntries(variants.map((v) => [v.id, 0]))
  const leftovers = Object.fromEntries(variants.map((v) => [v.id, 0]))
  for (const v of variants) dirs[v.id] = freshDir(ctx.root, `startup-${v.id}`)
  for (let i = 0; i < runs + 1; i++) {
    for (const v of variants) {
      const t0 = now()
      const res = spawnSync(process.execPath, ['-e', code(v, dirs[v.id])], {
        cwd: ROOT,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      const t = Number(now() - t0)
      if (res.status !== 0) failures[v.id]++
      // The removal guard and the locks' generation files stay in a lock directory on purpose:
      // they are not locks left behind.
      if (fs.readdirSync(dirs[v.id]).some((n) => n !== '.processlock.guard' && !/^\..*\.lock\.fencing$/.test(n))) {
        leftovers[v.id]++
        fs.rmSync(dirs[v.id], { recursive: true, force: true })
        fs.mkdirSync(dirs[v.id])
      }
      if (i === 0) continue // the first round warms the page cache
      times[v.id].push(t)
      if (v.req && res.status === 0) {
        try {
          const r = JSON.parse(res.stdout)
          inner[v.id].req.push(r.req)
          inner[v.id].acq.push(r.acq)
        } catch {
          /* counted as nothing */
        }
      }
    }
  }
  const bare = median(times.bare)
  const rows = variants.map((v) => {
    const s = Float64Array.from(times[v.id]).sort()
    const m = median(times[v.id])
    const notes = []
    if (failures[v.id]) notes.push(`${failures[v.id]} run(s) failed`)
    if (v.acq) notes.push(leftovers[v.id] ? `lock left after exit ${leftovers[v.id]}x` : 'lock removed at exit')
    return [
      v.label,
      runs,
      R.ms(m),
      R.ms(pct(s, 0.95)),
      v.id === 'bare' ? '' : `${m >= bare ? '+' : ''}${R.ms(m - bare)}`,
      v.req ? R.ms(median(inner[v.id].req)) : '',
      v.acq ? R.ms(median(inner[v.id].acq)) : '',
      notes.join('; '),
    ]
  })
  const targets = []
  if (ctx.ours) {
    const over = median(times.ours) - bare
    targets.push(
      `\`require\` + first acquire over bare node = ${R.ms(over)} ms (target <= 3 ms): **${over <= 3e6 ? 'met' : 'missed'}**`,
    )
    if (over > 3e6) targets.push(STARTUP_PROFILE)
    targets.push(packageSizes())
  }
  const md = [
    '## Start-up cost',
    '',
    `Wall time of a whole \`node -e\` process (spawn to exit), ${runs} runs of each, interleaved, after one warm-up run;` +
      ' and, measured inside the same processes with `process.hrtime.bigint()`, the median time of the `require()`' +
      ' (ours: the JS layer and the addon) and of the first acquire.',
    '',
    R.table(
      [
        'command',
        'runs',
        'median (ms)',
        'p95 (ms)',
        'over bare node (ms)',
        'require() (ms)',
        'first acquire (ms)',
        'notes',
      ],
      rows,
    ),
    ...(targets.length ? ['', ...targets.map((t) => `- ${t}`)] : []),
  ].join('\n')
  return { md }
}

// ---- (c) contention ----------------------------------------------------------------

async function contentionSection(a, ctx) {
  const procs = 8
  const count = a.quick ? 50 : 500
  const holdUs = 50
  const retryUs = 50
  const impls = [...(ctx.ours ? ['ours'] : []), 'proper-lockfile', 'lockfile']
  const rows = []
  for (const impl of impls) {
    const dir = freshDir(ctx.root, `contention-${impl}`)
    const ws = await Promise.all(Array.from({ length: procs }, () => new Worker(impl, {}).ready))
    const t0 = now() + 50000000n
    const started = Date.now()
    const replies = await Promise.all(
      ws.map((w) => {
        w.send({ op: 'contend', dir, count, holdUs, retryUs, t0: String(t0) })
        return w.json()
      }),
    )
    const wall = (Date.now() - started - 50) / 1000
    await Promise.all(ws.map((w) => w.stop()))
    const lat = Float64Array.from(replies.flatMap((r) => r.lat)).sort()
    const intervals = replies.flatMap((r) => r.intervals).sort((x, y) => x[0] - y[0])
    let maxEnd = -1
    let overlaps = 0
    for (const [s, e] of intervals) {
      if (s < maxEnd) overlaps++
      if (e > maxEnd) maxEnd = e
    }
    const errors = {}
    for (const r of replies) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] || 0) + v
    const conflicts = replies.reduce((x, r) => x + r.conflicts, 0)
    const lost = replies.reduce((x, r) => x + r.lost, 0)
    rows.push({
      impl,
      n: lat.length,
      median: pct(lat, 0.5),
      p95: pct(lat, 0.95),
      wall,
      conflicts,
      overlaps,
      errors,
      lost,
    })
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const md = [
    '## Contention',
    '',
    `${procs} processes x ${count} acquisitions of one lock, started together. Each acquisition: try, and on` +
      ` conflict sleep ${retryUs} us and try again, until it succeeds; then hold ${holdUs} us (busy) and release.` +
      ' Latency = from the first try to success. "overlaps" counts ownership intervals that overlapped another.',
    '',
    R.table(
      [
        'implementation',
        'acquisitions',
        'median (us)',
        'p95 (us)',
        'acquisitions/s',
        'failed tries',
        'overlaps',
        'errors',
      ],
      rows.map((r) => [
        LABELS[r.impl],
        r.n,
        R.us(r.median),
        R.us(r.p95),
        Math.round(r.n / r.wall),
        r.conflicts,
        `**${r.overlaps}**`,
        (R.fmtCounts(r.errors) || '0') + (r.lost ? `; release found it not ours ${r.lost}` : ''),
      ]),
    ),
  ].join('\n')
  return { md, rows }
}

// ---- (d) memory and descriptors --------------------------------------------------

async function memorySection(a, ctx) {
  const n = a.quick ? 10000 : 100000
  // The peers get a time budget instead (proper-lockfile's sync API would need minutes).
  const peerMs = a.quick ? 2000 : 20000
  const impls = [...(ctx.ours ? ['ours'] : []), 'proper-lockfile', 'lockfile']
  // Memory does not depend on timing: run them side by side.
  const res = await Promise.all(
    impls.map((impl) =>
      withWorker(
        impl,
        async (w) => {
          const dir = freshDir(ctx.root, `memory-${impl}`)
          w.send({ op: 'mem', dir, n, maxMs: impl === 'ours' ? null : peerMs })
          const r = await w.json()
          fs.rmSync(dir, { recursive: true, force: true })
          return { impl, ...r }
        },
        ['--expose-gc'],
      ),
    ),
  )
  const mb = (b) => (b / 1048576).toFixed(1)
  const d = (x, y) => `${y - x >= 0 ? '+' : ''}${mb(y - x)}`
  const md = [
    '## Memory and descriptors',
    '',
    `${n.toLocaleString('en-US')} acquire+release cycles in one process (the peers: as many as fit in ${peerMs / 1000} s, up to` +
      ` ${n.toLocaleString('en-US')}), after 100 warm-up cycles; \`gc()\` before each snapshot; descriptors counted in` +
      ' /proc/self/fd. The three run side by side (memory does not depend on timing), so cycles/s is only indicative.',
    '',
    R.table(
      [
        'implementation',
        'cycles',
        'RSS before (MB)',
        'RSS after (MB)',
        'RSS change (MB)',
        'heap used change (MB)',
        'fds before',
        'fds after',
        'cycles/s',
      ],
      res.map((r) => [
        LABELS[r.impl],
        r.n.toLocaleString('en-US'),
        mb(r.before.rss),
        mb(r.after.rss),
        d(r.before.rss, r.after.rss),
        d(r.before.heapUsed, r.after.heapUsed),
        r.before.fds,
        r.after.fds,
        Math.round(r.n / (r.elapsed_ns / 1e9)),
      ]),
    ),
  ].join('\n')
  return { md, res }
}

// ---- (e) handover latency: waiting acquisition ---------------------------------------------
//
// Waiting acquisition. A holder process holds the lock, a
// second process waits for it, then the holder releases, or is SIGKILLed:
//   latency = t(waiter's acquire returned) - t(release called | kill sent)
// Ours: acquireLock(type, { waitMs }) and acquireLockAsync(type, { timeoutMs }).
// Guarded: while the package cannot wait (waitMs ignored, i.e. LOCK_CONFLICT at
// once; no acquireLockAsync), the section says so and the benchmark goes on.
// For context, the peers' own waiting (polling every 10 ms) after a release.

const POLL_MS = 10

async function waitHonoured(ctx) {
  // Does acquireLock honour waitMs? A holder holds; a waiter asks with waitMs.
  const dir = freshDir(ctx.root, 'handover-probe')
  const holder = await new Worker('ours', {}).ready
  const waiter = await new Worker('ours', {}).ready
  try {
    holder.send({ op: 'holdone', dir })
    await holder.until((l) => l.startsWith('A '))
    waiter.send({ op: 'waitacq', dir, api: 'sync', waitMs: 400 })
    const r = await waiter.json()
    return !r.ok && r.waited_ns >= 300e6 // it waited, then timed out
  } finally {
    await Promise.all([holder.stop(), waiter.stop()])
  }
}

// reps handovers with one waiter; the holder is replaced after each SIGKILL.
async function handoverSeries(ctx, impl, api, how, reps) {
  const dir = freshDir(ctx.root, `handover-${impl}-${api}-${how}`)
  const opts = impl === 'ours' ? {} : { pollMs: POLL_MS }
  let holder = await new Worker(impl, opts).ready
  const waiter = await new Worker(impl, opts).ready
  const lat = []
  const errs = []
  try {
    for (let i = 0; i < reps; i++) {
      holder.send({ op: 'holdone', dir })
      const got = await holder.until((l) => l.startsWith('A ') || l.startsWith('J '))
      if (!got.length || !got[got.length - 1].startsWith('A '))
        throw new Error(`holder could not take the lock: ${got.pop()}`)
      waiter.send({ op: 'waitacq', dir, api, waitMs: 10000 })
      await waiter.until((l) => l === 'W')
      // Let it settle into waiting; a random part, so a release does not keep
      // the same phase against a poller's period.
      await delay(30 + Math.random() * 20)
      let tGone
      if (how === 'release') {
        holder.send({ op: 'release' })
        const lines = await holder.until((l) => l.startsWith('R '))
        tGone = BigInt(lines[lines.length - 1].split(' ')[2])
      } else {
        tGone = now()
        holder.kill()
      }
      const r = await waiter.json() // the waiter releases right after
      if (r.ok) lat.push(Number(BigInt(r.tA) - tGone))
      else errs.push(r.code)
      if (how === 'SIGKILL') {
        await holder.exited
        holder = await new Worker(impl, opts).ready
      }
    }
  } finally {
    await Promise.all([holder.stop(), waiter.stop()])
  }
  return { lat, errs }
}

async function handoverSection(a, ctx) {
  const head = ['## Handover latency (waiting acquisition)', '']
  if (!ctx.ours) return { md: [...head, 'Skipped: our package is not loaded.'].join('\n') }
  const pl = require(ROOT)
  const series = []
  const why = []
  if (await waitHonoured(ctx)) series.push(['ours', 'sync', '`acquireLock(type, { waitMs })`'])
  else why.push('`acquireLock(type, { waitMs })` does not wait yet')
  if (typeof pl.acquireLockAsync === 'function')
    series.push(['ours', 'async', '`acquireLockAsync(type, { timeoutMs })`'])
  else why.push('`acquireLockAsync` is not exported yet')
  const reps = a.quick ? 2 : 10
  const rows = []
  const runs = []
  for (const [impl, api, label] of series) {
    for (const how of ['release', 'SIGKILL']) runs.push([impl, api, label, how])
  }
  if (series.length && !a.quick) {
    runs.push([
      'proper-lockfile',
      'async',
      `${LABELS['proper-lockfile']} \`lock\` with retries every ${POLL_MS} ms`,
      'release',
    ])
    runs.push(['lockfile', 'async', `${LABELS.lockfile} \`lock\` with \`wait\`, \`pollPeriod: ${POLL_MS}\``, 'release'])
  }
  for (const [impl, api, label, how] of runs) {
    const { lat, errs } = await handoverSeries(ctx, impl, api, how, reps)
    const s = Float64Array.from(lat).sort()
    rows.push([
      label,
      `after ${how}`,
      lat.length,
      R.us(pct(s, 0.5)),
      R.us(pct(s, 0.95)),
      R.us(s.length ? s[s.length - 1] : null),
      errs.length ? `${errs.length} failed (${errs[0]})` : '',
    ])
  }
  const md = [
    ...head,
    'A holder process holds the lock; a second process waits for it; the holder releases (or is SIGKILLed).' +
      " Latency = the waiter's acquisition returned - release called (or kill sent), both `process.hrtime.bigint()`;" +
      ` ${reps} handovers each. The peers poll (here every ${POLL_MS} ms); after a SIGKILL they wait for \`stale\` (>= 2 s).`,
    '',
  ]
  if (rows.length) md.push(R.table(['API', 'event', 'runs', 'median (us)', 'p95 (us)', 'max (us)', 'notes'], rows))
  if (why.length) md.push('', `Not measured: ${why.join('; ')}.`)
  return { md: md.join('\n') }
}

// ---- main --------------------------------------------------------------------------

async function main() {
  const a = parseArgs(process.argv.slice(2))
  const why = oursUnavailable()
  if (why && !a.peersOnly) {
    console.error(`bench: ${why}\nBuild the addon first (npm run build), or pass --peers-only.`)
    process.exit(2)
  }
  const root = a.dir || fs.mkdtempSync(path.join(os.tmpdir(), 'processlock-bench-'))
  fs.mkdirSync(root, { recursive: true })
  const ctx = { root, ours: !why, freshDir: (name) => freshDir(root, name) }
  const m = R.machine(root)
  const started = Date.now()
  console.log(`bench${a.quick ? ' (quick)' : ''}: ${m.summary}; dir ${root}`)
  ctx.floorExe = a.sections.includes('cycle') ? buildFloor(root) : null

  const parts = { bench: [], 'bench-pg': [], 'bench-fence': [] }
  const fns = {
    cycle: cycleSection,
    startup: startupSection,
    contention: contentionSection,
    memory: memorySection,
    handover: handoverSection,
    ...PG.sections,
    ...FENCE.sections,
  }
  try {
    for (const s of SECTIONS) {
      if (!a.sections.includes(s)) continue
      const t = Date.now()
      const res = await fns[s](a, ctx)
      console.log(`\n${res.md}\n\n(${((Date.now() - t) / 1000).toFixed(1)} s)`)
      parts[PG.SECTIONS.includes(s) ? 'bench-pg' : FENCE.SECTIONS.includes(s) ? 'bench-fence' : 'bench'].push(res.md)
    }
  } finally {
    await PG.closeServer(ctx)
    if (!a.dir) fs.rmSync(root, { recursive: true, force: true })
  }
  const seconds = (Date.now() - started) / 1000
  const cmd = `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`
  // Lock files and server locks are two blocks of BENCHMARKS.md: a run of one kind's sections
  // leaves the other's block as it was.
  const titles = {
    bench: 'Benchmarks',
    'bench-pg': 'Benchmarks: locks on a PostgreSQL server',
    'bench-fence': 'Benchmarks: fenced writes',
  }
  const blocks = Object.entries(parts)
    .filter(([, p]) => p.length)
    .map(([name, p]) => [
      name,
      [
        `## ${titles[name]}`,
        '',
        `Command: \`${cmd}\` (${seconds.toFixed(0)} s). All numbers from this one run on this one machine.`,
        '',
        R.machineTable(m),
        '',
        p.join('\n\n'),
      ].join('\n'),
    ])
  console.log(`\nbench: done in ${seconds.toFixed(1)} s`)
  const target = a.out || (a.write ? path.join(ROOT, 'BENCHMARKS.md') : null)
  if (target) {
    for (const [name, md] of blocks) R.replaceSection(target, name, md)
    console.log(`bench: results written to ${path.relative(process.cwd(), target) || target}`)
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(2)
})
