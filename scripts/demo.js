'use strict'
// `npm run demo`: plays the README's scenarios live under real PM2, in a temporary directory:
// normal start, duplicate start, a SIGKILLed holder's stale lock, trade sides side by side, what
// `processlock check` shows, and the release at shutdown.
//
// Every `$ ...` line it prints is the command it runs, with the environment of the `export` line
// it starts with, and what follows is that command's own output: a reader can paste them into a
// shell in the repository and see the same. PM2 runs with a home of its own (PM2_HOME in the
// demo's directory): its daemon is not the user's, and the user's PM2, if any, is never touched.
// (PM2_DISABLE_VERSION_CHECK keeps PM2 from asking the network for its latest version.)
//
// However the demo ends (its end, an error, SIGINT, SIGTERM, SIGHUP, or a reader that goes away,
// as in `npm run demo | head -8`), it stops everything it started, the PM2 daemon and its
// services included, and removes its directory. Colours only on a terminal, and never with
// NO_COLOR set.
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
const bin = (name) => (process.platform === 'win32' ? `${name}.cmd` : name)
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'processlock-demo-'))
const locks = path.join(work, 'locks')
const pm2Home = path.join(work, 'pm2')
fs.mkdirSync(locks)
fs.mkdirSync(pm2Home)
// PM2 asks a server of its own for its latest version when its home has no `touch` file.
fs.writeFileSync(path.join(pm2Home, 'touch'), String(Date.now()))

/** What the `export` line sets, for every command after it. */
const exported = { PROCESSLOCK_DIR: locks, PM2_HOME: pm2Home, TRADE_SIDE: 'SHORT' }
const baseEnv = {
  ...process.env,
  ...exported,
  PM2_DISABLE_VERSION_CHECK: 'true',
  ...(colour ? {} : { NO_COLOR: '1', FORCE_COLOR: '0' }),
}
// A shell's environment, not that of the `npm run demo` around us (npm_config_loglevel=silent
// from `npm run --silent` would hide npm's own lines from the commands shown).
for (const k of Object.keys(baseEnv)) if (/^npm_/i.test(k)) delete baseEnv[k]

/** The command running now, if any: stopped first when the demo ends early. */
let current = null
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

function note(text) {
  write(`${style(2, `  (${text})`)}\n`)
}

function indented(text) {
  write(String(text).replace(/^(?=.)/gm, '  '))
}

/** Thrown into the scenario once the demo is ending early: nothing new is started. */
class Ending extends Error {}

/**
 * Shows `$ [VAR=value ...] cmd args...` and runs exactly that, its output shown indented as it
 * arrives; resolves with its exit status once it has ended.
 */
function sh(cmd, args = [], extraEnv = {}) {
  if (ending) return Promise.reject(new Ending('the demo is ending'))
  const prefix = Object.entries(extraEnv).map(([k, v]) => `${k}=${v} `)
  write(`${style(2, `$ ${prefix.join('')}${[cmd, ...args].join(' ')}`)}\n`)
  return new Promise((resolve, reject) => {
    const child = spawn(bin(cmd), args, {
      cwd: ROOT,
      env: { ...baseEnv, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
      shell: process.platform === 'win32',
    })
    current = child
    child.stdout.on('data', indented)
    child.stderr.on('data', indented)
    child.on('error', (e) => {
      current = null
      reject(new Error(`${cmd}: ${e.message}`))
    })
    child.on('close', (code, signal) => {
      current = null
      if (ending) reject(new Ending('the demo is ending'))
      else resolve({ code, signal })
    })
  })
}

/** Runs a command that must succeed. */
async function ok(cmd, args, extraEnv) {
  const r = await sh(cmd, args, extraEnv)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.code ?? r.signal}`)
  return r
}

/** The holder of a lock in the demo's directory, as the package reports it (null: none). */
function holder(type, side) {
  const { getLockInfo } = require('..')
  return getLockInfo(type, { dir: locks, tradeSide: side })
}

/** Waits (bounded) until `probe` returns a truthy value. */
async function until(probe, what) {
  const t0 = Date.now()
  for (;;) {
    if (ending) throw new Ending('the demo is ending')
    const v = probe()
    if (v) return v
    if (Date.now() - t0 > 60000) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** The PIDs of the processes started for the demo that still run: PM2's daemon and its apps. */
function started() {
  const pids = new Set()
  if (process.platform === 'linux') {
    // Everything PM2 starts inherits PM2_HOME, the daemon included.
    const needle = Buffer.from(`PM2_HOME=${pm2Home}\0`)
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
      try {
        if (fs.readFileSync(`/proc/${entry}/environ`).includes(needle)) pids.add(Number(entry))
      } catch {}
    }
  } else {
    for (const file of [path.join(pm2Home, 'pm2.pid'), ...pidFiles()]) {
      try {
        pids.add(Number(fs.readFileSync(file, 'utf8').trim()))
      } catch {}
    }
  }
  return [...pids].filter((pid) => pid > 0 && alive(pid))
}

function pidFiles() {
  try {
    return fs.readdirSync(path.join(pm2Home, 'pids')).map((f) => path.join(pm2Home, 'pids', f))
  } catch {
    return []
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return e.code === 'EPERM'
  }
}

function removeWork() {
  fs.rmSync(work, { recursive: true, force: true })
}

/**
 * Stops everything the demo started and waits for it: the command running now, then PM2 (`pm2
 * kill` stops its apps, SIGINT then SIGKILL, and its daemon), then SIGKILL for whatever of it
 * still runs.
 */
async function stopAll() {
  if (current) current.kill('SIGTERM')
  if (started().length > 0) {
    spawnSync(bin('npx'), ['pm2', 'kill'], {
      cwd: ROOT,
      env: baseEnv,
      stdio: 'ignore',
      timeout: 60000,
      shell: process.platform === 'win32',
    })
  }
  for (const pid of started()) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  const t0 = Date.now()
  while (started().length > 0 && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 50))
}

/** Ends the demo early: stop everything, remove the directory, then end as `how` asks. */
function endEarly(how) {
  if (ending) return ending
  for (const signal of SIGNALS) process.removeAllListeners(signal)
  ending = stopAll().then(() => {
    removeWork()
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
// A last resort for an end that leaves no time to wait (process.exit, a crash): kill at least.
process.on('exit', () => {
  if (current) current.kill('SIGKILL')
  for (const pid of started()) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  removeWork()
})

async function main() {
  write(`This demo runs in ${work}: its own lock directory and its own PM2 (yours is not touched).\n`)
  write(
    `${style(
      2,
      `$ export ${Object.entries(exported)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}`,
    )}\n`,
  )

  title('Normal start: PM2 starts the backend and the worker; each takes its lock first')
  await ok('npx', ['pm2', 'start', 'examples/ecosystem.config.cjs'])
  await until(() => holder('backend', 'SHORT') && holder('worker', 'SHORT'), 'both locks')
  await ok('npx', ['pm2', 'logs', '--nostream', '--raw', '--lines', '2'])

  title('Duplicate start: a second backend stops and names the first one')
  const first = holder('backend', 'SHORT').pid
  const dup = await sh('npm', ['run', 'dev:server'])
  note(`exit status ${dup.code}; the first backend, PID ${first}, keeps running`)

  title('Stale lock: the backend is killed with SIGKILL; PM2 starts it again and the new one takes the lock over')
  await ok('kill', ['-9', String(first)])
  const next = await until(() => {
    const h = holder('backend', 'SHORT')
    return h && h.pid !== first && h
  }, 'the new backend')
  await ok('npx', ['pm2', 'logs', 'trader-short-backend', '--nostream', '--raw', '--lines', '2'])
  note(`the new backend is PID ${next.pid}`)

  title('Trade sides: the LONG side runs beside the SHORT one')
  await ok('npx', ['pm2', 'start', 'examples/ecosystem.config.cjs'], { TRADE_SIDE: 'LONG' })
  await until(() => holder('backend', 'LONG') && holder('worker', 'LONG'), 'the LONG locks')

  title('What operators see')
  await ok('npx', ['processlock', 'check'])

  if (keep) {
    title('The services keep running')
    write('  look at them from another terminal, in this directory, after the export line above:\n')
    write('    npx processlock check; npx pm2 ls; npx pm2 logs\n')
    write('  press Ctrl+C to stop them and end the demo\n')
    await new Promise(() => setInterval(() => {}, 1 << 30))
  }

  title('Shutdown: pm2 stop sends SIGINT; every lock is released')
  await ok('npx', ['pm2', 'stop', 'all'])
  await ok('npx', ['pm2', 'logs', '--out', '--nostream', '--raw', '--lines', '1'])
  await ok('npx', ['processlock', 'check'])
  await ok('npx', ['pm2', 'kill'])
  removeWork()
}

main().catch((e) => {
  if (e instanceof Ending) return
  if (!outputClosed) console.error(`demo: ${e.message}`)
  endEarly({ code: 1 })
})
