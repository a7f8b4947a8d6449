'use strict'
// The application's entry script: the default lock directory is found from it (the nearest
// package.json above it), so that it does not depend on the directory the service was started
// from.

/** PM2 starts apps through its own container script and names the app's in `pm_exec_path`. */
const PM2_CONTAINER = /[\\/]pm2[\\/]lib[\\/]ProcessContainer(Fork)?(Bun)?\.js$/

/**
 * The main module's file (CommonJS), else `process.argv[1]` (ES modules, worker threads: a
 * worker's own script is not the application's), else '' (`node -e`, the REPL).
 */
function entryScript() {
  const main = isMainThread() && require.main ? require.main.filename : undefined
  const script = main || process.argv[1] || ''
  if (PM2_CONTAINER.test(script) && process.env.pm_exec_path) return process.env.pm_exec_path
  return script
}

/**
 * Whether this is the process's main thread. A worker thread's start-up loads `worker_threads`
 * itself (checked on the Node that runs the tests by __test__/edges.test.js), so
 * where Node has not loaded it this is the main thread, and loading it (with Node's streams,
 * about 1.5 ms of the first acquire) is not needed to know that.
 */
function isMainThread() {
  const loaded = process.moduleLoadList
  if (Array.isArray(loaded) && !loaded.includes('NativeModule worker_threads')) return true
  return require('node:worker_threads').isMainThread
}

module.exports = { entryScript, isMainThread }
