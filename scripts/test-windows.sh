#!/usr/bin/env bash
# Runs the core's tests (unit tests and the portable integration tests of crates/processlock) as
# Windows programs: cross-built for x86_64-pc-windows-gnu with mingw-w64, run under Wine.
#
# On a Debian or Ubuntu machine it installs what is missing (as root, or through sudo): the
# mingw-w64 C toolchain (the linker), wine64 and the Rust target. The Wine prefix lives in a
# cache directory (PROCESSLOCK_WINE_CACHE, default ~/.cache/processlock-wine) and is created once.
#
# Prints each test binary's output, then one closing line in cargo's format; exits non-zero when
# a test failed or a test binary did not finish.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-pc-windows-gnu
CACHE="${PROCESSLOCK_WINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/processlock-wine}"
# One test binary may take this long (seconds) before it counts as hung.
BINARY_TIMEOUT="${PROCESSLOCK_WINE_TIMEOUT:-300}"
export WINEPREFIX="$CACHE/prefix"
export WINEDEBUG=-all
# No Mono or Gecko installers: nothing here needs .NET or a browser engine.
export WINEDLLOVERRIDES="mscoree,mshtml="
# A stale takeover costs milliseconds under Wine: the stale-takeover loop of races.rs runs 50
# cycles per process instead of 150 (400 takeovers instead of 1200), a third of the time.
export PROCESSLOCK_IT_STALE_CYCLES="${PROCESSLOCK_IT_STALE_CYCLES:-50}"
started=$(date +%s)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

wine_bin() {
  command -v wine64 || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true
}

wineserver_bin() {
  command -v wineserver || { [ -x /usr/lib/wine/wineserver ] && echo /usr/lib/wine/wineserver; } || true
}

echo "== windows tests: toolchain"
if ! command -v x86_64-w64-mingw32-gcc >/dev/null || [ -z "$(wine_bin)" ]; then
  packages=(gcc-mingw-w64-x86-64-win32 wine64)
  # The package lists are refreshed only when something is missing from them.
  if ! as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
fi
WINE=$(wine_bin)
WINESERVER=$(wineserver_bin)
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET" >/dev/null
fi
"$WINE" --version

echo "== windows tests: wine prefix $WINEPREFIX"
mkdir -p "$CACHE"
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  "$WINE" wineboot --init >/dev/null 2>&1
  "$WINESERVER" -w
fi
# Rust's standard library (1.78 and later) takes its random numbers from ProcessPrng in
# bcryptprimitives.dll, which older Wine (8.0, Debian 12) does not have. A stand-in built on
# RtlGenRandom goes into the prefix when Wine lacks the real one.
wine_dlls=$(dirname "$(find /usr/lib -path '*wine/x86_64-windows/kernel32.dll' -print -quit)")
shim="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
if [ ! -e "$wine_dlls/bcryptprimitives.dll" ] && [ ! -e "$shim" ]; then
  src="$CACHE/bcryptprimitives"
  mkdir -p "$src"
  cat >"$src/prng.c" <<'EOF'
#include <windows.h>
#include <ntsecapi.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, n)) return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
EOF
  printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\n  ProcessPrng\n' >"$src/prng.def"
  x86_64-w64-mingw32-gcc -O2 -shared -o "$shim" "$src/prng.c" "$src/prng.def" -ladvapi32
fi
# Directories that failed tests kept for inspection in earlier runs.
find "$WINEPREFIX"/drive_c/users/*/Temp -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null || true

echo "== windows tests: build ($TARGET)"
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
cargo test -p processlock --tests --no-run --target "$TARGET" --message-format=json-render-diagnostics >"$build_log"
mapfile -t binaries < <(grep -o '"executable":"[^"]*"' "$build_log" | cut -d'"' -f4 | sort -u)
[ "${#binaries[@]}" -gt 0 ] || { echo "no test binaries were built" >&2; exit 1; }

# One wine server for all the binaries (it ends by itself 30 s after the last one).
"$WINESERVER" -p30

# The count before `word` in a libtest summary line.
count() { sed -nE "s/.* ([0-9]+) $2.*/\1/p" <<<"$1"; }

passed=0 failed=0 ignored=0 broken=()
for exe in "${binaries[@]}"; do
  name=$(basename "$exe" .exe)
  echo "== windows tests: ${name%-*}"
  out=$(mktemp)
  rc=0
  timeout -k 10 "$BINARY_TIMEOUT" "$WINE" "$exe" 2>&1 | tee "$out" || rc=$?
  line=$(grep -E '^test result: ' "$out" | tail -1 || true)
  rm -f "$out"
  if [ -z "$line" ]; then
    broken+=("${name%-*} (exit $rc, no test result)")
    continue
  fi
  passed=$((passed + $(count "$line" passed)))
  failed=$((failed + $(count "$line" failed)))
  ignored=$((ignored + $(count "$line" ignored)))
  [ "$rc" = 0 ] || broken+=("${name%-*} (exit $rc)")
done

took=$(($(date +%s) - started))
if [ "$failed" = 0 ] && [ "${#broken[@]}" = 0 ]; then
  verdict=ok
else
  verdict=FAILED
  for b in "${broken[@]}"; do echo "failed: $b" >&2; done
fi
echo "== windows tests: all binaries under Wine"
echo "test result: $verdict. $passed passed; $failed failed; $ignored ignored; 0 measured; 0 filtered out; finished in ${took}s"
[ "$verdict" = ok ]
