"""How well does the data's own controller do under the evaluation protocol? The ceiling of imitation on a maze task.

    python benchmarks/collector_scores.py [--tasks maze2d-umaze ...] [--episodes 100] [--eval-seeds 1000 100000]

The embedded maze datasets are collected by a waypoint controller with N(0, 0.5) action noise
(``shared.datasets.ACTION_NOISE``); score 100 is the same controller without noise (``shared.reference_scores``).
This script evaluates both, exactly as the algorithms are evaluated (``shared.evaluation.evaluate``, episode i seeded
eval_seed + i), on each block of evaluation seeds: 1,000 (the committed configs) and 100,000 (tuning runs). A
generative planner that imitates the data well lands near the noisy controller's score; beating the noiseless one
needs more than imitation. Writes ``benchmarks/results/collector_scores.json`` (read by ``tables.py``); 2 CPU
cores took 92 s for the six maze tasks (its `seconds` field).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.datasets import ACTION_NOISE  # noqa: E402
from shared.evaluation import goal_behaviour  # noqa: E402
from shared.mazes import WaypointPolicy  # noqa: E402
from shared.tasks import get_task  # noqa: E402
from shared.utils import atomic_write_json, git_commit  # noqa: E402

TASKS = ("maze2d-umaze", "maze2d-medium", "maze2d-large", "multi2d-umaze", "multi2d-medium", "multi2d-large")
OUT = ROOT / "benchmarks" / "results" / "collector_scores.json"


def controller(task: str, noise: float, eval_seed: int) -> WaypointPolicy:
    """The data's waypoint controller with action noise ``noise``, seeded by the evaluation's first episode seed."""
    return WaypointPolicy(get_task(task).maze, noise=noise, seed=eval_seed)


def measure(task: str, noise: float, episodes: int, eval_seed: int) -> dict:
    """Score, success and behaviour of the waypoint controller with action noise ``noise`` on one block of seeds."""
    b = goal_behaviour(task, controller(task, noise, eval_seed), episodes, eval_seed, num_envs=min(episodes, 50))
    return {"normalized_score": round(b["score"], 2), "normalized_score_std": round(b["score_std"], 2),
            "success_rate": b["reached"], "first_reward_step_median": b["first_reward_step_median"],
            "mean_abs_action": round(b["mean_abs_action"], 3)}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[1000, 100000], help="first episode seed of each block")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    for task in args.tasks:
        if get_task(task).maze is None:
            p.error(f"{task} is not an embedded maze task")
    t0 = time.time()
    tasks: dict = {}
    for task in args.tasks:
        tasks[task] = {}
        for seed in args.eval_seeds:
            row = {"collector": measure(task, ACTION_NOISE, args.episodes, seed),
                   "noiseless": measure(task, 0.0, args.episodes, seed)}
            tasks[task][str(seed)] = row
            print(f"{task} eval seeds from {seed}: data's controller (noise {ACTION_NOISE}) "
                  f"{row['collector']['normalized_score']:.1f}, noiseless {row['noiseless']['normalized_score']:.1f}",
                  flush=True)
    atomic_write_json(args.out, {
        "command": "python benchmarks/collector_scores.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "episodes": args.episodes, "action_noise": ACTION_NOISE, "git_commit": git_commit(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "seconds": round(time.time() - t0, 1), "tasks": tasks})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
