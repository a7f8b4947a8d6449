'use strict'
// The command that `processlock run` wraps in the CLI tests. It reports what happens to it on
// stdout, one line per event.
//   node cli-child.js exit <code>          exit at once with <code>
//   node cli-child.js hold                 run until killed
//   node cli-child.js inherited            report $PROCESSLOCK_INHERITED: whether its descriptors are
//                                          the lock file and the claim pipe, and its socket one;
//                                          and $PROCESSLOCK_DIR
//   node cli-child.js signal-exit <code>   on SIGINT/SIGTERM/SIGHUP: report it, exit with <code>
//   node cli-child.js signal-die           on SIGINT/SIGTERM/SIGHUP: report it, die by it
//   node cli-child.js count <ms>           report every signal; exit 0 <ms> after the first one
// Env: CHILD_MARKER=<file> makes it create that file when it starts.
const fs = require('node:fs')
const path = require('node:path')

const [mode, arg] = process.argv.slice(2)
const say = (line) => fs.writeSync(1, `${line}\n`)
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP']

if (process.env.CHILD_MARKER) fs.writeFileSync(process.env.CHILD_MARKER, String(process.pid))

function onSignals(handler) {
  for (const signal of SIGNALS) process.on(signal, () => handler(signal))
}

switch (mode) {
  case 'exit':
    say(`CHILD READY ${process.pid}`)
    process.exit(Number(arg))
    break
  case 'hold':
    break
  case 'inherited': {
    // What processlock run told us: `<lock fd>:<token fd>:<token inode>:<socket>`, and the
    // lock directory it used.
    const [fd, tokenFd, tokenIno, ...rest] = (process.env.PROCESSLOCK_INHERITED || '').split(':')
    const socket = rest.join(':')
    const dir = process.env.PROCESSLOCK_DIR
    const lockFile = path.join(
      dir,
      fs.readdirSync(dir).find((n) => n.endsWith('.lock')),
    )
    const same = fs.fstatSync(Number(fd)).ino === fs.statSync(lockFile).ino
    const token = fs.fstatSync(Number(tokenFd))
    say(`INHERITED ${fd} ${lockFile} ${same} token ${token.isFIFO()} ${String(token.ino) === tokenIno}`)
    // Linux: an abstract socket (`@name`, no file); elsewhere a socket file.
    const listening = socket.startsWith('@')
      ? fs.readFileSync('/proc/net/unix', 'utf8').includes(` ${socket}\n`)
      : fs.statSync(socket).isSocket()
    say(`SOCKET ${socket} ${listening}`)
    say(`DIR ${dir}`)
    process.exit(0)
    break
  }
  case 'signal-exit':
    onSignals((signal) => {
      say(`GOT ${signal}`)
      process.exit(Number(arg))
    })
    break
  case 'signal-die':
    onSignals((signal) => {
      say(`GOT ${signal}`)
      process.removeAllListeners(signal)
      process.kill(process.pid, signal)
    })
    break
  case 'count': {
    let ending = false
    onSignals((signal) => {
      say(`GOT ${signal}`)
      if (!ending) {
        ending = true
        setTimeout(() => process.exit(0), Number(arg))
      }
    })
    break
  }
  default:
    say(`unknown mode ${mode}`)
    process.exit(99)
}
say(`CHILD READY ${process.pid}`)
setInterval(() => {}, 1 << 30)
