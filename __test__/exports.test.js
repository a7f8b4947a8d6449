'use strict'
// One export list: `index.js` is the source; `index.mjs` (ESM named exports), `index.d.ts` (the
// types, re-exported by `index.d.mts`) and the type-checked consumer must name exactly the same
// things, so that adding a function to the API without the other three fails here.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { ROOT } = require('./helpers/proc')

const cjsNames = () => Object.keys(require('..')).sort()

function declaredNames() {
  const dts = fs.readFileSync(path.join(ROOT, 'index.d.ts'), 'utf8')
  return [...dts.matchAll(/^export (?:declare )?(?:function|class|const) (\w+)/gm)].map((m) => m[1]).sort()
}

test('index.mjs exports exactly what index.js exports, from the same module instance', () => {
  // A real ES module import, in a process of its own (jest runs CommonJS).
  const script = `
    import * as esm from ${JSON.stringify(path.join(ROOT, 'index.mjs'))}
    import { createRequire } from 'node:module'
    const cjs = createRequire(import.meta.url)(${JSON.stringify(ROOT)})
    const named = Object.keys(esm).filter((k) => k !== 'default')
    console.log(JSON.stringify({ named, sameDefault: esm.default === cjs, same: named.filter((k) => esm[k] === cjs[k]) }))`
  const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }))
  expect(out.named.sort()).toEqual(cjsNames())
  expect(out.sameDefault).toBe(true)
  expect(out.same.sort()).toEqual(cjsNames())
})

test('index.d.ts declares exactly what index.js exports, and index.d.mts re-exports it', () => {
  expect(declaredNames()).toEqual(cjsNames())
  const dmts = fs.readFileSync(path.join(ROOT, 'index.d.mts'), 'utf8')
  expect(dmts).toMatch(/^export \* from '\.\/index\.js'$/m)
})

test('the type-checked consumer imports every export', () => {
  const consumer = fs.readFileSync(path.join(ROOT, '__test__', 'types', 'consumer.ts'), 'utf8')
  const imported = consumer.match(/^import \{([^}]*)\} from '@trader\/processlock'/m)
  expect(imported).not.toBeNull()
  const names = imported[1]
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n && !n.startsWith('type '))
    .sort()
  expect(names).toEqual(cjsNames())
})
