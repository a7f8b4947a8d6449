// PM2 ecosystem of one trade side: the backend (server.js) and the worker (worker.js), in fork
// mode, each taking its lock first thing.
//
//   npx pm2 start examples/ecosystem.config.cjs                  the SHORT side
//   TRADE_SIDE=LONG npx pm2 start examples/ecosystem.config.cjs  the LONG side, beside it
//
// The app names carry the side (trader-short-backend, ...), so both sides live in one PM2.
// `pm2 stop` sends SIGINT (then SIGKILL after kill_timeout, 1600 ms by default): neither
// service has a SIGINT listener of its own, so @trader/processlock releases the lock and lets the
// signal end the process. The lock directory is $PROCESSLOCK_DIR when set, else the package's
// default (runtime/locks under the project).
const path = require('node:path')

const side = (process.env.TRADE_SIDE || 'SHORT').toUpperCase()
const env = { TRADE_SIDE: side }
if (process.env.PROCESSLOCK_DIR) env.PROCESSLOCK_DIR = process.env.PROCESSLOCK_DIR

const app = (type, script) => ({
  name: `trader-${side.toLowerCase()}-${type}`,
  script: path.join(__dirname, script),
  cwd: path.join(__dirname, '..'),
  exec_mode: 'fork',
  instances: 1,
  autorestart: true,
  env,
})

module.exports = {
  apps: [app('backend', 'server.js'), app('worker', 'worker.js')],
}
