'use strict'
// The holder of one `exit-hook` torture round (bench/torture-exit.js): a fresh process that takes
// the lock first thing and then adds an 'exit' hook of its own, as apps do, and ends in the way
// it is told. Spoken to through stdin, one JSON object per line; answers on stdout (synchronous
// writes), t = process.hrtime ns (CLOCK_MONOTONIC):
//
//   READY 0                  loaded, waiting for its round
//   { dir, how, hookUs }  -> A t      the lock is taken (t right after acquireLock returned)
//                            H        its 'exit' hook is in place
//   { op: 'go' }          -> ends as `how` says: exit | natural | throw | reject (the main thread
//                            holds), worker-exit | worker-natural (a worker thread holds, and
//                            ends so; the process ends after it). The hook writes timestamps to
//                            `<dir>.hook` with synchronous writes for `hookUs` microseconds, then
//                            Z t      t right after its last write returned: the end of ownership
const fs = require('node:fs')
const path = require('node:path')
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads')
const pl = require(path.resolve(__dirname, '..'))

const now = () => process.hrtime.bigint()
const out = (line) => fs.writeSync(1, `${line}\n`)

function hold({ dir, hookUs }) {
  pl.acquireLock('backend', { dir, tradeSide: 'SHORT', processName: 'exit-holder', log: false })
  out(`A ${now()}`)
  process.on('exit', () => {
    const fd = fs.openSync(`${dir}.hook`, 'a')
    const end = now() + BigInt(Math.round(hookUs * 1000))
    let t
    do {
      fs.writeSync(fd, `${now()}\n`)
      t = now()
    } while (t < end)
    out(`Z ${t}`)
  })
}

function end(how) {
  if (how === 'exit' || how === 'worker-exit') process.exit(0)
  if (how === 'throw') throw new Error('the app ends with an uncaught exception')
  if (how === 'reject') Promise.reject(new Error('the app ends with an unhandled rejection'))
  // natural: nothing keeps the event loop alive any more.
  if (isMainThread) process.stdin.destroy()
  else parentPort.close()
}

if (!isMainThread) {
  hold(workerData)
  parentPort.once('message', () => end(workerData.how))
  parentPort.postMessage('held')
} else {
  let round = null
  let worker = null
  let buffered = ''
  process.stdin.setEncoding('utf8')
  process.stdin.on('data', (chunk) => {
    buffered += chunk
    let nl
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const c = JSON.parse(buffered.slice(0, nl))
      buffered = buffered.slice(nl + 1)
      if (c.op !== 'go') {
        round = c
        if (!c.how.startsWith('worker-')) {
          hold(c)
          out('H')
          continue
        }
        worker = new Worker(__filename, { workerData: c })
        worker.once('message', () => out('H'))
        worker.once('exit', () => process.exit(0))
      } else if (worker) {
        worker.postMessage('go')
      } else {
        end(round.how)
      }
    }
  })
  out('READY 0')
}
