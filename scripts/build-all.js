#!/usr/bin/env node
'use strict'

// Build @trader/processlock for every release platform this host can build, and check each artifact.
//
//   npm run build:all                     everything this host can do
//   node scripts/build-all.js --targets aarch64-unknown-linux-musl,darwin-arm64
//   node scripts/build-all.js --skip-host --targets x86_64-apple-darwin   (CI matrix leg)
//   node scripts/build-all.js --collect artifacts   (CI publish: artifacts/ -> npm/<abi>/, then check)
//
// The napi CLI builds the addon (`napi build -x`, which links Linux targets with zig through
// cargo-zigbuild) and collects the addons for publishing (`napi artifacts`). This script adds
// what it does not do: the `processlock` CLI binary of each target, both artifacts copied into
// npm/<abi>/, and checks that each one is the right format, architecture and libc, and asks for
// no glibc symbol above the floor (--glibc, default 2.17) that lets it load on old distributions.
//
// Per target, depending on the host:
//   Linux targets from a Linux host: zig cross-build; gnu pinned to the glibc floor, musl CLIs static.
//   macOS targets on macOS, Windows on Windows: native `napi build --target` / `cargo build --target`.
//   Anything else (macOS and Windows from Linux): `cargo check` and `cargo clippy -D warnings` only.
// Every step runs (unless --fail-fast); the run ends with a summary and exits non-zero on a failure.
//
// Prerequisites on Linux: scripts/install-cross.sh (rustup targets, zig, cargo-zigbuild, file, readelf).

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { parseTriple } = require('@napi-rs/cli')

const ROOT = path.resolve(__dirname, '..')
const { napi } = require('../package.json')
const BINARY_NAME = napi.binaryName // also the CLI's [[bin]] name
const CLI_PACKAGE = 'processlock-cli'
// { triple, platformArchABI, platform, arch, abi }, the way `napi build` names its outputs.
const TARGETS = napi.targets.map(parseTriple)
const isWindows = process.platform === 'win32'

function usage(code) {
  ;(code ? console.error : console.log)(`usage: node scripts/build-all.js [options]
  --targets LIST     comma-separated triples or abi names (default: package.json napi.targets)
  --skip-host        do not run \`npm run build\` (host addon, binding.js, binding.d.ts, host CLI)
  --skip-checks      do not run cargo check/clippy for targets that cannot be linked here
  --glibc VERSION    glibc floor of the gnu targets (default 2.17; "" = zig's default, no ceiling check)
  --no-smoke         do not load/run the artifacts this host can execute
  --fail-fast        stop at the first failed step
  --collect DIR      do not build: \`napi artifacts\` from DIR plus the CLI binaries found in
                     DIR/*<abi>/ into npm/<abi>/, then check every package (all targets)
  -h, --help         this text`)
  process.exit(code)
}

function parseArgs(argv) {
  const opts = {
    targets: TARGETS,
    skipHost: false,
    skipChecks: false,
    glibc: '2.17',
    smoke: true,
    failFast: false,
    collect: null,
  }
  const flags = { '--skip-host': 'skipHost', '--skip-checks': 'skipChecks', '--fail-fast': 'failFast' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const value = () => (i + 1 < argv.length ? argv[++i] : usage(2))
    if (flags[a]) opts[flags[a]] = true
    else if (a === '--no-smoke') opts.smoke = false
    else if (a === '--glibc') opts.glibc = value()
    else if (a === '--collect') opts.collect = value()
    else if (a === '--targets') opts.targets = value().split(',').filter(Boolean).map(findTarget)
    else if (a === '-h' || a === '--help') usage(0)
    else {
      console.error(`unknown argument: ${a}`)
      usage(2)
    }
  }
  return opts
}

function findTarget(name) {
  const t = TARGETS.find((x) => x.triple === name.trim() || x.platformArchABI === name.trim())
  if (!t) {
    console.error(`unknown target ${name}; known: ${TARGETS.map((x) => x.triple).join(', ')}`)
    process.exit(2)
  }
  return t
}

// ---------------------------------------------------------------- steps

const steps = [] // { name, ok, seconds, note }
const seconds = (s) => `${s.toFixed(1)}s`

// Run one named step; `fn` throws to fail and may return a one-line note.
function step(opts, name, fn) {
  console.log(`\n\x1b[1m==> ${name}\x1b[0m`)
  const t0 = process.hrtime.bigint()
  let ok = true
  let note = ''
  try {
    note = fn() || ''
  } catch (e) {
    ok = false
    note = e.message
  }
  const s = { name, ok, seconds: Number(process.hrtime.bigint() - t0) / 1e9, note }
  steps.push(s)
  console.log(`${ok ? '<==' : '\x1b[31m<== FAILED:'} ${name} (${seconds(s.seconds)}) ${note}\x1b[0m`)
  if (!ok && opts.failFast) finish()
  return ok
}

// Run a command with inherited stdio; throw unless it exits 0.
function run(cmd, args, env = {}) {
  const shown = [...Object.entries(env).map(([k, v]) => `${k}=${v}`), cmd, ...args].join(' ')
  console.log(`$ ${shown}`)
  // npm and napi are .cmd shims on Windows, which only a shell can start.
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit', env: { ...process.env, ...env }, shell: isWindows })
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`)
  if (r.status !== 0) throw new Error(`\`${shown}\` exited with ${r.status ?? r.signal}`)
}

// stdout of a command, or null if it cannot be run or fails.
function capture(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  return r.error || r.status !== 0 ? null : r.stdout.trim()
}

const napiBin = path.join(ROOT, 'node_modules', '.bin', isWindows ? 'napi.cmd' : 'napi')

// ---------------------------------------------------------------- artifacts

const artifactsDir = (t) => path.join(ROOT, 'artifacts', t.platformArchABI)
const npmDir = (t) => path.join(ROOT, 'npm', t.platformArchABI)
const addonName = (t) => `${BINARY_NAME}.${t.platformArchABI}.node`
const cliName = (t) => (t.platform === 'win32' ? `${BINARY_NAME}.exe` : BINARY_NAME)
const built = [] // { t, kind: 'addon' | 'cli', file } in npm/<abi>/

// Copy a file into npm/<abi>/ and, for a build, into artifacts/<abi>/, which CI uploads.
function place(t, kind, src, dirs = [artifactsDir(t), npmDir(t)]) {
  const name = kind === 'addon' ? addonName(t) : cliName(t)
  for (const dir of dirs) {
    const dest = path.join(dir, name)
    if (path.resolve(dest) === path.resolve(src)) continue
    fs.mkdirSync(dir, { recursive: true })
    fs.copyFileSync(src, dest)
    if (kind === 'cli' && !isWindows) fs.chmodSync(dest, 0o755) // artifact zips lose the bit
  }
  built.push({ t, kind, file: path.join(npmDir(t), name) })
}

// A failed build must not leave an earlier run's artifact in npm/<abi>/ to be checked or published.
function clean(t) {
  for (const dir of [npmDir(t), artifactsDir(t)]) {
    for (const name of [addonName(t), cliName(t)]) fs.rmSync(path.join(dir, name), { force: true })
  }
}

// ---------------------------------------------------------------- checks

// What `file -b` prints for each platform's addon and CLI, and for each architecture. Apple's
// `file` names a Mach-O's architecture after its kind, the one from distributions before it.
const FILE_FORMAT = {
  linux: { addon: /^ELF 64-bit LSB shared object/, cli: /^ELF 64-bit LSB (pie )?executable/ },
  darwin: { addon: /^Mach-O 64-bit .*(bundle|dynamically linked shared library)/, cli: /^Mach-O 64-bit .*executable/ },
  win32: { addon: /^PE32\+ executable.*\(DLL\)/, cli: /^PE32\+ executable(?!.*\(DLL\))/ },
}
const FILE_ARCH = { x64: /x86[-_]64/, arm64: /aarch64|arm64/ }

// The libc an ELF file links, from `readelf`: its interpreter, else its needed libc, else none (static).
function elfLibc(readelf) {
  const interp = /Requesting program interpreter: (.*)\]/.exec(readelf)?.[1] || ''
  const needed = [...readelf.matchAll(/\(NEEDED\)\s+Shared library: \[(.*)\]/g)].map((m) => m[1])
  if (/ld-musl/.test(interp) || needed.includes('libc.so')) return 'musl'
  if (/ld-linux/.test(interp) || needed.includes('libc.so.6')) return 'gnu'
  return needed.length ? `unknown (${needed.join(', ')})` : 'static'
}

// The highest GLIBC_x.y[.z] version the file asks of the dynamic linker (its version needs).
function elfGlibc(readelf) {
  const versions = [...readelf.matchAll(/Name: GLIBC_(\d+(?:\.\d+)+)/g)].map((m) => m[1])
  return versions.sort(compareVersions).pop() || null
}

function compareVersions(a, b) {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    if ((pa[i] || 0) !== (pb[i] || 0)) return (pa[i] || 0) - (pb[i] || 0)
  }
  return 0
}

// Throw unless `file` is the right binary for target `t`; return what was found.
function check(t, kind, file, glibcFloor) {
  const type = capture('file', ['-b', file])
  if (type === null) {
    if (t.platform === 'linux') throw new Error('`file` is not installed: run scripts/install-cross.sh')
    return 'not checked: `file` is not installed (the smoke step loads it on its own host)'
  }
  const problems = []
  if (!FILE_FORMAT[t.platform][kind].test(type)) problems.push(`not a ${t.platform} ${kind}`)
  if (!FILE_ARCH[t.arch].test(type)) problems.push(`not ${t.arch}`)
  const found = [type.split(',').slice(0, 2).join(',')]
  if (t.platform === 'linux') {
    const readelf = capture('readelf', ['--program-headers', '--dynamic', '--version-info', '--wide', file])
    if (readelf === null) throw new Error(`readelf failed on ${file} (binutils missing? run scripts/install-cross.sh)`)
    const libc = elfLibc(readelf)
    const glibc = elfGlibc(readelf)
    const wanted = kind === 'cli' && t.abi === 'musl' ? 'static' : t.abi // a static CLI runs on any Linux
    if (libc !== wanted) problems.push(`libc ${libc}, expected ${wanted}`)
    if (t.abi === 'gnu' && glibcFloor && glibc && compareVersions(glibc, glibcFloor) > 0) {
      problems.push(`needs GLIBC_${glibc}, above the ${glibcFloor} floor`)
    }
    found.push(libc === 'static' ? 'static' : `libc ${libc}`, ...(glibc ? [`GLIBC <= ${glibc}`] : []))
  }
  if (problems.length) throw new Error(`${path.relative(ROOT, file)}: ${problems.join('; ')} (file: ${type})`)
  return found.join(', ')
}

// ---------------------------------------------------------------- builds

// How this host handles a target: 'zig' (Linux cross-build), 'native', or 'check'.
function strategyFor(t) {
  if (t.platform === 'linux') return process.platform === 'linux' ? 'zig' : 'check'
  return t.platform === process.platform ? 'native' : 'check'
}

function buildAddon(opts, t, napiTarget, extra = []) {
  step(opts, `${t.platformArchABI}: addon (napi build ${extra.join(' ')} --target ${napiTarget})`, () => {
    run(napiBin, [
      'build',
      '--platform',
      '--release',
      ...extra,
      '--target',
      napiTarget,
      '--output-dir',
      path.relative(ROOT, artifactsDir(t)),
      '--no-js',
      '--dts',
      'binding.d.ts',
    ])
    place(t, 'addon', path.join(artifactsDir(t), addonName(t)))
  })
}

function buildZig(opts, t, targetDir) {
  // cargo-zigbuild reads a ".2.17" suffix as the glibc version to link against.
  const zigTarget = t.abi === 'gnu' && opts.glibc ? `${t.triple}.${opts.glibc}` : t.triple
  buildAddon(opts, t, zigTarget, ['-x'])
  step(opts, `${t.platformArchABI}: CLI (cargo zigbuild --target ${zigTarget})`, () => {
    // RUSTFLAGS overrides the -crt-static that .cargo/config.toml sets for musl (for the cdylib),
    // so the musl CLI is static; its own target dir keeps the two flag sets from rebuilding
    // each other's dependencies.
    const dir = t.abi === 'musl' ? path.join(targetDir, 'static-cli') : targetDir
    const env = t.abi === 'musl' ? { RUSTFLAGS: '-C target-feature=+crt-static', CARGO_TARGET_DIR: dir } : {}
    run('cargo', ['zigbuild', '--release', '-p', CLI_PACKAGE, '--target', zigTarget], env)
    place(t, 'cli', path.join(dir, t.triple, 'release', cliName(t)))
  })
}

function buildNative(opts, t, targetDir) {
  buildAddon(opts, t, t.triple)
  step(opts, `${t.platformArchABI}: CLI (cargo build --target ${t.triple})`, () => {
    run('cargo', ['build', '--release', '-p', CLI_PACKAGE, '--target', t.triple])
    place(t, 'cli', path.join(targetDir, t.triple, 'release', cliName(t)))
  })
}

// From Linux, C code in build scripts (ring, under TLS) is compiled by zig: scripts/cross-env.sh.
function cargoCheck(args) {
  if (process.platform === 'linux') run('bash', ['-c', '. scripts/cross-env.sh && exec cargo "$@"', 'cargo', ...args])
  else run('cargo', args)
}

function checkOnly(opts, t) {
  step(opts, `${t.platformArchABI}: cargo check --target ${t.triple} --workspace`, () => {
    cargoCheck(['check', '--target', t.triple, '--workspace'])
    return 'type-checked only (cannot link here)'
  })
  step(opts, `${t.platformArchABI}: cargo clippy --target ${t.triple} --workspace -- -D warnings`, () => {
    cargoCheck(['clippy', '--target', t.triple, '--workspace', '--', '-D', 'warnings'])
  })
}

// Load or run what this host can execute: the artifact is usable, not just well-formed.
function smoke(opts) {
  const hostLibc = process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl'
  for (const { t, kind, file } of built) {
    if (t.platform !== process.platform || t.arch !== process.arch) continue
    if (kind === 'addon' && t.platform === 'linux' && t.abi !== hostLibc) continue // musl .node in glibc node
    if (kind === 'cli' && t.abi === 'gnu' && hostLibc !== 'gnu') continue
    step(opts, `${t.platformArchABI}: smoke ${path.basename(file)}`, () => {
      if (kind === 'addon') {
        const addon = require(file)
        const fns = Object.keys(addon).filter((k) => typeof addon[k] === 'function')
        if (!fns.length) throw new Error(`${file} exports no functions`)
        return `exports ${fns.length} functions`
      }
      const r = spawnSync(file, ['--version'], { encoding: 'utf8', timeout: 10000 })
      if (r.status !== 0) throw new Error(`${file} --version: ${r.error?.message || r.stderr || `exit ${r.status}`}`)
      return r.stdout.trim()
    })
  }
}

// CI publish: the addons through `napi artifacts` (which wants every configured target), the CLIs
// from the directory of each target's upload (artifacts/<anything>-<abi>/).
function collect(opts) {
  const dir = path.resolve(ROOT, opts.collect)
  step(opts, `napi artifacts --output-dir ${opts.collect}`, () => {
    run(napiBin, ['artifacts', '--output-dir', dir, '--npm-dir', 'npm'])
    for (const t of TARGETS) built.push({ t, kind: 'addon', file: path.join(npmDir(t), addonName(t)) })
  })
  step(opts, `CLI binaries from ${opts.collect}`, () => {
    const dirs = fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory())
    const missing = []
    for (const t of TARGETS) {
      const found = dirs
        .map((e) => path.join(dir, e.name, cliName(t)))
        .find((f) => f.endsWith(`${t.platformArchABI}${path.sep}${cliName(t)}`) && fs.existsSync(f))
      if (found)
        place(t, 'cli', found, [npmDir(t)]) // the collected directory stays as it was
      else missing.push(t.platformArchABI)
    }
    if (missing.length) throw new Error(`no CLI binary for ${missing.join(', ')}`)
  })
}

function verifyAll(opts) {
  for (const { t, kind, file } of built) {
    step(opts, `${t.platformArchABI}: check ${path.relative(ROOT, file)}`, () =>
      check(t, kind, file, t.abi === 'gnu' ? opts.glibc : null),
    )
  }
}

function preflight(opts, plan) {
  step(opts, 'preflight', () => {
    const notes = [capture('cargo', ['--version']) || fail('cargo is not on PATH')]
    if (!fs.existsSync(napiBin)) fail(`${napiBin} is missing: run \`npm ci\` first`)
    const installed = capture('rustup', ['target', 'list', '--installed'])
    const missing = plan
      .map(({ t }) => t.triple)
      .filter((x) => installed !== null && !installed.split('\n').includes(x))
    if (missing.length) fail(`rustup targets missing: ${missing.join(' ')} (run scripts/install-cross.sh)`)
    if (plan.some(({ how }) => how === 'zig')) {
      // cargo-zigbuild finds zig on PATH or as `python3 -m ziglang`, the PyPI package.
      notes.push(
        `zig ${capture('zig', ['version']) || capture('python3', ['-m', 'ziglang', 'version']) || fail('zig not found: run scripts/install-cross.sh')}`,
      )
      notes.push(
        capture('cargo-zigbuild', ['--version']) || fail('cargo-zigbuild not found: run scripts/install-cross.sh'),
      )
    }
    return notes.join('; ')
  })
}

function fail(message) {
  throw new Error(message)
}

function finish() {
  console.log('\n\x1b[1m==> summary\x1b[0m')
  for (const s of steps)
    console.log(`[${s.ok ? ' ok ' : 'FAIL'}] ${seconds(s.seconds).padStart(7)}  ${s.name}  ${s.note.split('\n')[0]}`)
  const failed = steps.filter((s) => !s.ok).length
  const total = seconds(steps.reduce((a, s) => a + s.seconds, 0))
  console.log(
    failed
      ? `\x1b[31mbuild-all: ${failed} of ${steps.length} steps FAILED (${total})\x1b[0m`
      : `build-all: all ${steps.length} steps passed (${total})`,
  )
  process.exit(failed ? 1 : 0)
}

function main() {
  const opts = parseArgs(process.argv.slice(2))
  if (opts.collect) {
    collect(opts)
  } else {
    const plan = opts.targets.map((t) => ({ t, how: strategyFor(t) }))
    for (const { t, how } of plan) console.log(`${t.triple.padEnd(28)} ${how}`)
    preflight(opts, plan)
    if (steps.some((s) => !s.ok)) finish()
    const targetDir = JSON.parse(capture('cargo', ['metadata', '--format-version', '1', '--no-deps'])).target_directory
    if (!opts.skipHost) step(opts, 'host: npm run build', () => run('npm', ['run', 'build']))
    for (const { t, how } of plan) {
      if (how !== 'check') clean(t)
      if (how === 'zig') buildZig(opts, t, targetDir)
      else if (how === 'native') buildNative(opts, t, targetDir)
      else if (!opts.skipChecks) checkOnly(opts, t)
    }
  }
  verifyAll(opts)
  if (opts.smoke && !opts.collect) smoke(opts)
  finish()
}

if (require.main === module) main()
else module.exports = { TARGETS, check }
