'use strict'
// `npm test`: every test of the project, from a fresh clone after `npm install`.
//   1. build the addon, the `processlock` command and the private PostgreSQL server of the
//      JavaScript tests: release, as shipped, in one cargo run (scripts/build.js)
//   2. cargo test (every test binary, also after a failure): the Rust core's unit and
//      integration tests, and the command's, in cargo's test
//      profile. It shares nothing with step 1 (another profile, another directory); building the
//      tests with step 1's profile and target would reuse every dependency, but the release
//      profile links each of the ~20 test and example binaries with fat LTO and one codegen unit:
//      measured here, 283 s of CPU on top of step 1, against 125 s for the whole test profile.
//   3. jest: the package against real processes, files and signals; when this Node has no
//      node:sqlite, the node:sqlite tests run their processes with a Node 22 fetched first from
//      the npm registry (scripts/node-for-tests.js); if it cannot be fetched they are skipped as
//      needing it
//   4. tsc --strict on a consumer file
// Prints what was skipped and why, then one closing line: `total: N passed, N failed, N skipped`.
//
//   npm test [-- --fail-on-skip]
//
// A skipped test is one jest registered as skipped (its name says why: __test__/helpers/skip.js),
// one cargo ignored, or a Rust test that printed `SKIPPED: why` and returned (it passed for
// libtest, and is counted here as skipped). With --fail-on-skip (.ci/run under CI=true), a skip
// is a failure unless it is for another platform ("[skipped on <platform>: ...]").
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { build } = require('./build.js')
const nodeForTests = require('./node-for-tests.js')

const ROOT = path.resolve(__dirname, '..')
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx'
const failOnSkip = process.argv.includes('--fail-on-skip')
let passed = 0
let failed = 0
/** { where, name, reason, otherPlatform } */
const skipped = []
const problems = []

/**
 * Runs a command with its output shown as it comes; resolves with its exit status and, with
 * `capture`, its stdout and stderr as one text in the order they arrived (cargo names each test
 * binary on stderr, libtest reports on stdout).
 */
function step(title, cmd, args, { capture = false } = {}) {
  console.log(`\n=== ${title}: ${cmd} ${args.join(' ')}`)
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {
      cwd: ROOT,
      stdio: capture ? ['inherit', 'pipe', 'pipe'] : 'inherit',
      shell: process.platform === 'win32',
    })
    let text = ''
    if (capture) {
      child.stdout.on('data', (d) => {
        text += d
        process.stdout.write(d)
      })
      child.stderr.on('data', (d) => {
        text += d
        process.stderr.write(d)
      })
    }
    child.on('error', (e) => problems.push(`${title}: ${e.message}`))
    child.on('close', (code, signal) => {
      if (code !== 0) problems.push(`${title} exited with ${code ?? signal}`)
      resolve({ status: code, text })
    })
  })
}

/**
 * The counts of a `cargo test` run: libtest's result lines, its ignored tests, and the tests that
 * printed `SKIPPED: why` (shown by --show-output under their name, in a binary's "successes").
 */
function countCargo(text) {
  let binary = ''
  let section = ''
  let current = null
  /** The ignored tests of the binary running now. */
  const ignored = []
  for (const line of text.split(/\r?\n/)) {
    // `Running tests/lock.rs (target/debug/deps/lock-<hash>)`, `Doc-tests processlock`.
    let m = /^\s+Running (.+?)(?: \((?:.*[/\\])?([\w-]+?)(?:-[0-9a-f]{16})?(?:\.exe)?\))?$/.exec(line)
    if (m) {
      binary = m[2] ? `${m[2]}: ${m[1]}` : m[1]
      continue
    }
    m = /^\s+Doc-tests (\S+)/.exec(line)
    if (m) {
      binary = `${m[1]}: doc-tests`
      continue
    }
    m = /^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored/.exec(line)
    if (m) {
      passed += Number(m[1])
      failed += Number(m[2])
      // Ignored tests not named on a line of their own (a terse format) still count.
      for (let i = ignored.length; i < Number(m[3]); i++) ignored.push({ name: '(not named)', reason: '#[ignore]' })
      for (const t of ignored.splice(0)) skipped.push({ where: `cargo ${binary}`, ...t, otherPlatform: false })
      current = null
      continue
    }
    m = /^test (.+?) \.\.\. ignored(?:, (.*))?$/.exec(line)
    if (m) {
      ignored.push({ name: m[1], reason: m[2] || '#[ignore]' })
      continue
    }
    m = /^---- (.+) stdout ----$/.exec(line)
    if (m) {
      current = m[1]
      continue
    }
    if (line === 'successes:' || line === 'failures:') {
      section = line
      current = null
      continue
    }
    m = /^SKIPPED( on [\w-]+)?: (.*)$/i.exec(line)
    if (m && current && section === 'successes:') {
      // libtest counted it as passed.
      passed -= 1
      skipped.push({ where: `cargo ${binary}`, name: current, reason: m[2], otherPlatform: Boolean(m[1]) })
      current = null
    }
  }
}

/** The counts of jest's JSON report; a skipped test's name carries its reason (helpers/skip.js). */
function countJest(report) {
  passed += report.numPassedTests
  failed += report.numFailedTests
  if (report.numFailedTestSuites > 0 && report.numFailedTests === 0) problems.push('a jest suite failed to run')
  for (const file of report.testResults) {
    for (const t of file.assertionResults) {
      if (!['pending', 'skipped', 'todo', 'disabled'].includes(t.status)) continue
      const m = /\[skipped( on [\w-]+)?: ([^\]]*)\]/.exec(t.fullName)
      skipped.push({
        where: `jest ${path.relative(ROOT, file.name)}`,
        name: t.fullName.replace(/ \[skipped[^\]]*\]/g, ''),
        reason: m ? m[2] : t.status === 'todo' ? 'test.todo' : 'no reason given',
        otherPlatform: Boolean(m?.[1]),
      })
    }
  }
}

async function main() {
  console.log('\n=== build: node scripts/build.js --test-tools')
  const built = build({ testTools: true })
  if (built.status !== 0) {
    console.error(`\nbuild failed: ${built.error?.message ?? `exit ${built.status ?? built.signal}`}`)
    console.log('total: 0 passed, 1 failed, 0 skipped')
    process.exit(1)
  }

  const cargo = await step('cargo test', 'cargo', ['test', '--workspace', '--no-fail-fast', '--', '--show-output'], {
    capture: true,
  })
  countCargo(cargo.text)

  if (!nodeForTests.hasNodeSqlite() && nodeForTests.packageName()) {
    console.log('\n=== a Node with node:sqlite for the tests: node scripts/node-for-tests.js')
    try {
      console.log(nodeForTests.fetchNode())
    } catch (e) {
      // Not a failure of its own: the tests that need it are skipped, and say so.
      console.error(`not fetched: ${e.message}`)
    }
  }

  const report = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pl-jest-')), 'report.json')
  await step('jest', npx, ['jest', '--json', `--outputFile=${report}`])
  try {
    countJest(JSON.parse(fs.readFileSync(report, 'utf8')))
  } catch (e) {
    problems.push(`no jest report: ${e.message}`)
  }

  const tsc = await step('typecheck', npx, ['tsc', '-p', '__test__/types/tsconfig.json'])
  if (tsc.status === 0) passed += 1
  else failed += 1

  if (skipped.length) {
    console.log(`\nskipped (${skipped.length}):`)
    for (const s of skipped) console.log(`  ${s.where}: ${s.name}\n    why: ${s.reason}`)
  }
  const mustRun = skipped.filter((s) => !s.otherPlatform)
  if (failOnSkip && mustRun.length > 0) {
    problems.push(`${mustRun.length} test(s) skipped for something this machine lacks (--fail-on-skip)`)
  }
  if (problems.length) console.error(`\nproblems: ${problems.join('; ')}`)
  console.log(`\ntotal: ${passed} passed, ${failed} failed, ${skipped.length} skipped`)
  process.exit(failed > 0 || problems.length > 0 ? 1 : 0)
}

main()
