// The package as an ES module sees it: named exports, the default export (the whole API) and the
// types, checked under node16, nodenext and bundler resolution (tsconfig.{node16,esm,bundler}.json).
import processlock, {
  acquireLock,
  acquireLockOrExit,
  LockConflictError,
  type LockInfo,
  type AcquireOptions,
} from '@trader/processlock'

const options: AcquireOptions = { tradeSide: 'SHORT', waitMs: 0, log: false }

export function viaDefault(): LockInfo {
  return processlock.acquireLock('backend', options)
}

export async function guarded(): Promise<number> {
  const info: LockInfo = await acquireLockOrExit('worker', options)
  return info.pid
}

export function conflictHolder(e: unknown): number | null {
  if (e instanceof LockConflictError) return e.holder?.pid ?? null
  return acquireLock === processlock.acquireLock ? null : -1
}
