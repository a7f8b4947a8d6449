// A module of the trader that takes the backend lock as it is loaded (its import is the start-up).
const { acquireLock } = require('@trader/processlock')

const lock = acquireLock('backend', { log: false })

module.exports = { owner: () => lock.pid }
