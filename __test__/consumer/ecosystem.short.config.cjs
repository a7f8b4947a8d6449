// PM2 ecosystem of the SHORT side: the server (ESM build) and the Temporal worker (CommonJS
// build), in fork mode. `pm2 start ecosystem.short.config.cjs`
//
// `pm2 stop` sends SIGINT, then SIGKILL after kill_timeout (1600 ms by default). The server has
// no SIGINT listener of its own: @trader/processlock releases its lock and lets the signal end
// it. The worker drains on SIGINT and then ends naturally, like a Temporal worker, and the lock
// goes with its 'exit'. But PM2's in-process agent (pmx, on by default) keeps the IPC channel
// open and lets the process end only at its next 3-second check, often after kill_timeout: the
// worker is then SIGKILLed and leaves its lock file behind (stale: the next start takes it over
// and says so). `pmx: false` lets the natural end happen at once.
const path = require('node:path')

const locks = process.env.PROCESSLOCK_DIR || path.join(__dirname, 'runtime', 'locks')
const logs = path.join(__dirname, 'logs')
const env = { TRADE_SIDE: 'SHORT', PROCESSLOCK_DIR: locks }

module.exports = {
  apps: [
    {
      name: 'trader-short-backend',
      script: path.join(__dirname, 'build', 'esm', 'server', 'index.js'),
      cwd: __dirname,
      exec_mode: 'fork',
      instances: 1,
      autorestart: true,
      env,
      out_file: path.join(logs, 'backend.out.log'),
      error_file: path.join(logs, 'backend.err.log'),
    },
    {
      name: 'trader-short-worker',
      script: path.join(__dirname, 'build', 'cjs', 'temporal', 'worker.js'),
      cwd: __dirname,
      exec_mode: 'fork',
      instances: 1,
      autorestart: true,
      pmx: false,
      env,
      out_file: path.join(logs, 'worker.out.log'),
      error_file: path.join(logs, 'worker.err.log'),
    },
  ],
}
