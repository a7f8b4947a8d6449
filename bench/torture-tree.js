'use strict'
// Torture kinds for `processlock run --url` process trees (ours only, Linux), used by
// bench/torture.js. Every round runs one `processlock run backend --url ... --grace G` whose
// command puts the app (bench/tree-app.js, which adopts processlock's hold) behind a launcher
// that stays: `sh -c` in even rounds, a Node launcher that closes the descriptors (as npm does)
// in odd ones. In every third round the app ignores SIGTERM, so that it takes SIGKILL to stop it.
//
//   url-tree-loss  the lock is lost: the server ends processlock's session
//                  (pg_terminate_backend). The next holder takes the lock once processlock has
//                  exited, as a supervisor restarting the service would (a holder already
//                  waiting in the server is granted the lock the moment the session ends,
//                  before anyone can be told: only the fencing token protects that window).
//   url-tree-kill  the command's main process (the launcher) is SIGKILLed, as by the OOM
//                  killer, while the next holder waits in the server.
//
// The app owns from right after its acquire returned until it is gone: the moment it exited,
// told by a pidfd (crates/processlock-cli/examples/death_watch.rs, at real-time priority when
// run as root), never earlier than the death; or, if earlier, when this runner found it gone
// from /proc (url-tree-loss, before the next holder asks). The next holder owns from right after
// its acquire returned until its release returned, and looks, right after its acquire, whether
// the app still runs. A round counts a double owner when the two ownerships overlap, or the next
// holder found the app running.

const fs = require('node:fs')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')
const { ROOT } = require('./impls')
const { Worker } = require('./pool')
const report = require('./report')

const KINDS = ['url-tree-loss', 'url-tree-kill']
const { buildDir, EXE } = require('../bin/processlock.js')

const PROCESSLOCK = path.join(buildDir('release'), EXE)
const DEATH_WATCH = path.join(ROOT, 'target', 'release', 'examples', 'death_watch')
const APP = path.join(__dirname, 'tree-app.js')
const CLIENT = path.join(__dirname, 'pg-client.js')
const GRACE_MS = 200
// A short lease: processlock hears that the server ended its session at its next heartbeat, a
// quarter lease later at most.
const LEASE_MS = 1000
// One round may take this long before it counts as stuck.
const ROUND_MS = 30000

const now = () => process.hrtime.bigint()
const delay = (ms) => new Promise((r) => setTimeout(r, ms))

/** Builds the death watcher; why not, if these kinds cannot run. */
function prepare() {
  if (process.platform !== 'linux') return 'process trees are watched on Linux only'
  if (!fs.existsSync(PROCESSLOCK)) return `${PROCESSLOCK} is missing: run npm run build`
  try {
    execFileSync('cargo', ['build', '--release', '--quiet', '-p', 'processlock-cli', '--example', 'death_watch'], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'inherit'],
    })
  } catch (e) {
    return `cannot build the death watcher: ${e.message.split('\n')[0]}`
  }
  return null
}

/** The long-lived death watcher of the apps. */
function startWatcher() {
  // Real-time priority where it may have it (root): on a busy machine an ordinary thread can
  // wake tens of milliseconds after the death, and every such delay would count as an overlap.
  const rt = process.getuid?.() === 0 && fs.existsSync('/usr/bin/chrt')
  const p = rt
    ? spawn('/usr/bin/chrt', ['-f', '50', DEATH_WATCH], { stdio: ['pipe', 'pipe', 'inherit'] })
    : spawn(DEATH_WATCH, [], { stdio: ['pipe', 'pipe', 'inherit'] })
  const waiting = new Map()
  let partial = ''
  p.stdout.setEncoding('utf8')
  const armed = new Map()
  p.stdout.on('data', (d) => {
    const lines = (partial + d).split('\n')
    partial = lines.pop()
    for (const line of lines) {
      const [pid, t] = line.split(' ')
      if (pid === 'W') {
        armed.get(t)?.()
        armed.delete(t)
        continue
      }
      const w = waiting.get(pid)
      waiting.delete(pid)
      armed.get(pid)?.()
      armed.delete(pid)
      if (w) w(t === 'gone' ? null : BigInt(t))
    }
  })
  return {
    /** Resolves once the watcher watches, with `death`: the ns of the end, or null. */
    async watch(pid, ticks) {
      const death = new Promise((resolve) => waiting.set(String(pid), resolve))
      const watching = new Promise((resolve) => armed.set(String(pid), resolve))
      p.stdin.write(`${pid} ${ticks}\n`)
      await watching
      return { death }
    },
    stop() {
      p.stdin.end()
      p.kill()
    },
  }
}

function startTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return null
  }
}

/** The launcher that stays between processlock and the app. */
function launcher(r) {
  if (r % 2 === 0) return ['/bin/sh', '-c', '"$0" "$1"; true', process.execPath, APP]
  const spawnApp = `const c = require('node:child_process').spawn(process.execPath, [${JSON.stringify(APP)}], { stdio: ['ignore', 'inherit', 'inherit'] }); c.on('exit', () => {}); setInterval(() => {}, 1000)`
  return [process.execPath, '-e', spawnApp]
}

/** Starts `processlock run`; resolves with it once its app said it owns the lock. */
async function startTree(pg, r) {
  const env = { ...process.env, TREE_URL: pg.url, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: 'silent' }
  delete env.PROCESSLOCK_SERVER_LOCK
  delete env.PROCESSLOCK_INHERITED
  if (r % 3 === 2) env.TREE_IGNORE_TERM = '1'
  const args = [
    'run',
    'backend',
    '--url',
    pg.url,
    '--lease',
    String(LEASE_MS),
    '--grace',
    String(GRACE_MS),
    '-q',
    '--',
    ...launcher(r),
  ]
  const run = spawn(PROCESSLOCK, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  run.stdout.on('data', (d) => {
    out += d
  })
  run.stderr.on('data', (d) => {
    err += d
  })
  run.exited = new Promise((resolve) => run.on('exit', (code, signal) => resolve({ code, signal })))
  const until = Date.now() + ROUND_MS
  while (!/^[AE] /m.test(out)) {
    if (Date.now() > until) throw new Error(`no app line: ${err}`)
    await delay(2)
  }
  const line = out.split('\n').find((l) => /^[AE] /.test(l))
  if (line.startsWith('E')) throw new Error(`the app could not adopt the lock: ${line}`)
  const [, t, pid] = line.split(' ')
  return { run, app: { a: BigInt(t), pid: Number(pid) }, err: () => err }
}

/** The session of processlock (the one that holds an advisory lock). */
async function holderSession(pg) {
  const [pid] = await pg.sql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
  return pid
}

async function waitQueued(pg) {
  const until = Date.now() + ROUND_MS
  while ((await pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))[0] !== '1') {
    if (Date.now() > until) throw new Error('the next holder never queued')
    await delay(2)
  }
}

/**
 * The next holder's ownership: [acquired, released], both as seen from here or by it; and
 * whether the app (`watch`: {pid, ticks}) still ran right after it acquired.
 */
async function nextHolder(succ, waitMs, watch) {
  succ.send({ op: 'take', waitMs, watch })
  const lines = await succ.until((l) => l.startsWith('X ') || l.startsWith('E '))
  const j = lines.find((l) => l.startsWith('J '))
  const reply = j ? JSON.parse(j.slice(2)) : { ok: false, code: lines[lines.length - 1] }
  if (!reply.ok) throw new Error(`the next holder did not get the lock: ${reply.code}`)
  return { owned: [BigInt(reply.tA), now()], appRan: reply.watchedAlive === true }
}

// One process tree per round: the size of a race does not apply.
async function runKind(kind, _n, { rounds, duration, base, keep, pg }) {
  const st = { ...report.emptyTortureStats(kind), impl: 'ours', n: 1, notes: [] }
  const bump = (k) => {
    st.errors[k] = (st.errors[k] || 0) + 1
  }
  const dir = path.join(base, kind)
  fs.mkdirSync(dir, { recursive: true })
  const watcher = startWatcher()
  const succ = await new Worker('ours', { url: pg.url, dir }, [], { script: CLIENT, quiet: true }).ready
  let sigkilled = 0
  let appOutlived = 0
  // Rounds where the next holder, right after its acquire, found the app still running.
  let appRanOn = 0
  // The longest an app ran on after the next holder had the lock (ms), and what processlock
  // said in the first such round.
  let worst = 0
  let firstOverlap = null
  const started = Date.now()
  const until = duration > 0 ? started + duration * 1000 : Infinity
  try {
    for (let r = 0; r < rounds && Date.now() < until; r++) {
      let tree
      try {
        tree = await startTree(pg, r)
      } catch (e) {
        bump(String(e.message).split(':')[0])
        continue
      }
      const { run, app } = tree
      const ticks = startTicks(app.pid)
      // Watching before anything happens: the time told is then the death's, plus only the
      // watcher's wake-up.
      const death = ticks ? (await watcher.watch(app.pid, ticks)).death : null
      const watch = { pid: app.pid, ticks }
      let next
      // A second bound on the app's end: seen gone before the next holder asked for the lock.
      let seenGone = null
      if (kind === 'url-tree-loss') {
        await pg.sql(`SELECT pg_terminate_backend(${await holderSession(pg)})`)
        const ended = await run.exited
        if (ended.code !== 75) bump(`processlock exit ${ended.code ?? ended.signal}`)
        if (startTicks(app.pid) !== ticks) seenGone = now()
        next = await nextHolder(succ, 10000, watch)
      } else {
        const waiting = nextHolder(succ, ROUND_MS, watch)
        await waitQueued(pg)
        process.kill(mainOf(run.pid), 'SIGKILL')
        next = await waiting
        await run.exited
      }
      if (tree.err().includes('sent SIGKILL')) sigkilled++
      // An app nothing stopped (the old behaviour) is stopped here, after the fact, so that the
      // next round starts clean; its death is still what the watcher tells.
      if (startTicks(app.pid) === ticks) {
        appOutlived++
        try {
          process.kill(app.pid, 'SIGKILL')
        } catch {}
      }
      if (next.appRan) appRanOn++
      const told = death == null ? null : await death
      if (told == null) bump('app death not seen')
      // Both are moments the app was already gone: the earlier one is the closer.
      const gone = seenGone != null && (told == null || seenGone < told) ? seenGone : told
      if (next.appRan || (gone != null && gone > next.owned[0])) {
        worst = Math.max(worst, Number((gone ?? next.owned[1]) - next.owned[0]) / 1e6)
        if (!firstOverlap) firstOverlap = `round ${r}: ${tree.err().trim().split('\n').join(' / ')}`
      }
      const appOwned = [app.a, next.appRan ? next.owned[1] : (gone ?? app.a)]
      report.countRound(st, [appOwned, next.owned])
      st.rounds++
    }
  } finally {
    watcher.stop()
    await succ.stop()
  }
  st.seconds = (Date.now() - started) / 1000
  const [held] = await pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
  st.leftoverLocks = Number(held)
  if (!keep) fs.rmSync(dir, { recursive: true, force: true })
  st.notes.push(
    `apps still running when processlock had exited: ${appOutlived}; found running by the next holder right after its acquire: ${appRanOn}; rounds where processlock sent SIGKILL: ${sigkilled}`,
  )
  if (firstOverlap) {
    st.notes.push(
      `an app ran on up to ${worst.toFixed(1)} ms after the next holder had the lock; first: ${firstOverlap}`,
    )
  }
  return st
}

/** The command's main process: processlock's only child. */
function mainOf(runPid) {
  const children = fs.readFileSync(`/proc/${runPid}/task/${runPid}/children`, 'utf8').trim().split(/\s+/)
  return Number(children[0])
}

module.exports = { KINDS, prepare, runKind }
