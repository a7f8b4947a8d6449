'use strict'
// The app of a `processlock run --url` process tree in the torture runs (bench/torture-tree.js):
// takes the lock on $TREE_URL itself (it adopts processlock's hold), prints `A <t> <pid>` (t:
// hrtime ns right after its acquire returned), and runs until it is stopped. On SIGTERM it exits
// at once, or, with TREE_IGNORE_TERM=1, runs on (processlock must SIGKILL it).
const fs = require('node:fs')
const path = require('node:path')
const pl = require(path.resolve(__dirname, '..'))

process.on('SIGTERM', () => {
  if (process.env.TREE_IGNORE_TERM !== '1') process.exit(0)
})
try {
  pl.acquireLock('backend', { url: process.env.TREE_URL, tradeSide: 'SHORT', log: false })
  fs.writeSync(1, `A ${process.hrtime.bigint()} ${process.pid}\n`)
} catch (e) {
  fs.writeSync(1, `E ${e.code || 'throw'}\n`)
  process.exit(1)
}
// Bounded: an app nobody stopped ends by itself after a minute.
setTimeout(() => process.exit(0), 60000)
