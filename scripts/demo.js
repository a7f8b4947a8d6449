'use strict'
// `npm run demo`: plays the seed document's scenarios live, with real processes, in a
// temporary lock directory: normal start, duplicate start, a SIGKILLed holder's stale lock,
// trade sides side by side, what `processlock check` shows, and the release at shutdown.
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'processlock-demo-'))
const running = []

function title(text) {
  console.log(`\n\x1b[1m== ${text}\x1b[0m`)
}

function shell(text) {
  console.log(`\x1b[2m$ ${text}\x1b[0m`)
}

/** Starts an example service; its output is shown indented, as it arrives. */
function service(script, side = 'SHORT') {
  const child = spawn(process.execPath, [path.join(ROOT, 'examples', script)], {
    cwd: ROOT,
    env: { ...process.env, PROCESSLOCK_DIR: dir, TRADE_SIDE: side, PROCESSLOCK_LOG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const show = (d) => {
    output += d
    process.stdout.write(String(d).replace(/^(?=.)/gm, '  '))
  }
  child.stdout.on('data', show)
  child.stderr.on('data', show)
  const ended = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const proc = { child, pid: child.pid, ended, output: () => output }
  running.push(proc)
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
  shell(`processlock ${args.join(' ')}`)
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'processlock.js'), ...args], {
    env: { ...process.env, PROCESSLOCK_DIR: dir },
    encoding: 'utf8',
  })
  process.stdout.write((r.stdout + r.stderr).replace(/^(?=.)/gm, '  '))
}

async function main() {
  console.log(`Lock directory for this demo: ${dir}`)

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
  console.log(`  (exit status ${dup.code}; the first backend, PID ${backend.pid}, keeps running)`)

  title('Stale lock: the backend is killed with SIGKILL, nothing of it runs any more')
  shell(`kill -9 ${backend.pid}`)
  backend.child.kill('SIGKILL')
  await backend.ended
  console.log(`  the lock file is still there: ${fs.readdirSync(dir).filter((f) => f.startsWith('backend')).join(', ')}`)
  shell('npm run dev:server')
  const next = service('server.js')
  await until(next, 'Backend runs with PID')

  title('Trade sides: a LONG backend runs beside the SHORT one')
  shell('TRADE_SIDE=LONG npm run dev:server')
  const long = service('server.js', 'LONG')
  await until(long, 'Backend runs with PID')

  title('What operators see')
  cli('check')

  title('Shutdown: SIGTERM (pm2 stop) releases every lock')
  shell('pm2 stop all')
  for (const p of [next, worker, long]) p.child.kill('SIGTERM')
  await Promise.all([next.ended, worker.ended, long.ended])
  console.log(`  lock files left: ${fs.readdirSync(dir).length === 0 ? 'none' : fs.readdirSync(dir).join(', ')}`)
  cli('check')
  fs.rmSync(dir, { recursive: true, force: true })
}

main().catch((e) => {
  console.error(e)
  for (const p of running) p.child.kill('SIGKILL')
  process.exit(1)
})
