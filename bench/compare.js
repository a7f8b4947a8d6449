'use strict'
// The acquire + release cycle of this checkout against another build of the package (an older
// commit, a branch), in one run: rounds alternate between the two, each round a fresh process
// and a fresh lock directory (ext4 slows create/unlink loops as a directory's history grows),
// so load on the machine falls on both sides alike. Reports each side's median of per-round
// medians and the ratio. Each round also starts a process that requires the package and takes
// one lock, held until it exits (then released at exit): the time of `require` plus the first
// acquire inside it, and the wall time of the whole process.
//
//   node bench/compare.js --baseline DIR [--rounds N (20)] [--cycles N (5000)] [--dir D]
//
// DIR is the root of a built checkout of the package (`npm run build` done there). Example:
//   git worktree add /tmp/before <commit> && (cd /tmp/before && npm ci && npm run build)
//   node bench/compare.js --baseline /tmp/before
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')

function parseArgs(argv) {
  const a = { baseline: null, rounds: 20, cycles: 5000, dir: os.tmpdir() }
  for (let i = 0; i < argv.length; i++) {
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`)
      return argv[++i]
    }
    switch (argv[i]) {
      case '--baseline':
        a.baseline = path.resolve(next())
        break
      case '--rounds':
        a.rounds = Number(next())
        break
      case '--cycles':
        a.cycles = Number(next())
        break
      case '--dir':
        a.dir = path.resolve(next())
        break
      case '--help':
        console.log(fs.readFileSync(__filename, 'utf8').split('\n').slice(1, 13).join('\n'))
        process.exit(0)
        break
      default:
        throw new Error(`unknown option ${argv[i]}`)
    }
  }
  if (!a.baseline) throw new Error('--baseline DIR is required')
  if (!(a.rounds >= 1 && a.cycles >= 100)) throw new Error('--rounds >= 1 and --cycles >= 100')
  return a
}

// One round in a process of its own: warm up, then time every cycle; prints the median in us.
const ROUND = `
  const pl = require(process.argv[1])
  const dir = process.argv[2]
  const cycles = Number(process.argv[3])
  const opts = { dir, tradeSide: 'SHORT', log: false }
  for (let i = 0; i < 500; i++) { pl.acquireLock('backend', opts); pl.releaseLock('backend', opts) }
  const t = new Float64Array(cycles)
  for (let i = 0; i < cycles; i++) {
    const s = process.hrtime.bigint()
    pl.acquireLock('backend', opts)
    pl.releaseLock('backend', opts)
    t[i] = Number(process.hrtime.bigint() - s) / 1000
  }
  t.sort()
  console.log(t[cycles >> 1])
`

// A service's start: require, the first acquire, held until the process ends. Prints the ns
// that require and the first acquire took inside the process.
const START = `
  const t0 = process.hrtime.bigint()
  const pl = require(process.argv[1])
  pl.acquireLock('backend', { dir: process.argv[2], tradeSide: 'SHORT', log: false })
  console.log(Number(process.hrtime.bigint() - t0))
`

/** One start: [require + first acquire inside the process, wall time of the process], in ms. */
function start(pkg, a) {
  const dir = fs.mkdtempSync(path.join(a.dir, 'pl-compare-start-'))
  try {
    const t0 = process.hrtime.bigint()
    const inside = Number(execFileSync(process.execPath, ['-e', START, pkg, dir], { encoding: 'utf8' })) / 1e6
    const wall = Number(process.hrtime.bigint() - t0) / 1e6
    // The removal guard and the lock's generation file stay on purpose.
    if (fs.readdirSync(dir).some((n) => n !== '.processlock.guard' && !/^\..*\.lock\.fencing$/.test(n)))
      throw new Error('the lock was not released at exit')
    return [inside, wall]
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

function round(pkg, a) {
  const dir = fs.mkdtempSync(path.join(a.dir, 'pl-compare-'))
  try {
    return Number(execFileSync(process.execPath, ['-e', ROUND, pkg, dir, String(a.cycles)], { encoding: 'utf8' }))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const median = (xs) => xs.slice().sort((p, q) => p - q)[xs.length >> 1]

function main() {
  const a = parseArgs(process.argv.slice(2))
  const sides = { baseline: [], current: [] }
  const starts = { baseline: [], current: [] }
  for (let r = 0; r < a.rounds; r++) {
    // Alternate which side goes first, so neither always runs on a warmer machine.
    const order = r % 2 ? ['current', 'baseline'] : ['baseline', 'current']
    for (const side of order) {
      const pkg = side === 'current' ? ROOT : a.baseline
      sides[side].push(round(pkg, a))
      starts[side].push(start(pkg, a))
    }
  }
  const b = median(sides.baseline)
  const c = median(sides.current)
  const load = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')
  console.log(
    `acquire + release cycle, median of ${a.rounds} per-round medians (${a.cycles} cycles each), load ${load}`,
  )
  console.log(
    `  baseline ${a.baseline}: ${b.toFixed(1)} us (rounds ${Math.min(...sides.baseline).toFixed(1)}..${Math.max(...sides.baseline).toFixed(1)})`,
  )
  console.log(
    `  current  ${ROOT}: ${c.toFixed(1)} us (rounds ${Math.min(...sides.current).toFixed(1)}..${Math.max(...sides.current).toFixed(1)})`,
  )
  console.log(`  current / baseline: ${(c / b).toFixed(3)}`)
  const ms = (side, i) => median(starts[side].map((x) => x[i]))
  console.log(`require + first acquire (held until exit), median of ${a.rounds} processes per side`)
  for (const [i, what] of [
    [0, 'inside the process'],
    [1, 'wall time of the process (with its release at exit)'],
  ]) {
    const [sb, sc] = [ms('baseline', i), ms('current', i)]
    console.log(
      `  ${what}: baseline ${sb.toFixed(2)} ms, current ${sc.toFixed(2)} ms, current / baseline ${(sc / sb).toFixed(3)}`,
    )
  }
}

main()
