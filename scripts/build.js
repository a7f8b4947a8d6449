#!/usr/bin/env node
'use strict'
// `npm run build` (release) and `npm run build:debug`: the Node addon and the `processlock`
// command, in one cargo run.
//
//   node scripts/build.js [--debug] [--test-tools]
//
// `napi build` always passes `--target <host triple>` to cargo, which puts its output under
// target/<triple>/, apart from a plain `cargo build` (target/release/). Building the command
// separately would compile every crate the two share a second time, and a second cargo run with
// other packages selected can resolve other features for a shared dependency and rebuild what
// depends on it. So the command rides along in the addon's cargo run (`napi build -- -p ...`):
// every crate is compiled once, and the command lands in target/<triple>/<profile>/ (buildDir in
// bin/processlock.js, where the launcher and the tests look).
//
// --test-tools adds what the tests run besides (the private PostgreSQL server of the JavaScript
// tests), in the same cargo run for the same reason.
const { spawnSync } = require('node:child_process')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const napi = path.join(ROOT, 'node_modules', '.bin', process.platform === 'win32' ? 'napi.cmd' : 'napi')

/** The cargo package selection of a build: the addon (the workspace's root package) and the command. */
function selection({ testTools = false } = {}) {
  const packages = ['-p', 'processlock-node', '-p', 'processlock-cli']
  // An explicit target list selects only those targets: the libraries and binaries are named too.
  return testTools ? [...packages, '-p', 'processlock-pg', '--lib', '--bins', '--example', 'pg_server'] : packages
}

/** The napi build command line (arguments after `napi`). */
function napiArgs({ debug = false, testTools = false } = {}) {
  return [
    'build',
    '--platform',
    ...(debug ? [] : ['--release']),
    '--js',
    'binding.js',
    '--dts',
    'binding.d.ts',
    '--no-const-enum',
    '--',
    ...selection({ testTools }),
  ]
}

/** Runs the build with its output on ours; returns spawnSync's result. */
function build(options = {}) {
  return spawnSync(napi, napiArgs(options), {
    cwd: ROOT,
    stdio: 'inherit',
    // napi is a .cmd shim on Windows, which only a shell starts.
    shell: process.platform === 'win32',
  })
}

if (require.main === module) {
  const args = process.argv.slice(2)
  const unknown = args.filter((a) => a !== '--debug' && a !== '--test-tools')
  if (unknown.length) {
    console.error(`usage: node scripts/build.js [--debug] [--test-tools] (unknown: ${unknown.join(' ')})`)
    process.exit(2)
  }
  const r = build({ debug: args.includes('--debug'), testTools: args.includes('--test-tools') })
  if (r.error) console.error(`build: ${napi}: ${r.error.message}`)
  process.exit(r.status ?? 1)
}

module.exports = { build, napiArgs }
