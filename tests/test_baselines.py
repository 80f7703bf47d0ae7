"""Baselines (BC, IQL, DT): tiny maze2d-umaze runs learn and beat the random policy, DT's mask is causal,
filtered BC keeps the best trajectories, a killed run resumes to the same parameters, and each is given what the
task's protocol says (maze2d: no goal, the sparse reward of the fixed evaluation goal; -goal variants and multi2d:
the goal)."""

import json

import numpy as np
import pytest
import torch
from conftest import load_algorithm

from shared.buffer import returns_to_go, split_trajectories
from shared.datasets import load_dataset
from shared.mazes import make_env
from shared.tasks import algo_inputs, goal_input

bc = load_algorithm("bc")
iql = load_algorithm("iql")
dt = load_algorithm("dt")

DATA = dict(task="maze2d-umaze", dataset_size=30_000, wandb_mode="disabled", device="cpu")
EVAL = dict(eval_episodes=10, num_eval_envs=10, eval_seed=0)
# the tiny settings of configs/<algo>/tiny.yaml, shortened further to keep the file at a few minutes on 2 cores
TINY = {
    "bc": dict(hidden_dim=256, n_layers=2, batch_size=256, steps=1000, lr=1e-3, log_every=100),
    "iql": dict(hidden_dim=256, n_layers=2, batch_size=256, steps=1500, log_every=100, p_data_goal=1.0,
                p_future_goal=0.0),
    "dt": dict(embedding_dim=64, n_layers=2, n_heads=1, seq_len=10, batch_size=64, steps=800, lr=1e-3,
               warmup_steps=100, log_every=50, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0),
}
MODULES = {"bc": bc, "iql": iql, "dt": dt}
FALL = {"bc": 0.85, "iql": 0.95, "dt": 0.85}  # last logged losses / first ones at most (IQL: weights shift too)


def logged(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "iql", "dt"])
def test_tiny_run_learns_and_beats_the_random_policy(algo, tmp_path):
    """The goal-conditioned variants (bc-goal, iql-goal, dt-goal: ``goal_input true``) on maze2d-umaze."""
    module = MODULES[algo]
    config = module.TrainConfig(**DATA, **EVAL, **TINY[algo], goal_input=True, out_dir=str(tmp_path),
                                checkpoint_every=10**6)
    final = module.main(config)
    run_dir = tmp_path / algo / "maze2d-umaze" / "seed0"
    assert all(np.isfinite(logged(run_dir, "train/loss")))  # IQL's train/loss: v + q + actor loss
    # BC/DT: the action MSE; IQL: the advantage-weighted actor loss
    loss = logged(run_dir, "iql/actor_loss" if algo == "iql" else "train/loss")
    assert len(loss) >= 8 and all(np.isfinite(loss))
    assert np.mean(loss[-3:]) < FALL[algo] * np.mean(loss[:3]), loss
    if algo == "iql":  # TD learning at work: V moves from 0 towards the (negative) cost-to-goal
        assert all(np.isfinite(logged(run_dir, "iql/q_loss")))
        assert logged(run_dir, "iql/v_mean")[-1] < -2.0
    # normalised score 0 = the random policy's mean return (std ~17 points over 10 episodes)
    assert final["normalized_score"] > 15.0, final["normalized_score"]
    assert final["train_steps"] == config.steps and final["algo"] == algo
    assert (run_dir / "final.json").exists() and list(run_dir.glob("checkpoint_*.pt"))


@pytest.mark.slow
def test_tiny_iql_without_the_goal_beats_the_random_policy(tmp_path):
    """maze2d's protocol: IQL from (observation, sparse reward) alone reaches the fixed goal and stays there.
    Tiny-run settings (not the configs'): a short horizon (discount 0.95) and fast targets (tau 0.05, critic lr 1e-3)
    carry the reward across the maze in 3,000 steps (seeds 0 / 1 score about 109 / 43 on 20 episodes)."""
    config = iql.TrainConfig(**DATA, **EVAL, hidden_dim=256, n_layers=2, batch_size=256, steps=3000, log_every=500,
                             expectile=0.9, beta=10.0, tau=0.05, discount=0.95, qf_lr=1e-3, vf_lr=1e-3,
                             out_dir=str(tmp_path), checkpoint_every=10**6)
    final = iql.main(config)
    assert final["config"]["goal_input"] is False  # resolved from the task's protocol and recorded
    assert final["normalized_score"] > 15.0, final["normalized_score"]  # random: 0 (std ~5 over 10 episodes)


def test_dt_causal_mask_never_lets_a_token_see_the_future():
    torch.manual_seed(0)
    config = dt.TrainConfig(embedding_dim=32, n_layers=2, n_heads=2)
    model = dt.DecisionTransformer(config, state_dim=4, act_dim=2, goal_dim=2, max_timestep=50).eval()
    B, T = 3, 8
    states, actions, returns = torch.randn(B, T, 4), torch.randn(B, T, 2), torch.rand(B, T, 1)
    timesteps, goals = torch.arange(T).expand(B, T), torch.randn(B, T, 2)
    base = model.encode(states, actions, returns, timesteps, goals)
    for t in range(T):
        for slot, name in enumerate(("returns", "states", "actions")):  # token order R_t, s_t, a_t
            inputs = {"states": states.clone(), "actions": actions.clone(), "returns": returns.clone()}
            inputs[name][:, t] += 1.0
            out = model.encode(inputs["states"], inputs["actions"], inputs["returns"], timesteps, goals)
            token = 3 * t + slot
            assert torch.equal(out[:, :token], base[:, :token]), (name, t)  # the past never sees the change
            assert not torch.allclose(out[:, token:], base[:, token:]), (name, t)  # the change is seen after
    # the action predicted at step t (from s_t's output) ignores a_t itself
    changed = actions.clone()
    changed[:, -1] = 5.0
    assert torch.equal(model(states, changed, returns, timesteps, goals), model(states, actions, returns, timesteps,
                                                                                 goals))


def test_filtered_bc_keeps_the_top_return_trajectories():
    bounds = np.array([[0, 3], [3, 5], [5, 9], [9, 10]])
    rewards = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 0], np.float32)  # returns 1, 2, 1, 0
    assert bc.keep_top_trajectories(rewards, bounds, 0.25).tolist() == [[3, 5]]
    assert bc.keep_top_trajectories(rewards, bounds, 0.5).tolist() == [[0, 3], [3, 5]]  # tie: earlier first
    assert bc.keep_top_trajectories(rewards, bounds, 1.0).tolist() == bounds.tolist()
    assert bc.algo_name(bc.TrainConfig(filter_top_fraction=0.1)) == "bc10"
    assert bc.algo_name(bc.TrainConfig()) == "bc"


def test_iql_goal_relabelling_rewards_reaching_the_goal():
    config = iql.TrainConfig(**DATA, goal_input=True, p_data_goal=0.0, p_future_goal=1.0, discount=0.9, batch_size=4096)
    data = iql.load_data(config, torch.device("cpu"))
    torch.manual_seed(0)
    batch = iql.sample_batch(data, config)
    # future goals with a short geometric offset: many are reached at once; r = 0 exactly there, -1 elsewhere
    assert set(batch["r"].unique().tolist()) == {-1.0, 0.0}
    assert torch.equal(batch["done"], batch["r"] + 1.0)
    assert 0.05 < batch["done"].mean() < 0.95
    # done exactly where the next position (un-normalised) lies within goal_radius of the (relabelled) goal
    std = torch.as_tensor(data.obs_norm.std[:2])
    dist = ((batch["x2"][:, :2] - batch["x2"][:, -2:]) * std).norm(dim=-1)
    assert ((dist <= data.goal_radius) == batch["done"].bool()).float().mean() > 0.999


@pytest.mark.parametrize("algo", ["bc", "iql", "dt"])
def test_resume_after_a_kill_reaches_the_same_parameters(algo, tmp_path, monkeypatch):
    module = MODULES[algo]
    small = {**TINY[algo], "steps": 40, "log_every": 10, "checkpoint_every": 20}
    if algo == "bc":
        small["hidden_dim"] = 64
    if algo == "iql":  # goal-conditioned: the relabelling's random draws must resume too
        small.update(hidden_dim=64, goal_input=True, p_data_goal=0.5, p_future_goal=0.5)
    common = dict(**DATA, **small, eval_episodes=1, num_eval_envs=1)
    module.main(module.TrainConfig(**common, out_dir=str(tmp_path / "straight")))

    class KilledLogger(module.Logger):  # the process dies right after step 30 (checkpoint at 20)
        def log(self, metrics, step):
            if step >= 30:
                raise KeyboardInterrupt
            super().log(metrics, step)

    monkeypatch.setattr(module, "Logger", KilledLogger)
    with pytest.raises(KeyboardInterrupt):
        module.main(module.TrainConfig(**common, out_dir=str(tmp_path / "killed")))
    monkeypatch.undo()
    module.main(module.TrainConfig(**common, out_dir=str(tmp_path / "killed"), resume=True))

    def final_params(name):
        ckpt = torch.load(sorted((tmp_path / name / algo / "maze2d-umaze" / "seed0").glob("checkpoint_*.pt"))[-1],
                          weights_only=False)
        assert ckpt["step"] == 40
        return ckpt["model"]

    straight, resumed = final_params("straight"), final_params("killed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def input_width(algo: str, data, config) -> int:
    """Width of what the networks read per step besides the action, built as each main() builds them."""
    if algo == "bc":
        return bc.Actor(data.in_dim, data.act_dim, 8, 1, 0.0, "mse").trunk[0].in_features
    if algo == "iql":
        model = iql.IQL(config, data.in_dim, data.act_dim)
        assert model.actor.net[0].in_features == model.qf.q1[0].in_features - data.act_dim
        return model.vf[0].in_features
    model = dt.DecisionTransformer(config, data.obs_dim, data.act_dim, data.goal_dim, data.max_timestep)
    return model.state_emb.in_features + (model.goal_emb.in_features if model.goal_emb is not None else 0)


@pytest.mark.parametrize("algo", ["bc", "iql", "dt"])
def test_maze2d_inputs_have_no_goal_and_the_goal_variants_and_multi2d_do(algo):
    module = MODULES[algo]
    widths = {}
    for task, goal in [("maze2d-umaze", None), ("maze2d-umaze", True), ("multi2d-umaze", None)]:
        config = module.TrainConfig(**{**DATA, "task": task}, goal_input=goal, **({"hidden_dim": 8, "n_layers": 1}
                                    if algo != "dt" else {"embedding_dim": 8, "n_layers": 1}))
        data = module.load_data(config, torch.device("cpu"))
        widths[(task, goal)] = input_width(algo, data, config)
        assert data.obs_dim == 4
    assert widths == {("maze2d-umaze", None): 4, ("maze2d-umaze", True): 6, ("multi2d-umaze", None): 6}
    # the registry says so too, and refuses what a task cannot give or do without
    assert not goal_input("maze2d-umaze", algo) and goal_input("maze2d-umaze", algo, True)
    assert goal_input("multi2d-umaze", algo) and "goal" in algo_inputs("multi2d-umaze", algo)
    assert goal_input("maze2d-large", "mage") and goal_input("maze2d-large", "diffuser")  # the planners get it
    with pytest.raises(ValueError, match="needs the goal"):
        goal_input("multi2d-umaze", algo, False)
    with pytest.raises(ValueError, match="no goal"):
        goal_input("hopper-medium-v2", algo, True)


def test_maze2d_reward_is_the_sparse_reward_of_the_fixed_eval_goal():
    """IQL's rewards and DT's returns-to-go on maze2d are the rewards the evaluation env hands out (1 within 0.45 of
    the fixed goal after the step), checked by replaying dataset transitions in that env."""
    data, _ = load_dataset("maze2d-umaze", size=DATA["dataset_size"])
    config = iql.TrainConfig(**DATA)
    rewards = iql.load_data(config, torch.device("cpu")).buffer.fields["rewards"].numpy()
    np.testing.assert_array_equal(rewards, data["rewards"])  # as stored: no relabelling, no bias
    assert set(np.unique(rewards)) == {0.0, 1.0} and 0.01 < rewards.mean() < 0.5
    batch = iql.sample_batch(iql.load_data(config, torch.device("cpu")), config)
    assert not batch["done"].any() and batch["x"].shape[1] == 4  # no terminals, no goal
    env = make_env("maze2d-umaze")
    env.reset(seed=0)  # the fixed evaluation goal (D4RL's G cell)
    rng = np.random.default_rng(0)
    hits = np.flatnonzero(rewards > 0)
    picks = np.unique(np.concatenate([hits, np.clip(hits - 1, 0, None), rng.choice(len(rewards), 300)]))
    for t in picks:  # every rewarded step, the step before each, and random others
        env.unwrapped.point_env.set_state(data["infos/qpos"][t].astype(np.float64),
                                          data["infos/qvel"][t].astype(np.float64))
        _, reward, *_ = env.step(data["actions"][t])
        assert reward == rewards[t], t
    env.close()
    # DT conditions on the undiscounted return-to-go of those same rewards (reward_scale 1 as in the maze2d configs)
    seq = dt.load_data(dt.TrainConfig(**DATA, reward_scale=1.0), torch.device("cpu"))
    bounds = split_trajectories(data["terminals"], data["timeouts"])
    np.testing.assert_allclose(seq.buffer.fields["returns"][seq.buffer.starts, 0].numpy(),
                               returns_to_go(data["rewards"], bounds), rtol=0, atol=1e-4)
    assert seq.goal_dim == 0
