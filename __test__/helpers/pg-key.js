'use strict'
// The advisory key of a lock on a PostgreSQL server, computed as the library computes it:
// SipHash-2-4, keyed with the database's salt, of `processlock\0<namespace>\0<file name>`.

const M = (1n << 64n) - 1n
const rotl = (x, b) => ((x << BigInt(b)) | (x >> BigInt(64 - b))) & M

/** SipHash-2-4 of `bytes` (a Buffer) under the keys `k0`, `k1` (BigInt), as an unsigned BigInt. */
function siphash24(k0, k1, bytes) {
  let v0 = 0x736f6d6570736575n ^ k0
  let v1 = 0x646f72616e646f6dn ^ k1
  let v2 = 0x6c7967656e657261n ^ k0
  let v3 = 0x7465646279746573n ^ k1
  const round = () => {
    v0 = (v0 + v1) & M
    v1 = rotl(v1, 13) ^ v0
    v0 = rotl(v0, 32)
    v2 = (v2 + v3) & M
    v3 = rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & M
    v3 = rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & M
    v1 = rotl(v1, 17) ^ v2
    v2 = rotl(v2, 32)
  }
  const end = bytes.length - (bytes.length % 8)
  const block = (m) => {
    v3 ^= m
    round()
    round()
    v0 ^= m
  }
  for (let i = 0; i < end; i += 8) block(bytes.readBigUInt64LE(i))
  let last = BigInt(bytes.length & 0xff) << 56n
  for (let i = end; i < bytes.length; i++) last |= BigInt(bytes[i]) << BigInt(8 * (i - end))
  block(last)
  v2 ^= 0xffn
  for (let i = 0; i < 4; i++) round()
  return (v0 ^ v1 ^ v2 ^ v3) & M
}

/** The signed 64-bit key of `fileName` in `namespace` under the salt text the secret table keeps. */
function saltedKey(saltText, fileName, namespace = 'processlock') {
  const k0 = BigInt(`0x${saltText.slice(0, 16)}`)
  const k1 = BigInt(`0x${saltText.slice(16, 32)}`)
  return BigInt.asIntN(64, siphash24(k0, k1, Buffer.from(`processlock\0${namespace}\0${fileName}`)))
}

/** The database's salt, as the superuser of a test server reads it (`null` before any lock was taken). */
async function saltOf(pg, table = 'processlock_holders') {
  // The server helper answers an error with nothing: look before reading.
  const [exists] = await pg.sql(`SELECT count(*) FROM pg_class WHERE relname = '${table}_secret'`)
  if (exists === '0') return null
  const rows = await pg.sql(`SELECT salt FROM ${table}_secret WHERE namespace = '' AND lock_name = ''`)
  return rows[0] ?? null
}

module.exports = { siphash24, saltedKey, saltOf }
