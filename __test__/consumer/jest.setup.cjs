// Each jest worker is a process of its own: code that takes a lock at import would find the lock
// held by another worker. A lock directory per worker keeps them apart (setupFiles in package.json).
const path = require('node:path')

process.env.PROCESSLOCK_DIR = path.join(__dirname, 'runtime', `locks-jest-${process.env.JEST_WORKER_ID}`)
