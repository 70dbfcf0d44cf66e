#!/usr/bin/env bash
# Builds a manylinux2014 (glibc 2.17) abi3 wheel of tokvec with zig as the linker, so the wheel runs on old
# distributions without a manylinux container, then checks its platform tag and external symbols with
# auditwheel. Needs a Rust toolchain; installs maturin, ziglang and auditwheel from PyPI.
#
#   bash scripts/build_wheel.sh                    # wheel in target/wheels/
#   bash scripts/build_wheel.sh --target aarch64   # the aarch64 (ARM64) wheel, cross-built, in target/wheels-aarch64/
#   bash scripts/build_wheel.sh --check            # quick form for CI, no second Rust build (see check_release below)
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

# The quick form. A real `maturin build --release --zig` cannot reuse the test step's cargo cache: zig replaces the C
# compiler and linker, so onig_sys and esaxx-rs (C/C++ built by the `cc` crate) and everything above them rebuild
# (a second full release build). This checks every other part of the release build instead:
# 1. the tools install and run (maturin, zig from ziglang, auditwheel);
# 2. zig compiles C for this machine's arch against glibc 2.17's headers (`-target <arch>-linux-gnu.2.17`, what
#    `--zig --compatibility manylinux2014` passes it). Compile only: a first zig *link* for that target builds the
#    glibc 2.17 stubs and compiler-rt into zig's cache (89 s of wall time on this 2-core machine), which CI would
#    pay on every fresh runner; `bash scripts/build_wheel.sh` (the full build) links for real;
# 3. maturin accepts the metadata (`maturin sdist`, no compilation) and the sdist holds the sources and the model;
# 4. `auditwheel show` on the wheel the test step built (pip's PEP 517 build leaves it in target/wheels/), checked
#    to be the one installed (same extension bytes): abi3, and no external shared library beyond the manylinux
#    policy (its glibc symbol versions are the build machine's, so the tag it reports is newer than 2_17).
check_release() {
    local tmp arch wheel
    tmp=$(mktemp -d)
    arch=$(uname -m)
    maturin --version
    echo "zig $(zig version)"
    auditwheel --version
    printf '#include <stdio.h>\n#include <gnu/libc-version.h>\nint main(void) { return puts(gnu_get_libc_version()); }\n' \
        > "$tmp/t.c"
    zig cc -target "$arch-linux-gnu.2.17" -c "$tmp/t.c" -o "$tmp/t.o"
    echo "zig: compiled for $arch-linux-gnu.2.17"
    maturin sdist --out "$tmp/sdist" >/dev/null
    wheel=$(ls -t target/wheels/tokvec-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "no wheel in target/wheels/: run scripts/test.sh (or pip install .) first" >&2
        return 1
    fi
    auditwheel show "$wheel" | tee "$tmp/show.txt"
    grep -q "manylinux_" "$tmp/show.txt"
    python3 - "$tmp/sdist" "$wheel" <<'PY'
import hashlib, sys, tarfile, zipfile
from importlib.util import find_spec
from pathlib import Path

sdist = next(Path(sys.argv[1]).glob("tokvec-*.tar.gz"))
with tarfile.open(sdist) as t:
    names = t.getnames()
    pkg = t.extractfile(next(n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO"))).read().decode()
for need in ("/Cargo.toml", "/rust/lib.rs", "/python/tokvec/__init__.py", "/python/tokvec/models/default/model.safetensors"):
    assert any(n.endswith(need) for n in names), f"sdist lacks {need}"
meta = dict(line.split(": ", 1) for line in pkg.splitlines() if ": " in line and not line.startswith(" "))
assert meta["Name"] == "tokvec" and meta["Requires-Python"] == ">=3.10", meta
extras = {line.split(": ", 1)[1] for line in pkg.splitlines() if line.startswith("Provides-Extra: ")}
assert {"dask", "parquet", "ray", "serve", "test"} <= extras, extras
wheel = Path(sys.argv[2])
assert "-abi3-" in wheel.name, wheel.name
with zipfile.ZipFile(wheel) as z:
    so = next(n for n in z.namelist() if n.startswith("tokvec/_core") and n.endswith(".so"))
    built = hashlib.sha256(z.read(so)).hexdigest()
installed = Path(find_spec("tokvec._core").origin)
assert hashlib.sha256(installed.read_bytes()).hexdigest() == built, f"{wheel} is not the installed {installed}"
print(f"sdist {sdist.name}: metadata ok, extras {sorted(extras)}; wheel {wheel.name} ({wheel.stat().st_size:,} bytes) "
      "is the installed build")
PY
    rm -rf "$tmp"
}
case "${1:-}" in
    --check)
        check_release
        exit 0
        ;;
    --target)
        # zig is the C/C++ compiler and linker for the target too (it ships every target's libc headers and
        # glibc 2.17 stubs), so no cross toolchain is needed; rustup provides the Rust standard library.
        case "${2:-}" in
            aarch64) triple=aarch64-unknown-linux-gnu ;;
            *) echo "usage: $0 [--check | --target aarch64]" >&2; exit 2 ;;
        esac
        rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
        out=target/wheels-${2}
        target_args=(--target "$triple")
        ;;
    "")
        out=target/wheels
        target_args=()
        ;;
    *) echo "usage: $0 [--check | --target aarch64]" >&2; exit 2 ;;
esac
rm -rf "$out"
maturin build --release --zig "${target_args[@]}" --compatibility manylinux2014 --out "$out"
wheel=$(ls "$out"/tokvec-*.whl)
auditwheel show "$wheel"
ls -l "$wheel"
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
