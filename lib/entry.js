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
  // Loaded here, at the first acquire, not when the package is required (it loads Node's streams).
  const { isMainThread } = require('node:worker_threads')
  const main = isMainThread && require.main ? require.main.filename : undefined
  const script = main || process.argv[1] || ''
  if (PM2_CONTAINER.test(script) && process.env.pm_exec_path) return process.env.pm_exec_path
  return script
}

module.exports = { entryScript }
