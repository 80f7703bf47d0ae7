"""D4RL's ant on the maintained stack: the 10 Hz, gear-30 model, an open arena for training a goal-reaching
controller, and AntMaze with D4RL's semantics.

The model is gymnasium's ``ant.xml`` rewritten at run time to D4RL's ``d4rl/locomotion/assets/ant.xml`` dynamics:
timestep 0.02 (gymnasium: 0.01) with frame_skip 5, so one step is 0.1 s (10 Hz; gymnasium's ant is 20 Hz); motor
gear 30 with ctrl in [-1, 1] (gymnasium: gear 150), which is D4RL's ctrlrange +-30 behind its NormalizedBoxEnv; and
D4RL's contact softness on every geom (solref 0.02 1, solimp 0.8 0.8 0.01). Reset noise as D4RL's (qpos + U(-0.1,
0.1), qvel + 0.1 N(0, 1)); gymnasium-robotics' AntMaze resets without noise, so it is switched back on here.

Observations follow D4RL's antmaze files: 29 dims = qpos[:15] + qvel[:14] = [x, y, z, quat(w, x, y, z), 8 joint
angles, torso linear velocity (world frame), torso angular velocity (body frame), 8 joint velocities]. Coordinates
are gymnasium-robotics' (maze centred at the origin, y up, 4 m cells), not D4RL's (origin at the start cell, y along
the rows): the layouts are the same, the frame is mirrored in y and shifted.

``controller_features`` is what the goal-reaching controller sees: the 29-dim observation with the heading (yaw)
taken out, plus the goal's direction and (clipped) distance in the torso's heading frame. It does not depend on x, y
or yaw, so a policy trained on it in the open arena behaves the same anywhere in a maze, facing anywhere.
"""

from __future__ import annotations

import hashlib
import math
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import gymnasium
import numpy as np
import torch

from shared.mazes import bfs_path, cell_to_xy, empty_cells, is_free, maze_map, xy_to_cell
from shared.tasks import ANTMAZE_GOAL_RADIUS
from shared.utils import atomic_write_bytes

import gymnasium_robotics  # noqa: E402  (shared.mazes has silenced its import notice)

gymnasium.register_envs(gymnasium_robotics)

# ----------------------------------------------------------------------------- the model
TIMESTEP = 0.02  # D4RL's ant.xml (gymnasium's: 0.01)
FRAME_SKIP = 5  # D4RL's AntEnv (mujoco_env.MujocoEnv.__init__(self, file_path, 5)); gymnasium's default is 5 too
GEAR = 30.0  # D4RL: ctrlrange +-30 at gear 1, reached through NormalizedBoxEnv's [-1, 1]; gymnasium: gear 150
CONTROL_DT = TIMESTEP * FRAME_SKIP  # 0.1 s: 10 Hz
MAZE_SCALING = 4.0  # metres per maze cell (D4RL's and gymnasium-robotics' antmaze)
RESET_NOISE = 0.1  # D4RL's AntEnv.reset_model: qpos + U(-0.1, 0.1), qvel + 0.1 * N(0, 1)
D4RL_GOAL_RADIUS = ANTMAZE_GOAL_RADIUS  # D4RL antmaze: reward = terminal = 1[|xy - goal| <= 0.5]
GYM_GOAL_RADIUS = 0.45  # gymnasium-robotics' AntMaze success distance
OBS_DIM = 29  # qpos[:15] + qvel[:14]
ACT_DIM = 8
FEATURE_DIM = 30  # controller_features: 1 + 4 + 8 + 3 + 3 + 8 + 2 + 1

# D4RL's evaluation (the *_TEST maps): start cell (1, 1), fixed goal cell, episode length
EVAL_START_CELL = (1, 1)
EVAL_GOAL_CELLS = {"umaze": (3, 1), "medium": (6, 6), "large": (7, 9)}
EVAL_MAX_STEPS = {"umaze": 700, "medium": 1000, "large": 1000}


def d4rl_ant_xml() -> str:
    """Gymnasium's ant.xml with D4RL's dynamics (timestep 0.02, gear 30, D4RL's contact solref/solimp)."""
    from gymnasium.envs.mujoco import ant_v5

    source = Path(sys.modules[ant_v5.__name__].__file__).parent / "assets" / "ant.xml"
    tree = ET.parse(source)
    root = tree.getroot()
    option = root.find("option")
    option.set("timestep", repr(TIMESTEP))
    option.set("integrator", "RK4")
    geom_default = root.find("default/geom")
    geom_default.set("solref", ".02 1")
    geom_default.set("solimp", ".8 .8 .01")
    motors = root.findall("actuator/motor")
    if len(motors) != ACT_DIM:
        raise RuntimeError(f"gymnasium's ant.xml has {len(motors)} motors, expected {ACT_DIM}")
    for motor in motors:
        motor.set("gear", repr(GEAR))
        motor.set("ctrlrange", "-1.0 1.0")
        motor.set("ctrllimited", "true")
    return ET.tostring(root, encoding="unicode")


def d4rl_ant_xml_path() -> str:
    """The modified model as a file (envs take ``xml_file`` paths), named by its content hash and written atomically,
    so parallel workers share one file and never read a half-written one."""
    text = d4rl_ant_xml()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"d4rl_ant_{digest}.xml"
    if not path.exists():
        atomic_write_bytes(path, text.encode())
    return str(path)


def _ant_kwargs() -> Dict[str, Any]:
    """Options of gymnasium's Ant-v5 that make it D4RL's ant (shared by the arena and AntMaze-v5)."""
    return dict(xml_file=d4rl_ant_xml_path(), frame_skip=FRAME_SKIP, include_cfrc_ext_in_observation=False)


def d4rl_observation(qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """D4RL's 29-dim antmaze observation: qpos[:15] + qvel[:14]."""
    return np.concatenate([qpos[:15], qvel[:14]]).astype(np.float32)


# ----------------------------------------------------------------------------- the controller's view
def yaw_of(quat: torch.Tensor) -> torch.Tensor:
    """Heading of MuJoCo quaternions (w, x, y, z) [..., 4]: the yaw of the torso's x axis about world z."""
    w, x, y, z = quat.unbind(-1)
    return torch.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def controller_features(obs: torch.Tensor, goal: torch.Tensor, dist_clip: float = 4.0) -> torch.Tensor:
    """[..., 29] D4RL observations and [..., 2] goals -> [..., 30] heading-invariant inputs of the controller.

    z; the torso quaternion with its yaw removed (sign fixed to w >= 0); joint angles; the torso's linear velocity in
    its heading frame; its angular velocity (MuJoCo's free joint already gives it in the body frame) / 4; joint
    velocities / 10; the goal's unit direction in the heading frame and min(distance, dist_clip) / dist_clip.
    Pure tensor ops (no host syncs): usable inside a captured CUDA graph.
    """
    xy, z, quat, joints = obs[..., 0:2], obs[..., 2:3], obs[..., 3:7], obs[..., 7:15]
    quat = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # a fresh reset's qpos is not yet normalised
    lin, ang, jvel = obs[..., 15:18], obs[..., 18:21], obs[..., 21:29]
    yaw = yaw_of(quat)
    c, s = torch.cos(yaw), torch.sin(yaw)
    ch, sh = torch.cos(0.5 * yaw), torch.sin(0.5 * yaw)
    w, qx, qy, qz = quat.unbind(-1)
    # q' = q_yaw^-1 * q, q_yaw = (cos(yaw/2), 0, 0, sin(yaw/2))
    q = torch.stack([ch * w + sh * qz, ch * qx + sh * qy, ch * qy - sh * qx, ch * qz - sh * w], -1)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)

    def to_heading(vx: torch.Tensor, vy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return c * vx + s * vy, -s * vx + c * vy

    hvx, hvy = to_heading(lin[..., 0], lin[..., 1])
    d = goal - xy
    gx, gy = to_heading(d[..., 0], d[..., 1])
    dist = torch.sqrt(gx * gx + gy * gy)
    inv = 1.0 / dist.clamp_min(1e-6)
    return torch.cat([
        z, q, joints, torch.stack([hvx, hvy, lin[..., 2]], -1), 0.25 * ang, 0.1 * jvel,
        torch.stack([gx * inv, gy * inv, dist.clamp(max=dist_clip) / dist_clip], -1),
    ], -1)


def upright(quat: np.ndarray) -> np.ndarray:
    """World-z component of the torso's z axis (1 upright, < 0 upside down); quat: (w, x, y, z) or [..., 4]."""
    return 1.0 - 2.0 * (quat[..., 1] ** 2 + quat[..., 2] ** 2)


# ----------------------------------------------------------------------------- open arena (controller training)
class AntArenaEnv(gymnasium.Env):
    """Gymnasium's Ant-v5 with D4RL's model on the open floor (80 x 80 m), with goals to reach.

    Observation (31, float32) = the 29-dim D4RL observation + the goal's world (x, y); the controller turns it into
    features. Goals are drawn uniform in direction, ``goal_min``..``goal_max`` metres from the torso.

    ``continuing`` (training): on reaching a goal (within ``goal_radius``) the reward gets ``reach_bonus`` and a new
    goal is drawn; a goal not reached within ``goal_timeout`` steps is replaced too; episodes end when the ant turns
    upside down (terminated) or after ``max_episode_steps`` (truncated). Reward = ``progress_scale`` x (distance
    before - distance after) [m per step] - ``ctrl_cost`` x sum(a^2) + bonus.
    Not ``continuing`` (evaluation): one goal per episode, terminated on reaching it (info["success"]).
    """

    metadata = {"render_modes": []}

    def __init__(self, continuing: bool = True, goal_min: float = 2.0, goal_max: float = 4.0,
                 goal_radius: float = GYM_GOAL_RADIUS, max_episode_steps: int = 500, goal_timeout: int = 200,
                 progress_scale: float = 10.0, reach_bonus: float = 5.0, ctrl_cost: float = 0.02):
        self.ant = gymnasium.make("Ant-v5", exclude_current_positions_from_observation=False,
                                  reset_noise_scale=RESET_NOISE, terminate_when_unhealthy=False,
                                  **_ant_kwargs()).unwrapped
        self.continuing = continuing
        self.goal_min, self.goal_max, self.goal_radius = goal_min, goal_max, goal_radius
        self.max_episode_steps, self.goal_timeout = max_episode_steps, goal_timeout
        self.progress_scale, self.reach_bonus, self.ctrl_cost = progress_scale, reach_bonus, ctrl_cost
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM + 2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
        self.goal = np.zeros(2)
        self.steps = self.goal_steps = self.reached = 0
        self.dist = 0.0

    @property
    def model(self):
        return self.ant.model

    @property
    def data(self):
        return self.ant.data

    def _new_goal(self) -> None:
        angle = self.np_random.uniform(0.0, 2.0 * math.pi)
        radius = self.np_random.uniform(self.goal_min, self.goal_max)
        self.goal = self.ant.data.qpos[:2] + radius * np.array([math.cos(angle), math.sin(angle)])
        self.dist = float(np.linalg.norm(self.goal - self.ant.data.qpos[:2]))
        self.goal_steps = 0

    def _obs(self) -> np.ndarray:
        data = self.ant.data
        return np.concatenate([data.qpos[:15], data.qvel[:14], self.goal]).astype(np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self.ant.reset(seed=seed)  # D4RL's reset noise, from the ant's own generator
        self._new_goal()
        self.steps = self.reached = 0
        return self._obs(), {"goal": self.goal.copy()}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.ant.do_simulation(a, self.ant.frame_skip)
        self.steps += 1
        self.goal_steps += 1
        data = self.ant.data
        dist = float(np.linalg.norm(self.goal - data.qpos[:2]))
        reward = self.progress_scale * (self.dist - dist) - self.ctrl_cost * float(np.sum(a * a))
        self.dist = dist
        success = dist <= self.goal_radius
        flipped = upright(data.qpos[3:7]) < 0.0 or not np.isfinite(data.qpos).all()
        terminated = flipped
        if success:
            reward += self.reach_bonus
            self.reached += 1
        if self.continuing:
            if success or self.goal_steps >= self.goal_timeout:
                self._new_goal()
        else:
            terminated = terminated or success
        truncated = self.steps >= self.max_episode_steps and not terminated
        info = {"success": success, "goals_reached": self.reached, "flipped": flipped}
        return self._obs(), reward, terminated, truncated, info

    def close(self) -> None:
        self.ant.close()


def make_arena_env(**kwargs: Any) -> AntArenaEnv:
    return AntArenaEnv(**kwargs)


# ----------------------------------------------------------------------------- AntMaze with D4RL's semantics
class AntMazeD4RL(gymnasium.Env):
    """gymnasium-robotics' AntMaze-v5 stepping D4RL's ant, with D4RL's antmaze semantics.

    reset: the start cell (default D4RL's (1, 1)) at its centre plus D4RL's reset noise, the goal cell (default the
    maze's D4RL evaluation goal) at its centre plus D4RL's one-sided goal noise (``goal_noise``: U(0, 1) + U(0, 0.5)
    metres along +column and +row, D4RL's goal_sampler; 0 turns it off). ``options`` may give "reset_cell" and
    "goal_cell". step: reward = 1[|xy - goal| <= 0.5], terminated = reward when ``terminate_on_success`` (D4RL's
    evaluation: the episode ends on success), truncated after ``max_episode_steps``.
    Observation: D4RL's 29 dims; with ``goal_in_obs`` the goal's (x, y) appended (31 dims, for the controller).
    gymnasium-robotics' own changes (goal radius 0.45, +-1 m uniform start and goal noise) are not used.
    """

    metadata = {"render_modes": []}

    def __init__(self, maze: str, goal_cell: Optional[Sequence[int]] = None,
                 reset_cell: Sequence[int] = EVAL_START_CELL, max_episode_steps: Optional[int] = None,
                 goal_noise: bool = True, terminate_on_success: bool = True, goal_in_obs: bool = False,
                 goal_radius: float = D4RL_GOAL_RADIUS):
        self.maze = maze
        self.grid = maze_map(maze)
        self.goal_cell = tuple(goal_cell if goal_cell is not None else EVAL_GOAL_CELLS[maze])
        self.reset_cell = tuple(reset_cell)
        for cell in (self.goal_cell, self.reset_cell):
            if not is_free(self.grid, cell):
                raise ValueError(f"cell {cell} is a wall in maze '{maze}'")
        self.max_episode_steps = max_episode_steps or EVAL_MAX_STEPS[maze]
        self.goal_noise, self.terminate_on_success = goal_noise, terminate_on_success
        self.goal_in_obs, self.goal_radius = goal_in_obs, goal_radius
        self.env = gymnasium.make("AntMaze_UMaze-v5", maze_map=self.grid, continuing_task=True, reset_target=False,
                                  max_episode_steps=self.max_episode_steps, **_ant_kwargs()).unwrapped
        self.env.position_noise_range = 0.0  # cell centres exactly: the noise is D4RL's, added here
        self.env.ant_env._reset_noise_scale = RESET_NOISE  # AntMaze-v5 builds its ant without reset noise
        dim = OBS_DIM + (2 if goal_in_obs else 0)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
        self.goal = np.zeros(2)
        self.steps = 0

    @property
    def model(self):
        return self.env.ant_env.model

    @property
    def data(self):
        return self.env.ant_env.data

    def cell_xy(self, cell: Sequence[int]) -> np.ndarray:
        return cell_to_xy(self.grid, cell) * MAZE_SCALING

    def _obs(self) -> np.ndarray:
        obs = d4rl_observation(self.data.qpos, self.data.qvel)
        return np.concatenate([obs, self.goal.astype(np.float32)]) if self.goal_in_obs else obs

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        options = options or {}
        goal_cell = tuple(options.get("goal_cell", self.goal_cell))
        reset_cell = tuple(options.get("reset_cell", self.reset_cell))
        self.env.reset(seed=seed, options={"goal_cell": np.array(goal_cell), "reset_cell": np.array(reset_cell)})
        goal = self.cell_xy(goal_cell)
        if self.goal_noise:  # D4RL: x, y (its frame: +column, +row) += U(0, 1) + U(0, 0.5); our y runs against rows
            nx, ny = self.np_random.uniform(0, 1, 2) + self.np_random.uniform(0, 0.5, 2)
            goal = goal + np.array([nx, -ny])
        self.goal = goal
        self.env.goal = goal.copy()
        self.env.update_target_site_pos()
        self.steps = 0
        return self._obs(), {"goal": self.goal.copy(), "goal_cell": goal_cell, "reset_cell": reset_cell}

    def step(self, action):
        self.env.ant_env.do_simulation(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0), FRAME_SKIP)
        self.steps += 1
        success = bool(np.linalg.norm(self.data.qpos[:2] - self.goal) <= self.goal_radius)
        terminated = success and self.terminate_on_success
        truncated = self.steps >= self.max_episode_steps and not terminated
        return self._obs(), float(success), terminated, truncated, {"success": success, "goal": self.goal.copy()}

    def close(self) -> None:
        self.env.close()


def make_maze_env(maze: str, **kwargs: Any) -> AntMazeD4RL:
    return AntMazeD4RL(maze, **kwargs)


# ----------------------------------------------------------------------------- the maze planner's waypoints
class MazeWaypoints:
    """D4RL's antmaze navigation: the waypoint is the next cell on a BFS path from the torso's cell to the goal's
    cell (its centre, plus ``jitter`` as D4RL's U(0, 1) per axis when given a generator), or the goal itself once
    in the goal's cell. Next-cell tables are computed once per goal cell."""

    def __init__(self, maze: str):
        self.grid = maze_map(maze)
        self.free = empty_cells(self.grid)
        self._next: Dict[Tuple[int, int], Dict[Tuple[int, int], Tuple[int, int]]] = {}

    def cell_of(self, xy: Sequence[float]) -> Tuple[int, int]:
        cell = xy_to_cell(self.grid, (xy[0] / MAZE_SCALING, xy[1] / MAZE_SCALING))
        if is_free(self.grid, cell):
            return cell
        # the torso can be over a wall cell only at its edge (legs on the wall): use the nearest free cell
        return min(self.free, key=lambda c: float(np.sum((cell_to_xy(self.grid, c) * MAZE_SCALING - xy) ** 2)))

    def next_cell(self, cell: Tuple[int, int], goal_cell: Tuple[int, int]) -> Tuple[int, int]:
        table = self._next.get(goal_cell)
        if table is None:
            table = {}
            for start in self.free:
                path = bfs_path(self.grid, start, goal_cell)
                table[start] = path[1] if len(path) > 1 else path[0]
            self._next[goal_cell] = table
        return table[cell]

    def waypoint(self, xy: Sequence[float], goal: Sequence[float],
                 rng: Optional[np.random.Generator] = None) -> np.ndarray:
        xy, goal = np.asarray(xy, dtype=np.float64), np.asarray(goal, dtype=np.float64)
        cell, goal_cell = self.cell_of(xy), self.cell_of(goal)
        if cell == goal_cell:
            return goal.copy()
        point = cell_to_xy(self.grid, self.next_cell(cell, goal_cell)) * MAZE_SCALING
        if rng is not None:  # D4RL's _rowcol_to_xy(add_random_noise=True): U(0, 1) along +column and +row
            nx, ny = rng.uniform(0.0, 0.25 * MAZE_SCALING, 2)
            point = point + np.array([nx, -ny])
        return point
