'use strict'
// The documentation's links: every relative link and #anchor in README.md and docs/*.md names a
// file that exists and a heading that is there, with anchors made as GitHub makes them. And every
// guide opens with the question it answers, answered in the next paragraph.
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const DOCS = path.join(ROOT, 'docs')
const PAGES = [
  path.join(ROOT, 'README.md'),
  ...fs
    .readdirSync(DOCS)
    .filter((f) => f.endsWith('.md'))
    .map((f) => path.join(DOCS, f)),
]
// Reference pages that are not guides: they need not open with a question.
const NOT_GUIDES = new Set(['PROTOCOL.md'])

/** The lines of a markdown file, with those inside fenced code blocks blanked. */
function outsideFences(file) {
  let fence = null
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => {
      const m = /^\s*(`{3,}|~{3,})/.exec(line)
      if (m && (fence === null || m[1][0] === fence[0])) {
        fence = fence === null ? m[1] : null
        return ''
      }
      return fence === null ? line : ''
    })
}

/** GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces made dashes. */
function slug(heading) {
  return heading
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, '')
    .replace(/ /g, '-')
}

const anchorCache = new Map()
/** Every anchor of a file's headings; a repeated heading gets -1, -2... as on GitHub. */
function anchors(file) {
  if (!anchorCache.has(file)) {
    const seen = new Map()
    const set = new Set()
    for (const line of outsideFences(file)) {
      const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
      if (!m) continue
      const base = slug(m[1])
      const n = seen.get(base) ?? 0
      seen.set(base, n + 1)
      set.add(n === 0 ? base : `${base}-${n}`)
    }
    anchorCache.set(file, set)
  }
  return anchorCache.get(file)
}

/** `[text](target)` links outside code (fenced or inline), with their line numbers. */
function links(file) {
  const out = []
  outsideFences(file).forEach((line, i) => {
    const text = line.replace(/`[^`]*`/g, '')
    for (const m of text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) out.push({ target: m[1], line: i + 1 })
  })
  return out
}

describe('documentation', () => {
  test.each(PAGES.map((p) => [path.relative(ROOT, p), p]))('%s: every relative link and anchor resolves', (_, file) => {
    const broken = []
    for (const { target, line } of links(file)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue // https:, mailto: ...
      const [rel, anchor] = target.split('#')
      const dest = rel === '' ? file : path.resolve(path.dirname(file), decodeURIComponent(rel))
      if (!fs.existsSync(dest)) broken.push(`line ${line}: ${target}: no such file`)
      else if (anchor !== undefined && dest.endsWith('.md') && !anchors(dest).has(anchor))
        broken.push(`line ${line}: ${target}: no heading with that anchor`)
    }
    expect(broken).toEqual([])
  })

  test('every guide opens with the question it answers, then its answer', () => {
    const wrong = []
    for (const file of PAGES.filter((p) => path.dirname(p) === DOCS && !NOT_GUIDES.has(path.basename(p)))) {
      const [title, question, answer] = fs.readFileSync(file, 'utf8').split(/\n\s*\n/)
      const name = path.basename(file)
      if (!/^# \S/.test(title)) wrong.push(`${name}: the title is not first`)
      if (!/^\*\*[^*][\s\S]*\?\*\*$/.test((question ?? '').trim()))
        wrong.push(`${name}: the paragraph after the title is not a question in bold`)
      if (!answer || /^(#|- |\||```)/.test(answer.trim())) wrong.push(`${name}: no answer after the question`)
    }
    expect(wrong).toEqual([])
  })
})
