#!/usr/bin/env bash
# Install growlm with its dev and eval extras into .venv (created or reused) and run the test suite.
# Without arguments: the default suite (everything but the `slow` marker, 9 min on 2 Xeon cores); CI runs
# `bash scripts/test.sh -m slow` after it. Extra arguments go to pytest instead, e.g. `-m slow`, `tests/model`
# or `-m "not distributed and not process and not slow"` for a fast loop that starts no process (64 s).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev,eval source scripts/venv.sh
if [ $# -eq 0 ]; then
  set -- -m "not slow"
fi
exec .venv/bin/python -m pytest -q --durations=25 "$@"
