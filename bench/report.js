'use strict'
// Formatting shared by bench/run.js and bench/torture.js: machine facts,
// markdown tables, and the sections of BENCHMARKS.md each script owns.

const fs = require('node:fs')
const os = require('node:os')
const { execFileSync } = require('node:child_process')
const { LABELS } = require('./impls')

function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return null
  }
}

// The type of the filesystem holding dir, from the longest matching mount point.
function mountType(dir) {
  try {
    const real = fs.realpathSync(dir)
    let best = null
    for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [, mnt, type] = line.split(' ')
      if (!mnt) continue
      const m = mnt.replace(/\\040/g, ' ')
      if ((real === m || real.startsWith(m.endsWith('/') ? m : m + '/')) && (!best || m.length >= best.m.length))
        best = { m, type }
    }
    return best ? best.type : null
  } catch {
    return null
  }
}

function machine(dir) {
  let cpu = 'unknown'
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))
    if (m) cpu = m[1].trim()
  } catch {
    /* not Linux */
  }
  const nproc = sh('nproc', []) || String(os.cpus().length)
  const fsType = dir ? mountType(dir) || sh('stat', ['-f', '-c', '%T', dir]) : null
  // Which code was measured: the commit, and whether the package's sources differ from it.
  const root = require('node:path').resolve(__dirname, '..')
  const commit = sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['-C', root, 'status', '--porcelain', '--', 'src', 'crates', 'index.js', 'lib', 'Cargo.toml'])
  const m = {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    nproc,
    cpu,
    node: process.version,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    fsType,
    load: loadavg(),
    commit: commit ? `${commit}${dirty ? ' + uncommitted changes' : ''}` : null,
  }
  m.summary =
    `${m.nproc} CPUs (${m.cpu}), Node ${m.node}, ${m.kernel}` +
    (fsType ? `, lock dir on ${fsType}` : '') +
    `, load average ${m.load}` +
    (m.commit ? `; package at ${m.commit}` : '')
  return m
}

function loadavg() {
  try {
    return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
  } catch {
    return os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')
  }
}

function machineTable(m) {
  return [
    '| | |',
    '|---|---|',
    `| date | ${m.date} |`,
    `| nproc | ${m.nproc} |`,
    `| CPU | ${m.cpu} |`,
    `| Node | ${m.node} |`,
    `| kernel | ${m.kernel} |`,
    ...(m.fsType ? [`| lock directory filesystem | ${m.fsType} |`] : []),
    ...(m.commit ? [`| package commit | ${m.commit} |`] : []),
    `| load average (1, 5, 15 min) at start / end | ${m.load} / ${loadavg()} |`,
  ].join('\n')
}

const us = (ns) => (ns == null ? 'n/a' : (ns / 1000).toFixed(ns < 10000 ? 2 : 1))
const ms = (ns) => (ns == null ? 'n/a' : (ns / 1e6).toFixed(1))
const kb = (bytes) => Math.round(bytes / 1024).toLocaleString('en-US')
const ratio = (x) => (x == null || !Number.isFinite(x) ? 'n/a' : `${x.toFixed(x < 10 ? 2 : 1)}x`)

function table(header, rows) {
  return [
    `| ${header.join(' | ')} |`,
    `|${header.map((_h, i) => (i === 0 ? '---' : '---:')).join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n')
}

// ---- torture ---------------------------------------------------------------

function sumValues(o) {
  return Object.values(o || {}).reduce((x, y) => x + y, 0)
}

function fmtCounts(o) {
  const e = Object.entries(o || {})
  return e.length ? e.map(([k, v]) => `${k} ${v}`).join(', ') : ''
}

function tortureLine(st) {
  const parts = [
    `${LABELS[st.impl] || st.impl} x${st.n} ${st.kind}:`,
    `${st.rounds} rounds`,
    `double-owner ${st.doubleOwnerRounds}`,
    `no-owner ${st.noOwnerRounds}`,
  ]
  if (st.kind === 'kill') parts.push(`stuck ${st.stuck}`)
  if (st.tokensOutOfOrder != null) parts.push(`fencing tokens out of order ${st.tokensOutOfOrder}`)
  parts.push(
    `errors ${sumValues(st.errors)}`,
    `temp left ${st.leftoverTemp}`,
    `locks left ${st.leftoverLocks}`,
    `leaked fds ${st.fdLeak}`,
    `${st.seconds.toFixed(1)} s`,
  )
  return `${parts[0]} ${parts.slice(1).join(', ')}`
}

function tortureMarkdown(results, meta) {
  const rows = results.map((st) => {
    const notes = []
    if (sumValues(st.errors)) notes.push(`errors: ${fmtCounts(st.errors)}`)
    if (st.releaseNotOurs) notes.push(`release found the lock not ours ${st.releaseNotOurs}`)
    if (sumValues(st.badRecords)) notes.push(`record at the path not the winner's: ${fmtCounts(st.badRecords)}`)
    if (st.compromised) notes.push(`onCompromised ${st.compromised}`)
    if (st.observer) {
      const o = st.observer
      const errs = sumValues(o.errors) + sumValues(o.bad)
      notes.push(
        `bystander: ${o.calls} reads, ${errs ? `**${errs} failed** (${fmtCounts({ ...o.errors, ...o.bad })})` : 'none failed'}`,
      )
    }
    if (st.forced) {
      const f = st.forced
      notes.push(
        `forced removals ${f.calls} (${f.removed} removed a file); holders whose file a forced removal took ${f.holdersForcedOut}` +
          ` (overlapping a later owner ${f.overlapsAfterForce}); holders whose file anything else removed **${f.unexplained}**`,
      )
    }
    if (st.kind === 'kill') {
      const m = st.victimsByMode || {}
      notes.push(
        `victim killed from outside (0..${st.killWindowUs} us after t0): ${fmtCounts(m.outside)}; ` +
          `by its own thread (1..${st.targetUs} us into its attempt, log-uniform): ${fmtCounts(m.targeted)}`,
      )
      if (st.killMissed) notes.push(`targeted kill missed ${st.killMissed}`)
    }
    if (st.notes) notes.push(...st.notes)
    if (st.tempSamples && st.tempSamples.length) notes.push(`e.g. ${st.tempSamples.join(', ')}`)
    return [
      LABELS[st.impl] || st.impl,
      st.n,
      st.kind,
      st.rounds,
      `**${st.doubleOwnerRounds}**` + (st.overlaps > st.doubleOwnerRounds ? ` (${st.overlaps} overlaps)` : ''),
      st.kind === 'kill' ? `stuck ${st.stuck}/${st.probes}` : st.noOwnerRounds,
      sumValues(st.errors),
      st.leftoverTemp,
      st.leftoverLocks,
      st.fdLeak,
      st.seconds.toFixed(1),
      notes.join('; '),
    ]
  })
  return [
    meta.server ? '## Torture: races for one lock on a PostgreSQL server' : '## Torture: races for one lock',
    '',
    `Command: \`${meta.command}\` (${meta.seconds.toFixed(0)} s in all), ${meta.machine.date}. Machine: ${meta.machine.summary}` +
      ` (at the end: ${loadavg()}).`,
    '',
    ...(meta.server ? serverTortureText(meta) : fileTortureText(meta)),
    '',
    table(
      [
        'implementation',
        'racers',
        'race',
        'rounds',
        'double-owner rounds',
        'no owner (lock free)',
        'errors',
        meta.server ? 'files in the lock directories' : 'temp files left',
        meta.server ? 'locks or records left on the server' : 'lock files left',
        'leaked fds',
        'seconds',
        'notes',
      ],
      rows,
    ),
  ].join('\n')
}

function serverTortureText(meta) {
  return [
    '*pg-race*: each round, N long-lived racer processes with the same PostgreSQL URL (a private server on',
    '127.0.0.1) and each a lock directory of its own, so that only the server keeps them apart, get a start',
    `instant, try once (\`acquireLock\` with \`url\`) at that instant and, when they win, hold for a random 0..${meta.holdUs} us`,
    'and release. Every round takes the same lock. "double-owner rounds": two ownership intervals (hrtime right after',
    'acquire returned .. right before release) overlap. The fencing tokens of all owners, in the order they acquired,',
    'must strictly increase. "no owner": nobody won although the lock was free. After the last round no advisory lock',
    'may still be held on the server, no holder record still standing, and no file in the lock directories.',
    '"leaked fds": descriptors the racers hold after the last round beyond what they held after the first.',
  ]
}

function fileTortureText(meta) {
  return [
    'Each round: N long-lived racer processes get a fresh lock directory and a start instant, try once at that',
    `instant and, when they win, hold for a random 0..${meta.holdUs} us. *fresh*: no lock yet. *stale*: the lock`,
    'was left by a SIGKILLed holder. *recycled* (ours only: the peers record no PID): our lock record names the',
    'PID of a live unrelated `sleep` process and nobody holds its flock. *legacy* (ours only): the same PID in the',
    'legacy PID-only format, `started` an hour before that process started. *kill*: fresh or stale, and one racer',
    'is SIGKILLed at a random moment of the race, then a survivor probes the lock (it must be free: otherwise',
    '"stuck"); the victim is replaced. Peers run with `stale: ' + meta.staleMs + "` ms (proper-lockfile's minimum);",
    'their stale locks are aged past that before the round. *force-release* and *force-stale* (ours only): no lock',
    "yet, or a SIGKILLed holder's; the racers retry every 20..200 us for (N/2 + 1) x the hold time, so owners follow",
    'each other through releases (and, from a stale lock, a takeover), and another process calls `forceRemoveLock` at a',
    'random instant of that window.',
    "*run-tree* (ours only): one `processlock run` per round whose command starts N claimants (the core's `claim`",
    'example, no Node) that take the wrapped lock at one instant: the hand-over to one of them (odd rounds: the',
    'claimants did not inherit the descriptors and ask `processlock` for them, as behind npm). *run-race* (ours',
    "only): N `processlock run` wrappers started at once, each winner's command taking the lock itself. No bystander.",
    "*exit-hook* (ours only): each round a fresh holder process takes the lock, then adds an `'exit'` hook of its own",
    `that keeps writing (synchronous writes) for a random 0..${meta.holdUs} us, and ends (in turn: \`process.exit()\`, its`,
    'natural end, an uncaught exception, an unhandled rejection, a worker thread holding the lock that ends by',
    '`process.exit()` or naturally) while N waiters wait (`acquireLock` with `waitMs`, or `acquireLockAsync`); the holder',
    "owns the lock until its hook's last write returned. No bystander.",
    '',
    '"double-owner rounds": two ownership intervals (hrtime right after acquire returned .. right before release;',
    'a victim owns until it is killed) overlap. In the force kinds a holder whose file was removed by force still',
    "believes it owns (the operator's act), so a double owner there is what the removal guard rules out: a holder",
    'whose file was removed by anything but a forced removal during its ownership (at most one holder per forced',
    'removal), or two overlapping owners where the earlier one still had its file. "no owner": nobody won although the lock was free. Left-over',
    'files are counted after all rounds of a kind; "leaked fds" sums what surviving racers hold beyond their start.',
    'A bystander process reads the lock state in a loop during each race (ours: `getLockInfo`; the peers: `checkSync`);',
    'it must neither fail nor make the racers fail.',
  ]
}

// ---- BENCHMARKS.md sections ------------------------------------------------

function section(name, md) {
  return `<!-- ${name}:begin -->\n${md.trim()}\n<!-- ${name}:end -->`
}

function readSection(file, name) {
  try {
    const text = fs.readFileSync(file, 'utf8')
    const m = new RegExp(`<!-- ${name}:begin -->[\\s\\S]*?<!-- ${name}:end -->`).exec(text)
    return m ? m[0] : null
  } catch {
    return null
  }
}

const HEADER = `# Benchmarks of @trader/processlock

Ours side by side with [proper-lockfile](https://www.npmjs.com/package/proper-lockfile) 4.1.2 and
[lockfile](https://www.npmjs.com/package/lockfile) 1.0.4, and with a floor: a minimal C program
(\`bench/floor.c\`) issuing the same syscalls as our protocol without any check. Locks on a
PostgreSQL server: ours beside a floor (\`crates/processlock-pg/examples/pg_floor.rs\`, the same
statements from a minimal Rust client without any check) and beside a \`pg_try_advisory_lock\` loop
on [node-postgres](https://www.npmjs.com/package/pg) polling every 100 ms. Every number in a
section comes from one run on one machine; the machine and its load are given with it.

- \`npm run bench\` (bench/run.js, about 4-5 minutes) rewrites the *Benchmarks* sections (lock files,
  and locks on a private PostgreSQL server it starts; \`-- --sections ...\` runs some of them and
  rewrites only their part); \`-- --quick\` is a smoke run that writes nothing unless given \`--write\`.
- \`npm run torture -- --write\` (bench/torture.js) rewrites the *Torture* sections (races for lock
  files, and races for a lock on a private PostgreSQL server it starts); see
  \`node bench/torture.js --help\` for \`--rounds\`, \`--duration\` and the race kinds.
`

// Replace (or append) one marked section, keeping the rest of the file.
function replaceSection(file, name, md) {
  let text = ''
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch {
    text = HEADER
  }
  const block = section(name, md)
  const re = new RegExp(`<!-- ${name}:begin -->[\\s\\S]*?<!-- ${name}:end -->`)
  text = re.test(text) ? text.replace(re, () => block) : `${text.trimEnd()}\n\n${block}\n`
  fs.writeFileSync(file, text)
}

/**
 * How many ownership intervals ([start, end] as bigint ns) begin before an earlier one ended:
 * each is a second owner at once with another.
 */
function countOverlaps(intervals) {
  const sorted = intervals.slice().sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0))
  let maxEnd = -1n
  let overlapped = 0
  for (const [s, e] of sorted) {
    if (s < maxEnd) overlapped++
    if (e > maxEnd) maxEnd = e
  }
  return overlapped
}

/**
 * Adds one round's owners to the counters `st` of its kind: `overlapped` second owners at once
 * (`countOverlaps(intervals)` unless the kind judges overlaps its own way), and whether anybody
 * owned the lock at all (`expectOwner`: whether the round should have had an owner).
 */
function countRound(st, intervals, overlapped = countOverlaps(intervals), expectOwner = true) {
  st.owners += intervals.length
  if (intervals.length === 0 && expectOwner) st.noOwnerRounds++
  if (overlapped) {
    st.doubleOwnerRounds++
    st.overlaps += overlapped
  }
}

/** The counters of one torture kind, as `tortureLine` and `tortureMarkdown` read them. */
function emptyTortureStats(kind) {
  return {
    kind,
    rounds: 0,
    doubleOwnerRounds: 0,
    overlaps: 0,
    noOwnerRounds: 0,
    owners: 0,
    stuck: 0,
    errors: {},
    releaseNotOurs: 0,
    badRecords: {},
    compromised: 0,
    victims: {},
    leftoverTemp: 0,
    tempSamples: [],
    leftoverLocks: 0,
    fdLeak: 0,
    seconds: 0,
    probes: 0,
    observer: null,
  }
}

module.exports = {
  countOverlaps,
  countRound,
  emptyTortureStats,
  machine,
  loadavg,
  machineTable,
  table,
  us,
  ms,
  kb,
  ratio,
  sumValues,
  fmtCounts,
  tortureLine,
  tortureMarkdown,
  section,
  readSection,
  replaceSection,
}
