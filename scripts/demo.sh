#!/usr/bin/env bash
# The main job: a tiny pretraining run on the embedded default corpus, 2 ranks through the deepspeed launcher
# (CPU ranks over gloo when there is no GPU). Extra arguments are config overrides, e.g. train.steps=100.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec .venv/bin/python -m launch --num_gpus 2 configs/tiny.yaml "$@"
