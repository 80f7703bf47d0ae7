"""D4RL's ant on gymnasium-robotics (shared/data/ant.py) and the SAC goal-reaching controller
(shared/data/ant_controller.py): the model, the observation layout, the controller's heading-invariant inputs, the
SAC update, a tiny training run end to end, and (CUDA only) the captured update."""

import json
import math

import gymnasium
import mujoco
import numpy as np
import pytest
import torch

from shared.data import ant
from shared.data import ant_controller as ac
from shared.data import sac as sac_lib
from shared.training import make_step


@pytest.fixture(scope="module")
def maze_env():
    env = ant.AntMazeD4RL("large", goal_in_obs=True)
    yield env
    env.close()


@pytest.fixture(scope="module")
def arena():
    env = ant.AntArenaEnv(continuing=True, goal_timeout=1000)
    yield env
    env.close()


def _yaw_quat(theta: float) -> np.ndarray:
    return np.array([math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, a, b)
    return out


# ----------------------------------------------------------------------------- the model
def test_model_is_d4rl_ant_10hz_gear30(maze_env, arena):
    stock = gymnasium.make("Ant-v5").unwrapped  # gymnasium's own ant, for contrast: 20 Hz, gear 150
    assert stock.dt == pytest.approx(0.05) and stock.model.actuator_gear[0, 0] == 150
    stock.close()
    for model, dt in ((arena.model, arena.ant.dt), (maze_env.model, maze_env.env.ant_env.dt)):
        assert model.opt.timestep == pytest.approx(0.02)
        assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
        assert dt == pytest.approx(0.1)  # 10 Hz
        assert model.nu == 8 and np.all(model.actuator_gear[:, 0] == 30.0)
        assert np.allclose(model.actuator_ctrlrange, [[-1.0, 1.0]] * 8)
        torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "torso_geom")
        assert np.allclose(model.geom_solimp[torso, :3], [0.8, 0.8, 0.01])  # D4RL's contact softness
    # the maze env carries gymnasium-robotics' walls: large maze, 4 m cells
    blocks = [mujoco.mj_id2name(maze_env.model, mujoco.mjtObj.mjOBJ_GEOM, i) for i in range(maze_env.model.ngeom)]
    assert sum(1 for b in blocks if b and b.startswith("block_")) == sum(row.count(1) for row in maze_env.grid)
    wall = mujoco.mj_name2id(maze_env.model, mujoco.mjtObj.mjOBJ_GEOM, "block_0_0")
    assert np.allclose(maze_env.model.geom_size[wall, :2], [2.0, 2.0])


def test_maze_observation_layout_reward_and_starts(maze_env):
    obs, info = maze_env.reset(seed=3)
    assert obs.shape == (31,) and obs.dtype == np.float32
    data = maze_env.data
    assert np.allclose(obs[:29], np.concatenate([data.qpos[:15], data.qvel[:14]]), atol=1e-6)
    assert np.allclose(obs[29:], info["goal"], atol=1e-6)
    start = ant.cell_to_xy(maze_env.grid, (1, 1)) * 4.0
    assert np.all(np.abs(obs[:2] - start) <= 0.1 + 1e-6)  # D4RL's reset noise, no +-1 m gymnasium noise
    assert obs[2] == pytest.approx(0.75, abs=0.11)
    offset = info["goal"] - ant.cell_to_xy(maze_env.grid, (7, 9)) * 4.0  # D4RL's one-sided goal noise
    assert 0 <= offset[0] <= 1.5 and -1.5 <= offset[1] <= 0
    # reward = terminal = within 0.5 m of the goal
    obs, reward, term, trunc, _ = maze_env.step(np.zeros(8))
    assert reward == 0.0 and not term and not trunc
    qpos, qvel = data.qpos.copy(), data.qvel.copy()
    qpos[:2] = maze_env.goal + [0.3, 0.0]
    maze_env.env.ant_env.set_state(qpos, qvel)
    obs, reward, term, _, info = maze_env.step(np.zeros(8))
    assert reward == 1.0 and term and info["success"]
    plain = ant.AntMazeD4RL("umaze")
    obs, _ = plain.reset(seed=0)
    assert obs.shape == (29,) and plain.max_episode_steps == 700
    plain.close()


def test_arena_goals_and_reward(arena):
    obs, info = arena.reset(seed=0)
    d = np.linalg.norm(info["goal"] - obs[:2])
    assert 2.0 <= d <= 4.0 and np.allclose(obs[29:], info["goal"])
    _, reward, term, _, info = arena.step(np.zeros(8))
    assert not term and not info["success"]
    # put the torso next to the goal: success, the bonus, and (continuing) a fresh goal 2-4 m away
    qpos, qvel = arena.data.qpos.copy(), arena.data.qvel.copy()
    old_goal = arena.goal.copy()
    qpos[:2] = old_goal + [0.2, 0.0]
    arena.ant.set_state(qpos, qvel)
    arena.dist = 0.2
    obs, reward, term, _, info = arena.step(np.zeros(8))
    assert info["success"] and info["goals_reached"] == 1 and reward > 4.0 and not term
    assert not np.allclose(obs[29:], old_goal) and 2.0 - 0.1 <= np.linalg.norm(obs[29:] - obs[:2]) <= 4.0 + 0.1
    # upside down ends the episode
    qpos = arena.data.qpos.copy()
    qpos[3:7] = [0.0, 1.0, 0.0, 0.0]
    arena.ant.set_state(qpos, arena.data.qvel.copy())
    _, _, term, _, info = arena.step(np.zeros(8))
    assert term and info["flipped"]


# ----------------------------------------------------------------------------- the controller's inputs
def _rotated_copy(qpos: np.ndarray, qvel: np.ndarray, theta: float):
    """The same ant turned by theta about the world z axis through its torso."""
    q2, v2 = qpos.copy(), qvel.copy()
    q2[3:7] = _quat_mul(_yaw_quat(theta), qpos[3:7])
    c, s = math.cos(theta), math.sin(theta)
    v2[0:2] = [c * qvel[0] - s * qvel[1], s * qvel[0] + c * qvel[1]]  # world-frame linear velocity turns
    return q2, v2  # the free joint's angular velocity is in the body frame: unchanged


def test_goal_features_rotate_with_torso_and_simulation_agrees(arena):
    arena.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(15):  # a moving, tilted, non-trivial state
        arena.step(rng.uniform(-1, 1, 8))
    qpos, qvel = arena.data.qpos.copy(), arena.data.qvel.copy()
    xy = qpos[:2]
    goal = xy + np.array([3.0, 1.0])
    feats = lambda q, v, g: ant.controller_features(  # noqa: E731
        torch.as_tensor(ant.d4rl_observation(q, v))[None], torch.as_tensor(g, dtype=torch.float32)[None])[0]
    base = feats(qpos, qvel, goal)
    assert base.shape == (ant.FEATURE_DIM,)
    theta = 0.9
    q2, v2 = _rotated_copy(qpos, qvel, theta)
    # goal fixed in the world, torso turned by theta: the goal's direction turns by -theta, the rest is unchanged
    turned = feats(q2, v2, goal)
    c, s = math.cos(-theta), math.sin(-theta)
    expect_dir = torch.tensor([c * base[27] - s * base[28], s * base[27] + c * base[28]])
    assert torch.allclose(turned[27:29], expect_dir, atol=1e-5)
    assert torch.allclose(turned[:27], base[:27], atol=1e-5) and torch.allclose(turned[29], base[29])
    # goal turned with the torso: identical inputs; and the physics agrees (free-joint frames used correctly)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    goal2 = xy + rot @ (goal - xy)
    assert torch.allclose(feats(q2, v2, goal2), base, atol=1e-5)
    sim_a = ant.AntArenaEnv()
    sim_b = ant.AntArenaEnv()
    sim_a.reset(seed=0)
    sim_b.reset(seed=0)
    sim_a.ant.set_state(qpos, qvel)
    sim_b.ant.set_state(q2, v2)
    for _ in range(8):
        a = rng.uniform(-1, 1, 8)
        sim_a.ant.do_simulation(a, ant.FRAME_SKIP)
        sim_b.ant.do_simulation(a, ant.FRAME_SKIP)
    fa = feats(sim_a.data.qpos, sim_a.data.qvel, goal)
    pa = sim_a.data.qpos[:2]
    fb = feats(sim_b.data.qpos, sim_b.data.qvel, xy + rot @ (goal - xy))
    assert np.allclose(sim_b.data.qpos[:2] - xy, rot @ (pa - xy), atol=1e-3)
    assert torch.allclose(fa, fb, atol=2e-3), (fa - fb).abs().max()
    sim_a.close()
    sim_b.close()


# ----------------------------------------------------------------------------- the planner's waypoints
def test_maze_waypoints_follow_bfs_to_goal():
    planner = ant.MazeWaypoints("large")
    grid = planner.grid
    goal = ant.cell_to_xy(grid, (7, 9)) * 4.0 + [0.5, -0.5]
    start = ant.cell_to_xy(grid, (1, 1)) * 4.0
    wp = planner.waypoint(start + [0.3, 0.2], goal)
    assert planner.cell_of(wp) == ant.bfs_path(grid, (1, 1), (7, 9))[1]
    cell, hops = (1, 1), 0
    while cell != (7, 9):
        nxt = planner.next_cell(cell, (7, 9))
        assert abs(nxt[0] - cell[0]) + abs(nxt[1] - cell[1]) == 1 and ant.is_free(grid, nxt)
        cell, hops = nxt, hops + 1
    assert hops == len(ant.bfs_path(grid, (1, 1), (7, 9))) - 1
    assert np.allclose(planner.waypoint(goal + [0.4, 0.4], goal), goal)  # in the goal's cell: the goal itself
    jittered = planner.waypoint(start, goal, np.random.default_rng(0)) - wp
    assert 0 <= jittered[0] <= 1 and -1 <= jittered[1] <= 0


# ----------------------------------------------------------------------------- SAC
def _small_config(tmp_path, **kw) -> ac.TrainConfig:
    base = dict(device="cpu", vector_env="sync", num_envs=2, num_eval_envs=2, hidden_dim=64, batch_size=128,
                out_dir=str(tmp_path / "run"), controller_path=str(tmp_path / "ctrl.pt"),
                results_path=str(tmp_path / "res.json"))
    base.update(kw)
    return ac.TrainConfig(**base)


@pytest.mark.slow
def test_sac_updates_fit_the_critic_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    config = _small_config(tmp_path, critic_lr=1e-3)
    env = ant.AntArenaEnv()
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(128):
        a = rng.uniform(-1, 1, 8).astype(np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        rows.append((obs, a, r, nxt, float(term)))
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    batch = {k: torch.as_tensor(np.array(v), dtype=torch.float32)
             for k, v in zip(("obs", "act", "rew", "next_obs", "done"), zip(*rows))}
    sac = ac.SAC(config)
    batch["feat"], batch["next_feat"] = sac.actor.features(batch.pop("obs")), sac.actor.features(batch.pop("next_obs"))
    opts = sac_lib.make_optimizers(sac, config, False)
    before = [p.detach().clone() for p in sac.actor.parameters()]
    losses = [float(sac_lib.update(sac, opts, batch, config)["sac/q_loss"]) for _ in range(150)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert any(not torch.equal(a, b) for a, b in zip(before, sac.actor.parameters()))  # the actor learns too
    target_moved = any(not torch.equal(p, tp) for p, tp in zip(sac.qf.parameters(), sac.qf_target.parameters()))
    assert target_moved


def test_replay_samples_only_filled_rows():
    replay = sac_lib.Replay(10, 30, 8, torch.device("cpu"))
    replay.add(np.ones((3, 30)), np.zeros((3, 8)), np.arange(3), np.ones((3, 30)), np.zeros(3))
    sample = replay.sample(500)
    assert set(sample["rew"].tolist()) == {0.0, 1.0, 2.0}
    replay.add(np.ones((9, 30)), np.zeros((9, 8)), 10 + np.arange(9), np.ones((9, 30)), np.zeros(9))
    assert replay.n == 10 and replay.ptr == 2  # wrapped around
    assert set(replay.sample(2000)["rew"].tolist()) == {float(v) for v in 10 + np.arange(9)} | {2.0}


def test_short_training_writes_a_loadable_controller(tmp_path):
    config = _small_config(tmp_path, env_steps=600, learning_starts=200, utd=0.25, batch_size=32, log_every=200,
                           checkpoint_every=400, eval_every=400, eval_episodes_during=2, eval_episodes=4,
                           eval_max_steps=30, maze_eval_episodes=2, maze_max_steps=15)
    result = ac.train(config)
    assert result["env_steps"] == 600 and result["updates"] == 100
    assert [e["env_steps"] for e in result["curve"]] == [200, 400, 600]
    assert result["arena"]["episodes"] == 4 and set(result["mazes"]) == {"umaze", "medium", "large"}
    assert all(m["episodes"] == 2 and m["success_rate"] == 0.0 for m in result["mazes"].values())  # 15 steps
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["curve"] == result["curve"] and saved["evals"][0]["env_steps"] == 400
    assert list((tmp_path / "run").glob("checkpoint_*.pt"))
    path = tmp_path / "ctrl.pt"
    assert path.stat().st_size < 5e6
    controller = ac.load_controller(str(path))
    env = ant.AntMazeD4RL("medium")
    obs, info = env.reset(seed=0)
    single = controller.act(obs, info["goal"])
    assert single.shape == (8,) and single.dtype == np.float32
    batch_obs = np.stack([obs, obs + 0.01])
    batch = controller.act(batch_obs, np.stack([info["goal"], info["goal"] + 1.0]))
    assert batch.shape == (2, 8) and np.all(np.abs(batch) <= 1.0)
    assert np.allclose(batch[0], single, atol=1e-6)  # deterministic, and batched = one by one
    with pytest.raises(ValueError):
        controller.act(np.zeros((2, 31)), np.zeros((2, 2)))
    env.close()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the captured (CUDA graph) update needs a GPU")
def test_captured_update_learns_on_cuda(tmp_path):
    config = _small_config(tmp_path, device="cuda", critic_lr=1e-3)
    device = torch.device("cuda")
    torch.manual_seed(0)
    sac = ac.SAC(config).to(device)
    opts = sac_lib.make_optimizers(sac, config, True)
    replay = sac_lib.Replay(256, ant.FEATURE_DIM, 8, device)
    rng = np.random.default_rng(0)
    obs = np.concatenate([rng.normal(0, 0.3, (256, 29)), rng.normal(0, 3, (256, 2))], 1)
    obs[:, 2] += 0.6
    obs[:, 3] += 1.0
    feats = sac.actor.features(torch.as_tensor(obs, dtype=torch.float32, device=device)).detach()
    replay.add(feats, rng.uniform(-1, 1, (256, 8)), rng.normal(0, 1, 256), feats.roll(1, 0), np.zeros(256))
    step = make_step(lambda b: sac_lib.update(sac, opts, b, config), lambda: replay.sample(128), list(opts.values()),
                        graph=True)
    losses = [float(step(i)["sac/q_loss"]) for i in range(300)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-20:]) < np.mean(losses[3:8])
