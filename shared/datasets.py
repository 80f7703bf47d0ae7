"""Offline datasets: generation (D4RL's maze2d recipe on gymnasium-robotics), caching, validation and loading.

Embedded maze tasks train on data this module generates, deterministically from a seed, following D4RL's
scripts/generation/generate_maze2d_datasets.py: a waypoint controller with N(0, 0.5) action noise runs one long
continuing episode; each time it reaches its goal (or after max_episode_steps) a new random goal cell is drawn.
These are NOT the original D4RL files (different simulator stack and coordinates); everything that reports
a number on them says so via the `source` field of `load_dataset`'s info. The embedded AntMaze datasets follow
D4RL's antmaze recipe in shared/data/antmaze.py (a ``Recipe``), the embedded locomotion datasets (hopper,
halfcheetah, walker2d) D4RL's locomotion recipe with the project's SAC in shared/data/locomotion.py, through the
same cache, writer and checks.

Layout (D4RL's HDF5): observations [N, 4] = [x, y, vx, vy], actions [N, 2], rewards [N], terminals [N] (all
False), timeouts [N] (True on the last step before each goal switch and on the last step of each chunk),
infos/goal [N, 2] (the goal being collected for), infos/qpos [N, 2], infos/qvel [N, 2] (simulator state before
the step; qvel is the unclipped velocity, as observed). Replaying a transition: set the point env's state to
(qpos[t], qvel[t]) and call PointEnv.step(actions[t]) (which clips the velocity to +-5 first) -> observations[t+1].
rewards[t] = 1 iff the position AFTER the step is within 0.45 of the centre of the task's evaluation goal cell, so
it equals the reward the evaluation env gives for that transition (D4RL relabelled from observations[t]).

CLI:
    python -m shared.datasets generate TASK [--size N] [--seed S] [--out PATH] [--workers W]
    python -m shared.datasets info PATH
    python -m shared.datasets verify PATH [--task TASK]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import h5py
import numpy as np
from tqdm import tqdm

from shared.tasks import POINT_MAZE_GOAL_RADIUS, Task, get_task, is_locomotion

RECIPE = "d4rl-maze2d-waypoint"
RECIPE_VERSION = 1  # bump whenever generated content changes: cached files of other versions are not reused
CHUNK_SIZE = 250_000  # transitions per independent continuing run (the unit of parallelism and of seeding)
ACTION_NOISE = 0.5  # std of the Gaussian noise added to the controller's action (D4RL: --noisy)
GOAL_JITTER = 0.1  # collection goals are cell centres + U(-0.1, 0.1) per axis (D4RL's set_target)
START_NOISE = 0.25  # start position noise (gymnasium-robotics' reset noise)
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
GENERATED_SOURCE = "generated: D4RL maze2d recipe on gymnasium-robotics (not the original D4RL files)"

# Observation sizes of the original D4RL tasks, by name prefix (checked when loading the user's files).
D4RL_OBS_DIMS = {"maze2d": 4, "antmaze": 29, "hopper": 11, "halfcheetah": 17, "walker2d": 17, "kitchen": 60,
                 "pen": 45, "door": 39, "hammer": 46, "relocate": 39}


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message is one line naming the file and the problem."""


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def _generate_chunk(
    maze: str,
    eval_goal_cell: Tuple[int, int],
    max_episode_steps: int,
    seed: int,
    chunk_index: int,
    length: int,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, np.ndarray]:
    """One continuing run of `length` transitions, seeded by SeedSequence([seed, chunk_index]) only."""
    from shared.mazes import PointMazeSim, WaypointController, cell_to_xy, empty_cells

    goal_seq, plan_seq, noise_seq = np.random.SeedSequence([seed, chunk_index]).spawn(3)
    goal_rng, noise_rng = np.random.default_rng(goal_seq), np.random.default_rng(noise_seq)
    sim = PointMazeSim(maze)
    grid = sim.grid
    cells = empty_cells(grid)
    eval_goal = cell_to_xy(grid, eval_goal_cell)

    def draw_goal() -> Tuple[float, float]:
        centre = cell_to_xy(grid, cells[goal_rng.integers(len(cells))])
        gx, gy = centre + goal_rng.uniform(-GOAL_JITTER, GOAL_JITTER, size=2)
        return float(gx), float(gy)

    start = cell_to_xy(grid, cells[goal_rng.integers(len(cells))]) + goal_rng.uniform(-START_NOISE, START_NOISE, 2)
    sim.set_state(start, np.zeros(2))
    controller = WaypointController(grid, np.random.default_rng(plan_seq))
    goal = draw_goal()
    controller.reset(goal)
    noise = (ACTION_NOISE * noise_rng.standard_normal((length, 2))).tolist()

    states: List[Tuple[float, ...]] = []
    actions: List[Tuple[float, float]] = []
    goals: List[Tuple[float, float]] = []
    timeouts = np.zeros(length, dtype=bool)
    qpos, qvel = sim.qpos, sim.qvel
    steps_on_goal = 0
    for t in range(length):
        x, y = qpos.tolist()
        vx, vy = qvel.tolist()
        states.append((x, y, vx, vy))
        ax, ay, done = controller.act_xy(x, y, vx, vy)
        ax = min(1.0, max(-1.0, ax + noise[t][0]))
        ay = min(1.0, max(-1.0, ay + noise[t][1]))
        actions.append((ax, ay))
        goals.append(goal)
        steps_on_goal += 1
        switch = done or steps_on_goal >= max_episode_steps
        sim.step(ax, ay)
        if switch:
            # D4RL's script keeps the pre-step state after a goal switch (re-appending it); we do not: the
            # simulator simply continues, so observations[t + 1] is always the true successor of step t.
            timeouts[t] = True
            goal = draw_goal()
            controller.reset(goal)
            steps_on_goal = 0
        if progress is not None and (t + 1) % 10_000 == 0:
            progress(10_000)
    states.append(tuple(qpos.tolist()) + tuple(qvel.tolist()))
    sim.close()
    if progress is not None:
        progress(length % 10_000)

    states_arr = np.asarray(states, dtype=np.float64)
    timeouts[-1] = True  # the next chunk is a separate run
    distance = np.linalg.norm(states_arr[1:, :2] - eval_goal, axis=1)
    return {
        "observations": states_arr[:-1].astype(np.float32),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": (distance <= POINT_MAZE_GOAL_RADIUS).astype(np.float32),
        "terminals": np.zeros(length, dtype=bool),
        "timeouts": timeouts,
        "infos/goal": np.asarray(goals, dtype=np.float32),
        "infos/qpos": states_arr[:-1, :2].astype(np.float32),
        "infos/qvel": states_arr[:-1, 2:].astype(np.float32),
    }


_worker_counter: Any = None  # shared transition counter of a worker process (feeds the parent's progress bar)


def _init_worker(counter: Any) -> None:
    global _worker_counter
    _worker_counter = counter


def _count(n: int) -> None:
    with _worker_counter.get_lock():
        _worker_counter.value += n


def _chunk_job(args: Tuple[Any, ...]) -> Dict[str, np.ndarray]:
    chunk_fn, chunk_args = args  # a module-level function: pickled by reference
    return chunk_fn(*chunk_args, progress=_count)


def _chunks(size: int, chunk_size: int) -> List[Tuple[int, int]]:
    return [(i, min(chunk_size, size - start)) for i, start in enumerate(range(0, size, chunk_size))]


def generate_arrays(
    task_name: str, size: Optional[int] = None, seed: int = 0, workers: int = 1, progress: bool = True
) -> Dict[str, np.ndarray]:
    """Generate a dataset in memory; identical content for any number of workers."""
    task = _data_task(task_name)
    size = int(size or task.dataset_size)
    if size <= 0:
        raise ValueError(f"dataset size must be positive, got {size}")
    jobs = [
        (task.maze, tuple(task.eval_goal_cell), task.max_episode_steps, seed, index, length)
        for index, length in _chunks(size, CHUNK_SIZE)
    ]
    return run_chunks(_generate_chunk, jobs, size, f"generating {task.name}", workers, progress)


def run_chunks(chunk_fn: Callable[..., Dict[str, np.ndarray]], jobs: List[Tuple[Any, ...]], total: int, desc: str,
               workers: int = 1, progress: bool = True) -> Dict[str, np.ndarray]:
    """``chunk_fn(*job, progress=callback)`` for every job, in a pool of ``workers`` processes, with one progress bar
    over ``total`` transitions; the parts are concatenated in job order, so the content never depends on ``workers``.
    Any recipe's generator (maze2d here, shared/data/antmaze.py) runs through this."""
    bar = tqdm(total=total, unit="transition", desc=desc, disable=not progress, smoothing=0.1)
    if workers <= 1 or len(jobs) == 1:
        parts = [chunk_fn(*job, progress=bar.update) for job in jobs]
    else:
        # spawn: children start clean (no inherited threads or MuJoCo state); imap keeps the chunk order.
        ctx = multiprocessing.get_context("spawn")
        counter = ctx.Value("q", 0)
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,)) as pool:
            parts = []
            results = pool.imap(_chunk_job, [(chunk_fn, job) for job in jobs])
            while len(parts) < len(jobs):
                try:
                    parts.append(results.next(timeout=0.5))
                except multiprocessing.TimeoutError:
                    pass
                bar.update(counter.value - bar.n)
    bar.close()
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def library_versions() -> Dict[str, str]:
    import gymnasium
    import gymnasium_robotics
    import mujoco

    from shared.utils import cpu_model  # here: shared.utils imports torch, which spawned workers skip

    version = getattr(gymnasium_robotics, "__version__", None) or _installed("gymnasium_robotics")
    # numpy, torch (the ant recipe's controller is a torch network) and the CPU shape the actions' rounding too
    return {"gymnasium": gymnasium.__version__, "gymnasium_robotics": version, "mujoco": mujoco.__version__,
            "numpy": np.__version__, "torch": _installed("torch"), "cpu": cpu_model() or "unknown"}


def _installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write the HDF5 file through ``shared.utils.atomic_write``: readers never see a half-written file."""
    from shared.utils import atomic_write  # here: shared.utils imports torch, which spawned workers skip

    def write(tmp_name: str) -> None:
        with h5py.File(tmp_name, "w") as f:
            for key, array in arrays.items():
                f.create_dataset(key, data=array, compression="gzip", shuffle=True)
            for key, value in attrs.items():
                f.attrs[key] = value
            f.flush()
            f.attrs["complete"] = True  # last: a file without it was interrupted

    atomic_write(path, write)


@dataclass(frozen=True)
class Recipe:
    """How one family of embedded datasets is generated and checked (maze2d: this module; antmaze:
    shared/data/antmaze.py). ``expected`` attributes must match for a cached file to be reused; ``attrs`` are
    recorded only; ``check`` (optional) is the family's deep verification (re-simulation), run after generating and
    by ``verify``."""

    name: str
    version: int
    source: str
    obs_dim: int
    generate_arrays: Callable[..., Dict[str, np.ndarray]]  # (task_name, size, seed, workers, progress) -> arrays
    default_workers: int = 1  # worker processes when the caller does not say (load_dataset)
    expected: Mapping[str, Any] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    check: Optional[Callable[[Mapping[str, np.ndarray], str, Any], Dict[str, Any]]] = None  # (arrays, task, path)


def recipe_of(task_name: str) -> Recipe:
    """The generation recipe of an embedded task's dataset."""
    task = _data_task(task_name)
    if task.name.startswith("antmaze"):
        from shared.data.antmaze import recipe  # lazy: imports torch and the ant controller

        return recipe()
    if is_locomotion(task):
        from shared.data.locomotion import recipe as locomotion_recipe  # lazy: gymnasium's MuJoCo envs

        return locomotion_recipe(task.name)  # DatasetError (one line) while the SAC policies are not trained
    return Recipe(RECIPE, RECIPE_VERSION, GENERATED_SOURCE, 4, generate_arrays,
                  attrs={"chunk_size": CHUNK_SIZE, "action_noise": ACTION_NOISE})


def cache_dir() -> Path:
    return Path(os.environ.get("MAGE_DATA_DIR", "~/.cache/mage-suite/datasets")).expanduser()


def cache_path(task_name: str, size: Optional[int] = None, seed: int = 0) -> Path:
    task = _data_task(task_name)
    size = int(size or task.dataset_size)
    return cache_dir() / f"{task.name}_n{size}_seed{seed}_recipe{recipe_of(task.name).version}.hdf5"


def _data_task(task_name: str) -> Task:
    """The task whose dataset `task_name` trains on (multi2d-* -> maze2d-*); embedded (maze, locomotion) tasks only."""
    task = get_task(get_task(task_name).data_name)
    if task.source != "embedded" or (task.maze is None and not is_locomotion(task)):
        raise ValueError(f"task '{task_name}' has no generation recipe (only embedded tasks are generated)")
    return task


def _expected_attrs(task_name: str, size: Optional[int], seed: int) -> Dict[str, Any]:
    task = _data_task(task_name)
    recipe = recipe_of(task.name)
    return {"recipe": recipe.name, "recipe_version": recipe.version, "task": task.name,
            "size": int(size or task.dataset_size), "seed": int(seed), **recipe.expected}


def _check_generated(path: Path, expected: Mapping[str, Any]) -> Tuple[Optional[str], Optional[Dict[str, np.ndarray]]]:
    """(None, arrays) if `path` is a complete, valid generation with these attributes, else (reason, None)."""
    if not path.exists():
        return "missing", None
    try:
        attrs = read_attrs(path)
        if not attrs.get("complete", False):
            return "incomplete (no 'complete' attribute)", None
        for key, value in expected.items():
            if attrs.get(key) != value:
                return f"attribute {key}={attrs.get(key)!r}, expected {value!r}", None
        arrays = read_arrays(path)
        validate(arrays, path, obs_dim=recipe_of(expected["task"]).obs_dim)
    except DatasetError as e:
        return str(e), None
    if content_hash(arrays) != attrs.get("content_sha256"):
        return "content hash does not match", None
    return None, arrays


def generate(
    task_name: str,
    size: Optional[int] = None,
    seed: int = 0,
    out: Optional[os.PathLike] = None,
    workers: Optional[int] = 1,
    progress: bool = True,
) -> Path:
    """Generate (or reuse) the dataset of an embedded maze task and return its path.

    Without `out` it goes to the cache (see cache_path). An existing file is reused only if it is complete, has
    the same recipe version / task / size / seed and passes validation and its content hash. An existing `out` that
    is not such a file is never overwritten; a bad file in the cache is replaced. ``workers=None``: the recipe's
    default (antmaze: every core).
    """
    task = _data_task(task_name)
    expected = _expected_attrs(task_name, size, seed)
    path = Path(out).expanduser() if out is not None else cache_path(task_name, size, seed)
    if path.exists():
        reason, _ = _check_generated(path, expected)
        if reason is None:
            return path
        if out is not None:
            raise FileExistsError(f"{path} exists and is not a matching generated dataset ({reason}); "
                                  "remove it or choose another --out")
        print(f"regenerating cached dataset {path}: {reason}", file=sys.stderr)
    recipe = recipe_of(task.name)
    import torch  # here: the maze recipes need only numpy

    # the caller's random numbers stay as they were: building the ant's controller draws from torch's generator, so a
    # run that generated its data would otherwise start from other weights than the same seed run on cached data
    with torch.random.fork_rng(devices=[]):
        arrays = recipe.generate_arrays(task.name, expected["size"], seed, recipe.default_workers if workers is None
                                        else workers, progress)
        if recipe.check is not None:  # a generator that drifted from the simulator fails here, before it is cached
            recipe.check(arrays, task.name, path)
    attrs = dict(expected, **recipe.attrs, source=recipe.source, content_sha256=content_hash(arrays),
                 **library_versions())
    _write_atomic(path, arrays, attrs)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reading and validation
# ----------------------------------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def read_attrs(path: os.PathLike) -> Dict[str, Any]:
    try:
        with h5py.File(path, "r") as f:
            return {key: (value.item() if isinstance(value, np.generic) else value) for key, value in f.attrs.items()}
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DatasetError(f"dataset {path}: cannot read HDF5 file ({_one_line(e)})") from e


def read_arrays(path: os.PathLike) -> Dict[str, np.ndarray]:
    """The D4RL keys plus any infos/* of an HDF5 file (no validation)."""
    try:
        with h5py.File(path, "r") as f:
            arrays = {key: f[key][()] for key in REQUIRED_KEYS if key in f and isinstance(f[key], h5py.Dataset)}
            if "infos" in f and isinstance(f["infos"], h5py.Group):
                for key, item in f["infos"].items():
                    if isinstance(item, h5py.Dataset):
                        arrays[f"infos/{key}"] = item[()]
            return arrays
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DatasetError(f"dataset {path}: cannot read HDF5 file ({_one_line(e)})") from e


def validate(data: Mapping[str, np.ndarray], path: Any = "<memory>", obs_dim: Optional[int] = None) -> None:
    """Check a D4RL-style dict; raise DatasetError with a one-line message naming `path` on the first problem."""

    def fail(problem: str) -> None:
        raise DatasetError(f"dataset {path}: {problem}")

    for key in REQUIRED_KEYS:
        if key not in data:
            fail(f"key '{key}' missing")
    n = len(data["observations"]) if np.ndim(data["observations"]) > 0 else 0
    if n == 0:
        fail("dataset is empty (0 transitions)")
    for key in ("observations", "actions"):
        if np.ndim(data[key]) != 2:
            fail(f"'{key}' must be 2-D, got shape {np.shape(data[key])}")
    for key in ("rewards", "terminals", "timeouts"):
        if np.ndim(data[key]) != 1:
            fail(f"'{key}' must be 1-D, got shape {np.shape(data[key])}")
    for key in REQUIRED_KEYS:
        if len(data[key]) != n:
            fail(f"'{key}' has {len(data[key])} rows but 'observations' has {n}")
    for key in ("observations", "actions", "rewards"):
        if not np.issubdtype(data[key].dtype, np.floating):
            fail(f"'{key}' must be floating point, got {data[key].dtype}")
    for key in ("terminals", "timeouts"):
        if not (data[key].dtype == bool or np.issubdtype(data[key].dtype, np.number)):
            fail(f"'{key}' must be boolean, got {data[key].dtype}")
    for key, array in data.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            fail(f"'{key}' contains NaN or inf")
    if obs_dim is not None and data["observations"].shape[1] != obs_dim:
        fail(f"observations have size {data['observations'].shape[1]}, the task's env expects {obs_dim}")


def task_obs_dim(task: Task) -> Optional[int]:
    if task.source == "embedded" and not is_locomotion(task):  # (locomotion: by prefix, with no policies needed)
        return recipe_of(task.name).obs_dim
    return next((dim for prefix, dim in D4RL_OBS_DIMS.items() if task.name.startswith(prefix)), None)


def _finish(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    for key in ("terminals", "timeouts"):
        arrays[key] = arrays[key].astype(bool)
    return arrays


def _d4rl_local_file(task: Task) -> Optional[Path]:
    """The original D4RL file for this task if the d4rl package is installed and the file was downloaded."""
    try:
        import d4rl  # noqa: F401
        import d4rl.infos
        import d4rl.offline_env
    except Exception:
        return None
    url = d4rl.infos.DATASET_URLS.get(task.env_id)
    if url is None:
        return None
    path = Path(getattr(d4rl.offline_env, "DATASET_PATH", "~/.d4rl/datasets")).expanduser() / Path(url).name
    return path if path.exists() else None


def load_dataset(
    task_name: str | Task,
    dataset_path: Optional[os.PathLike] = None,
    size: Optional[int] = None,
    seed: int = 0,
    workers: Optional[int] = None,
) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Arrays (D4RL keys + infos/*) and an info dict (source, path, recipe, recipe_version, seed, size).

    Order: explicit `dataset_path`; the d4rl package's local file (original D4RL tasks) or the local Minari
    dataset (Minari tasks, shared/data/minari.py); the project cache; generation into the cache (embedded tasks only;
    ``workers`` None: the recipe's default, 1 for maze2d, every core for antmaze).
    """
    task = get_task(task_name)
    task_name = task.name
    obs_dim = task_obs_dim(task)
    if dataset_path is not None:
        path = Path(dataset_path).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset {path}: file not found")
        attrs = read_attrs(path)
        if "recipe" in attrs and not attrs.get("complete", False):
            raise DatasetError(f"dataset {path}: incomplete (generation was interrupted; no 'complete' attribute)")
        if "recipe" in attrs and attrs.get("task") != task.data_name:
            raise DatasetError(f"dataset {path}: generated for task '{attrs.get('task')}', not '{task.data_name}'")
        arrays = read_arrays(path)
        validate(arrays, path, obs_dim)
        source = attrs.get("source", GENERATED_SOURCE) if "recipe" in attrs else f"user file {path}"
        return _finish(arrays), _info(source, path, attrs, len(arrays["rewards"]))

    if task.source == "minari":
        from shared.data.minari import load as load_minari  # lazy: minari is an optional dependency

        arrays, info = load_minari(task.env_id)
        return _finish(arrays), info

    if task.source == "d4rl":
        path = _d4rl_local_file(task)
        if path is None:
            raise DatasetError(
                f"dataset for '{task_name}': no local D4RL data (install d4rl and download it, or pass dataset_path)"
            )
        arrays = read_arrays(path)
        validate(arrays, path, obs_dim)
        return _finish(arrays), _info("original D4RL file", path, {}, len(arrays["rewards"]))

    path = cache_path(task.data_name, size, seed)
    source = recipe_of(task.data_name).source
    reason, arrays = _check_generated(path, _expected_attrs(task.data_name, size, seed))
    if reason is not None:  # missing or unusable: (re)generate it
        path = generate(task.data_name, size=size, seed=seed, workers=workers)
        arrays = read_arrays(path)
        validate(arrays, path, obs_dim)
    return _finish(arrays), _info(source, path, read_attrs(path), len(arrays["rewards"]))


def _info(source: str, path: Path, attrs: Mapping[str, Any], size: int) -> Dict[str, Any]:
    return {"source": source, "path": str(path), "recipe": attrs.get("recipe"),
            "recipe_version": attrs.get("recipe_version"), "seed": attrs.get("seed"), "size": size}


def verify(path: os.PathLike, task_name: Optional[str] = None) -> Dict[str, Any]:
    """Validate a file (and its content hash when it carries one); returns its attributes."""
    path = Path(path)
    attrs = read_attrs(path)
    if "recipe" in attrs and not attrs.get("complete", False):
        raise DatasetError(f"dataset {path}: incomplete (no 'complete' attribute)")
    task = get_task(task_name or attrs["task"]) if (task_name or "task" in attrs) else None
    arrays = read_arrays(path)
    validate(arrays, path, task_obs_dim(task) if task else None)
    if "content_sha256" in attrs and content_hash(arrays) != attrs["content_sha256"]:
        raise DatasetError(f"dataset {path}: content hash does not match the 'content_sha256' attribute")
    if task is not None and task.source == "embedded":
        recipe = recipe_of(task.name)
        if recipe.check is not None:  # antmaze: re-simulate sampled transitions, reward labels, maze coverage
            attrs = dict(attrs, **{f"check/{k}": v for k, v in recipe.check(arrays, task.data_name, path).items()})
    return attrs


def speed_summary(observations: np.ndarray, velocity: slice = slice(2, 4)) -> str:
    """Speeds in a maze dataset (the ``velocity`` columns: a point mass's obs = x, y, vx, vy; an ant's x-y velocity
    is 15:17): how often, and how long at a time, the data's collector is nearly at rest (evaluation episodes start
    at rest; docs/data.md)."""
    speed = np.linalg.norm(observations[:, velocity], axis=1)
    parts = [f"speed: median {np.median(speed):.2f}"]
    for v in (0.1, 0.3):
        slow = np.r_[False, speed < v, False]
        edges = np.flatnonzero(slow[1:] != slow[:-1])  # starts and ends of the runs below v
        longest = int((edges[1::2] - edges[::2]).max()) if len(edges) else 0
        parts.append(f"{np.mean(speed < v):.2%} of states slower than {v} (longest run {longest} steps)")
    return "; ".join(parts)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.datasets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate an embedded maze2d, antmaze or locomotion dataset")
    gen.add_argument("task")
    gen.add_argument("--size", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, default=None)
    gen.add_argument("--workers", type=int, default=None,
                     help="processes (default: maze2d 1, antmaze and locomotion every core)")
    info = sub.add_parser("info", help="print a dataset's attributes and array shapes")
    info.add_argument("path", type=Path)
    ver = sub.add_parser("verify", help="validate a dataset file (and its content hash)")
    ver.add_argument("path", type=Path)
    ver.add_argument("--task", default=None)
    args = parser.parse_args(argv)

    try:
        if args.command == "generate":
            path = generate(args.task, size=args.size, seed=args.seed, out=args.out, workers=args.workers)
            print(path)
        elif args.command == "info":
            for key, value in sorted(read_attrs(args.path).items()):
                print(f"{key}: {value}")
            arrays = read_arrays(args.path)
            for key, array in arrays.items():
                print(f"{key}: {array.dtype} {array.shape}")
            if read_attrs(args.path).get("recipe") == "d4rl-maze2d-waypoint":
                print(speed_summary(arrays["observations"]))
        else:
            attrs = verify(args.path, args.task)
            checks = ", ".join(f"{k[6:]}={v}" for k, v in attrs.items() if k.startswith("check/"))
            print(f"OK {args.path}" + (f" ({checks})" if checks else ""))
    except (DatasetError, FileExistsError, KeyError, ValueError) as e:
        sys.exit(f"error: {_one_line(e)}")


if __name__ == "__main__":
    main()
