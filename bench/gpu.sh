#!/usr/bin/env bash
# The repeatable GPU benchmark (docs/guide.md, "Benchmarks"): one GPU, bf16, ZeRO-1 unless named.
# Before: on a machine with the package registries, download the GPU wheels of torch, deepspeed and transformers
# into .whl/ (`pip download --only-binary=:all: -d .whl ...`).
# Then, from the repo root on the GPU machine (carrying .whl):
#   bash bench/gpu.sh                    # every job below, in this order
#   bash bench/gpu.sh 1b 1b-run          # some of them
# Jobs (each one log, <job>.log, under $OUT or runs/gpu_bench):
#   smoke       a tiny 30-step run through `python -m launch` on the GPU (the path users take)
#   125m 350m   bench/loops.py: bare loop vs our trainer vs transformers' Llama, seq 2048
#   125m-compile 350m-compile   the same with train.compile=true (torch.compile of every block, in both loops)
#   1b          the same without the transformers loop (memory), plus the top CUDA kernels of each loop
#   1b-compile  1b with train.compile=true, plus its top CUDA kernels
#   jreg        bench/regularizers.py on 125m: JREG's step-time overhead and the jump monitor's
#   1b-run      configs/1b.yaml at ZeRO-1 as a user runs it (grad_accum 16): MFU from the trainer's own log
#   1b-run-compile   the same with train.compile=true
#   memory      peak GB of the 1b trainer per preset: ZeRO-1 or ZeRO-3, with or without activation
#               checkpointing, and ZeRO-2 with the optimizer offloaded (MEMORY_PRESETS="zero3-ckpt" runs some)
#   loss        bench/loss.py: the fused chunked LM head vs plain cross-entropy, 32k vocab, 8k tokens
#   1b-run-chunked   1b-run-compile with train.loss_chunk=1024 (the fused head): MFU against 1b-run-compile
#   jreg-125m   configs/experiments/jreg_125m_gpu.yaml: baseline vs JREG final vs rise at 125m, 600 steps each
#   docmask     bench/document_masking.py on 125m, seq 2048, bf16: causal (flash) vs block-causal through
#               SDPA's dense mask (no flash kernel) and through compiled flex_attention
#   7b          configs/7b.yaml on one H200, 4 steps per recipe: ZeRO-3 + activation checkpointing,
#               ZeRO-2 + offloaded optimizer + checkpointing, ZeRO-1 + checkpointing (SEVEN_B="zero3-ckpt")
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

bench() { python3 -m bench.loops --precision bf16 --rounds 6 --k 3 "$@" data.seq_len=2048; }
# The embedded corpus is far smaller than a 1b run wants: hold out 5% so validation has whole 2049-token windows.
run_1b() { python3 -m launch --num_gpus 1 configs/1b.yaml deepspeed.zero_stage=1 run.out_dir=/tmp/gpu_runs \
             data.val_fraction=0.05 train.resume=never eval.every=0 monitors.jump.every=0 log.progress=plain \
             log.tensorboard=false "$@"; }
summarize() {  # the trainer's own figures from a run's metrics.jsonl: steady-state windows (the first is warm-up)
  python3 - "$1" <<'PY'
import json, statistics, sys
r = [json.loads(line) for line in open(sys.argv[1]) if "tokens_per_s" in line][1:]
tps = statistics.median(x["tokens_per_s"] for x in r)
mfu = statistics.median(x.get("mfu", float("nan")) for x in r)
print(f"{sys.argv[1]}: tok/s {tps:,.0f}  mfu {mfu:.1%}  peak GB {max(x['mem_gb'] for x in r):.2f}  ({len(r)} windows)")
PY
}
memory_presets() {  # peak GB of the 1b trainer per memory preset (3 steps each); MEMORY_PRESETS picks some
  declare -A presets=([zero1]="" [zero1-ckpt]="train.activation_checkpointing=true" [zero3]="deepspeed.zero_stage=3"
                      [zero3-ckpt]="deepspeed.zero_stage=3 train.activation_checkpointing=true"
                      [zero2-offload]="deepspeed.zero_stage=2 deepspeed.config.zero_optimization.offload_optimizer.device=cpu")
  for key in ${MEMORY_PRESETS:-zero1 zero1-ckpt zero3 zero3-ckpt zero2-offload}; do
    name=memory-$key
    # shellcheck disable=SC2086  # the preset's overrides are several words on purpose
    run_1b train.steps=3 train.grad_accum=2 log.every=1 run.name="$name" ${presets[$key]} > "/tmp/$name.log" 2>&1 \
      && summarize "/tmp/gpu_runs/$name/metrics.jsonl" || { echo "$name failed:"; tail -n 20 "/tmp/$name.log"; }
    rm -rf "/tmp/gpu_runs/$name/checkpoints"
  done
}

seven_b() {  # the 7b preset's single-GPU recipes, 4 steps each (the first is warm-up); SEVEN_B picks some
  declare -A recipes=([zero3-ckpt]="deepspeed.zero_stage=3 train.activation_checkpointing=true"
                      [zero2-offload-ckpt]="deepspeed.zero_stage=2 train.activation_checkpointing=true deepspeed.config.zero_optimization.offload_optimizer.device=cpu"
                      [zero1-ckpt]="deepspeed.zero_stage=1 train.activation_checkpointing=true")
  for key in ${SEVEN_B:-zero3-ckpt zero2-offload-ckpt zero1-ckpt}; do
    name=7b-$key
    # shellcheck disable=SC2086
    python3 -m launch --num_gpus 1 configs/7b.yaml run.out_dir=/tmp/gpu_runs run.name="$name" data.val_fraction=0.05 \
      train.resume=never train.steps=4 train.grad_accum=1 log.every=1 eval.every=0 monitors.jump.every=0 \
      checkpoint.every=0 log.progress=plain log.tensorboard=false ${recipes[$key]} > "/tmp/$name.log" 2>&1
    # The final save (~94 GB with Adam state) does not fit the device's 64 GB disk: read the logged steps anyway.
    summarize "/tmp/gpu_runs/$name/metrics.jsonl" || { echo "$name failed:"; tail -n 20 "/tmp/$name.log"; }
    rm -rf "/tmp/gpu_runs/$name/checkpoints"
  done
}

export -f bench run_1b summarize memory_presets seven_b

job() {  # job NAME BUDGET_S COMMAND...: run it under a timeout, logging to NAME.log, if time is left
  local name=$1 budget=$2; shift 2
  if (( SECONDS - start + budget > deadline )); then echo "=== $name: skipped (under ${budget}s left)"; return; fi
  echo "=== $name"
  timeout "$budget" bash -c '"$@"' _ "$@" > "$logs/$name.log" 2>&1
  echo "--- $name: rc=$? in $((SECONDS - t0))s"
  rm -rf /tmp/gpu_runs/*/checkpoints  # a 1b checkpoint with Adam state is ~13 GB; the disk holds 64
}

jobs=("$@")
[ ${#jobs[@]} -eq 0 ] && jobs=(smoke 1b 125m 350m 1b-compile 125m-compile 350m-compile jreg 1b-run 1b-run-compile memory)
for j in "${jobs[@]}"; do
  t0=$SECONDS
  case $j in
    smoke) job smoke 90 python3 -m launch --num_gpus 1 configs/tiny.yaml train.steps=30 run.out_dir=/tmp/gpu_runs \
             train.resume=never log.progress=plain log.tensorboard=false ;;
    125m) job 125m 100 bench model=125m train.micro_batch_size=8 ;;
    350m) job 350m 110 bench model=350m train.micro_batch_size=4 ;;
    # 1b leaves out the transformers loop: its fp32 weights, grads and Adam state would add ~18 GB.
    1b) job 1b 150 bench --no-hf --profile 12 model=1b train.micro_batch_size=4 ;;
    125m-compile) job 125m-compile 120 bench model=125m train.micro_batch_size=8 train.compile=true ;;
    350m-compile) job 350m-compile 130 bench model=350m train.micro_batch_size=4 train.compile=true ;;
    1b-compile) job 1b-compile 200 bench --no-hf --profile 12 model=1b train.micro_batch_size=4 train.compile=true ;;
    jreg) job jreg 120 python3 -m bench.regularizers model=125m data.seq_len=2048 train.micro_batch_size=8 \
            train.precision=bf16 monitors.jump.every=50 ;;
    1b-run) job 1b-run 170 run_1b train.steps=20 log.every=5 run.name=1b-run
            summarize /tmp/gpu_runs/1b-run/metrics.jsonl ;;
    1b-run-compile) job 1b-run-compile 220 run_1b train.steps=20 log.every=5 train.compile=true run.name=1b-run-compile
            summarize /tmp/gpu_runs/1b-run-compile/metrics.jsonl ;;
    memory) job memory 280 memory_presets ;;
    loss) job loss 120 python3 -m bench.loss --tokens 8192 --dim 2048 --chunks 1024,4096 ;;
    1b-run-chunked) job 1b-run-chunked 220 run_1b train.steps=20 log.every=5 train.compile=true train.loss_chunk=1024 \
            run.name=1b-run-chunked
            summarize /tmp/gpu_runs/1b-run-chunked/metrics.jsonl ;;
    jreg-125m) job jreg-125m 540 python3 scripts/run_experiment.py configs/experiments/jreg_125m_gpu.yaml \
            --out /tmp/gpu_runs/jreg_125m ;;
    docmask) job docmask 150 python3 -m bench.document_masking --bf16 model=125m data.seq_len=2048 \
            train.micro_batch_size=8 ;;
    7b) job 7b 420 seven_b ;;
    *) echo "unknown job $j"; exit 2 ;;
  esac
  tail -n 12 "$logs/$j.log" 2>/dev/null
done
echo "total ${SECONDS}s"
