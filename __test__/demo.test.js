'use strict'
// `npm run demo` (scripts/demo.js) as people run it: to its end in a terminal or into a pipe, cut
// short by a reader that goes away (`npm run demo | head -8`), by SIGTERM (`timeout`), SIGINT
// (Ctrl+C), SIGHUP (the terminal closes), or by an error. However it ends, nothing it started may
// outlive it: not the services, not the PM2 daemon of its own; and its temporary directory goes.
// Linux: what it started is found through /proc/<pid>/environ (PM2_HOME and PROCESSLOCK_DIR lie
// in the demo's directory, under the TMPDIR each test gives it).
const fs = require('node:fs')
const path = require('node:path')
const { ROOT, tempDir, watch, running } = require('./helpers/proc')
const { onlyOn } = require('./helpers/skip')

const DEMO = path.join(ROOT, 'scripts', 'demo.js')
const describeLinux = onlyOn(['linux'], 'what the demo started is found through /proc').describe
/** A whole demo starts a PM2 daemon and five services on a 2-core machine, often busy. */
const DEMO_MS = 240000
jest.setTimeout(DEMO_MS + 60000)

/** The PIDs of running processes with PM2_HOME or PROCESSLOCK_DIR under `tmp`: what the demo started. */
function startedUnder(tmp) {
  const needles = ['PM2_HOME', 'PROCESSLOCK_DIR'].map((v) => Buffer.from(`${v}=${tmp}${path.sep}`))
  const found = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    try {
      const env = fs.readFileSync(`/proc/${entry}/environ`)
      if (needles.some((n) => env.includes(n)) && running(Number(entry))) found.push(Number(entry))
    } catch {}
  }
  return found
}

/** Every TMPDIR given to a demo: removed after each test (the demo removes what it makes in it). */
const tmpDirs = []
afterEach(() => {
  for (const t of tmpDirs.splice(0)) {
    // Whatever a failed test left running goes too.
    for (const pid of startedUnder(t)) process.kill(pid, 'SIGKILL')
    fs.rmSync(t, { recursive: true, force: true })
  }
})

function demoTmp(label = 'demo') {
  const t = tempDir(label)
  tmpDirs.push(t)
  return t
}

/** The demo with its own TMPDIR (where it makes its directory), output piped to us. */
function demo(args = [], env = {}) {
  const tmp = demoTmp()
  const p = watch(process.execPath, [DEMO, ...args], {
    cwd: ROOT,
    env: { ...process.env, TMPDIR: tmp, NO_COLOR: undefined, ...env },
    waitMs: DEMO_MS,
    doneMs: DEMO_MS,
  })
  return { p, tmp }
}

const left = (tmp) => ({ started: startedUnder(tmp), files: fs.readdirSync(tmp) })

/** The `$ ...` lines the demo printed: the commands it ran. */
const shown = (stdout) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('$ '))
    .map((l) => l.slice(2))

describeLinux('npm run demo', () => {
  test('to its end into a pipe: runs the commands it shows, under its own PM2; every lock released, nothing left', async () => {
    const { p, tmp } = demo()
    const r = await p.done()
    expect(r.code).toBe(0)
    expect(r.stdout).not.toContain('\x1b')
    const work = /This demo runs in (\S+):/.exec(r.stdout)[1]
    expect(path.dirname(work)).toBe(tmp)
    const commands = shown(r.stdout)
    expect(commands[0]).toBe(`export PROCESSLOCK_DIR=${work}/locks PM2_HOME=${work}/pm2 TRADE_SIDE=SHORT`)
    expect(commands).toEqual([
      commands[0],
      'npx pm2 start examples/ecosystem.config.cjs',
      'npx pm2 logs --nostream --raw --lines 2',
      'npm run dev:server',
      expect.stringMatching(/^kill -9 \d+$/),
      'npx pm2 logs trader-short-backend --nostream --raw --lines 2',
      'TRADE_SIDE=LONG npx pm2 start examples/ecosystem.config.cjs',
      'npx processlock check',
      'npx pm2 stop all',
      'npx pm2 logs --out --nostream --raw --lines 1',
      'npx processlock check',
      'npx pm2 kill',
    ])
    // What the files it names hold: the scripts exist, PM2 runs the ecosystem file.
    const scripts = require(path.join(ROOT, 'package.json')).scripts
    expect(scripts['dev:server']).toBe('node examples/server.js')
    expect(fs.existsSync(path.join(ROOT, 'examples', 'ecosystem.config.cjs'))).toBe(true)
    // Each command's own output, under it.
    expect(r.stdout).toContain(`[PM2] Spawning PM2 daemon with pm2_home=${work}/pm2`)
    expect(r.stdout).toContain('> node examples/server.js')
    expect(r.stdout).toContain('[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ')
    const killed = Number(/\$ kill -9 (\d+)/.exec(r.stdout)[1])
    expect(r.stdout).toContain(`[PROCESS_LOCK_STALE] Found stale lock file for PID ${killed}, removing...`)
    for (const [type, side] of [
      ['backend', 'SHORT'],
      ['worker', 'SHORT'],
      ['backend', 'LONG'],
      ['worker', 'LONG'],
    ])
      expect(r.stdout).toMatch(
        new RegExp(`\\[PROCESS_LOCK_RELEASED\\] \\{ processType: '${type}', tradeSide: '${side}', pid: \\d+ \\}`),
      )
    expect(r.stdout).toContain(`No locks in ${work}/locks`)
    expect(r.stdout).toContain('[PM2] [v] PM2 Daemon Stopped')
    expect(left(tmp)).toEqual({ started: [], files: [] })
  })

  test('on a terminal: bold titles, and none with NO_COLOR', async () => {
    // `script` gives the demo a pseudo-terminal.
    const onTty = (env) => {
      const t = demoTmp('demo-tty')
      return watch('script', ['-qec', `${process.execPath} ${DEMO}`, '/dev/null'], {
        cwd: ROOT,
        env: { ...process.env, TMPDIR: t, NO_COLOR: undefined, ...env },
        doneMs: DEMO_MS,
      })
        .done()
        .then((r) => ({ ...r, left: left(t) }))
    }
    const [coloured, plain] = await Promise.all([onTty({}), onTty({ NO_COLOR: '1' })])
    expect(coloured.code).toBe(0)
    expect(coloured.stdout).toContain('\x1b[1m== Normal start')
    expect(plain.code).toBe(0)
    expect(plain.stdout).toContain('== Normal start')
    // biome-ignore lint/suspicious/noControlCharactersInRegex: an ANSI colour sequence starts with ESC
    expect(plain.stdout).not.toMatch(/\x1b\[\d+m/)
    expect([coloured.left, plain.left]).toEqual([
      { started: [], files: [] },
      { started: [], files: [] },
    ])
  })

  test('a reader that goes away (| head): the demo stops what it started and ends', async () => {
    const { p, tmp } = demo()
    // Our end of its stdout is closed once PM2 runs the services, before the demo writes on.
    await p.waitFor('== Normal start')
    await waitFor(() => startedUnder(tmp).length >= 3)
    p.child.stdout.destroy()
    const r = await p.done()
    expect(r).toMatchObject({ code: 0, signal: null })
    expect(r.stderr).toBe('')
    expect(left(tmp)).toEqual({ started: [], files: [] })
  })

  test.each(['SIGTERM', 'SIGINT', 'SIGHUP'])(
    '%s while its services run: it stops them and PM2, removes its directory and ends by the signal',
    async (signal) => {
      const { p, tmp } = demo(['--keep'])
      await p.waitFor('press Ctrl+C to stop them')
      const started = startedUnder(tmp)
      // The PM2 daemon and four services.
      expect(started.length).toBeGreaterThanOrEqual(5)
      p.kill(signal)
      const r = await p.done()
      expect(r).toMatchObject({ code: null, signal })
      expect(left(tmp)).toEqual({ started: [], files: [] })
      for (const pid of started) expect(running(pid)).toBe(false)
    },
  )

  test('an error half-way (a command that cannot be found): it says so, stops what it started and exits 1', async () => {
    // `kill` is looked up on PATH; a PATH with node, npm, npx and sh (npm runs scripts and bins
    // through it) only makes the stale-lock scene fail after PM2 started.
    const bin = path.join(demoTmp('demo-bin'), 'bin')
    fs.mkdirSync(bin)
    const npmBin = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin')
    fs.symlinkSync(process.execPath, path.join(bin, 'node'))
    fs.symlinkSync(path.join(npmBin, 'npm-cli.js'), path.join(bin, 'npm'))
    fs.symlinkSync(path.join(npmBin, 'npx-cli.js'), path.join(bin, 'npx'))
    fs.symlinkSync('/bin/sh', path.join(bin, 'sh'))
    const pathWithoutKill = bin
    const { p, tmp } = demo([], { PATH: pathWithoutKill })
    const r = await p.done()
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('demo: kill: spawn kill ENOENT')
    expect(r.stdout).toContain('$ kill -9 ')
    expect(left(tmp)).toEqual({ started: [], files: [] })
  })
})

async function waitFor(probe, timeoutMs = 120000) {
  const t0 = Date.now()
  while (!probe()) {
    if (Date.now() - t0 > timeoutMs) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 50))
  }
}
