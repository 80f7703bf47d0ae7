#!/usr/bin/env bash
# One GPU-machine session of the benchmark grid (used with the device tool; works on any CUDA host):
# generate the embedded datasets, then start the grid detached so it outlives this shell.
# usage: bash benchmarks/device_grid.sh GPUS   (e.g. 0,1,2,3)   results -> /tmp/results, logs -> /tmp/runs/logs
# The host needs this repo's requirements besides torch; gymnasium's mujoco envs also import glfw (pip wheel).
# The runs are detached: keep the host alive until /tmp/results is collected (a released host kills them).
set -u
GPUS=${1:-0}
export WANDB_MODE=${WANDB_MODE:-disabled} MAGE_DATA_DIR=${MAGE_DATA_DIR:-/tmp/data} PYTHONUNBUFFERED=1
MAZES="maze2d-umaze maze2d-medium maze2d-large"
TASKS="$MAZES multi2d-umaze multi2d-medium multi2d-large"
for t in $MAZES; do python3 -m shared.datasets generate "$t" --workers 16 > "/tmp/gen-$t.log" 2>&1 & done
wait
for f in "$MAGE_DATA_DIR"/*.hdf5; do python3 -m shared.datasets verify "$f" 2>&1 | tail -1; done
grid() { setsid nohup python3 benchmarks/run.py --gpus "$GPUS" --out-dir /tmp/runs --results-dir /tmp/results "$@" \
  > "/tmp/grid-$1-$2.log" 2>&1 < /dev/null & }
grid --algos mage --tasks $TASKS --seeds 0 1 2 --per-gpu 5
grid --algos mage-k1 mage-nodeccond --tasks maze2d-large --seeds 0 1 2 --per-gpu 2
grid --algos bc iql dt diffuser --tasks $TASKS --seeds 0 --per-gpu 6
