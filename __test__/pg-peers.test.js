'use strict'
// What another role of the same PostgreSQL server can make the readers of the holder table pay:
// a million rows, and a live holder's record padded to 200 MB. The command and the addon read
// only the rows that matter, a page at a time, and never a record larger than a lock file's.
// Memory is the peak resident size of the process that read (`/usr/bin/time`, or Node's own).
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const pl = require('..')
const { BINARY } = require('./helpers/cli-proc')
const { ROOT } = require('./helpers/proc')
const { usePg } = require('./helpers/pg')

const pg = usePg()
const TIME = '/usr/bin/time'
const pgTest = fs.existsSync(TIME) ? pg.test : test.skip

/** The most the command may grow to while reading; it starts at a few MiB. */
const MAX_CLI_KIB = 64 * 1024
/** The same for Node with the addon loaded, which starts at about 50 MiB. */
const MAX_NODE_KIB = 160 * 1024

/** Runs the command under /usr/bin/time: its status, output and peak resident size in KiB. */
function measured(args) {
  const r = spawnSync(TIME, ['-f', 'PEAK_KIB=%M', BINARY, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    timeout: 300000,
    env: { ...process.env, NO_COLOR: '1' },
  })
  const peak = Number(/PEAK_KIB=(\d+)/.exec(r.stderr)?.[1])
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, peak }
}

pgTest(
  'a million rows and a padded record are read in bounded memory by check, --json, listLocks and a conflict',
  async () => {
    const url = pg.url
    pl.acquireLock('backend', { url, tradeSide: 'SHORT', log: false })
    try {
      await pg.sql(
        "INSERT INTO processlock_holders SELECT -g, 'processlock', 'gone' || g || '.short.lock', g, NULL, NULL, now() FROM generate_series(1, 1000000) g",
      )
      await pg.sql(
        "INSERT INTO processlock_holders SELECT -2000000 - g, 'processlock', 'left' || g || '.short.lock', g, 1, jsonb_build_object('pid', 1000000 + g, 'started', '2026-01-01T00:00:00Z', 'processName', 'x', 'tradeSide', 'SHORT'), now() FROM generate_series(1, 2000) g",
      )
      const table = measured(['check', '--url', url])
      expect(table.code).toBe(0)
      expect(table.stdout).toContain('backend.short.lock')
      expect(table.stdout).toContain('... and 1001 more (the first 1000 by name are shown; --json lists every one)')
      expect(table.peak).toBeLessThan(MAX_CLI_KIB)
      const json = measured(['check', '--url', url, '--json'])
      expect(json.code).toBe(0)
      const items = JSON.parse(json.stdout)
      expect(items).toHaveLength(2001)
      expect(items.filter((l) => l.state === 'held').map((l) => l.lock)).toEqual(['backend.short.lock'])
      expect(json.peak).toBeLessThan(MAX_CLI_KIB)
      const list = spawnSync(
        process.execPath,
        [
          '-e',
          `const pl = require(${JSON.stringify(ROOT)}); const l = pl.listLocks({ url: process.argv[1] });
           console.log(JSON.stringify({ n: l.locks ? l.locks.length : l.length, peak: process.resourceUsage().maxRSS }))`,
          url,
        ],
        { encoding: 'utf8', timeout: 300000 },
      )
      const listed = JSON.parse(list.stdout)
      expect(listed.n).toBe(2001)
      expect(listed.peak).toBeLessThan(MAX_NODE_KIB)
      console.log(`peak KiB: check ${table.peak}, --json ${json.peak}, listLocks ${listed.peak}`)

      // The live holder's record, padded by a role allowed to write the table.
      await pg.sql(
        "UPDATE processlock_holders SET record = record || jsonb_build_object('pad', repeat('x', 200000000)) WHERE lock_name = 'backend.short.lock'",
      )
      const conflict = measured(['run', 'backend', '--side', 'SHORT', '--url', url, '--', 'true'])
      expect(conflict.code).toBe(1)
      expect(conflict.stderr).toContain('larger than 65536 bytes and was not read')
      expect(conflict.peak).toBeLessThan(MAX_CLI_KIB)
      console.log(`peak KiB of a conflicting start: ${conflict.peak}`)
    } finally {
      pl.releaseLock('backend', { url, tradeSide: 'SHORT' })
    }
  },
  600000,
)
