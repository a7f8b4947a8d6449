'use strict'
// Torture race kinds for `processlock run` (ours only), used by bench/torture.js:
//
//   run-tree  one `processlock run` per round; its command starts N claimants
//             at once, each taking the wrapped lock at one start instant
//             (the core's claim example: bench cost of a round is process
//             starts, not Node start-ups). Exactly one may own it at a time.
//             Even rounds: the claimants inherit the lock's descriptors; odd
//             rounds: they do not (as behind npm) and ask processlock for them.
//   run-race  N `processlock run` wrappers started at once for one lock; the
//             command of each winner takes the lock itself at once.
//
// Each owner holds for a random 0..hold-us microseconds and reports its
// ownership interval (CLOCK_MONOTONIC right after acquire returned .. right
// before release); a round counts a double owner when two intervals overlap.

const fs = require('node:fs')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')
const { ROOT } = require('./impls')

const KINDS = ['run-tree', 'run-race']
const LOCK_NAME = 'backend.short.lock'
// The command of `npm run build`, and the claim example built below beside it with the same
// target, so that it reuses what that build compiled (bin/processlock.js knows where).
const { buildDir, hostTriple } = require('../bin/processlock.js')
const PROCESSLOCK = path.join(buildDir('release'), 'processlock')
const CLAIM = path.join(buildDir('release'), 'examples', 'claim')

/** Builds the claim example (a no-op when it is up to date); why not, if it cannot run. */
function prepare() {
  if (!fs.existsSync(PROCESSLOCK)) return `${PROCESSLOCK} is missing: run npm run build`
  try {
    const target = ['--target', hostTriple()]
    execFileSync('cargo', ['build', '--release', '--quiet', ...target, '-p', 'processlock', '--example', 'claim'], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'inherit'],
    })
  } catch (e) {
    return `cannot build the claim example: ${e.message.split('\n')[0]}`
  }
  return null
}

/** Runs `file args`; resolves with { code, signal, out } once it ended and its output closed. */
function runProc(file, args, env) {
  return new Promise((resolve) => {
    const p = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    p.stdout.on('data', (d) => {
      out += d
    })
    p.stderr.on('data', (d) => {
      err += d
    })
    let exit = null
    let left = 3
    const done = () => {
      if (--left === 0) resolve({ ...exit, out, err })
    }
    p.on('exit', (code, signal) => {
      exit = { code, signal }
      done()
    })
    p.stdout.on('close', done)
    p.stderr.on('close', done)
    p.on('error', (e) => {
      exit = { code: null, signal: null, error: e }
      left = 1
      done()
    })
  })
}

const report = require('./report')

const monoNs = () => process.hrtime.bigint()

async function runKind(kind, n, { rounds, duration, holdUs, base, keep }) {
  const st = {
    ...report.emptyTortureStats(kind),
    impl: 'ours',
    n,
    notes: [],
  }
  const bump = (k) => {
    st.errors[k] = (st.errors[k] || 0) + 1
  }
  const kdir = path.join(base, `${kind}-${n}`)
  const env = { ...process.env, PROCESSLOCK_LOG: 'silent' }
  delete env.PROCESSLOCK_INHERITED
  let won = 0
  let lost = 0
  let wrappersRefused = 0
  const started = Date.now()
  const until = duration > 0 ? started + duration * 1000 : Infinity
  for (let r = 0; r < rounds && Date.now() < until; r++) {
    const dir = path.join(kdir, String(r))
    fs.mkdirSync(dir, { recursive: true })
    const wrap = (command) => ['run', 'backend', '--side', 'SHORT', '-q', '--', CLAIM, ...command]
    env.PROCESSLOCK_DIR = dir
    let outs
    if (kind === 'run-tree') {
      // Time enough for the wrapper, the fan and its N children to start.
      const t0 = monoNs() + BigInt(20e6 + 2e6 * n)
      const fan = r % 2 === 0 ? 'fan' : 'fan-closed'
      const res = await runProc(PROCESSLOCK, wrap([fan, String(n), String(t0), String(holdUs)]), env)
      if (res.code !== 0) bump(`wrapper exit ${res.code ?? res.signal}`)
      outs = [res.out]
    } else {
      const res = await Promise.all(
        Array.from({ length: n }, () => runProc(PROCESSLOCK, wrap(['one', '0', String(holdUs)]), env)),
      )
      for (const x of res) {
        if (x.code === 1 && x.err.includes('LOCK_CONFLICT')) wrappersRefused++
        else if (x.code !== 0) bump(`wrapper exit ${x.code ?? x.signal}`)
      }
      outs = res.map((x) => x.out)
    }
    const intervals = []
    for (const out of outs) {
      const open = []
      for (const line of out.split('\n')) {
        const [tag, t] = line.split(' ')
        if (tag === 'A') {
          open.push(BigInt(t))
          won++
        } else if (tag === 'R') intervals.push([open.shift() ?? BigInt(t), BigInt(t)])
        else if (tag === 'L') {
          lost++
          // A wrapper's own command is the only process of its tree: it must always own the lock.
          if (kind === 'run-race') bump('command refused')
        } else if (tag === 'E') bump(t)
      }
      if (open.length) bump('no-release')
    }
    report.countRound(st, intervals)
    for (const name of fs.readdirSync(dir)) {
      if (name === LOCK_NAME) st.leftoverLocks++
      // The removal guard and the lock's generation file stay in a lock directory on purpose.
      else if (name !== '.processlock.guard' && !/^\..*\.lock\.fencing$/.test(name)) {
        st.leftoverTemp++
        if (st.tempSamples.length < 3) st.tempSamples.push(name)
      }
    }
    st.rounds++
  }
  st.seconds = (Date.now() - started) / 1000
  if (!keep) fs.rmSync(kdir, { recursive: true, force: true })
  st.notes.push(
    kind === 'run-tree'
      ? `claims: ${won} owned, ${lost} refused (LOCK_CONFLICT)`
      : `wrappers refused (LOCK_CONFLICT) ${wrappersRefused}; commands owning ${won}, refused ${lost}`,
  )
  return st
}

module.exports = { KINDS, prepare, runKind }
