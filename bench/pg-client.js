'use strict'
// A long-lived client of a lock on a PostgreSQL server, driven like bench/worker.js (through
// bench/pool.js) by bench/pg.js and bench/torture-pg.js.
//
//   node bench/pg-client.js <ours|node-postgres> '{"url":..,"dir":..,"leaseMs":..}'
//
// ours: the package with `url` (a session of its own per held lock, the lease, the record).
// node-postgres: what users script by hand with the `pg` package: one connection with its
// defaults, made at start; `pg_try_advisory_lock` and, to wait, the same again every 100 ms.
//
// Commands, one JSON object per line on stdin; replies on stdout (t = hrtime ns, the machine's
// monotonic clock, comparable between processes):
//   cycles {n, warmup, maxMs}   J {n, median_ns, p95_ns}
//   hold                        A t token | E code message
//   take {waitMs, watch}        W (waiting), then J {ok, tA, code}; a taken lock is released
//                               right after the reply, then X ok. With watch {pid, ticks}, J
//                               also says whether that process still ran right after the
//                               acquire (watchedAlive)
//   release                     R t (release called), then X ok
//   round {r, t0, holdUs}       at t0 one attempt: A r t token, then after 0..holdUs us R r t
//                               (and X r when release said the lock was not ours any more), or
//                               L r t; E r code on anything unexpected; D r at the end
//   own {r}                     (ours) takes the lock at once and holds it until `let`: A r t token
//                               (or N r: not taken), then polls isLockHeld every millisecond
//   let {r}                     lets an `own` hold go: R r t (the last check that found it held),
//                               X r when release said it was not ours any more; D r
//   queue {r, holdUs, pollUs}   (ours) acquireLockAsync without a timeout: A r t token, then
//                               holds for 0..holdUs us checking isLockHeld every pollUs us, and
//                               R r t (the last check that found it held) before release
//   A hold of `own` or `queue` that a check finds lost says L r t1 t2 (t1: the last check that
//   found it held, t2: the first that did not), lets go, and says D r. t of R and t1 of L are
//   when the holder last knew the lock as its own: its ownership ends there.
//   fds                         F n (open descriptors)
//   exit

const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')

const impl = process.argv[2]
const options = JSON.parse(process.argv[3] || '{}')
const TYPE = 'backend'
const POLL_MS = 100
// The poller's own key (the package's locks are keyed by a hash of their name).
const POLLER_KEY = '4242424242'

const now = () => process.hrtime.bigint()
const delay = (ms) => new Promise((r) => setTimeout(r, ms))
const sleeper = new Int32Array(new SharedArrayBuffer(4))
const sleepNs = (ns) => ns > 0 && Atomics.wait(sleeper, 0, 0, Number(ns) / 1e6)

function out(line) {
  fs.writeSync(1, `${line}\n`)
}

/** Whether process `pid`, started at `ticks` clock ticks after boot, runs (not a zombie). */
function running(pid, ticks) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return fields[19] === String(ticks) && fields[0] !== 'Z' && fields[0] !== 'X'
  } catch {
    return false
  }
}

function fdCount() {
  return fs.readdirSync('/proc/self/fd').length - 1 // less readdir's own
}

function ours() {
  const pl = require(path.resolve(__dirname, '..'))
  const opts = {
    url: options.url,
    dir: options.dir,
    tradeSide: 'SHORT',
    processName: 'bench',
    log: false,
    ...(options.leaseMs ? { leaseMs: options.leaseMs } : {}),
    ...(options.onLost ? { onLost: options.onLost } : {}),
  }
  return {
    isHeld: () => pl.isLockHeld(TYPE, opts),
    async wait() {
      return (await pl.acquireLockAsync(TYPE, opts)).fencingToken
    },
    async start() {},
    tryAcquire() {
      try {
        return pl.acquireLock(TYPE, opts).fencingToken
      } catch (e) {
        if (e && e.code === 'LOCK_CONFLICT') return null
        throw e
      }
    },
    async take(waitMs) {
      await pl.acquireLockAsync(TYPE, { ...opts, timeoutMs: waitMs })
    },
    release: () => pl.releaseLock(TYPE, opts) !== false,
  }
}

function nodePostgres() {
  const { Client } = require('pg')
  const client = new Client({ connectionString: options.url })
  const tryLock = async () =>
    (await client.query('SELECT pg_try_advisory_lock($1) AS ok', [POLLER_KEY])).rows[0].ok === true
  return {
    start: () => client.connect(),
    tryAcquire: async () => ((await tryLock()) ? '' : null),
    async take(waitMs) {
      const end = Date.now() + waitMs
      while (!(await tryLock())) {
        if (Date.now() >= end) throw Object.assign(new Error('timed out'), { code: 'TIMEOUT' })
        await delay(POLL_MS)
      }
    },
    release: async () => (await client.query('SELECT pg_advisory_unlock($1) AS ok', [POLLER_KEY])).rows[0].ok,
  }
}

async function cycles(lock, { n, warmup, maxMs }) {
  const took = []
  const end = Date.now() + maxMs
  for (let i = 0; i < warmup + n && Date.now() < end; i++) {
    const t = now()
    if ((await lock.tryAcquire()) == null) throw new Error('the lock is held by someone else')
    await lock.release()
    if (i >= warmup) took.push(Number(now() - t))
  }
  took.sort((x, y) => x - y)
  const at = (q) => took[Math.round((took.length - 1) * q)]
  return { n: took.length, median_ns: at(0.5), p95_ns: at(0.95) }
}

async function round(lock, { r, t0, holdUs }) {
  const start = BigInt(t0)
  sleepNs(start - now())
  while (now() < start);
  try {
    const token = await lock.tryAcquire()
    const t = now()
    if (token == null) out(`L ${r} ${t}`)
    else {
      out(`A ${r} ${t} ${token}`)
      sleepNs(Math.floor(Math.random() * holdUs * 1000))
      out(`R ${r} ${now()}`)
      if (!(await lock.release())) out(`X ${r}`)
    }
  } catch (e) {
    out(`E ${r} ${(e && e.code) || 'throw'} ${String(e && e.message).split('\n')[0]}`)
  }
  out(`D ${r}`)
}

/** The hold of `own`, until `let` or its loss: { r, lastHeld, done }. */
let owning = null

/** Releases; says E r code when that fails (a session the server ended, say). */
function releaseSaying(lock, r) {
  try {
    return lock.release()
  } catch (e) {
    out(`E ${r} ${(e && e.code) || 'throw'} ${String(e && e.message).split('\n')[0]}`)
    return true
  }
}

/** Lets go of a hold found lost: L r t1 t2, D r. */
function lostHold(lock, r, lastHeld) {
  out(`L ${r} ${lastHeld} ${now()}`)
  releaseSaying(lock, r)
  out(`D ${r}`)
}

function own(lock, { r }) {
  let token
  try {
    token = lock.tryAcquire()
  } catch (e) {
    out(`E ${r} ${(e && e.code) || 'throw'} ${String(e && e.message).split('\n')[0]}`)
    out(`D ${r}`)
    return
  }
  if (token == null) {
    out(`N ${r}`)
    out(`D ${r}`)
    return
  }
  const hold = { r, lastHeld: now(), done: false }
  owning = hold
  out(`A ${r} ${hold.lastHeld} ${token}`)
  const check = () => {
    if (hold.done) return
    if (!lock.isHeld()) {
      hold.done = true
      owning = null
      lostHold(lock, r, hold.lastHeld)
      return
    }
    hold.lastHeld = now()
    setTimeout(check, 1)
  }
  setTimeout(check, 1)
}

function letGo(lock, { r }) {
  const hold = owning
  if (!hold || hold.r !== r) return // found lost already, and said so
  hold.done = true
  owning = null
  if (!lock.isHeld()) return lostHold(lock, r, hold.lastHeld)
  out(`R ${r} ${now()}`)
  if (!releaseSaying(lock, r)) out(`X ${r}`)
  out(`D ${r}`)
}

async function queue(lock, { r, holdUs, pollUs }) {
  try {
    const token = await lock.wait()
    const a = now()
    out(`A ${r} ${a} ${token}`)
    const end = a + BigInt(Math.floor(Math.random() * holdUs * 1000))
    let lastHeld = a
    for (;;) {
      const t = now()
      if (!lock.isHeld()) {
        lostHold(lock, r, lastHeld)
        return
      }
      lastHeld = t
      if (t >= end) break
      const left = end - t
      sleepNs(left < BigInt(pollUs * 1000) ? left : BigInt(pollUs * 1000))
    }
    out(`R ${r} ${lastHeld}`)
    if (!releaseSaying(lock, r)) out(`X ${r}`)
  } catch (e) {
    out(`E ${r} ${(e && e.code) || 'throw'} ${String(e && e.message).split('\n')[0]}`)
  }
  out(`D ${r}`)
}

async function main() {
  const lock = impl === 'ours' ? ours() : nodePostgres()
  await lock.start()
  out(`READY ${fdCount()}`)
  const rl = readline.createInterface({ input: process.stdin })
  for await (const line of rl) {
    const cmd = JSON.parse(line)
    if (cmd.op === 'exit') break
    try {
      if (cmd.op === 'cycles') out(`J ${JSON.stringify(await cycles(lock, cmd))}`)
      else if (cmd.op === 'hold') {
        const token = await lock.tryAcquire()
        out(token == null ? 'E LOCK_CONFLICT the lock is held by someone else' : `A ${now()} ${token}`)
      } else if (cmd.op === 'take') {
        out('W')
        let reply
        try {
          await lock.take(cmd.waitMs)
          reply = { ok: true, tA: String(now()) }
          if (cmd.watch) reply.watchedAlive = running(cmd.watch.pid, cmd.watch.ticks)
        } catch (e) {
          reply = { ok: false, code: (e && e.code) || String(e) }
        }
        out(`J ${JSON.stringify(reply)}`)
        if (reply.ok) out(`X ${await lock.release()}`)
      } else if (cmd.op === 'release') {
        out(`R ${now()}`)
        out(`X ${await lock.release()}`)
      } else if (cmd.op === 'round') await round(lock, cmd)
      else if (cmd.op === 'own') own(lock, cmd)
      else if (cmd.op === 'let') letGo(lock, cmd)
      else if (cmd.op === 'queue') await queue(lock, cmd)
      else if (cmd.op === 'fds') out(`F ${fdCount()}`)
      else throw new Error(`unknown op ${cmd.op}`)
    } catch (e) {
      out(`E ${(e && e.code) || 'throw'} ${String(e && e.message).split('\n')[0]}`)
    }
  }
  process.exit(0)
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(2)
})
