'use strict'
// Replacing the holder of a lock on a PostgreSQL server, from another host: `acquireLock` with
// `replace` and `processlock run --url --replace` ask the holder through the server to stop; it
// sends itself SIGTERM, drains, lets go, and only then is the lock taken. "Another host" is a UTS
// namespace and a boot id of its own. Events are ordered by evidence: the fencing tokens, and a
// journal every process appends its protected writes to (O_APPEND keeps them in the order they
// were written), never by time.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const pl = require('..')
const { FIXTURES, start, tempDir, watch } = require('./helpers/proc')
const { usePg } = require('./helpers/pg')
const { BINARY, waitGone } = require('./helpers/cli-proc')
const { needs, onlyOn } = require('./helpers/skip')

/** A heartbeat every half second: a holder hears a request within that. */
const LEASE_MS = 2000

const pg = usePg()
const pgTest = (name, fn, timeout = 60000) => pg.test(name, fn, timeout)
const hostTest =
  process.platform !== 'linux'
    ? onlyOn(['linux'], 'a host of its own is a UTS namespace')
    : process.getuid() === 0
      ? (name, fn) => pg.test(name, fn, 60000)
      : needs(false, 'root, for UTS and mount namespaces of its own')

const SHORT = (extra = {}) => ({ url: pg.url, tradeSide: 'SHORT', log: false, ...extra })

function newJournal() {
  const file = path.join(tempDir('pg-replace'), 'journal')
  fs.writeFileSync(file, '')
  return file
}

const journalOf = (file) => fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean)

/**
 * Starts `file ...args` on "another host": a host name (`other-host`) and a boot id of its own,
 * so its start tokens are not this machine's.
 */
function onOtherHost(file, args, env) {
  const bootId = path.join(tempDir('pg-boot'), 'boot_id')
  fs.writeFileSync(bootId, '00000000-0000-4000-8000-000000000000\n')
  return watch(
    'unshare',
    [
      '--uts',
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      'hostname other-host && mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"',
      bootId,
      file,
      ...args,
    ],
    { env: { ...process.env, TRADE_SIDE: 'SHORT', PROCESSLOCK_LOG: '', NO_COLOR: '1', ...env }, stdin: 'pipe' },
  )
}

/** `node pg-replace.js <mode>` on another host, holding the lock. */
async function holderOnOtherHost(mode, journal) {
  const holder = onOtherHost(process.execPath, [path.join(FIXTURES, 'pg-replace.js'), mode], {
    PROCESSLOCK_DIR: tempDir('pg-other'),
    PROCESSLOCK_URL: pg.url,
    LEASE_MS: String(LEASE_MS),
    JOURNAL: journal,
  })
  const info = JSON.parse((await holder.waitFor(/HELD (.*)\n/, 30000))[1])
  expect(info).toMatchObject({ pid: holder.pid, hostname: 'other-host', backend: 'postgres' })
  return { holder, info }
}

/** `node pg-replace.js replace` here, with the URL `url`; its outcome and log lines. */
async function replacer(journal, { waitMs, url = pg.url }) {
  const p = start('pg-replace.js', {
    dir: tempDir('pg-replacer'),
    env: { PROCESSLOCK_URL: url, LEASE_MS: String(LEASE_MS), JOURNAL: journal, WAIT_MS: String(waitMs) },
    args: ['replace'],
  })
  expect((await p.done(60000)).code).toBe(0)
  const logs = [...p.stdout.matchAll(/^LOG (.*)$/gm)].map((m) => m[1])
  const got = p.stdout.match(/^GOT (.*)$/m)
  const failed = p.stdout.match(/^FAILED (\S+) (\S*)$/m)
  return { pid: p.pid, logs, info: got && JSON.parse(got[1]), failed: failed && failed.slice(1) }
}

/** What the holder `pid` on another host says when a replacer here asked it to go. */
const askedLine = (replacerPid, holderPid) =>
  `[PROCESS_LOCK_REPLACE] backend (SHORT): PID ${replacerPid} on host '${os.hostname()}' asked, through the server, to take over; sending SIGTERM to this process (PID ${holderPid})`

pgTest('replace with a URL takes the lock on the server, never a lock file of this host', () => {
  const dir = tempDir('pg-replace-free')
  const info = pl.acquireLock('backend', SHORT({ dir, replace: true, waitMs: 5000 }))
  try {
    expect(info).toMatchObject({ backend: 'postgres', pid: process.pid })
    expect(info.fencingToken).toMatch(/^\d+$/)
    expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: process.pid, fencingToken: info.fencingToken })
    // Nothing was written in the lock directory.
    expect(fs.readdirSync(dir)).toEqual([])
  } finally {
    pl.releaseLock('backend', SHORT({ dir }))
  }
})

hostTest(
  'acquireLock with replace asks a holder on another host to stop; it drains, lets go, then the lock is taken',
  async () => {
    const journal = newJournal()
    const { holder, info: old } = await holderOnOtherHost('drain', journal)
    try {
      const r = await replacer(journal, { waitMs: 20000 })
      expect(r.failed).toBeNull()
      expect(r.info).toMatchObject({ pid: r.pid, backend: 'postgres', hostname: os.hostname() })
      expect(BigInt(r.info.fencingToken)).toBeGreaterThan(BigInt(old.fencingToken))
      // Every write of the old holder comes before the new holder had the lock.
      expect(journalOf(journal)).toEqual([
        `old ${old.fencingToken} write 1`,
        `old ${old.fencingToken} write 2`,
        `old ${old.fencingToken} write 3`,
        `new ${r.info.fencingToken} acquired`,
      ])
      const ended = await holder.done(30000)
      expect(ended.code).toBe(0)
      expect(holder.stdout).toContain('DRAINING')
      expect(holder.stderr.trim().split('\n')).toEqual([askedLine(r.pid, holder.pid)])
      expect(r.logs).toEqual([
        expect.stringMatching(
          new RegExp(
            `^\\[PROCESS_LOCK_REPLACE\\] Asked backend \\(SHORT\\) \\(PID ${holder.pid} on host 'other-host', started '.+'\\) through the server to stop: .*waiting up to 20000 ms`,
          ),
        ),
        expect.stringMatching(
          new RegExp(
            `^\\[PROCESS_LOCK_REPLACE\\] PID ${holder.pid} on host 'other-host' let go of backend \\(SHORT\\) after \\d+ ms$`,
          ),
        ),
        `[PROCESS_LOCK_ACQUIRED] { processType: 'backend', tradeSide: 'SHORT', pid: ${r.pid} }`,
        expect.stringMatching(/^\[PROCESS_LOCK_RELEASED\]/),
      ])
    } finally {
      holder.kill('SIGKILL')
    }
  },
)

hostTest(
  'a holder that ignores SIGTERM keeps its lock: the replacer gets a conflict after waitMs, and nothing is killed',
  async () => {
    const journal = newJournal()
    const { holder, info: old } = await holderOnOtherHost('ignore', journal)
    try {
      const r = await replacer(journal, { waitMs: 4000 })
      expect(r.info).toBeNull()
      expect(r.failed).toEqual(['LOCK_CONFLICT', String(holder.pid)])
      await holder.waitFor('IGNORED')
      expect(r.logs).toContainEqual(
        `[PROCESS_LOCK_REPLACE] PID ${holder.pid} on host 'other-host' still holds backend (SHORT) after 4000 ms; it was not killed: only its own host can kill it`,
      )
      expect(journalOf(journal)).toEqual([])
      // Still the holder, with the same token, and still running.
      expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: holder.pid, fencingToken: old.fencingToken })
      holder.child.stdin.write('release\n')
      expect((await holder.done(30000)).code).toBe(0)
      expect(holder.stdout).toContain('HELD_NOW true')
    } finally {
      holder.kill('SIGKILL')
    }
  },
)

pgTest(
  'a request from another role is not seen: the holder is not stopped, and a request of its own role then is',
  async () => {
    await pg.sql(`CREATE ROLE intruder LOGIN PASSWORD 'intruder-secret'`)
    const url = new URL(pg.url)
    url.username = 'intruder'
    url.password = 'intruder-secret'
    const journal = newJournal()
    const holder = start('pg-replace.js', {
      dir: tempDir('pg-replace-held'),
      env: { PROCESSLOCK_URL: pg.url, LEASE_MS: String(LEASE_MS), JOURNAL: journal },
      args: ['drain'],
    })
    try {
      const old = JSON.parse((await holder.waitFor(/HELD (.*)\n/, 30000))[1])
      // The other role waits for the lock under a request naming this holder, heartbeat after
      // heartbeat of the holder, until its wait runs out.
      const hostile = await replacer(journal, { waitMs: 3000, url: url.toString() })
      expect(holder.stdout).not.toContain('DRAINING')
      expect(holder.stderr).toBe('')
      expect(hostile.failed).toEqual(['LOCK_CONFLICT', '0'])
      expect(pl.getLockInfo('backend', SHORT())).toMatchObject({ pid: holder.pid, fencingToken: old.fencingToken })
      // The same request from the holder's own role is answered.
      const r = await replacer(journal, { waitMs: 20000 })
      expect(r.info).toMatchObject({ pid: r.pid, backend: 'postgres' })
      expect(holder.stdout).toContain('DRAINING')
      expect((await holder.done(30000)).code).toBe(0)
    } finally {
      holder.kill('SIGKILL')
    }
  },
)

/** `processlock run backend --url ... <args>` here, its command writing to `journal`. */
function runHere(args, command, journal) {
  return watch(BINARY, ['run', 'backend', '--url', pg.url, ...args, '--', ...command], {
    env: {
      ...process.env,
      PROCESSLOCK_DIR: tempDir('pg-run'),
      TRADE_SIDE: 'SHORT',
      NO_COLOR: '1',
      LEASE_MS: String(LEASE_MS),
      JOURNAL: journal,
    },
  })
}

const FIXTURE = path.join(FIXTURES, 'pg-replace.js')

hostTest('processlock run --url --replace asks a holder on another host to stop, and runs once it let go', async () => {
  const journal = newJournal()
  const { holder, info: old } = await holderOnOtherHost('drain', journal)
  try {
    const run = runHere(
      ['--replace', '--grace', '20000', '--lease', String(LEASE_MS)],
      [process.execPath, FIXTURE, 'command'],
      journal,
    )
    const done = await run.done(60000)
    expect(done.code).toBe(0)
    expect(run.stdout).toContain('RAN')
    const [, , , last] = journalOf(journal)
    const token = last.match(/^new (\d+) acquired$/)[1]
    expect(BigInt(token)).toBeGreaterThan(BigInt(old.fencingToken))
    expect(journalOf(journal)).toEqual([
      `old ${old.fencingToken} write 1`,
      `old ${old.fencingToken} write 2`,
      `old ${old.fencingToken} write 3`,
      `new ${token} acquired`,
    ])
    expect(run.stderr).toMatch(
      new RegExp(
        `^\\[PROCESS_LOCK_REPLACE\\] Asked backend \\(SHORT\\) \\(PID ${holder.pid} on host 'other-host'`,
        'm',
      ),
    )
    expect(run.stderr).toMatch(
      new RegExp(
        `^\\[PROCESS_LOCK_REPLACE\\] PID ${holder.pid} on host 'other-host' let go of backend \\(SHORT\\)`,
        'm',
      ),
    )
    expect((await holder.done(30000)).code).toBe(0)
    expect(holder.stderr.trim().split('\n')).toEqual([askedLine(run.pid, holder.pid)])
  } finally {
    holder.kill('SIGKILL')
  }
})

hostTest(
  'a holder under processlock run --url behind sh -c is replaced: its whole tree stops before the lock is taken',
  async () => {
    const journal = newJournal()
    const script = `"$0" "$1" child & "$0" "$1" child; wait`
    const old = onOtherHost(
      BINARY,
      [
        'run',
        'backend',
        '--url',
        pg.url,
        '--lease',
        String(LEASE_MS),
        '--',
        'sh',
        '-c',
        script,
        process.execPath,
        FIXTURE,
      ],
      {
        PROCESSLOCK_DIR: tempDir('pg-other'),
        JOURNAL: journal,
      },
    )
    try {
      const children = []
      for (let i = 0; i < 2; i++) {
        await old.waitFor(new RegExp(`(CHILD \\d+[\\s\\S]*){${i + 1}}`), 30000)
      }
      for (const m of old.stdout.matchAll(/CHILD (\d+)/g)) children.push(Number(m[1]))
      expect(children).toHaveLength(2)
      const oldToken = (
        await pg.sql(
          `SELECT token FROM processlock_holders WHERE (record->>'pid')::int = ${old.pid} AND backend_pid IS NOT NULL`,
        )
      )[0]
      expect(oldToken).toMatch(/^\d+$/)
      const run = runHere(
        ['--replace', '--grace', '20000', '--lease', String(LEASE_MS)],
        [process.execPath, FIXTURE, 'command'],
        journal,
      )
      expect((await run.done(60000)).code).toBe(0)
      const lines = journalOf(journal)
      const token = lines[lines.length - 1].match(/^new (\d+) acquired$/)[1]
      expect(BigInt(token)).toBeGreaterThan(BigInt(oldToken))
      // Both processes of the old command stopped, and wrote so, before the new holder had the lock.
      expect(lines.slice(0, 2).sort()).toEqual(children.map((pid) => `old-child ${pid} stopping`).sort())
      expect(lines).toHaveLength(3)
      const ended = await old.done(30000)
      expect(ended.code === 0 || ended.signal === 'SIGTERM' || ended.code === 143).toBe(true)
      for (const pid of children) await waitGone(pid)
      expect(old.stderr).toContain(askedLine(run.pid, old.pid))
    } finally {
      old.kill('SIGKILL')
    }
  },
)
