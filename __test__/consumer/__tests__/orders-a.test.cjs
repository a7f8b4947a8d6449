// Loads a module that locks at import; with parallel workers each one has its own lock directory.
const { getLockInfo } = require('@trader/processlock')
const orders = require('../src/orders.cjs')

test('this worker owns the backend lock of its own lock directory', () => {
  expect(orders.owner()).toBe(process.pid)
  expect(getLockInfo('backend', { log: false })?.pid).toBe(process.pid)
})
