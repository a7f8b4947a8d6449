'use strict'
// The `backend (SHORT)` lock most API tests use, and a fixture process that holds it.
const fs = require('node:fs')
const path = require('node:path')
const { start } = require('./proc')

/** Options for the `backend` lock on the SHORT side in `dir`, with logging off unless given. */
const SHORT = (dir, extra = {}) => ({ dir, tradeSide: 'SHORT', log: false, ...extra })
const lockFile = (dir, name = 'backend.short.lock') => path.join(dir, name)
const recordOf = (file) => JSON.parse(fs.readFileSync(file, 'utf8'))

/**
 * What lock info says of a lock file's record: the record without the id of the hold (which
 * only finds the token), with the holder's fencing token.
 */
function asInfo(record, fencingToken) {
  const { holdId, ...info } = record
  expect(holdId).toMatch(/^[0-9a-f]{16}$/)
  return { ...info, fencingToken }
}

/** Another process holding `backend (SHORT)` in `dir` until it is signalled. */
async function holder(dir) {
  const p = start('ending.js', { dir, args: ['wait'], env: { PROCESSLOCK_LOG: 'silent' } })
  await p.waitFor('READY')
  return p
}

/** Signals a fixture process and waits for its end: its outcome. */
async function stop(p, signal = 'SIGTERM') {
  p.kill(signal)
  return p.done()
}

module.exports = { SHORT, lockFile, recordOf, asInfo, holder, stop }
