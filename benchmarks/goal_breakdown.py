"""Do far goals fail? The episodes of point-maze result files, grouped by how far the goal is from the start.

    python benchmarks/goal_breakdown.py benchmarks/results/mage/multi2d-large/seed*.json [more files]
                                        [--controller noisy|noiseless] [--json OUT]

Every evaluation records its episodes in the result file's ``episode_detail`` (shared/logger.py): return, first
reward step (-1: never), start and goal (x, y). Each episode's distance is the length of the shortest path from the
start cell to the goal cell, in moves between maze cells (``shared.mazes.bfs_path``; 1 = a neighbouring cell), binned
0-3, 4-7, 8-11, 12-15, 16+ (multi2d-large's pairs of cells run from 1 to 19). One markdown table per (algorithm or
variant, task): episodes, share that reached the goal (a reward > 0), median step of the first reward among those,
mean normalised score. Files without ``episode_detail`` (written before it existed) are named and skipped.

``--by goal`` groups the episodes by goal cell instead (are some goals never reached?).

``--controller`` also evaluates the waypoint controller that collected the data (``noisy``: with its N(0, 0.5) action
noise; ``noiseless``: the expert reference, score 100) as benchmarks/collector_scores.py does, on the first file's task,
evaluation seed and episode count (the same episodes as the algorithm's), and prints its table beside. ``--json OUT``
writes the tables' numbers.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.datasets import ACTION_NOISE  # noqa: E402
from shared.evaluation import evaluate  # noqa: E402
from shared.logger import episode_detail  # noqa: E402
from shared.mazes import bfs_path, maze_map, xy_to_cell  # noqa: E402
from shared.tasks import Task, get_task, is_point_maze, normalized_score  # noqa: E402
from shared.utils import atomic_write_json, load_script  # noqa: E402

BIN_STARTS = (0, 4, 8, 12, 16)  # lower edge of each bin of path length (moves between cells)
BINS = [f"{lo}-{hi - 1}" for lo, hi in zip(BIN_STARTS, BIN_STARTS[1:])] + [f"{BIN_STARTS[-1]}+"]
NOISE = {"noisy": ACTION_NOISE, "noiseless": 0.0}


def point_maze(task_name: str) -> Optional[Task]:
    """The task if it is an embedded point maze (whose cells xy_to_cell knows), else None."""
    task = get_task(task_name)
    return task if task.source == "embedded" and is_point_maze(task) else None


def skip_reason(result: dict) -> Optional[str]:
    if point_maze(result["task"]) is None:
        return "not an embedded point-maze task"
    if "start_xy" not in result.get("episode_detail", {}):
        return "no episode_detail (written before evaluations recorded their episodes)"
    return None


def path_length(grid: list[list], start_xy: list[float], goal_xy: list[float]) -> int:
    """Moves on the shortest 4-connected path of cells from the start's cell to the goal's."""
    return len(bfs_path(grid, xy_to_cell(grid, start_xy), xy_to_cell(grid, goal_xy))) - 1


def breakdown(task_name: str, details: list[dict], by: str = "distance") -> list[dict]:
    """One row per group of the episodes of ``details`` (``episode_detail`` dicts): per distance bin (all bins,
    empty ones too), or per goal cell (``by="goal"``: the cells goals were drawn in, row-major)."""
    grid = maze_map(get_task(task_name).maze)
    groups: dict = {name: [] for name in BINS} if by == "distance" else {}  # group -> [(first reward step, return)]
    for d in details:
        for start, goal, first, ret in zip(d["start_xy"], d["goal_xy"], d["first_reward_step"], d["returns"]):
            if by == "distance":
                key = BINS[bisect.bisect_right(BIN_STARTS, path_length(grid, start, goal)) - 1]
            else:
                key = xy_to_cell(grid, goal)
            groups.setdefault(key, []).append((first, ret))
    rows = []
    for name, episodes in groups.items() if by == "distance" else sorted(groups.items()):
        name = name if by == "distance" else f"({name[0]}, {name[1]})"
        firsts = [f for f, _ in episodes if f >= 0]
        scores = [normalized_score(task_name, r) for _, r in episodes]
        rows.append({"bin": name, "episodes": len(episodes),
                     "reached": len(firsts) / len(episodes) if episodes else None,
                     "first_reward_step_median": float(np.median(firsts)) if firsts else None,
                     "score_mean": float(np.mean(scores)) if scores else None})
    return rows


def markdown(title: str, rows: list[dict], by: str = "distance") -> str:
    def cell(value: Optional[float], fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    group = "path (cells)" if by == "distance" else "goal cell (row, col)"
    lines = [f"### {title}", "", f"| {group} | episodes | reached | median first-reward step | mean score |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['bin']} | {r['episodes']} | {cell(r['reached'], '.0%')} | "
              f"{cell(r['first_reward_step_median'], '.0f')} | {cell(r['score_mean'], '.1f')} |" for r in rows]
    return "\n".join(lines)


def controller_table(result: dict, kind: str, by: str = "distance") -> dict:
    """The data's waypoint controller on the episodes ``result`` was evaluated on (its task, eval seed, count)."""
    collector_scores = load_script(Path(__file__).with_name("collector_scores.py"), "benchmarks_collector_scores")
    task, seed, episodes = result["task"], result["config"]["eval_seed"], result["episodes"]
    ev = evaluate(task, collector_scores.controller(task, NOISE[kind], seed), episodes, seed,
                  num_envs=min(episodes, 50), progress=False)  # results do not depend on num_envs
    return {"controller": kind, "action_noise": NOISE[kind], "task": task, "eval_seed": seed, "episodes": episodes,
            "rows": breakdown(task, [episode_detail(ev.to_dict())], by)}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="result files (benchmarks/results/<algo>/<task>/seed<k>.json)")
    p.add_argument("--controller", choices=sorted(NOISE), help="also break down the data's waypoint controller")
    p.add_argument("--by", choices=("distance", "goal"), default="distance",
                   help="group episodes by start-goal path length (default) or by goal cell")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the tables' numbers here")
    args = p.parse_args(argv)

    results = [(path, json.loads(path.read_text())) for path in args.files]
    cells: dict[tuple[str, str], list[tuple[Path, dict]]] = defaultdict(list)
    skipped = []
    for path, result in results:
        reason = skip_reason(result)
        if reason:
            skipped.append([str(path), reason])
            print(f"skipped {path}: {reason}")
            continue
        # a variant's files sit in its own folder (results/<variant>/<task>/) but record the base algorithm
        name = path.parent.parent.name if path.parent.name == result["task"] else result["algo"]
        cells[(name, result["task"])].append((path, result))

    tables = []
    for (name, task), runs in cells.items():
        rows = breakdown(task, [r["episode_detail"] for _, r in runs], args.by)
        tables.append({"name": name, "task": task, "files": [str(path) for path, _ in runs], "rows": rows})
        print("\n" + markdown(f"{name} on {task} ({len(runs)} files, {sum(r['episodes'] for r in rows)} episodes)",
                              rows, args.by))

    controller = None
    if args.controller:
        first = results[0][1]
        if point_maze(first["task"]) is None:
            p.error(f"--controller: {first['task']} is not an embedded point-maze task")
        controller = controller_table(first, args.controller, args.by)
        print("\n" + markdown(f"data's waypoint controller ({args.controller}, action noise {NOISE[args.controller]}) "
                              f"on {controller['task']}, evaluation seeds {controller['eval_seed']}-"
                              f"{controller['eval_seed'] + controller['episodes'] - 1}", controller["rows"], args.by))
    if args.json:
        atomic_write_json(args.json, {"by": args.by, "bins": BINS if args.by == "distance" else None,
                                      "tables": tables, "controller": controller, "skipped": skipped})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
