'use strict'
// TLS to the server through the addon and the `processlock` command, which are built with it:
// a private server with a certificate for `localhost` from a test CA (__test__/helpers/pg.js).
// Every sslmode is covered against the client itself in crates/processlock-pg/tests/tls.rs; these
// tests show that the package users install honours `sslmode` end to end.
const path = require('node:path')
const pl = require('..')
const { usePg } = require('./helpers/pg')
const { cli } = require('./helpers/cli-proc')
const { tempDir } = require('./helpers/proc')

const pg = usePg({ tls: true })
const pgTest = pg.test

/** The server's URL with `host` in place of 127.0.0.1 and `query` appended. */
function tlsUrl(host, query) {
  const url = new URL(pg.url)
  url.hostname = host
  url.search = query
  return url.toString()
}

const verifyFull = (host, ca) => tlsUrl(host, `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca)}`)

/** Whether the session that holds an advisory lock is encrypted, as the server sees it. */
async function holderEncrypted() {
  const rows = await pg.sql(
    "SELECT s.ssl FROM pg_locks l JOIN pg_stat_ssl s ON s.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'",
  )
  expect(rows).toHaveLength(1)
  return rows[0]
}

pgTest('verify-full: the lock is held over an encrypted session, and the command sees it', async () => {
  const url = verifyFull('localhost', pg.ca)
  const opts = { url, tradeSide: 'SHORT', log: false }
  const info = pl.acquireLock('backend', opts)
  try {
    expect(info).toMatchObject({ pid: process.pid, backend: 'postgres' })
    expect(await holderEncrypted()).toBe('t')
    const dir = tempDir('pg-tls')
    expect((await cli(['check', 'backend', '--side', 'SHORT', '--url', url], { dir })).code).toBe(0)
    const listed = await cli(['check', '--url', url, '--json'], { dir })
    expect(JSON.parse(listed.stdout)).toEqual([
      expect.objectContaining({ lock: 'backend.short.lock', state: 'held', pid: process.pid }),
    ])
  } finally {
    expect(pl.releaseLock('backend', opts)).toBe(true)
  }
})

pgTest('sslmode=disable is honoured: the session is not encrypted', async () => {
  const opts = { url: tlsUrl('127.0.0.1', 'sslmode=disable'), tradeSide: 'SHORT', log: false }
  pl.acquireLock('backend', opts)
  try {
    expect(await holderEncrypted()).toBe('f')
  } finally {
    pl.releaseLock('backend', opts)
  }
})

pgTest('a certificate for another name or from another CA is refused, and nothing is held', () => {
  const otherCa = path.join(path.dirname(pg.ca), 'other-ca.pem')
  for (const url of [verifyFull('127.0.0.1', pg.ca), verifyFull('localhost', otherCa)]) {
    expect(() => pl.acquireLock('backend', { url, tradeSide: 'SHORT', log: false })).toThrow(
      expect.objectContaining({ code: 'LOCK_IO', message: expect.stringMatching(/certificate/) }),
    )
  }
  // A CA file that cannot be read is a mistake in the URL, not a failed connection.
  expect(() => pl.acquireLock('backend', { url: verifyFull('localhost', '/nonexistent/ca.pem'), log: false })).toThrow(
    expect.objectContaining({ code: 'LOCK_INVALID_OPTION' }),
  )
  expect(pl.getLockInfo('backend', { url: tlsUrl('127.0.0.1', 'sslmode=require'), tradeSide: 'SHORT' })).toBeNull()
})
