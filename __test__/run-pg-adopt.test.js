'use strict'
// `processlock run --url` hands its hold on the server to the one process of its command that
// takes the same lock: a private server started for this file, real `processlock` processes,
// real Node apps, real signals. Needs `npm run build` first.
const fs = require('node:fs')
const path = require('node:path')
const pl = require('..')
const { tempDir, watch: watchProc } = require('./helpers/proc')
const { LOST_EXIT_STATUS, usePg } = require('./helpers/pg')
const { startCli } = require('./helpers/cli-proc')

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)
const APP = path.join(__dirname, 'fixtures', 'pg-adopt.js')
const FORGER = path.join(__dirname, 'fixtures', 'pg-forger.js')
// The next instance: waits for the lock, then says whether a given process still ran then.
const SUCCESSOR = path.join(__dirname, 'fixtures', 'pg-successor.js')

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

pgTest('a process outside the command cannot adopt with its variable', async () => {
  const run = runOnServer([process.execPath, APP], { env: { ADOPT_WAIT_GO: '1' } })
  const [start] = await waitSteps(run, 'start')
  const handover = JSON.parse(start.env)
  expect(handover.lock).toContain('backend.short.lock')
  // The claim token is never inherited: only processlock hands it out, to its own command.
  expect(handover.tokenFd).toBeUndefined()
  const gates = tempDir('adopt-stranger')
  fs.writeFileSync(path.join(gates, 'end'), '')
  const stranger = require('node:child_process').spawnSync(process.execPath, [APP], {
    env: {
      ...process.env,
      TRADE_SIDE: 'SHORT',
      ADOPT_URL: pg.url,
      ADOPT_GATES: gates,
      PROCESSLOCK_SERVER_LOCK: start.env,
    },
    encoding: 'utf8',
  })
  const tried = steps({ stdout: stranger.stdout }, 'acquire')
  expect(tried).toHaveLength(1)
  expect(tried[0]).toMatchObject({ ok: false, code: 'LOCK_CONFLICT', holderPid: run.pid })
  expect(stranger.status).toBe(0)

  // The token's byte is still there for the app of the command.
  run.open('go')
  const [got] = await waitSteps(run, 'acquire')
  expect(got).toMatchObject({ ok: true, held: true, info: { pid: run.pid } })
  run.open('end')
  expect((await run.done(30000)).code).toBe(0)
})

pgTest(
  'a forged hold (its own shell as the holder, its own pipe as the token) gets a conflict, not a second owner',
  async () => {
    const run = runOnServer([process.execPath, APP])
    const [got] = await waitSteps(run, 'acquire')
    expect(got).toMatchObject({ ok: true, held: true })
    const lock = JSON.parse(steps(run, 'start')[0].env).lock
    // Outside processlock run: a shell that opens a FIFO of its own at descriptor 7, puts one
    // byte in it, and starts the forger, which names the shell as the holder in the variable.
    const dir = tempDir('adopt-forger')
    const forged = require('node:child_process').spawnSync(
      '/bin/sh',
      [
        '-c',
        'mkfifo "$1/token" && exec 7<>"$1/token" && printf x >&7 && "$0" "$2"; echo "shell $$"',
        process.execPath,
        dir,
        FORGER,
      ],
      { env: { ...process.env, TRADE_SIDE: 'SHORT', ADOPT_URL: pg.url, FORGE_LOCK: lock }, encoding: 'utf8' },
    )
    const [line] = forged.stdout.split('\n').filter((l) => l.startsWith('{'))
    expect({ out: JSON.parse(line), err: forged.stderr }).toEqual({
      out: { ok: false, code: 'LOCK_CONFLICT', holderPid: run.pid },
      err: '',
    })
    // The real holder is untouched and still the only one on the server.
    expect(await advisoryHolders()).toHaveLength(1)
    run.open('status')
    expect((await waitSteps(run, 'status'))[0].held).toBe(true)
    run.open('end')
    expect((await run.done(30000)).code).toBe(0)
  },
)

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

/** Start time (clock ticks after boot) of a running process, or null if there is none. */
function startTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return fields[0] === 'Z' || fields[0] === 'X' ? null : fields[19]
  } catch {
    return null
  }
}

const isGone = (app) => startTicks(app.pid) !== app.ticks

/** `check`, then the app is killed if it is still there (so that a failure leaves nothing behind). */
async function thenKill(app, check) {
  try {
    await check()
  } finally {
    if (!isGone(app)) process.kill(app.pid, 'SIGKILL')
  }
}

describe('when processlock itself is SIGKILLed, an app that adopted the lock through a shell (which the parent-death signal does not reach) learns at once that it lost it', () => {
  // The shell stays between processlock and the app (it has more to do after it), so the
  // parent-death signal reaches the shell only and the app lives on.
  const command = ['/bin/sh', '-c', '"$0" "$1"; echo after', process.execPath, APP]

  pgTest('by default it exits 75 with the LOST line', async () => {
    const run = runOnServer(command)
    const [got] = await waitSteps(run, 'acquire')
    expect(got).toMatchObject({ ok: true, held: true, info: { pid: run.pid } })
    const app = { pid: got.pid, ticks: startTicks(got.pid) }
    process.kill(run.pid, 'SIGKILL')
    // The app ends by itself (it would run for a minute otherwise). Its output closes as it
    // exits, a moment before /proc stops showing it.
    await thenKill(app, () => until(() => isGone(app), 'the app is gone'))
    const r = await run.done(30000)
    expect(r.stderr).toContain(
      `[PROCESS_LOCK_LOST] { processType: 'backend', tradeSide: 'SHORT', pid: ${run.pid}, reason: 'processlock run (PID ${run.pid}) that held it is gone' }`,
    )
  })

  pgTest('with onLost, it is told, and no longer holds the lock', async () => {
    const run = runOnServer(command, { env: { ADOPT_ON_LOST: 'callback' } })
    const [got] = await waitSteps(run, 'acquire')
    run.open('status')
    expect((await waitSteps(run, 'status'))[0].held).toBe(true)
    process.kill(run.pid, 'SIGKILL')
    await run.exited()
    const [lost] = await waitSteps(run, 'lost')
    expect(lost).toMatchObject({ pid: got.pid, step: 'lost', code: 'LOCK_LOST' })
    expect(lost.message).toContain(`processlock run (PID ${run.pid}) that held it is gone`)
    // Its session, and so the lock, ended with it.
    await until(async () => (await advisoryHolders()).length === 0, 'the lock is free')
    run.open('recheck')
    const status = await waitSteps(run, 'status', 2)
    expect(status[1]).toEqual({ pid: got.pid, step: 'status', held: false })
    run.open('end')
    await run.done(30000)
  })
})

// The command's whole process tree is the unit: the app behind a shell or npm is stopped with it,
// and the lock is let go only once none of its processes is left.

/** The command lines that put an app between processlock and a launcher that stays. */
const launchers = {
  'sh -c': () => ({ command: ['/bin/sh', '-c', '"$0" "$1"; echo after', process.execPath, APP] }),
  'npm run start': () => {
    const project = tempDir('adopt-npm')
    fs.writeFileSync(
      path.join(project, 'package.json'),
      JSON.stringify({
        name: 'app',
        version: '1.0.0',
        private: true,
        scripts: { start: `"${process.execPath}" "${APP}"` },
      }),
    )
    return { command: ['npm', 'run', '--silent', 'start'], cwd: project }
  },
}

/** `runOnServer` through a launcher; resolves once the app adopted the lock, with its PID and start time. */
async function appBehind(how, { env = {}, runArgs = [] } = {}) {
  const { command, cwd } = launchers[how]()
  const gates = tempDir('adopt-gates')
  const run = startCli(['run', 'backend', '--url', pg.url, ...runArgs, '--', ...command], {
    dir: tempDir('adopt'),
    cwd,
    env: { ADOPT_URL: pg.url, ADOPT_GATES: gates, ...env },
  })
  run.open = (name) => fs.writeFileSync(path.join(gates, name), '')
  const [got] = await waitSteps(run, 'acquire')
  expect(got).toMatchObject({ ok: true, held: true, info: { pid: run.pid } })
  // The launcher is between: the app is not processlock's child.
  expect(got.pid).not.toBe(run.pid)
  const app = { pid: got.pid, ticks: startTicks(got.pid) }
  expect(app.ticks).not.toBeNull()
  return { run, app }
}

describe.each(Object.keys(launchers))('with the app behind %s', (how) => {
  pgTest(
    'a lost lock (its session ended on the server) stops the app, and processlock exits only once it is gone',
    async () => {
      const { run, app } = await appBehind(how)
      const [holder] = await advisoryHolders()
      await pg.sql(`SELECT pg_terminate_backend(${holder})`)
      const r = await run.exited()
      // Evidence first: the app is gone by the time processlock has exited...
      const goneAtExit = isGone(app)
      await thenKill(app, () =>
        expect({ goneAtExit, code: r.code }).toEqual({ goneAtExit: true, code: LOST_EXIT_STATUS }),
      )
      expect((await waitSteps(run, 'sigterm')).map((s) => s.pid)).toContain(app.pid)
      // ...so the next instance, started after it, never runs next to it.
      const next = pl.acquireLock('backend', { url: pg.url, tradeSide: 'SHORT', log: false })
      expect(Number(next.fencingToken)).toBeGreaterThan(0)
      pl.releaseLock('backend', { url: pg.url, tradeSide: 'SHORT' })
    },
  )
})

pgTest('a stopped server: an app that ignores SIGTERM gets SIGKILL after the grace period', async () => {
  const { run, app } = await appBehind('sh -c', { env: { ADOPT_IGNORE_TERM: '1' }, runArgs: ['--grace', '300'] })
  await pg.stop()
  try {
    const r = await run.exited()
    const gone = isGone(app)
    await thenKill(app, () => expect({ gone, code: r.code }).toEqual({ gone: true, code: LOST_EXIT_STATUS }))
    expect((await waitSteps(run, 'sigterm')).map((s) => s.pid)).toEqual([app.pid])
    expect((await run.done(30000)).stderr).toContain(
      `processlock: still running 300 ms after SIGTERM, sent SIGKILL: PID ${app.pid}`,
    )
  } finally {
    await pg.start()
  }
})

describe.each([
  ['its main process is SIGKILLed (the OOM killer)', ['/bin/sh', '-c', '"$0" "$1"; echo after'], 'SIGKILL'],
  // The shell leaves the app behind once the test opens the gate `exit` (bounded: 60 s).
  [
    'its main process exits by itself',
    [
      '/bin/sh',
      '-c',
      'i=0; "$0" "$1" & while [ ! -e "$ADOPT_GATES/exit" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; exit 3',
    ],
    3,
  ],
])('when %s', (_, launcher, ending) => {
  pgTest('the lock stays held until every process of the command is gone', async () => {
    const gates = tempDir('adopt-gates')
    const run = startCli(
      ['run', 'backend', '--url', pg.url, '--grace', '1000', '--', ...launcher, process.execPath, APP],
      {
        dir: tempDir('adopt'),
        // The app takes its time to go: SIGTERM is ignored, SIGKILL comes after the grace period.
        env: { ADOPT_URL: pg.url, ADOPT_GATES: gates, ADOPT_IGNORE_TERM: '1' },
      },
    )
    const [got] = await waitSteps(run, 'acquire')
    expect(got).toMatchObject({ ok: true, held: true, info: { pid: run.pid } })
    const app = { pid: got.pid, ticks: startTicks(got.pid) }
    const next = watchProc(process.execPath, [SUCCESSOR], {
      env: {
        ...process.env,
        ADOPT_URL: pg.url,
        TRADE_SIDE: 'SHORT',
        WATCH_PID: String(app.pid),
        WATCH_TICKS: app.ticks,
      },
    })
    // The successor is queued on the server behind processlock's session.
    await until(
      async () =>
        (await pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))[0] === '1',
      'the successor waits',
    )
    if (ending !== 'SIGKILL') fs.writeFileSync(path.join(gates, 'exit'), '')
    if (ending === 'SIGKILL') {
      const main = Number(fs.readFileSync(`/proc/${got.pid}/stat`, 'utf8').split(') ')[1].split(' ')[1])
      expect(main).not.toBe(run.pid)
      process.kill(main, 'SIGKILL')
    }
    const n = await next.done(30000)
    const [line] = n.stdout.split('\n').filter((l) => l.startsWith('{'))
    // When the successor got the lock, the app was already gone.
    await thenKill(app, () => expect(JSON.parse(line)).toMatchObject({ ok: true, watchedAlive: false }))
    const r = await run.done(30000)
    if (ending === 'SIGKILL') expect(r.signal).toBe('SIGKILL')
    else expect(r.code).toBe(ending)
    expect(steps(run, 'sigterm').map((s) => s.pid)).toEqual([app.pid])
    pl.releaseLock('backend', { url: pg.url, tradeSide: 'SHORT' })
  })
})
