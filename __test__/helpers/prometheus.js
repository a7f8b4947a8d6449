'use strict'
// Prometheus' text exposition format, read back by a real parser: the Prometheus project's own
// Python client (prometheus_client, from PyPI, pinned), installed once into
// node_modules/.cache/processlock-tests/ with pip, where later runs find it. On top of what its
// parser accepts, the checks node_exporter's textfile collector (Go's expfmt) makes: one HELP and
// one TYPE per family, before its samples; a family's samples together; no series twice.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { run } = require('./consumer-proc')

const ROOT = path.resolve(__dirname, '..', '..')
const VERSION = '0.26.0'
const DIR = path.join(ROOT, 'node_modules', '.cache', 'processlock-tests', `prometheus_client-${VERSION}`)
const PYTHON = process.platform === 'win32' ? 'python' : 'python3'

/** Whether Python 3 with pip is here (the parser is installed with it). */
function havePythonPip() {
  return spawnSync(PYTHON, ['-m', 'pip', '--version'], { stdio: 'ignore' }).status === 0
}

/** Installs the parser when it is not there yet; the directory to put on PYTHONPATH. */
async function ensureParser() {
  if (fs.existsSync(path.join(DIR, 'prometheus_client', 'parser.py'))) return DIR
  fs.mkdirSync(path.dirname(DIR), { recursive: true })
  // Installed next to the final place, then renamed: a run that stops half-way leaves no half tree.
  const staging = fs.mkdtempSync(`${DIR}.staging-`)
  const r = await run(
    PYTHON,
    [
      '-m',
      'pip',
      'install',
      '--quiet',
      '--disable-pip-version-check',
      '--no-deps',
      '--target',
      staging,
      `prometheus-client==${VERSION}`,
    ],
    { timeoutMs: 240000 },
  )
  if (r.code !== 0) throw new Error(`pip install prometheus-client==${VERSION} failed:\n${r.stdout}${r.stderr}`)
  try {
    fs.renameSync(staging, DIR)
  } catch (e) {
    fs.rmSync(staging, { recursive: true, force: true })
    if (!fs.existsSync(DIR)) throw e
  }
  return DIR
}

const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({"name": f.name, "type": f.type, "help": f.documentation,
                     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(families))
`

/** The checks of Go's expfmt that the Python parser does not make; throws on the first breach. */
function checkStructure(text) {
  const seen = { help: new Set(), type: new Set(), series: new Set(), closed: new Set() }
  let current = null
  for (const line of text.split('\n')) {
    if (line === '') continue
    const meta = /^# (HELP|TYPE) (\S+)/.exec(line)
    if (meta) {
      const kind = meta[1].toLowerCase()
      if (seen[kind].has(meta[2])) throw new Error(`second ${meta[1]} for ${meta[2]}`)
      if (seen.closed.has(meta[2])) throw new Error(`${meta[1]} for ${meta[2]} after its samples ended`)
      seen[kind].add(meta[2])
      if (current && current !== meta[2]) seen.closed.add(current)
      current = meta[2]
      continue
    }
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0]
    if (!name) throw new Error(`not a sample line: ${JSON.stringify(line)}`)
    if (name !== current) throw new Error(`sample of ${name} outside its family (current: ${current})`)
    if (!seen.type.has(name)) throw new Error(`sample of ${name} before its TYPE`)
    const series = line.slice(0, line.lastIndexOf(' '))
    if (seen.series.has(series)) throw new Error(`second sample for ${series}`)
    seen.series.add(series)
  }
}

/** Parses exposition text: [{ name, type, help, samples: [{ name, labels, value }] }]. */
async function parseExposition(text) {
  checkStructure(text)
  const dir = await ensureParser()
  const r = spawnSync(PYTHON, ['-c', PARSE], {
    input: text,
    encoding: 'utf8',
    env: { ...process.env, PYTHONPATH: dir },
  })
  if (r.status !== 0) throw new Error(`the parser refused the text:\n${r.stderr}\n--- text\n${text}`)
  return JSON.parse(r.stdout)
}

module.exports = { havePythonPip, parseExposition, PROMETHEUS_CLIENT_VERSION: VERSION }
