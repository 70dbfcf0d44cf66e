#!/usr/bin/env bash
# Builds a manylinux2014 (glibc 2.17) abi3 wheel of tokvec with zig as the linker, so the wheel runs on old
# distributions without a manylinux container, then checks its platform tag and external symbols with
# auditwheel. Needs a Rust toolchain; installs maturin, ziglang and auditwheel from PyPI.
#
#   bash scripts/build_wheel.sh            # wheel in target/wheels/
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install "maturin>=1.7,<2.0" "ziglang>=0.11" "auditwheel>=6"
# maturin looks for `zig` on PATH; the PyPI ziglang package provides it as `python3 -m ziglang`
if ! command -v zig >/dev/null; then
    zigdir=$(mktemp -d)
    printf '#!/bin/sh\nexec %s -m ziglang "$@"\n' "$(command -v python3)" > "$zigdir/zig"
    chmod +x "$zigdir/zig"
    export PATH="$zigdir:$PATH"
fi
rm -rf target/wheels
maturin build --release --zig --compatibility manylinux2014 --out target/wheels
wheel=$(ls target/wheels/tokvec-*.whl)
auditwheel show "$wheel"
ls -l "$wheel"
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
