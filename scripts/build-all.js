#!/usr/bin/env node
'use strict'

// Build @trader/processlock for every release platform that this machine can
// build, verify each artifact, and type-check/lint the ones it cannot link.
//
//   npm run build:all                     everything this host can do
//   node scripts/build-all.js --targets aarch64-unknown-linux-musl,darwin-arm64
//   node scripts/build-all.js --skip-host --targets x86_64-apple-darwin   (CI matrix leg)
//   node scripts/build-all.js --collect artifacts   (CI publish: artifacts/<any>/ -> npm/<abi>/, verify)
//
// What happens to each target depends on the host:
//   Linux targets (x64/arm64, gnu/musl), from a Linux host: cross-built with
//     zig through cargo-zigbuild (`napi build -x` for the addon, `cargo zigbuild`
//     for the CLI). gnu targets are pinned to an old glibc (--glibc, default 2.17)
//     so the artifacts load on old distributions too; musl CLIs are static.
//   macOS targets on a macOS host, the Windows target on a Windows host: built
//     natively with `napi build --target` and `cargo build --target`.
//   Any other combination (macOS and Windows from Linux): `cargo check` and
//     `cargo clippy -- -D warnings` for that target; nothing is linked.
// Built artifacts land in artifacts/<abi>/ and are copied into npm/<abi>/ as
// processlock.<abi>.node and processlock[.exe]. Each one is checked: its header
// (ELF/Mach-O/PE, machine, libc) against the target, and `file` output when
// `file` is installed. The run ends with a summary table, and exits non-zero if
// any step failed (all steps run unless --fail-fast).
//
// Prerequisites on Linux: scripts/install-cross.sh (rustup targets, zig, cargo-zigbuild, file).

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const BINARY_NAME = 'processlock' // napi.binaryName and the CLI's [[bin]] name
const CLI_PACKAGE = 'processlock-cli'

const TARGETS = [
  { triple: 'x86_64-unknown-linux-gnu', abi: 'linux-x64-gnu', platform: 'linux', arch: 'x64', libc: 'gnu' },
  { triple: 'x86_64-unknown-linux-musl', abi: 'linux-x64-musl', platform: 'linux', arch: 'x64', libc: 'musl' },
  { triple: 'aarch64-unknown-linux-gnu', abi: 'linux-arm64-gnu', platform: 'linux', arch: 'arm64', libc: 'gnu' },
  { triple: 'aarch64-unknown-linux-musl', abi: 'linux-arm64-musl', platform: 'linux', arch: 'arm64', libc: 'musl' },
  { triple: 'x86_64-apple-darwin', abi: 'darwin-x64', platform: 'darwin', arch: 'x64' },
  { triple: 'aarch64-apple-darwin', abi: 'darwin-arm64', platform: 'darwin', arch: 'arm64' },
  { triple: 'x86_64-pc-windows-msvc', abi: 'win32-x64-msvc', platform: 'win32', arch: 'x64' },
]

// ---------------------------------------------------------------- arguments

function usage(code) {
  const text = `usage: node scripts/build-all.js [options]
  --targets LIST     comma-separated triples or abi names (default: all ${TARGETS.length})
  --skip-host        do not build the host addon + binding.js/binding.d.ts + host CLI
  --skip-checks      do not run cargo check/clippy for targets that cannot be linked here
  --glibc VERSION    glibc floor for zig-built gnu targets (default 2.17; "" = zig's default)
  --no-smoke         do not load/run the artifacts this host can execute
  --fail-fast        stop at the first failed step
  --collect DIR      do not build: copy every .node / CLI binary found under DIR into
                     npm/<abi>/, then verify all ${TARGETS.length} platform packages are complete
  -h, --help         this text`
  ;(code ? console.error : console.log)(text)
  process.exit(code)
}

function parseArgs(argv) {
  const opts = { targets: null, skipHost: false, skipChecks: false, glibc: '2.17', smoke: true, failFast: false, collect: null }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) { console.error(`${a} needs a value`); usage(2) }
      return argv[++i]
    }
    if (a === '--targets') opts.targets = value().split(',').map((s) => s.trim()).filter(Boolean)
    else if (a === '--skip-host') opts.skipHost = true
    else if (a === '--skip-checks') opts.skipChecks = true
    else if (a === '--glibc') opts.glibc = value()
    else if (a === '--no-smoke') opts.smoke = false
    else if (a === '--fail-fast') opts.failFast = true
    else if (a === '--collect') opts.collect = value()
    else if (a === '-h' || a === '--help') usage(0)
    else { console.error(`unknown argument: ${a}`); usage(2) }
  }
  if (opts.targets) {
    opts.targets = opts.targets.map((name) => {
      const t = TARGETS.find((x) => x.triple === name || x.abi === name)
      if (!t) { console.error(`unknown target ${name}; known: ${TARGETS.map((x) => x.triple).join(', ')}`); process.exit(2) }
      return t
    })
  } else {
    opts.targets = TARGETS
  }
  return opts
}

// ---------------------------------------------------------------- running steps

const steps = [] // { name, ok, seconds, note }
const isWindows = process.platform === 'win32'

class StepFailure extends Error {}

function fmtSeconds(s) {
  return s >= 60 ? `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${s.toFixed(1)}s`
}

function banner(text) {
  console.log(`\n\x1b[1m==> ${text}\x1b[0m`)
}

// Run one named step. `fn` throws to fail; its return value (a string) is a note.
function step(opts, name, fn) {
  banner(name)
  const t0 = process.hrtime.bigint()
  let ok = true
  let note = ''
  try {
    note = fn() || ''
  } catch (e) {
    ok = false
    note = e instanceof StepFailure ? e.message : (e && e.stack) || String(e)
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  steps.push({ name, ok, seconds, note })
  if (ok) console.log(`<== ${name}: ok (${fmtSeconds(seconds)})`)
  else {
    console.error(`\x1b[31m<== ${name}: FAILED (${fmtSeconds(seconds)})\n    ${note.split('\n').join('\n    ')}\x1b[0m`)
    if (opts.failFast) finish(opts)
  }
  return ok
}

// Run a command with inherited stdio; throw StepFailure unless it exits 0.
function run(cmd, args, { env, cwd = ROOT } = {}) {
  const shown = [...Object.entries(env || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`), cmd, ...args].join(' ')
  console.log(`$ ${shown}`)
  const r = spawnSync(cmd, args, {
    cwd,
    stdio: 'inherit',
    env: { ...process.env, ...(env || {}) },
    shell: isWindows && !/\.exe$/i.test(cmd), // npx/napi are .cmd shims on Windows
  })
  if (r.error) throw new StepFailure(`${cmd}: ${r.error.message}`)
  if (r.status !== 0) throw new StepFailure(`\`${shown}\` exited with ${r.status === null ? `signal ${r.signal}` : r.status}`)
}

// Run a command and capture stdout; returns null if it cannot be run or fails.
function capture(cmd, args, { cwd = ROOT } = {}) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  if (r.error || r.status !== 0) return null
  return r.stdout.trim()
}

function napiCli() {
  const bin = path.join(ROOT, 'node_modules', '.bin', isWindows ? 'napi.cmd' : 'napi')
  if (!fs.existsSync(bin)) throw new StepFailure(`${bin} is missing: run \`npm ci\` (or npm install) first`)
  return bin
}

// ---------------------------------------------------------------- host facts

const HOST = { platform: process.platform, arch: process.arch }

function hostLibc() {
  if (process.platform !== 'linux') return undefined
  const report = process.report && process.report.getReport && process.report.getReport()
  return report && report.header && report.header.glibcVersionRuntime ? 'gnu' : 'musl'
}

function cargoTargetDir() {
  if (process.env.CARGO_TARGET_DIR) return path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
  const out = capture('cargo', ['metadata', '--format-version', '1', '--no-deps'])
  if (out) {
    try { return JSON.parse(out).target_directory } catch { /* fall through */ }
  }
  return path.join(ROOT, 'target')
}

// How this host handles a target: 'zig' (Linux cross-build), 'native', or 'check'.
function strategyFor(t) {
  if (t.platform === 'linux') return HOST.platform === 'linux' ? 'zig' : 'check'
  if (t.platform === HOST.platform) return 'native'
  return 'check'
}

function zigAvailable() {
  if (capture('zig', ['version'])) return `zig ${capture('zig', ['version'])}`
  for (const py of ['python3', 'python']) {
    const v = capture(py, ['-m', 'ziglang', 'version'])
    if (v) return `zig ${v} (${py} -m ziglang)`
  }
  return null
}

// ---------------------------------------------------------------- artifact checks

function readHeader(file, length = 4096) {
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    const n = fs.readSync(fd, buf, 0, length, 0)
    return buf.subarray(0, n)
  } finally {
    fs.closeSync(fd)
  }
}

// Minimal ELF64 little-endian reader: machine, type, interpreter, DT_NEEDED,
// and the highest GLIBC_x.y version the file asks for.
function inspectElf(file) {
  const b = fs.readFileSync(file)
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) return null
  if (b[4] !== 2 || b[5] !== 1) return { format: 'ELF', note: 'not ELF64 little-endian' }
  const type = b.readUInt16LE(16)
  const machine = { 0x3e: 'x64', 0xb7: 'arm64' }[b.readUInt16LE(18)] || `machine 0x${b.readUInt16LE(18).toString(16)}`
  const phoff = Number(b.readBigUInt64LE(32))
  const phentsize = b.readUInt16LE(54)
  const phnum = b.readUInt16LE(56)
  let interp = null
  let dynamic = null
  const loads = []
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize
    const pType = b.readUInt32LE(o)
    const offset = Number(b.readBigUInt64LE(o + 8))
    const vaddr = Number(b.readBigUInt64LE(o + 16))
    const filesz = Number(b.readBigUInt64LE(o + 32))
    if (pType === 3) interp = b.toString('latin1', offset, offset + filesz).replace(/\0.*$/s, '')
    if (pType === 2) dynamic = { offset, filesz }
    if (pType === 1) loads.push({ offset, vaddr, filesz })
  }
  const needed = []
  if (dynamic) {
    const entries = []
    let strtabAddr = null
    for (let o = dynamic.offset; o + 16 <= dynamic.offset + dynamic.filesz; o += 16) {
      const tag = Number(b.readBigInt64LE(o))
      const val = Number(b.readBigUInt64LE(o + 8))
      if (tag === 0) break
      if (tag === 5) strtabAddr = val
      entries.push([tag, val])
    }
    // DT_STRTAB is a virtual address: map it to a file offset through PT_LOAD.
    const seg = strtabAddr !== null && loads.find((l) => strtabAddr >= l.vaddr && strtabAddr < l.vaddr + l.filesz)
    if (seg) {
      const strtab = strtabAddr - seg.vaddr + seg.offset
      for (const [tag, val] of entries) {
        if (tag === 1) {
          const start = strtab + val
          needed.push(b.toString('latin1', start, b.indexOf(0, start)))
        }
      }
    }
  }
  let glibc = null
  for (const m of b.toString('latin1').matchAll(/GLIBC_(\d+)\.(\d+)(?:\.(\d+))?\0/g)) {
    const v = [Number(m[1]), Number(m[2]), Number(m[3] || 0)]
    if (!glibc || v[0] > glibc[0] || (v[0] === glibc[0] && (v[1] > glibc[1] || (v[1] === glibc[1] && v[2] > glibc[2])))) glibc = v
  }
  let libc = 'none'
  if (interp && /ld-musl/.test(interp)) libc = 'musl'
  else if (interp && /ld-linux/.test(interp)) libc = 'gnu'
  else if (needed.includes('libc.so')) libc = 'musl'
  else if (needed.includes('libc.so.6')) libc = 'gnu'
  else if (!dynamic) libc = 'static'
  return {
    format: 'ELF',
    kind: type === 3 ? (interp ? 'pie-executable' : 'shared-object') : type === 2 ? 'executable' : `type ${type}`,
    machine,
    interp,
    needed,
    libc,
    glibc: glibc ? glibc.slice(0, glibc[2] ? 3 : 2).join('.') : null,
  }
}

function inspectMachO(file) {
  const b = readHeader(file, 32)
  if (b.length < 16) return null
  const magic = b.readUInt32LE(0)
  if (magic !== 0xfeedfacf) return null // 64-bit little-endian only (fat binaries are not produced here)
  const cpu = { 0x01000007: 'x64', 0x0100000c: 'arm64' }[b.readUInt32LE(4)] || `cputype 0x${b.readUInt32LE(4).toString(16)}`
  const kind = { 2: 'executable', 6: 'dylib', 8: 'bundle' }[b.readUInt32LE(12)] || `filetype ${b.readUInt32LE(12)}`
  return { format: 'Mach-O', kind, machine: cpu }
}

function inspectPe(file) {
  const b = readHeader(file, 1024)
  if (b.length < 64 || b.toString('latin1', 0, 2) !== 'MZ') return null
  const pe = b.readUInt32LE(0x3c)
  if (pe + 24 > b.length || b.toString('latin1', pe, pe + 4) !== 'PE\0\0') return { format: 'PE', note: 'bad PE header' }
  const machine = { 0x8664: 'x64', 0xaa64: 'arm64', 0x14c: 'ia32' }[b.readUInt16LE(pe + 4)] || `machine 0x${b.readUInt16LE(pe + 4).toString(16)}`
  const characteristics = b.readUInt16LE(pe + 22)
  return { format: 'PE', kind: characteristics & 0x2000 ? 'dll' : 'executable', machine }
}

function inspect(file) {
  return inspectElf(file) || inspectMachO(file) || inspectPe(file) || { format: 'unknown' }
}

// Throw unless `file` is the right kind of binary for target `t`.
// kind: 'addon' (the .node) or 'cli' (the executable).
function verifyArtifact(t, kind, file, glibcFloor) {
  const info = inspect(file)
  const problems = []
  const want = { linux: 'ELF', darwin: 'Mach-O', win32: 'PE' }[t.platform]
  if (info.format !== want) problems.push(`format ${info.format}, expected ${want}`)
  else if (info.machine !== t.arch) problems.push(`machine ${info.machine}, expected ${t.arch}`)
  if (t.platform === 'linux' && info.format === 'ELF') {
    if (kind === 'addon') {
      if (info.kind !== 'shared-object') problems.push(`ELF ${info.kind}, expected a shared object`)
      if (info.libc !== t.libc) problems.push(`links libc ${info.libc} (${info.needed.join(', ')}), expected ${t.libc}`)
    } else if (t.libc === 'musl') {
      if (info.libc !== 'static') problems.push(`musl CLI should be static, found ${info.libc} (interp ${info.interp})`)
    } else if (info.libc !== 'gnu') {
      problems.push(`gnu CLI links ${info.libc}, expected glibc`)
    }
    if (t.libc === 'gnu' && glibcFloor && info.glibc && compareVersions(info.glibc, glibcFloor) > 0) {
      problems.push(`needs GLIBC_${info.glibc}, above the ${glibcFloor} floor`)
    }
  }
  if (t.platform === 'darwin' && info.format === 'Mach-O') {
    const ok = kind === 'addon' ? ['dylib', 'bundle'].includes(info.kind) : info.kind === 'executable'
    if (!ok) problems.push(`Mach-O ${info.kind} for the ${kind}`)
  }
  if (t.platform === 'win32' && info.format === 'PE') {
    if (info.kind !== (kind === 'addon' ? 'dll' : 'executable')) problems.push(`PE ${info.kind} for the ${kind}`)
  }
  if (problems.length) throw new StepFailure(`${path.relative(ROOT, file)}: ${problems.join('; ')}`)
  return info
}

function compareVersions(a, b) {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] || 0) - (pb[i] || 0)
    if (d) return d
  }
  return 0
}

function describe(info) {
  const parts = [info.format, info.kind, info.machine]
  if (info.format === 'ELF') {
    parts.push(info.libc === 'static' ? 'static' : `libc ${info.libc}`)
    if (info.glibc) parts.push(`GLIBC<=${info.glibc}`)
  }
  return parts.filter(Boolean).join(', ')
}

let fileCommand // undefined: not probed yet; null: not installed
function fileOutput(file) {
  if (fileCommand === undefined) fileCommand = capture('file', ['--version']) !== null ? 'file' : null
  if (!fileCommand) return '(file not installed)'
  const out = capture('file', ['-b', file])
  return out === null ? '(file failed)' : out
}

// ---------------------------------------------------------------- the build

const artifactsDir = (t) => path.join(ROOT, 'artifacts', t.abi)
const npmDir = (t) => path.join(ROOT, 'npm', t.abi)
const addonName = (t) => `${BINARY_NAME}.${t.abi}.node`
const cliName = (t) => (t.platform === 'win32' ? `${BINARY_NAME}.exe` : BINARY_NAME)

const produced = [] // { t, kind, file } copied into npm/<abi>/

function copyInto(t, kind, src) {
  const name = kind === 'addon' ? addonName(t) : cliName(t)
  if (!fs.existsSync(src)) throw new StepFailure(`expected artifact not found: ${src}`)
  fs.mkdirSync(npmDir(t), { recursive: true })
  fs.mkdirSync(artifactsDir(t), { recursive: true })
  const dests = [path.join(npmDir(t), name)]
  if (path.resolve(path.dirname(src)) !== path.resolve(artifactsDir(t))) dests.push(path.join(artifactsDir(t), name))
  for (const dest of dests) {
    if (path.resolve(dest) === path.resolve(src)) continue
    fs.rmSync(dest, { force: true })
    fs.copyFileSync(src, dest)
    if (kind === 'cli' && !isWindows) fs.chmodSync(dest, 0o755)
  }
  produced.push({ t, kind, file: dests[0] })
}

function buildHost(opts) {
  const napi = napiCli()
  step(opts, 'host: napi build (binding.js, binding.d.ts, host .node)', () => {
    run(napi, ['build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts', '--no-const-enum'])
    for (const f of ['binding.js', 'binding.d.ts']) {
      if (!fs.existsSync(path.join(ROOT, f))) throw new StepFailure(`napi build did not write ${f}`)
    }
  })
  step(opts, 'host: cargo build -p processlock-cli', () => {
    run('cargo', ['build', '--release', '-p', CLI_PACKAGE])
  })
}

// Remove what an earlier run left for `t`, so a failed step never leaves a
// stale artifact in npm/<abi>/ to be verified or published.
function cleanTarget(t) {
  for (const dir of [npmDir(t), artifactsDir(t)]) {
    for (const name of [addonName(t), cliName(t)]) fs.rmSync(path.join(dir, name), { force: true })
  }
}

function buildZig(opts, t, targetDir) {
  cleanTarget(t)
  // cargo-zigbuild reads a ".2.17" suffix as the glibc version to link against.
  const zigTarget = t.libc === 'gnu' && opts.glibc ? `${t.triple}.${opts.glibc}` : t.triple
  const napi = napiCli()
  step(opts, `${t.abi}: addon (napi build -x --target ${zigTarget})`, () => {
    // napi adds `-C target-feature=-crt-static` itself for musl targets: a cdylib needs a dynamic C runtime.
    run(napi, ['build', '--platform', '--release', '-x', '--target', zigTarget,
      '--output-dir', path.relative(ROOT, artifactsDir(t)), '--no-js', '--dts', 'binding.d.ts'])
    copyInto(t, 'addon', path.join(artifactsDir(t), addonName(t)))
  })
  step(opts, `${t.abi}: CLI (cargo zigbuild --target ${zigTarget})`, () => {
    // A static musl executable runs on any Linux; RUSTFLAGS overrides the -crt-static
    // that .cargo/config.toml sets for musl (which exists for the cdylib).
    // Its own target dir keeps the two RUSTFLAGS from rebuilding each other's dependencies.
    const dir = t.libc === 'musl' ? path.join(targetDir, 'static-cli') : targetDir
    const env = t.libc === 'musl' ? { RUSTFLAGS: '-C target-feature=+crt-static', CARGO_TARGET_DIR: dir } : undefined
    run('cargo', ['zigbuild', '--release', '-p', CLI_PACKAGE, '--target', zigTarget], { env })
    copyInto(t, 'cli', path.join(dir, t.triple, 'release', cliName(t)))
  })
}

function buildNative(opts, t, targetDir) {
  cleanTarget(t)
  const napi = napiCli()
  step(opts, `${t.abi}: addon (napi build --target ${t.triple})`, () => {
    run(napi, ['build', '--platform', '--release', '--target', t.triple,
      '--output-dir', path.relative(ROOT, artifactsDir(t)), '--no-js', '--dts', 'binding.d.ts'])
    copyInto(t, 'addon', path.join(artifactsDir(t), addonName(t)))
  })
  step(opts, `${t.abi}: CLI (cargo build --target ${t.triple})`, () => {
    run('cargo', ['build', '--release', '-p', CLI_PACKAGE, '--target', t.triple])
    copyInto(t, 'cli', path.join(targetDir, t.triple, 'release', cliName(t)))
  })
}

function checkOnly(opts, t) {
  step(opts, `${t.abi}: cargo check --target ${t.triple} --workspace`, () => {
    run('cargo', ['check', '--target', t.triple, '--workspace'])
    return 'type-checked only (cannot link here)'
  })
  step(opts, `${t.abi}: cargo clippy --target ${t.triple} --workspace -- -D warnings`, () => {
    run('cargo', ['clippy', '--target', t.triple, '--workspace', '--', '-D', 'warnings'])
  })
}

// Load or run what this host can execute: proves the artifact is not just
// well-formed but usable. Anything else is reported as not runnable here.
function smoke(opts) {
  const libc = hostLibc()
  const runnable = produced.filter(({ t }) =>
    t.platform === HOST.platform && t.arch === HOST.arch)
  for (const { t, kind, file } of runnable) {
    if (kind === 'addon') {
      if (t.platform === 'linux' && t.libc !== libc) continue // a musl .node cannot load in a glibc node
      step(opts, `${t.abi}: smoke: require(${path.basename(file)})`, () => {
        const exported = require(file)
        const fns = Object.keys(exported).filter((k) => typeof exported[k] === 'function')
        if (fns.length === 0) throw new StepFailure(`${file} exports no functions`)
        return `exports ${fns.length} functions: ${fns.slice(0, 6).join(', ')}${fns.length > 6 ? ', ...' : ''}`
      })
    } else {
      // A static musl CLI runs on a glibc host and vice versa only for static builds.
      if (t.platform === 'linux' && t.libc === 'gnu' && libc !== 'gnu') continue
      step(opts, `${t.abi}: smoke: ${cliName(t)} --version`, () => {
        const r = spawnSync(file, ['--version'], { encoding: 'utf8', timeout: 10000 })
        if (r.error) throw new StepFailure(`${file}: ${r.error.message}`)
        if (r.status !== 0) throw new StepFailure(`${file} --version exited with ${r.status}: ${(r.stderr || '').trim()}`)
        return (r.stdout || r.stderr || '').trim().split('\n')[0]
      })
    }
  }
}

function verifyAll(opts) {
  const rows = []
  for (const { t, kind, file } of produced) {
    let summary = ''
    const ok = step(opts, `${t.abi}: verify ${path.basename(file)}`, () => {
      summary = describe(verifyArtifact(t, kind, file, t.libc === 'gnu' ? opts.glibc : null))
      return summary
    })
    rows.push({ target: t.triple, artifact: path.relative(ROOT, file), ok, summary, file: fileOutput(file) })
  }
  return rows
}

// CI publish: every artifact directory under `dir` (any layout) is scanned for
// processlock.<abi>.node and the CLI binaries built by this script.
function collect(opts) {
  const dir = path.resolve(ROOT, opts.collect)
  step(opts, `collect artifacts from ${path.relative(ROOT, dir) || dir}`, () => {
    if (!fs.existsSync(dir)) throw new StepFailure(`${dir} does not exist`)
    const files = []
    const walk = (d) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name)
        if (e.isDirectory()) walk(p)
        else files.push(p)
      }
    }
    walk(dir)
    let copied = 0
    for (const t of opts.targets) {
      const addon = files.find((f) => path.basename(f) === addonName(t))
      // A CLI binary is recognised by its directory: artifacts/<abi>/ or <something>-<abi>/.
      const cli = files.find((f) => path.basename(f) === cliName(t) &&
        path.basename(path.dirname(f)).endsWith(t.abi))
      if (addon) { copyInto(t, 'addon', addon); copied++ }
      if (cli) { copyInto(t, 'cli', cli); copied++ }
    }
    return `${copied} files copied into npm/<abi>/`
  })
  step(opts, 'every platform package has its .node and CLI', () => {
    const missing = []
    for (const t of opts.targets) {
      for (const name of [addonName(t), cliName(t)]) {
        if (!fs.existsSync(path.join(npmDir(t), name))) missing.push(`npm/${t.abi}/${name}`)
      }
    }
    if (missing.length) throw new StepFailure(`missing: ${missing.join(', ')}`)
  })
  // Verify what will be published, whether it came from `dir` or was already there.
  produced.length = 0
  for (const t of opts.targets) {
    for (const [kind, name] of [['addon', addonName(t)], ['cli', cliName(t)]]) {
      const file = path.join(npmDir(t), name)
      if (fs.existsSync(file)) produced.push({ t, kind, file })
    }
  }
}

function printTable(rows) {
  if (!rows.length) return
  banner('artifacts')
  const w1 = Math.max(6, ...rows.map((r) => r.target.length))
  const w2 = Math.max(8, ...rows.map((r) => r.artifact.length))
  console.log(`${'target'.padEnd(w1)}  ${'artifact'.padEnd(w2)}  file`)
  console.log(`${'-'.repeat(w1)}  ${'-'.repeat(w2)}  ${'-'.repeat(40)}`)
  for (const r of rows) {
    console.log(`${r.target.padEnd(w1)}  ${r.artifact.padEnd(w2)}  ${r.file}`)
    console.log(`${''.padEnd(w1)}  ${''.padEnd(w2)}  ${r.ok ? 'ok' : 'WRONG'}: ${r.summary || 'see the failure above'}`)
  }
}

function finish(opts, rows = []) {
  printTable(rows)
  banner('steps')
  for (const s of steps) {
    const mark = s.ok ? ' ok ' : 'FAIL'
    const note = s.note ? `  ${s.note.split('\n')[0]}` : ''
    console.log(`[${mark}] ${fmtSeconds(s.seconds).padStart(7)}  ${s.name}${note}`)
  }
  const failed = steps.filter((s) => !s.ok)
  const total = steps.reduce((a, s) => a + s.seconds, 0)
  if (failed.length) {
    console.error(`\n\x1b[31mbuild-all: ${failed.length} of ${steps.length} steps FAILED (${fmtSeconds(total)}):\x1b[0m`)
    for (const s of failed) console.error(`  - ${s.name}`)
    process.exit(1)
  }
  console.log(`\nbuild-all: all ${steps.length} steps passed (${fmtSeconds(total)})`)
  process.exit(0)
}

function main() {
  const opts = parseArgs(process.argv.slice(2))
  process.chdir(ROOT)

  if (opts.collect) {
    collect(opts)
    finish(opts, verifyAll(opts))
    return
  }

  const plan = opts.targets.map((t) => ({ t, how: strategyFor(t) }))
  console.log(`host ${HOST.platform}-${HOST.arch}${hostLibc() ? `-${hostLibc()}` : ''}; plan:`)
  for (const { t, how } of plan) console.log(`  ${t.triple.padEnd(28)} ${how}`)

  step(opts, 'preflight', () => {
    const cargo = capture('cargo', ['--version'])
    if (!cargo) throw new StepFailure('cargo is not on PATH')
    const notes = [cargo]
    napiCli()
    const installed = capture('rustup', ['target', 'list', '--installed'])
    if (installed !== null) {
      const have = new Set(installed.split('\n'))
      const missing = plan.map(({ t }) => t.triple).filter((x) => !have.has(x))
      if (missing.length) throw new StepFailure(`rustup targets missing: ${missing.join(' ')} (run scripts/install-cross.sh)`)
    }
    if (plan.some(({ how }) => how === 'zig')) {
      const zig = zigAvailable()
      if (!zig) throw new StepFailure('zig not found (neither `zig` nor `python3 -m ziglang`): run scripts/install-cross.sh')
      const zb = capture('cargo-zigbuild', ['--version'])
      if (!zb) throw new StepFailure('cargo-zigbuild not found: run scripts/install-cross.sh')
      notes.push(zig, zb)
    }
    return notes.join('; ')
  })
  if (steps.some((s) => !s.ok)) finish(opts)

  const targetDir = cargoTargetDir()
  if (!opts.skipHost) buildHost(opts)
  for (const { t, how } of plan) {
    if (how === 'zig') buildZig(opts, t, targetDir)
    else if (how === 'native') buildNative(opts, t, targetDir)
    else if (!opts.skipChecks) checkOnly(opts, t)
  }
  const rows = verifyAll(opts)
  if (opts.smoke) smoke(opts)
  finish(opts, rows)
}

if (require.main === module) main()
else module.exports = { TARGETS, inspect, verifyArtifact }
