'use strict'
module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/__test__/**/*.test.js'],
  testTimeout: 120000,
  // The race suites start many processes: on a 2-core machine two suites at once is plenty.
  maxWorkers: 2,
}
