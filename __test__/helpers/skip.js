'use strict'
// Tests that cannot run here are registered with jest as skipped, with the reason in their name,
// so that `npm test` counts and names them (scripts/test.js reads jest's JSON report) rather
// than counting a test that returned early as passed. Decide when the file is loaded; jest has
// no way to skip a test once it runs.
//
//   const { onlyOn, needs } = require('./helpers/skip')
//   onlyOn(['linux'], 'the start token is read from /proc')('test name', fn)   // or .describe(...)
//   needs(hasIptables() && isRoot, 'iptables and root')('test name', fn)
//   unfinished('replace across hosts not built yet')('test name', fn)
//
// Two kinds of reason, marked in the name so scripts/test.js tells them apart:
//   [skipped on <platform>: why]   the test is about other platforms, or other Node versions
//                                  (CI on this one passes);
//   [skipped: needs what]          this machine lacks something (CI must provide it: .ci/run
//                                  fails on such a skip);
//   [skipped: why]                 the product does not do this yet (a known gap, named so that
//                                  it is unskipped once built; .ci/run fails on it too).

const PLATFORM_MARK = (why) => `[skipped on ${process.platform}: ${why}]`
const NEEDS_MARK = (what) => `[skipped: needs ${what}]`

/** A `test`-like function (with `.each` and `.describe`) that runs, or is skipped with `mark`. */
function gate(runs, mark) {
  if (runs) {
    const t = (...args) => test(...args)
    t.each = test.each
    t.describe = describe
    return t
  }
  const t = (name, fn, timeout) => test.skip(`${name} ${mark}`, fn, timeout)
  t.each =
    (table) =>
    (name, ...rest) =>
      test.skip.each(table)(`${name} ${mark}`, ...rest)
  t.describe = (name, fn) => describe.skip(`${name} ${mark}`, fn)
  return t
}

/** Runs on these platforms (process.platform values) only; elsewhere skipped, saying why. */
function onlyOn(platforms, why) {
  return gate(platforms.includes(process.platform), PLATFORM_MARK(why))
}

/** Runs on the Node versions where `present` is true (a feature of newer Node); on others skipped, saying why. */
function onlyOnNode(present, why) {
  return gate(Boolean(present), `[skipped on node${process.versions.node.split('.')[0]}: ${why}]`)
}

/** Runs where `present` is true; elsewhere skipped as needing `what` (a tool, root, ...). */
function needs(present, what) {
  return gate(Boolean(present), NEEDS_MARK(what))
}

/** Skipped here, because what it needs does not exist for this platform: `why` says what. */
function otherPlatform(why) {
  return gate(false, PLATFORM_MARK(why))
}

/** Skipped everywhere, because what it tests is not built yet: `why` says what is missing. */
function unfinished(why) {
  return gate(false, `[skipped: ${why}]`)
}

module.exports = { onlyOn, onlyOnNode, needs, otherPlatform, unfinished }
