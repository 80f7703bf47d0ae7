#!/usr/bin/env bash
# The three locomotion behaviour policies (shared/data/locomotion.py, issue 16) in one device-tool lease, one GPU:
#   bash benchmarks/device_sac.sh start [SECONDS]   MPS, hopper / halfcheetah / walker2d SAC detached, watch SECONDS
#   bash benchmarks/device_sac.sh watch [SECONDS]   watch, then pack the selected policies and the logs into $OUT
# ENVS (default all three) picks the envs; each trains `configs/locomotion_sac.yaml` with NUM_ENVS (default 5, so three
# runs share 16 cores) env workers and --max_train_s MAX_TRAIN_S (default 480: training stops there and the run still
# selects and writes its policies; policies.json then says stopped_early). SAC_ARGS adds config flags to every run,
# e.g. SAC_ARGS="--utd 1 --batch_size 256" for D4RL's rlkit ratio (1 update of 256 per env step; the config's 0.25 of
# 1024 left walker2d at 973 after 838k env steps, benchmarks/budget/h200-2026-12-02c; its cost in env steps/s is
# not measured). Measured with the config (budget/h200-2026-12-02c): ~2,400 env steps/s per run with three sharing one
# H200 and its 16 cores, 800k-838k env steps in 360 s. Each run writes into a copy
# of the tree under /tmp/tree-sac; $OUT/locomotion.tar.gz holds its shared/data/locomotion/<env>/ folders (commit them
# after checking policies.json), $OUT/sac-logs.tar.gz the logs and GPU samples. The host needs this repo's requirements
# besides torch (carry the wheels: docs/benchmarks.md). Detached runs die when the host is given back: keep calling
# `watch`. It can run beside benchmarks/device_grid.sh on the same host (its own tree /tmp/tree-sac and GPU samples
# /tmp/gpu-usage-sac.csv; the grid's MPS daemon is shared).
set -u
CMD=${1:-watch}
ENVS=${ENVS:-hopper halfcheetah walker2d}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
OUT=${OUT:-/tmp/out}
TREE=/tmp/tree-sac  # not device_grid.sh's /tmp/tree: the two may run together

watch() {
  local end=$(( $(date +%s) + ${1:-540} ))
  while [ "$(date +%s)" -lt $end ] && pgrep -f "shared.data.locomotion train" > /dev/null; do sleep 10; done
  for e in $ENVS; do echo "$e: $(grep -h '\[locomotion\]\|error' "/tmp/sac-$e.log" 2>/dev/null | tail -n 1)"; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  mkdir -p "$OUT"
  (cd "$TREE" && tar czf "$OUT/locomotion.tar.gz" shared/data/locomotion 2>/dev/null)
  (cd /tmp && tar czf "$OUT/sac-logs.tar.gz" $(ls sac-*.log gpu-usage-sac.csv 2>/dev/null))
}

if [ "$CMD" = start ]; then
  T0=$(date +%s)
  rm -rf "$TREE" && mkdir -p "$TREE" && tar cf - --exclude=./.whl --exclude=./.inductor . | tar xf - -C "$TREE" \
    && cd "$TREE" || exit 1
  mkdir -p /tmp/mps /tmp/mps-log
  pgrep -f "[n]vidia-cuda-mps-control -d" > /dev/null || { nvidia-cuda-mps-control -d && echo "MPS daemon started"; }
  setsid nohup nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 5 \
    > /tmp/gpu-usage-sac.csv 2>&1 < /dev/null &
  for e in $ENVS; do
    setsid nohup python3 -m shared.data.locomotion train --env "$e" --config configs/locomotion_sac.yaml \
      --device cuda --num_envs "${NUM_ENVS:-5}" --max_train_s "${MAX_TRAIN_S:-480}" --out_dir /tmp/runs/locomotion \
      ${SAC_ARGS:-} > "/tmp/sac-$e.log" 2>&1 < /dev/null &
    echo "started SAC $e"
  done
  sleep 5
  watch $(( ${2:-540} - ($(date +%s) - T0) ))
else
  cd "$TREE" 2>/dev/null || true
  watch "${2:-540}"
fi
