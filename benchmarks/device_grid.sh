#!/usr/bin/env bash
# The benchmark grid on one multi-GPU host, in the device tool's 10-minute calls (works on any CUDA host).
#   bash benchmarks/device_grid.sh start GPUS [SECONDS]   copy the tree, then detached: datasets, MPS, both grids;
#                                                         watch SECONDS (a slow dataset goes on after the call)
#   bash benchmarks/device_grid.sh watch [SECONDS]        watch, then pack results, logs and metrics into $OUT
#   bash benchmarks/device_grid.sh stop                   stop the grids and their runs, and the MPS daemon (the GPU
#                                                         free for a measurement; results written so far stay)
# What runs: MAIN_ALGOS (default: every algorithm) on GRID_TASKS (default: all six maze tasks) x GRID_SEEDS
# (default 0 1 2) at MAIN_PER_GPU runs per GPU, and the maze2d-large ablations ABLATIONS at ABL_PER_GPU (e.g.
# MAIN_ALGOS=mage to spend a host on MAGE alone; ABLATIONS= for none) on ABL_TASKS (default maze2d-large) x ABL_SEEDS
# (default 0 1 2); GRID_ARGS="--tf_steps 16000" passes flags to every run of the main grid (run.py ... -- FLAGS: their
# results record the budget they trained with, so --rerun-stale knows them from committed-config ones). FRESH=1
# starts from an empty results folder (to time a slice of the grid); without it the committed results are skipped,
# and with STALE=1 those that trained with another budget than their config now sets are re-run
# (run.py --rerun-stale; `python benchmarks/run.py ... --rerun-stale --dry-run` lists what a grid would run).
# STAGGER=SECONDS starts each grid's runs that many seconds apart: runs started together compile each stage at the
# same moments, and six 20k MAGE runs left the GPU idle in three such gaps, ~270 s of a 1,200 s grid
# (benchmarks/budget/h200-2026-12-02b/gpu.csv); staggered, one run's compile overlaps the others' training.
# The GPU's utilisation and memory are sampled every 5 s into /tmp/gpu-usage.csv (packed with the logs); the
# grid's wall time is the span between its first "start" and its "finished" line in /tmp/grid-main.log.
# results -> /tmp/results (starts as a copy of benchmarks/results/), run folders and logs -> /tmp/runs. Runs started by
# hand beside the grids (`python3 benchmarks/run.py ... --out-dir /tmp/runs-NAME --results-dir /tmp/results-NAME --
# --lr 1e-4`: another setting whose results must not mix with the committed ones) are watched and packed too.
# MPS raised every algorithm's steps/s 2-10x with 9 runs sharing one H200 (benchmarks/gpu_share.sh: BC 48 -> 334,
# IQL 7 -> 73, DT 32 -> 73, MAGE stage 1 3.9 -> 10.6), so it is on.
# Eager Diffuser runs at H = 384 took 20-45 GB each in their first steps (likely cuDNN autotuning), so run.py deals
# consecutive jobs to different GPUs; with compile (CUDA graphs) 15 runs of all algorithms used <= 38 GB together.
# The host needs this repo's requirements besides torch (carry wheels: shared/device notes, then
# benchmarks/slim_wheels.py); gymnasium's mujoco envs also import glfw. Detached runs die when the host is given back,
# and a host can go between two calls however quickly they follow each other (twice in two leases,
# benchmarks/budget/h200-2026-12-02d): prefer calls whose runs end inside them (docs/benchmarks.md, GPU leases).
# Compile cache: inductor compiles each MAGE / Diffuser stage loss once per process (~100 s a stage on this host, the
# GPU idle meanwhile when every run starts a stage together); a process that finds the graphs in the on-disk cache
# loads them instead (measured on CPU: 38 s instead of 280 s for MAGE's three stages, across seeds and maze sizes). The
# cache lives in $TORCHINDUCTOR_CACHE_DIR (/tmp/inductor-cache); `watch` packs it into $OUT/inductor-cache.tar.xz
# (xz; split into 15 MB parts .partaa, .partab, ... when larger), and `start` unpacks the one (or the parts) found in
# $INDUCTOR_CACHE (default .inductor/, git-ignored): after a call, `mkdir -p .inductor && cp <files_at>/inductor-cache*
# .inductor/` here, and carry [".whl", ".inductor"] in the next call. A cache from other code is harmless: its graphs
# miss and compile as usual. WARMUP_MAGE="maze2d-large" (a task per distinct MAGE config) first runs 3 steps a stage of
# that config alone, so that every run of the grid finds its graphs compiled (real runs hit each other's cache across
# seeds, step counts and maze sizes: measured on CPU).
# KEEP_RUNS="mage/mage/multi2d-large/seed2 ..." (run folders under /tmp/runs) makes `watch` also bring back each one's
# newest checkpoint as $OUT/keep-<its path, / as ->.pt (keep-mage-mage-multi2d-large-seed2.pt): its config,
# normalisation and weights in fp16 (a 7.7M-parameter MAGE is 31 MB in fp32, over the 16 MiB a returned file may
# have; 15.5 MB in fp16), loadable by benchmarks/mage_diagnose.py RUN --checkpoint FILE (the weights are cast back on
# loading). At most 8 files come back,
# 64 MiB in all: with a checkpoint, PACK_CACHE=0 leaves the compile cache out. A checkpoint over 15 MB comes back as 15 MB
# parts keep-....pt.partaa, .partab, ...: `cat keep-NAME.pt.part* > keep-NAME.pt` here. Runs started by hand are named
# from /tmp/runs: KEEP_RUNS="../runs-NAME/mage-relabel/mage/antmaze-umaze/seed0".
set -u
CMD=${1:-watch}
export WANDB_MODE=${WANDB_MODE:-disabled} MAGE_DATA_DIR=${MAGE_DATA_DIR:-/tmp/data} PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1 CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
OUT=${OUT:-/tmp/out}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
INDUCTOR_CACHE=${INDUCTOR_CACHE:-.inductor}  # the carried folder of a packed cache (git-ignored)
MAZES="maze2d-umaze maze2d-medium maze2d-large"
TASKS="$MAZES multi2d-umaze multi2d-medium multi2d-large"
# the embedded dataset a task trains on: multi2d-X on maze2d-X's, antmaze-large / -medium on the -diverse ones
data_of() { case $1 in multi2d-*) echo "maze2d-${1#*-}";; antmaze-large|antmaze-medium) echo "$1-diverse";;
  *) echo "$1";; esac; }
# the grids' processes; bracketed so that it never matches a shell whose command line names it (the device tool's)
GRID_PROC="[b]enchmarks/run\.py"
LAUNCH_PROC="[d]evice_grid\.sh launch"  # start's detached preparation

# The compile cache into $OUT: xz (the cache is mostly text: generated code and Triton IR; gzip left 58 MB of it),
# split into 15 MB parts; what it holds (MB per kind of file) goes to the log, and over CACHE_MB (default 22) Triton's
# intermediate IR (.ttir .ttgir .llir .ptx) is dropped: a kernel loads from its cubin and json, and a part of the cache
# that misses only compiles again. Still over CACHE_MB, it is left out: a call carries at most 64 MiB, and the tree
# (~24 MB) and the wheels (18 MB) leave ~22 MB for it (2026-12-07b: the maze + antmaze + fused-plan cache was 44 MB
# without IR, so it could not be carried).
pack_cache() {
  local dir=$(dirname "$TORCHINDUCTOR_CACHE_DIR") base=$(basename "$TORCHINDUCTOR_CACHE_DIR") tarball mb
  echo "inductor cache: $(du -sm "$TORCHINDUCTOR_CACHE_DIR" | cut -f1) MB on disk; MB by kind:" \
    "$(find "$TORCHINDUCTOR_CACHE_DIR" -type f -printf '%s %f\n' | awk '{n=split($2,a,"."); e=(n>1)?a[n]:"(none)";
       s[e]+=$1} END {for (e in s) if (s[e] > 5e5) printf "%s %.1f, ", e, s[e]/1048576}')"
  tarball=/tmp/inductor-cache.tar.xz
  tar cf - -C "$dir" "$base" | xz -T0 -6 > "$tarball" || return
  mb=$(( $(stat -c %s "$tarball") / 1048576 ))
  local max=${CACHE_MB:-22}
  if [ "$mb" -ge "$max" ]; then
    echo "inductor cache: $mb MB packed, over $max MB: leaving Triton's intermediate IR out"
    tar cf - -C "$dir" --exclude='*.ttir' --exclude='*.ttgir' --exclude='*.llir' --exclude='*.ptx' "$base" \
      | xz -T0 -6 > "$tarball" || return
    mb=$(( $(stat -c %s "$tarball") / 1048576 ))
  fi
  if [ "$mb" -lt 15 ]; then cp "$tarball" "$OUT/"
  elif [ "$mb" -lt "$max" ]; then split -b 15M "$tarball" "$OUT/inductor-cache.tar.xz.part"
  else echo "inductor cache: $mb MB, over $max MB: too large to carry beside the tree and wheels, left out"; fi
  ls "$OUT"/inductor-cache.tar.xz* > /dev/null 2>&1 \
    && echo "inductor cache: $mb MB packed into $(cd "$OUT" && ls inductor-cache.tar.xz* | tr '\n' ' ')"
}

watch() {
  local end=$(( $(date +%s) + ${1:-540} ))
  while [ "$(date +%s)" -lt $end ] && { pgrep -f "$GRID_PROC" || pgrep -f "$LAUNCH_PROC"; } > /dev/null; do
    sleep 10; done
  pgrep -f "$LAUNCH_PROC" > /dev/null && echo "still preparing (datasets, warm-up):"
  cat /tmp/launch.log 2>/dev/null  # cache, datasets, warm-up, grids started (or why not)
  cat /tmp/grid-*.log > /tmp/grid-all.log 2>/dev/null
  echo "started $(grep -c '^start' /tmp/grid-all.log), done $(grep -c '^done' /tmp/grid-all.log)"
  grep "FAILED\|finished" /tmp/grid-all.log
  # the grids' runs (/tmp/runs) and any started by hand beside them with run.py --out-dir /tmp/runs-NAME
  # --results-dir /tmp/results-NAME (another learning rate, budget, ...): their logs, results and metrics come back too
  local logs=$(ls /tmp/runs/logs/*.log /tmp/runs-*/logs/*.log 2>/dev/null)
  name() { echo "$1" | sed 's|^/tmp/runs/logs/||; s|^/tmp/\(runs-[^/]*\)/logs/|\1: |; s/\.log$//'; }
  for f in $logs; do grep -h "normalized score" "$f" | sed "s|^.*normalized score|$(name "$f"):|"; done | sort
  # where the unfinished runs are now, at the end of this call (not at its start): decide on these lines
  for f in $logs; do
    grep -q "normalized score" "$f" || echo "$(name "$f") now: $(grep '\] step ' "$f" | tail -n 1)"
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  mkdir -p "$OUT"
  tar czf "$OUT/results.tar.gz" -C /tmp results $(cd /tmp && ls -d results-* 2>/dev/null) 2>/dev/null
  tar czf "$OUT/logs.tar.gz" -C /tmp $(cd /tmp && ls -d runs/logs runs-*/logs grid-*.log gpu-usage.csv 2>/dev/null \
    | grep -v grid-all.log) 2>/dev/null
  (cd /tmp && find runs runs-* -name metrics.jsonl 2>/dev/null | tar czf "$OUT/metrics.tar.gz" -T -)
  for r in ${KEEP_RUNS:-}; do  # a run's final weights, small enough to come back (see the header)
    k="$OUT/keep-$(echo "$r" | sed 's|^\(\.\./\)*||; s|/|-|g').pt"  # its path, / as -: two variants' runs differ
    python3 - "/tmp/runs/$r" "$k" <<'PY' || echo "KEEP_RUNS $r: not kept"
import sys
from pathlib import Path
import torch
ckpt = sorted(Path(sys.argv[1]).glob("checkpoint_*.pt"))[-1]
state = torch.load(ckpt, map_location="cpu", weights_only=False)
half = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
torch.save({**{k: state[k] for k in ("config", "obs_norm", "step", "stage") if k in state}, "model": half}, sys.argv[2])
print(f"kept {ckpt} (fp16 weights) as {sys.argv[2]}")
PY
    # over 15 MB (antmaze's 9.6M parameters: ~19 MB):
    [ -f "$k" ] && [ "$(stat -c %s "$k")" -gt 15728640 ] && split -b 15M "$k" "$k.part" && rm "$k"  # cat the parts
  done
  if [ -d "$TORCHINDUCTOR_CACHE_DIR" ] && [ "${PACK_CACHE:-1}" = 1 ]; then  # the compile cache, for the next call or lease (parts <= 15 MB)
    pack_cache
  fi
}

if [ "$CMD" = stop ]; then  # bracketed patterns (GRID_PROC): a plain one would also match the calling shell
  pkill -f "$LAUNCH_PROC"; pkill -f "$GRID_PROC"; pkill -f "[a]lgorithms/[a-z]*\.py"; sleep 3
  echo quit | nvidia-cuda-mps-control 2> /dev/null; echo "grids stopped"
  exit 0
fi

if [ "$CMD" = start ]; then
  T0=$(date +%s)
  # the runs start from a copy of the tree: the device tool re-syncs the checkout before each call
  rm -rf /tmp/tree && mkdir -p /tmp/tree && tar cf - --exclude=./.whl . | tar xf - -C /tmp/tree \
    && cd /tmp/tree || exit 1
  # the rest (cache, datasets, warm-up, grids) runs detached, so that datasets or compiles slower than the call do
  # not die with it (2026-12-07: a call's time limit killed three dataset generations at 75-88%, before any run had
  # started); `watch` follows it and prints its log
  setsid nohup bash benchmarks/device_grid.sh launch "${2:-0}" > /tmp/launch.log 2>&1 < /dev/null &
  sleep 5
  watch $(( ${3:-540} - ($(date +%s) - T0) ))
elif [ "$CMD" = launch ]; then  # started by `start`, in /tmp/tree
  GPUS=${2:-0}
  T0=$(date +%s)
  c="$INDUCTOR_CACHE/inductor-cache.tar.xz"
  parts=$(ls "$c" 2>/dev/null || ls "$c".part* 2>/dev/null)
  if [ -n "$parts" ]; then  # a carried compile cache (see the header)
    mkdir -p "$(dirname "$TORCHINDUCTOR_CACHE_DIR")"
    cat $parts | xz -d | tar xf - -C "$(dirname "$TORCHINDUCTOR_CACHE_DIR")" \
      && echo "inductor cache unpacked: $(find "$TORCHINDUCTOR_CACHE_DIR" -type f | wc -l) files" \
      || echo "inductor cache $INDUCTOR_CACHE unreadable: compiling from scratch"
  fi
  declare -A gen  # dataset -> its generator's pid (wait for these only: a bare `wait` would also wait for any
  # detached child started before it)
  # only the datasets the selected tasks train on (multi2d-X trains on maze2d-X's data)
  # (antmaze-large / -medium / -umaze configs train on the -diverse / -diverse / plain datasets: data_of)
  NEED=$(for t in ${GRID_TASKS:-$TASKS} $([ -n "${ABLATIONS-x}" ] && echo "${ABL_TASKS:-maze2d-large}"); do
    data_of "$t"; done | sort -u)
  # maze2d datasets in parallel, the host's cores shared among them; antmaze ones one after another in one chain,
  # each with every core. The cores are counted without OMP_NUM_THREADS: GNU nproc honours it, so with the 1 exported
  # above every generator got one worker (~2,000 antmaze transitions/s: 8 min 41 s for antmaze-large-diverse, and
  # the 600 s call lost on 2026-12-07a); antmaze-umaze with 10 workers took ~55 s (H100 host, 2026-12-07b)
  CORES=$(env -u OMP_NUM_THREADS nproc)
  ALL_NEED=$(for d in $NEED $(for t in ${WARMUP_MAGE:-}; do data_of "$t"; done); do echo "$d"; done | sort -u)
  MAZE_NEED=$(echo "$ALL_NEED" | grep -v '^antmaze-')
  ANT_NEED=$(echo "$ALL_NEED" | grep '^antmaze-')
  W=$(( CORES / ($(echo $MAZE_NEED | wc -w) + $([ -n "$ANT_NEED" ] && echo 1 || echo 0)) ))
  [ "$W" -gt 0 ] || W=1
  for d in $MAZE_NEED; do
    python3 -m shared.datasets generate "$d" --workers $W > "/tmp/gen-$d.log" 2>&1 & gen[$d]=$!
  done
  if [ -n "$ANT_NEED" ]; then
    (for d in $ANT_NEED; do python3 -m shared.datasets generate "$d" --workers "$CORES" > "/tmp/gen-$d.log" 2>&1 \
       || exit 1; done) & for d in $ANT_NEED; do gen[$d]=$!; done
  fi
  declare -A waited  # the antmaze chain's pid stands for several datasets: wait for it once
  wait_data() { local pid=${gen[$1]:-}
    [ -n "$pid" ] || return 0  # none generated here (e.g. waited for before the warm-up)
    if [ -z "${waited[$pid]:-}" ]; then
      wait "$pid" || { tail -n 3 "/tmp/gen-$1.log"; echo "dataset generation ($1) failed"; exit 1; }
      waited[$pid]=1
    fi
    unset "gen[$1]"
    echo "dataset $1 ready at +$(( $(date +%s) - T0 )) s"
    for f in "$MAGE_DATA_DIR/$1"_*.hdf5; do python3 -m shared.datasets verify "$f" 2>&1 | tail -1; done; }
  for t in ${WARMUP_MAGE:-}; do  # fill the compile cache first: 3 steps a stage compile the same graphs as 20,000;
    # it runs as soon as its own dataset is there, while the others are still generated
    wait_data "$(data_of "$t")"
    T1=$(date +%s)
    python3 algorithms/mage.py --config "configs/mage/$t.yaml" --ae_steps 3 --tf_steps 3 --e2e_steps 3 \
      --warmup_steps 1 --eval_every 0 --eval_episodes 1 --num_eval_envs 1 --out_dir /tmp/warmup \
      --results_path "/tmp/warmup/$t.json" > "/tmp/warmup-$t.log" 2>&1 \
      && echo "compile cache warmed on mage $t in $(( $(date +%s) - T1 )) s" \
      || { tail -n 3 "/tmp/warmup-$t.log"; echo "warm-up run failed"; exit 1; }
  done
  # the committed results are skipped (run.py skips a run whose file exists): only missing runs start
  mkdir -p /tmp/results && [ "${FRESH:-0}" = 1 ] || cp -rn benchmarks/results/. /tmp/results/
  mkdir -p /tmp/mps /tmp/mps-log
  nvidia-cuda-mps-control -d && echo "MPS daemon started"
  setsid nohup nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 5 \
    > /tmp/gpu-usage.csv 2>&1 < /dev/null &
  grid() { local name=$1; shift; setsid nohup python3 benchmarks/run.py --gpus "$GPUS" --out-dir /tmp/runs \
    --results-dir /tmp/results --stagger "${STAGGER:-0}" ${STALE:+--rerun-stale} "$@" > "/tmp/grid-$name.log" 2>&1 < /dev/null &
    echo "grid $name started at +$(( $(date +%s) - T0 )) s"; }
  # each grid starts once its own datasets are there: maze runs need not wait for antmaze data (~2 min each)
  main() { for t in ${GRID_TASKS:-$TASKS}; do wait_data "$(data_of "$t")"; done
    # MAGE first (the longest runs), Diffuser's large mazes spread over the GPUs, short baselines fill the gaps
    grid main --per-gpu "${MAIN_PER_GPU:-9}" --algos ${MAIN_ALGOS:-mage diffuser iql dt bc} \
      --tasks ${GRID_TASKS:-$TASKS} --seeds ${GRID_SEEDS:-0 1 2} ${GRID_ARGS:+-- $GRID_ARGS}; }
  ablation() { [ -n "${ABLATIONS-x}" ] || return 0
    for t in ${ABL_TASKS:-maze2d-large}; do wait_data "$(data_of "$t")"; done
    grid ablation --per-gpu "${ABL_PER_GPU:-3}" --algos ${ABLATIONS:-mage-k1 mage-nodeccond} \
      --tasks ${ABL_TASKS:-maze2d-large} --seeds ${ABL_SEEDS:-0 1 2}; }
  if echo "${GRID_TASKS:-$TASKS}" | grep -q antmaze && ! echo "${ABL_TASKS:-maze2d-large}" | grep -q antmaze; then
    ablation; main; else main; ablation; fi
  sleep 5  # the grids' processes exist before the launcher ends (watch waits for either)
else
  watch "${2:-540}"
fi
