import math

import gymnasium
import numpy as np
import pytest

from shared.mazes import (
    GOAL_RADIUS,
    MAZE_ENV_IDS,
    MAZES,
    PointMazeSim,
    WaypointController,
    WaypointPolicy,
    bfs_path,
    cell_to_xy,
    empty_cells,
    make_env,
    maze_map,
    xy_to_cell,
)
from shared.tasks import get_task


@pytest.mark.parametrize("maze", list(MAZES))
def test_cell_xy_match_gymnasium(maze):
    env = gymnasium.make(MAZE_ENV_IDS[maze], maze_map=maze_map(maze))
    gym_maze = env.unwrapped.maze
    grid = maze_map(maze)
    for cell in empty_cells(grid):
        xy = cell_to_xy(grid, cell)
        np.testing.assert_allclose(xy, gym_maze.cell_rowcol_to_xy(np.array(cell)))
        assert xy_to_cell(grid, xy + 0.3) == cell == tuple(gym_maze.cell_xy_to_rowcol(xy - 0.3))
    env.close()


def test_bfs_path_is_shortest_and_connected():
    grid = maze_map("umaze")
    path = bfs_path(grid, (3, 1), (1, 1))
    assert path == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    for a, b in zip(path, path[1:]):
        assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1


@pytest.mark.parametrize("maze", list(MAZES))
def test_fast_sim_is_bit_identical_to_gymnasium(maze):
    sim = PointMazeSim(maze)
    ref = PointMazeSim(maze).env.unwrapped.point_env
    rng = np.random.default_rng(0)
    start = cell_to_xy(sim.grid, empty_cells(sim.grid)[3])
    sim.set_state(start, np.zeros(2))
    ref.set_state(start.copy(), np.zeros(2))
    # long pushes in one direction exceed the +-5 velocity clip and hit walls; random ones jitter in contact
    actions = np.concatenate([np.tile(rng.uniform(-1, 1, (1, 2)) * 3, (200, 1)) for _ in range(10)]
                             + [rng.uniform(-2, 2, (1000, 2))])
    max_speed = 0.0
    for a in actions:
        sim.step(*a)
        ref.step(a)
        assert np.array_equal(sim.qpos, ref.data.qpos) and np.array_equal(sim.qvel, ref.data.qvel)
        max_speed = max(max_speed, np.abs(sim.qvel).max())
    assert max_speed > 5.0  # the clipping path was exercised


@pytest.mark.parametrize("maze", list(MAZES))
def test_noiseless_controller_reaches_random_goals(maze):
    steps = {"umaze": 300, "medium": 600, "large": 800}[maze]
    rng = np.random.default_rng(123)
    sim = PointMazeSim(maze)
    cells = empty_cells(sim.grid)
    reached = 0
    for _ in range(100):
        start_cell, goal_cell = rng.choice(len(cells), size=2, replace=False)
        start = cell_to_xy(sim.grid, cells[start_cell]) + rng.uniform(-0.25, 0.25, 2)
        goal = cell_to_xy(sim.grid, cells[goal_cell]) + rng.uniform(-0.25, 0.25, 2)
        sim.set_state(start, np.zeros(2))
        controller = WaypointController(sim.grid, rng)
        controller.reset(goal)
        for _ in range(steps):
            ax, ay, _ = controller.act_xy(*sim.qpos.tolist(), *sim.qvel.tolist())
            sim.step(ax, ay)
            if math.dist(sim.qpos, goal) <= GOAL_RADIUS:
                reached += 1
                break
    assert reached >= 99


def test_controller_action_rule():
    grid = maze_map("umaze")
    controller = WaypointController(grid, np.random.default_rng(0))
    goal = cell_to_xy(grid, (1, 2))
    controller.reset(goal)
    pos, vel = goal + np.array([0.03, -0.05]), np.array([0.2, 0.1])
    action = controller(pos, vel)  # same cell: the only waypoint is the goal itself
    np.testing.assert_allclose(action, np.clip(10 * (goal - pos) - vel, -1, 1), rtol=1e-6)
    assert controller.act_xy(*pos, *vel)[2]  # within 0.1: done


@pytest.mark.parametrize("name", ["maze2d-umaze", "maze2d-medium", "maze2d-large"])
def test_fixed_goal_env(name):
    task = get_task(name)
    env = make_env(name)
    grid = maze_map(task.maze)
    goal = cell_to_xy(grid, task.eval_goal_cell).astype(np.float32)
    starts = set()
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        assert obs.dtype == np.float32 and obs.shape == (4,)
        np.testing.assert_array_equal(info["goal"], goal)
        np.testing.assert_array_equal(env.unwrapped.goal, cell_to_xy(grid, task.eval_goal_cell))
        assert xy_to_cell(grid, obs[:2]) != tuple(task.eval_goal_cell)
        assert np.all(np.abs(obs[:2] - cell_to_xy(grid, xy_to_cell(grid, obs[:2]))) <= 0.25 + 1e-6)
        starts.add(xy_to_cell(grid, obs[:2]))
    assert len(starts) > 1
    obs2, _ = env.reset(seed=7)
    obs3, _ = env.reset(seed=7)
    np.testing.assert_array_equal(obs2, obs3)


def test_env_reward_and_truncation():
    env = make_env("maze2d-umaze")
    env.reset(seed=0)
    policy = WaypointPolicy("umaze", noise=0.0, seed=0)
    policy.reset(env.goal[None])
    obs, reward, rewards = None, 0.0, []
    for t in range(env.max_episode_steps):
        o = env._obs()[None]
        obs, reward, terminated, truncated, _ = env.step(policy.act(o, np.array([reward]))[0])
        rewards.append(reward)
        assert not terminated
        assert reward == float(np.linalg.norm(obs[:2].astype(np.float64) - env.unwrapped.goal) <= GOAL_RADIUS)
        assert truncated == (t == env.max_episode_steps - 1)
    assert sum(rewards) > 100  # the expert gets there and stays


def test_random_goal_env_draws_cell_centres():
    task = get_task("multi2d-medium")
    env = make_env("multi2d-medium")
    grid = maze_map(task.maze)
    centres = {tuple(cell_to_xy(grid, c).astype(np.float32)) for c in empty_cells(grid)}
    goals = set()
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        assert tuple(info["goal"]) in centres
        assert xy_to_cell(grid, obs[:2]) != xy_to_cell(grid, info["goal"])
        goals.add(tuple(info["goal"]))
    assert len(goals) > 5
    assert np.array_equal(env.reset(seed=3)[1]["goal"], env.reset(seed=3)[1]["goal"])


def test_waypoint_policy_noise_and_batching():
    goals = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=np.float32)
    obs = np.array([[1.0, -1.0, 0, 0], [1.0, 1.0, 0, 0], [-1.0, -1.0, 0, 0]], dtype=np.float32)
    clean, noisy = WaypointPolicy("maze2d-umaze", 0.0, seed=1), WaypointPolicy("umaze", 0.5, seed=1)
    clean.reset(goals)
    noisy.reset(goals)
    a_clean, a_noisy = clean.act(obs, np.zeros(3)), noisy.act(obs, np.zeros(3))
    assert a_clean.shape == (3, 2) and a_clean.dtype == np.float32
    assert np.all(np.abs(a_noisy) <= 1) and not np.allclose(a_clean, a_noisy)
