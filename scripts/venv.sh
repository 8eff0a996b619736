#!/usr/bin/env bash
# Create (or reuse) .venv with growlm installed editable, pinned by constraints.txt. Sourced by demo.sh/test.sh.
# EXTRAS selects optional dependencies (e.g. EXTRAS=dev). torch==2.13.0 is pinned; on machines with a local
# CPU wheel pip takes it, elsewhere pip fetches the release for the platform.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.growlm-installed-${EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  target="."
  [ -n "${EXTRAS:-}" ] && target=".[${EXTRAS}]"
  DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -c constraints.txt -e "$target"
  touch "$stamp"
fi
