#!/bin/sh
# A C compiler for checking the macOS and Windows builds from a Linux host (cargo check/clippy,
# which compile build scripts' C code but never link it). rustls's crypto (ring) compiles C, and
# the host's gcc cannot target Mach-O or the MSVC ABI; zig's clang can.
#
# Used through cc-rs's per-target variables, set by scripts/cross-env.sh. cc-rs passes the target
# as --target=<clang triple>; the flags zig does not take are dropped.
#
# Windows objects are compiled against zig's mingw headers (zig ships no MSVC headers). That is
# enough for a check, where they are only archived; the release build of the Windows package is
# native (MSVC) and never uses this.
set -eu

target=
for a do
  shift
  case $a in
    --target=*) target=${a#--target=}; continue ;;
    -arch | arm64 | x86_64 | -mmacosx-version-min=* | -gfull | -gdwarf-2) continue ;;
  esac
  set -- "$@" "$a"
done

case $target in
  arm64-apple-* | aarch64-apple-*) zig_target=aarch64-macos ;;
  x86_64-apple-*) zig_target=x86_64-macos ;;
  x86_64-*-windows-*) zig_target=x86_64-windows-gnu ;;
  *) echo "zig-cc.sh: no zig target for '$target'" >&2; exit 2 ;;
esac

exec python3 -m ziglang cc -target "$zig_target" "$@"
