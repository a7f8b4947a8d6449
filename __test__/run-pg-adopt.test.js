'use strict'
// `processlock run --url` hands its hold on the server to the one process of its command that
// takes the same lock: a private server started for this file, real `processlock` processes,
// real Node apps, real signals. Needs `npm run build` first.
const fs = require('node:fs')
const path = require('node:path')
const pl = require('..')
const { tempDir } = require('./helpers/proc')
const { LOST_EXIT_STATUS, usePg } = require('./helpers/pg')
const { startCli } = require('./helpers/cli-proc')

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)
const APP = path.join(__dirname, 'fixtures', 'pg-adopt.js')

/** The server processes of the sessions that hold an advisory lock in this file's database. */
const advisoryHolders = () =>
  pg.sql(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
  )

async function until(cond, what, timeoutMs = 30000) {
  const t0 = Date.now()
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting until ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** The JSON lines the apps printed for `step`. */
function steps(p, step) {
  return p.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
    .filter((s) => s.step === step)
}

async function waitSteps(p, step, n = 1) {
  await until(() => steps(p, step).length >= n, `${n} "${step}" line(s) in:\n${p.stdout}\n${p.stderr}`)
  return steps(p, step)
}

/** `processlock run <type> --url ... -- <command>` with the app's gates in a fresh directory. */
function runOnServer(command, { env = {}, type = 'backend' } = {}) {
  const gates = tempDir('adopt-gates')
  const run = startCli(['run', type, '--url', pg.url, '--', ...command], {
    dir: tempDir('adopt'),
    env: { ADOPT_URL: pg.url, ADOPT_GATES: gates, ...env },
  })
  run.open = (name) => fs.writeFileSync(path.join(gates, name), '')
  return run
}

const conflictOf = (fn) => {
  try {
    fn()
  } catch (e) {
    return e
  }
  throw new Error('no conflict')
}

pgTest(
  'the app under run --url adopts the lock, lets go of its adoption only, and run keeps the lock until the command ends',
  async () => {
    const run = runOnServer([process.execPath, APP])
    const [got] = await waitSteps(run, 'acquire')
    expect(got).toMatchObject({ ok: true, held: true })
    expect(got.info).toMatchObject({ pid: run.pid, backend: 'postgres', tradeSide: 'SHORT' })
    expect(got.info.fencingToken).toBe(got.envToken)
    expect(got.envToken).toMatch(/^\d+$/)
    // The app logged the usual line, naming the holder as the server does: processlock.
    const acquired = `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: ${run.pid} }`
    await until(
      () => run.stderr.split(acquired).length - 1 + (run.stdout.split(acquired).length - 1) === 2,
      'two acquired lines',
    )
    // One session holds it, processlock's: the app opened none of its own.
    expect(await advisoryHolders()).toHaveLength(1)
    expect(pl.getLockInfo('backend', { url: pg.url, tradeSide: 'SHORT' })).toMatchObject({
      pid: run.pid,
      fencingToken: got.envToken,
    })

    run.open('release')
    const [released] = await waitSteps(run, 'release')
    expect(released).toEqual({ pid: got.pid, step: 'release', released: false, held: false })
    await run.waitFor(
      `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${run.pid}, keptBy: 'processlock run until its command ends' }`,
    )
    // Still processlock's on the server: another instance conflicts with it.
    expect(await advisoryHolders()).toHaveLength(1)
    const err = conflictOf(() => pl.acquireLock('backend', { url: pg.url, tradeSide: 'SHORT', log: false }))
    expect(err).toBeInstanceOf(pl.LockConflictError)
    expect(err.holder.pid).toBe(run.pid)

    // The same process may adopt it again: its claim is spent, not lost.
    run.open('again')
    const again = await waitSteps(run, 'acquire', 2)
    expect(again[1]).toMatchObject({ ok: true, held: true, info: { pid: run.pid, fencingToken: got.envToken } })

    run.open('end')
    const r = await run.done(30000)
    expect(r.code).toBe(0)
    expect(r.stderr).toContain(
      `[PROCESS_LOCK_RELEASED] { processType: 'backend', tradeSide: 'SHORT', pid: ${run.pid} }`,
    )
    expect(await advisoryHolders()).toHaveLength(0)
  },
)

pgTest('the hold goes to one process of the command, whether it inherited the token or asked run for it', async () => {
  const launchers = {
    // A shell passes its descriptors on: each app inherits the token.
    shell: ['/bin/sh', '-c', `"$0" "$1" & "$0" "$1" & "$0" "$1" & wait`, process.execPath, APP],
    // Node's child_process passes the standard three only (as npm does): each app asks run.
    node: [
      process.execPath,
      '-e',
      `for (let i = 0; i < 3; i++) require('node:child_process').spawn(process.execPath, [${JSON.stringify(APP)}], { stdio: 'inherit' })`,
    ],
  }
  for (const [how, command] of Object.entries(launchers)) {
    const run = runOnServer(command)
    const tries = await waitSteps(run, 'acquire', 3)
    const won = tries.filter((t) => t.ok)
    expect({ how, won: won.length }).toEqual({ how, won: 1 })
    for (const lost of tries.filter((t) => !t.ok)) {
      expect(lost).toMatchObject({ code: 'LOCK_CONFLICT', holderPid: run.pid, held: false })
    }
    expect(won[0].info.fencingToken).toBe(won[0].envToken)
    run.open('end')
    expect((await run.done(30000)).code).toBe(0)
  }
})

pgTest('a process outside the command cannot adopt, even with its variable and the token pipe itself', async () => {
  const run = runOnServer([process.execPath, APP], { env: { ADOPT_WAIT_GO: '1' } })
  const [start] = await waitSteps(run, 'start')
  const handover = JSON.parse(start.env)
  expect(handover.lock).toContain('backend.short.lock')
  // The stranger gets the very pipe, at the descriptor number the variable names (root can open
  // another process's descriptors), and the variable as it is: only the check that it runs
  // under processlock stands in its way.
  const pipe = fs.openSync(`/proc/${start.pid}/fd/${handover.tokenFd}`, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  const stdio = Array.from({ length: handover.tokenFd + 1 }, (_, i) => (i < 3 ? 'pipe' : 'ignore'))
  stdio[handover.tokenFd] = pipe
  const gates = tempDir('adopt-stranger')
  fs.writeFileSync(path.join(gates, 'end'), '')
  const strangerEnv = {
    ...process.env,
    TRADE_SIDE: 'SHORT',
    ADOPT_URL: pg.url,
    ADOPT_GATES: gates,
    PROCESSLOCK_SERVER_LOCK: start.env,
  }
  const stranger = require('node:child_process').spawn(process.execPath, [APP], { env: strangerEnv, stdio })
  let out = ''
  stranger.stdout.on('data', (d) => {
    out += d
  })
  const code = await new Promise((resolve) => stranger.on('exit', resolve))
  fs.closeSync(pipe)
  const tried = steps({ stdout: out }, 'acquire')
  expect(tried).toHaveLength(1)
  expect(tried[0]).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', holderPid: run.pid })
  expect(code).toBe(0)

  // The token's byte is still there for the app of the command.
  run.open('go')
  const [got] = await waitSteps(run, 'acquire')
  expect(got).toMatchObject({ ok: true, held: true, info: { pid: run.pid } })
  run.open('end')
  expect((await run.done(30000)).code).toBe(0)
})

pgTest('when processlock loses the lock, the app that adopted it gets SIGTERM and processlock exits 75', async () => {
  const run = runOnServer([process.execPath, APP])
  const [got] = await waitSteps(run, 'acquire')
  expect(got).toMatchObject({ ok: true, held: true })
  const [holder] = await advisoryHolders()
  await pg.sql(`SELECT pg_terminate_backend(${holder})`)
  const r = await run.done(30000)
  expect(steps(run, 'sigterm')).toEqual([{ pid: got.pid, step: 'sigterm' }])
  expect(r.code).toBe(LOST_EXIT_STATUS)
  expect(r.stderr).toContain(
    `[PROCESS_LOCK_LOST] { processType: 'backend', tradeSide: 'SHORT', pid: ${run.pid}, reason: `,
  )
})

pgTest('an app that adopted the lock through a shell stops holding it once processlock is killed', async () => {
  // The shell stays between processlock and the app (it has more to do after it), so the
  // parent-death signal reaches the shell only and the app lives on.
  const run = runOnServer(['/bin/sh', '-c', '"$0" "$1"; echo after', process.execPath, APP])
  const [got] = await waitSteps(run, 'acquire')
  expect(got).toMatchObject({ ok: true, held: true, info: { pid: run.pid } })
  run.open('status')
  expect((await waitSteps(run, 'status'))[0].held).toBe(true)
  process.kill(run.pid, 'SIGKILL')
  await run.exited()
  // Its session, and so the lock, ended with it.
  await until(async () => (await advisoryHolders()).length === 0, 'the lock is free')
  // The app no longer claims a lock nobody holds for it.
  run.open('recheck')
  const status = await waitSteps(run, 'status', 2)
  expect(status[1]).toEqual({ pid: got.pid, step: 'status', held: false })
  run.open('end')
  await run.done(30000)
})
