"""Task registry: what each task name means (env, episode length, goal protocol, data, reference scores), and
what each algorithm is given on it (goal_input, algo_inputs).

Embedded tasks run on data the project generates itself (D4RL's maze2d and antmaze recipes on gymnasium-robotics,
its locomotion recipe with the project's SAC on gymnasium's v5 envs);
original D4RL names (``maze2d-umaze-v1``, ``hopper-medium-v2``, ...) resolve to the user's own D4RL files;
``minari-*`` names (and ad-hoc ``minari:<dataset id>``) to the user's local Minari datasets (shared/data/minari.py).
"""

from __future__ import annotations

import json
import os
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
for _name in ("complete", "partial", "mixed"):
    D4RL_REF_SCORES[f"kitchen-{_name}-v0"] = (0.0, 4.0)
for _env, _ref in {"pen": (96.262799, 3076.8331), "door": (-56.512833, 2880.5693),
                   "hammer": (-274.856578, 12794.134825), "relocate": (-6.425911, 4233.877797)}.items():
    for _quality in ("human", "cloned"):
        D4RL_REF_SCORES[f"{_env}-{_quality}-v1"] = _ref
# D4RL's evaluation episode lengths where they are not 1000 (by name prefix)
_D4RL_STEPS = {"maze2d-umaze": 300, "maze2d-medium": 600, "maze2d-large": 800, "kitchen": 280, "pen": 100,
               "door": 200, "hammer": 200, "relocate": 200}


@dataclass(frozen=True)
class Task:
    name: str  # registry key, e.g. "maze2d-large" or "hopper-medium-v2"
    source: str  # "embedded" (project-generated data), "d4rl" (the user's D4RL files) or "minari" (local Minari data)
    env_id: str  # gymnasium id used for evaluation (embedded), the D4RL env name, or the Minari dataset id
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
# Embedded AntMaze (shared/data/antmaze.py): D4RL's antmaze recipe regenerated on gymnasium-robotics with D4RL's
# 10 Hz gear-30 ant (not D4RL's files). Evaluation as D4RL's: start cell (1, 1), the fixed goal cell (plus D4RL's
# per-episode goal noise), success = within 0.5 m, the episode ends there; 700 steps on umaze, 1,000 otherwise;
# scores 100 x success rate (reference scores 0 / 1, D4RL's antmaze entries).
ANTMAZE_DATASETS = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
_ANTMAZE_EVAL = {  # gymnasium id (the simulator; shared/data/ant.py builds it), D4RL's *_TEST goal cell, steps
    "umaze": ("AntMaze_UMaze-v5", (3, 1), 700),
    "medium": ("AntMaze_Medium-v5", (6, 6), 1000),
    "large": ("AntMaze_Large-v5", (7, 9), 1000),
}
for _name in ANTMAZE_DATASETS:
    _maze = _name.split("-")[0]
    _env_id, _goal, _steps = _ANTMAZE_EVAL[_maze]
    TASKS[f"antmaze-{_name}"] = Task(
        name=f"antmaze-{_name}", source="embedded", env_id=_env_id, maze=_maze, max_episode_steps=_steps,
        goal_mode="fixed", eval_goal_cell=_goal, dataset_size=1_000_000,
    )
# Embedded locomotion (shared/data/locomotion.py): D4RL's hopper / halfcheetah / walker2d recipe regenerated with this
# project's SAC on gymnasium's v5 envs (not D4RL's files); reward tasks, 1,000-step evaluation episodes; reference
# scores = the random policy's and the SAC expert's returns, measured when the policies were trained.
LOCOMOTION_ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
LOCOMOTION_DIR = Path(__file__).parent / "data" / "locomotion"  # the committed policies (shared/data/locomotion.py)


def locomotion_dir(env: str) -> Path:
    """Where an env's committed SAC policies live (MAGE_LOCOMOTION_DIR/<env> overrides it: tests, other runs)."""
    return Path(os.environ.get("MAGE_LOCOMOTION_DIR") or LOCOMOTION_DIR) / env


def locomotion_replay_size(env: str, weights_dir: Optional[Path] = None) -> int:
    """medium-replay's size: the transitions of the checkpoint ladder in policies.json (0 while there is none)."""
    path = Path(weights_dir or locomotion_dir(env)) / "policies.json"
    try:
        return int(sum(rung["transitions"] for rung in json.loads(path.read_text())["ladder"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0


for _env, _env_id in LOCOMOTION_ENVS.items():
    for _quality, _size in (("medium", 1_000_000), ("medium-replay", None), ("medium-expert", 2_000_000)):
        TASKS[f"{_env}-{_quality}"] = Task(
            name=f"{_env}-{_quality}", source="embedded", env_id=_env_id, max_episode_steps=1000, goal_mode="none",
            dataset_size=_size if _size is not None else locomotion_replay_size(_env),
        )
for _name in D4RL_REF_SCORES:
    _maze2d = _name.startswith("maze2d")
    _steps = next((v for k, v in _D4RL_STEPS.items() if _name.startswith(k + "-")), 1000)
    TASKS[_name] = Task(
        name=_name, source="d4rl", env_id=_name, max_episode_steps=_steps,
        goal_mode="fixed" if _maze2d else "none",
    )


# Minari's datasets of the paper's benchmarks (Minari ids; the user downloads them with `minari download <id>`).
# Minari's regenerations are not D4RL's data (../shared/paper/DATA.md), hence their own names. Episode lengths are
# those of the recorded eval envs (the env's own time limit is what MinariEnv applies). Minari's maze rewards are for
# reaching the goal commanded in each episode (not, as D4RL's, relabelled for the fixed evaluation goal), so every
# algorithm needs the goal: PointMaze is goal-conditioned with goal_mode "random" (every algorithm gets the goal, as
# on Multi2D; the evaluation goal is the one the recorded eval env sets); AntMaze is a reward task with the goal in
# the observation (as the D4RL antmaze-*-v2 tasks, and because Diffuser's goal planner drives a point mass). Minari
# has no medium-replay / medium-expert locomotion sets (mujoco/*: simple, medium, expert, by training steps).
MINARI_IDS: dict[str, Tuple[str, int]] = {}
for _name in ("complete", "partial", "mixed"):
    MINARI_IDS[f"minari-kitchen-{_name}"] = (f"D4RL/kitchen/{_name}-v2", 280)
for _env, _steps in {"pen": 100, "door": 200, "hammer": 200, "relocate": 200}.items():
    for _quality in ("human", "cloned"):
        MINARI_IDS[f"minari-{_env}-{_quality}"] = (f"D4RL/{_env}/{_quality}-v2", _steps)
for _env in ("hopper", "halfcheetah", "walker2d"):
    MINARI_IDS[f"minari-{_env}-medium"] = (f"mujoco/{_env}/medium-v0", 1000)
for _name in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
    MINARI_IDS[f"minari-antmaze-{_name}"] = (f"D4RL/antmaze/{_name}-v1", 700 if _name == "umaze" else 1000)
for _name, _steps in {"umaze": 300, "medium": 600, "large": 800}.items():
    MINARI_IDS[f"minari-pointmaze-{_name}"] = (f"D4RL/pointmaze/{_name}-v2", _steps)
MINARI_PREFIX = "minari:"


def _minari_pointmaze(dataset_id: str) -> bool:
    return "pointmaze" in dataset_id.split("/")[:-1]


def _minari_task(name: str, dataset_id: str, steps: int = 1000) -> Task:
    goal = _minari_pointmaze(dataset_id)  # PointMaze: goal-conditioned (see above)
    return Task(name=name, source="minari", env_id=dataset_id, max_episode_steps=steps,
                goal_mode="random" if goal else "none")


for _name, (_id, _steps) in MINARI_IDS.items():
    TASKS[_name] = _minari_task(_name, _id, _steps)


POINT_MAZE_GOAL_RADIUS = 0.45  # gymnasium-robotics' point-maze success distance (D4RL's maze2d used 0.5)
ANTMAZE_GOAL_RADIUS = 0.5  # D4RL antmaze: reward = terminal = 1[|xy - goal| <= 0.5]


def goal_radius(task: Task) -> float:
    """Distance at which a goal counts as reached: D4RL's antmaze 0.5, gymnasium-robotics' point maze 0.45."""
    return ANTMAZE_GOAL_RADIUS if is_antmaze(task) else POINT_MAZE_GOAL_RADIUS


def is_antmaze(task: Task) -> bool:
    """An embedded AntMaze task (the ant in shared/data/ant.py, not the point mass of shared/mazes.py)."""
    return task.source == "embedded" and task.name.startswith("antmaze")


def is_point_maze(task: Task) -> bool:
    """A point-mass maze (maze2d-*, multi2d-*, D4RL's maze2d-*-v1, Minari's pointmaze): states (x, y, vx, vy)."""
    if task.source == "minari":
        return _minari_pointmaze(task.env_id)
    return task.name.startswith(("maze2d-", "multi2d-"))


def is_locomotion(task: Task) -> bool:
    """An embedded locomotion task (hopper / halfcheetah / walker2d, shared/data/locomotion.py)."""
    return task.source == "embedded" and task.name.split("-")[0] in LOCOMOTION_ENVS


def get_task(name: str | Task) -> Task:
    """Look a task up by name; unknown names fail with the list of known ones. ``minari:<id>`` is any local
    Minari dataset (registered on first use). A Task is returned as it is: functions taking a task accept either."""
    if isinstance(name, Task):
        return name
    if name not in TASKS and name.startswith(MINARI_PREFIX) and len(name) > len(MINARI_PREFIX):
        TASKS[name] = _minari_task(name, name[len(MINARI_PREFIX):])
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def reference_scores(name: str) -> Tuple[float, float]:
    """(random, expert) returns that map to normalised scores 0 and 100 for this task."""
    task = get_task(name)
    if task.source == "d4rl":
        return D4RL_REF_SCORES[name]
    if is_antmaze(task):  # D4RL's antmaze convention: return = success (0 / 1), score = 100 x success rate
        return 0.0, 1.0
    if is_locomotion(task):  # measured when the SAC policies were trained (their policies.json)
        from shared.data.locomotion import reference_scores as locomotion_scores  # lazy: gymnasium, mujoco

        return locomotion_scores(task.name.split("-")[0])
    if task.source == "minari":
        from shared.data.minari import reference_scores as minari_scores  # lazy: minari is optional

        scores = minari_scores(task.env_id)
        if scores is None:
            raise KeyError(f"Minari dataset '{task.env_id}' has no ref_min_score/ref_max_score")
        return scores
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


# Who is given the goal, per task protocol, as in the papers whose numbers we set beside ours. Fixed-goal tasks
# (maze2d, D4RL's protocol): only the planners, as in their papers (Diffuser inpaints the goal; HD and MAGE condition
# on it); the offline-RL baselines see (observation, reward) only, as D4RL and CORL run them. Random-goal tasks
# (Multi2D): every algorithm (the goal changes per episode). Reward tasks: none.
GOAL_PLANNERS = ("diffuser", "mage")
# Except Diffuser on AntMaze: its goal planning inpaints a point mass's final state (x, y, 0, 0) and tracks the plan
# with a point-mass controller (action = position + velocity error), which cannot drive an ant; there it plans with
# value guidance on the task's reward (as its antmaze-*-v2 configs), without the goal.

# What an algorithm trains and acts on, with (True) and without (False) the goal; tables print these.
INPUTS = {
    ("bc", True): "observation + goal (training: the hindsight collection goal)",
    ("bc", False): "observation only (imitation: no goal, no reward)",
    ("iql", True): "observation + goal, reward relabelled for reaching it (hindsight)",
    ("iql", False): "observation + the task's reward (maze2d: sparse, at the fixed evaluation goal)",
    ("dt", True): "observation + goal + goal-reaching return-to-go (hindsight)",
    ("dt", False): "observation + return-to-go of the task's reward (CORL's DT)",
    ("diffuser", True): "observation; the goal inpainted at the plan's end",
    ("diffuser", False): "observation; value guidance from the task's reward",
    ("mage", True): "observation + goal as the condition (maze and antmaze configs: + the goal-reaching return R, "
                     "each plan asking for its learnt 0.9-expectile given (s, g))",
    ("mage", False): "observation + return-to-go as the condition",
}


def goal_input(task_name: str | Task, algo: str, override: Optional[bool] = None) -> bool:
    """Whether `algo` gets the goal on this task: the task's protocol (above) unless `override` says otherwise.

    Overriding is for variants such as bc-goal (goal-conditioned BC on maze2d); a task without a goal cannot give
    one, and a random-goal task cannot be solved without it, so those overrides are errors (ValueError)."""
    task = get_task(task_name)
    task_name = task.name
    diffuser_ant = algo == "diffuser" and is_antmaze(task)
    default = task.goal_mode == "random" or (task.goal_mode == "fixed" and algo in GOAL_PLANNERS and not diffuser_ant)
    if override is None or override == default:
        return default
    if override and diffuser_ant:
        raise ValueError(f"goal_input true: Diffuser's goal planner drives a point mass, not the ant of '{task_name}'")
    if override and not task.goal_conditioned:
        raise ValueError(f"goal_input true: task '{task_name}' has no goal to give")
    if not override and task.goal_mode == "random":
        raise ValueError(f"goal_input false: task '{task_name}' draws a new goal every episode, so it needs the goal")
    return override


def algo_inputs(task_name: str | Task, algo: str, override: Optional[bool] = None) -> str:
    """One line: what `algo` is given on this task (``INPUTS``, or a generic line for other algorithms)."""
    with_goal = goal_input(task_name, algo, override)
    return INPUTS.get((algo, with_goal), "observation + goal" if with_goal else "observation + the task's reward")
