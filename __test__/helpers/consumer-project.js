'use strict'
// A consumer of @trader/processlock as npm would deliver it: the main package and this host's
// platform package as `npm run pack` writes them (the main one with the `optionalDependencies`
// that `napi prepublish` writes before publishing), both installed offline from the tarballs into
// a fresh project (the fixture in __test__/consumer/), with no Rust toolchain reachable.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { cleanEnv, run, runOk } = require('./consumer-proc')

const ROOT = path.resolve(__dirname, '..', '..')
const FIXTURE = path.join(ROOT, '__test__', 'consumer')
const NPM_CLI = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js')
const MAIN = require(path.join(ROOT, 'package.json'))
/** The napi platform name of this machine (linux-x64-gnu here), as the CLI launcher computes it. */
const ABI = require(path.join(ROOT, 'bin', 'processlock.js')).abi()
const EXE = process.platform === 'win32' ? 'processlock.exe' : 'processlock'

/** npm, run by the Node that runs the tests (no PATH lookup: the install step has no usable PATH). */
function npm(args, opts = {}) {
  const file = fs.existsSync(NPM_CLI) ? process.execPath : 'npm'
  const argv = fs.existsSync(NPM_CLI) ? [NPM_CLI, ...args] : args
  return runOk(file, argv, { timeoutMs: 240000, ...opts, env: opts.env || cleanEnv() })
}

/** Unpacks a tarball's package/ directory into `dir`. */
async function unpack(tarball, dir) {
  fs.mkdirSync(dir, { recursive: true })
  await runOk('tar', ['-xzf', tarball, '-C', dir, '--strip-components=1'])
  return dir
}

/**
 * What `napi prepublish` puts in the main package's optionalDependencies, computed by the napi
 * CLI's own config reader: `<napi.packageName>-<platformArchABI>` at the package's version, for
 * every target.
 */
async function napiOptionalDependencies() {
  // In a child: the CLI is ESM inside, which jest's module system does not load on Node 20. The
  // napi CLI needs Node >= 20.17: where the tests run on an older Node, NAPI_CLI_NODE names the
  // Node that runs it (CI passes the one that built the package).
  const script = `
    const { readNapiConfig } = require('@napi-rs/cli')
    readNapiConfig(${JSON.stringify(path.join(ROOT, 'package.json'))}).then((config) => {
      const deps = {}
      for (const t of config.targets) deps[config.packageName + '-' + t.platformArchABI] = config.packageJson.version
      console.log(JSON.stringify({ deps, abis: config.targets.map((t) => t.platformArchABI), packageName: config.packageName }))
    })`
  const r = await runOk(process.env.NAPI_CLI_NODE || process.execPath, ['-e', script], { cwd: ROOT })
  return JSON.parse(r.stdout)
}

/** Every file of an unpacked package under `dir`: [{ path, mode }], sorted by path. */
function filesOf(dir) {
  return fs
    .readdirSync(dir, { recursive: true })
    .filter((f) => fs.statSync(path.join(dir, f)).isFile())
    .map((f) => ({ path: f.split(path.sep).join('/'), mode: fs.statSync(path.join(dir, f)).mode & 0o777 }))
    .sort((a, b) => a.path.localeCompare(b.path))
}

/** A tarball `npm run pack` wrote, unpacked into `work`/`label`: { file, files, manifest, name, version }. */
async function inspectTarball(file, work, label) {
  const dir = await unpack(file, path.join(work, label))
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
  return { file, dir, files: filesOf(dir), manifest, name: manifest.name, version: manifest.version }
}

/**
 * Both packages as `npm run pack` writes them (the suite's build is done: --no-build), into
 * `work`/tarballs: the main package and this host's platform package. `published` is the main
 * one (it is packed as it is published). `napi` is what napi pre-publish would write, computed
 * here on its own to check the command against. The listings show that packing left the
 * checkout as it was.
 */
async function packAll(work) {
  const listing = () => ({
    root: fs.readdirSync(ROOT).sort(),
    platform: fs.readdirSync(path.join(ROOT, 'npm', ABI)).sort(),
  })
  const repoBefore = listing()
  const dest = path.join(work, 'tarballs')
  // What `npm run pack -- --no-build --out DEST` runs, with the Node of the build tools (the napi
  // CLI needs Node >= 20.17; NAPI_CLI_NODE names it where the tests run on an older one).
  if (MAIN.scripts.pack !== 'node scripts/pack.js') throw new Error(`unexpected pack script: ${MAIN.scripts.pack}`)
  const node = process.env.NAPI_CLI_NODE || process.execPath
  const [packed, napi] = await Promise.all([
    runOk(node, [path.join(ROOT, 'scripts', 'pack.js'), '--no-build', '--out', dest], { cwd: ROOT, timeoutMs: 240000 }),
    napiOptionalDependencies(),
  ])
  const tgz = fs.readdirSync(dest).filter((f) => f.endsWith('.tgz'))
  const file = (name) => {
    const wanted = `${name.replace(/^@/, '').replace('/', '-')}-${MAIN.version}.tgz`
    if (!tgz.includes(wanted))
      throw new Error(`npm run pack wrote no ${wanted} (found: ${tgz.join(', ')})\n${packed.stdout}`)
    return path.join(dest, wanted)
  }
  const main = await inspectTarball(file(MAIN.name), work, 'main-as-packed')
  const platform = await inspectTarball(file(`${MAIN.name}-${ABI}`), work, `platform-${ABI}`)
  return {
    main,
    platform,
    published: main,
    napi,
    tarballs: tgz.sort(),
    output: packed.stdout,
    repoBefore,
    repoAfter: listing(),
  }
}

/** A directory with stand-ins for the Rust toolchain that record any call and fail. */
function fakeToolchain(work) {
  const bin = path.join(work, 'no-rust-bin')
  const calls = path.join(work, 'toolchain-calls.log')
  fs.mkdirSync(bin)
  for (const tool of ['cargo', 'rustc', 'rustup', 'napi', 'cargo-zigbuild', 'zig', 'cc', 'gcc', 'node-gyp']) {
    fs.writeFileSync(path.join(bin, tool), `#!/bin/sh\necho "${tool} $*" >> '${calls}'\nexit 1\n`, { mode: 0o755 })
  }
  return { bin, calls }
}

/**
 * Lays out the consumer project in `work`/trader from the fixture, depending on the two
 * tarballs, and installs it with npm --offline and an empty cache, with a PATH that holds Node and
 * the recording toolchain stand-ins only. Then typescript, @types/node and jest are linked from
 * this repository's node_modules (the consumer's dev tools; nothing of ours).
 */
async function createProject(work, tarballs) {
  const dir = path.join(work, 'trader')
  fs.cpSync(FIXTURE, dir, { recursive: true })
  const template = path.join(dir, 'package.template.json')
  const pkg = JSON.parse(fs.readFileSync(template, 'utf8'))
  fs.unlinkSync(template)
  pkg.dependencies = {
    '@trader/processlock': `file:${path.relative(dir, tarballs.published.file)}`,
    [`@trader/processlock-${ABI}`]: `file:${path.relative(dir, tarballs.platform.file)}`,
  }
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(pkg, null, 2) + '\n')

  const toolchain = fakeToolchain(work)
  const cache = path.join(work, 'empty-npm-cache')
  const installEnv = cleanEnv({
    PATH: [toolchain.bin, path.dirname(process.execPath), '/usr/bin', '/bin'].join(path.delimiter),
    CARGO_HOME: path.join(work, 'no-cargo-home'),
    RUSTUP_HOME: path.join(work, 'no-rustup-home'),
    npm_config_cache: cache,
    npm_config_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    npm_config_loglevel: 'info',
  })
  const started = Date.now()
  const install = await npm(['install', '--offline', '--no-audit', '--no-fund'], { cwd: dir, env: installEnv })
  const installMs = Date.now() - started

  const linked = {}
  for (const name of ['typescript', '@types/node', 'jest']) {
    const target = path.join(dir, 'node_modules', name)
    fs.mkdirSync(path.dirname(target), { recursive: true })
    fs.symlinkSync(path.join(ROOT, 'node_modules', name), target, 'dir')
    linked[name] = require(path.join(ROOT, 'node_modules', name, 'package.json')).version
  }
  return { dir, install, installMs, toolchain, linked, cache }
}

/** tsc on one of the fixture's tsconfig files. */
function tsc(project, tsconfig) {
  return runOk(process.execPath, [path.join(project, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', tsconfig], {
    cwd: project,
  })
}

/**
 * Type-checks (strict) and builds both variants at once: CommonJS into build/cjs, ESM (nodenext)
 * into build/esm; and type-checks the ESM view of the package under node16 and bundler
 * resolution (their results are returned, for the tests to look at).
 */
async function build(project) {
  const check = (tsconfig) =>
    run(process.execPath, [path.join(project, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', tsconfig], {
      cwd: project,
    })
  const [cjs, esm, node16, bundler] = await Promise.all([
    tsc(project, 'tsconfig.cjs.json'),
    tsc(project, 'tsconfig.esm.json'),
    check('tsconfig.node16.json'),
    check('tsconfig.bundler.json'),
  ])
  // The project is "type": "module"; the CommonJS build says what it is.
  fs.writeFileSync(path.join(project, 'build', 'cjs', 'package.json'), '{ "type": "commonjs" }\n')
  return { cjs, esm, node16, bundler }
}

/** A fresh temp directory, by its real path (macOS's /var/folders is a symlink: children report
 *  real paths, and the tests compare paths). */
function tempWork(prefix = 'pl-consumer-') {
  return fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), prefix)))
}

module.exports = { ROOT, ABI, EXE, MAIN, FIXTURE, packAll, createProject, build, tempWork, unpack }
