"""Maze side of the embedded tasks: layouts, grid helpers, D4RL's waypoint controller and the evaluation env.

Layouts are gymnasium-robotics' U_MAZE / MEDIUM_MAZE / LARGE_MAZE (the D4RL maze2d v1 layouts). Coordinates follow
gymnasium-robotics: cell (row, col) has centre x = (col + 0.5) - width / 2, y = height / 2 - (row + 0.5), y up.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gymnasium
import mujoco
import numpy as np

try:  # gymnasium-robotics prints a notice about its Adroit envs on every import; this project uses none of them
    from farama_notifications import notifications

    notifications.pop("gymnasium_robotics", None)
except ImportError:
    pass
import gymnasium_robotics  # noqa: E402
from gymnasium_robotics.envs.maze.maps import LARGE_MAZE, MEDIUM_MAZE, U_MAZE  # noqa: E402

from shared.tasks import POINT_MAZE_GOAL_RADIUS, Task, get_task  # noqa: E402

gymnasium.register_envs(gymnasium_robotics)

MAZES: Dict[str, List[List[Any]]] = {"umaze": U_MAZE, "medium": MEDIUM_MAZE, "large": LARGE_MAZE}
MAZE_ENV_IDS = {"umaze": "PointMaze_UMaze-v3", "medium": "PointMaze_Medium-v3", "large": "PointMaze_Large-v3"}

GOAL_RADIUS = POINT_MAZE_GOAL_RADIUS  # gymnasium-robotics' success distance (D4RL used 0.5)
VELOCITY_LIMIT = 5.0  # PointEnv clips qvel to this before every step
Cell = Tuple[int, int]


def maze_map(maze: str) -> List[List[Any]]:
    """A fresh copy of a layout (gymnasium-robotics' lists are module globals: never mutate them)."""
    if maze not in MAZES:
        raise KeyError(f"unknown maze '{maze}'; known: {', '.join(MAZES)}")
    return copy.deepcopy(MAZES[maze])


def maze_map_with_goal(maze: str, goal_cell: Cell) -> List[List[Any]]:
    """Layout with `goal_cell` marked 'g': gymnasium then puts the goal there and starts the agent elsewhere."""
    grid = maze_map(maze)
    row, col = goal_cell
    if grid[row][col] == 1:
        raise ValueError(f"goal cell {goal_cell} is a wall in maze '{maze}'")
    grid[row][col] = "g"
    return grid


def is_free(grid: Sequence[Sequence[Any]], cell: Cell) -> bool:
    row, col = cell
    return 0 <= row < len(grid) and 0 <= col < len(grid[0]) and grid[row][col] != 1


def empty_cells(grid: Sequence[Sequence[Any]]) -> List[Cell]:
    """All non-wall cells in row-major order (the order random draws index into)."""
    return [(r, c) for r in range(len(grid)) for c in range(len(grid[0])) if grid[r][c] != 1]


def cell_to_xy(grid: Sequence[Sequence[Any]], cell: Cell) -> np.ndarray:
    """Centre of a cell in simulator coordinates (gymnasium-robotics' Maze.cell_rowcol_to_xy, scaling 1)."""
    x = (cell[1] + 0.5) - len(grid[0]) / 2
    y = len(grid) / 2 - (cell[0] + 0.5)
    return np.array([x, y], dtype=np.float64)


def xy_to_cell(grid: Sequence[Sequence[Any]], xy: Sequence[float]) -> Cell:
    """Cell containing a point (gymnasium-robotics' Maze.cell_xy_to_rowcol, scaling 1)."""
    row = math.floor(len(grid) / 2 - xy[1])
    col = math.floor(xy[0] + len(grid[0]) / 2)
    return row, col


def bfs_path(grid: Sequence[Sequence[Any]], start: Cell, goal: Cell) -> List[Cell]:
    """Shortest 4-connected path of cells from start to goal, both included (fixed neighbour order: deterministic)."""
    parent: Dict[Cell, Optional[Cell]] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt not in parent and is_free(grid, nxt):
                parent[nxt] = cell
                queue.append(nxt)
    if goal not in parent:
        raise ValueError(f"no path from {start} to {goal}")
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


class WaypointController:
    """D4RL's maze2d waypoint controller (d4rl/pointmaze/waypoint_controller.py), planning by BFS.

    On a new goal it plans over the grid from the current cell to the goal cell; the waypoints are the centres of
    the path's cells after the start cell, each jittered uniformly by up to `jitter`, and the goal itself last.
    Action = clip(p_gain * (waypoint - pos) - d_gain * vel, -1, 1); it moves on to the next waypoint once within
    `solve_thresh` of the current one, and reports `done` when within `solve_thresh` of the goal.
    (D4RL's jitter is one-sided, centre - U(0, 0.2); we use the symmetric U(-0.2, 0.2).)
    """

    def __init__(
        self,
        grid: Sequence[Sequence[Any]],
        rng: np.random.Generator,
        p_gain: float = 10.0,
        d_gain: float = 1.0,
        solve_thresh: float = 0.1,
        jitter: float = 0.2,
    ):
        self.grid = grid
        self.rng = rng
        self.p_gain, self.d_gain = p_gain, d_gain
        self.solve_thresh, self.jitter = solve_thresh, jitter
        self.goal = (0.0, 0.0)
        self.waypoints: Optional[List[Tuple[float, float]]] = None  # planned lazily at the first action
        self.index = 0

    def reset(self, goal_xy: Sequence[float]) -> None:
        """Target a new goal; the plan is made at the next call, from wherever the agent is then."""
        self.goal = (float(goal_xy[0]), float(goal_xy[1]))
        self.waypoints = None
        self.index = 0

    def _start_cell(self, x: float, y: float) -> Cell:
        cell = xy_to_cell(self.grid, (x, y))
        if is_free(self.grid, cell):
            return cell
        # The ball can touch a wall cell only by MuJoCo's contact margin: plan from the nearest free cell instead.
        return min(empty_cells(self.grid), key=lambda c: float(np.sum((cell_to_xy(self.grid, c) - (x, y)) ** 2)))

    def plan(self, x: float, y: float) -> None:
        start = self._start_cell(x, y)
        goal_cell = xy_to_cell(self.grid, self.goal)
        path = bfs_path(self.grid, start, goal_cell)
        waypoints = []
        for cell in path[1:-1]:
            cx, cy = cell_to_xy(self.grid, cell)
            jx, jy = self.rng.uniform(-self.jitter, self.jitter, size=2)
            waypoints.append((float(cx + jx), float(cy + jy)))
        waypoints.append(self.goal)
        self.waypoints = waypoints
        self.index = 0

    def act_xy(self, x: float, y: float, vx: float, vy: float) -> Tuple[float, float, bool]:
        """Scalar fast path: (ax, ay, done) for position (x, y) and velocity (vx, vy)."""
        if self.waypoints is None:
            self.plan(x, y)
        wx, wy = self.waypoints[self.index]
        ax = min(1.0, max(-1.0, self.p_gain * (wx - x) - self.d_gain * vx))
        ay = min(1.0, max(-1.0, self.p_gain * (wy - y) - self.d_gain * vy))
        # As D4RL: the action aims at the current waypoint, then the index moves on if it has been reached.
        if self.index < len(self.waypoints) - 1 and math.hypot(wx - x, wy - y) < self.solve_thresh:
            self.index += 1
        done = math.hypot(self.goal[0] - x, self.goal[1] - y) < self.solve_thresh
        return ax, ay, done

    def __call__(self, pos: Sequence[float], vel: Sequence[float]) -> np.ndarray:
        ax, ay, _ = self.act_xy(float(pos[0]), float(pos[1]), float(vel[0]), float(vel[1]))
        return np.array([ax, ay], dtype=np.float32)


class WaypointPolicy:
    """Batched waypoint controller as an evaluation policy (shared.evaluation's Policy protocol).

    noise = 0 is the expert reference (score 100); noise = 0.5 is the data-collection behaviour. Every episode gets
    its own generators seeded by (seed, episode index), counting episodes across `reset` calls, so the actions of an
    episode do not depend on how many episodes run side by side.
    """

    def __init__(self, maze: str, noise: float = 0.0, seed: int = 0):
        self.maze = maze if maze in MAZES else get_task(maze).maze
        self.grid = maze_map(self.maze)
        self.noise = noise
        self.seed = seed
        self.episodes_started = 0
        self.controllers: List[WaypointController] = []
        self.noise_rngs: List[np.random.Generator] = []

    def reset(self, goals: np.ndarray) -> None:
        self.controllers, self.noise_rngs = [], []
        for goal in np.asarray(goals, dtype=np.float64):
            plan_seq, noise_seq = np.random.SeedSequence([self.seed, self.episodes_started]).spawn(2)
            controller = WaypointController(self.grid, np.random.default_rng(plan_seq))
            controller.reset(goal)
            self.controllers.append(controller)
            self.noise_rngs.append(np.random.default_rng(noise_seq))
            self.episodes_started += 1

    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        actions = np.empty((len(obs), 2), dtype=np.float64)
        for i, (controller, o) in enumerate(zip(self.controllers, np.asarray(obs, dtype=np.float64))):
            ax, ay, _ = controller.act_xy(o[0], o[1], o[2], o[3])
            actions[i] = ax, ay
            if self.noise > 0:
                actions[i] += self.noise * self.noise_rngs[i].standard_normal(2)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)


def _make_gym_env(maze: str, grid: List[List[Any]], max_episode_steps: int) -> gymnasium.Env:
    return gymnasium.make(
        MAZE_ENV_IDS[maze], maze_map=grid, continuing_task=True, reset_target=False,
        max_episode_steps=max_episode_steps,
    )


class PointMazeSim:
    """Steps gymnasium-robotics' point-mass MuJoCo model directly, for data generation.

    `step` performs exactly what PointEnv.step does to the simulator state (clip the action, clip qvel to +-5,
    simulate one frame), without the wrapper, dict-observation and reward overhead. PointEnv's extra mj_forward
    (inside set_state) and mj_rnePostConstraint only recompute derived quantities, so they are skipped; the
    tests check the trajectories are bit-identical to gymnasium's.
    """

    def __init__(self, maze: str):
        self.grid = maze_map(maze)
        self.env = _make_gym_env(maze, self.grid, 1000)
        self.env.reset(seed=0)
        self.model = self.env.unwrapped.point_env.model
        self.data = self.env.unwrapped.point_env.data
        self.qpos, self.qvel, self.ctrl = self.data.qpos, self.data.qvel, self.data.ctrl  # live views

    def set_state(self, qpos: Sequence[float], qvel: Sequence[float]) -> None:
        """Fresh simulator state (solver warm start cleared too, so a run does not depend on what ran before)."""
        mujoco.mj_resetData(self.model, self.data)
        self.qpos[:] = qpos
        self.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)

    def step(self, ax: float, ay: float) -> None:
        self.ctrl[0] = min(1.0, max(-1.0, ax))
        self.ctrl[1] = min(1.0, max(-1.0, ay))
        np.clip(self.qvel, -VELOCITY_LIMIT, VELOCITY_LIMIT, out=self.qvel)
        mujoco.mj_step(self.model, self.data)

    def close(self) -> None:
        self.env.close()


class MazeEnv:
    """Evaluation env of an embedded maze task: flat float32 observations [x, y, vx, vy], sparse reward.

    Wraps gymnasium-robotics' PointMaze (continuing task, fixed target, as D4RL maze2d v1) and steps
    `env.unwrapped` directly; the time limit is counted here. Episodes never terminate; they are truncated after
    task.max_episode_steps steps.
    """

    observation_dim = 4
    action_dim = 2

    def __init__(self, task: Task):
        if task.source != "embedded" or task.maze is None:
            raise ValueError(f"task '{task.name}' is not an embedded maze task")
        self.task = task
        self.max_episode_steps = task.max_episode_steps
        self.base_grid = maze_map(task.maze)
        if task.goal_mode == "fixed":
            grid = maze_map_with_goal(task.maze, task.eval_goal_cell)
        else:
            grid = maze_map(task.maze)
        self.env = gymnasium.make(
            task.env_id, maze_map=grid, continuing_task=True, reset_target=False,
            max_episode_steps=task.max_episode_steps,
        )
        self.unwrapped = self.env.unwrapped
        self.goal = np.zeros(2, dtype=np.float32)
        self.steps = 0

    def reset(self, seed: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        if self.task.goal_mode == "fixed":
            goal_cell = tuple(self.task.eval_goal_cell)
            self.unwrapped.reset(seed=seed)  # 'g' cell is the goal; the start is another cell, +-0.25 noise
        else:
            cells = empty_cells(self.base_grid)
            goal_cell = cells[np.random.default_rng(seed).integers(len(cells))]
            # gymnasium then draws the start among cells > 0.5 from the (noisy) goal: never the goal cell.
            self.unwrapped.reset(seed=seed, options={"goal_cell": np.array(goal_cell)})
        # No goal noise: the goal is exactly the cell centre (as D4RL's fixed evaluation target).
        self.unwrapped.goal = cell_to_xy(self.base_grid, goal_cell)
        self.unwrapped.update_target_site_pos()
        self.goal = self.unwrapped.goal.astype(np.float32)
        self.steps = 0
        return self._obs(), {"goal": self.goal.copy()}

    def _obs(self) -> np.ndarray:
        data = self.unwrapped.point_env.data
        return np.concatenate([data.qpos, data.qvel]).astype(np.float32)

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        obs_dict, reward, _, _, info = self.unwrapped.step(np.asarray(action, dtype=np.float64))
        self.steps += 1
        obs = obs_dict["observation"].astype(np.float32)
        info = {"goal": self.goal.copy(), "success": bool(info["success"])}
        return obs, float(reward), False, self.steps >= self.max_episode_steps, info

    def close(self) -> None:
        self.env.close()


def make_env(task_name: str) -> MazeEnv:
    return MazeEnv(get_task(task_name))
