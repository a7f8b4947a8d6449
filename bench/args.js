'use strict'
// Command-line handling shared by the bench scripts: each script's usage is the
// comment block at its top, and options are read one by one.

const fs = require('node:fs')

// The comment block after the first two lines of `file`, without the `//`.
function usage(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n').slice(2)
  const end = lines.findIndex((l) => !l.startsWith('//'))
  return lines
    .slice(0, end)
    .map((l) => l.replace(/^\/\/ ?/, ''))
    .join('\n')
}

// Calls onOption(name, value) for each option; value() takes the next argument.
// onOption returns false for an option it does not know. -h/--help prints the
// usage of `file` and exits.
function eachOption(argv, file, onOption) {
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`)
      return argv[++i]
    }
    if (k === '-h' || k === '--help') {
      console.log(usage(file))
      process.exit(0)
    }
    if (!onOption(k, value)) throw new Error(`unknown option ${k}`)
  }
}

module.exports = { usage, eachOption }
