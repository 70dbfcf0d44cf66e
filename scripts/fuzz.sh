#!/usr/bin/env bash
# Runs one cargo-fuzz target for a bounded time, one job, and prints libFuzzer's final stats.
#
#   bash scripts/fuzz.sh TARGET SECONDS [extra libFuzzer args...]
#
# Targets: safetensors_header gguf_parse embed_ids topk pairs (fuzz/fuzz_targets/).
# Needs `cargo install cargo-fuzz` and a nightly toolchain (`cargo +nightly`) or, failing that, a
# stable one with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags). AddressSanitizer is on by
# default (FUZZ_SANITIZER=none to turn it off). Crashes land in fuzz/artifacts/TARGET/; the
# corpus grows in fuzz/corpus/TARGET/ (seeded by fuzz/seeds.py); the log in fuzz/logs/TARGET.log.
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer args]}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer args]}
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
python3 seeds.py "$target" || true
mkdir -p "corpus/$target" logs
if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
# One process (no -jobs/-workers: libFuzzer runs in-process, one core), since the machine is shared. -rss_limit_mb bounds any allocation blow-up (a
# MemoryError-class bug shows up as a crash artifact).
"${cargo[@]}" fuzz run -s "${FUZZ_SANITIZER:-address}" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$@" \
    2>&1 | tee "logs/$target.log"
