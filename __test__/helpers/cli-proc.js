'use strict'
// Runs the `processlock` command for the CLI tests: the release binary that `npm run build`
// produced, or the npm `bin` launcher in front of it. Real processes, real files, real signals.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { buildDir, EXE } = require('../../bin/processlock.js')
const { ROOT, watch: watchProcess, running: alive } = require('./proc')

const BINARY = path.join(buildDir('release'), EXE)
const LAUNCHER = path.join(ROOT, 'bin', 'processlock.js')
const CHILD = path.join(__dirname, 'cli-child.js')
const HOLDER = path.join(__dirname, 'cli-holder.js')

if (!fs.existsSync(BINARY)) {
  throw new Error(`${BINARY} is missing: run "npm run build" before the tests`)
}

/** The command line that starts `processlock` directly or through the launcher. */
function commandLine(args, via) {
  if (via === 'launcher') {
    return [process.execPath, [LAUNCHER, ...args]]
  }
  return [BINARY, args]
}

/**
 * A running process with its output collected (see `watch` in ./proc).
 * `env` is merged over a clean base: PROCESSLOCK_DIR=dir and TRADE_SIDE=SHORT unless overridden
 * (pass `undefined` to drop one).
 */
function watch(file, args, { dir, env = {}, cwd, stdin = 'ignore' } = {}) {
  const base = { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: 'SHORT', NO_COLOR: '1' }
  // The launcher must find the binary the tests use, whatever else was built.
  base.PROCESSLOCK_BINARY = BINARY
  return watchProcess(file, args, { cwd: cwd || ROOT, env: { ...base, ...env }, stdin })
}

/** Starts `processlock ...args`; `via: 'launcher'` goes through bin/processlock.js. */
function startCli(args, opts = {}) {
  const [file, argv] = commandLine(args, opts.via)
  return watch(file, argv, opts)
}

/** Runs `processlock ...args` to its end: { code, signal, stdout, stderr }. */
function cli(args, opts) {
  return startCli(args, opts).done()
}

/** `processlock run <type> ... -- node cli-child.js ...childArgs` */
function startRun(runArgs, childArgs, opts) {
  return startCli(['run', ...runArgs, '--', process.execPath, CHILD, ...childArgs], opts)
}

/** A Node service holding `type` (side SHORT) through the addon. */
async function startHolder(dir, type = 'backend', side = 'SHORT') {
  const p = watch(process.execPath, [HOLDER, type, side], { dir })
  await p.waitFor('HOLDER READY')
  return p
}

/** Waits until `pid` is gone (it is not our child, so its exit cannot be awaited directly). */
async function waitGone(pid, timeoutMs = 10000) {
  const until = Date.now() + timeoutMs
  while (alive(pid)) {
    if (Date.now() > until) throw new Error(`PID ${pid} still runs`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Whether util-linux `script` can give a command a pseudo-terminal here. */
function hasScript() {
  if (process.platform !== 'linux') return false
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** A POSIX shell word. */
function shellQuote(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`
}

/**
 * Runs `words` on a pseudo-terminal (through `script`), so that writing "\x03" to the returned
 * process's stdin is a real Ctrl+C: the terminal sends SIGINT to its whole foreground group.
 */
function startOnTerminal(words, { dir, env = {} } = {}) {
  // `exec`: no shell in between, whose own reaction to Ctrl+C would blur the exit status.
  const line = `exec ${words.map(shellQuote).join(' ')}`
  return watch('script', ['-qfec', line, '/dev/null'], {
    dir,
    env: { SHELL: '/bin/sh', TERM: 'dumb', ...env },
    stdin: 'pipe',
  })
}

module.exports = {
  BINARY,
  LAUNCHER,
  CHILD,
  cli,
  startCli,
  startRun,
  startHolder,
  startOnTerminal,
  hasScript,
  alive,
  waitGone,
}
