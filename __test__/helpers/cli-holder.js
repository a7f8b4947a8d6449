'use strict'
// A service holding a lock through the Node addon, for the CLI tests to look at.
//   node cli-holder.js [type=backend] [side=SHORT]      (lock directory: $PROCESSLOCK_DIR)
const binding = require('../../binding.js')

const [type = 'backend', tradeSide = 'SHORT'] = process.argv.slice(2)
const lock = binding.openLock(type, { dir: process.env.PROCESSLOCK_DIR, tradeSide, holder: 0 })
const outcome = lock instanceof binding.NativeLock ? lock.acquire() : { error: lock }
if (outcome.error) {
  process.stderr.write(`${outcome.error.message}\n`)
  process.exit(1)
}
process.stdout.write(`HOLDER READY ${process.pid}\n`)
setInterval(() => {}, 1 << 30)
