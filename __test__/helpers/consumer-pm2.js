'use strict'
// PM2 for real: the `pm2` package at a pinned version, a daemon whose home (PM2_HOME) is a temp
// directory, and a way to make sure nothing it started outlives the tests.
//
// pm2 is taken from this repository's node_modules when it is a devDependency there; otherwise
// it is installed once from the npm registry (npm's cache first) into node_modules/.cache/, where
// later runs find it.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { cleanEnv, run, runOk, waitUntil, running } = require('./consumer-proc')

const ROOT = path.resolve(__dirname, '..', '..')
const PM2_VERSION = '7.0.4'
const NPM_CLI = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js')

/** The pm2 package directory, installing it into node_modules/.cache/ when needed. */
async function ensurePm2() {
  try {
    const manifest = require.resolve('pm2/package.json', { paths: [ROOT] })
    if (require(manifest).version === PM2_VERSION) return path.dirname(manifest)
  } catch {}
  const cacheRoot = path.join(ROOT, 'node_modules', '.cache', 'processlock-tests')
  const home = path.join(cacheRoot, `pm2-${PM2_VERSION}`)
  const installed = path.join(home, 'node_modules', 'pm2')
  if (fs.existsSync(path.join(installed, 'package.json'))) return installed

  // Install next to the final place, then rename: a run that stops half-way leaves no half tree.
  fs.mkdirSync(cacheRoot, { recursive: true })
  const staging = fs.mkdtempSync(path.join(cacheRoot, `pm2-${PM2_VERSION}.staging-`))
  fs.writeFileSync(path.join(staging, 'package.json'), JSON.stringify({ name: 'pm2-for-tests', private: true }) + '\n')
  const npmArgs = ['install', `pm2@${PM2_VERSION}`, '--prefer-offline', '--no-audit', '--no-fund', '--no-save']
  const [file, argv] = fs.existsSync(NPM_CLI) ? [process.execPath, [NPM_CLI, ...npmArgs]] : ['npm', npmArgs]
  await runOk(file, argv, { cwd: staging, timeoutMs: 300000 })
  try {
    fs.renameSync(staging, home)
  } catch (e) {
    // Another run finished first: use its copy.
    fs.rmSync(staging, { recursive: true, force: true })
    if (!fs.existsSync(path.join(installed, 'package.json'))) throw e
  }
  return installed
}

/**
 * The running processes of a PM2 home. On Linux: every PID whose environment names this PM2_HOME
 * (the daemon and whatever it started). Elsewhere: those of the `known` PIDs (daemon, pid files,
 * apps seen) whose command line still names the home or the app directory `cwd`, so that a PID
 * reused by an unrelated process since is left alone.
 */
function processesOf(home, known = [], cwd = home) {
  const found = []
  if (process.platform === 'linux') {
    const needle = Buffer.from(`PM2_HOME=${home}\0`)
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
      try {
        const env = fs.readFileSync(`/proc/${entry}/environ`)
        if (env.includes(needle) && running(Number(entry))) found.push(Number(entry))
      } catch {}
    }
  } else {
    for (const pid of new Set(known)) {
      if (!(pid > 0) || !running(pid)) continue
      try {
        const command = execFileSync('ps', ['-o', 'command=', '-p', String(pid)], { encoding: 'utf8' })
        if (command.includes(home) || command.includes(cwd)) found.push(pid)
      } catch {}
    }
  }
  return found.sort((a, b) => a - b)
}

/** A PM2 installation driven with its own PM2_HOME. */
class Pm2 {
  constructor(pkgDir, home, cwd) {
    this.bin = path.join(pkgDir, 'bin', 'pm2')
    this.home = home
    this.cwd = cwd
    /** Every PID this home's daemon and apps were seen with. */
    this.seen = new Set()
    fs.mkdirSync(home, { recursive: true })
    // PM2 asks a server of its own for its latest version when its home has no `touch` file, and
    // its daemon daily unless PM2_DISABLE_VERSION_CHECK is set: no traffic to anything but the
    // package registries here, so neither happens.
    fs.writeFileSync(path.join(home, 'touch'), String(Date.now()))
  }

  env(extra = {}) {
    return cleanEnv({ PM2_HOME: this.home, PM2_DISABLE_VERSION_CHECK: 'true', ...extra })
  }

  /** `pm2 ...args`; throws on a non-zero exit. */
  cmd(args, { env = {}, timeoutMs = 90000 } = {}) {
    return runOk(process.execPath, [this.bin, ...args], { cwd: this.cwd, env: this.env(env), timeoutMs })
  }

  /** `pm2 jlist`: every process PM2 manages, with the fields the tests look at. */
  async list() {
    const r = await this.cmd(['jlist'])
    // jlist prints one JSON array; be lenient about anything before it.
    const list = JSON.parse(r.stdout.slice(r.stdout.indexOf('[')))
    return list.map((p) => {
      if (p.pid > 0) this.seen.add(p.pid)
      return {
        name: p.name,
        pid: p.pid,
        status: p.pm2_env.status,
        restarts: p.pm2_env.restart_time,
        unstableRestarts: p.pm2_env.unstable_restarts,
        /** When PM2 started this process (ms since the epoch, PM2's clock: this machine's). */
        startedAt: p.pm2_env.pm_uptime,
        /** The instance number of a cluster-mode app (NODE_APP_INSTANCE). */
        instance: p.pm2_env.NODE_APP_INSTANCE,
        out: p.pm2_env.pm_out_log_path,
        err: p.pm2_env.pm_err_log_path,
      }
    })
  }

  /** `pm2 jlist` by app name (one process per name: fork mode). */
  async apps() {
    return Object.fromEntries((await this.list()).map((p) => [p.name, p]))
  }

  /** Waits until `name` is online with a PID accepted by `pidOk`; returns its jlist entry. */
  waitOnline(name, pidOk = () => true, timeoutMs = 60000) {
    return waitUntil(
      async () => {
        const app = (await this.apps())[name]
        return app && app.status === 'online' && app.pid > 0 && pidOk(app.pid) ? app : null
      },
      { timeoutMs, intervalMs: 200, what: `${name} online` },
    )
  }

  /** The daemon's own log (PM2_HOME/pm2.log). */
  daemonLog() {
    try {
      return fs.readFileSync(path.join(this.home, 'pm2.log'), 'utf8')
    } catch {
      return ''
    }
  }

  daemonPid() {
    try {
      const pid = Number(fs.readFileSync(path.join(this.home, 'pm2.pid'), 'utf8').trim()) || null
      if (pid) this.seen.add(pid)
      return pid
    } catch {
      return null
    }
  }

  /** The PIDs this home's daemon and apps were seen with, pid files included. */
  known() {
    this.daemonPid()
    try {
      for (const f of fs.readdirSync(path.join(this.home, 'pids'))) {
        const pid = Number(fs.readFileSync(path.join(this.home, 'pids', f), 'utf8').trim())
        if (pid > 0) this.seen.add(pid)
      }
    } catch {}
    return [...this.seen]
  }

  /** What of this home still runs. */
  processes() {
    return processesOf(this.home, this.known(), this.cwd)
  }

  /**
   * `pm2 delete all` and `pm2 kill`, whatever state things are in, then SIGKILL for anything of
   * this PM2_HOME still running. Returns the PIDs that had to be killed by hand.
   */
  async shutdown() {
    this.known()
    // Any pm2 command starts a daemon when none runs: only talk to one that does.
    const daemon = this.daemonPid()
    if (daemon && running(daemon)) {
      await run(process.execPath, [this.bin, 'delete', 'all'], {
        cwd: this.cwd,
        env: this.env(),
        timeoutMs: 60000,
      }).catch(() => {})
      await run(process.execPath, [this.bin, 'kill'], { cwd: this.cwd, env: this.env(), timeoutMs: 60000 }).catch(
        () => {},
      )
    }
    let survivors = []
    try {
      await waitUntil(() => this.processes().length === 0, { timeoutMs: 10000, what: 'PM2 processes to end' })
    } catch {
      survivors = this.processes()
      for (const pid of survivors) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {}
      }
    }
    return survivors
  }
}

module.exports = { PM2_VERSION, ensurePm2, processesOf, Pm2 }
