'use strict'
// The Node.js versions the project names, against the packages npm installs. The package itself
// runs on `engines.node` (its published manifest has no dependencies of its own); building and
// testing it from a clone needs `devEngines.runtime` (npm refuses an older Node there, with that
// message). Every package package-lock.json installs on a supported build host must accept the
// lowest Node of that range, or `npm ci` prints EBADENGINE warnings there. Where a build tool's
// own dependency moved on to a newer Node in a release that changes nothing the tool uses,
// package.json `overrides` keeps the last release that accepts ours (@napi-rs/lzma, only used by
// the napi CLI's --use-napi-cross; @octokit/request, whose content-type 3 wants Node 22, only used
// for GitHub releases by napi pre-publish).
const fs = require('node:fs')
const path = require('node:path')
const semver = require('semver')

const ROOT = path.resolve(__dirname, '..')
const manifest = require(path.join(ROOT, 'package.json'))
const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8'))

/** The hosts the package is built and tested on (the CI build and test legs). */
const BUILD_HOSTS = [
  { os: 'linux', cpu: 'x64', libc: 'glibc' },
  { os: 'linux', cpu: 'x64', libc: 'musl' },
  { os: 'linux', cpu: 'arm64', libc: 'glibc' },
  { os: 'linux', cpu: 'arm64', libc: 'musl' },
  { os: 'darwin', cpu: 'x64' },
  { os: 'darwin', cpu: 'arm64' },
  { os: 'win32', cpu: 'x64' },
]

/** Whether an `os`/`cpu`/`libc` list of a package accepts `value` (npm's rules: `!x` excludes). */
function accepts(list, value) {
  if (!Array.isArray(list) || list.length === 0 || value === undefined) return true
  if (list.includes(`!${value}`)) return false
  const positive = list.filter((v) => !v.startsWith('!'))
  return positive.length === 0 || positive.includes(value)
}

/** The lockfile path a dependency `name` of the package at `from` resolves to, as Node finds it. */
function resolve(from, name) {
  for (let dir = from; ; ) {
    const candidate = `${dir ? `${dir}/` : ''}node_modules/${name}`
    if (lock.packages[candidate]) return candidate
    if (!dir) return null
    const at = dir.lastIndexOf('node_modules/')
    dir = at <= 0 ? '' : dir.slice(0, at - 1)
  }
}

/** Every lockfile package npm installs on `host`, from the project's own dependencies down. */
function installedOn(host) {
  const seen = new Set()
  const queue = ['']
  while (queue.length) {
    const at = queue.shift()
    const entry = lock.packages[at]
    // npm 7 and later install peer dependencies too, unless they are marked optional.
    const peers = Object.keys(entry.peerDependencies ?? {}).filter((n) => !entry.peerDependenciesMeta?.[n]?.optional)
    const names = [
      ...Object.keys(entry.dependencies ?? {}),
      ...Object.keys(entry.optionalDependencies ?? {}),
      ...(at === '' ? Object.keys(entry.devDependencies ?? {}) : []),
      ...peers,
    ]
    for (const name of names) {
      const found = resolve(at, name)
      if (!found || seen.has(found)) continue
      const pkg = lock.packages[found]
      if (!accepts(pkg.os, host.os) || !accepts(pkg.cpu, host.cpu) || !accepts(pkg.libc, host.libc)) continue
      seen.add(found)
      queue.push(found)
    }
  }
  return [...seen]
}

test('building from a clone names its Node.js range in devEngines, which npm checks', () => {
  expect(manifest.devEngines).toEqual({ runtime: { name: 'node', version: expect.any(String), onFail: 'error' } })
  expect(semver.validRange(manifest.devEngines.runtime.version)).toBeTruthy()
  // Every Node that builds also runs the package.
  expect(semver.subset(manifest.devEngines.runtime.version, manifest.engines.node)).toBe(true)
})

test.each(BUILD_HOSTS.map((h) => [Object.values(h).join('-'), h]))(
  'every package npm ci installs on %s accepts the lowest Node.js the project builds with',
  (_, host) => {
    const lowest = semver.minVersion(manifest.devEngines.runtime.version).version
    const refused = installedOn(host)
      .map((at) => ({ at, version: lock.packages[at].version, node: lock.packages[at].engines?.node }))
      .filter(({ node }) => node && !semver.satisfies(lowest, node))
    expect(refused).toEqual([])
  },
)

test('the package itself needs nothing but Node.js from engines.node', () => {
  expect(manifest.dependencies ?? {}).toEqual({})
  expect(semver.validRange(manifest.engines.node)).toBeTruthy()
  for (const abi of fs.readdirSync(path.join(ROOT, 'npm'))) {
    const platform = require(path.join(ROOT, 'npm', abi, 'package.json'))
    expect({ abi, node: platform.engines?.node }).toEqual({ abi, node: manifest.engines.node })
  }
})
