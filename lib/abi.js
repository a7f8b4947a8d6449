'use strict'
// Which prebuilt addon this machine runs: read by the addon's loader at every start (so it loads
// nothing it does not need) and by the `processlock` launcher.

const fs = require('node:fs')

/** Whether this Linux uses musl rather than glibc (Alpine and friends). */
function linuxIsMusl() {
  try {
    // The dynamic loader's `ldd` script names its libc.
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl')
  } catch {}
  try {
    const report = process.report && process.report.getReport()
    if (report && report.header) {
      if (report.header.glibcVersionRuntime) return false
      const libs = Array.isArray(report.sharedObjects) ? report.sharedObjects : []
      return libs.some((f) => /ld-musl-|libc\.musl-/.test(f))
    }
  } catch {}
  try {
    const out = require('node:child_process').execFileSync('ldd', ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    return out.includes('musl')
  } catch (e) {
    // musl's ldd prints its banner on stderr and exits 1.
    return String((e && e.stderr) || '').includes('musl')
  }
}

/** The napi-rs platform name of this machine, e.g. linux-x64-gnu, darwin-arm64, win32-x64-msvc. */
function abi() {
  const { platform, arch } = process
  switch (platform) {
    case 'linux':
      if (arch === 'arm') return `linux-arm-${linuxIsMusl() ? 'musleabihf' : 'gnueabihf'}`
      return `linux-${arch}-${linuxIsMusl() ? 'musl' : 'gnu'}`
    case 'win32':
      return `win32-${arch}-msvc`
    default:
      return `${platform}-${arch}`
  }
}

module.exports = { abi, linuxIsMusl }
