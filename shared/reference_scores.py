"""Measure the reference returns that define normalised scores of the embedded maze tasks (D4RL's convention).

score 0 = a uniformly random policy, score 100 = the noiseless waypoint controller (D4RL's expert), both measured
on the task's evaluation env with shared.evaluation.evaluate. D4RL's own constants do not transfer to the
gymnasium-robotics envs, so we measure ours and store them in shared/reference_scores.json:

    python -m shared.reference_scores [--tasks maze2d-umaze ...] [--episodes 100] [--seed 0]

Measured tasks are updated in the JSON; entries of other tasks are kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from shared.evaluation import RandomPolicy, evaluate
from shared.mazes import WaypointPolicy
from shared.tasks import REFERENCE_SCORES_PATH, TASKS, get_task, is_antmaze

# the point-mass maze tasks; embedded antmaze tasks use D4RL's fixed 0 / 1 (shared.tasks.reference_scores)
# (locomotion tasks: measured when their SAC policies are trained, shared/data/locomotion.py)
EMBEDDED_TASKS = [name for name, task in TASKS.items()
                  if task.source == "embedded" and task.maze is not None and not is_antmaze(task)]


def measure(task_name: str, episodes: int = 100, seed: int = 0, num_envs: int = 20, progress: bool = True
            ) -> Dict[str, Any]:
    """Random and expert mean/std returns of one task over `episodes` episodes (episode i seeded seed + i)."""
    task = get_task(task_name)
    random = evaluate(task_name, RandomPolicy(action_dim=2, seed=seed), episodes, seed, num_envs, progress)
    expert = evaluate(task_name, WaypointPolicy(task.maze, noise=0.0, seed=seed), episodes, seed, num_envs, progress)
    return {
        "random": random.return_mean,
        "expert": expert.return_mean,
        "random_std": random.return_std,
        "expert_std": expert.return_std,
        "random_success_rate": random.success_rate,
        "expert_success_rate": expert.success_rate,
        "episodes": episodes,
        "eval_seed": seed,
    }


def _versions() -> Dict[str, str]:
    import gymnasium
    import mujoco
    from importlib.metadata import version

    return {"python": platform.python_version(), "numpy": np.__version__, "gymnasium": gymnasium.__version__,
            "gymnasium_robotics": version("gymnasium_robotics"), "mujoco": mujoco.__version__}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.reference_scores", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=EMBEDDED_TASKS, choices=EMBEDDED_TASKS)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REFERENCE_SCORES_PATH)
    args = parser.parse_args(argv)

    table = json.loads(args.out.read_text()) if args.out.exists() else {}
    tasks = table.get("tasks", {})
    start = time.time()
    for name in args.tasks:
        tasks[name] = measure(name, args.episodes, args.seed, args.num_envs)
        print(f"{name:16s} random {tasks[name]['random']:8.2f} ± {tasks[name]['random_std']:6.2f}   "
              f"expert {tasks[name]['expert']:8.2f} ± {tasks[name]['expert_std']:6.2f}", flush=True)
    payload = {
        "tasks": dict(sorted(tasks.items())),
        "command": " ".join(["python -m shared.reference_scores"] + (sys.argv[1:] if argv is None else argv)),
        "versions": _versions(),
        "eval_seed": args.seed,
        "policies": {"random": "uniform in [-1, 1]^2 (shared.evaluation.RandomPolicy)",
                     "expert": "noiseless waypoint controller (shared.mazes.WaypointPolicy, noise=0)"},
        "measured_seconds": round(time.time() - start, 1),
    }
    from shared.utils import atomic_write_json  # here: shared.utils imports torch; measuring does not need it

    atomic_write_json(args.out, payload, sort_keys=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
