"""Task registry: what each task name means (env, episode length, goal protocol, data, reference scores).

Embedded tasks run on data the project generates itself (D4RL's maze2d recipe on gymnasium-robotics);
original D4RL names (``maze2d-umaze-v1``, ``hopper-medium-v2``, ...) resolve to the user's own D4RL files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

REFERENCE_SCORES_PATH = Path(__file__).with_name("reference_scores.json")

# D4RL's own normalisation constants (d4rl/infos.py): valid only for the original D4RL files and envs.
D4RL_REF_SCORES = {
    "maze2d-umaze-v1": (23.85, 161.86),
    "maze2d-medium-v1": (13.13, 277.39),
    "maze2d-large-v1": (6.7, 273.99),
    "hopper-medium-v2": (-20.272305, 3234.3),
    "hopper-medium-replay-v2": (-20.272305, 3234.3),
    "hopper-medium-expert-v2": (-20.272305, 3234.3),
    "halfcheetah-medium-v2": (-280.178953, 12135.0),
    "halfcheetah-medium-replay-v2": (-280.178953, 12135.0),
    "halfcheetah-medium-expert-v2": (-280.178953, 12135.0),
    "walker2d-medium-v2": (1.629008, 4592.3),
    "walker2d-medium-replay-v2": (1.629008, 4592.3),
    "walker2d-medium-expert-v2": (1.629008, 4592.3),
}
for _name in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
    D4RL_REF_SCORES[f"antmaze-{_name}-v2"] = (0.0, 1.0)


@dataclass(frozen=True)
class Task:
    name: str  # registry key, e.g. "maze2d-large" or "hopper-medium-v2"
    source: str  # "embedded" (project-generated data) or "d4rl" (the user's original D4RL files)
    env_id: str  # gymnasium id used for evaluation (embedded) or the D4RL env name
    maze: Optional[str] = None  # maze layout key for embedded maze tasks: "umaze" | "medium" | "large"
    max_episode_steps: int = 1000  # evaluation episode length
    goal_mode: str = "none"  # "fixed" (D4RL maze2d: one eval goal), "random" (Multi2D), "none" (reward-driven)
    eval_goal_cell: Optional[Tuple[int, int]] = None  # (row, col) of the fixed evaluation goal in the maze map
    dataset_size: int = 0  # transitions in the full embedded dataset
    dataset_task: Optional[str] = None  # task whose dataset this task trains on (multi2d-* reuse maze2d-*)

    @property
    def goal_conditioned(self) -> bool:
        return self.goal_mode in ("fixed", "random")

    @property
    def data_name(self) -> str:
        return self.dataset_task or self.name


# D4RL maze2d v1 layouts are gymnasium-robotics' U_MAZE / MEDIUM_MAZE / LARGE_MAZE; eval goals are D4RL's 'G' cells.
_MAZES = {
    "umaze": dict(env_id="PointMaze_UMaze-v3", steps=300, goal=(1, 1), size=1_000_000),
    "medium": dict(env_id="PointMaze_Medium-v3", steps=600, goal=(6, 6), size=2_000_000),
    "large": dict(env_id="PointMaze_Large-v3", steps=800, goal=(7, 9), size=4_000_000),
}

TASKS: dict[str, Task] = {}
for _maze, _m in _MAZES.items():
    TASKS[f"maze2d-{_maze}"] = Task(
        name=f"maze2d-{_maze}", source="embedded", env_id=_m["env_id"], maze=_maze,
        max_episode_steps=_m["steps"], goal_mode="fixed", eval_goal_cell=_m["goal"], dataset_size=_m["size"],
    )
    TASKS[f"multi2d-{_maze}"] = Task(
        name=f"multi2d-{_maze}", source="embedded", env_id=_m["env_id"], maze=_maze,
        max_episode_steps=_m["steps"], goal_mode="random", eval_goal_cell=_m["goal"], dataset_size=_m["size"],
        dataset_task=f"maze2d-{_maze}",
    )
for _name in D4RL_REF_SCORES:
    _maze2d = _name.startswith("maze2d")
    _steps = {"maze2d-umaze-v1": 300, "maze2d-medium-v1": 600, "maze2d-large-v1": 800}.get(_name, 1000)
    TASKS[_name] = Task(
        name=_name, source="d4rl", env_id=_name, max_episode_steps=_steps,
        goal_mode="fixed" if _maze2d else "none",
    )


def get_task(name: str) -> Task:
    """Look a task up by name; unknown names fail with the list of known ones."""
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def reference_scores(name: str) -> Tuple[float, float]:
    """(random, expert) returns that map to normalised scores 0 and 100 for this task."""
    task = get_task(name)
    if task.source == "d4rl":
        return D4RL_REF_SCORES[name]
    if not REFERENCE_SCORES_PATH.exists():
        raise FileNotFoundError(
            f"{REFERENCE_SCORES_PATH} is missing: run `python -m shared.reference_scores` to measure it"
        )
    table = json.loads(REFERENCE_SCORES_PATH.read_text())
    if name not in table.get("tasks", {}):
        raise KeyError(f"no reference scores for '{name}' in {REFERENCE_SCORES_PATH}")
    entry = table["tasks"][name]
    return float(entry["random"]), float(entry["expert"])


def normalized_score(name: str, episode_return: float) -> float:
    """D4RL-style normalised score: 0 = random policy, 100 = expert controller."""
    lo, hi = reference_scores(name)
    return 100.0 * (episode_return - lo) / (hi - lo)
