'use strict'
// `processlock completions <shell>`: the completion script for a shell, made from the same
// declaration of the commands and options that reads the command line, so it cannot offer an
// option the command does not take. The bash script is run as bash runs it on a Tab.
const { execFileSync, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { tempDir } = require('./helpers/proc')
const { BINARY, cli } = require('./helpers/cli-proc')
const { needs } = require('./helpers/skip')

const SHELLS = ['bash', 'elvish', 'fish', 'powershell', 'zsh']
const COMPLETE = path.join(__dirname, 'fixtures', 'complete.sh')
const CLOSED_STDOUT = path.join(__dirname, 'fixtures', 'closed-stdout.sh')

function hasBash() {
  try {
    execFileSync('bash', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/**
 * What bash offers on a Tab after `words` (the last one is the word being completed), with the
 * script in `file` loaded as a user's shell loads it.
 */
function offered(file, words) {
  const out = execFileSync('bash', ['--norc', '--noprofile', COMPLETE, file, ...words], { encoding: 'utf8' })
  return out.split('\n').filter(Boolean)
}

describe('processlock completions', () => {
  test.each(SHELLS)('%s: a script for that shell on stdout, exit 0', async (shell) => {
    const r = await cli(['completions', shell], { dir: tempDir('completions') })
    expect(r).toMatchObject({ code: 0, stderr: '' })
    expect(r.stdout).toContain('processlock')
    for (const word of ['check', 'clear', 'run', 'replace', 'format', 'prometheus']) expect(r.stdout).toContain(word)
  })

  needs(hasBash(), 'bash')('bash completes the commands, their options and their values', async () => {
    const dir = tempDir('completions-bash')
    const r = await cli(['completions', 'bash'], { dir })
    expect(r.code).toBe(0)
    const file = path.join(dir, 'processlock.bash')
    fs.writeFileSync(file, r.stdout)
    const commands = offered(file, ['processlock', ''])
    for (const c of ['check', 'clear', 'run', 'completions']) expect(commands).toContain(c)
    expect(offered(file, ['processlock', 'ru'])).toEqual(['run'])
    expect(offered(file, ['processlock', 'run', '--re'])).toEqual(['--replace'])
    expect(offered(file, ['processlock', 'check', '--fo'])).toEqual(['--format'])
    expect(offered(file, ['processlock', 'check', '--format', 'p'])).toEqual(['prometheus'])
    expect(offered(file, ['processlock', 'clear', '--f'])).toEqual(['--force'])
    expect(offered(file, ['processlock', 'completions', 'z'])).toEqual(['zsh'])
  })

  test('a shell it does not know, or none: a usage error naming the ones it knows', async () => {
    for (const args of [['completions', 'tcsh'], ['completions']]) {
      const r = await cli(args, { dir: tempDir('completions-bad') })
      expect(r.code).toBe(2)
      expect(r.stdout).toBe('')
      expect(r.stderr).toMatch(
        /^processlock: [^\n]*bash, elvish, fish, powershell or zsh[^\n]* \(see processlock --help\)\n$/,
      )
    }
  })
})

needs(hasBash(), 'bash')('completions, --help and --version into a pipe nobody reads: exit 0, nothing said', () => {
  // `processlock completions bash | head -1`, once head has gone: the rest is not wanted.
  for (const args of [['completions', 'bash'], ['--help'], ['--version']]) {
    const r = spawnSync('bash', ['--norc', '--noprofile', CLOSED_STDOUT, BINARY, ...args], { encoding: 'utf8' })
    expect({ args, status: r.status, stderr: r.stderr }).toEqual({ args, status: 0, stderr: '' })
  }
})
