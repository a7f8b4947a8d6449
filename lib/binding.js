'use strict'
// The native addon, through the loader that `napi build` generates (../binding.js). When it
// cannot be loaded, the error says first which package this platform needs and how to install
// it, with the real reason as its `cause`.

const fs = require('node:fs')
const path = require('node:path')
const { abi } = require('./abi.js')

function loadFailure(loaderError) {
  const manifest = require('../package.json')
  const { notPublishedAdvice } = require('../bin/processlock.js')
  const platform = abi()
  const name = `${manifest.name}-${platform}`
  let cause = loaderError
  let installed = false
  try {
    require(name)
  } catch (e) {
    cause = e
    installed = e.code !== 'MODULE_NOT_FOUND' || !String(e.message).includes(name)
  }
  const published = manifest.optionalDependencies || {}
  const known = Object.keys(published).length === 0 || name in published
  let message
  if (!known) {
    message =
      `${manifest.name} has no native addon for ${platform} (Node ${process.version}); ` +
      `prebuilt: ${Object.keys(published)
        .map((p) => p.slice(manifest.name.length + 1))
        .join(', ')}`
  } else if (installed) {
    message = `${manifest.name}: ${name} is installed but its addon cannot be loaded here (${platform}, Node ${process.version}): ${cause.message}`
  } else {
    message =
      `${manifest.name}: the native addon for this platform is missing: install ${name}\n` +
      `  npm install ${name}@${manifest.version}\n` +
      `It is an optional dependency of ${manifest.name}, left out by --omit=optional (or ` +
      `--no-optional), by a package-lock.json written before this platform was added, or when ` +
      `node_modules is copied from another system: install on the machine or in the image that ` +
      `runs the app.\n${notPublishedAdvice()}`
  }
  const error = new Error(message)
  error.cause = cause
  return error
}

/**
 * The addon of this machine where a build (next to the package) or an install (its platform
 * package) puts it, loaded directly: the loader `napi build` generates tries every platform in
 * turn and is itself 850 lines to compile, about 1.4 ms of every start. Anything else (another
 * place, an override by NAPI_RS_* variables, a failure) goes through that loader, which also
 * says why it failed.
 */
function loadDirect() {
  if (process.env.NAPI_RS_NATIVE_LIBRARY_PATH || process.env.NAPI_RS_FORCE_WASI) return null
  const platform = abi()
  const built = path.join(__dirname, '..', `processlock.${platform}.node`)
  try {
    return fs.existsSync(built) ? require(built) : require(`@trader/processlock-${platform}`)
  } catch {
    return null
  }
}

function load() {
  const native = loadDirect()
  if (native) return native
  try {
    return require('../binding.js')
  } catch (e) {
    throw loadFailure(e)
  }
}

/**
 * The native functions and the methods of the native classes, each made to throw only coded
 * errors. They never throw on purpose (failures come back as values): what one throws is a Rust
 * panic, caught at the boundary (`#[napi(catch_unwind)]`) instead of aborting the process, or an
 * argument it could not take. Either is a bug of this package; the call did not complete, as
 * when the operating system fails one: `LockIoError` (`LOCK_IO`), with the native error as its
 * `cause`.
 */
function guarded(native) {
  const { LockIoError } = require('./errors.js')
  const guard = (name, fn) =>
    function (...args) {
      try {
        return fn.apply(this, args)
      } catch (e) {
        const why = (e && e.message) || String(e)
        throw new LockIoError(
          `LOCK_IO: ${name} failed inside the native addon, a bug of this package (please report it): ${why}`,
          'LOCK_IO',
          { cause: e },
        )
      }
    }
  const out = {}
  for (const [name, fn] of Object.entries(native)) {
    if (typeof fn !== 'function') {
      out[name] = fn
    } else if (/^[A-Z]/.test(name)) {
      // A class: its methods are guarded in place, so that `new` and `instanceof` still work.
      for (const [method, d] of Object.entries(Object.getOwnPropertyDescriptors(fn.prototype))) {
        if (method !== 'constructor' && typeof d.value === 'function') {
          Object.defineProperty(fn.prototype, method, { ...d, value: guard(method, d.value) })
        }
      }
      out[name] = fn
    } else {
      out[name] = guard(name, fn)
    }
  }
  return out
}

module.exports = guarded(load())
