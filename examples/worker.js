'use strict'
// The seed's temporal/worker.ts, in plain JavaScript: the lock is the first thing inside run().
const { acquireLock } = require('..')

async function run() {
  try {
    acquireLock('worker')
  } catch (e) {
    console.error('[FATAL]', (e && e.message) || e)
    process.exit(1)
  }
  // ... Worker.create(...) and worker.run() would follow; the demo just stays up.
  await new Promise(() => setInterval(() => {}, 1 << 30))
}

run()
