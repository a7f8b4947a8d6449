// The trader's server/index.ts with the classic start-up guard: the lock is the first thing the
// application does, before any initialisation. The rest stands in for the real HTTP server.
import { acquireLock, getLockInfo } from '@trader/processlock'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

try {
  acquireLock('backend')
} catch (e: any) {
  console.error('[FATAL]', e?.message || e)
  process.exit(1)
}

const lockInfo = getLockInfo('backend')
if (lockInfo) {
  console.log(`Backend runs with PID ${lockInfo.pid}`)
}

// Only now the initialisation that must never run twice (exchange clients, SQLite, WebSockets).
const server = createServer((_req, res) => {
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify(getLockInfo('backend')))
})
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo
  console.log(`[SERVER] listening on 127.0.0.1:${port}`)
})
