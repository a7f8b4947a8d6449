'use strict'
// The backend's start-up, in plain JavaScript: take the lock first, before any initialisation.
// If another instance runs, acquireLockOrExit prints why (the holder's PID) and exits 1 once
// the lines are written, so nothing below runs.
const { acquireLockOrExit, getLockInfo } = require('..')

async function main() {
  await acquireLockOrExit('backend')

  const lockInfo = getLockInfo('backend')
  if (lockInfo) console.log(`Backend runs with PID ${lockInfo.pid}`)

  // ... the real server would start here; the demo just stays up until it is stopped.
  setInterval(() => {}, 1 << 30)
}

main()
