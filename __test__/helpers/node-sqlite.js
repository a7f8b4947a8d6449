'use strict'
// The Node that runs the processes of the node:sqlite tests: this one if it has node:sqlite,
// else the Node 22 that scripts/node-for-tests.js fetched from the npm registry (`npm test`
// fetches it before jest). Decided when the test file loads, from the cache only: no network.
//
//   const { nodeSqlite } = require('./helpers/node-sqlite')
//   nodeSqlite.test('name', fn)        // or .each / .describe; run the processes with nodeSqlite.execPath
const { VERSION, packageName, cachedNode, hasNodeSqlite } = require('../../scripts/node-for-tests.js')
const { needs, otherPlatform } = require('./skip')

/**
 * `{ execPath }` of the Node to use, or `{ needs }` (what this machine lacks) or `{ otherPlatform }`
 * (why there is none for this platform).
 */
function choose({ own = hasNodeSqlite(), fetched = cachedNode(), available = Boolean(packageName()) } = {}) {
  if (own) return { execPath: process.execPath }
  if (fetched) return { execPath: fetched }
  if (!available) {
    return {
      otherPlatform: `node:sqlite needs Node 22.13 or later, and npm has no Node ${VERSION} for ${process.arch}`,
    }
  }
  return {
    needs: `a Node with node:sqlite (Node 22.13 or later; node scripts/node-for-tests.js fetches Node ${VERSION})`,
  }
}

function gated(choice) {
  if (choice.execPath) return { execPath: choice.execPath, test: needs(true) }
  return { execPath: null, test: choice.needs ? needs(false, choice.needs) : otherPlatform(choice.otherPlatform) }
}

module.exports = { nodeSqlite: gated(choose()), choose }
