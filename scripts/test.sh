#!/usr/bin/env bash
# Install growlm with its dev and eval extras into .venv (created or reused) and run the test suite.
# Extra arguments go to pytest, e.g. `-m "not slow"` or `tests/model`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev,eval source scripts/venv.sh
exec .venv/bin/python -m pytest -q "$@"
