'use strict'
// The torture race kind for the end of a holder (ours only), used by bench/torture.js:
//
//   exit-hook  each round a fresh holder process (bench/exit-holder.js) takes the lock, adds an
//              'exit' hook of its own afterwards (as apps do: lock first, shutdown hooks later),
//              and N waiters (bench/worker.js, `waitacq`) wait for the lock, in turn with
//              acquireLock's waitMs and with acquireLockAsync. Then the holder ends, in turn by
//              process.exit(), its natural end, an uncaught exception, an unhandled rejection, and
//              a worker thread holding the lock that ends by process.exit() or naturally. Its
//              hook keeps writing (synchronous writes) for a random 0..hold-us microseconds.
//
// The holder owns the lock from right after acquireLock returned until right after its hook's
// last write returned: the lock must not be given up while the app's own exit hook still runs.
// Each waiter owns it from the instant its acquire returned. A round counts a double owner when
// a waiter's instant falls inside the holder's ownership (all instants are CLOCK_MONOTONIC).

const fs = require('node:fs')
const path = require('node:path')
const { Worker } = require('./pool')
const report = require('./report')

const KINDS = ['exit-hook']
const HOLDER = path.join(__dirname, 'exit-holder.js')
const ENDINGS = ['exit', 'natural', 'throw', 'reject', 'worker-exit', 'worker-natural']
/** The exit status each ending gives (a worker's end leaves the process to end with 0). */
const STATUS = { exit: 0, natural: 0, throw: 1, reject: 1, 'worker-exit': 0, 'worker-natural': 0 }
const LOCK_NAME = 'backend.short.lock'
const WAIT_MS = 30000

const delay = (ms) => new Promise((r) => setTimeout(r, ms))
const lastOf = (a) => a[a.length - 1]

function holder() {
  return new Worker('ours', {}, [], { script: HOLDER, quiet: true }).ready
}

async function runKind(kind, n, { rounds, duration, holdUs, base, keep }) {
  const st = { ...report.emptyTortureStats(kind), impl: 'ours', n, notes: [] }
  const bump = (k) => {
    st.errors[k] = (st.errors[k] || 0) + 1
  }
  const kdir = path.join(base, `${kind}-${n}`)
  fs.mkdirSync(kdir, { recursive: true })
  const waiters = await Promise.all(
    Array.from({ length: n }, (_, i) => new Worker('ours', { warmDir: path.join(kdir, `warm-${i}`) }).ready),
  )
  const byEnding = Object.fromEntries(ENDINGS.map((e) => [e, 0]))
  let hookUsMax = 0
  // The next round's holder starts while this round runs: a Node start-up is the cost of a round.
  let next = holder()
  const started = Date.now()
  const until = duration > 0 ? started + duration * 1000 : Infinity
  try {
    for (let r = 0; r < rounds && Date.now() < until; r++) {
      const dir = path.join(kdir, String(r))
      fs.mkdirSync(dir)
      const how = ENDINGS[r % ENDINGS.length]
      const api = Math.floor(r / ENDINGS.length) % 2 === 0 ? 'sync' : 'async'
      const hookUs = Math.random() * holdUs
      if (hookUs > hookUsMax) hookUsMax = hookUs
      const h = await next
      next = holder()
      h.send({ dir, how, hookUs })
      const taken = await h.until((l) => l === 'H')
      const a = taken.find((l) => l.startsWith('A '))
      if (!a || lastOf(taken) !== 'H') {
        bump(`holder could not take the lock: ${h.stderr.trim().split('\n').pop()}`)
        h.kill()
        continue
      }
      // Every waiter is in its wait (the `W` line comes right before the call) ...
      await Promise.all(
        waiters.map((w) => {
          w.send({ op: 'waitacq', dir, waitMs: WAIT_MS, api })
          return w.until((l) => l === 'W')
        }),
      )
      // ... and has had a moment to block in it: a waiter that was slow to get there still takes
      // the lock at the instant it can, which only makes the round easier to pass.
      await delay(2)
      h.send({ op: 'go' })
      const got = await Promise.all(waiters.map((w) => w.json()))
      const lines = await h.drain()
      await h.exited
      byEnding[how]++
      const z = lines.find((l) => l.startsWith('Z '))
      if (!z) bump(`no end of the exit hook (${how})`)
      if (h.exitCode !== STATUS[how]) bump(`holder ${how}: exit ${h.exitCode ?? h.exitSignal}`)
      const intervals = [[BigInt(a.split(' ')[1]), BigInt((z || a).split(' ')[1])]]
      for (const g of got) {
        if (g.ok) intervals.push([BigInt(g.tA), BigInt(g.tA)])
        else bump(`waiter: ${g.code}`)
      }
      report.countRound(st, intervals)
      for (const name of fs.readdirSync(dir)) {
        if (name === LOCK_NAME) st.leftoverLocks++
        else if (name !== '.processlock.guard' && !/^\..*\.lock\.fencing$/.test(name)) {
          st.leftoverTemp++
          if (st.tempSamples.length < 3) st.tempSamples.push(name)
        }
      }
      if (!keep) {
        fs.rmSync(dir, { recursive: true, force: true })
        fs.rmSync(`${dir}.hook`, { force: true })
      }
      st.rounds++
    }
  } finally {
    ;(await next).kill()
    await Promise.all(waiters.map((w) => w.stop()))
  }
  st.seconds = (Date.now() - started) / 1000
  if (!keep) fs.rmSync(kdir, { recursive: true, force: true })
  st.notes.push(
    `holders ending by ${ENDINGS.map((e) => `${e} ${byEnding[e]}`).join(', ')}; ` +
      `exit hooks writing for 0..${Math.round(hookUsMax)} us; ${st.owners} owners`,
  )
  return st
}

module.exports = { KINDS, runKind }
