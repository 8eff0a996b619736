#!/usr/bin/env bash
# Install growlm with its dev and eval extras into .venv (created or reused) and run the test suite on two pytest
# workers (GROWLM_TEST_WORKERS; 0 runs in one process). A launch leaves a core idle while one interpreter imports
# torch and while DeepSpeed's launcher polls its ranks, so two workers take ~0.7x the time of one on 2 cores;
# `--dist loadfile` keeps each file's shared runs on one worker.
# Without arguments: the default suite (everything but the `slow` marker), what CI runs. Extra arguments go to
# pytest instead, e.g. `-m slow`, `tests/model` or `-m "not distributed and not process and not slow"` for a fast
# loop that starts no process.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev,eval source scripts/venv.sh
if [ $# -eq 0 ]; then
  set -- -m "not slow"
fi
exec .venv/bin/python -m pytest -q --durations=25 -n "${GROWLM_TEST_WORKERS:-2}" --dist loadfile "$@"
