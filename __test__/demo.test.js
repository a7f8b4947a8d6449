'use strict'
// `npm run demo` (scripts/demo.js) as people run it: to its end in a terminal or into a pipe, cut
// short by a reader that goes away (`npm run demo | head -8`), by SIGTERM (`timeout`) or SIGINT
// (Ctrl+C). However it ends, none of the services it started may outlive it, and its temporary
// lock directory goes. Linux: the services are found through /proc/<pid>/environ.
const fs = require('node:fs')
const path = require('node:path')
const { ROOT, tempDir, watch, running } = require('./helpers/proc')

const DEMO = path.join(ROOT, 'scripts', 'demo.js')
const describeLinux = process.platform === 'linux' ? describe : describe.skip

/** The PIDs of the running processes whose PROCESSLOCK_DIR lies under `tmp` (the demo's services). */
function servicesUnder(tmp) {
  const needle = Buffer.from(`PROCESSLOCK_DIR=${tmp}${path.sep}`)
  const found = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (fs.readFileSync(`/proc/${entry}/environ`).includes(needle) && running(Number(entry)))
        found.push(Number(entry))
    } catch {}
  }
  return found
}

/** Every TMPDIR given to a demo: removed after each test (the demo removes what it makes in it). */
const tmpDirs = []
afterEach(() => {
  for (const t of tmpDirs.splice(0)) fs.rmSync(t, { recursive: true, force: true })
})

function demoTmp(label = 'demo') {
  const t = tempDir(label)
  tmpDirs.push(t)
  return t
}

/** The demo with its own TMPDIR (where it makes its lock directory), output piped to us. */
function demo(args = [], env = {}) {
  const tmp = demoTmp()
  const p = watch(process.execPath, [DEMO, ...args], {
    cwd: ROOT,
    env: { ...process.env, TMPDIR: tmp, NO_COLOR: undefined, ...env },
    doneMs: 60000,
  })
  return { p, tmp }
}

const left = (tmp) => ({ services: servicesUnder(tmp), files: fs.readdirSync(tmp) })

describeLinux('npm run demo', () => {
  test('to its end into a pipe: no escape codes, PM2 stop shown as SIGINT, every lock released, nothing left', async () => {
    const { p, tmp } = demo()
    const r = await p.done()
    expect(r.code).toBe(0)
    expect(r.stdout).not.toContain('\x1b')
    expect(r.stdout).toContain('== Shutdown: SIGINT (pm2 stop) releases every lock')
    expect(r.stdout).toContain('[FATAL] LOCK_CONFLICT: backend (SHORT) is already running (PID: ')
    expect(r.stdout.match(/\[PROCESS_LOCK_RELEASED\]/g)).toHaveLength(3)
    expect(r.stdout).toContain('lock files left: none')
    expect(left(tmp)).toEqual({ services: [], files: [] })
  })

  test('on a terminal: bold titles, and none with NO_COLOR', async () => {
    // `script` gives the demo a pseudo-terminal.
    const onTty = (env) => {
      const t = demoTmp('demo-tty')
      return watch('script', ['-qec', `${process.execPath} ${DEMO}`, '/dev/null'], {
        cwd: ROOT,
        env: { ...process.env, TMPDIR: t, NO_COLOR: undefined, ...env },
        doneMs: 60000,
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
      { services: [], files: [] },
      { services: [], files: [] },
    ])
  })

  test('a reader that goes away (| head): the demo stops its services and ends', async () => {
    const { p, tmp } = demo()
    // Our end of its stdout is closed before the demo has written anything past its first lines.
    p.child.stdout.destroy()
    const r = await p.done()
    expect(r).toMatchObject({ code: 0, signal: null })
    expect(r.stderr).toBe('')
    expect(left(tmp)).toEqual({ services: [], files: [] })
  })

  test.each(['SIGTERM', 'SIGINT'])(
    '%s while its services run: it stops them, removes its directory and ends by the signal',
    async (signal) => {
      const { p, tmp } = demo(['--keep'])
      await p.waitFor('press Ctrl+C to stop them')
      const services = servicesUnder(tmp)
      expect(services).toHaveLength(3)
      p.kill(signal)
      const r = await p.done()
      expect(r).toMatchObject({ code: null, signal })
      expect(r.stdout.match(/\[PROCESS_LOCK_RELEASED\]/g)).toHaveLength(3)
      expect(left(tmp)).toEqual({ services: [], files: [] })
      for (const pid of services) expect(running(pid)).toBe(false)
    },
  )
})
