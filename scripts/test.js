'use strict'
// `npm test`: every test of the project, from a fresh clone after `npm install`.
//   1. build the addon and the `processlock` command (release, as shipped)
//   2. cargo test: the Rust core's unit and integration tests, and the command's
//   3. jest: the package against real processes, files and signals
//   4. tsc --strict on a consumer file
// Prints one closing line: `total: N passed, N failed`.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx'
let passed = 0
let failed = 0
const problems = []

function step(title, cmd, args, { capture = false } = {}) {
  console.log(`\n=== ${title}: ${cmd} ${args.join(' ')}`)
  const r = spawnSync(cmd, args, {
    cwd: ROOT,
    stdio: capture ? ['inherit', 'pipe', 'pipe'] : 'inherit',
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  })
  if (capture) {
    process.stdout.write(r.stdout)
    process.stderr.write(r.stderr)
  }
  if (r.status !== 0) problems.push(`${title} exited with ${r.status ?? r.signal}`)
  return r
}

step('build', npx, [
  'napi',
  'build',
  '--platform',
  '--release',
  '--js',
  'binding.js',
  '--dts',
  'binding.d.ts',
  '--no-const-enum',
])
step('build', 'cargo', ['build', '--release', '-p', 'processlock-cli'])
// The private PostgreSQL server of the JavaScript tests (__test__/helpers/pg.js).
step('build', 'cargo', ['build', '--release', '-p', 'processlock-pg', '--example', 'pg_server'])
if (problems.length) {
  console.error(`\nbuild failed: ${problems.join('; ')}`)
  console.log('total: 0 passed, 1 failed')
  process.exit(1)
}

const cargo = step('cargo test', 'cargo', ['test', '--workspace'], { capture: true })
for (const m of (cargo.stdout + cargo.stderr).matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
  passed += Number(m[1])
  failed += Number(m[2])
}

const report = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pl-jest-')), 'report.json')
step('jest', npx, ['jest', '--json', `--outputFile=${report}`])
try {
  const r = JSON.parse(fs.readFileSync(report, 'utf8'))
  passed += r.numPassedTests
  failed += r.numFailedTests
  if (r.numFailedTestSuites > 0 && r.numFailedTests === 0) problems.push('a jest suite failed to run')
} catch (e) {
  problems.push(`no jest report: ${e.message}`)
}

const tsc = step('typecheck', npx, ['tsc', '-p', '__test__/types/tsconfig.json'])
if (tsc.status === 0) passed += 1
else failed += 1

if (problems.length) console.error(`\nproblems: ${problems.join('; ')}`)
console.log(`\ntotal: ${passed} passed, ${failed} failed`)
process.exit(failed > 0 || problems.length > 0 ? 1 : 0)
