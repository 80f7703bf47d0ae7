#!/usr/bin/env bash
# Training throughput of every algorithm while 9 runs share one GPU, without and then with CUDA MPS.
#   bash benchmarks/gpu_share.sh [SECONDS_PER_PHASE]      (needs a CUDA host and the maze2d-large dataset)
# Starts, per phase, MAGE (stage 1, 2 and 3 of the maze2d-large config; stages 1 and 3 also with d_model 192,
# 4 layers, 64 channels), BC, IQL, DT and Diffuser on GPU 0, stops them after SECONDS and prints each run's
# steps/s over the second half of its metrics. Measured on one H200 (16 cores), 95 s phases, commit 493fc27:
# BC 48 -> 334, IQL 6.9 -> 73, DT 32 -> 73, Diffuser ~0 (compiling) -> 46, MAGE stage 1 3.9 -> 10.6,
# stage 2 12.1 -> 19.7, stage 3 3.5 -> 4.1 steps/s (no MPS -> MPS). benchmarks/device_grid.sh turns MPS on.
set -u
SECS=${1:-95}
export WANDB_MODE=disabled MAGE_DATA_DIR=${MAGE_DATA_DIR:-/tmp/data} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
T=maze2d-large
D=${GPU_SHARE_DIR:-/tmp/gpu_share}
python3 -m shared.datasets generate $T --workers 8 > /dev/null 2>&1
launch() {  # phase
  local d=$D/$1 common="--eval_every 0 --checkpoint_every 1000000"
  local small="--d_model 192 --n_layers 4 --ae_channels 64" mage="algorithms/mage.py --config configs/mage/$T.yaml"
  mkdir -p "$d"
  python3 $mage --out_dir $d/mage-ae $common --ae_steps 1000000 --log_every 50 > $d/mage-ae.log 2>&1 &
  python3 $mage --out_dir $d/mage-tf $common --ae_steps 0 --tf_steps 1000000 --log_every 50 > $d/mage-tf.log 2>&1 &
  python3 $mage --out_dir $d/mage-e2e $common --ae_steps 0 --tf_steps 0 --e2e_steps 1000000 --log_every 50 \
    > $d/mage-e2e.log 2>&1 &
  python3 $mage --out_dir $d/smage-ae $common $small --ae_steps 1000000 --log_every 50 > $d/smage-ae.log 2>&1 &
  python3 $mage --out_dir $d/smage-e2e $common $small --ae_steps 0 --tf_steps 0 --e2e_steps 1000000 --log_every 50 \
    > $d/smage-e2e.log 2>&1 &
  for a in bc iql dt; do
    python3 algorithms/$a.py --config configs/$a/$T.yaml --out_dir $d/$a $common --steps 1000000 --log_every 200 \
      > $d/$a.log 2>&1 &
  done
  python3 algorithms/diffuser.py --config configs/diffuser/$T.yaml --out_dir $d/diffuser $common \
    --train_steps 1000000 --log_every 100 > $d/diffuser.log 2>&1 &
  sleep "$SECS"
  pkill -f "algorithms/.*--out_dir $d/"; sleep 3
}
rate() {  # phase
  python3 - "$D/$1" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/*/*/seed*/metrics.jsonl")):
    rows = [json.loads(line) for line in p.read_text().splitlines()]
    rows = rows[len(rows) // 2:]
    span = rows[-1]["time"] - rows[0]["time"] if len(rows) > 1 else 0
    rate = (rows[-1]["step"] - rows[0]["step"]) / span if span > 0 else 0.0
    print(f"{p.parents[3].parent.name:6s} {p.parents[3].name:10s} {rate:8.1f} steps/s")
PY
}
launch nomps; rate nomps
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p /tmp/mps /tmp/mps-log
if nvidia-cuda-mps-control -d; then
  launch mps; rate mps
  echo quit | nvidia-cuda-mps-control
else
  echo "MPS daemon failed to start"
fi
