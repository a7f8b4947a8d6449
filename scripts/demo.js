'use strict'
// `npm run demo`: plays the README's scenarios live, with real processes, in a temporary lock
// directory: normal start, duplicate start, a SIGKILLed holder's stale lock, trade sides side by
// side, what `processlock check` shows, and the release at shutdown.
//
// However the demo ends (its end, an error, SIGINT, SIGTERM, SIGHUP, or a reader that goes away,
// as in `npm run demo | head -8`), it stops the services it started and removes its directory.
// Colours only on a terminal, and never with NO_COLOR set.
//
// `npm run demo -- --keep` pauses before the shutdown, with the services running, so that they
// can be looked at from another terminal; Ctrl+C (or SIGTERM) then stops them.
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const SIGNALS = process.platform === 'win32' ? ['SIGINT', 'SIGTERM'] : ['SIGINT', 'SIGTERM', 'SIGHUP']
const colour = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR
const keep = process.argv.includes('--keep')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'processlock-demo-'))
/** Every service started, until it has ended. */
const running = new Set()
/** Set once the reader of our output has gone: nothing more is written. */
let outputClosed = false
/** Set once the demo ends early: the promise of its end. */
let ending = null

function write(text) {
  if (!outputClosed) process.stdout.write(text)
}

function style(code, text) {
  return colour ? `\x1b[${code}m${text}\x1b[0m` : text
}

function title(text) {
  write(`\n${style(1, `== ${text}`)}\n`)
}

function shell(text) {
  write(`${style(2, `$ ${text}`)}\n`)
}

function indented(text) {
  write(String(text).replace(/^(?=.)/gm, '  '))
}

/** Thrown into the scenario once the demo is ending early: nothing new is started. */
class Ending extends Error {}

/** Starts an example service; its output is shown indented, as it arrives. */
function service(script, side = 'SHORT') {
  if (ending) throw new Ending('the demo is ending')
  const child = spawn(process.execPath, [path.join(ROOT, 'examples', script)], {
    cwd: ROOT,
    env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: side, PROCESSLOCK_LOG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const show = (d) => {
    output += d
    indented(d)
  }
  child.stdout.on('data', show)
  child.stderr.on('data', show)
  const proc = { child, pid: child.pid, output: () => output }
  running.add(proc)
  proc.ended = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(proc)
      resolve({ code, signal })
    }),
  )
  return proc
}

async function until(proc, text) {
  const t0 = Date.now()
  while (!proc.output().includes(text)) {
    if (Date.now() - t0 > 10000) throw new Error(`no "${text}" from PID ${proc.pid}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

function cli(...args) {
  if (ending) throw new Ending('the demo is ending')
  shell(`processlock ${args.join(' ')}`)
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'processlock.js'), ...args], {
    env: { ...process.env, PROCESSLOCK_DIR: dir },
    encoding: 'utf8',
  })
  indented(r.stdout + r.stderr)
}

function removeDir() {
  fs.rmSync(dir, { recursive: true, force: true })
}

/** Stops every service still running (SIGTERM: they release their locks) and waits for their end. */
async function stopServices() {
  const left = [...running]
  for (const p of left) p.child.kill('SIGTERM')
  await Promise.all(left.map((p) => p.ended))
}

/** Ends the demo early: stop the services, remove the directory, then end as `how` asks. */
function endEarly(how) {
  if (ending) return ending
  for (const signal of SIGNALS) process.removeAllListeners(signal)
  ending = stopServices().then(() => {
    removeDir()
    if (how.signal) process.kill(process.pid, how.signal)
    else process.exit(how.code)
  })
  return ending
}

for (const signal of SIGNALS) process.on(signal, () => endEarly({ signal }))
// The reader went away (`| head`): stop writing and end as if the demo had run to its end.
process.stdout.on('error', (e) => {
  outputClosed = true
  endEarly({ code: e.code === 'EPIPE' ? 0 : 1 })
})
// A last resort for an end that leaves no time to wait (process.exit, a crash): signal them at least.
process.on('exit', () => {
  for (const p of running) p.child.kill('SIGTERM')
  removeDir()
})

async function main() {
  write(`Lock directory for this demo: ${dir}\n`)

  title('Normal start: the backend and the worker each take their lock')
  shell('pm2 start ecosystem.short.config.cjs')
  const backend = service('server.js')
  const worker = service('worker.js')
  await until(backend, 'Backend runs with PID')
  await until(worker, 'PROCESS_LOCK_ACQUIRED')

  title('Duplicate start: a second backend stops and names the first one')
  shell('npm run dev:server')
  const duplicate = service('server.js')
  const dup = await duplicate.ended
  write(`  (exit status ${dup.code}; the first backend, PID ${backend.pid}, keeps running)\n`)

  title('Stale lock: the backend is killed with SIGKILL, nothing of it runs any more')
  shell(`kill -9 ${backend.pid}`)
  backend.child.kill('SIGKILL')
  await backend.ended
  write(
    `  the lock file is still there: ${fs
      .readdirSync(dir)
      .filter((f) => f.startsWith('backend'))
      .join(', ')}\n`,
  )
  shell('npm run dev:server')
  const next = service('server.js')
  await until(next, 'Backend runs with PID')

  title('Trade sides: a LONG backend runs beside the SHORT one')
  shell('TRADE_SIDE=LONG npm run dev:server')
  const long = service('server.js', 'LONG')
  await until(long, 'Backend runs with PID')

  title('What operators see')
  cli('check')

  if (keep) {
    title('The services keep running')
    write(`  look at them from another terminal: PROCESSLOCK_DIR=${dir} npx processlock check\n`)
    write('  press Ctrl+C to stop them and end the demo\n')
    await new Promise(() => setInterval(() => {}, 1 << 30))
  }

  title('Shutdown: SIGINT (pm2 stop) releases every lock')
  shell('pm2 stop all')
  for (const p of [next, worker, long]) p.child.kill('SIGINT')
  await Promise.all([next.ended, worker.ended, long.ended])
  const left = fs.readdirSync(dir).filter((f) => f.endsWith('.lock'))
  write(`  lock files left: ${left.length === 0 ? 'none' : left.join(', ')}\n`)
  cli('check')
  removeDir()
}

main().catch((e) => {
  if (e instanceof Ending) return
  if (!outputClosed) console.error(e)
  endEarly({ code: 1 })
})
