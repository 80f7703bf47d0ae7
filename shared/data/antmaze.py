"""The embedded AntMaze datasets: D4RL's antmaze recipe on the maintained stack (shared/data/ant.py's 10 Hz, gear-30
ant in gymnasium-robotics' AntMaze-v5, driven by the project's goal-reaching controller, shared/data/ant_controller).

D4RL's scripts/generation/generate_ant_maze_datasets.py, as followed here:
- episodes of 1,000 steps (``timeouts`` on the last one; D4RL's loop yields 1,001 per episode, a quirk not kept),
  1e6 transitions in all; at each episode start a reset and a new commanded goal;
- starts: umaze from D4RL's reset cell (1, 1) with the ant's reset noise; every other dataset (multistart) from a
  uniformly drawn free cell at its position + U(0, 1) m along +column and +row (D4RL's ``_get_reset_location``),
  where play mazes never start in a play goal cell (D4RL marks those cells as walls for resets);
- commanded goals (``infos/goal``): umaze the fixed goal cell (3, 1); "play" one of D4RL's hand-picked goal cells
  (``PLAY_GOAL_CELLS``); "diverse" any free cell; each at the cell position + U(0, 1) + U(0, 0.5) m along +column and
  +row (D4RL's ``goal_sampler``). D4RL's code does not show how umaze-diverse drew its goals: any free cell here;
- action = controller(observation, waypoint) + N(0, 0.2), clipped to [-1, 1]; the waypoint is the next cell of a
  BFS path to the goal with D4RL's U(0, 1) m jitter, redrawn every step, or the goal itself in its cell
  (ant.MazeWaypoints);
- reward = terminal = 1[|xy' - g_eval| <= 0.5], xy' the torso after the step and g_eval the FIXED evaluation goal
  (D4RL's relabel_antmaze_rewards.py, v2), not the commanded goal. D4RL labelled against one random draw of its
  evaluation goal (whichever ``gym.make`` drew); we use the mean of that draw, the goal cell + 0.75 m along +column
  and +row (``label_goal``).

Layout (D4RL's HDF5): observations [N, 29] = qpos[:15] + qvel[:14] (float32), actions [N, 8], rewards [N],
terminals [N], timeouts [N], infos/goal [N, 2] (the commanded goal), infos/qpos [N, 15], infos/qvel [N, 14] (the
state before the step; D4RL logged the state after it). Coordinates are gymnasium-robotics' (see ant.py).
Replaying a transition: set the maze env's (qpos[t], qvel[t]), step with actions[t] -> observations[t + 1].

Determinism: every episode draws from its own generators, seeded by (seed, episode index); a chunk of
``CHUNK_EPISODES`` episodes runs in lockstep (one batched controller call per step) in one process, so the content
depends on neither the number of worker processes nor which worker ran a chunk.

    python -m shared.datasets generate antmaze-umaze [--size N] [--workers W]
    python -m shared.datasets verify PATH        # + re-simulation, reward labels, maze coverage (``check``)
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import mujoco
import numpy as np

from shared.data import ant
from shared.datasets import DatasetError, Recipe, run_chunks
from shared.mazes import bfs_path, cell_to_xy, empty_cells, maze_map, xy_to_cell
from shared.tasks import get_task

RECIPE = "d4rl-antmaze"
RECIPE_VERSION = 1  # bump whenever generated content changes: cached files of other versions are not reused
EPISODE_STEPS = 1000  # D4RL's --max_episode_steps
CHUNK_EPISODES = 20  # episodes stepped in lockstep in one process (the unit of parallelism)
ACTION_NOISE = 0.2  # D4RL's --noisy: N(0, 0.2) on the controller's action, then clip
CONTROLLER_PATH = Path(__file__).with_name("ant_controller.pt")
SOURCE = ("generated: D4RL antmaze recipe (10 Hz gear-30 ant, SAC controller + BFS waypoints) on gymnasium-robotics "
          "(not the original D4RL files)")
LABEL_GOAL_OFFSET = 0.75  # mean of D4RL's goal noise U(0, 1) + U(0, 0.5) per axis (metres, +column and +row)
RESIM_TOLERANCE = 1e-4  # max |re-simulated - logged| next observation (float32 state, a cold solver warm start)

# D4RL's hand-picked goal cells of the play mazes ('G' cells of BIG_MAZE and HARDEST_MAZE, d4rl/locomotion/maze_env.py)
PLAY_GOAL_CELLS = {
    "medium": [(2, 6), (5, 1), (6, 5)],
    "large": [(1, 6), (3, 5), (3, 10), (5, 2), (7, 4), (7, 6), (7, 9)],
}
# task -> (maze, start rule, goal rule): "fixed" D4RL's reset cell / the umaze goal, "play" as above, "any" free cell
VARIANTS = {
    "antmaze-umaze": ("umaze", "fixed", "fixed"),
    "antmaze-umaze-diverse": ("umaze", "any", "any"),
    "antmaze-medium-play": ("medium", "play", "play"),
    "antmaze-medium-diverse": ("medium", "any", "any"),
    "antmaze-large-play": ("large", "play", "play"),
    "antmaze-large-diverse": ("large", "any", "any"),
}
Cell = Tuple[int, int]


# ----------------------------------------------------------------------------------------------------------------
# D4RL's start and goal rules
# ----------------------------------------------------------------------------------------------------------------


def d4rl_offset(cell: Sequence[int], grid: Sequence[Sequence[Any]], d_col: float, d_row: float) -> np.ndarray:
    """A cell's centre moved d_col metres along +column and d_row along +row (D4RL's frame; our y runs against rows)."""
    return cell_to_xy(grid, cell) * ant.MAZE_SCALING + np.array([d_col, -d_row])


def label_goal(maze: str) -> np.ndarray:
    """The fixed goal the rewards are labelled for: the evaluation goal cell + the mean of D4RL's goal noise."""
    return d4rl_offset(ant.EVAL_GOAL_CELLS[maze], maze_map(maze), LABEL_GOAL_OFFSET, LABEL_GOAL_OFFSET)


def start_cells(task_name: str) -> List[Cell]:
    """Cells an episode of this dataset may start in (D4RL: reset cell; multistart: free cells but play goals)."""
    maze, rule, _ = VARIANTS[task_name]
    if rule == "fixed":
        return [tuple(ant.EVAL_START_CELL)]
    free = empty_cells(maze_map(maze))
    return [c for c in free if c not in PLAY_GOAL_CELLS.get(maze, [])] if rule == "play" else free


def goal_cells(task_name: str) -> List[Cell]:
    """Cells the commanded goals are drawn from (uniformly)."""
    maze, _, rule = VARIANTS[task_name]
    if rule == "fixed":
        return [tuple(ant.EVAL_GOAL_CELLS[maze])]
    return list(PLAY_GOAL_CELLS[maze]) if rule == "play" else empty_cells(maze_map(maze))


def draw_episode(task_name: str, rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(qpos, qvel, commanded goal) of a new episode by D4RL's rules, from one generator."""
    maze, start_rule, _ = VARIANTS[task_name]
    grid = maze_map(maze)
    starts, goals = start_cells(task_name), goal_cells(task_name)
    start = starts[rng.integers(len(starts))]
    # D4RL's AntEnv.reset_model: qpos + U(-0.1, 0.1), qvel + 0.1 N(0, 1)
    qpos = init_qpos + rng.uniform(-ant.RESET_NOISE, ant.RESET_NOISE, init_qpos.shape)
    qvel = init_qvel + ant.RESET_NOISE * rng.standard_normal(init_qvel.shape)
    if start_rule == "fixed":  # D4RL's umaze: the ant at its reset cell, reset noise on x, y too
        qpos[:2] = cell_to_xy(grid, start) * ant.MAZE_SCALING + qpos[:2] - init_qpos[:2]
    else:  # multistart: _get_reset_location replaces x, y by the cell + U(0, 0.5) * 0.5 * scaling per axis
        qpos[:2] = d4rl_offset(start, grid, *(rng.uniform(0.0, 0.5, 2) * 0.5 * ant.MAZE_SCALING))
    goal_cell = goals[rng.integers(len(goals))]
    # goal_sampler: _rowcol_to_xy(add_random_noise) U(0, 0.25 * scaling), then + U(0, 0.5) * 0.25 * scaling
    noise = rng.uniform(0.0, 0.25 * ant.MAZE_SCALING, 2) + rng.uniform(0.0, 0.5, 2) * 0.25 * ant.MAZE_SCALING
    return qpos, qvel, d4rl_offset(goal_cell, grid, *noise)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def controller_sha256(path: str = str(CONTROLLER_PATH)) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _generate_chunk(task_name: str, seed: int, first_episode: int, n_episodes: int, controller_path: str,
                    progress: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    """Episodes first_episode .. first_episode + n_episodes - 1, stepped in lockstep on one MuJoCo model.

    One MjData per episode, stepped exactly as the maze env's ``do_simulation`` steps it (ctrl, mj_step x frame_skip);
    ``check`` re-simulates sampled transitions through the env itself.
    """
    import torch

    from shared.data.ant_controller import load_controller

    torch.set_num_threads(1)  # one process per core: no thread oversubscription
    maze = VARIANTS[task_name][0]
    env = ant.make_maze_env(maze)  # its model: gymnasium-robotics' maze walls around D4RL's ant
    model = env.model
    controller = load_controller(controller_path, "cpu")
    planner = ant.MazeWaypoints(maze)
    init_qpos, init_qvel = model.qpos0.copy(), np.zeros(model.nv)
    K, T = n_episodes, EPISODE_STEPS
    datas, goals, jitter, noise = [], np.zeros((K, 2)), [], np.zeros((K, T, ant.ACT_DIM))
    for i in range(K):
        episode_seq, jitter_seq, noise_seq = np.random.SeedSequence([seed, first_episode + i]).spawn(3)
        qpos, qvel, goals[i] = draw_episode(task_name, np.random.default_rng(episode_seq), init_qpos, init_qvel)
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:] = qpos, qvel
        mujoco.mj_forward(model, data)
        datas.append(data)
        jitter.append(np.random.default_rng(jitter_seq))
        noise[i] = ACTION_NOISE * np.random.default_rng(noise_seq).standard_normal((T, ant.ACT_DIM))
    qpos_log = np.zeros((K, T + 1, model.nq))
    qvel_log = np.zeros((K, T + 1, model.nv))
    actions = np.zeros((K, T, ant.ACT_DIM), np.float32)
    for t in range(T):
        for i, data in enumerate(datas):
            qpos_log[i, t], qvel_log[i, t] = data.qpos, data.qvel
        obs = np.concatenate([qpos_log[:, t, :15], qvel_log[:, t, :14]], 1).astype(np.float32)
        waypoints = np.stack([planner.waypoint(obs[i, :2], goals[i], jitter[i]) for i in range(K)])
        actions[:, t] = np.clip(controller.act(obs, waypoints) + noise[:, t], -1.0, 1.0)
        for i, data in enumerate(datas):
            data.ctrl[:] = actions[i, t]
            mujoco.mj_step(model, data, nstep=ant.FRAME_SKIP)
        if progress is not None and (t + 1) % 50 == 0:
            progress(50 * K)
    for i, data in enumerate(datas):
        qpos_log[i, T], qvel_log[i, T] = data.qpos, data.qvel
    env.close()
    if progress is not None:
        progress((T % 50) * K)

    obs = np.concatenate([qpos_log[..., :15], qvel_log[..., :14]], -1).astype(np.float32)  # [K, T + 1, 29]
    # labels from the stored (float32) next positions: exactly reproducible from the file
    dist = np.linalg.norm(obs[:, 1:, :2].astype(np.float64) - label_goal(maze), axis=-1)
    reached = (dist <= ant.D4RL_GOAL_RADIUS).reshape(-1)
    timeouts = np.zeros((K, T), bool)
    timeouts[:, -1] = True
    return {
        "observations": obs[:, :-1].reshape(K * T, -1),
        "actions": actions.reshape(K * T, -1),
        "rewards": reached.astype(np.float32),
        "terminals": reached.copy(),
        "timeouts": timeouts.reshape(-1),
        "infos/goal": np.repeat(goals, T, 0).astype(np.float32),
        "infos/qpos": qpos_log[:, :-1].reshape(K * T, -1).astype(np.float32),
        "infos/qvel": qvel_log[:, :-1].reshape(K * T, -1).astype(np.float32),
    }


def generate_arrays(task_name: str, size: Optional[int] = None, seed: int = 0, workers: int = 1,
                    progress: bool = True) -> Dict[str, np.ndarray]:
    """A dataset in memory: ``size`` transitions (a multiple of 1,000: whole episodes), any number of workers."""
    task = get_task(task_name)
    if task_name not in VARIANTS:
        raise ValueError(f"task '{task_name}' is not an embedded antmaze dataset ({', '.join(VARIANTS)})")
    size = int(size or task.dataset_size)
    if size <= 0 or size % EPISODE_STEPS:
        raise ValueError(f"antmaze dataset size must be a positive multiple of {EPISODE_STEPS} (whole episodes), "
                         f"got {size}")
    episodes = size // EPISODE_STEPS
    jobs = [(task_name, seed, first, min(CHUNK_EPISODES, episodes - first), str(CONTROLLER_PATH))
            for first in range(0, episodes, CHUNK_EPISODES)]
    return run_chunks(_generate_chunk, jobs, size, f"generating {task_name}", workers, progress)


# ----------------------------------------------------------------------------------------------------------------
# Verification: re-simulation, reward labels, start and goal rules, maze coverage
# ----------------------------------------------------------------------------------------------------------------


def cells_of(xy: np.ndarray, maze: str) -> List[Cell]:
    grid = maze_map(maze)
    return [xy_to_cell(grid, p / ant.MAZE_SCALING) for p in np.asarray(xy, np.float64)]


def resimulate(arrays: Mapping[str, np.ndarray], maze: str, indices: Sequence[int],
               env: Optional[ant.AntMazeD4RL] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Set the maze env's state to (infos/qpos, infos/qvel)[t], its goal to the label goal, step actions[t]:
    (next observations [n, 29], rewards [n]) as the evaluation env computes them."""
    own = env is None
    env = env or ant.make_maze_env(maze, terminate_on_success=False)
    env.reset(seed=0)
    env.goal = label_goal(maze)
    next_obs, rewards = [], []
    try:
        for t in indices:
            mujoco.mj_resetData(env.model, env.data)  # a cold start: no solver warm start from the last transition
            env.data.qpos[:] = arrays["infos/qpos"][t]
            env.data.qvel[:] = arrays["infos/qvel"][t]
            mujoco.mj_forward(env.model, env.data)
            obs, reward, _, _, _ = env.step(arrays["actions"][t])
            next_obs.append(obs)
            rewards.append(reward)
    finally:
        if own:
            env.close()
    return np.asarray(next_obs), np.asarray(rewards, np.float32)


def statistics(arrays: Mapping[str, np.ndarray], task_name: str) -> Dict[str, Any]:
    """Episodes, how many reach their commanded goal / the evaluation goal, reward sum, maze cells visited; how long
    the walk to the commanded goal takes (median first arrival) and the share of transitions after it (the ant
    waiting at its goal: one goal per episode), and how many episodes are commanded to the evaluation goal's cell.
    Whether the evaluation's route is in the data in one piece: episodes that pass the evaluation's start cell and
    later reach its goal, against the route's length and the longest walk (in maze cells); where none does, a policy
    must stitch pieces of walks together to score."""
    maze = VARIANTS[task_name][0]
    n = len(arrays["observations"])
    ends = np.flatnonzero(arrays["timeouts"]) + 1
    starts = np.concatenate([[0], ends[:-1]])
    xy = arrays["observations"][:, :2].astype(np.float64)
    at_goal = np.linalg.norm(xy - arrays["infos/goal"], axis=1) <= ant.D4RL_GOAL_RADIUS
    rewards = arrays["rewards"]
    free = set(empty_cells(maze_map(maze)))
    visited = set(cells_of(xy[:: max(1, n // 200_000)], maze)) & free
    # first arrival per episode (its length when never): the walk, then the wait
    arrival = np.array([np.argmax(at_goal[s:e]) if at_goal[s:e].any() else e - s for s, e in zip(starts, ends)])
    goal_cells = cells_of(arrays["infos/goal"][starts], maze)
    cells = cells_of(xy, maze)
    start_cell = tuple(ant.EVAL_START_CELL)
    route = len(bfs_path(maze_map(maze), start_cell, tuple(ant.EVAL_GOAL_CELLS[maze])))  # cells, both ends included
    walks, whole_route = [], 0
    for s, e, a in zip(starts, ends, arrival):
        walk = [c for i, c in enumerate(cells[s:s + a + 1]) if i == 0 or c != cells[s + i - 1]]  # cells in order
        walks.append(len(walk))
        first_reward = np.argmax(rewards[s:e]) if rewards[s:e].any() else None
        whole_route += first_reward is not None and start_cell in cells[s:s + first_reward + 1]
    return {
        "transitions": int(n),
        "episodes": int(len(ends)),
        "commanded_goal_reached": float(np.mean([at_goal[s:e].any() for s, e in zip(starts, ends)])),
        "median_steps_to_commanded_goal": float(np.median(arrival)),
        "share_after_arrival": round(1.0 - float(arrival.sum()) / n, 4),
        "episodes_commanded_to_eval_goal_cell": int(sum(c == tuple(ant.EVAL_GOAL_CELLS[maze]) for c in goal_cells)),
        "eval_goal_reached": float(np.mean([rewards[s:e].any() for s, e in zip(starts, ends)])),
        "episodes_from_eval_start_cell_to_eval_goal": int(whole_route),
        "eval_route_cells": int(route),
        "longest_walk_cells": int(max(walks)),
        "reward_sum": float(rewards.sum()),
        "cells_visited": int(len(visited)),
        "free_cells": int(len(free)),
        "cell_coverage": round(len(visited) / len(free), 4),
    }


def check(arrays: Mapping[str, np.ndarray], task_name: str, path: Any = "<memory>", samples: int = 64,
          seed: int = 0) -> Dict[str, Any]:
    """Deep verification of an antmaze dataset; DatasetError (one line naming ``path``) on the first problem.

    Layout and episode structure; observations = (infos/qpos[:15], infos/qvel[:14]); ``samples`` transitions (half of
    them rewarded ones, where there are) re-simulated through the maze env against the next observation and the
    reward; every reward label against the rule; episode starts and commanded goals in the cells D4RL's rules allow.
    Returns ``statistics`` plus the largest re-simulation error.
    """
    task_name = get_task(task_name).data_name

    def fail(problem: str) -> None:
        raise DatasetError(f"dataset {path}: {problem}")

    maze = VARIANTS[task_name][0]
    obs, actions, n = arrays["observations"], arrays["actions"], len(arrays["observations"])
    for key in ("infos/goal", "infos/qpos", "infos/qvel"):
        if key not in arrays or len(arrays[key]) != n:
            fail(f"'{key}' missing or of the wrong length")
    if obs.shape[1] != ant.OBS_DIM or actions.shape[1] != ant.ACT_DIM:
        fail(f"observations/actions have sizes {obs.shape[1]}/{actions.shape[1]}, expected {ant.OBS_DIM}/"
             f"{ant.ACT_DIM}")
    if np.abs(actions).max() > 1.0:
        fail("actions outside [-1, 1]")
    timeouts = np.asarray(arrays["timeouts"], bool)
    if n % EPISODE_STEPS or not np.array_equal(np.flatnonzero(timeouts) + 1, np.arange(EPISODE_STEPS, n + 1,
                                                                                      EPISODE_STEPS)):
        fail(f"timeouts are not exactly every {EPISODE_STEPS} steps")
    if not np.array_equal(np.concatenate([arrays["infos/qpos"][:, :15], arrays["infos/qvel"][:, :14]], 1), obs):
        fail("observations differ from (infos/qpos[:15], infos/qvel[:14])")
    # reward labels: 1[|xy' - label goal| <= 0.5] on the stored next position, within each episode
    inner = np.flatnonzero(~timeouts)
    dist = np.linalg.norm(obs[inner + 1, :2].astype(np.float64) - label_goal(maze), axis=1)
    if not np.array_equal(arrays["rewards"][inner], (dist <= ant.D4RL_GOAL_RADIUS).astype(np.float32)):
        fail("rewards do not label reaching the evaluation goal")
    if not np.array_equal(np.asarray(arrays["terminals"], bool), arrays["rewards"] > 0):
        fail("terminals differ from rewards")
    # D4RL's start and goal rules
    first = np.arange(0, n, EPISODE_STEPS)
    allowed = set(start_cells(task_name))
    # multistart positions lie in [centre, centre + 1 m] per axis: the cell of (position - 0.5 m) is the start cell
    probe = obs[first, :2] - (0.0 if VARIANTS[task_name][1] == "fixed" else np.array([0.5, -0.5]))
    if not set(cells_of(probe, maze)) <= allowed:
        fail(f"episodes start outside {task_name}'s start cells")
    goal_probe = arrays["infos/goal"][first] - np.array([0.75, -0.75])  # goal noise: [0, 1.5] m per axis
    if not set(cells_of(goal_probe, maze)) <= set(goal_cells(task_name)):
        fail(f"commanded goals outside {task_name}'s goal cells")
    if np.any(np.diff(arrays["infos/goal"], axis=0)[~timeouts[:-1]] != 0):
        fail("the commanded goal changes within an episode")
    # re-simulation through the env (a sample: ~1 ms each)
    rng = np.random.default_rng(seed)
    rewarded = np.intersect1d(inner, np.flatnonzero(arrays["rewards"] > 0))
    picks = rng.choice(rewarded, min(len(rewarded), samples // 2), replace=False) if len(rewarded) else []
    picks = np.concatenate([picks, rng.choice(inner, samples - len(picks), replace=len(inner) < samples)])
    picks = picks.astype(np.int64)
    next_obs, rewards = resimulate(arrays, maze, picks)
    error = float(np.abs(next_obs - obs[picks + 1]).max())
    if not error <= RESIM_TOLERANCE:
        fail(f"re-simulating {len(picks)} transitions gives next observations up to {error:.3g} off "
             f"(tolerance {RESIM_TOLERANCE})")
    near = np.abs(np.linalg.norm(next_obs[:, :2] - label_goal(maze), axis=1) - ant.D4RL_GOAL_RADIUS) < 1e-4
    if np.any((rewards != arrays["rewards"][picks]) & ~near):
        fail("the maze env's reward differs from the reward labels")
    return {**statistics(arrays, task_name), "resim_samples": int(len(picks)), "resim_max_error": error}


def recipe() -> Recipe:
    """The antmaze family as shared.datasets generates, caches and verifies it."""
    return Recipe(RECIPE, RECIPE_VERSION, SOURCE, ant.OBS_DIM, generate_arrays, default_workers=os.cpu_count() or 1,
                  expected={"controller_sha256": controller_sha256()},
                  attrs={"episode_steps": EPISODE_STEPS, "chunk_episodes": CHUNK_EPISODES,
                         "action_noise": ACTION_NOISE, "label_goal_offset": LABEL_GOAL_OFFSET},
                  check=check)


# ----------------------------------------------------------------------------------------------------------------
# Reference policies on the evaluation env (D4RL's antmaze scores are fixed: 0 / 1; these are measured for the record)
# ----------------------------------------------------------------------------------------------------------------


class ExpertPolicy:
    """The data collector without its noise: controller + BFS waypoints (no jitter), shared.evaluation's protocol."""

    def __init__(self, maze: str, controller_path: str = str(CONTROLLER_PATH)):
        from shared.data.ant_controller import load_controller

        self.controller, self.planner = load_controller(controller_path, "cpu"), ant.MazeWaypoints(maze)
        self.goals = np.zeros((0, 2))

    def reset(self, goals: np.ndarray) -> None:
        self.goals = np.asarray(goals, np.float64)

    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        waypoints = np.stack([self.planner.waypoint(o[:2], g) for o, g in zip(obs, self.goals)])
        return self.controller.act(obs, waypoints)


def reference_success(task_name: str, episodes: int = 10, seed: int = 0) -> Dict[str, float]:
    """Success rates of the uniform random policy and of the expert on the task's evaluation env."""
    from shared.evaluation import RandomPolicy, evaluate

    task = get_task(task_name)
    random = evaluate(task_name, RandomPolicy(ant.ACT_DIM, seed), episodes, seed, num_envs=episodes, progress=False)
    expert = evaluate(task_name, ExpertPolicy(task.maze), episodes, seed, num_envs=episodes, progress=False)
    return {"random": random.success_rate, "expert": expert.success_rate, "episodes": episodes}


if __name__ == "__main__":  # python -m shared.data.antmaze [EPISODES]: random and expert success on each maze
    import sys

    for _name in ("antmaze-umaze", "antmaze-medium-diverse", "antmaze-large-diverse"):
        print(_name, reference_success(_name, int(sys.argv[1]) if len(sys.argv) > 1 else 10), flush=True)
