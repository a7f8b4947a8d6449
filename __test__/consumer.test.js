'use strict'
// Proof from a consumer: @trader/processlock as npm delivers it, used the way the trader uses it.
//
//   1. `npm run pack` writes the main package and this host's platform package; check what they
//      carry and that the main package names every platform package at its exact version, as
//      `napi prepublish` makes it before publishing.
//   2. A fresh project (__test__/consumer/) installs both tarballs offline, with no Rust
//      toolchain reachable; tsc --strict type-checks the trader's server/index.ts and
//      temporal/worker.ts and builds them as CommonJS and as ESM; they run: both start, a second
//      server gets LOCK_CONFLICT and exits 1, SHORT and LONG run side by side, the project's own
//      jest test passes, `processlock check` and `processlock clear` work from the project.
//      The ES module typings check under node16, nodenext and bundler resolution. Jest with two
//      workers runs a module that locks at import, with a lock directory per worker.
//   3. esbuild bundles the server; the bundle, copied alone with its .node file, takes the lock.
//   4. PM2 for real (its home in a temp dir): an ecosystem file starts the server and the worker
//      in fork mode; a server started by hand gets the conflict; restart, stop, kill -9 with
//      autorestart; everything PM2 started is gone at the end.
//   5. PM2 cluster mode, two instances, one lock per instance: a second copy is refused and its
//      [FATAL] line reaches PM2's log files; `pm2 reload` hands each lock to the new instance
//      (its duration is printed).
//
// Needs `npm run build` first (the .node and the release `processlock` binary are packed; the
// suite runs `npm run pack` with --no-build).
// Real processes, real files, real PM2; nothing is mocked.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { cleanEnv, watch, run, runOk, waitUntil, running } = require('./helpers/consumer-proc')
const { ROOT, ABI, EXE, MAIN, packAll, createProject, build, tempWork, unpack } = require('./helpers/consumer-project')
const { PM2_VERSION, ensurePm2, Pm2 } = require('./helpers/consumer-pm2')
const { lockDirEntries } = require('./helpers/proc')
const { onlyOn } = require('./helpers/skip')

const NPX_CLI = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npx-cli.js')
const NPM_CLI = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js')

jest.setTimeout(120000)

// POSIX hosts (Linux here and in CI, macOS in the GitHub workflow). On Windows the suite's
// tools do not apply as written (npm.cmd shims, signals that cannot be sent to another process,
// a POSIX shell for the toolchain stand-ins), so it is skipped there.
const describePosix = onlyOn(['linux', 'darwin'], 'npm.cmd shims and signals differ on Windows').describe

let work
let tarballs
let project
let locks
/** Every service a test started by hand: whatever a failed test left running is killed at the end. */
const services = new Set()

const acquiredLine = (type, side, pid) =>
  `[PROCESS_LOCK_ACQUIRED] { processType: '${type}', tradeSide: '${side}', pid: ${pid} }`
const releasedLine = (type, side, pid) =>
  `[PROCESS_LOCK_RELEASED] { processType: '${type}', tradeSide: '${side}', pid: ${pid} }`
const staleLine = (pid) => `[PROCESS_LOCK_STALE] Found stale lock file for PID ${pid}, removing...`
const fatalLine = (type, side, pid) => `[FATAL] LOCK_CONFLICT: ${type} (${side}) is already running (PID: ${pid})`

/** The record in a lock file of the project's lock directory, or null when there is none. */
function record(name) {
  try {
    return JSON.parse(fs.readFileSync(path.join(locks, name), 'utf8'))
  } catch (e) {
    if (e.code === 'ENOENT') return null
    throw e
  }
}

const lockFiles = () =>
  fs.existsSync(locks)
    ? fs
        .readdirSync(locks)
        .filter((f) => f.endsWith('.lock'))
        .sort()
    : []

/** Starts a built script of the project (`build/cjs/server/index.js`, ...) with TRADE_SIDE=side. */
function startBuilt(script, side = 'SHORT', env = {}) {
  const p = watch(process.execPath, [path.join(project.dir, script)], {
    cwd: project.dir,
    env: cleanEnv({ TRADE_SIDE: side, ...env }),
  })
  services.add(p)
  return p
}

/** A server or worker of the project, once its lock is taken (and, for a server, it listens). */
async function startService(script, side = 'SHORT') {
  const type = script.includes('server') ? 'backend' : 'worker'
  const p = startBuilt(script, side)
  await p.waitFor(acquiredLine(type, side, p.pid))
  await p.waitFor(
    type === 'backend' ? '[SERVER] listening on 127.0.0.1:' : `[WORKER] polling trader-${side.toLowerCase()}`,
  )
  return p
}

/** Stops a service with a signal and waits for its end. */
async function stop(p, signal) {
  p.kill(signal)
  const r = await p.done()
  services.delete(p)
  return r
}

/** `processlock ...args` through the project's npm bin link (node_modules/.bin/processlock). */
function processlock(args, env = {}) {
  return run(path.join(project.dir, 'node_modules', '.bin', 'processlock'), args, {
    cwd: project.dir,
    env: cleanEnv(env),
  })
}

async function checkJson() {
  const r = await processlock(['check', '--json'])
  expect(r).toMatchObject({ code: 0, stderr: '' })
  return JSON.parse(r.stdout)
}

describePosix('@trader/processlock from a consumer', () => {
  beforeAll(async () => {
    work = tempWork()
    tarballs = await packAll(work)
    project = await createProject(work, tarballs)
    locks = path.join(project.dir, 'runtime', 'locks')
    project.built = await build(project.dir)
  }, 300000)

  afterAll(async () => {
    for (const p of services) p.kill('SIGKILL')
    await Promise.all([...services].map((p) => p.done().catch(() => {})))
    // PL_KEEP_CONSUMER=1 keeps the project, the tarballs and the PM2 home for a look.
    if (work && !process.env.PL_KEEP_CONSUMER) fs.rmSync(work, { recursive: true, force: true })
  }, 60000)

  /**
   * A PM2 daemon of its own for one describe block, handed to `use` before its tests; its home
   * is a short temp dir (PM2's sockets live there, and sun_path is 104 bytes on macOS). After the
   * tests it is shut down, and nothing it started may be left running.
   */
  function ownPm2(homePrefix, use) {
    let pm2
    beforeAll(async () => {
      if (!project) throw new Error('the consumer project was not set up (see the first failure)')
      pm2 = new Pm2(await ensurePm2(), tempWork(homePrefix), project.dir)
      use(pm2)
    }, 300000)

    afterAll(async () => {
      if (!pm2) return
      const survivors = await pm2.shutdown()
      if (!process.env.PL_KEEP_CONSUMER) fs.rmSync(pm2.home, { recursive: true, force: true })
      expect(survivors).toEqual([])
    }, 120000)
  }

  describe('npm run pack', () => {
    test('writes both tarballs and says how to install them; pack/ is not tracked by git', () => {
      const names = [`trader-processlock-${MAIN.version}.tgz`, `trader-processlock-${ABI}-${MAIN.version}.tgz`]
      expect(tarballs.tarballs).toEqual([...names].sort())
      expect(tarballs.output).toContain('Install both in an app (offline is fine):')
      expect(tarballs.output).toContain(`npm install ${tarballs.main.file} ${tarballs.platform.file}`)
      const ignored = spawnSync('git', ['check-ignore', '-q', path.join('pack', names[0])], { cwd: ROOT })
      expect(ignored.status).toBe(0)
    })

    test('the main package carries the JS layer, the generated loader, its types and the CLI launcher; no binary', () => {
      const libFiles = fs.readdirSync(path.join(ROOT, 'lib')).map((f) => `lib/${f}`)
      // npm adds these whatever `files` says.
      const always = ['README.md', 'LICENSE', 'LICENSE.md'].filter((f) => fs.existsSync(path.join(ROOT, f)))
      const expected = [
        'bin/processlock.js',
        'binding.d.ts',
        'binding.js',
        'index.d.mts',
        'index.d.ts',
        'index.js',
        'index.mjs',
        'package.json',
        ...libFiles,
        ...always,
      ]
      const files = tarballs.main.files.map((f) => f.path)
      expect(files).toEqual(expected.sort((a, b) => a.localeCompare(b)))
      expect(tarballs.main.files.find((f) => f.path === 'bin/processlock.js').mode & 0o111).toBeTruthy()

      // Every entry point of the manifest is in the tarball.
      const m = tarballs.main.manifest
      const { import: esm, require: cjs } = m.exports['.']
      const entries = [m.main, m.types, esm.types, esm.default, cjs.types, cjs.default, m.bin.processlock]
      for (const entry of entries) expect(files).toContain(path.posix.normalize(entry))
      expect(m.name).toBe(MAIN.name)
      expect(m.version).toBe(MAIN.version)
    })

    test(`the platform package (${ABI}) carries the addon and the processlock binary, executable`, () => {
      const files = tarballs.platform.files.map((f) => f.path)
      const readme = fs.existsSync(path.join(ROOT, 'npm', ABI, 'README.md')) ? ['README.md'] : []
      expect(files).toEqual(
        ['package.json', ...readme, EXE, `processlock.${ABI}.node`].sort((a, b) => a.localeCompare(b)),
      )
      expect(tarballs.platform.files.find((f) => f.path === EXE).mode & 0o111).toBeTruthy()
      expect(tarballs.platform.name).toBe(`${tarballs.napi.packageName}-${ABI}`)
      expect(tarballs.platform.version).toBe(MAIN.version)
      // The repo tree got nothing from the packing.
      expect(tarballs.repoAfter).toEqual(tarballs.repoBefore)
    })

    test('the main package names every platform package at its exact version, as napi prepublish writes it', () => {
      const { deps, abis, packageName } = tarballs.napi
      expect(packageName).toBe(MAIN.name)
      expect(Object.keys(deps)).toHaveLength(MAIN.napi.targets.length)
      const binding = fs.readFileSync(path.join(work, 'main-as-packed', 'binding.js'), 'utf8')
      for (const abi of abis) {
        const name = `${packageName}-${abi}`
        expect(deps[name]).toBe(MAIN.version)
        // The committed npm/<abi>/package.json is the package of that name and version ...
        const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'npm', abi, 'package.json'), 'utf8'))
        expect(manifest).toMatchObject({ name, version: MAIN.version, main: `processlock.${abi}.node` })
        // ... and the generated loader asks for it.
        expect(binding).toContain(`require('${name}')`)
      }
      // The loader checks the platform package's version against this one (a stale binding.js
      // after a version bump would fail here).
      expect(binding).toContain(`bindingPackageVersion !== '${MAIN.version}'`)
      // The committed package.json leaves them to `napi prepublish` (the publish job) and to
      // `npm run pack`.
      expect(MAIN.optionalDependencies).toBeUndefined()
      expect(tarballs.main.manifest.optionalDependencies).toEqual(deps)
    })
  })

  describe('install in a fresh project', () => {
    test('offline, from the two tarballs only, with no Rust toolchain and no install script', () => {
      const modules = path.join(project.dir, 'node_modules')
      expect(fs.readdirSync(path.join(modules, '@trader')).sort()).toEqual(['processlock', `processlock-${ABI}`])
      // Of the seven optional platform packages only this host's is there (the others were not
      // even fetched: the install was offline with an empty cache).
      const others = tarballs.napi.abis.filter((a) => a !== ABI)
      for (const abi of others) expect(fs.existsSync(path.join(modules, '@trader', `processlock-${abi}`))).toBe(false)
      // Nothing called cargo, rustc, napi, a C compiler or node-gyp.
      expect(fs.existsSync(project.toolchain.calls) ? fs.readFileSync(project.toolchain.calls, 'utf8') : '').toBe('')
      for (const pkg of ['processlock', `processlock-${ABI}`]) {
        const manifest = JSON.parse(fs.readFileSync(path.join(modules, '@trader', pkg, 'package.json'), 'utf8'))
        for (const script of ['preinstall', 'install', 'postinstall', 'prepare'])
          expect(manifest.scripts?.[script]).toBeUndefined()
        expect(fs.existsSync(path.join(modules, '@trader', pkg, 'binding.gyp'))).toBe(false)
      }
      const lock = JSON.parse(fs.readFileSync(path.join(project.dir, 'package-lock.json'), 'utf8'))
      expect(lock.packages['node_modules/@trader/processlock'].resolved).toMatch(/^file:.*\.tgz$/)
      expect(lock.packages[`node_modules/@trader/processlock-${ABI}`].resolved).toMatch(/^file:.*\.tgz$/)
      // The empty cache stayed free of anything from a registry.
      const cached = path.join(project.cache, '_cacache', 'index-v5')
      const keys = fs.existsSync(cached)
        ? fs.readdirSync(cached, { recursive: true }).filter((f) => fs.statSync(path.join(cached, f)).isFile())
        : []
      const registryHits = keys
        .map((f) => fs.readFileSync(path.join(cached, f), 'utf8'))
        .filter((t) => /request-cache:https?:/.test(t))
      expect(registryHits).toEqual([])
    })

    test('the loader takes the addon from the platform package; without that package it says so', async () => {
      const installed = path.join(project.dir, 'node_modules', '@trader', 'processlock')
      expect(fs.readdirSync(installed).filter((f) => f.endsWith('.node'))).toEqual([])
      const probe = `
        const pl = require('@trader/processlock')
        const loaded = Object.keys(require.cache).filter((k) => k.endsWith('.node'))
        console.log(JSON.stringify({ loaded, target: require('./node_modules/@trader/processlock/binding.js').__napiBindingTarget, api: typeof pl.acquireLock }))`
      const r = await runOk(process.execPath, ['-e', probe], { cwd: project.dir })
      const platformNode = fs.realpathSync(
        path.join(project.dir, 'node_modules', '@trader', `processlock-${ABI}`, `processlock.${ABI}.node`),
      )
      expect(JSON.parse(r.stdout)).toEqual({ loaded: [platformNode], target: 'native', api: 'function' })

      // The same package without its platform package (an install with --omit=optional).
      const bare = path.join(work, 'no-platform')
      await unpack(tarballs.published.file, path.join(bare, 'node_modules', '@trader', 'processlock'))
      fs.writeFileSync(path.join(bare, 'package.json'), '{ "private": true }\n')
      const load = await run(process.execPath, ['-e', "require('@trader/processlock')"], { cwd: bare })
      expect(load.code).toBe(1)
      // The error's first line names the package this platform and libc need; the next one is
      // the command. Nothing about packages this one never had.
      const message = load.stderr.split('\n').slice(load.stderr.split('\n').findIndex((l) => l.startsWith('Error: ')))
      expect(message.slice(0, 2)).toEqual([
        `Error: @trader/processlock: the native addon for this platform is missing: install @trader/processlock-${ABI}`,
        `  npm install @trader/processlock-${ABI}@${MAIN.version}`,
      ])
      // Where the platform package is not published, the way to the tarballs, with their names;
      // nothing about building inside node_modules.
      const tarballsLine = `  npm install <clone>/pack/${path.basename(tarballs.main.file)} <clone>/pack/${path.basename(tarballs.platform.file)}`
      expect(message).toContain(tarballsLine)
      expect(load.stderr).toContain('with "npm run pack"')
      expect(load.stderr).not.toMatch(/checkout|npm run build/)
      expect(load.stderr).not.toMatch(/wasi|npm has a bug/i)
      // The reason underneath stays available as the cause.
      expect(load.stderr).toContain(`Cannot find module '@trader/processlock-${ABI}'`)
      const cli = await run(
        process.execPath,
        [path.join(bare, 'node_modules', '@trader', 'processlock', 'bin', 'processlock.js'), 'check'],
        { cwd: bare },
      )
      expect(cli.code).toBe(1)
      expect(cli.stderr.split('\n').slice(0, 2)).toEqual([
        `processlock: the processlock command for this platform is missing: install @trader/processlock-${ABI}`,
        `  npm install @trader/processlock-${ABI}@${MAIN.version}`,
      ])
      expect(cli.stderr).toContain(tarballsLine)
      expect(cli.stderr).not.toMatch(/checkout|npm run build/)
    })
  })

  describe("the trader's code, type-checked and built", () => {
    test('tsc --strict builds server/index.ts and temporal/worker.ts as CommonJS and as ESM', () => {
      // Both strict. The ESM variant also checks every declaration file it loads, the package's
      // index.d.ts included; the CommonJS one resolves the same index.d.ts (through "types" rather
      // than "exports") and skips that part, a good 10 s of @types/node on this machine.
      const config = (variant) =>
        JSON.parse(fs.readFileSync(path.join(project.dir, `tsconfig.${variant}.json`), 'utf8')).compilerOptions
      expect(config('esm')).toMatchObject({ strict: true, skipLibCheck: false, module: 'nodenext' })
      expect(config('cjs')).toMatchObject({ strict: true, module: 'commonjs' })
      const cjs = fs.readFileSync(path.join(project.dir, 'build', 'cjs', 'server', 'index.js'), 'utf8')
      const esm = fs.readFileSync(path.join(project.dir, 'build', 'esm', 'server', 'index.js'), 'utf8')
      expect(cjs).toContain('require("@trader/processlock")')
      expect(esm).toContain("import { acquireLock, getLockInfo } from '@trader/processlock';")
      expect(esm).not.toContain('require(')
      const worker = fs.readFileSync(path.join(project.dir, 'build', 'esm', 'temporal', 'worker.js'), 'utf8')
      expect(worker).toMatch(/async function run\(\) \{\s*try \{\s*acquireLock\('worker'\)/)
    })

    test('the ES module typings (named exports, default export) check under node16, nodenext and bundler resolution', () => {
      const config = (variant) =>
        JSON.parse(fs.readFileSync(path.join(project.dir, `tsconfig.${variant}.json`), 'utf8'))
      for (const [variant, resolution] of [
        ['node16', 'node16'],
        ['esm', 'nodenext'],
        ['bundler', 'bundler'],
      ]) {
        expect(config(variant).compilerOptions).toMatchObject({ strict: true, moduleResolution: resolution })
        expect(config(variant).files).toContain('types/imports.ts')
      }
      for (const variant of ['node16', 'bundler']) {
        const r = project.built[variant]
        expect({ variant, code: r.code, out: r.stdout + r.stderr }).toEqual({ variant, code: 0, out: '' })
      }
      // An import from the project resolves to the ESM declaration file, the require to the CommonJS one.
      const resolved = (conditions) =>
        runOk(
          process.execPath,
          [
            '-e',
            `console.log(require('typescript').resolveModuleName('@trader/processlock', ${JSON.stringify(path.join(project.dir, 'types', 'imports.ts'))}, { module: 100, moduleResolution: 3 }, require('typescript').sys, undefined, undefined, ${conditions}).resolvedModule.resolvedFileName)`,
          ],
          { cwd: project.dir },
        )
      return Promise.all([resolved('99'), resolved('1')]).then(([esm, cjs]) => {
        expect(esm.stdout.trim()).toBe(path.join(project.dir, 'node_modules', '@trader', 'processlock', 'index.d.mts'))
        expect(cjs.stdout.trim()).toBe(path.join(project.dir, 'node_modules', '@trader', 'processlock', 'index.d.ts'))
      })
    })
  })

  describe('the built server and worker, run as the trader runs them', () => {
    // A failed test must not fail the next ones: what it left running is killed, its files go.
    afterEach(async () => {
      const left = [...services]
      for (const p of left) p.kill('SIGKILL')
      await Promise.all(left.map((p) => p.done().catch(() => {})))
      services.clear()
      for (const f of lockFiles()) fs.rmSync(path.join(locks, f), { force: true })
    })

    test.each([
      ['cjs', 'esm'],
      ['esm', 'cjs'],
    ])('%s build: both start; a second server (%s build) gets LOCK_CONFLICT and exits 1', async (format, other) => {
      const server = await startService(`build/${format}/server/index.js`)
      const worker = await startService(`build/${format}/temporal/worker.js`)
      // The default place: runtime/locks under the project.
      expect(lockFiles()).toEqual(['backend.short.lock', 'worker.short.lock'])
      expect(record('backend.short.lock')).toMatchObject({
        pid: server.pid,
        tradeSide: 'SHORT',
        processName: 'trader-short-backend',
      })
      expect(record('worker.short.lock')).toMatchObject({
        pid: worker.pid,
        tradeSide: 'SHORT',
        processName: 'trader-short-worker',
      })
      expect(server.stdout).toContain(`Backend runs with PID ${server.pid}`)

      const second = await startBuilt(`build/${other}/server/index.js`).done()
      expect(second.code).toBe(1)
      const started = record('backend.short.lock').started
      expect(second.stderr.trim().split('\n')).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${server.pid}, started: '${started}' }`,
        `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${server.pid}`,
        fatalLine('backend', 'SHORT', server.pid),
      ])
      // It stopped before any initialisation.
      expect(second.stdout).toBe('')

      const secondWorker = await startBuilt(`build/${other}/temporal/worker.js`).done()
      expect(secondWorker.code).toBe(1)
      expect(secondWorker.stderr).toContain(fatalLine('worker', 'SHORT', worker.pid))
      expect(secondWorker.stdout).not.toContain('[WORKER] polling')

      // Ctrl+C on the worker: it drains and ends; SIGTERM on the server (no listener of its own):
      // the lock is released and the signal still ends it.
      const w = await stop(worker, 'SIGINT')
      expect(w).toMatchObject({ code: 0, signal: null })
      expect(w.stdout).toContain('[WORKER] stopped')
      expect(w.stdout).toContain(releasedLine('worker', 'SHORT', worker.pid))
      const s = await stop(server, 'SIGTERM')
      expect(s).toMatchObject({ code: null, signal: 'SIGTERM' })
      expect(s.stdout).toContain(releasedLine('backend', 'SHORT', server.pid))
      expect(lockFiles()).toEqual([])
    })

    test('SHORT and LONG run side by side; a second LONG is turned away', async () => {
      const short = await startService('build/esm/server/index.js', 'SHORT')
      const long = await startService('build/cjs/server/index.js', 'LONG')
      expect(lockFiles()).toEqual(['backend.long.lock', 'backend.short.lock'])
      expect(record('backend.long.lock')).toMatchObject({
        pid: long.pid,
        tradeSide: 'LONG',
        processName: 'trader-long-backend',
      })
      expect(record('backend.short.lock').pid).toBe(short.pid)

      const second = await startBuilt('build/esm/server/index.js', 'LONG').done()
      expect(second.code).toBe(1)
      expect(second.stderr).toContain('[PROCESS_LOCK_CONFLICT] Another backend (LONG) is already running!')
      expect(second.stderr).toContain(fatalLine('backend', 'LONG', long.pid))

      await stop(short, 'SIGINT')
      await stop(long, 'SIGINT')
      expect(lockFiles()).toEqual([])
    })

    test('processlock check (npm run locks:check) lists the locks; processlock clear removes the stale ones', async () => {
      const server = await startService('build/cjs/server/index.js', 'SHORT')
      const worker = await startService('build/esm/temporal/worker.js', 'SHORT')
      const long = await startService('build/esm/server/index.js', 'LONG')
      // A LONG worker killed by SIGKILL leaves its file: stale.
      const dead = await startService('build/cjs/temporal/worker.js', 'LONG')
      const deadResult = await stop(dead, 'SIGKILL')
      expect(deadResult.signal).toBe('SIGKILL')
      expect(record('worker.long.lock').pid).toBe(dead.pid)

      // The README's command, from the project's scripts, and the same through npx.
      const viaScript = await runOk(process.execPath, [NPM_CLI, 'run', '--silent', 'locks:check'], { cwd: project.dir })
      const viaNpx = await runOk(process.execPath, [NPX_CLI, '--offline', 'processlock', 'check'], { cwd: project.dir })
      for (const out of [viaScript.stdout, viaNpx.stdout]) {
        expect(out).toContain(`Locks in ${locks}`)
        const rows = out.split('\n').filter((l) => l.endsWith('.lock'))
        const row = (file) => rows.find((l) => l.endsWith(` ${file}`)).split(/\s+/)
        expect(row('backend.short.lock')).toEqual(
          expect.arrayContaining(['backend', 'SHORT', String(server.pid), 'held', 'trader-short-backend']),
        )
        expect(row('worker.short.lock')).toEqual(
          expect.arrayContaining(['worker', 'SHORT', String(worker.pid), 'held', 'trader-short-worker']),
        )
        expect(row('backend.long.lock')).toEqual(
          expect.arrayContaining(['backend', 'LONG', String(long.pid), 'held', 'trader-long-backend']),
        )
        expect(row('worker.long.lock')).toEqual(
          expect.arrayContaining(['worker', 'LONG', String(dead.pid), 'stale', 'trader-long-worker']),
        )
      }
      const states = Object.fromEntries((await checkJson()).map((l) => [path.basename(l.file), [l.state, l.pid]]))
      expect(states).toEqual({
        'backend.long.lock': ['held', long.pid],
        'backend.short.lock': ['held', server.pid],
        'worker.long.lock': ['stale', dead.pid],
        'worker.short.lock': ['held', worker.pid],
      })

      const clear = await runOk(process.execPath, [NPX_CLI, '--offline', 'processlock', 'clear'], { cwd: project.dir })
      expect(clear.stdout).toMatch(
        new RegExp(`removed stale +worker\\.long\\.lock \\(PID ${dead.pid} is not running\\)`),
      )
      expect(clear.stdout).toMatch(new RegExp(`kept +backend\\.short\\.lock \\(held by running PID ${server.pid}`))
      expect(lockFiles()).toEqual(['backend.long.lock', 'backend.short.lock', 'worker.short.lock'])

      // A held lock survives clear; the services still own theirs and release them as they end.
      for (const [p, signal] of [
        [server, 'SIGTERM'],
        [worker, 'SIGTERM'],
        [long, 'SIGINT'],
      ]) {
        const r = await stop(p, signal)
        expect(r.stdout).toContain('[PROCESS_LOCK_RELEASED]')
      }
      expect(lockFiles()).toEqual([])
    })

    /** The project's jest, with two workers and a cache of its own (no timings: no running in band). */
    const jest = (args) =>
      run(
        process.execPath,
        [
          path.join(project.dir, 'node_modules', 'jest', 'bin', 'jest.js'),
          '--ci',
          '--colors=false',
          '--maxWorkers=2',
          '--cacheDirectory',
          fs.mkdtempSync(path.join(work, 'jest-cache-')),
          ...args,
        ],
        {
          cwd: project.dir,
        },
      )

    test("the trader's own jest tests pass, with parallel workers, a module that locks at import included", async () => {
      const r = await jest([])
      if (r.code !== 0) throw new Error(`consumer jest failed:\n${r.stdout}\n${r.stderr}`)
      expect(r.stderr).toMatch(/Tests:\s+4 passed, 4 total/)
    })

    test('jest workers: a lock directory per worker (JEST_WORKER_ID) lets each import the locking module; one directory for all does not', async () => {
      const ordersTests = ['--runTestsByPath', '__tests__/orders-a.test.cjs', '__tests__/orders-b.test.cjs']
      for (const id of [1, 2])
        fs.rmSync(path.join(project.dir, 'runtime', `locks-jest-${id}`), { recursive: true, force: true })
      const perWorker = await jest(ordersTests)
      if (perWorker.code !== 0) throw new Error(`consumer jest failed:\n${perWorker.stdout}\n${perWorker.stderr}`)
      expect(perWorker.stderr).toMatch(/Tests:\s+2 passed, 2 total/)
      // Both workers took the lock, each in its own directory, and released it as they ended.
      for (const id of [1, 2]) expect(lockDirEntries(path.join(project.dir, 'runtime', `locks-jest-${id}`))).toEqual([])

      // The same two files with no setup file: both workers lock runtime/locks, and the second is refused.
      const config = {
        rootDir: project.dir,
        testEnvironment: 'node',
        testMatch: ['<rootDir>/__tests__/orders-*.test.cjs'],
      }
      const shared = await jest(['--config', JSON.stringify(config), ...ordersTests])
      expect(shared.code).toBe(1)
      expect(shared.stderr).toMatch(/Test Suites:\s+1 failed, 1 passed, 2 total/)
      expect(shared.stderr).toMatch(/LOCK_CONFLICT: backend is already running \(PID: \d+\)/)
      expect(lockFiles()).toEqual([])
    })
  })

  describe('bundled with esbuild', () => {
    test('esbuild --bundle --platform=node --loader:.node=copy: the bundle, alone with its .node file, takes the lock', async () => {
      const esbuild = path.join(ROOT, 'node_modules', 'esbuild', 'bin', 'esbuild')
      const out = path.join(work, 'esbuild-out')
      const r = await runOk(
        esbuild,
        [
          'server/index.ts',
          '--bundle',
          '--platform=node',
          '--format=cjs',
          '--loader:.node=copy',
          `--outfile=${path.join(out, 'server.cjs')}`,
        ],
        { cwd: project.dir },
      )
      const emitted = fs.readdirSync(out)
      const addon = emitted.find((f) => f.endsWith('.node'))
      expect(emitted.sort()).toEqual([addon, 'server.cjs'].sort())
      expect(addon).toMatch(new RegExp(`^processlock\\.${ABI}-[A-Z0-9]+\\.node$`))
      expect(r.stderr).not.toMatch(/error/i)

      // Deployed alone: no node_modules, no package.json anywhere above it that names the package.
      const deployed = path.join(work, 'deployed')
      fs.mkdirSync(deployed)
      for (const f of emitted) fs.copyFileSync(path.join(out, f), path.join(deployed, f))
      const bundleLocks = path.join(work, 'bundle-locks')
      const start = () =>
        watch(process.execPath, [path.join(deployed, 'server.cjs')], {
          cwd: deployed,
          env: cleanEnv({ TRADE_SIDE: 'SHORT', PROCESSLOCK_DIR: bundleLocks }),
        })
      const first = start()
      services.add(first)
      await first.waitFor(acquiredLine('backend', 'SHORT', first.pid))
      await first.waitFor('[SERVER] listening on 127.0.0.1:')
      // The addon it runs is the copy beside the bundle.
      if (process.platform === 'linux')
        expect(fs.readFileSync(`/proc/${first.pid}/maps`, 'utf8')).toContain(path.join(deployed, addon))
      const second = await start().done()
      expect(second.code).toBe(1)
      expect(second.stderr).toContain(fatalLine('backend', 'SHORT', first.pid))
      first.kill('SIGTERM')
      expect(await first.done()).toMatchObject({ signal: 'SIGTERM' })
      services.delete(first)
      expect(lockDirEntries(bundleLocks)).toEqual([])
    })
  })

  describe(`under PM2 ${PM2_VERSION} (fork mode)`, () => {
    let pm2
    const BACKEND = 'trader-short-backend'
    const MIN_UPTIME_MS = 1000
    const WORKER = 'trader-short-worker'

    /** The lock records of the SHORT backend and worker, once they name these PIDs. */
    const heldBy = (backendPid, workerPid, what) =>
      waitUntil(
        async () => {
          const states = Object.fromEntries((await checkJson()).map((l) => [path.basename(l.file), l]))
          const b = states['backend.short.lock']
          const w = states['worker.short.lock']
          return b?.state === 'held' && w?.state === 'held' && b.pid === backendPid && w.pid === workerPid
        },
        { timeoutMs: 30000, intervalMs: 200, what },
      )

    /** Waits until an app's log files hold `text`. */
    const logged = (app, text) =>
      waitUntil(() => [app.out, app.err].some((f) => fs.existsSync(f) && fs.readFileSync(f, 'utf8').includes(text)), {
        timeoutMs: 20000,
        what: `"${text}" in the logs of PID ${app.pid}`,
      })
    const logs = (app) => [app.out, app.err].map((f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '')).join('')

    ownPm2('pl-pm2-', (made) => (pm2 = made))

    let apps
    test('pm2 start ecosystem.short.config.cjs: the server and the worker take their locks', async () => {
      expect(lockFiles()).toEqual([])
      await pm2.cmd(['start', 'ecosystem.short.config.cjs'], { env: { PROCESSLOCK_DIR: locks } })
      const backend = await pm2.waitOnline(BACKEND)
      const worker = await pm2.waitOnline(WORKER)
      await heldBy(backend.pid, worker.pid, 'both locks held by the PM2 processes')
      await logged(backend, acquiredLine('backend', 'SHORT', backend.pid))
      await logged(worker, acquiredLine('worker', 'SHORT', worker.pid))
      apps = { backend, worker }
    })

    test('a second server started by hand gets the conflict', async () => {
      const r = await startBuilt('build/cjs/server/index.js', 'SHORT', { PROCESSLOCK_DIR: locks }).done()
      expect(r.code).toBe(1)
      expect(r.stderr).toContain(fatalLine('backend', 'SHORT', apps.backend.pid))
      const w = await startBuilt('build/esm/temporal/worker.js', 'SHORT', { PROCESSLOCK_DIR: locks }).done()
      expect(w.code).toBe(1)
      expect(w.stderr).toContain(fatalLine('worker', 'SHORT', apps.worker.pid))
      // The PM2 processes kept their locks.
      expect(record('backend.short.lock').pid).toBe(apps.backend.pid)
    })

    test('pm2 restart all: the new processes take the locks without a conflict', async () => {
      const before = apps
      // PM2 counts the end of any process that ran less than min_uptime (1 s by default) as an
      // unstable restart, a planned `pm2 restart` too. Once both have run that long, an unstable
      // restart below can only be a new process that crashed (a conflict at start).
      await waitUntil(
        async () => Object.values(await pm2.apps()).every((a) => Date.now() - a.startedAt > MIN_UPTIME_MS),
        {
          what: 'both processes to have run for min_uptime',
        },
      )
      await pm2.cmd(['restart', 'all'])
      const backend = await pm2.waitOnline(BACKEND, (pid) => pid !== before.backend.pid)
      const worker = await pm2.waitOnline(WORKER, (pid) => pid !== before.worker.pid)
      await heldBy(backend.pid, worker.pid, 'both locks held by the restarted processes')
      await logged(backend, acquiredLine('backend', 'SHORT', backend.pid))
      await logged(worker, acquiredLine('worker', 'SHORT', worker.pid))
      // The old ones released theirs on SIGINT (no stale take-over, no SIGKILL, no retry).
      await logged(backend, releasedLine('backend', 'SHORT', before.backend.pid))
      await logged(worker, releasedLine('worker', 'SHORT', before.worker.pid))
      for (const app of [backend, worker]) {
        expect(logs(app)).not.toContain('[PROCESS_LOCK_CONFLICT]')
        expect(logs(app)).not.toContain('[PROCESS_LOCK_STALE]')
        expect(app).toMatchObject({ restarts: 1, unstableRestarts: 0 })
      }
      expect(pm2.daemonLog()).not.toMatch(/still alive after \d+ms, sending SIGKILL/)
      apps = { backend, worker }
    })

    test('pm2 stop all releases both locks (SIGINT, well before the SIGKILL of kill_timeout)', async () => {
      await pm2.cmd(['stop', 'all'])
      await waitUntil(() => lockFiles().length === 0, { timeoutMs: 10000, what: 'the lock files to go' })
      await logged(apps.backend, releasedLine('backend', 'SHORT', apps.backend.pid))
      await logged(apps.worker, releasedLine('worker', 'SHORT', apps.worker.pid))
      expect(pm2.daemonLog()).not.toMatch(/still alive after \d+ms, sending SIGKILL/)
      const now = await pm2.apps()
      expect([now[BACKEND].status, now[WORKER].status]).toEqual(['stopped', 'stopped'])
      expect(running(apps.backend.pid) || running(apps.worker.pid)).toBe(false)
    })

    test('pm2 restart all from stopped reacquires', async () => {
      const before = apps
      await pm2.cmd(['restart', 'all'])
      const backend = await pm2.waitOnline(BACKEND, (pid) => pid !== before.backend.pid)
      const worker = await pm2.waitOnline(WORKER, (pid) => pid !== before.worker.pid)
      await heldBy(backend.pid, worker.pid, 'both locks held again')
      for (const app of [backend, worker]) expect(logs(app)).not.toContain('[PROCESS_LOCK_CONFLICT]')
      apps = { backend, worker }
    })

    test.each([
      ['server', 'backend', BACKEND],
      ['worker', 'worker', WORKER],
    ])(
      'kill -9 of the managed %s: PM2 restarts it and the new process takes the lock over at once',
      async (_, type, name) => {
        const key = type === 'backend' ? 'backend' : 'worker'
        const old = apps[key]
        process.kill(old.pid, 'SIGKILL')
        const fresh = await pm2.waitOnline(name, (pid) => pid !== old.pid)
        // The killed process ran no clean-up: its file was still there, unheld, and the new one
        // took it over at its first attempt.
        await logged(fresh, staleLine(old.pid))
        await logged(fresh, acquiredLine(type, 'SHORT', fresh.pid))
        const other = type === 'backend' ? apps.worker : apps.backend
        await heldBy(
          type === 'backend' ? fresh.pid : other.pid,
          type === 'backend' ? other.pid : fresh.pid,
          'the new PID in the record',
        )
        expect(logs(fresh)).not.toContain('[PROCESS_LOCK_CONFLICT]')
        // One restart: no crash loop of conflicting starts.
        expect(fresh.restarts).toBe(old.restarts + 1)
        apps = { ...apps, [key]: fresh }
      },
    )

    test("a worker with PM2's agent on: released on stop, or SIGKILLed and taken over as stale", async () => {
      // `pm2 start worker.js` without the ecosystem file: pmx on, as PM2 has it by default. Whether
      // PM2 must SIGKILL the drained worker depends on where its agent's 3-second check falls.
      const name = 'trader-long-worker'
      const script = path.join(project.dir, 'build', 'cjs', 'temporal', 'worker.js')
      await pm2.cmd(['start', script, '--name', name], { env: { TRADE_SIDE: 'LONG', PROCESSLOCK_DIR: locks } })
      const first = await pm2.waitOnline(name)
      await waitUntil(() => record('worker.long.lock')?.pid === first.pid, { what: 'the LONG worker lock' })
      await logged(first, acquiredLine('worker', 'LONG', first.pid))

      /** After a stop: 'released', or 'killed' with the file left behind, unheld. */
      const outcome = async (pid) => {
        const sigkill = new RegExp(`Process with pid ${pid} still alive after \\d+ms, sending SIGKILL`)
        const how = await waitUntil(
          () =>
            record('worker.long.lock')?.pid !== pid ? 'released' : sigkill.test(pm2.daemonLog()) ? 'killed' : null,
          { what: `PID ${pid} to release its lock or PM2 to log its SIGKILL` },
        )
        if (how === 'killed') {
          await waitUntil(() => !running(pid), { what: `PID ${pid} to end` })
          const state = (await checkJson()).find((l) => path.basename(l.file) === 'worker.long.lock')
          expect(state).toMatchObject({ state: 'stale', pid })
        }
        return how
      }

      await pm2.cmd(['stop', name])
      const firstEnd = await outcome(first.pid)
      await pm2.cmd(['restart', name])
      const second = await pm2.waitOnline(name, (pid) => pid !== first.pid)
      await waitUntil(() => record('worker.long.lock')?.pid === second.pid, { what: 'the LONG worker lock, new PID' })
      await logged(second, acquiredLine('worker', 'LONG', second.pid))
      if (firstEnd === 'killed') await logged(second, staleLine(first.pid))
      expect(logs(second)).not.toContain('[PROCESS_LOCK_CONFLICT]')

      await pm2.cmd(['delete', name])
      if ((await outcome(second.pid)) === 'killed') {
        // The README's remedy for a file left by a crash.
        const clear = await processlock(['clear'])
        expect(clear.stdout).toMatch(
          new RegExp(`removed stale +worker\\.long\\.lock \\(PID ${second.pid} is not running\\)`),
        )
      }
      expect(record('worker.long.lock')).toBeNull()
    })

    test('pm2 delete all and pm2 kill: every lock released, no PM2 process left', async () => {
      await pm2.cmd(['delete', 'all'])
      await waitUntil(() => lockFiles().length === 0, { timeoutMs: 15000, what: 'the lock files to go' }).catch(
        () => {},
      )
      expect(lockFiles()).toEqual([])
      const daemon = pm2.daemonPid()
      expect(daemon && running(daemon)).toBe(true)
      const survivors = await pm2.shutdown()
      expect(survivors).toEqual([])
      expect(running(daemon)).toBe(false)
    })
  })

  describe(`under PM2 ${PM2_VERSION} (cluster mode, one lock per instance)`, () => {
    let pm2
    const APP = 'trader-short-cluster'
    /** The lock of instance N: 'backend' for instance 0, 'backend-N' for the others (server/cluster.ts). */
    const lockOf = (instance) => (instance === 0 ? 'backend' : `backend-${instance}`)
    const fileOf = (instance) => `${lockOf(instance)}.short.lock`
    const logs = (app) => [app.out, app.err].map((f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '')).join('')
    const logged = (app, text) =>
      waitUntil(() => logs(app).includes(text), { timeoutMs: 20000, what: `"${text}" in the logs of PID ${app.pid}` })

    /** The cluster's instances, by instance number, once both are online, listening and hold their locks. */
    const serving = (pidOk = () => true, what = 'both instances online with their locks') =>
      waitUntil(
        async () => {
          const procs = (await pm2.list()).filter((p) => p.name === APP)
          if (procs.length !== 2 || !procs.every((p) => p.status === 'online' && p.pid > 0 && pidOk(p.pid))) return null
          const byInstance = Object.fromEntries(procs.map((p) => [p.instance, p]))
          const ok = [0, 1].every(
            (i) =>
              byInstance[i] &&
              record(fileOf(i))?.pid === byInstance[i].pid &&
              logs(byInstance[i]).includes(`[SERVER] ${lockOf(i)} listening`),
          )
          return ok ? byInstance : null
        },
        { timeoutMs: 60000, intervalMs: 200, what },
      )

    ownPm2('pl-pm2c-', (made) => (pm2 = made))

    let instances
    test('pm2 start ecosystem.cluster.config.cjs: each of the two instances takes its own lock, no restart', async () => {
      expect(lockFiles()).toEqual([])
      await pm2.cmd(['start', 'ecosystem.cluster.config.cjs'], { env: { PROCESSLOCK_DIR: locks } })
      instances = await serving()
      expect(lockFiles()).toEqual(['backend-1.short.lock', 'backend.short.lock'])
      for (const i of [0, 1]) {
        await logged(instances[i], acquiredLine(lockOf(i), 'SHORT', instances[i].pid))
        expect(instances[i]).toMatchObject({ restarts: 0, unstableRestarts: 0 })
        expect(logs(instances[i])).not.toContain('[PROCESS_LOCK_CONFLICT]')
      }
    })

    test('a second copy of the cluster is refused, and its [FATAL] line reaches PM2 log files (acquireLockOrExit)', async () => {
      // The same script as a second cluster-mode app that does not wait and is not restarted:
      // its instance 0 finds 'backend' held by the first cluster's instance 0.
      const copy = 'trader-short-cluster-copy'
      const script = path.join(project.dir, 'build', 'esm', 'server', 'cluster.js')
      await pm2.cmd(['start', script, '--name', copy, '-i', '1', '--no-autorestart'], {
        env: { TRADE_SIDE: 'SHORT', PROCESSLOCK_DIR: locks, LOCK_WAIT_MS: '0' },
      })
      const holder = instances[0].pid
      const refused = await waitUntil(
        async () => {
          const p = (await pm2.list()).find((x) => x.name === copy)
          return p && p.status === 'stopped' ? p : null
        },
        { what: 'the copy to stop' },
      )
      const err = fs.readFileSync(refused.err, 'utf8')
      expect(err.trim().split('\n')).toEqual([
        '[PROCESS_LOCK_CONFLICT] Another backend (SHORT) is already running!',
        `[PROCESS_LOCK_CONFLICT] Existing process: { pid: ${holder}, started: '${record('backend.short.lock').started}' }`,
        `[PROCESS_LOCK_CONFLICT] To force restart, run: kill ${holder}`,
        fatalLine('backend', 'SHORT', holder),
      ])
      expect(refused.restarts).toBe(0)
      expect(pm2.daemonLog()).toMatch(new RegExp(`App \\[${copy}:\\d+\\] exited with code \\[1\\]`))
      await pm2.cmd(['delete', copy])
      // The cluster kept its locks.
      expect([record(fileOf(0)).pid, record(fileOf(1)).pid]).toEqual([instances[0].pid, instances[1].pid])
    })

    test('pm2 reload: each new instance waits for the one it replaces, then takes its lock (time reported)', async () => {
      const before = instances
      const oldPids = [before[0].pid, before[1].pid]
      const started = Date.now()
      await pm2.cmd(['reload', APP])
      const reloadMs = Date.now() - started
      instances = await serving((pid) => !oldPids.includes(pid), 'both new instances online with their locks')
      console.log(
        `pm2 reload of ${APP} (2 instances, PM2's default listen_timeout 3000 ms and kill_timeout 1600 ms, waitMs 10000): ${reloadMs} ms`,
      )
      for (const i of [0, 1]) {
        const fresh = instances[i]
        await logged(fresh, acquiredLine(lockOf(i), 'SHORT', fresh.pid))
        // The old instance released its lock on PM2's SIGINT (a SIGKILLed one would have left
        // its file for the new one to take over as stale). Its [PROCESS_LOCK_RELEASED] line is
        // not looked for: the re-raised SIGINT ends it before PM2's log stream may write it.
        expect(logs(fresh)).not.toContain(staleLine(before[i].pid))
        expect(fresh).toMatchObject({ restarts: 1, unstableRestarts: 0 })
        expect(running(before[i].pid)).toBe(false)
      }
      expect(logs(instances[0]) + logs(instances[1])).not.toContain('[FATAL]')
      expect(pm2.daemonLog()).not.toMatch(/still alive after \d+ms, sending SIGKILL/)
    })

    test('pm2 delete all: both locks released, nothing left running', async () => {
      await pm2.cmd(['delete', 'all'])
      await waitUntil(() => lockFiles().length === 0, { timeoutMs: 15000, what: 'the lock files to go' })
      const survivors = await pm2.shutdown()
      expect(survivors).toEqual([])
      for (const i of [0, 1]) expect(running(instances[i].pid)).toBe(false)
    })
  })
})
