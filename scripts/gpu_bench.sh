#!/usr/bin/env bash
# The repeatable GPU benchmark of issue 10 (see ../shared/GPU.md): one GPU, bf16, ZeRO-1 unless named.
# Before: on a machine with the package registries, `bash ../shared/tools/gpu_wheels.sh` fills .whl/.
# Then, from the repo root on the GPU machine (carrying .whl):
#   bash scripts/gpu_bench.sh                    # every job below, in this order
#   bash scripts/gpu_bench.sh 1b 1b-run          # some of them
# Jobs (each one log, <job>.log, under $OUT or runs/gpu_bench):
#   smoke       a tiny 30-step run through `python -m launch` on the GPU (the path users take)
#   125m 350m   scripts/bench.py: bare loop vs our trainer vs transformers' Llama, seq 2048
#   1b          the same without the transformers loop (memory), plus the top CUDA kernels of each loop
#   1b-compile  1b with train.compile=true (torch.compile of every block, in both loops)
#   1b-run      configs/1b.yaml at ZeRO-1 as a user runs it (grad_accum 16): MFU from the trainer's own log
#   memory      peak GB of the 1b trainer per preset: ZeRO-1, + activation checkpointing, ZeRO-3
# The whole script stops starting jobs once fewer than the next one's budget of seconds is left of
# $DEADLINE_S (default 570), so it ends inside one 10-minute device call.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
deadline=${DEADLINE_S:-570}
logs=${OUT:-runs/gpu_bench}
mkdir -p "$logs"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
unset DS_ACCELERATOR  # let DeepSpeed pick cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, deepspeed, transformers; print("torch", torch.__version__, "deepspeed", deepspeed.__version__, "transformers", transformers.__version__)'

bench() { python3 scripts/bench.py --precision bf16 --rounds 6 --k 3 "$@" data.seq_len=2048; }
run_1b() { python3 -m launch --num_gpus 1 configs/1b.yaml deepspeed.zero_stage=1 run.out_dir=/tmp/gpu_runs \
             train.resume=never eval.every=0 monitors.jump.every=0 log.progress=plain log.tensorboard=false "$@"; }
peak_gb() { python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if "mem_gb" in l]
print("peak GB", max(x["mem_gb"] for x in r), "| tok/s", r[-1]["tokens_per_s"], "| mfu", r[-1].get("mfu"))' "$1"; }

export -f bench run_1b

job() {  # job NAME BUDGET_S COMMAND...: run it under a timeout, logging to NAME.log, if time is left
  local name=$1 budget=$2; shift 2
  if (( SECONDS - start + budget > deadline )); then echo "=== $name: skipped (under ${budget}s left)"; return; fi
  echo "=== $name"
  timeout "$budget" bash -c '"$@"' _ "$@" > "$logs/$name.log" 2>&1
  echo "--- $name: rc=$? in $((SECONDS - t0))s"
  rm -rf /tmp/gpu_runs/*/checkpoints  # a 1b checkpoint with Adam state is ~13 GB; the disk holds 64
}

jobs=("$@")
[ ${#jobs[@]} -eq 0 ] && jobs=(smoke 1b 125m 350m 1b-run 1b-compile memory)
for j in "${jobs[@]}"; do
  t0=$SECONDS
  case $j in
    smoke) job smoke 90 python3 -m launch --num_gpus 1 configs/tiny.yaml train.steps=30 run.out_dir=/tmp/gpu_runs \
             train.resume=never log.progress=plain log.tensorboard=false ;;
    125m) job 125m 100 bench model=125m train.micro_batch_size=8 ;;
    350m) job 350m 110 bench model=350m train.micro_batch_size=4 ;;
    # 1b leaves out the transformers loop: its fp32 weights, grads and Adam state would add ~18 GB.
    1b) job 1b 150 bench --no-hf --profile 12 model=1b train.micro_batch_size=4 ;;
    1b-compile) job 1b-compile 200 bench --no-hf model=1b train.micro_batch_size=4 train.compile=true ;;
    1b-run) job 1b-run 170 run_1b train.steps=20 log.every=5 ;;
    memory)
      for preset in "zero1:" "zero1-ckpt:train.activation_checkpointing=true" "zero3:deepspeed.zero_stage=3"; do
        t0=$SECONDS
        name=memory-${preset%%:*}
        job "$name" 100 run_1b train.steps=4 log.every=2 run.name="$name" ${preset#*:}
        [ -f "/tmp/gpu_runs/$name/metrics.jsonl" ] && echo "$name: $(peak_gb "/tmp/gpu_runs/$name/metrics.jsonl")"
      done ;;
    *) echo "unknown job $j"; exit 2 ;;
  esac
  tail -n 12 "$logs/$j.log" 2>/dev/null
done
echo "total ${SECONDS}s"
