#!/bin/sh
# Smoke-test one platform package's artifacts on the system they are for, the way a user gets them:
# the generated loader binding.js and index.js load the addon, take and release a lock, and the
# CLI runs on its own and through bin/processlock.js.
#
#   sh scripts/smoke.sh <abi>     e.g. linux-arm64-musl
#
# Run from a checkout holding binding.js and npm/<abi>/ with processlock.<abi>.node and the CLI
# (CI downloads them there). POSIX sh, so it runs in Alpine's busybox too.
set -eu
abi="$1"
uname -m
chmod 755 "npm/$abi/processlock"
# binding.js loads ./processlock.<abi>.node first.
cp "npm/$abi/processlock.$abi.node" .
node -e '
  const b = require("./binding.js")
  const fns = Object.keys(b).filter((k) => typeof b[k] === "function")
  if (!fns.length) throw new Error("the addon exports no functions")
  console.log(process.platform, process.arch, "addon exports:", fns.join(", "))
  const m = require("./index.js")
  const dir = require("fs").mkdtempSync(require("os").tmpdir() + "/pl-")
  m.acquireLock("backend", { dir })
  const info = m.getLockInfo("backend", { dir })
  if (!info || info.pid !== process.pid) throw new Error("lock not held: " + JSON.stringify(info))
  m.releaseLock("backend", { dir })
  if (m.getLockInfo("backend", { dir }) !== null) throw new Error("lock not released")
  console.log("acquire/getLockInfo/release ok")
'
"npm/$abi/processlock" --version
PROCESSLOCK_BINARY="$PWD/npm/$abi/processlock" node bin/processlock.js check
