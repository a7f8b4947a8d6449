#!/usr/bin/env node
'use strict'
// Torture runs: races of many processes for one lock, ours and the peers side
// by side, counting the failures that matter.
//
//   node bench/torture.js [--rounds N (1000; --quick: 50)] [--duration S] [--sizes 8,16]
//                         [--impls ours,proper-lockfile,lockfile]
//                         [--kinds fresh,stale,recycled,legacy,kill,
//                                  force-release,force-stale,run-tree,run-race,
//                                  exit-hook,pg-race,pg-terminate,pg-restart,
//                                  pg-frozen, fence-sqlite-force, fence-node-sqlite-force, fence-pg-stop,
//                                  fence-pg-terminate, fence-pg-restart]
//                         [--peer-rounds N (= rounds)] [--peer-kill-rounds N (200)]
//                         [--hold-us U (2000)] [--dir D] [--keep]
//                         [--write]   (also put the tables into BENCHMARKS.md: races on
//                                      a server in a block of their own, so that a run of
//                                      only one sort leaves the other's block as it was)
//                         [--quick]   (50 rounds unless --rounds says otherwise)
//
// Each race kind runs N rounds, or S seconds if that comes first (--duration
// alone: S seconds per race kind), per implementation and number of racers.
//
// Race kinds (every round uses a lock directory of its own):
// In the file kinds but the force kinds, every owner of ours must have a fencing token, larger
// than the previous owner's of its round ("fencing tokens out of order").
//   fresh     the lock does not exist; all racers try once at the same instant
//   stale     the lock was left by a holder that was SIGKILLed
//   recycled  (ours only) the lock record names the PID of a live, unrelated
//             `sleep` process, and nobody holds its flock: the PID was recycled
//   legacy    (ours only) the same in the legacy PID-only format (no protocol
//             key, written by an older version), with `started` an hour
//             before the `sleep` process started
//   kill      like fresh (even rounds) or stale (odd rounds), and one racer is
//             SIGKILLed: half the rounds from outside at a random instant of
//             the race (waiting, acquiring, holding, releasing), half by a
//             thread of its own 1 us..1.5x the median attempt time after it
//             starts acquire (to land inside acquire); then a survivor probes
//             the lock, which must be free, and the victim is replaced by a
//             spare process
//   force-release  (ours only) no lock yet; racers retry every 20..200 us for
//             a window of (N/2 + 1) x hold-us, so holders follow each other
//             through releases, and another process removes the lock by force
//             (forceRemoveLock) at a random instant of that window
//   force-stale    (ours only) the same, starting from a lock left by a
//             SIGKILLed holder, so the forced removal also races the takeover
//             of a dead holder's file
//   run-tree  (ours only) one `processlock run` per round whose command starts
//             N claimants that take the wrapped lock at one instant
//             (bench/torture-run.js)
//   run-race  (ours only) N `processlock run` wrappers started at once, the
//             command of each winner taking the lock itself
//   exit-hook (ours only) each round a fresh holder takes the lock, then adds
//             an 'exit' hook of its own that writes for a random 0..hold-us
//             microseconds, and ends (process.exit, natural end, uncaught
//             exception, unhandled rejection, a worker thread's end) while N
//             waiters wait for the lock (bench/torture-exit.js); the holder
//             owns it until its hook's last write
//   pg-race   (ours only) N racers with the same PostgreSQL URL and each a lock
//             directory of its own, on a private server the run starts
//             (bench/torture-pg.js); the owners' fencing tokens must strictly
//             increase in the order they acquired. Skipped, with a line saying
//             so, where PostgreSQL is not installed
//   pg-terminate, pg-restart, pg-frozen  (ours only) the same server, and what
//             it does to its clients: the holder's session ended, the server
//             restarted while one racer holds and the others wait, one waiter
//             frozen (SIGSTOP) while the lock changes hands; the holders table
//             emptied before every 10th round (bench/torture-pg.js)
//   url-tree-loss, url-tree-kill  (ours only, Linux; one size) `processlock run
//             --url` whose app sits behind a shell or a Node launcher: the
//             app's ownership (acquire .. its death, told by a pidfd) against
//             the next holder's, when the lock is lost (the server ends the
//             session) or the launcher is SIGKILLed (bench/torture-tree.js)
//   fence-sqlite-force, fence-node-sqlite-force, fence-pg-stop, fence-pg-terminate, fence-pg-restart
//             (ours only; fixed 4 processes; at most 1000 rounds, 40 for pg-stop, 20
//             for pg-restart) lost updates of a counter incremented under the lock
//             while a fault strikes a holder between its read and its write, with
//             fenced writes off and on (bench/torture-fence.js); written to a block
//             of its own, torture-fence
// Racers are long-lived processes (bench/worker.js) told per round, through
// stdin, the lock directory and a start instant t0 (CLOCK_MONOTONIC); they
// sleep until t0, try once, and if they win hold (asleep) for a random
// 0..hold-us microseconds. Each winner reports its ownership interval:
// process.hrtime.bigint() right after acquire returns and right before release.
// A victim killed while holding owns until the instant it was killed.
//
// Counted per kind: double-owner rounds (two ownership intervals overlap;
// in the force kinds, where a holder whose file was removed by force still
// believes it owns, see forceVerdict),
// rounds nobody won although the lock was free, locks stuck after a kill,
// unexpected errors, records at the lock path that were not the winner's
// (ours), temp files and lock files left in the directories, descriptors
// leaked by the surviving racers; and what a bystander process reading the
// lock state (ours: getLockInfo; peers: checkSync) in a loop during each race
// saw: errors or malformed answers (--no-observer to leave it out). Exit status 1 if ours shows any double
// owner; 3 if ours shows any other failure of those (left-over temp files are
// reported, not failed); 2 if the harness itself failed.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { eachOption } = require('./args')
const { Worker } = require('./pool')
const { oursUnavailable } = require('./impls')
const report = require('./report')
const runKinds = require('./torture-run')
const pgKinds = require('./torture-pg')
const treeKinds = require('./torture-tree')
const exitKinds = require('./torture-exit')
const fenceKinds = require('./torture-fence')

// Kinds that run without the long-lived racers of a Combo.
const SEPARATE = [...runKinds.KINDS, ...exitKinds.KINDS, ...pgKinds.KINDS, ...treeKinds.KINDS, ...fenceKinds.KINDS]

const LOCK_NAME = 'backend.short.lock'
const GUARD_NAME = '.processlock.guard'
/** Owners (acquired at `a`, with `token`) whose fencing token is missing or not above the previous owner's. */
function tokensOutOfOrder(owned) {
  const sorted = [...owned].sort((x, y) => (x.a < y.a ? -1 : x.a > y.a ? 1 : 0))
  let bad = 0
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i].token == null || (i > 0 && sorted[i - 1].token != null && !(sorted[i].token > sorted[i - 1].token)))
      bad++
  }
  return bad
}

const isForceKind = (kind) => kind === 'force-release' || kind === 'force-stale'

// The force kinds: one forced removal per round (force = { t0, t1, removed }
// or null), and the ownerships of the round (owned: { s: acquire started,
// a: acquired, r: release started, x: release found its file gone, v: what
// the record check right after acquire found wrong }). A forced removal
// makes its victim a holder that still believes it owns: that is the
// operator's act, not a double owner. What the lock guarantees, and what is
// counted as a double owner here, is that nothing else ever removes a
// holder's file:
// - an owner whose release found its file gone must have had a forced
//   removal that removed a file run during its ownership (from the start of
//   its acquire to the start of its release), and one forced removal
//   explains at most one such owner;
// - two ownerships may overlap only when one of them had its file removed
//   (an owner's file can be removed by force even before its acquire
//   returns, so either may be the earlier one); two owners that both found
//   their own file at release would have had two files at one path.
// Returns the number of violations in the round.
function forceVerdict(owned, force, st) {
  const fo = st.forced
  if (force) {
    fo.calls++
    if (force.removed) fo.removed++
  }
  let bad = 0
  let explained = 0
  for (const o of owned) {
    if (!o.x) {
      // Its record must have been its own right after it acquired.
      for (const v of o.v) bump(st.badRecords, v)
      continue
    }
    // From the start of its acquire to the end of its release (which waits
    // for a forced removal that holds the removal guard).
    const byForce = force && force.removed && force.t1 > o.s && force.t0 < o.xEnd
    if (byForce && explained === 0) {
      explained++
      fo.holdersForcedOut++
    } else {
      fo.unexplained++
      bad++
    }
  }
  const sorted = owned.slice().sort((p, q) => (p.a < q.a ? -1 : p.a > q.a ? 1 : 0))
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i + 1; j < sorted.length; j++) {
      if (sorted[j].a >= sorted[i].r) continue
      if (sorted[i].x || sorted[j].x) fo.overlapsAfterForce++
      else bad++
    }
  }
  if (bad && process.env.TORTURE_DEBUG) {
    const rel = (t) => (t == null ? '-' : String(t - (force ? force.t0 : 0n)))
    console.error(
      `violation: force ${force ? `${rel(force.t0)}..${rel(force.t1)} removed=${force.removed}` : 'none'}; owners ` +
        sorted.map((o) => `[s ${rel(o.s)} a ${rel(o.a)} r ${rel(o.r)}${o.x ? ` X ${rel(o.xEnd)}` : ''}]`).join(' '),
    )
  }
  return bad
}

function bump(obj, k) {
  obj[k] = (obj[k] || 0) + 1
}
// Peers decide staleness by age: proper-lockfile by mtime (minimum 2000 ms),
// lockfile by ctime. Both get the same 2 s, far above any hold here.
const PEER_STALE_MS = 2000
const KILLER_RACERS = 2 // racers with a killer thread, per race
const SPARES = 2 // ready replacements of each sort
const OBSERVE_US = 3000 // how long the bystander reads the lock state per round

function parseArgs(argv) {
  const a = {
    rounds: null,
    duration: 0,
    sizes: [8, 16],
    impls: ['ours', 'proper-lockfile', 'lockfile'],
    kinds: [
      'fresh',
      'stale',
      'recycled',
      'legacy',
      'kill',
      'force-release',
      'force-stale',
      ...runKinds.KINDS,
      ...exitKinds.KINDS,
      ...pgKinds.KINDS,
      ...treeKinds.KINDS,
      ...fenceKinds.KINDS,
    ],
    peerRounds: null,
    peerKillRounds: null,
    holdUs: 2000,
    dir: null,
    keep: false,
    write: false,
    quick: false,
    observer: true,
  }
  eachOption(argv, __filename, (k, v) => {
    switch (k) {
      case '--rounds':
        a.rounds = Number(v())
        break
      case '--duration':
        a.duration = Number(v())
        break
      case '--sizes':
        a.sizes = v().split(',').map(Number)
        break
      case '--impls':
        a.impls = v().split(',')
        break
      case '--kinds':
        a.kinds = v().split(',')
        break
      case '--peer-rounds':
        a.peerRounds = Number(v())
        break
      case '--peer-kill-rounds':
        a.peerKillRounds = Number(v())
        break
      case '--hold-us':
        a.holdUs = Number(v())
        break
      case '--dir':
        a.dir = path.resolve(v())
        break
      case '--keep':
        a.keep = true
        break
      case '--no-observer':
        a.observer = false
        break
      case '--write':
        a.write = true
        break
      case '--quick':
        a.quick = true
        break
      default:
        return false
    }
    return true
  })
  // --duration alone: run each race kind for that many seconds.
  if (a.rounds == null) a.rounds = a.duration > 0 ? Infinity : a.quick ? 50 : 1000
  if (a.peerRounds == null) a.peerRounds = a.rounds
  // Every kill round costs a new Node process (~0.1-0.2 s of CPU here), and the
  // peers' answer to a killed holder is always the same (stuck until stale).
  if (a.peerKillRounds == null) a.peerKillRounds = Math.min(a.peerRounds, 200)
  return a
}

const now = () => process.hrtime.bigint()
const sleeper = new Int32Array(new SharedArrayBuffer(4))
function sleepUntil(t) {
  const d = t - now()
  if (d > 0n) Atomics.wait(sleeper, 0, 0, Number(d) / 1e6)
}
const delay = (ms) => new Promise((r) => setTimeout(r, ms))
const randInt = (n) => Math.floor(Math.random() * n)

const live = new Set() // every process we started, to clean up on the way out
function track(w) {
  live.add(w)
  w.exited.then(() => live.delete(w))
  return w
}
function killAll() {
  for (const w of live) w.kill()
}
process.on('SIGINT', () => {
  killAll()
  process.exit(130)
})
process.on('SIGTERM', () => {
  killAll()
  process.exit(143)
})
process.on('exit', killAll)

/** When process `pid` started, in clock ticks since boot (Linux): what its start token ends with. */
function startTicks(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
}
class Combo {
  constructor(args, impl, n, base) {
    this.args = args
    this.impl = impl
    this.n = n
    this.base = base
    this.spawned = 0
    this.racers = []
    this.spares = { plain: [], killer: [] } // ready replacements for killed racers
    this.killWindowNs = null
    this.spreads = [] // t0 .. last racer done, per round
    this.attemptNs = null
    this.attempts = [] // one acquire attempt, S .. A or L
  }

  // killer: give it a killer thread (for the targeted kills); only a few
  // racers have one, since the thread makes each respawn ~30% dearer.
  spawnWorker(killer = false) {
    const opts = { warmDir: path.join(this.base, 'warm', String(this.spawned++)) }
    if (killer) opts.killer = true
    if (this.impl !== 'ours') opts.stale = PEER_STALE_MS
    const w = track(new Worker(this.impl, opts))
    w.hasKiller = killer
    return w
  }

  async start() {
    const killers = this.args.kinds.includes('kill') ? KILLER_RACERS : 0
    this.racers = await Promise.all(Array.from({ length: this.n }, (_, i) => this.spawnWorker(i < killers).ready))
    this.observer = this.args.observer ? await this.spawnWorker(false).ready : null
    this.forcer = this.args.kinds.some(isForceKind) && this.impl === 'ours' ? await this.spawnWorker(false).ready : null
  }

  async stop() {
    const all = [
      ...this.racers,
      ...this.spares.plain,
      ...this.spares.killer,
      ...(this.observer ? [this.observer] : []),
      ...(this.forcer ? [this.forcer] : []),
    ]
    await Promise.all(all.map(async (w) => (await w).stop()))
  }

  // Take locks for every dir in one process, then SIGKILL it: every dir is
  // left with a lock whose holder died (flock dropped, file left behind).
  async leaveStaleLocks(dirs) {
    const chunk = 2000
    let done = 0
    while (done < dirs.length) {
      const part = dirs.slice(done, done + chunk)
      const h = await this.spawnWorker().ready
      h.send({ op: 'hold', dirs: part })
      const lines = await h.until((l) => l.startsWith('H ') || l.startsWith('J '))
      const last = lines[lines.length - 1] || ''
      const [, ok] = last.split(' ')
      if (!last.startsWith('H ') || Number(ok) !== part.length) {
        throw new Error(`stale-lock holder took ${ok}/${part.length} locks (${last})`)
      }
      h.kill()
      await h.exited
      done += part.length
    }
    if (this.impl === 'proper-lockfile') {
      // It sets the mtime of a new lock up to 1 s into the future.
      await delay(PEER_STALE_MS + 1200)
    } else if (this.impl === 'lockfile') {
      await delay(PEER_STALE_MS + 200)
    }
  }

  async runKind(kind) {
    const a = this.args
    const impl = this.impl
    const R = impl === 'ours' ? a.rounds : kind === 'kill' ? a.peerKillRounds : a.peerRounds
    const kdir = path.join(this.base, kind)
    const st = {
      ...report.emptyTortureStats(kind),
      fdLeakMax: 0,
      forced: isForceKind(kind)
        ? { calls: 0, removed: 0, holdersForcedOut: 0, unexplained: 0, overlapsAfterForce: 0 }
        : null,
      observer: this.observer ? { calls: 0, held: 0, free: 0, errors: {}, bad: {} } : null,
    }

    // Directories, and the lock state each round starts from, made a batch
    // at a time (a --duration run does not know how many rounds it will get).
    const dirs = []
    const batch = Number.isFinite(R) ? Math.min(R, 2000) : 500
    let sleepProc = null
    if (kind === 'legacy' || kind === 'recycled') sleepProc = spawn('sleep', ['100000'], { stdio: 'ignore' })
    const prepare = async () => {
      const from = dirs.length
      const to = Number.isFinite(R) ? Math.min(R, from + batch) : from + batch
      const fresh = []
      for (let r = from; r < to; r++) {
        const d = path.join(kdir, String(r))
        fs.mkdirSync(d, { recursive: true })
        dirs.push(d)
        fresh.push(d)
      }
      if (kind === 'stale' || kind === 'recycled' || kind === 'force-stale') {
        await this.leaveStaleLocks(fresh)
      } else if (kind === 'kill') {
        await this.leaveStaleLocks(fresh.filter((_, i) => (from + i) % 2 === 1))
      }
      if (kind === 'legacy') {
        const rec = {
          pid: sleepProc.pid,
          started: new Date(Date.now() - 3600e3).toISOString(),
          tradeSide: 'SHORT',
          processName: 'trader-short-backend',
        }
        for (const d of fresh) fs.writeFileSync(path.join(d, LOCK_NAME), JSON.stringify(rec, null, 2) + '\n')
        st.recordSample = rec
      }
      if (kind === 'recycled') {
        // The records keep their dead writer's start token. A `sleep` started in the same clock
        // tick as that writer would carry the same token, and so rightly count as the holder
        // itself, not as a recycled PID: start another until the two differ.
        const token = JSON.parse(fs.readFileSync(path.join(fresh[0], LOCK_NAME), 'utf8')).startToken
        const sameTick = () => process.platform === 'linux' && token.endsWith(`:${startTicks(sleepProc.pid)}`)
        for (let i = 0; i < 50 && sameTick(); i++) {
          sleepProc.kill('SIGKILL')
          await new Promise((r) => setTimeout(r, 20))
          sleepProc = spawn('sleep', ['100000'], { stdio: 'ignore' })
        }
        for (const d of fresh) {
          const p = path.join(d, LOCK_NAME)
          const rec = JSON.parse(fs.readFileSync(p, 'utf8'))
          rec.pid = sleepProc.pid // a live process, not the (dead) holder
          fs.writeFileSync(p, JSON.stringify(rec, null, 2) + '\n') // same inode, no flock holder
        }
        st.recordSample = JSON.parse(fs.readFileSync(path.join(fresh[0], LOCK_NAME), 'utf8'))
      }
    }
    await prepare()

    if (kind === 'kill') {
      // Spawning is the cost of this kind: keep several on the way at once.
      for (let i = 0; i < SPARES; i++) {
        this.spares.plain.push(this.spawnWorker(false).ready)
        this.spares.killer.push(this.spawnWorker(true).ready)
      }
      if (this.killWindowNs == null) {
        const s = this.spreads.slice().sort((x, y) => x - y)
        this.killWindowNs = s.length ? Math.max(200000, s[Math.floor(s.length / 2)]) : 300000 * this.n
      }
      if (this.attemptNs == null) {
        const s = this.attempts.slice().sort((x, y) => x - y)
        this.attemptNs = s.length ? Math.max(20000, s[Math.floor(s.length / 2)]) : 200000
      }
      st.killWindowUs = Math.round(this.killWindowNs / 1000)
      st.targetUs = Math.round((1.5 * this.attemptNs) / 1000)
      st.victimsByMode = { outside: {}, targeted: {} }
    }

    const leadNs = BigInt(1000000 + 100000 * this.n)
    const started = Date.now()
    let prepMs = 0 // batches made after the start do not count as racing time
    const deadline = () => (a.duration > 0 ? started + prepMs + a.duration * 1000 : Infinity)
    const verify = impl === 'ours'
    let r = 0
    for (; r < R && Date.now() < deadline(); r++) {
      if (r >= dirs.length) {
        const p0 = Date.now()
        await prepare()
        prepMs += Date.now() - p0
      }
      const t0 = now() + leadNs
      let victim = -1
      let targeted = false
      // Kill rounds alternate: fresh/stale lock (r % 2), killed from outside at
      // a random instant of the race, or by its own killer thread a random
      // 1 us..1.5x (median attempt time) after it starts its attempt (r % 4 >= 2).
      if (kind === 'kill') {
        const armed = this.racers.map((w, i) => (w.hasKiller ? i : -1)).filter((i) => i >= 0)
        targeted = r % 4 >= 2 && armed.length > 0
        victim = targeted ? armed[randInt(armed.length)] : randInt(this.n)
      }
      const forceWindowNs = BigInt(Math.round((this.n / 2 + 1) * a.holdUs * 1000))
      let forced = null
      if (st.forced) {
        this.forcer.send({
          op: 'force',
          r,
          dir: dirs[r],
          t0: String(t0),
          atNs: String(BigInt(randInt(Number(forceWindowNs)))),
        })
        forced = this.forcer.until((l) => l.startsWith(`D ${r} `))
      }
      for (const [i, w] of this.racers.entries()) {
        const cmd = { op: 'round', r, dir: dirs[r], t0: String(t0), holdMaxUs: a.holdUs, verify }
        if (st.forced) cmd.retryUntil = String(t0 + forceWindowNs)
        // Log-uniform 1 us .. 1.5x the median attempt: an attempt that is not
        // preempted takes tens of microseconds, a preempted one much longer.
        if (targeted && i === victim)
          cmd.selfKillNs = Math.floor(1000 * ((1.5 * this.attemptNs) / 1000) ** Math.random())
        w.send(cmd)
      }
      const waits = this.racers.map((w, i) => (i === victim ? null : w.until((l) => l.startsWith(`D ${r} `))))
      // The bystander reads the lock state all through the race.
      let observed = null
      if (this.observer) {
        this.observer.send({ op: 'observe', dir: dirs[r], t0: String(t0), windowUs: OBSERVE_US })
        observed = this.observer.json()
      }
      let tKill = null
      if (victim >= 0 && !targeted) {
        sleepUntil(t0 + BigInt(Math.floor(Math.random() * this.killWindowNs)))
        tKill = now()
        this.racers[victim].kill()
      }
      const outs = await Promise.all(waits)
      if (observed) {
        const o = await observed
        const so = st.observer
        so.calls += o.calls
        so.held += o.held
        so.free += o.free
        for (const [k, v] of Object.entries(o.errors)) so.errors[k] = (so.errors[k] || 0) + v
        for (const [k, v] of Object.entries(o.bad)) so.bad[k] = (so.bad[k] || 0) + v
      }
      if (victim >= 0) {
        const v = this.racers[victim]
        const guard = setTimeout(() => {
          st.killMissed = (st.killMissed || 0) + 1
          v.kill()
        }, 3000)
        outs[victim] = await v.drain()
        clearTimeout(guard)
      }

      // Ownership intervals of this round (with, for the force kinds, the
      // instant the owner started its acquire, and what its release said).
      const intervals = []
      const owned = []
      let spread = 0n
      outs.forEach((lines, i) => {
        let open = null
        let last = null
        let tS = null
        let held = null // the ownership in progress, then the last one
        for (const line of lines) {
          const [tag, , t, d, token] = line.split(' ')
          if (tag === 'S' && t) tS = BigInt(t)
          if (tag === 'A' || tag === 'L') {
            if (tag === 'A') {
              open = BigInt(t)
              const tok = token && token !== '-' ? BigInt(token) : null
              held = { s: tS ?? open, a: open, r: null, x: false, v: [], token: tok }
            }
            if (kind !== 'kill' && d) this.attempts.push(Number(d))
          } else if (tag === 'R') {
            intervals.push([open ?? BigInt(t), BigInt(t)])
            if (held) {
              held.r = BigInt(t)
              owned.push(held)
            }
            open = null
          } else if (tag === 'K') tKill = BigInt(t)
          else if (tag === 'E') bump(st.errors, t)
          else if (tag === 'X') {
            if (st.forced && held) {
              held.x = true
              held.xEnd = t ? BigInt(t) : held.r
            } else st.releaseNotOurs++
          } else if (tag === 'V' && st.forced && held) held.v.push(t ? t.split(':')[0] : '?')
          else if (tag === 'V') bump(st.badRecords, t ? t.split(':')[0] : '?')
          else if (tag === 'C') st.compromised++
          else if (tag === 'D' && t) {
            const d = BigInt(t) - t0
            if (d > spread) spread = d
          } else if (tag === 'J') bump(st.errors, 'worker:' + line.slice(2, 60))
          if (['S', 'A', 'R', 'L', 'E', 'X', 'V', 'D'].includes(tag)) last = tag
        }
        if (i === victim) {
          const state = {
            null: 'before acquire',
            S: 'mid-acquire',
            A: 'holding',
            V: 'holding',
            R: 'mid-release',
            L: 'after losing',
            E: 'after an error',
            X: 'after release',
            D: 'after its turn',
          }[String(last)]
          bump(st.victims, state)
          bump(st.victimsByMode[targeted ? 'targeted' : 'outside'], state)
          // Owned until killed (the kill may land just after A was stamped).
          if (open != null) intervals.push([open, tKill != null && tKill > open ? tKill : open])
        } else if (open != null) {
          intervals.push([open, now()]) // never released: treat as still owning
          bump(st.errors, 'no-release')
        }
      })
      if (kind !== 'kill' && !st.forced) this.spreads.push(Number(spread))
      let overlapped
      if (st.forced) {
        const lines = await forced
        for (const l of lines) if (l.startsWith('E ')) bump(st.errors, l.split(' ')[2])
        const y = lines.find((l) => l.startsWith('Y '))
        const f = y ? y.split(' ') : null
        const force = f ? { t0: BigInt(f[2]), t1: BigInt(f[3]), removed: f[4] === '1' } : null
        overlapped = forceVerdict(owned, force, st)
      } else {
        overlapped = report.countOverlaps(intervals)
        // One owner at a time: the fencing tokens must grow in the order they acquired. (Not in
        // the force kinds, where an owner whose file was removed during its acquire mints none
        // or is stamped after its successor: that order is the protocol's tests' to check.)
        if (this.impl === 'ours') st.tokensOutOfOrder = (st.tokensOutOfOrder || 0) + tokensOutOfOrder(owned)
      }
      // In the kill kind the probe that follows judges a round without an owner (stuck).
      report.countRound(st, intervals, overlapped, kind !== 'kill')

      if (victim >= 0) {
        // Everybody alive is done and the victim is dead: the lock must be free.
        const survivors = this.racers.filter((_, i) => i !== victim)
        const p = survivors[randInt(survivors.length)]
        p.send({ op: 'probe', r, dir: dirs[r] })
        const lines = await p.until((l) => l.startsWith(`D ${r} `))
        st.probes++
        if (!lines.some((l) => l.startsWith('A '))) st.stuck++
        for (const l of lines) if (l.startsWith('E ')) bump(st.errors, 'probe:' + l.split(' ')[2])
        // Replace it with a spare of the same sort, and order another.
        const sort = this.racers[victim].hasKiller ? 'killer' : 'plain'
        this.racers[victim] = await this.spares[sort].shift()
        this.spares[sort].push(this.spawnWorker(sort === 'killer').ready)
      }
      st.rounds++
    }
    st.seconds = (Date.now() - started - prepMs) / 1000
    if (sleepProc) sleepProc.kill('SIGKILL')

    // What the rounds left behind.
    for (let i = 0; i < r; i++) {
      for (const name of fs.readdirSync(dirs[i])) {
        if (name === LOCK_NAME) st.leftoverLocks++
        else if (name === GUARD_NAME || /^\..*\.lock\.fencing$/.test(name))
          continue // ours: the directory's removal guard and the lock's generation file, kept on purpose
        else {
          st.leftoverTemp++
          if (st.tempSamples.length < 3) st.tempSamples.push(name)
        }
      }
    }
    if (!a.keep) fs.rmSync(kdir, { recursive: true, force: true })

    // Descriptors the survivors hold now against what they held when ready.
    const fds = await Promise.all(
      this.racers.map(async (w) => {
        w.send({ op: 'fds' })
        const lines = await w.until((l) => l.startsWith('F '))
        return Number(lines[lines.length - 1].split(' ')[1]) - w.baseFds
      }),
    )
    for (const d of fds) {
      if (d > 0) st.fdLeak += d
      if (d > st.fdLeakMax) st.fdLeakMax = d
    }
    return st
  }
}

function failures(st) {
  const o = st.observer || {}
  return (
    st.noOwnerRounds +
    st.stuck +
    st.releaseNotOurs +
    (st.tokensOutOfOrder || 0) +
    st.leftoverLocks * (pgKinds.KINDS.includes(st.kind) || treeKinds.KINDS.includes(st.kind) ? 1 : 0) +
    Object.values(o.errors || {}).reduce((x, y) => x + y, 0) +
    Object.values(o.bad || {}).reduce((x, y) => x + y, 0) +
    Object.values(st.badRecords).reduce((x, y) => x + y, 0) +
    Object.values(st.errors).reduce((x, y) => x + y, 0) +
    st.fdLeak
  )
}

async function main() {
  const a = parseArgs(process.argv.slice(2))
  const why = a.impls.includes('ours') ? oursUnavailable() : null
  if (why) {
    console.error(`torture: ${why}\nBuild the addon first (npm run build), or pass --impls proper-lockfile,lockfile.`)
    process.exit(2)
  }
  const root = a.dir || fs.mkdtempSync(path.join(os.tmpdir(), 'processlock-torture-'))
  fs.mkdirSync(root, { recursive: true })
  const machine = report.machine()
  console.log(
    `torture: rounds ${a.rounds === Infinity ? '(until --duration)' : a.rounds} per race kind` +
      `${a.peerRounds !== a.rounds ? ` (peers ${a.peerRounds})` : ''}, kill rounds for peers ${a.peerKillRounds}` +
      `${a.duration ? `, at most ${a.duration} s per race kind` : ''}; racers ${a.sizes.join(' and ')}; ` +
      `hold 0..${a.holdUs} us; dir ${root}`,
  )
  console.log(`machine: ${machine.summary}`)

  const results = []
  const t0 = Date.now()
  const wrapped = a.impls.includes('ours') ? a.kinds.filter((k) => runKinds.KINDS.includes(k)) : []
  const whyNotWrapped = wrapped.length ? runKinds.prepare() : null
  if (whyNotWrapped) {
    console.error(`torture: ${whyNotWrapped}`)
    process.exit(2)
  }
  for (const impl of a.impls) {
    for (const n of a.sizes) {
      if (!a.kinds.some((k) => !SEPARATE.includes(k))) break
      const combo = new Combo(a, impl, n, path.join(root, `${impl}-${n}`))
      await combo.start()
      for (const kind of a.kinds) {
        if ((kind === 'recycled' || kind === 'legacy') && impl !== 'ours') continue // peers record no PID
        if (isForceKind(kind) && impl !== 'ours') continue // about our removal guard
        if (SEPARATE.includes(kind)) continue // below: no long-lived racers
        const st = await combo.runKind(kind)
        st.impl = impl
        st.n = n
        results.push(st)
        console.log(report.tortureLine(st))
      }
      await combo.stop()
      if (!a.keep) fs.rmSync(combo.base, { recursive: true, force: true })
    }
  }
  for (const n of a.sizes) {
    for (const kind of wrapped) {
      const st = await runKinds.runKind(kind, n, {
        rounds: a.rounds,
        duration: a.duration,
        holdUs: a.holdUs,
        base: root,
        keep: a.keep,
      })
      results.push(st)
      console.log(report.tortureLine(st))
    }
  }
  const ending = a.impls.includes('ours') ? a.kinds.filter((k) => exitKinds.KINDS.includes(k)) : []
  for (const n of a.sizes) {
    for (const kind of ending) {
      const st = await exitKinds.runKind(kind, n, {
        rounds: a.rounds,
        duration: a.duration,
        holdUs: a.holdUs,
        base: root,
        keep: a.keep,
      })
      results.push(st)
      console.log(report.tortureLine(st))
    }
  }
  const onServer = a.impls.includes('ours') ? a.kinds.filter((k) => pgKinds.KINDS.includes(k)) : []
  const trees = a.impls.includes('ours') ? a.kinds.filter((k) => treeKinds.KINDS.includes(k)) : []
  const whyNoTrees = trees.length ? treeKinds.prepare() : null
  if (whyNoTrees) console.log(`torture: ${trees.join(', ')}: skipped (${whyNoTrees})`)
  const fencing = a.impls.includes('ours') ? a.kinds.filter((k) => fenceKinds.KINDS.includes(k)) : []
  const fencingOnPg = fencing.filter((k) => !fenceKinds.LOCAL.includes(k))
  const fenceResults = []
  const runFence = async (kind, pg) => {
    for (const fence of [false, true]) {
      const st = await fenceKinds.runKind(kind, { rounds: a.rounds, fence, base: root, pg })
      fenceResults.push(st)
      console.log(fenceKinds.line(st))
    }
  }
  for (const kind of fencing.filter((k) => fenceKinds.LOCAL.includes(k))) {
    const why = fenceKinds.whyNot(kind)
    if (why) console.log(`torture: ${kind}: skipped (${why})`)
    else await runFence(kind, null)
  }
  const pg = onServer.length || fencingOnPg.length || (trees.length && !whyNoTrees) ? await pgKinds.startServer() : null
  if (pg && pg.why) console.log(`torture: ${[...onServer, ...trees, ...fencingOnPg].join(', ')}: skipped (${pg.why})`)
  else if (pg) {
    try {
      for (const kind of whyNoTrees ? [] : trees) {
        const st = await treeKinds.runKind(kind, 1, {
          rounds: a.rounds,
          duration: a.duration,
          base: root,
          keep: a.keep,
          pg,
        })
        results.push(st)
        console.log(report.tortureLine(st))
      }
      for (const n of a.sizes) {
        for (const kind of onServer) {
          const st = await pgKinds.runKind(kind, n, {
            rounds: a.rounds,
            duration: a.duration,
            holdUs: a.holdUs,
            base: root,
            keep: a.keep,
            pg,
          })
          results.push(st)
          console.log(report.tortureLine(st))
        }
      }
      for (const kind of fencingOnPg) await runFence(kind, pg)
    } finally {
      await pg.close()
    }
  }
  if (!a.keep && !a.dir) fs.rmSync(root, { recursive: true, force: true })
  const seconds = (Date.now() - t0) / 1000

  // Races on lock files and on a server are two blocks of BENCHMARKS.md: a run of one kind's
  // races leaves the other's block as it was.
  const meta = {
    command: `npm run torture -- ${process.argv.slice(2).join(' ')}`.trim(),
    machine,
    seconds,
    staleMs: PEER_STALE_MS,
    holdUs: a.holdUs,
  }
  const onPg = (st) => pgKinds.KINDS.includes(st.kind) || treeKinds.KINDS.includes(st.kind)
  const blocks = [
    ['torture', results.filter((st) => !onPg(st)), meta],
    ['torture-pg', results.filter(onPg), { ...meta, server: true }],
  ].filter(([, rs]) => rs.length)
  if (fenceResults.length) {
    const md = fenceKinds.markdown(fenceResults, meta)
    console.log('\n' + md)
    if (a.write) {
      report.replaceSection(path.join(__dirname, '..', 'BENCHMARKS.md'), 'torture-fence', md)
      console.log('torture: results written to BENCHMARKS.md (torture-fence)')
    }
  }
  for (const [name, rs, m] of blocks) {
    const md = report.tortureMarkdown(rs, m)
    console.log('\n' + md)
    if (a.write) {
      report.replaceSection(path.join(__dirname, '..', 'BENCHMARKS.md'), name, md)
      console.log(`torture: results written to BENCHMARKS.md (${name})`)
    }
  }

  const ours = results.filter((s) => s.impl === 'ours')
  const double = ours.reduce((x, s) => x + s.doubleOwnerRounds, 0)
  const other = ours.reduce((x, s) => x + failures(s), 0)
  const fenceFailures = fenceKinds.failures(fenceResults)
  if (fenceFailures) {
    console.error(
      `torture: FAIL: ${fenceFailures} lost or twice-written increment(s) with fenced writes on, or workers lost`,
    )
    process.exit(1)
  }
  if (double) {
    console.error(`torture: FAIL: ${double} double-owner round(s) for @trader/processlock`)
    process.exit(1)
  }
  if (other) {
    console.error(`torture: FAIL: ${other} other failure(s) for @trader/processlock (see the table)`)
    process.exit(3)
  }
  console.log(`torture: ${ours.length ? 'ours: no double owner, no other failure; ' : ''}${seconds.toFixed(0)} s`)
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e)
  killAll()
  process.exit(2)
})
