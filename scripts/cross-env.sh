# Sourced (`. scripts/cross-env.sh`) before `cargo check` / `cargo clippy --target` for macOS and
# Windows from a Linux host: C code in build scripts (ring, under TLS) is compiled with zig
# (scripts/zig-cc.sh) and archived with zig's ar or lib. Needs zig as `python3 -m ziglang`
# (scripts/install-cross.sh installs it).
_zig_cc="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)/zig-cc.sh"
for _t in aarch64_apple_darwin x86_64_apple_darwin; do
  export "CC_$_t=$_zig_cc" "AR_$_t=python3 -m ziglang ar"
done
# cc-rs drives an MSVC target's archiver with lib.exe's flags (-out:, -nologo).
export "CC_x86_64_pc_windows_msvc=$_zig_cc" "AR_x86_64_pc_windows_msvc=python3 -m ziglang lib"
unset _zig_cc _t
