'use strict'
// The lock contract (./suite.js) against lock files: each test's locks in a directory of its own.
const fs = require('node:fs')
const path = require('node:path')
const { tempDir } = require('../helpers/proc')
const { contract } = require('./suite')

/** Blocked flock requests of a process ("N: -> FLOCK ..." lines of /proc/locks). */
function blockedIn(pid) {
  return fs
    .readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .filter((l) => l.includes('->') && l.split(/\s+/).includes(String(pid))).length
}

contract({
  name: 'lock files',
  backend: 'file',
  test,
  place() {
    const dir = tempDir('contract')
    return { dir, options: { dir }, env: { PROCESSLOCK_DIR: dir }, cli: ['--dir', dir] }
  },
  loseHold(at) {
    for (const name of fs.readdirSync(at.dir)) if (name.endsWith('.lock')) fs.unlinkSync(path.join(at.dir, name))
  },
  waiting: (_at, pid) => blockedIn(pid),
  capabilities: {
    fencingToken: true,
    // A lock file's loss reaches its lockSignal only (onLost is for server locks).
    onLostFunction: false,
    lossEndsProcess: false,
    // `processlock run` hands the lock file to the command, which holds it itself.
    runHolds: 'command',
    // The holder is on this host, proven by its lock file: the replacer signals it.
    replaceSignals: true,
  },
})
