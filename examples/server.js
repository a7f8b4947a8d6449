'use strict'
// The seed's server/index.ts, in plain JavaScript: take the lock first, before any
// initialisation, and stop with the holder's PID if another instance runs.
const { acquireLock, getLockInfo } = require('..')

try {
  acquireLock('backend')
} catch (e) {
  console.error('[FATAL]', (e && e.message) || e)
  process.exit(1)
}

const lockInfo = getLockInfo('backend')
if (lockInfo) console.log(`Backend runs with PID ${lockInfo.pid}`)

// ... the real server would start here; the demo just stays up until it is stopped.
setInterval(() => {}, 1 << 30)
