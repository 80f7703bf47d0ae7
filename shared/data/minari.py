"""Minari datasets as a source: a local dataset by id -> the suite's D4RL-style arrays, and its recorded eval env.

The user downloads the data (``minari download D4RL/kitchen/complete-v2``); nothing here fetches anything. A task
is either a registered name whose ``Task.source`` is "minari" (``env_id`` = the Minari id, e.g.
``minari-kitchen-complete``) or an ad-hoc ``minari:<id>`` name (``--task minari:D4RL/kitchen/complete-v2``).

Conversion (per family, found from the env the dataset recorded):
  * PointMaze: observations = obs["observation"] = [x, y, vx, vy] (as the embedded maze2d data), infos/goal =
    obs["desired_goal"] (the commanded goal; Minari's sparse reward is for reaching it);
  * AntMaze: observations = [achieved_goal (x, y), observation (27), desired_goal (x, y)] = 31 (D4RL's 29 plus the
    goal: Minari's reward is for the commanded goal, so the policy must see it), infos/goal = desired_goal;
  * FrankaKitchen: observations = obs["observation"] (59; the task set is fixed per dataset);
  * flat Box observations (Adroit, MuJoCo locomotion): as stored.
terminals = Minari's terminations, timeouts = its truncations, and the last step of every episode ends a
trajectory (timeout) even when the collector left it open. Each episode stores T + 1 observations; the last one
(the state after the final step) is dropped, as D4RL's files have no next-observation array.

Minari's regenerations are not D4RL's data (``../shared/paper/DATA.md``): results name the Minari id and version.
``minari`` is optional (``requirements-minari.txt``) and imported only when a Minari dataset is used.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from shared.datasets import DatasetError, validate

INSTALL_HINT = "pip install -r requirements-minari.txt"


def _minari():
    """The minari package, or one clear line saying how to install it."""
    try:
        import minari
    except ImportError as e:
        raise DatasetError(f"Minari datasets need the `minari` package, which is not installed ({INSTALL_HINT}; "
                           f"{' '.join(str(e).split())})") from None
    return minari


@functools.lru_cache(maxsize=None)
def open_dataset(dataset_id: str) -> Any:
    """The local MinariDataset (metadata only until episodes are read); a missing id names the download command."""
    minari = _minari()
    from minari.storage.datasets_root_dir import get_dataset_path

    if not (Path(get_dataset_path(dataset_id)) / "data").exists():
        raise DatasetError(f"Minari dataset '{dataset_id}' is not downloaded (looked in "
                           f"{get_dataset_path(dataset_id)}): run `minari download {dataset_id}` "
                           "(or set MINARI_DATASETS_PATH to where it is)")
    try:
        return minari.load_dataset(dataset_id, download=False)
    except Exception as e:  # unsupported format version, damaged metadata, ...
        raise DatasetError(f"Minari dataset '{dataset_id}': cannot open it ({' '.join(str(e).split())})") from None


def family(dataset: Any) -> str:
    """"pointmaze" | "antmaze" | "kitchen" | "flat", from the env the dataset recorded (or its observation space)."""
    spec = dataset.env_spec
    env_id = spec.id if spec is not None else ""
    for prefix, name in (("PointMaze", "pointmaze"), ("AntMaze", "antmaze"), ("FrankaKitchen", "kitchen")):
        if env_id.startswith(prefix):
            return name
    space = dataset.observation_space
    if hasattr(space, "shape") and space.shape is not None and not hasattr(space, "spaces"):
        return "flat"
    raise DatasetError(f"Minari dataset '{dataset.id}': observations of env '{env_id}' ({type(space).__name__}) "
                       "are not a family this suite knows (PointMaze, AntMaze, FrankaKitchen, flat Box)")


def flatten(kind: str, obs: Any) -> np.ndarray:
    """Observations [T, ...] (a dict of arrays for the goal families) -> float32 [T, obs_dim]."""
    if kind == "pointmaze" or kind == "kitchen":
        flat = np.asarray(obs["observation"])
    elif kind == "antmaze":
        flat = np.concatenate([np.asarray(obs["achieved_goal"]), np.asarray(obs["observation"]),
                               np.asarray(obs["desired_goal"])], -1)
    else:
        flat = np.asarray(obs)
        flat = flat.reshape(len(flat), -1)
    return flat.astype(np.float32)


def goal_of(kind: str, obs: Any) -> Optional[np.ndarray]:
    """The commanded goal [T, 2] of the maze families (None otherwise)."""
    if kind in ("pointmaze", "antmaze"):
        return np.asarray(obs["desired_goal"], dtype=np.float32)
    return None


def _first_rows(obs: Any, n: int) -> Any:
    if isinstance(obs, dict):
        return {key: _first_rows(value, n) for key, value in obs.items()}
    return np.asarray(obs)[:n]


def _obs_dim(kind: str, space: Any) -> int:
    """Width of flatten(kind, .) for the dataset's observation space (checked against the converted arrays)."""
    if kind in ("pointmaze", "kitchen"):
        return int(np.prod(space["observation"].shape))
    if kind == "antmaze":
        return int(sum(np.prod(space[key].shape) for key in ("achieved_goal", "observation", "desired_goal")))
    return int(np.prod(space.shape))


def dataset_version(dataset_id: str) -> Optional[int]:
    tail = dataset_id.rsplit("-v", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else None


def source_label(dataset_id: str, dataset: Any = None) -> str:
    """How results name this source: the Minari id (its version is the id's -vN) and the minari format version."""
    fmt = f", written by minari {dataset.minari_version}" if dataset is not None else ""
    return f"minari:{dataset_id} (Minari dataset, version {dataset_version(dataset_id)}{fmt}; not D4RL's files)"


def load(dataset_id: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Arrays in load_dataset's layout and its info dict (source names the Minari id and version)."""
    dataset = open_dataset(dataset_id)
    kind = family(dataset)
    label = f"minari:{dataset_id}"
    parts: Dict[str, list] = {"observations": [], "actions": [], "rewards": [], "terminals": [], "timeouts": []}
    goals: list = []
    try:
        for episode in dataset.iterate_episodes():
            n = len(episode.rewards)
            if n == 0:
                continue
            obs = _first_rows(episode.observations, n)  # T + 1 stored: drop the state after the last step
            parts["observations"].append(flatten(kind, obs))
            parts["actions"].append(np.asarray(episode.actions, dtype=np.float32).reshape(n, -1))
            parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32).reshape(n))
            terminals = np.asarray(episode.terminations, dtype=bool).reshape(n)
            timeouts = np.asarray(episode.truncations, dtype=bool).reshape(n).copy()
            timeouts[-1] |= not terminals[-1]  # the episode boundary ends a trajectory even if left open
            parts["terminals"].append(terminals)
            parts["timeouts"].append(timeouts)
            goal = goal_of(kind, obs)
            if goal is not None:
                goals.append(goal)
    except DatasetError:
        raise
    except Exception as e:  # damaged or truncated storage
        raise DatasetError(f"dataset {label}: cannot read its episodes ({' '.join(str(e).split())})") from None
    if not parts["observations"]:
        raise DatasetError(f"dataset {label}: dataset is empty (0 transitions)")
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    if goals:
        arrays["infos/goal"] = np.concatenate(goals)
    validate(arrays, label, _obs_dim(kind, dataset.observation_space))
    path = Path(dataset.spec.data_path)
    info = {"source": source_label(dataset_id, dataset), "path": str(path), "recipe": "minari",
            "recipe_version": dataset_version(dataset_id), "seed": None, "size": len(arrays["rewards"]),
            "family": kind, "ref_scores": reference_scores(dataset_id)}
    return arrays, info


@functools.lru_cache(maxsize=None)
def reference_scores(dataset_id: str) -> Optional[Tuple[float, float]]:
    """(ref_min_score, ref_max_score) from the dataset's metadata; None (said once, on stderr) when it has none."""
    metadata = open_dataset(dataset_id).storage.metadata
    lo, hi = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if lo is None or hi is None:
        print(f"note: Minari dataset '{dataset_id}' has no ref_min_score/ref_max_score: normalised scores are NaN, "
              "only raw returns are reported", file=sys.stderr)
        return None
    return float(np.asarray(lo).item()), float(np.asarray(hi).item())


def patch_kitchen_for_mujoco4() -> None:
    """Let FrankaKitchen-v1 build on gymnasium-robotics 1.4.2 + mujoco 4 (the pinned stack).

    gymnasium_robotics.utils.mujoco_utils asserts ``model.jnt_type[i] in (mjtJoint.mjJNT_HINGE, ...)``; under mujoco
    4 an mjtJoint no longer equals a numpy int, so the assert fails for every hinge joint and the kitchen cannot be
    built. Its module-level ``mujoco`` is replaced by a view whose mjtJoint members are plain ints (equal to numpy
    ints); everything else is the real mujoco module. Done only where the comparison is broken, once."""
    import mujoco
    from gymnasium_robotics.utils import mujoco_utils

    hinge = mujoco.mjtJoint.mjJNT_HINGE
    if hinge == np.int32(int(hinge)) or isinstance(mujoco_utils.mujoco, _IntJointTypes):
        return
    mujoco_utils.mujoco = _IntJointTypes(mujoco)


class _IntJointTypes:
    def __init__(self, module: Any) -> None:
        self._module = module
        names = [n for n in dir(module.mjtJoint) if n.startswith("mjJNT_")]
        self.mjtJoint = type("mjtJoint", (), {n: int(getattr(module.mjtJoint, n)) for n in names})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class MinariEnv:
    """The env the dataset recorded for evaluation (``recover_environment(eval_env=True)``), with the interface of
    shared.mazes.MazeEnv: flat float32 observations (flattened as the dataset), reset -> (obs, {"goal": [2]})."""

    def __init__(self, dataset_id: str, max_episode_steps: Optional[int] = None):
        dataset = open_dataset(dataset_id)
        self.kind = family(dataset)
        if self.kind == "kitchen":
            patch_kitchen_for_mujoco4()
        try:
            self.env = dataset.recover_environment(eval_env=True)
        except Exception as e:  # the env's package (gymnasium-robotics, mujoco) missing or too old
            raise DatasetError(f"Minari dataset '{dataset_id}': cannot build its evaluation env "
                               f"({' '.join(str(e).split())})") from None
        spec_steps = self.env.spec.max_episode_steps if self.env.spec is not None else None
        self.max_episode_steps = spec_steps or max_episode_steps  # the recorded env's time limit is the authority
        self.steps = 0
        self.goal = np.zeros(2, np.float32)

    def _flat(self, obs: Any) -> np.ndarray:
        batch = {k: np.asarray(v)[None] for k, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]
        return flatten(self.kind, batch)[0]

    def reset(self, seed: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        obs, _ = self.env.reset(seed=seed)
        goal = goal_of(self.kind, {k: np.asarray(v)[None] for k, v in obs.items()}) if isinstance(obs, dict) else None
        self.goal = goal[0] if goal is not None else np.zeros(2, np.float32)
        self.steps = 0
        return self._flat(obs), {"goal": self.goal.copy()}

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.steps += 1
        if self.max_episode_steps is not None:
            truncated = bool(truncated) or self.steps >= self.max_episode_steps
        return self._flat(obs), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()
