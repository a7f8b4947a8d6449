// PM2 cluster mode, two instances of the backend, one lock per instance (server/cluster.ts).
// `pm2 start ecosystem.cluster.config.cjs`, `pm2 reload trader-short-cluster`
//
// listen_timeout and kill_timeout stay at PM2's defaults (3000 and 1600 ms): the new instance of
// a reload cannot listen before the old one has gone, so PM2 always waits out listen_timeout
// before it stops the old one; raising it only makes reloads slower.
const path = require('node:path')

const locks = process.env.PROCESSLOCK_DIR || path.join(__dirname, 'runtime', 'locks')
const logs = path.join(__dirname, 'logs')

module.exports = {
  apps: [
    {
      name: 'trader-short-cluster',
      script: path.join(__dirname, 'build', 'esm', 'server', 'cluster.js'),
      cwd: __dirname,
      exec_mode: 'cluster',
      instances: 2,
      env: { TRADE_SIDE: 'SHORT', PROCESSLOCK_DIR: locks },
      out_file: path.join(logs, 'cluster.out.log'),
      error_file: path.join(logs, 'cluster.err.log'),
    },
  ],
}
