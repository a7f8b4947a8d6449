#!/usr/bin/env bash
# Install everything scripts/build-all.js needs to cross-build @trader/processlock
# from a Linux x86_64 host:
#   - rustup targets for the 7 release platforms (Linux gnu/musl x64+arm64,
#     macOS x64+arm64, Windows x64 MSVC) plus clippy,
#   - zig (from PyPI, package `ziglang`) as the cross linker for Linux targets,
#   - cargo-zigbuild (from crates.io), which drives zig as cargo's linker,
#   - `file` and `readelf` (binutils), used to check every artifact's format,
#     architecture, libc and glibc symbol versions.
#
# Idempotent: each step is skipped when what it installs is already there.
# Quiet: prints one line per step with its duration; full tool output only on
# failure. Safe in CI: needs no TTY, exits non-zero on the first failure.
#
# Pinned versions can be overridden from the environment:
#   ZIGLANG_VERSION        (default below)
#   CARGO_ZIGBUILD_VERSION (default below)
#   INSTALL_CROSS_TARGETS  space-separated rustup targets (default: all 6 non-host ones)
#
# `--check-only`: only what checking (not building) the other targets needs: the rustup targets,
# clippy and zig (the C compiler of scripts/cross-env.sh), without cargo-zigbuild.
set -euo pipefail

ZIGLANG_VERSION="${ZIGLANG_VERSION:-0.15.2}"
CARGO_ZIGBUILD_VERSION="${CARGO_ZIGBUILD_VERSION:-0.24.1}"
DEFAULT_TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-gnu aarch64-unknown-linux-musl x86_64-apple-darwin aarch64-apple-darwin x86_64-pc-windows-msvc"
TARGETS="${INSTALL_CROSS_TARGETS:-$DEFAULT_TARGETS}"
CHECK_ONLY=0
[ "${1:-}" = "--check-only" ] && CHECK_ONLY=1

LOG="$(mktemp -t install-cross.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
SCRIPT_START=$(date +%s.%N)

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CMD... : run CMD with output captured; print NAME and duration.
step() {
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  if "$@" >"$LOG" 2>&1; then
    t1=$(date +%s.%N)
    printf '[install-cross] %-44s ok   %6.1fs\n' "$name" "$(elapsed "$t0" "$t1")"
  else
    local rc=$?
    t1=$(date +%s.%N)
    printf '[install-cross] %-44s FAIL %6.1fs (exit %d)\n' "$name" "$(elapsed "$t0" "$t1")" "$rc" >&2
    sed 's/^/    /' "$LOG" >&2
    exit "$rc"
  fi
}
skip() { printf '[install-cross] %-44s skip (%s)\n' "$1" "$2"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. file, readelf ---------------------------------------------------------
install_inspectors() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends file binutils
}
if [ "$CHECK_ONLY" = 1 ]; then
  skip "apt: file binutils" "--check-only"
elif command -v file >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1; then
  skip "apt: file binutils" "present"
elif command -v apt-get >/dev/null 2>&1; then
  step "apt: file binutils" install_inspectors
else
  echo "[install-cross] 'file' or 'readelf' is missing and apt-get is not available: install file and binutils by hand" >&2
  exit 1
fi

# --- 2. rustup targets + clippy ----------------------------------------------
command -v rustup >/dev/null 2>&1 || { echo "[install-cross] rustup not found on PATH" >&2; exit 1; }
installed_targets="$(rustup target list --installed)"
missing=()
for t in $TARGETS; do
  grep -qx "$t" <<<"$installed_targets" || missing+=("$t")
done
if [ "${#missing[@]}" -eq 0 ]; then
  skip "rustup targets" "all ${TARGETS// /, } present"
else
  step "rustup target add (${#missing[@]} targets)" rustup target add "${missing[@]}"
fi
if cargo clippy --version >/dev/null 2>&1; then
  skip "rustup component clippy" "present"
else
  step "rustup component add clippy" rustup component add clippy
fi

# --- 3. zig from PyPI --------------------------------------------------------
# cargo-zigbuild finds zig as `zig` on PATH or, failing that, as
# `python3 -m ziglang`, which is what the PyPI package provides.
PY="$(command -v python3 || command -v python || true)"
[ -n "$PY" ] || { echo "[install-cross] python3 not found (needed for ziglang)" >&2; exit 1; }
have_zig="$("$PY" -m ziglang version 2>/dev/null || true)"
if [ "$have_zig" = "$ZIGLANG_VERSION" ]; then
  skip "pip: ziglang==$ZIGLANG_VERSION" "present"
else
  pip_install_zig() {
    # Debian/Ubuntu system Pythons refuse global installs (PEP 668); a user
    # install with --break-system-packages is the least intrusive way round.
    if "$PY" -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION" 2>"$LOG.pip"; then
      return 0
    fi
    if grep -q externally-managed "$LOG.pip"; then
      "$PY" -m pip install --quiet --disable-pip-version-check --user --break-system-packages "ziglang==$ZIGLANG_VERSION"
    else
      cat "$LOG.pip" >&2; return 1
    fi
  }
  step "pip: ziglang==$ZIGLANG_VERSION" pip_install_zig
  rm -f "$LOG.pip"
fi
step "check: python3 -m ziglang version" "$PY" -m ziglang version

# --- 4. cargo-zigbuild from crates.io ----------------------------------------
have_zb="$(cargo-zigbuild --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$CHECK_ONLY" = 1 ]; then
  skip "cargo install cargo-zigbuild" "--check-only"
elif [ "$have_zb" = "$CARGO_ZIGBUILD_VERSION" ]; then
  skip "cargo install cargo-zigbuild@$CARGO_ZIGBUILD_VERSION" "present"
else
  step "cargo install cargo-zigbuild@$CARGO_ZIGBUILD_VERSION" \
    cargo install --quiet --locked --force cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
fi

SCRIPT_END=$(date +%s.%N)
printf '[install-cross] done in %ss: zig %s\n' \
  "$(elapsed "$SCRIPT_START" "$SCRIPT_END")" "$("$PY" -m ziglang version)"
