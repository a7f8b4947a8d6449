// A consumer's view of the package, type-checked with `tsc --strict` (npm run typecheck):
// the server/index.ts and temporal/worker.ts start-up, and every API shape.
import {
  acquireLock,
  acquireLockAsync,
  releaseLock,
  getLockInfo,
  forceRemoveLock,
  isLockHeld,
  listLocks,
  lockFilePath,
  acquireLockOrExit,
  LockConflictError,
  LockAbortedError,
  ProcessLockError,
  LockUnsafeDirError,
  LockInvalidNameError,
  LockInvalidOptionError,
  LockNotAFileError,
  LockUnsupportedError,
  LockIoError,
  LockLostError,
  lockSignal,
  LockFencedError,
  fenceWrites,
  type Fence,
  type AsyncAcquireOptions,
  type LockInfo,
  type LockStatus,
  type ProcessType,
} from '@trader/processlock'

// server/index.ts: first thing, before any initialisation.
try {
  acquireLock('backend')
} catch (e: any) {
  console.error('[FATAL]', e?.message || e)
  process.exit(1)
}

// temporal/worker.ts: first thing inside run().
export async function run(): Promise<void> {
  try {
    acquireLock('worker')
  } catch (e: any) {
    console.error('[FATAL]', e?.message || e)
    process.exit(1)
  }
}

const info: LockInfo | null = getLockInfo('backend')
if (info) {
  const pid: number = info.pid
  const side: string | null = info.tradeSide
  console.log(`Backend runs with PID ${pid} (${side ?? 'no side'}) since ${info.started}`)
}

const custom: ProcessType = 'reconciler'
const held: LockInfo = acquireLock(custom, {
  dir: '/tmp/locks',
  tradeSide: null,
  processName: 'trader-reconciler',
  log: (line, level) => console.log(level, line),
})
const removed: boolean = releaseLock(custom, { dir: '/tmp/locks', log: false })
const forced: boolean = forceRemoveLock('worker', { tradeSide: 'LONG', log: 'silent' })
const path: string = lockFilePath('backend')
const stillOurs: boolean = isLockHeld('backend', { tradeSide: 'SHORT' })
const all: LockStatus[] = listLocks({ dir: '/tmp/locks' })
for (const l of all) {
  if (l.state === 'held' && l.record) console.log(l.file, l.record.pid, l.isOwn)
}

try {
  acquireLock('backend', { waitMs: 5000 })
  acquireLock('backend', { replace: true, waitMs: 15_000 })
} catch (e) {
  if (e instanceof LockConflictError) {
    const holder: LockInfo = e.holder
    console.error(e.code, holder.pid, e.lockFile, e.waitedMs)
  } else if (e instanceof ProcessLockError) {
    console.error(e.code)
  }
}

// PM2 cluster reload: the new instance waits for the old one, without blocking its event loop.
async function startWorker(signal: AbortSignal): Promise<LockInfo | null> {
  const options: AsyncAcquireOptions = { timeoutMs: 10_000, signal, log: false }
  try {
    return await acquireLockAsync('worker', options)
  } catch (e) {
    if (e instanceof LockAbortedError) return null
    if (e instanceof LockConflictError) console.error(`gave up after ${e.waitedMs} ms`, e.holder.pid)
    throw e
  }
}
void startWorker(AbortSignal.timeout(30_000))

console.log(held, removed, forced, path, stillOurs)

// A lock directory other users could tamper with is refused: the error names it.
try {
  acquireLock('backend', { dir: '/srv/shared/locks' })
} catch (e) {
  if (e instanceof LockUnsafeDirError) {
    const code: 'LOCK_UNSAFE_DIR' = e.code
    console.error(code, e.path, e.message)
  }
}
// The start-up guard: resolves with the lock, or prints [FATAL] and exits 1 (never settles).
async function startBackend(): Promise<number> {
  const instance = Number(process.env.NODE_APP_INSTANCE ?? 0)
  const info: LockInfo = await acquireLockOrExit(instance === 0 ? 'backend' : `backend-${instance}`, { waitMs: 10_000 })
  return info.pid
}
void startBackend()

// Every error class is a ProcessLockError with its own code.
const classes: Array<typeof ProcessLockError> = [
  LockConflictError,
  LockInvalidNameError,
  LockInvalidOptionError,
  LockNotAFileError,
  LockUnsupportedError,
  LockIoError,
  LockAbortedError,
  LockUnsafeDirError,
]
console.log(classes.length)
// Several hosts: the lock on a PostgreSQL server, the worker stopped when the lock is lost, and
// the fencing token passed along with every protected write.
async function runOnServer(url: string): Promise<void> {
  const options = { url, leaseMs: 5_000, onLost: 'signal' as const }
  const info: LockInfo = await acquireLockAsync('worker', { ...options, timeoutMs: 60_000 })
  const backend: 'file' | 'postgres' | undefined = info.backend
  const token: string | undefined = info.fencingToken
  const lost: AbortSignal = lockSignal('worker', options)
  lost.addEventListener('abort', () => {
    if (lost.reason instanceof LockLostError) {
      const code: 'LOCK_LOST' = lost.reason.code
      console.error(code, lost.reason.message)
    }
  })
  acquireLock('backend', { url, onLost: (e: LockLostError) => console.error(e.lockFile) })
  const onServer = listLocks({ url }).filter((l) => l.record?.fencingToken !== undefined)
  console.log(backend, token, onServer.length)
}
void runOnServer('postgres://trader@db.internal/trader')

// Fenced writes: the guarded database refuses the late writes of a holder that lost the lock.
interface SqliteLike {
  prepare(sql: string): { run(...params: unknown[]): unknown }
  exec(sql: string): unknown
  function(name: string, options: object, fn: (...args: any[]) => unknown): unknown
}
async function fencedWorker(db: SqliteLike): Promise<void> {
  await acquireLockOrExit('worker')
  const fence: Fence = await fenceWrites(db, 'worker', { tables: ['orders'] })
  const generation: string = fence.generation
  try {
    db.prepare('INSERT INTO orders (id) VALUES (?)').run(generation)
  } catch (e) {
    if (e instanceof LockFencedError) {
      const code: 'LOCK_FENCED' = e.code
      console.error(code, e.lock, e.current)
    }
  }
}
void fencedWorker
