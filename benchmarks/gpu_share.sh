#!/usr/bin/env bash
# How many MAGE runs can share one GPU? Aggregate training throughput of N identical runs at once, under CUDA MPS.
#   bash benchmarks/gpu_share.sh [SECONDS_PER_PHASE] [N ...]        e.g. bash benchmarks/gpu_share.sh 90 1 4 12
# Each phase starts N MAGE runs of configs/mage/$TASK.yaml (default maze2d-medium) in stage 2 (the longest stage;
# untrained autoencoder, same shapes) with the fast setting (CUDA graphs + inductor + bf16), stops them after
# SECONDS and prints each run's steps/s over the second half of its metrics and their sum. A first short run
# fills the inductor cache so that the phases time training, not compilation. It checks that the MPS server
# serves the runs (`get_server_list`) and says so. Extra run flags: GPU_SHARE_FLAGS="--batch_size 256".
set -u
SECS=${1:-90}; shift || true
COUNTS=${*:-1 4 12}
TASK=${TASK:-maze2d-medium}
D=${GPU_SHARE_DIR:-/tmp/gpu_share}
export WANDB_MODE=disabled MAGE_DATA_DIR=${MAGE_DATA_DIR:-/tmp/data} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 \
  TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/mps} CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/mps-log}
mkdir -p "$D" "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
python3 -m shared.datasets generate "$TASK" --workers 8 > "$D/generate.log" 2>&1 || { tail -n 3 "$D/generate.log"; exit 1; }
nvidia-cuda-mps-control -d 2> /dev/null || echo "MPS control daemon: already running or failed to start"
FLAGS="--config configs/mage/$TASK.yaml --ae_steps 0 --tf_steps 1000000 --e2e_steps 0 --eval_every 0 \
  --checkpoint_every 10000000 --log_every 50 --inductor true --bf16 true ${GPU_SHARE_FLAGS:-}"

run_phase() {  # name count seconds
  local d=$D/$1 pids=""
  mkdir -p "$d"
  for i in $(seq 1 "$2"); do
    python3 algorithms/mage.py $FLAGS --seed "$i" --out_dir "$d/run$i" > "$d/run$i.log" 2>&1 &
    pids="$pids $!"
  done
  sleep "$3"
  echo "$1: MPS servers: $(echo get_server_list | nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')"
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | head -n 3
  kill $pids 2> /dev/null; wait $pids 2> /dev/null
}

rate() {  # name
  python3 - "$D/$1" <<'PY'
import json, pathlib, sys
total, lines = 0.0, []
for p in sorted(pathlib.Path(sys.argv[1]).glob("run*/mage/*/seed*/metrics.jsonl")):
    rows = [r for r in map(json.loads, p.read_text().splitlines()) if "tf/ce" in r]
    rows = rows[len(rows) // 2:]
    span = rows[-1]["time"] - rows[0]["time"] if len(rows) > 1 else 0.0
    rate = (rows[-1]["step"] - rows[0]["step"]) / span if span > 0 else 0.0
    total += rate
    lines.append(f"{rate:.1f}")
name = pathlib.Path(sys.argv[1]).name
print(f"{name}: {len(lines)} runs, steps/s each: {' '.join(lines) or 'none (see the logs)'}; aggregate {total:.1f}")
PY
}

run_phase warmup 1 $((SECS + 120))  # fills the inductor cache for the phases
for n in $COUNTS; do
  run_phase "n$n" "$n" "$SECS"
  rate "n$n"
done
