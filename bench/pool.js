'use strict'
// Parent-side handle on a bench/worker.js process: send commands, wait for
// reply lines, kill it, know when its output has ended.

const { spawn } = require('node:child_process')
const path = require('node:path')

const WORKER = path.join(__dirname, 'worker.js')

class Worker {
  // script: another program speaking the same protocol (bench/pg-client.js). quiet: keep its
  // stderr (the last 4 KB, in this.stderr) instead of passing it through.
  constructor(impl, options = {}, nodeArgs = [], { script = WORKER, quiet = false } = {}) {
    this.impl = impl
    this.proc = spawn(process.execPath, [...nodeArgs, script, impl, JSON.stringify(options)], {
      stdio: ['pipe', 'pipe', quiet ? 'pipe' : 'inherit'],
    })
    this.stderr = ''
    if (quiet) {
      this.proc.stderr.setEncoding('utf8')
      this.proc.stderr.on('data', (d) => {
        this.stderr = (this.stderr + d).slice(-4096)
      })
    }
    this.pid = this.proc.pid
    this.queue = [] // lines received and not yet consumed
    this.waiter = null // { pred, resolve, taken }
    this.ended = false
    this.killed = false
    this.exitCode = undefined
    this.exitSignal = undefined
    let partial = ''
    this.proc.stdout.setEncoding('utf8')
    this.proc.stdout.on('data', (chunk) => {
      partial += chunk
      let nl
      while ((nl = partial.indexOf('\n')) >= 0) {
        this.queue.push(partial.slice(0, nl))
        partial = partial.slice(nl + 1)
      }
      this._pump()
    })
    this.closed = new Promise((resolve) => {
      this.proc.stdout.on('end', () => {
        this.ended = true
        this._pump()
        resolve()
      })
    })
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exitCode = code
        this.exitSignal = signal
        this.exitedAt = process.hrtime.bigint()
        resolve()
      })
    })
    this.proc.stdin.on('error', () => {}) // EPIPE after a kill
    this.ready = this.until((l) => l.startsWith('READY ')).then((lines) => {
      const last = lines[lines.length - 1]
      if (!last || !last.startsWith('READY ')) {
        throw new Error(`worker ${impl} (pid ${this.pid}) died before READY`)
      }
      this.baseFds = Number(last.split(' ')[1])
      return this
    })
  }

  _pump() {
    const w = this.waiter
    if (!w) return
    while (this.queue.length) {
      const line = this.queue.shift()
      w.taken.push(line)
      if (w.pred(line)) {
        this.waiter = null
        w.resolve(w.taken)
        return
      }
    }
    if (this.ended) {
      this.waiter = null
      w.resolve(w.taken) // no match: the caller sees the last line is not it
    }
  }

  // Resolves with all lines consumed up to and including the first that
  // matches pred (or up to the end of output when the worker died).
  until(pred) {
    if (this.waiter) throw new Error('one waiter at a time')
    return new Promise((resolve) => {
      this.waiter = { pred, resolve, taken: [] }
      this._pump()
    })
  }

  // Everything the worker wrote until its output ended.
  drain() {
    return this.until(() => false)
  }

  async json() {
    const lines = await this.until((l) => l.startsWith('J '))
    const last = lines[lines.length - 1]
    if (!last || !last.startsWith('J ')) throw new Error(`worker ${this.impl} ended without a reply`)
    const obj = JSON.parse(last.slice(2))
    if (obj.error) throw new Error(`worker ${this.impl}: ${obj.error}: ${obj.message}`)
    return obj
  }

  send(obj) {
    if (!this.ended) this.proc.stdin.write(JSON.stringify(obj) + '\n')
  }

  kill(signal = 'SIGKILL') {
    this.killed = true
    try {
      process.kill(this.pid, signal)
    } catch {
      /* already gone */
    }
  }

  async stop() {
    if (this.ended) return
    this.send({ op: 'exit' })
    try {
      this.proc.stdin.end()
    } catch {
      /* gone */
    }
    const t = setTimeout(() => this.kill(), 5000)
    await this.exited
    clearTimeout(t)
  }
}

module.exports = { Worker, WORKER }
