#!/usr/bin/env node
'use strict'
// The npm `bin` entry: finds the native `processlock` command built for this platform and runs it,
// passing the arguments, the standard streams, SIGINT/SIGTERM/SIGHUP and the exit status through.
//
// Where the binary is looked for, first match wins:
//   1. $PROCESSLOCK_BINARY, if set;
//   2. in a checkout, target/release/processlock or target/debug/processlock (the newer one);
//   3. npm/<abi>/processlock in this package (after `napi artifacts`);
//   4. the platform package @trader/processlock-<abi>, next to its .node file.

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const EXE = process.platform === 'win32' ? 'processlock.exe' : 'processlock'
const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP']

/** Whether this Linux uses musl rather than glibc (Alpine and friends). */
function linuxIsMusl() {
  try {
    // The dynamic loader's `ldd` script names its libc.
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl')
  } catch {}
  try {
    const report = process.report && process.report.getReport()
    if (report && report.header) {
      if (report.header.glibcVersionRuntime) return false
      const libs = Array.isArray(report.sharedObjects) ? report.sharedObjects : []
      return libs.some((f) => /ld-musl-|libc\.musl-/.test(f))
    }
  } catch {}
  try {
    const out = require('node:child_process').execFileSync('ldd', ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    return out.includes('musl')
  } catch (e) {
    // musl's ldd prints its banner on stderr and exits 1.
    return String((e && e.stderr) || '').includes('musl')
  }
}

/** The napi-rs platform name of this machine, e.g. linux-x64-gnu, darwin-arm64, win32-x64-msvc. */
function abi() {
  const { platform, arch } = process
  switch (platform) {
    case 'linux':
      if (arch === 'arm') return `linux-arm-${linuxIsMusl() ? 'musleabihf' : 'gnueabihf'}`
      return `linux-${arch}-${linuxIsMusl() ? 'musl' : 'gnu'}`
    case 'win32':
      return `win32-${arch}-msvc`
    default:
      return `${platform}-${arch}`
  }
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile()
  } catch {
    return false
  }
}

/** Every place looked at, in order, each with whether it holds the binary. */
function candidates() {
  const found = []
  if (process.env.PROCESSLOCK_BINARY) found.push(process.env.PROCESSLOCK_BINARY)
  const builds = ['release', 'debug']
    .map((profile) => path.join(ROOT, 'target', profile, EXE))
    .filter(isFile)
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)
  found.push(...builds)
  const name = abi()
  found.push(path.join(ROOT, 'npm', name, EXE))
  try {
    const manifest = require.resolve(`@trader/processlock-${name}/package.json`, { paths: [ROOT] })
    found.push(path.join(path.dirname(manifest), EXE))
  } catch {}
  return { name, paths: found }
}

function findBinary() {
  const { name, paths } = candidates()
  const hit = paths.find(isFile)
  if (hit) return hit
  const looked = paths.length ? paths.join(', ') : '(nothing)'
  process.stderr.write(
    `processlock: no processlock binary for ${name} (looked at: ${looked}). ` +
      `In a checkout run "npm run build"; from npm, reinstall so that the optional dependency ` +
      `@trader/processlock-${name} is installed (it is skipped with --no-optional or --omit=optional).\n`,
  )
  process.exit(1)
}

/** Some unpackers drop the executable bit: restore it once rather than fail. */
function ensureExecutable(binary) {
  if (process.platform === 'win32') return
  try {
    fs.accessSync(binary, fs.constants.X_OK)
  } catch {
    try {
      fs.chmodSync(binary, 0o755)
    } catch {}
  }
}

function main() {
  const binary = findBinary()
  ensureExecutable(binary)
  const child = spawn(binary, process.argv.slice(2), { stdio: 'inherit' })

  // Our listeners replace Node's exit-on-signal: the command decides when everything ends.
  const relays = FORWARDED.map((signal) => {
    const relay = () => {
      try {
        child.kill(signal)
      } catch {}
    }
    process.on(signal, relay)
    return [signal, relay]
  })
  const unhook = () => {
    for (const [signal, relay] of relays) process.removeListener(signal, relay)
  }

  child.on('error', (err) => {
    unhook()
    process.stderr.write(`processlock: cannot run ${binary}: ${err.message}\n`)
    process.exit(1)
  })
  child.on('exit', (code, signal) => {
    unhook()
    if (signal) {
      // End the way the command did. Node ignores a few signals (SIGPIPE): then exit the
      // shell's way.
      process.kill(process.pid, signal)
      setTimeout(() => process.exit(128 + (os.constants.signals[signal] || 0)), 100)
      return
    }
    process.exit(code === null ? 1 : code)
  })
}

if (require.main === module) {
  main()
}

module.exports = { abi, candidates, linuxIsMusl }
