#!/usr/bin/env bash
# The repeatable GPU benchmark of issue 10 (see GPU.md): one GPU, bf16, ZeRO-1, the 125m/350m/1b presets at
# seq 2048 through scripts/bench.py (bare loop vs our trainer vs transformers, tokens/s, peak GB, MFU).
# Before: on a machine with the package registries, `bash ../shared/tools/gpu_wheels.sh` fills .whl/.
# Then, from the repo root on the GPU machine:
#   bash scripts/gpu_bench.sh              # all three presets
#   bash scripts/gpu_bench.sh 1b           # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target .site .whl/*.whl
export PYTHONPATH=$PWD/.site:$PWD
unset DS_ACCELERATOR  # let DeepSpeed pick cuda

# Micro-batches sized so the loops fit side by side in 80 GB; 1b leaves out the transformers loop (its fp32
# weights, grads and Adam state would add ~18 GB to the ~56 GB the trainer and the bare loop hold).
declare -A EXTRA=(
  [125m]="train.micro_batch_size=8"
  [350m]="train.micro_batch_size=4"
  [1b]="--no-hf train.micro_batch_size=4"
)
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(125m 350m 1b)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for preset in "${presets[@]}"; do
  echo "=== $preset"
  # shellcheck disable=SC2086  # EXTRA holds several words on purpose
  python3 scripts/bench.py --precision bf16 --zero 1 --rounds 6 --k 3 ${EXTRA[$preset]} \
    model="$preset" data.seq_len=2048
done
