'use strict'
// `processlock run` hands its lock to one process of the command's tree: the first one that
// takes the same lock owns it, wherever it sits in the tree (npm, a shell in between); every
// other process of the tree gets LOCK_CONFLICT, at the same time or later. Real processes, real
// signals; each claimant reports its outcome and keeps what it got until the test opens a gate.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { tempDir, lockDirEntries, FIXTURES } = require('./helpers/proc')
const { startCli, waitGone } = require('./helpers/cli-proc')

const CLAIM = path.join(FIXTURES, 'claim.js')
const sh = (word) => `'${String(word).replace(/'/g, `'\\''`)}'`
const node = `${sh(process.execPath)} ${sh(CLAIM)}`

/** `processlock run backend -- <argv>`, with the gate file the claimants wait for. */
function runWrapped(dir, argv, env = {}, cwd) {
  const gate = path.join(dir, '..', `${path.basename(dir)}.gate`)
  const run = startCli(['run', 'backend', '-q', '--', ...argv], { dir, env: { CLAIM_GATE: gate, ...env }, cwd })
  return { run, gate }
}

/** The claimants' JSON lines so far. */
const reports = (run) =>
  run.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))

async function waitReports(run, n) {
  await run.waitFor(new RegExp(`(^\\{.*\\n){${n}}`, 'm'))
  const until = Date.now() + 15000
  while (reports(run).length < n && Date.now() < until) await new Promise((r) => setTimeout(r, 10))
  return reports(run)
}

// A shell passes the descriptors on; Node's child_process does not (npm, npx, node --watch are
// Node programs): then the claimants ask processlock for them.
const LAUNCH_THREE = `const { spawn } = require('node:child_process')
for (let i = 0; i < 3; i++) spawn(process.execPath, [${JSON.stringify(CLAIM)}], { stdio: 'inherit' })`

test.each([
  ['a shell (inherited descriptors)', ['/bin/sh', '-c', `${node} & ${node} & ${node} & wait`]],
  ['a Node launcher (descriptors asked for)', [process.execPath, '-e', LAUNCH_THREE]],
])('siblings started together by %s: exactly one owns the lock, the others conflict', async (_, argv) => {
  const dir = tempDir('handover-siblings')
  const { run, gate } = runWrapped(dir, argv)
  const got = await waitReports(run, 3)
  expect(got.filter((r) => r.ok)).toHaveLength(1)
  const losers = got.filter((r) => !r.ok)
  expect(losers.map((r) => r.code)).toEqual(['LOCK_CONFLICT', 'LOCK_CONFLICT'])
  const record = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8'))
  for (const r of losers)
    expect(r.message).toBe(`LOCK_CONFLICT: backend (SHORT) is already running (PID: ${record.pid})`)
  // The winner's variable is gone from its environment; the losers still see theirs (unused).
  expect(got.find((r) => r.ok).inherited).toBeNull()
  fs.writeFileSync(gate, '')
  const r = await run.done()
  expect(r.code).toBe(0)
  expect(lockDirEntries(dir)).toEqual([])
})

test.each([
  ['a shell', (_dir) => ['/bin/sh', '-c', `${node}; true`]],
  [
    'npm run',
    (dir) => {
      const project = path.join(dir, '..', `${path.basename(dir)}-project`)
      fs.mkdirSync(project)
      fs.writeFileSync(
        path.join(project, 'package.json'),
        JSON.stringify({ name: 'wrapped', version: '1.0.0', private: true, scripts: { start: node } }),
      )
      return ['npm', 'run', '--silent', 'start']
    },
  ],
])('a process started through %s still claims the lock', async (_, argv) => {
  const dir = tempDir('handover-through')
  const args = argv(dir)
  const cwd = args[0] === 'npm' ? path.join(dir, '..', `${path.basename(dir)}-project`) : undefined
  const { run, gate } = runWrapped(dir, args, {}, cwd)
  const [got] = await waitReports(run, 1)
  expect(got).toMatchObject({ attempt: 1, ok: true, inherited: null })
  fs.writeFileSync(gate, '')
  const r = await run.done()
  expect(r.code).toBe(0)
  expect(lockDirEntries(dir)).toEqual([])
})

test('a child of the owner cannot claim the lock, not even after the owner died', async () => {
  const dir = tempDir('handover-child')
  // The shell stays after the owner (holding the inherited descriptor, as a wrapper script would).
  const { run, gate } = runWrapped(dir, ['/bin/sh', '-c', `${node}; exec sleep 60`], {
    CLAIM_CHILD: '1',
    CLAIM_AGAIN: '1',
  })
  const [owner, child] = await waitReports(run, 2)
  expect(owner).toMatchObject({ attempt: 1, ok: true, inherited: null })
  // Started by the owner with the environment process.env gives: no variable, no claim.
  expect(child).toMatchObject({ attempt: 1, ok: false, code: 'LOCK_CONFLICT', inherited: null })
  expect(child.pid).not.toBe(owner.pid)

  // The owner dies without releasing: the file stays, held by the shell's inherited descriptor.
  process.kill(owner.pid, 'SIGKILL')
  await waitGone(owner.pid)
  fs.writeFileSync(gate, '')
  const got = await waitReports(run, 3)
  expect(got[2]).toMatchObject({ pid: child.pid, attempt: 2, ok: false, code: 'LOCK_CONFLICT' })
  fs.writeFileSync(`${gate}.end`, '')
  await waitGone(child.pid)

  run.kill('SIGTERM')
  const r = await run.done()
  expect(r.signal === 'SIGTERM' || r.code === 143).toBe(true)
  expect(lockDirEntries(dir)).toEqual([])
})

test('a process outside the command with a copy of its variable cannot claim the lock', async () => {
  const dir = tempDir('handover-outsider')
  const start = path.join(dir, '..', `${path.basename(dir)}.start`)
  // The command starts its claimant only once the test says so.
  const { run, gate } = runWrapped(dir, [
    '/bin/sh',
    '-c',
    `n=0; while [ ! -e ${sh(start)} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; ${node}`,
  ])
  const until = Date.now() + 15000
  while (!fs.existsSync(path.join(dir, 'backend.short.lock')) && Date.now() < until)
    await new Promise((r) => setTimeout(r, 10))
  const commandPid = JSON.parse(fs.readFileSync(path.join(dir, 'backend.short.lock'), 'utf8')).pid
  // The record names the command's process as soon as it is forked; its environment is the
  // command's only once it has exec'd.
  const variable = () =>
    fs
      .readFileSync(`/proc/${commandPid}/environ`, 'utf8')
      .split('\0')
      .find((v) => v.startsWith('PROCESSLOCK_INHERITED='))
  while (!variable() && Date.now() < until) await new Promise((r) => setTimeout(r, 10))
  const inherited = variable().slice('PROCESSLOCK_INHERITED='.length)
  const outsider = spawnSync(process.execPath, [CLAIM], {
    env: {
      ...process.env,
      PROCESSLOCK_DIR: dir,
      TRADE_SIDE: 'SHORT',
      PROCESSLOCK_INHERITED: inherited,
      CLAIM_GATE: '/',
    },
    encoding: 'utf8',
  })
  expect(JSON.parse(outsider.stdout)).toMatchObject({ ok: false, code: 'LOCK_CONFLICT' })
  // The outsider took nothing: the command's own claimant still gets the lock.
  fs.writeFileSync(start, '')
  const [got] = await waitReports(run, 1)
  expect(got).toMatchObject({ ok: true, inherited: null })
  fs.writeFileSync(gate, '')
  expect((await run.done()).code).toBe(0)
  expect(lockDirEntries(dir)).toEqual([])
})

test('under a restart loop (node --watch), each restarted app claims the lock again; it never leaves the command, and only processlock says released', async () => {
  const dir = tempDir('handover-watch')
  const project = tempDir('handover-watch-app')
  const app = path.join(project, 'app.js')
  // The app takes the lock, says what it got, and runs until node --watch restarts it.
  fs.writeFileSync(
    app,
    `const pl = require(${JSON.stringify(path.join(__dirname, '..'))})
let out
try {
  const info = pl.acquireLock('backend')
  out = { ok: true, infoPid: info.pid }
} catch (e) {
  out = { ok: false, code: e.code }
}
console.log(JSON.stringify({ pid: process.pid, ppid: process.ppid, ...out }))
setInterval(() => {}, 1000)
`,
  )
  const run = startCli(['run', 'backend', '--', process.execPath, '--watch', app], { dir, cwd: project })
  const lockFile = path.join(dir, 'backend.short.lock')
  const apps = []
  for (let round = 1; round <= 3; round++) {
    if (round > 1) {
      // Restart: node --watch stops the app and starts it again.
      const t = new Date()
      fs.utimesSync(app, t, t)
    }
    // Its lines come between the watcher's own.
    await run.waitFor(new RegExp(`(^\\{.*\\n(.*\\n)*){${round}}`, 'm'))
    const now = reports(run)[round - 1]
    apps.push(now)
    // The watcher, processlock's child, holds the lock; the record names it throughout.
    const record = JSON.parse(fs.readFileSync(lockFile, 'utf8'))
    expect({ round, now, recordPid: record.pid }).toEqual({
      round,
      now: { pid: now.pid, ppid: now.ppid, ok: true, infoPid: now.ppid },
      recordPid: now.ppid,
    })
  }
  expect(new Set(apps.map((a) => a.pid)).size).toBe(3)
  // Nothing was said released while the command ran.
  expect(run.stderr).not.toContain('[PROCESS_LOCK_RELEASED]')
  run.kill('SIGTERM')
  const r = await run.done()
  const released = r.stderr.split('\n').filter((l) => l.startsWith('[PROCESS_LOCK_RELEASED]'))
  expect(released).toEqual([
    `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${apps[0].ppid} }`,
  ])
  expect(lockDirEntries(dir)).toEqual([])
})
