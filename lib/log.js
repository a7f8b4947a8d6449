'use strict'
// Where the [PROCESS_LOCK_*] log lines go: the console by default, nowhere with `log: false` or
// PROCESSLOCK_LOG=silent, or to the caller's function.

function levelOf(line) {
  if (
    line.startsWith('[PROCESS_LOCK_CONFLICT]') ||
    line.startsWith('[PROCESS_LOCK_LOST]') ||
    line.startsWith('[PROCESS_LOCK_RELEASE_FAILED]')
  )
    return 'error'
  if (line.startsWith('[PROCESS_LOCK_STALE]')) return 'warn'
  return 'info'
}

function consoleSink(line, level) {
  if (level === 'error') console.error(line)
  else if (level === 'warn') console.warn(line)
  else console.log(line)
}

function silent() {}

/** The sink for a `log` option: `undefined`, `true`, `false`, `'silent'` or a function. */
function sinkFor(option) {
  if (typeof option === 'function') return option
  if (option === false || option === 'silent') return silent
  if (option === undefined && process.env.PROCESSLOCK_LOG === 'silent') return silent
  return consoleSink
}

/**
 * Where a `log` option sends the lines, as the native layer is told (its `LogTo`): `'silent'`
 * (nowhere, so that they need not be built at all), `'function'` or `'console'`. The lines of a
 * release at the end of the process or of a worker thread are written natively, after the last
 * JavaScript ran: to stdout and stderr for the console, and for a function, which can no longer
 * be called, only a failed release, to stderr.
 */
function sinkKind(option) {
  const sink = sinkFor(option)
  return sink === silent ? 'silent' : sink === consoleSink ? 'console' : 'function'
}

function emit(sink, lines) {
  for (const line of lines) sink(line, levelOf(line))
}

module.exports = { sinkFor, sinkKind, emit, levelOf }
