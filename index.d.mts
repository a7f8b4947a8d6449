// Types of the ESM entry (index.mjs): the same API as index.d.ts, as named exports and as the
// default export (the whole API object, as `require('@trader/processlock')` returns it).
import api = require('./index.js')

export * from './index.js'
export default api
