#!/usr/bin/env node
'use strict'
// The npm `bin` entry: finds the native `processlock` command built for this platform and runs it,
// passing the arguments, the standard streams, SIGINT/SIGTERM/SIGHUP and the exit status through.
//
// Where the binary is looked for, first match wins:
//   1. $PROCESSLOCK_BINARY, if set;
//   2. in a checkout, the build of `npm run build` or `npm run build:debug`, whichever is newer:
//      target/<host triple>/release/processlock or .../debug/processlock (see buildDir);
//   3. npm/<abi>/processlock in this package (after `npm run pack` or `napi artifacts`);
//   4. the platform package @trader/processlock-<abi>, next to its .node file.

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { abi, linuxIsMusl } = require('../lib/abi.js')

const ROOT = path.resolve(__dirname, '..')
const EXE = process.platform === 'win32' ? 'processlock.exe' : 'processlock'
const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP']

/** Rust's name of an architecture Node names `arch`. */
const RUST_ARCH = { x64: 'x86_64', arm64: 'aarch64', ia32: 'i686', arm: 'armv7' }

/**
 * The Rust target triple of this machine, e.g. x86_64-unknown-linux-gnu: the one `napi build`
 * builds for (it always passes --target), and so the directory under target/ of a checkout's build.
 */
function hostTriple() {
  const arch = RUST_ARCH[process.arch] || process.arch
  switch (process.platform) {
    case 'linux':
      if (process.arch === 'arm') return `${arch}-unknown-linux-${linuxIsMusl() ? 'musleabihf' : 'gnueabihf'}`
      return `${arch}-unknown-linux-${linuxIsMusl() ? 'musl' : 'gnu'}`
    case 'darwin':
      return `${arch}-apple-darwin`
    case 'win32':
      return `${arch}-pc-windows-msvc`
    default:
      return `${arch}-unknown-${process.platform}`
  }
}

/**
 * Where a checkout's build puts the `processlock` command and the examples, for `profile`
 * (release: `npm run build`; debug: `npm run build:debug`). One directory for the addon and the
 * command, so that cargo compiles every crate they share once (scripts/build.js).
 */
function buildDir(profile = 'release') {
  return path.join(ROOT, 'target', hostTriple(), profile)
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
    .map((profile) => path.join(buildDir(profile), EXE))
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

/** The file name `npm pack` gives a package's tarball. */
function tarball(name, version) {
  return `${name.replace(/^@/, '').replace('/', '-')}-${version}.tgz`
}

/**
 * What to do when this platform's package cannot be installed from the registry: in a checkout,
 * build it; installed (node_modules), get both packages as tarballs from a clone.
 */
function notPublishedAdvice() {
  const { name, version } = require('../package.json')
  const platformPackage = `${name}-${abi()}`
  if (isFile(path.join(ROOT, 'Cargo.toml'))) return `In this checkout of ${name} (${ROOT}), run "npm run build".`
  return (
    `If npm answers 404 (${platformPackage} is not published), build both packages from a clone of ` +
    `${name} with "npm run pack" and install the two tarballs it writes into pack/:\n` +
    `  npm install <clone>/pack/${tarball(name, version)} <clone>/pack/${tarball(platformPackage, version)}`
  )
}

function findBinary() {
  const { name, paths } = candidates()
  const hit = paths.find(isFile)
  if (hit) return hit
  const { name: pkg, version } = require('../package.json')
  const looked = paths.length ? paths.join(', ') : '(nothing)'
  process.stderr.write(
    `processlock: the processlock command for this platform is missing: install ${pkg}-${name}\n` +
      `  npm install ${pkg}-${name}@${version}\n` +
      `It is an optional dependency of ${pkg}, left out by --omit=optional (or --no-optional).\n` +
      `${notPublishedAdvice()}\n(looked at: ${looked})\n`,
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

module.exports = { abi, buildDir, candidates, hostTriple, linuxIsMusl, notPublishedAdvice, EXE }
