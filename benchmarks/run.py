"""Run a grid of algorithms x tasks x seeds from the committed configs, on one GPU or several.

    python benchmarks/run.py --algos mage dt --tasks maze2d-umaze maze2d-large --seeds 0 1 2 --gpus 0,1 --per-gpu 4

One process per run (CUDA_VISIBLE_DEVICES picks its GPU, ``--per-gpu`` runs share a GPU). A run whose results
file exists is skipped (with ``--rerun-stale``, unless it trained with another budget or return condition than its
config now sets: that file is moved aside to ``seed<k>.json.stale`` when its re-run starts, and moved back if the
re-run fails); a run with checkpoints but no results is resumed (``--resume true``). Each run writes
``benchmarks/results/<algo>/<task>/seed<k>.json`` (the suite's schema) and logs to ``<out_dir>/logs/``.
Variants (ablations, and the goal-conditioned baselines bc-goal / iql-goal / dt-goal on maze2d) are algorithms with
config overrides, listed in VARIANTS; their results go to ``benchmarks/results/<variant>/...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from collections.abc import Sequence
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: shared/ is importable
from shared.tasks import TASKS, goal_input  # noqa: E402

# mage-track's flags (its comment in VARIANTS says why)
TRACK = ["--plan_dims", "2", "--waypoint_hops", "12", "--waypoint_square", "1.0", "--goal_relabel", "0.5",
         "--head_track", "32", "--head_condition", "track", "--tf_steps", "16000"]
# variant name -> (algorithm file, config overrides): the ablations of issue "MAGE in one file"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mage-k1": ("mage", ["--scales", "[32]"]),  # one scale: all tokens in one pass (K = 1)
    "mage-nodeccond": ("mage", ["--decoder_condition", "false"]),  # decoder without the condition, no L_cond
    # not an ablation: a test of the exposure account of K = 1's lead (docs/mage.md): three times the free-running
    # stage 3 (2,000 -> 6,000 steps after the committed 4,000 + 14,000)
    "mage-e2e6k": ("mage", ["--e2e_steps", "6000"]),
    # the other test of it: stage 2 feeds half of the scales their own argmax predictions (scheduled sampling)
    "mage-ss": ("mage", ["--scheduled_sampling", "0.5"]),
    # multi2d-large's stalls: the head acts along the straight line to the goal, into a wall, not along the plan
    # (mage_diagnose.py's stall probe); a head that sees the state but not the goal (nor R) cannot do that
    "mage-headstate": ("mage", ["--head_condition", "state"]),
    # antmaze-umaze's stage 2 spiked to NaN at step 21k (budget/h100-2026-12-07b): cosine attention with a learnt
    # temperature, as VAR trains, bounds the attention logits whose growth usually drives such spikes
    "mage-qknorm": ("mage", ["--qk_norm", "true"]),
    # antmaze's data has one commanded goal per 1,000-step episode, 83-87% of its steps waiting there (docs/data.md):
    # half the segments aim at a later position of their own trajectory (hindsight relabelling, ~100 steps ahead)
    "mage-relabel": ("mage", ["--goal_relabel", "0.5"]),
    # the generated segment is the (x, y) path only, the condition the whole state: an antmaze latent of all 29 dims is
    # mostly the ant's gait, and its decoded positions were 1-3 m off (budget/h100-2026-12-07c)
    "mage-path": ("mage", ["--plan_dims", "2"]),
    # antmaze (1 m squares): plans towards a waypoint 6 squares along the data's routes (WaypointGraph), trained on
    # relabelled goals (waypoints are positions along walks): the route of antmaze-large is in no single walk
    "mage-waypoints": ("mage", ["--waypoint_hops", "6", "--waypoint_square", "1.0", "--goal_relabel", "0.5"]),
    # the plans of mage-waypoints --plan_dims 2 led 7 of 10 ants to antmaze-large's goal when a controller learnt from
    # the data followed them, 0 of 10 with the head (mage_diagnose --fit-tracker, budget/h100-2026-12-07d): the head
    # reads the action off where the plan is 32 steps ahead, in the ant's heading frame (refitted alone: 5 of 10);
    # waypoints 12 squares ahead, as there. Budget 8k / 16k / 4k, that of its first test (budget/h100-2026-12-08a:
    # antmaze-large-diverse's evaluations were level from 12k steps on, antmaze-umaze's from 20k)
    "mage-track": ("mage", TRACK),
    # mage-track's misses ended 0.5-1.5 m from the goal (the decoded plan resolves ~0.3 m, success needs 0.5 m):
    # acting, a tracked plan position within 1 m of the goal becomes the goal (training is mage-track's)
    "mage-track-snap": ("mage", [*TRACK, "--goal_snap", "1.0"]),
    # goal-conditioned baselines on maze2d (the protocol before issue 13; on multi2d they equal bc / iql / dt):
    # the goal (hindsight collection goal in training) instead of the paper's (observation, reward) only
    "bc-goal": ("bc", ["--goal_input", "true"]),
    "iql-goal": ("iql", ["--goal_input", "true"]),
    "dt-goal": ("dt", ["--goal_input", "true", "--target_return", "1.0"]),  # R in [0, 1] with the goal: 1 = at it
}
# variants that change what the algorithm is given (shared.tasks.goal_input), not an ablation of the algorithm:
# benchmarks/tables.py shows them in their own columns, apart from the published numbers
PROTOCOL_VARIANTS = ("bc-goal", "iql-goal", "dt-goal")
# what a variant's rows must say beside its scores (benchmarks/tables.py prints it under the ablation table)
ROUTES = ("plans towards waypoints on the data's routes (`WaypointGraph`: this project's, not the paper's), which no "
          "baseline is given. On antmaze-large-diverse a controller learnt from the same data, aimed at those "
          "waypoints with no plan at all, reached the goal in 86 of 100 episodes, and on antmaze-umaze in 92 with "
          "waypoints 4 squares ahead (`benchmarks/mage_diagnose.py --fit-tracker 10000 --only route`, "
          "budget/h100-2026-12-08a): the stitching is the routes'")
VARIANT_NOTES = {"mage-waypoints": ROUTES, "mage-track": ROUTES, "mage-track-snap": ROUTES}
# variants that run on antmaze tasks only (head_track: the ant's heading frame), so not in the maze2d-large ablation
# sweep (configs/sweeps/mage-ablation.yaml)
ANTMAZE_VARIANTS = ("mage-track", "mage-track-snap")


# what a result depends on that committed configs have changed: the budget, and MAGE's return condition
STALE_KEYS = ("steps", "ae_steps", "tf_steps", "e2e_steps", "batch_size", "return_condition")


@lru_cache(maxsize=None)
def committed_fields(algo: str, task: str, config_dir: Path = ROOT / "configs") -> tuple[tuple[str, object], ...]:
    """The ``STALE_KEYS`` that ``configs/<algo>/<task>.yaml`` sets (empty when there is no such config)."""
    path = Path(config_dir) / algo / f"{task}.yaml"
    if not path.is_file():
        return ()
    values = yaml.safe_load(path.read_text()) or {}
    return tuple((k, values[k]) for k in STALE_KEYS if k in values)


def stale_fields(algo: str, task: str, result: dict, config_dir: Path = ROOT / "configs",
                 overrides: Sequence[str] = ()) -> list[str]:
    """'tf_steps 4000 -> 14000' for each STALE_KEY where a result's recorded config differs from the config now
    (with a variant's ``--key value`` overrides applied: mage-e2e6k's 6,000 stage-3 steps are its budget)."""
    recorded = result.get("config") or {}
    expected = dict(committed_fields(algo, task, Path(config_dir)))
    for flag, value in zip(overrides[::2], overrides[1::2]):
        if flag.startswith("--") and flag[2:] in STALE_KEYS:
            expected[flag[2:]] = yaml.safe_load(value)
    return [f"{k} {recorded[k]} -> {v}" for k, v in expected.items() if k in recorded and recorded[k] != v]


def set_aside(result: Path) -> Path:
    """Move a stale result file to the first free ``<name>.stale[N]`` beside it (never over another file)."""
    n = 1
    while (aside := result.with_name(result.name + (".stale" if n == 1 else f".stale{n}"))).exists():
        n += 1
    result.rename(aside)
    return aside


@dataclass
class Job:
    name: str  # algorithm or variant name (results folder)
    algo: str  # algorithm file
    task: str
    seed: int
    overrides: list[str]

    @property
    def tag(self) -> str:
        return f"{self.name}-{self.task}-seed{self.seed}"


def build_jobs(names: list[str], tasks: list[str], seeds: list[int], config_dir: Path) -> list[Job]:
    jobs = []
    for name in names:
        algo, overrides = VARIANTS.get(name, (name, []))
        if not (ROOT / "algorithms" / f"{algo}.py").exists():
            sys.exit(f"error: no algorithms/{algo}.py for '{name}' (variants: {', '.join(VARIANTS)})")
        for task in tasks:
            if not (config_dir / algo / f"{task}.yaml").exists():
                sys.exit(f"error: no config {config_dir / algo / (task + '.yaml')}")
            jobs += [Job(name, algo, task, seed, overrides) for seed in seeds]
    return jobs


def twin_task(job: Job, config_dir: Path) -> Optional[str]:
    """``multi2d-X`` for a ``maze2d-X`` job of an algorithm given the goal on both (the planners, Diffuser and MAGE)
    whose two committed configs differ only in ``task``: such runs train on the same data the same way (hindsight
    goals) and differ only in the goals asked for at evaluation, so one training serves both results."""
    if not job.task.startswith("maze2d-"):
        return None
    twin = "multi2d-" + job.task.removeprefix("maze2d-")
    paths = [Path(config_dir) / job.algo / f"{t}.yaml" for t in (job.task, twin)]
    if twin not in TASKS or not paths[1].is_file() or TASKS[twin].data_name != TASKS[job.task].data_name:
        return None
    if not (goal_input(job.task, job.algo) and goal_input(twin, job.algo)):
        return None
    a, b = ({k: v for k, v in (yaml.safe_load(p.read_text()) or {}).items() if k != "task"} for p in paths)
    return twin if a == b else None


def result_path(job: Job, args: argparse.Namespace) -> Path:
    return Path(args.results_dir) / job.name / job.task / f"seed{job.seed}.json"


def command(job: Job, args: argparse.Namespace, twin: Optional[Job] = None) -> tuple[list[str], Path]:
    result = result_path(job, args)
    out_dir = Path(args.out_dir) / job.name
    run_dir = out_dir / job.algo / job.task / f"seed{job.seed}"
    cmd = [sys.executable, str(ROOT / "algorithms" / f"{job.algo}.py"),
           "--config", str(Path(args.config_dir) / job.algo / f"{job.task}.yaml"),
           "--seed", str(job.seed), "--out_dir", str(out_dir), "--results_path", str(result), *job.overrides,
           *args.extra]
    if twin is not None:  # one training, both evaluations (twin_task)
        cmd += ["--also_evaluate", f"{twin.task}={result_path(twin, args)}"]
    if any(run_dir.glob("checkpoint_*.pt")):
        cmd += ["--resume", "true"]
    return cmd, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", required=True, help="algorithm files or variants (VARIANTS)")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--gpus", default=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                   help="comma-separated GPU ids; empty = CPU")
    p.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU (or on the CPU)")
    p.add_argument("--config-dir", default=str(ROOT / "configs"))
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--out-dir", default=str(ROOT / "runs"))
    p.add_argument("--rerun-stale", action="store_true",
                   help="re-run runs whose result trained with another budget or return condition than the config "
                        "now sets (the old file is kept as seed<k>.json.stale)")
    p.add_argument("--stagger", type=float, default=0.0,
                   help="seconds between consecutive starts: runs started together compile their graphs at the same "
                        "moments and leave the GPU idle meanwhile; staggered, one run's compile overlaps others' steps")
    p.add_argument("--separate-twins", action="store_true",
                   help="train maze2d-X and multi2d-X runs of Diffuser / MAGE separately (by default one training "
                        "gives both results when their configs differ only in the task: twin_task)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("extra", nargs="*", help="after --: overrides passed to every run, e.g. -- --eval_episodes 50")
    args = p.parse_args()

    jobs = build_jobs(args.algos, args.tasks, args.seeds, Path(args.config_dir))
    todo = []
    stale: dict[str, Path] = {}  # job tag -> its stale result file (re-run with --rerun-stale)
    aside: dict[str, Path] = {}  # job tag -> where that file waits while the re-run runs
    for job in jobs:
        cmd, result = command(job, args)
        if not result.exists():
            todo.append(job)
            continue
        try:
            recorded = json.loads(result.read_text())
        except (OSError, ValueError) as e:  # before any run starts: one line naming the file
            sys.exit(f"error: {result} is not a readable result file ({e}); fix or remove it")
        changed = stale_fields(job.algo, job.task, recorded, Path(args.config_dir), job.overrides)
        if changed and args.rerun_stale and "--resume" in cmd:  # those checkpoints are the old run's
            print(f"skip {job.tag}: {result} is stale ({', '.join(changed)}) but its run folder under {args.out_dir} "
                  "holds checkpoints; move them away to re-run it")
        elif changed and args.rerun_stale:
            print(f"re-run {job.tag}: {result} is stale ({', '.join(changed)})")
            todo.append(job)
            stale[job.tag] = result
        else:
            print(f"skip {job.tag}: {result} exists" + (f" (stale: {', '.join(changed)})" if changed else ""))
    twins: dict[str, Job] = {}  # maze2d job tag -> its multi2d twin, evaluated by the same run
    if not args.separate_twins:
        by_key = {(j.name, j.task, j.seed): j for j in todo}
        for job in list(todo):
            twin = twin_task(job, Path(args.config_dir))
            other = by_key.get((job.name, twin, job.seed)) if twin else None
            if other is not None and "--resume" not in command(other, args)[0]:  # (a killed twin: resume it)
                todo.remove(other)
                twins[job.tag] = other
                print(f"twin {other.tag}: evaluated by {job.tag} (the same training: configs differ only in task)")
    slots = [g for g in args.gpus.split(",") if g != ""] or [""]
    slots = [g for _ in range(args.per_gpu) for g in slots]  # round-robin: consecutive jobs land on different GPUs
    log_dir = Path(args.out_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for job in todo:
            print(" ".join(command(job, args, twins.get(job.tag))[0]))
        return
    running: dict[str, tuple[subprocess.Popen, Job, float]] = {}
    failed: list[str] = []
    queue = list(todo)
    print(f"{len(todo)} runs on {len(slots)} slots ({args.gpus or 'CPU'})", flush=True)
    t_start = time.time()
    last_start = t_start - args.stagger  # the first run starts at once
    while queue or running:
        for slot_id, gpu in enumerate(slots):
            key = f"{slot_id}"
            if key in running or not queue:
                continue
            if time.time() - last_start < args.stagger:
                break
            job = queue.pop(0)
            for j in (job, twins.get(job.tag)):
                if j is not None and j.tag in stale:  # the run refuses to start over an existing result file
                    aside[j.tag] = set_aside(stale[j.tag])
            cmd, _ = command(job, args, twins.get(job.tag))
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if gpu != "":
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = open(log_dir / f"{job.tag}.log", "a")
            running[key] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), job,
                            time.time())
            last_start = time.time()
            print(f"start {job.tag} on {'GPU ' + gpu if gpu else 'CPU'} at +{last_start - t_start:.0f}s", flush=True)
        for key, (proc, job, t0) in list(running.items()):
            if proc.poll() is not None:
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                ran = [j for j in (job, twins.get(job.tag)) if j is not None]
                if proc.returncode:
                    failed += [j.tag for j in ran]
                    for j in ran:
                        if j.tag in aside and not stale[j.tag].exists():  # keep the old result
                            aside[j.tag].rename(stale[j.tag])
                print(f"{status} {' + '.join(j.tag for j in ran)} in {time.time() - t0:.0f}s", flush=True)
                del running[key]
        time.sleep(1.0)
    print(f"finished: {len(todo) + len(twins) - len(failed)} ok, {len(failed)} failed {failed} in "
          f"{time.time() - t_start:.0f}s", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
