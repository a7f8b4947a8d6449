#!/usr/bin/env node
'use strict'
// `npm run pack`: the two npm packages this machine needs, as tarballs, from a checkout, for use
// before they are published (or from a fork, a branch, a private build).
//
//   npm run pack [-- --out DIR] [-- --no-build]
//
// Writes into pack/ (or DIR):
//   trader-processlock-<version>.tgz              the main package, whose package.json names the
//                                                 platform package of every target in napi.targets
//                                                 as optionalDependencies at the same version, as
//                                                 the published one does;
//   trader-processlock-<abi>-<version>.tgz        this machine's platform package: the addon
//                                                 (processlock.<abi>.node) and the `processlock`
//                                                 command.
// Installed together (npm install ./pack/*.tgz) they work offline; npm skips the other platforms'
// optional packages.
//
// Steps, with napi-rs's own tooling where it does the job:
//   1. `npm run build` (scripts/build.js; cargo rebuilds only what changed), unless --no-build;
//   2. the platform package: the committed npm/<abi>/ manifest, the addon put in by
//      `napi artifacts`, and the command (which napi-rs knows nothing of) copied beside it;
//   3. the main package: `npm pack` of the checkout, its manifest given the optionalDependencies
//      that `napi pre-publish` writes before publishing, computed by napi-rs's config reader
//      (pre-publish itself checks that every platform's artifact is there, so it cannot run
//      with one);
//   4. `npm pack` of both. The checkout is left as it was: everything is staged under the output.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { abi, buildDir, EXE } = require('../bin/processlock.js')
const { build } = require('./build.js')

const ROOT = path.resolve(__dirname, '..')
const MANIFEST = require('../package.json')
const isWindows = process.platform === 'win32'
const napi = path.join(ROOT, 'node_modules', '.bin', isWindows ? 'napi.cmd' : 'napi')
const npm = isWindows ? 'npm.cmd' : 'npm'

function fail(message) {
  console.error(`pack: ${message}`)
  process.exit(1)
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, {
    cwd: ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    shell: isWindows,
    ...opts,
  })
  if (r.error) fail(`${cmd}: ${r.error.message}`)
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}\n${r.stdout}${r.stderr}`)
  return r.stdout
}

/** `npm pack` of `dir` into `dest`: the tarball's path. */
function npmPack(dir, dest) {
  const out = run(npm, ['pack', '--json', '--pack-destination', dest], { cwd: dir })
  const [report] = JSON.parse(out.slice(out.indexOf('[')))
  return path.join(dest, report.filename)
}

function unpack(tarball, dir) {
  fs.mkdirSync(dir, { recursive: true })
  run('tar', ['-xzf', tarball, '-C', dir, '--strip-components=1'])
}

/** The optionalDependencies `napi pre-publish` gives the main package: every target's package. */
async function optionalDependencies() {
  // @napi-rs/cli is ESM inside, with a CommonJS entry that loads it.
  const { readNapiConfig } = require('@napi-rs/cli')
  const config = await readNapiConfig(path.join(ROOT, 'package.json'))
  return Object.fromEntries(config.targets.map((t) => [`${config.packageName}-${t.platformArchABI}`, MANIFEST.version]))
}

function parseArgs(argv) {
  const opts = { out: path.join(ROOT, 'pack'), build: true }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--no-build') opts.build = false
    else if (argv[i] === '--out' && i + 1 < argv.length) opts.out = path.resolve(argv[++i])
    else fail(`usage: npm run pack [-- --out DIR] [-- --no-build] (unknown: ${argv[i]})`)
  }
  return opts
}

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const platform = abi()
  const addon = path.join(ROOT, `${MANIFEST.napi.binaryName}.${platform}.node`)
  const command = path.join(buildDir('release'), EXE)

  if (opts.build) {
    console.log('pack: npm run build')
    const r = build()
    if (r.status !== 0) fail(`the build failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`)
  }
  for (const [what, file] of [
    ['the addon', addon],
    ['the processlock command', command],
    ['the generated loader', path.join(ROOT, 'binding.js')],
  ]) {
    if (!fs.existsSync(file)) fail(`${what} (${file}) is missing: run "npm run build" first`)
  }
  if (!fs.existsSync(path.join(ROOT, 'npm', platform, 'package.json'))) {
    fail(`${platform} is not one of this package's targets (npm/${platform}/ does not exist)`)
  }

  fs.mkdirSync(opts.out, { recursive: true })
  const stage = fs.mkdtempSync(path.join(opts.out, '.stage-'))
  try {
    // 2. The platform package, staged as napi-rs lays it out (npm/<abi>/ beside a package.json
    //    whose napi.targets is this one platform), filled by `napi artifacts`.
    const built = path.join(stage, 'built')
    fs.mkdirSync(built)
    fs.copyFileSync(addon, path.join(built, path.basename(addon)))
    const platformDir = path.join(stage, 'npm', platform)
    fs.mkdirSync(platformDir, { recursive: true })
    for (const f of fs.readdirSync(path.join(ROOT, 'npm', platform))) {
      if (f === 'package.json' || f.endsWith('.md'))
        fs.copyFileSync(path.join(ROOT, 'npm', platform, f), path.join(platformDir, f))
    }
    const triple = MANIFEST.napi.targets.find((t) => platformOf(t) === platform)
    const stagedManifest = { ...MANIFEST, napi: { ...MANIFEST.napi, targets: [triple] } }
    fs.writeFileSync(path.join(stage, 'package.json'), `${JSON.stringify(stagedManifest, null, 2)}\n`)
    run(napi, ['artifacts', '--cwd', stage, '--output-dir', 'built', '--npm-dir', 'npm'])
    fs.copyFileSync(command, path.join(platformDir, EXE))
    if (!isWindows) fs.chmodSync(path.join(platformDir, EXE), 0o755)

    // 3. The main package, as published.
    const raw = npmPack(ROOT, stage)
    const mainDir = path.join(stage, 'main')
    unpack(raw, mainDir)
    const manifest = JSON.parse(fs.readFileSync(path.join(mainDir, 'package.json'), 'utf8'))
    manifest.optionalDependencies = await optionalDependencies()
    fs.writeFileSync(path.join(mainDir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`)

    // 4. Both tarballs, replacing those of an earlier run.
    const tarballs = [npmPack(mainDir, stage), npmPack(platformDir, stage)].map((staged) => {
      const dest = path.join(opts.out, path.basename(staged))
      fs.renameSync(staged, dest)
      return dest
    })
    console.log(`pack: wrote into ${opts.out}:`)
    for (const t of tarballs) console.log(`  ${path.basename(t)}  (${(fs.statSync(t).size / 1024).toFixed(0)} kB)`)
    console.log(`Install both in an app (offline is fine):\n  npm install ${tarballs.map(quote).join(' ')}`)
  } finally {
    fs.rmSync(stage, { recursive: true, force: true })
  }
}

/** The napi-rs platform name of a target triple (its parseTriple, from the build tools). */
function platformOf(triple) {
  return require('@napi-rs/cli').parseTriple(triple).platformArchABI
}

function quote(p) {
  return /^[\w./:@+-]+$/.test(p) ? p : `'${p.replace(/'/g, "'\\''")}'`
}

main().catch((e) => fail(e.stack || e.message))
