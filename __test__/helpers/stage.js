'use strict'
// Another user cannot use the checkout when it sits under a directory only its owner may enter
// (a clone under a `mktemp -d` directory has mode 0700). Tests that run a process as another
// user stage what it loads in a fresh world-readable directory: the package's JS layer, the
// generated loader, the built addon and the test fixtures, laid out as in the checkout.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ROOT } = require('./proc')

const STAGED = ['package.json', 'index.js', 'index.mjs', 'binding.js', 'lib', path.join('__test__', 'fixtures')]

/** Copies the package into a new directory anyone may read and enter: { root, fixtures }. */
function stageForOtherUsers() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'pl-staged-'))
  const addons = fs.readdirSync(ROOT).filter((f) => f.endsWith('.node'))
  for (const entry of [...STAGED, ...addons])
    fs.cpSync(path.join(ROOT, entry), path.join(root, entry), { recursive: true })
  // mkdtemp makes the directory 0700; everything else is copied with its own mode, plus
  // read (and enter, for directories) for everyone.
  const open = (p) => {
    const st = fs.statSync(p)
    fs.chmodSync(p, st.isDirectory() ? 0o755 : (st.mode & 0o777) | 0o444)
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) open(path.join(p, e))
  }
  open(root)
  return { root, fixtures: path.join(root, '__test__', 'fixtures') }
}

module.exports = { stageForOtherUsers }
