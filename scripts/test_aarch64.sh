#!/usr/bin/env bash
# Runs the Rust tests for aarch64 (ARM64) on an x86-64 machine: cross-compiled with Debian's aarch64 gcc as the
# linker (and C/C++ compiler of onig_sys and esaxx-rs), run under qemu-user twice, once per emulated CPU:
#   -cpu max         ARMv8.x+ with the dotprod extension (the `sdot` int8 kernel),
#   -cpu cortex-a53  ARMv8.0, NEON only (the widening multiply-add int8 kernel).
# Every kernel test compares the NEON paths against the scalar reference (`simd::available()`), so the two runs
# cover every aarch64 path. Installs what it lacks (the rustup target; apt-get packages, as root or with sudo) and
# fails, naming what is missing, when it cannot.
#
#   bash scripts/test_aarch64.sh           # every Rust test (lib and tests/), both CPUs (12 min, 7 warm)
#   bash scripts/test_aarch64.sh --quick   # the kernel-equality tests only (CI, ~3 min)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
    --quick) quick=1 ;;
    "") ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

target=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
    apt_install() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"; }
    if ! { apt_install || { "${as_root[@]}" apt-get update && apt_install; }; }; then
        echo "scripts/test_aarch64.sh: cannot install ${need[*]} with apt-get; the aarch64 tests did not run" >&2
        exit 1
    fi
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++

# The kernel-equality tests: every test of the modules with NEON paths (and of the ISA detection itself).
filters=(simd:: dot:: gather:: int8:: hamming::)
# This test re-runs its own binary with TOKVEC_FORCE_SCALAR set; qemu-user cannot exec an aarch64 binary unless
# binfmt_misc hands it to qemu, so it is skipped and its child is run directly below, with the variable set.
parent=gather::tests::forced_scalar_applies_to_accumulate_and_levels
child=gather::tests::forced_scalar_child

if [ "$quick" -eq 1 ]; then
    args=(--lib)
    child_args=(--lib)
    sel=("${filters[@]}")
else
    # Every test, optimized: under qemu the debug build had run 23 of the 137 tests after 22 minutes (an
    # optimized build runs them all in about 2), so the full form builds with optimizations but keeps the debug
    # checks of `cargo test` (overflow checks, debug assertions), without LTO, in a target directory of its own
    # (the wheel build's release profile stays untouched). Its first build compiles the dependencies again.
    export CARGO_TARGET_DIR=target/aarch64-checked CARGO_PROFILE_RELEASE_LTO=false
    export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
    args=(--release --lib --tests)
    child_args=(--release --lib)
    sel=()
fi
cargo test "${args[@]}" --target "$target" --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The features each CPU must report (simd::describe(), printed by a simd test), so that a CPU model whose features
# changed cannot leave the dotprod or the plain NEON kernels untested.
declare -A want=([max]=neon+dotprod [cortex-a53]=neon)
for cpu in max cortex-a53; do
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu $cpu"
    echo "=== aarch64 under qemu -cpu $cpu"
    t0=$SECONDS
    cargo test "${args[@]}" --target "$target" -- "${sel[@]}" --skip "$parent" --show-output | tee "$log"
    grep -qx "cpu features: ${want[$cpu]}" "$log" ||
        { echo "-cpu $cpu: expected the CPU features '${want[$cpu]}' (see 'cpu features:' above)" >&2; exit 1; }
    TOKVEC_FORCE_SCALAR=1 cargo test "${child_args[@]}" --target "$target" -- --exact "$child" --ignored | tee "$log"
    grep -q "test result: ok. 1 passed" "$log" || { echo "$child did not run" >&2; exit 1; }
    echo "=== aarch64 -cpu $cpu: passed in $((SECONDS - t0)) s"
done
