"""Embedded AntMaze data (shared/data/antmaze.py): small slices are deterministic (any number of workers), cached
atomically and verified by re-simulation; tampered files are refused in one line; the reward labels are the
evaluation env's; D4RL's start and goal rules per dataset; and a tiny BC run on an antmaze-umaze slice beats the
random policy's success."""

import h5py
import numpy as np
import pytest
from conftest import load_algorithm

from shared import datasets
from shared.data import ant, antmaze
from shared.datasets import DatasetError, cache_path, content_hash, generate, load_dataset, read_arrays, read_attrs
from shared.evaluation import RandomPolicy, evaluate, make_eval_env
from shared.mazes import empty_cells, maze_map
from shared.tasks import get_task, goal_input, normalized_score

SIZE = 2000  # two 1,000-step episodes


@pytest.fixture(scope="module")
def umaze_slice():
    """antmaze-umaze, 2 episodes, generated (and verified) through the cache."""
    path = generate("antmaze-umaze", size=SIZE, seed=0, progress=False)
    return path, read_arrays(path)


@pytest.mark.slow
def test_slice_is_deterministic_across_workers_and_seeds(monkeypatch):
    monkeypatch.setattr(antmaze, "CHUNK_EPISODES", 1)  # one chunk per episode: 2 workers really split the work
    one = antmaze.generate_arrays("antmaze-medium-play", size=SIZE, seed=7, workers=1, progress=False)
    two = antmaze.generate_arrays("antmaze-medium-play", size=SIZE, seed=7, workers=2, progress=False)
    other = antmaze.generate_arrays("antmaze-medium-play", size=SIZE, seed=8, workers=1, progress=False)
    assert content_hash(one) == content_hash(two)
    assert content_hash(one) != content_hash(other)
    antmaze.check(one, "antmaze-medium-play")  # a fresh slice passes its own verification


def test_generating_leaves_the_callers_random_numbers_alone(tmp_path):
    """Building the controller draws from torch's generator: without the fork in generate(), a run that generated
    its data began from other weights than the same seed on cached data (found by the captured-step test on a GPU)."""
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generate("antmaze-umaze", size=1000, seed=1, out=tmp_path / "one-walk.hdf5", progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_generate_caches_atomically_and_verifies(umaze_slice, monkeypatch):
    path, arrays = umaze_slice
    assert path == cache_path("antmaze-umaze", SIZE, 0)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    attrs = read_attrs(path)
    assert attrs["complete"] and attrs["recipe"] == antmaze.RECIPE and attrs["recipe_version"] == antmaze.RECIPE_VERSION
    assert attrs["controller_sha256"] == antmaze.controller_sha256() and attrs["content_sha256"] == content_hash(arrays)
    # D4RL's layout
    shapes = {k: v.shape for k, v in arrays.items()}
    assert shapes == {"observations": (SIZE, 29), "actions": (SIZE, 8), "rewards": (SIZE,), "terminals": (SIZE,),
                      "timeouts": (SIZE,), "infos/goal": (SIZE, 2), "infos/qpos": (SIZE, 15), "infos/qvel": (SIZE, 14)}
    assert np.flatnonzero(arrays["timeouts"]).tolist() == [999, 1999]

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached file should have been reused")

    monkeypatch.setattr(antmaze, "generate_arrays", no_generation)
    data, info = load_dataset("antmaze-umaze", size=SIZE, seed=0)
    assert info["path"] == str(path) and info["source"] == antmaze.SOURCE
    checked = datasets.verify(path)  # re-simulation, labels, rules, coverage
    assert checked["check/resim_max_error"] <= antmaze.RESIM_TOLERANCE and checked["check/resim_samples"] == 64
    assert checked["check/commanded_goal_reached"] == 1.0 and checked["check/cell_coverage"] == 1.0
    # umaze commands the evaluation goal's cell every episode; each episode walks there, then waits
    assert checked["check/episodes_commanded_to_eval_goal_cell"] == checked["check/episodes"]
    assert 0 < checked["check/median_steps_to_commanded_goal"] < 1000 and 0 < checked["check/share_after_arrival"] < 1
    # and from its start cell: the evaluation's whole route (7 cells) is in the data in one piece, every episode
    assert checked["check/episodes_from_eval_start_cell_to_eval_goal"] == checked["check/episodes"]
    assert checked["check/eval_route_cells"] == 7 == checked["check/longest_walk_cells"]


def _rewrite(src, dst, fix_hash=True, **arrays):
    """A copy of a generated file with some arrays replaced (and, with fix_hash, a matching content hash)."""
    data = read_arrays(src)
    data.update(arrays)
    attrs = read_attrs(src)
    if fix_hash:
        attrs["content_sha256"] = content_hash(data)
    with h5py.File(dst, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
        for key, value in attrs.items():
            f.attrs[key] = value
    return dst


@pytest.mark.parametrize("case, match", [
    ("bytes", "content hash does not match"),
    ("actions", "re-simulating 64 transitions"),
    ("rewards", "rewards do not label"),
    ("goals", "commanded goals outside"),
])
def test_tampered_file_is_refused_in_one_line(umaze_slice, tmp_path, capsys, case, match):
    path, arrays = umaze_slice
    bad = tmp_path / f"{case}.hdf5"
    if case == "bytes":  # damage without the hash updated
        obs = arrays["observations"].copy()
        obs[123, 0] += 1e-3
        _rewrite(path, bad, fix_hash=False, observations=obs)
    elif case == "actions":  # consistent hash, but the logged actions do not produce the logged next states
        _rewrite(path, bad, actions=-arrays["actions"])
    elif case == "rewards":
        _rewrite(path, bad, rewards=np.roll(arrays["rewards"], 50), terminals=np.roll(arrays["terminals"], 50))
    else:  # umaze's commanded goal is the fixed goal cell (3, 1): an episode driving elsewhere breaks the rule
        _rewrite(path, bad, **{"infos/goal": arrays["infos/goal"] + np.array([8.0, 0.0], np.float32)})
    with pytest.raises(DatasetError) as info:
        datasets.verify(bad)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and match in message, message
    with pytest.raises(SystemExit) as exit_info:
        datasets.main(["verify", str(bad)])
    assert str(exit_info.value).startswith("error: dataset") and "\n" not in str(exit_info.value)


def test_reward_labels_are_the_eval_envs(umaze_slice):
    path, arrays = umaze_slice
    task = get_task("antmaze-umaze")
    env = make_eval_env(task.name)
    assert isinstance(env, ant.AntMazeD4RL) and env.max_episode_steps == 700 and env.goal_cell == (3, 1)
    # the label goal is the mean of the evaluation env's per-episode goals (D4RL's goal noise)
    goals = np.stack([env.reset(seed=s)[1]["goal"] for s in range(300)])
    np.testing.assert_allclose(goals.mean(0), antmaze.label_goal("umaze"), atol=0.06)
    # rewarded and unrewarded transitions re-simulated in the evaluation env itself, its goal at the label goal
    rewarded = np.flatnonzero(arrays["rewards"][:-1] > 0)
    picks = np.concatenate([rewarded[:: max(1, len(rewarded) // 20)], np.arange(0, 900, 45)])
    picks = picks[~arrays["timeouts"][picks]]
    assert 0 < arrays["rewards"][picks].sum() < len(picks)
    next_obs, rewards = antmaze.resimulate(arrays, "umaze", picks, env=env)
    np.testing.assert_array_equal(rewards, arrays["rewards"][picks])
    np.testing.assert_allclose(next_obs, arrays["observations"][picks + 1], atol=antmaze.RESIM_TOLERANCE)
    env.close()
    # D4RL's antmaze scores: return = success, score = 100 x success rate
    assert normalized_score(task.name, 1.0) == 100.0 and normalized_score(task.name, 0.0) == 0.0
    assert [goal_input(task.name, a) for a in ("bc", "iql", "dt", "diffuser", "mage")] == [0, 0, 0, 0, 1]


def test_mage_trains_on_whole_walks_despite_the_terminals_at_the_evaluation_goal(umaze_slice):
    """D4RL's antmaze marks every step at the evaluation goal terminal; on antmaze-umaze (the collector's goal is that
    goal) that is most steps after arrival. MAGE relabels with the collector's goal, so its trajectories are the two
    1,000-step walks, not hundreds of one-step pieces."""
    import torch
    _, arrays = umaze_slice
    assert arrays["terminals"].sum() > 100
    mage = load_algorithm("mage")
    cfg = mage.TrainConfig(task="antmaze-umaze", dataset_size=SIZE, horizon=16, patch=2, scales=[1, 2, 4, 8],
                           device="cpu", wandb_mode="disabled")
    data = mage.load_data(cfg, torch.device("cpu"))
    assert data.buffer.num_trajectories == SIZE // antmaze.EPISODE_STEPS


def test_head_track_sees_the_plan_in_the_heading_frame_learns_and_acts(umaze_slice):
    """With head_track the head's extra input is the collector's features of (s_t, the decoded plan's (x, y) k steps
    ahead; in training, where the logged segment is k steps on): the same ant turned round (yaw + 90 degrees, same
    plan) sees its target on another side; the head still learns (L_inv falls) and the policy acts, with waypoints
    on."""
    import torch
    mage = load_algorithm("mage")
    cfg = mage.TrainConfig(task="antmaze-umaze", dataset_size=SIZE, horizon=16, patch=2, scales=[1, 2, 4, 8],
                           codebook_size=64, code_dim=8, ae_channels=32, ae_blocks=1, d_model=64, n_layers=2,
                           n_heads=4, dropout=0.0, batch_size=32, warmup_steps=10, device="cpu", wandb_mode="disabled",
                           return_condition=True, plan_dims=2, head_track=8, waypoint_hops=4, waypoint_square=1.0)
    data = mage.load_data(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = mage.MAGE(cfg, data.obs_dim, data.cond_dim, data.act_dim, data.obs_norm)
    kept = data.obs_norm.mean.copy()
    model.load_state_dict({**model.state_dict(), "obs_mean": model.obs_mean + 1.0})  # another run's normaliser
    assert np.array_equal(data.obs_norm.mean, kept)  # ... does not leak into the data's
    model.obs_mean -= 1.0
    batch = mage.sample_batch(data, cfg)
    cond, z = batch["cond"][:, 0], torch.randn(32, cfg.code_dim, 8)
    seen = []
    model.inverse.forward = lambda z, c, track: seen.append(track) or torch.zeros(len(z), data.act_dim)
    model.act(z, cond)
    xy = model.decode(z, cond)[:, 8, 1:3] * model.obs_std[:2] + model.obs_mean[:2]
    state = cond[:, 1:30] * model.obs_std + model.obs_mean
    assert torch.allclose(seen[0], ant.controller_features(state, xy), atol=1e-5)
    mage.autoencoder_loss(model, batch, cfg)  # training pairs the logged action with where its segment went
    logged = batch["x"][:, 8, 1:3] * model.obs_std[:2] + model.obs_mean[:2]
    assert torch.allclose(seen[1], ant.controller_features(state, logged), atol=1e-5)
    # goal_snap: acting, a tracked position within that distance of the goal (cond's last columns) becomes the goal
    goal = cond[:, -2:] * model.obs_std[:2] + model.obs_mean[:2]
    dist = (xy - goal).detach().norm(dim=-1)
    model.goal_snap = float(dist.sort().values[15:17].mean())  # between two plans: float error cannot flip one
    near = dist <= model.goal_snap
    model.act(z, cond)
    snapped = ant.controller_features(state, torch.where(near[:, None], goal, xy))
    assert 0 < int(near.sum()) < len(near) and torch.allclose(seen[2], snapped, atol=1e-4)
    model.goal_snap = 0.0
    turned = state.clone()  # yaw + 90 degrees: q' = q_z(90) * q
    w, x, y, z4 = state[:, 3:7].unbind(-1)
    c = 2 ** -0.5
    turned[:, 3:7] = torch.stack([c * (w - z4), c * (x - y), c * (y + x), c * (z4 + w)], -1)
    assert not torch.allclose(ant.controller_features(turned, xy)[:, -3:-1], seen[0][:, -3:-1], atol=1e-2)
    del model.inverse.forward  # the head's own forward again
    opt = mage.make_optimizer(model, "autoencoder", cfg)
    inv = [float(mage.update(model, opt, batch, cfg, "autoencoder")["ae/inv"]) for _ in range(80)]
    assert inv[-1] < 0.7 * inv[0]
    policy = mage.MagePolicy(model, data, cfg, torch.device("cpu"))
    obs = read_arrays(umaze_slice[0])["observations"][:3]
    policy.reset(np.array([[0.0, 8.0]] * 3))
    action = policy.act(obs, np.zeros(3))
    assert action.shape == (3, data.act_dim) and np.isfinite(action).all()
    for bad, match in ((dict(task="maze2d-umaze"), "head_track .* is for antmaze"), (dict(head_track=16), "plan step"),
                       (dict(head_track=0, head_condition="track"), "needs head_track > 0"),
                       (dict(head_track=0, goal_snap=1.0), "goal_snap")):
        with pytest.raises(mage.RunError, match=match):
            mage.load_data(mage.TrainConfig(**{**cfg.__dict__, **bad}), torch.device("cpu"))
    # head_condition "track": the action is read off the plan's target alone, not the latent or the condition
    only = mage.MAGE(mage.TrainConfig(**{**cfg.__dict__, "head_condition": "track"}), data.obs_dim, data.cond_dim,
                     data.act_dim, data.obs_norm).inverse
    track = torch.randn(32, ant.FEATURE_DIM)
    assert only.latent_in is None and only.cond_in is None
    assert torch.equal(only(z, cond, track), only(torch.randn_like(z), torch.randn_like(cond), track))
    assert not torch.allclose(only(z, cond, track), only(z, cond, torch.randn_like(track)))


@pytest.mark.parametrize("name", list(antmaze.VARIANTS))
def test_d4rl_start_and_goal_rules(name):
    maze, start_rule, goal_rule = antmaze.VARIANTS[name]
    grid = maze_map(maze)
    free = empty_cells(grid)
    env = ant.make_maze_env(maze)
    init_qpos, init_qvel = env.model.qpos0.copy(), np.zeros(env.model.nv)
    env.close()
    rng = np.random.default_rng(0)
    draws = [antmaze.draw_episode(name, rng, init_qpos, init_qvel) for _ in range(1500)]
    qpos = np.stack([d[0] for d in draws])
    goals = np.stack([d[2] for d in draws])
    start_cells = set(antmaze.cells_of(qpos[:, :2] - (0 if start_rule == "fixed" else np.array([0.5, -0.5])), maze))
    goal_cells = set(antmaze.cells_of(goals - np.array([0.75, -0.75]), maze))
    if start_rule == "fixed":
        assert start_cells == {(1, 1)}
        centre = antmaze.d4rl_offset((1, 1), grid, 0.0, 0.0)
        assert np.abs(qpos[:, :2] - centre).max() <= ant.RESET_NOISE  # the ant's reset noise only
    elif start_rule == "play":  # multistart, never in a play goal cell (D4RL marks them as walls for resets)
        assert start_cells == set(free) - set(antmaze.PLAY_GOAL_CELLS[maze])
    else:
        assert start_cells == set(free)
    if goal_rule == "fixed":
        assert goal_cells == {(3, 1)}
    elif goal_rule == "play":
        assert goal_cells == set(antmaze.PLAY_GOAL_CELLS[maze])
    else:
        assert goal_cells == set(free)
    # D4RL's one-sided noise: starts + U(0, 1) m, goals + U(0, 1) + U(0, 0.5) m along +column and +row
    probes = [(goals, 1.5)] + ([] if start_rule == "fixed" else [(qpos[:, :2], 1.0)])
    for xy, bound in probes:
        cells = antmaze.cells_of(xy - np.array([bound / 2, -bound / 2]), maze)
        offset = (xy - np.stack([antmaze.d4rl_offset(c, grid, 0.0, 0.0) for c in cells])) * np.array([1.0, -1.0])
        assert offset.min() >= 0.0 and offset.max() <= bound and offset.max() > 0.9 * bound


@pytest.mark.slow
def test_tiny_bc_on_an_antmaze_umaze_slice_beats_the_random_policy(tmp_path):
    """BC imitates the noisy collector (100 episodes, 8,000 steps; seed 0 here: 3 of 10 episodes reach the goal, 2 of
    10 with 50 episodes and 5,000 steps); the random policy never reaches umaze's goal in 700 steps."""
    bc = load_algorithm("bc")
    random_success = evaluate("antmaze-umaze", RandomPolicy(8, seed=0), 10, 0, num_envs=10, progress=False)
    config = bc.TrainConfig(task="antmaze-umaze", dataset_size=100_000, wandb_mode="disabled", device="cpu",
                            hidden_dim=256, n_layers=2, batch_size=512, steps=8000, lr=1e-3, log_every=500,
                            eval_episodes=10, num_eval_envs=10, eval_seed=0, out_dir=str(tmp_path),
                            checkpoint_every=10**6)
    final = bc.main(config)
    assert random_success.success_rate == 0.0
    assert final["normalized_score"] >= 10.0, final["normalized_score"]  # 100 x success rate: >= 1 of 10 episodes
