'use strict'
// The Temporal worker's start-up, in plain JavaScript: the lock is the first thing inside run().
const { acquireLockOrExit } = require('..')

async function run() {
  await acquireLockOrExit('worker')
  // ... Worker.create(...) and worker.run() would follow; the demo just stays up.
  await new Promise(() => setInterval(() => {}, 1 << 30))
}

run()
