'use strict'
// Where the [PROCESS_LOCK_*] log lines go: the console by default, nowhere with `log: false` or
// PROCESSLOCK_LOG=silent, or to the caller's function.

function levelOf(line) {
  if (line.startsWith('[PROCESS_LOCK_CONFLICT]') || line.startsWith('[PROCESS_LOCK_LOST]')) return 'error'
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

/** Whether a `log` option sends the lines nowhere, so that they need not be built at all. */
function isSilent(option) {
  return sinkFor(option) === silent
}

function emit(sink, lines) {
  for (const line of lines) sink(line, levelOf(line))
}

module.exports = { sinkFor, isSilent, emit, levelOf }
