'use strict'
// A long-lived lock client driven by bench/run.js and bench/torture.js.
//
//   node bench/worker.js <impl> '<json options>'
//
// Commands arrive on stdin, one JSON object per line, and run one after the
// other. Replies go to stdout with synchronous writes (so a line written before
// a SIGKILL is in the pipe): short text lines for the race protocol, "J <json>"
// for everything else.
//
// Race protocol (op "round" / "probe"), r = round number, t = hrtime ns:
//   S r t      about to call acquire (t: hrtime ns)
//   A r t d    acquired; t taken right after acquire returned, d = ns in acquire
//   R r t      about to release; t taken right before release
//   L r t d    lost: the lock is held by someone else (d as for A)
//   K r t      the killer thread SIGKILLs this process now
//   X r t      release said the lock was no longer ours; t right after it returned
//   V r why    (ours) the record at the lock path is not ours or not complete
//   E r code   acquire or release threw something unexpected
//   D r t      done with round r
//   Y r t0 t1 removed   (op "force") a forced removal ran from t0 to t1;
//              removed = 1 when it removed a file
// Others: "READY fds", "F fds", "H acquired failed", "C message" (a peer
// reported its lock compromised).

const fs = require('node:fs')
const { load } = require('./impls')

const implName = process.argv[2]
const options = JSON.parse(process.argv[3] || '{}')

const now = () => process.hrtime.bigint()
const sleeper = new Int32Array(new SharedArrayBuffer(4))

function out(line) {
  const buf = Buffer.from(line + '\n')
  let off = 0
  while (off < buf.length) {
    try {
      off += fs.writeSync(1, buf, off)
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e
    }
  }
}

function sleepNs(ns) {
  if (ns > 0) Atomics.wait(sleeper, 0, 0, Number(ns) / 1e6)
}

function spinNs(ns) {
  const end = now() + BigInt(Math.max(0, Math.round(ns)))
  while (now() < end);
}

// Sleep (not spin: there are more racers than cores) until t0; the kernel
// wakes all racers together and they attempt as soon as they get a CPU.
function waitUntil(t0) {
  const ahead = t0 - now()
  if (ahead > 0n) sleepNs(ahead)
  while (now() < t0);
}

// Open descriptors, minus readdir's own and the removal guards of lock
// directories that ours keeps open on purpose (at most a few, reused).
function fdCount() {
  let n = 0
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target = ''
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`)
    } catch {
      continue
    } // readdir's own, closed by now
    if (!target.replace(/ \(deleted\)$/, '').endsWith('/.processlock.guard')) n++
  }
  return n
}

function errCode(e) {
  const c = (e && (e.code || e.name)) || 'Error'
  return String(c).replace(/\s+/g, '_')
}

const impl = load(implName, {
  stale: options.stale,
  pollMs: options.pollMs,
  onCompromised: (err) => out(`C ${errCode(err)}`),
})

const spec = (dir) => ({ dir, type: 'backend', side: 'SHORT', processName: `racer-${process.pid}` })

function verifyRecord(r, s) {
  let text
  try {
    text = fs.readFileSync(impl.lockPath(s), 'utf8')
  } catch (e) {
    out(`V ${r} unreadable:${errCode(e)}`)
    return
  }
  let rec
  try {
    rec = JSON.parse(text)
  } catch {
    out(`V ${r} incomplete:${text.length}bytes`)
    return
  }
  if (rec.pid !== process.pid) out(`V ${r} pid:${rec.pid}`)
}

// One attempt (with c.retryUntil: attempts every 20..200 us until one wins or
// that instant passes); hold for a random time if it succeeds.
function attemptOnce(c) {
  const s = spec(c.dir)
  const retryUntil = c.retryUntil != null ? BigInt(c.retryUntil) : 0n
  let tS
  let won
  for (;;) {
    tS = now()
    out(`S ${c.r} ${tS}`)
    if (c.selfKillNs != null) killerGo()
    try {
      won = impl.tryAcquire(s)
    } catch (e) {
      out(`E ${c.r} ${errCode(e)}`)
      return
    }
    if (won || now() >= retryUntil) break
    sleepNs(20000 + Math.random() * 180000)
  }
  const tA = now()
  if (!won) {
    out(`L ${c.r} ${tA} ${tA - tS}`)
    return
  }
  // With the owner's fencing token where the implementation has one ('-': none minted).
  out(`A ${c.r} ${tA} ${tA - tS}${impl.token ? ` ${impl.token() ?? '-'}` : ''}`)
  if (c.verify) verifyRecord(c.r, s)
  // Hold asleep, so rivals get the CPU and try while we own the lock.
  if (c.holdMaxUs) sleepNs(Math.random() * c.holdMaxUs * 1000)
  const tR = now()
  out(`R ${c.r} ${tR}`)
  try {
    if (!impl.release(s)) out(`X ${c.r} ${now()}`)
  } catch (e) {
    out(`E ${c.r} release:${errCode(e)}`)
  }
}

// The killer: a thread that SIGKILLs its own process a chosen number of
// nanoseconds after the main thread starts an attempt, to land kills in the
// middle of acquire, which an outside killer seldom hits. It reports
// "K r t" (t = the instant of the kill) first.
let killer = null
const KILLER_SRC = `
const { workerData } = require('worker_threads');
const fs = require('fs');
const ctl = new Int32Array(workerData, 0, 4);   // arm counter, go, round, spinning
const big = new BigInt64Array(workerData, 16, 3); // t0, tGo, offset
const now = () => process.hrtime.bigint();
let seen = 0;
for (;;) {
  Atomics.wait(ctl, 0, seen);
  seen = Atomics.load(ctl, 0);
  const ahead = big[0] - now() - 100000n;
  if (ahead > 0n) Atomics.wait(ctl, 1, 0, Number(ahead) / 1e6);
  Atomics.store(ctl, 3, seen); // on a CPU and watching: the main thread may go
  const giveUp = now() + 200000000n;
  while (Atomics.load(ctl, 1) === 0 && now() < giveUp);
  if (Atomics.load(ctl, 1) === 0) continue;
  const at = big[1] + big[2];
  while (now() < at);
  fs.writeSync(1, 'K ' + Atomics.load(ctl, 2) + ' ' + now() + '\\n');
  process.kill(process.pid, 'SIGKILL');
}
`

function startKiller() {
  const { Worker } = require('node:worker_threads')
  const sab = new SharedArrayBuffer(16 + 24)
  killer = { ctl: new Int32Array(sab, 0, 4), big: new BigInt64Array(sab, 16, 3) }
  const t = new Worker(KILLER_SRC, { eval: true, workerData: sab })
  t.unref()
  return new Promise((resolve) => t.once('online', resolve))
}

function killerArm(c) {
  killer.big[0] = BigInt(c.t0)
  killer.big[2] = BigInt(c.selfKillNs)
  Atomics.store(killer.ctl, 2, c.r)
  Atomics.store(killer.ctl, 1, 0)
  Atomics.add(killer.ctl, 0, 1)
  Atomics.notify(killer.ctl, 0)
}

function killerGo() {
  // Wait until the killer thread is on a CPU and watching, so the offset holds.
  const seq = Atomics.load(killer.ctl, 0)
  const giveUp = now() + 100000000n
  while (Atomics.load(killer.ctl, 3) !== seq && now() < giveUp);
  killer.big[1] = now()
  Atomics.store(killer.ctl, 1, 1)
}

function stats(samples) {
  const a = Float64Array.from(samples).sort()
  const n = a.length
  let sum = 0
  for (const x of a) sum += x
  return {
    n,
    median_ns: a[Math.floor((n - 1) / 2)],
    p95_ns: a[Math.round((n - 1) * 0.95)],
    mean_ns: Math.round(sum / n),
    min_ns: a[0],
    max_ns: a[n - 1],
  }
}

function memSnapshot() {
  if (global.gc) global.gc()
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, fds: fdCount() }
}

let held = null // for the handover holder

const handlers = {
  round(c) {
    if (c.selfKillNs != null) killerArm(c)
    waitUntil(BigInt(c.t0))
    attemptOnce(c)
    out(`D ${c.r} ${now()}`)
  },
  probe(c) {
    attemptOnce(c)
    out(`D ${c.r} ${now()}`)
  },
  // An operator's forced removal of the lock at t0 + atNs.
  force(c) {
    waitUntil(BigInt(c.t0) + BigInt(c.atNs))
    const t0 = now()
    let removed
    try {
      removed = impl.forceRemove(spec(c.dir))
    } catch (e) {
      out(`E ${c.r} force:${errCode(e)}`)
      removed = false
    }
    out(`Y ${c.r} ${t0} ${now()} ${removed ? 1 : 0}`)
    out(`D ${c.r} ${now()}`)
  },
  // A bystander: read the lock state in a loop during the race.
  observe(c) {
    const s = spec(c.dir)
    waitUntil(BigInt(c.t0))
    const end = now() + BigInt(c.windowUs * 1000)
    const res = { calls: 0, held: 0, free: 0, errors: {}, bad: {} }
    while (now() < end) {
      res.calls++
      let v
      try {
        v = impl.info(s)
      } catch (e) {
        res.errors[errCode(e)] = (res.errors[errCode(e)] || 0) + 1
        continue
      }
      if (v === null || v === false) res.free++
      else if (v === true) res.held++
      else if (typeof v === 'object' && Number.isInteger(v.pid) && v.pid > 0 && typeof v.started === 'string')
        res.held++
      else res.bad[typeof v] = (res.bad[typeof v] || 0) + 1
    }
    out('J ' + JSON.stringify(res))
  },
  fds() {
    out(`F ${fdCount()}`)
  },
  // Batch holder: take many locks, then wait to be SIGKILLed.
  hold(c) {
    let ok = 0
    let failed = 0
    for (const dir of c.dirs) {
      try {
        if (impl.tryAcquire(spec(dir))) ok++
        else failed++
      } catch {
        failed++
      }
    }
    out(`H ${ok} ${failed}`)
  },
  // Uncontended acquire+release cycles, each timed; n cycles or maxMs, whichever first.
  async cycles(c) {
    const s = spec(c.dir)
    const samples = new Float64Array(c.n)
    const asyncApi = c.api === 'async'
    const one = async () => {
      if (asyncApi) {
        if (!(await impl.acquireAsync(s))) throw new Error('uncontended acquire failed')
        await impl.releaseAsync(s)
      } else {
        if (!impl.tryAcquire(s)) throw new Error('uncontended acquire failed')
        impl.release(s)
      }
    }
    // Warm up: `warmup` cycles or warmMs, whichever comes first (proper-lockfile
    // needs a few hundred cycles before V8 has optimized its sync path).
    const warmEnd = c.warmMs ? now() + BigInt(Math.round(c.warmMs * 1e6)) : null
    for (let i = 0; i < (c.warmup || 0); i++) {
      await one()
      if (warmEnd && now() > warmEnd) break
    }
    const end = c.maxMs ? now() + BigInt(Math.round(c.maxMs * 1e6)) : null
    let n = 0
    while (n < c.n) {
      const t0 = now()
      await one()
      const t1 = now()
      samples[n++] = Number(t1 - t0)
      if (end && t1 > end) break
    }
    out('J ' + JSON.stringify(stats(samples.subarray(0, n))))
  },
  // Memory and descriptors around n cycles (or maxMs, whichever first).
  mem(c) {
    const s = spec(c.dir)
    for (let i = 0; i < 100; i++) {
      impl.tryAcquire(s)
      impl.release(s)
    }
    const before = memSnapshot()
    const t0 = now()
    const end = c.maxMs ? t0 + BigInt(Math.round(c.maxMs * 1e6)) : null
    let n = 0
    while (n < c.n) {
      if (!impl.tryAcquire(s)) throw new Error('uncontended acquire failed')
      impl.release(s)
      n++
      if (end && (n & 63) === 0 && now() > end) break
    }
    const elapsed = Number(now() - t0)
    const after = memSnapshot()
    out('J ' + JSON.stringify({ n, elapsed_ns: elapsed, before, after }))
  },
  // Contention: count acquisitions, each retried until it succeeds.
  contend(c) {
    const s = spec(c.dir)
    const t0 = BigInt(c.t0)
    const lat = []
    const intervals = []
    let conflicts = 0
    const errors = {}
    let lost = 0
    waitUntil(t0)
    for (let i = 0; i < c.count; i++) {
      const ts = now()
      for (;;) {
        let won = false
        try {
          won = impl.tryAcquire(s)
        } catch (e) {
          errors[errCode(e)] = (errors[errCode(e)] || 0) + 1
        }
        if (won) break
        conflicts++
        if (c.retryUs) sleepNs(c.retryUs * 1000)
      }
      const tA = now()
      lat.push(Number(tA - ts))
      if (c.holdUs) spinNs(c.holdUs * 1000)
      const tR = now()
      intervals.push([Number(tA - t0), Number(tR - t0)])
      try {
        if (!impl.release(s)) lost++
      } catch (e) {
        errors['release:' + errCode(e)] = (errors['release:' + errCode(e)] || 0) + 1
      }
    }
    out('J ' + JSON.stringify({ lat, intervals, conflicts, errors, lost }))
  },
  // Handover: a holder that releases on command...
  holdone(c) {
    const s = spec(c.dir)
    if (!impl.tryAcquire(s)) throw new Error('holder could not acquire')
    held = s
    out(`A 0 ${now()}`)
  },
  release() {
    const t = now()
    impl.release(held)
    held = null
    out(`R 0 ${t}`)
  },
  // ... and a waiter that blocks in the waiting acquisition.
  async waitacq(c) {
    const s = spec(c.dir)
    out('W')
    const ts = now()
    let ok = false
    let code = null
    try {
      if (c.api === 'async') ok = await impl.waitAcquireAsync(s, c.waitMs)
      else ok = impl.waitAcquire(s, c.waitMs)
    } catch (e) {
      ok = false
      code = errCode(e)
    }
    const tA = now()
    if (ok) {
      if (impl.releaseAsync) await impl.releaseAsync(s)
      else impl.release(s)
    }
    out('J ' + JSON.stringify({ ok, code, tA: String(tA), waited_ns: Number(tA - ts) }))
  },
  exit() {
    process.exit(0)
  },
}

// Warm up (load lazily compiled paths, open whatever opens once), then report.
if (options.warmDir) {
  fs.mkdirSync(options.warmDir, { recursive: true })
  const s = spec(options.warmDir)
  for (let i = 0; i < 3; i++) {
    if (impl.tryAcquire(s)) impl.release(s)
  }
}

let chain = options.killer ? startKiller() : Promise.resolve()
let buffered = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk) => {
  buffered += chunk
  let nl
  while ((nl = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, nl)
    buffered = buffered.slice(nl + 1)
    if (!line.trim()) continue
    const c = JSON.parse(line)
    chain = chain
      .then(() => handlers[c.op](c))
      .catch((e) => {
        out(`J ${JSON.stringify({ error: errCode(e), message: String(e && e.message) })}`)
      })
  }
})
process.stdin.on('end', () => chain.then(() => process.exit(0)))

chain = chain.then(() => out(`READY ${fdCount()}`))
