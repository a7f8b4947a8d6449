// The backend under PM2 cluster mode (ecosystem.cluster.config.cjs): one lock per instance.
// PM2 numbers the instances of an app in NODE_APP_INSTANCE (0, 1, ...). Instance 0 takes the
// plain 'backend' lock, the one a fork-mode or hand-started backend takes; instance N takes
// 'backend-N'. A second copy of the cluster, or a backend started by hand, is refused; during
// `pm2 reload` each new instance waits for the one it replaces (PM2 stops that one after
// listen_timeout, since the new one cannot listen before it has the lock).
import { acquireLockOrExit } from '@trader/processlock'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

const instance = Number(process.env.NODE_APP_INSTANCE ?? 0)
const lockName = instance === 0 ? 'backend' : `backend-${instance}`
// Longer than PM2's listen_timeout (3000 ms) plus kill_timeout (1600 ms): a new instance must
// outlast PM2's wait before it stops the old one. LOCK_WAIT_MS=0 stands for a copy that must not wait.
const waitMs = Number(process.env.LOCK_WAIT_MS ?? 10000)

async function main(): Promise<void> {
  await acquireLockOrExit(lockName, { waitMs })

  const server = createServer((_req, res) => res.end(`${lockName} ${process.pid}\n`))
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as AddressInfo
    console.log(`[SERVER] ${lockName} listening on 127.0.0.1:${port}`)
  })
}

main()
