// The trader's temporal/worker.ts with the classic start-up guard: the lock is the first thing
// inside `async function run()`. `StandInWorker` behaves like @temporalio/worker where it matters
// to the lock: its Runtime listens to SIGINT, SIGTERM, SIGQUIT and SIGUSR2, removes those
// listeners on the first signal, drains, and `run()` resolves, so the process ends naturally.
import { acquireLock } from '@trader/processlock'

const SHUTDOWN_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGUSR2']

class StandInWorker {
  constructor(private readonly taskQueue: string) {}

  run(): Promise<void> {
    return new Promise((resolve) => {
      const poll = setInterval(() => {}, 1000)
      const shutdown = (signal: NodeJS.Signals): void => {
        for (const s of SHUTDOWN_SIGNALS) process.removeListener(s, shutdown)
        console.log(`[WORKER] ${signal}: draining ${this.taskQueue}`)
        setTimeout(() => {
          clearInterval(poll)
          resolve()
        }, 200)
      }
      for (const s of SHUTDOWN_SIGNALS) process.on(s, shutdown)
      console.log(`[WORKER] polling ${this.taskQueue}`)
    })
  }
}

async function run(): Promise<void> {
  try {
    acquireLock('worker') // first thing, before Worker.create()
  } catch (e: any) {
    console.error('[FATAL]', e?.message || e)
    process.exit(1)
  }

  const side = (process.env.TRADE_SIDE || 'short').toLowerCase()
  const worker = new StandInWorker(`trader-${side}`)
  await worker.run()
  console.log('[WORKER] stopped')
}

run().catch((err) => {
  console.error(err)
  process.exit(1)
})
