"""Embedded locomotion data (shared/data/locomotion.py, SAC from shared/data/sac.py): a tiny SAC run on Hopper-v5
writes its checkpoints, the medium choice, the medium-replay ladder and the reference scores; datasets generated
from those tiny policies have D4RL's layout, terminals and timeouts, re-simulate, and do not depend on the number of
workers; D4RL's medium rule on a made-up curve; the committed policies of every env are complete and consistent; the
one-line error (with the training command) while the policies are missing; SAC updates fit the critic on a fixed
batch."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_as_a_user

from shared import datasets
from shared.data import locomotion as loco
from shared.data import sac as sac_lib
from shared.datasets import DatasetError, content_hash
from shared.evaluation import make_eval_env
from shared.tasks import get_task, normalized_score, reference_scores

SIZE = 2000


def _tiny_config(tmp_path, **kw):
    base = dict(env="hopper", device="cpu", num_envs=2, vector_env="sync", env_steps=600, learning_starts=200,
                checkpoint_every=200, log_every=200, batch_size=32, eval_episodes_during=2, eval_episodes=2,
                random_episodes=3, num_eval_envs=2, out_dir=str(tmp_path / "runs"),
                weights_dir=str(tmp_path / "policies" / "hopper"))
    base.update(kw)
    return loco.TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 600-step SAC run on Hopper-v5 (CPU, 2 sync envs): (result, weights dir)."""
    tmp = tmp_path_factory.mktemp("loco")
    config = _tiny_config(tmp)
    return loco.train(config), tmp / "policies" / "hopper"


def test_tiny_training_writes_checkpoints_ladder_and_reference_scores(tiny):
    result, weights = tiny
    assert result["env_steps"] == 600 and result["updates"] == 100 and result["random_transitions"] == 200
    assert [c["env_steps"] for c in result["checkpoints"]] == [200, 400]
    assert [c["transitions"] for c in result["checkpoints"]] == [200, 400]  # the buffer keeps every transition
    assert [e["env_steps"] for e in result["curve"]] == [200, 400, 600]
    plan = json.loads((weights / loco.POLICIES_FILE).read_text())
    assert plan["env_id"] == "Hopper-v5" and plan["expert"]["file"] == "expert.pt"
    medium = result["checkpoints"][result["medium_index"]]
    assert plan["medium"]["file"] == medium["file"]
    assert result["medium_index"] == loco.select_medium(result["checkpoints"], plan["expert"]["eval_return"])
    # the ladder: the random warm-up, then the checkpoints up to medium; its shares add up to medium's transitions
    assert plan["ladder"][0] == {"policy": "random", "transitions": 200}
    assert sum(r["transitions"] for r in plan["ladder"]) == medium["transitions"]
    files = sorted(p.name for p in weights.glob("*.pt"))
    assert files == sorted({"expert.pt", medium["file"]} | {r["policy"] for r in plan["ladder"][1:]})
    assert files == sorted(loco.policy_files(plan))
    assert all((weights / f).stat().st_size < 1e6 for f in files)  # small actor-only files
    ref = plan["reference_scores"]
    assert ref["expert"] == plan["expert"]["eval_return"] and ref["random_episodes"] == 3
    assert json.loads((weights / "training.json").read_text())["checkpoints"] == result["checkpoints"]
    policy = loco.BehaviourPolicy(weights / "expert.pt")
    obs = np.zeros((4, 11), np.float32)
    assert np.allclose(policy.act(obs), policy.act(obs[:1])[[0, 0, 0, 0]], atol=1e-6)  # the mean, batched
    sampled = policy.act(obs, np.random.default_rng(0).standard_normal((4, 3)))
    assert sampled.shape == (4, 3) and np.all(np.abs(sampled) <= 1) and not np.allclose(sampled, policy.act(obs))


def test_max_train_s_stops_early_and_still_writes_the_policies(tmp_path):
    result = loco.train(_tiny_config(tmp_path, max_train_s=1e-9, random_episodes=1))
    assert result["stopped_early"] and result["env_steps"] == 200 == result["checkpoints"][-1]["env_steps"]
    plan = loco.read_plan("hopper", tmp_path / "policies" / "hopper")
    assert plan["expert"]["stopped_early"] and plan["expert"]["env_steps"] == 200


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the captured (CUDA graph) trainer needs a GPU")
def test_tiny_training_runs_captured_on_cuda(tmp_path):
    """The GPU machine's path (--device cuda: captured SAC updates, async envs) end to end, before an hours-long run
    depends on it."""
    result = loco.train(_tiny_config(tmp_path, device="cuda", vector_env="async"))
    assert result["env_steps"] == 600 and result["updates"] == 100
    assert all(math.isfinite(c["eval_return"]) for c in result["checkpoints"])
    losses = [v for e in result["curve"] if e["updates"] for k, v in e.items()
              if k not in ("env_steps", "updates", "wall_s", "episodes", "train_return_mean")]
    assert losses and all(math.isfinite(v) for v in losses)  # the captured update's statistics
    assert loco.read_plan("hopper", tmp_path / "policies" / "hopper")["expert"]["file"] == "expert.pt"


def test_tiny_datasets_have_d4rl_layout_and_verify(tiny):
    _, weights = tiny
    data = loco.generate_arrays("hopper-medium", size=SIZE, seed=0, progress=False, weights_dir=weights)
    assert {k: v.shape for k, v in data.items()} == {
        "observations": (SIZE, 11), "actions": (SIZE, 3), "rewards": (SIZE,), "terminals": (SIZE,),
        "timeouts": (SIZE,), "infos/qpos": (SIZE, 6), "infos/qvel": (SIZE, 6)}
    assert data["terminals"].dtype == bool and data["observations"].dtype == np.float32
    assert data["terminals"].any()  # a barely trained hopper falls: true terminations
    assert not np.any(data["terminals"] & data["timeouts"]) and (data["terminals"] | data["timeouts"])[-1]
    datasets.validate(data, obs_dim=11)
    checked = loco.check(data, "hopper-medium")  # re-simulation of 64 transitions, terminal ones among them
    assert checked["resim_samples"] == 64 and checked["resim_max_error"] < 1e-5
    assert checked["transitions"] == SIZE and checked["terminals"] == int(data["terminals"].sum())
    # medium-expert: the same medium transitions, then the expert's
    mixed = loco.generate_arrays("hopper-medium-expert", size=2 * SIZE, seed=0, progress=False, weights_dir=weights)
    assert content_hash({k: v[:SIZE] for k, v in mixed.items()}) == content_hash(data)
    # medium-replay: the whole ladder by default
    replay = loco.generate_arrays("hopper-medium-replay", seed=0, progress=False, weights_dir=weights)
    plan = loco.read_plan("hopper", weights)
    assert len(replay["rewards"]) == sum(r["transitions"] for r in plan["ladder"])
    loco.check(replay, "hopper-medium-replay")
    bad = dict(data, actions=data["actions"][::-1].copy())
    with pytest.raises(DatasetError, match="re-simulating|reward|termination"):
        loco.check(bad, "hopper-medium", path="x.hdf5")


@pytest.mark.slow
def test_generation_is_deterministic_across_workers_and_seeds(tiny, monkeypatch):
    _, weights = tiny
    monkeypatch.setattr(loco, "CHUNK_SIZE", 500)  # 4 chunks: 2 workers really split the work
    kw = dict(size=SIZE, progress=False, weights_dir=weights)
    one = loco.generate_arrays("hopper-medium", seed=3, workers=1, **kw)
    two = loco.generate_arrays("hopper-medium", seed=3, workers=2, **kw)
    other = loco.generate_arrays("hopper-medium", seed=4, workers=1, **kw)
    assert content_hash(one) == content_hash(two) != content_hash(other)


def test_cached_dataset_reference_scores_and_eval_env(tiny, monkeypatch):
    _, weights = tiny
    monkeypatch.setenv("MAGE_LOCOMOTION_DIR", str(weights.parent))
    data, info = datasets.load_dataset("hopper-medium-expert", size=SIZE, seed=0, workers=1)
    assert "regenerated with this project's SAC, not D4RL's files" in info["source"]
    attrs = datasets.verify(info["path"])
    assert attrs["recipe"] == loco.RECIPE and attrs["policies_sha256"] == loco.plan_sha256(loco.read_plan("hopper"))
    assert attrs["check/resim_samples"] == 64
    plan = loco.read_plan("hopper")
    assert reference_scores("hopper-medium") == (plan["reference_scores"]["random"], plan["expert"]["eval_return"])
    assert math.isclose(normalized_score("hopper-medium-replay", plan["expert"]["eval_return"]), 100.0)
    env = make_eval_env("hopper-medium")
    obs, reset_info = env.reset(seed=0)
    assert obs.shape == (11,) and obs.dtype == np.float32 and env.max_episode_steps == 1000
    assert get_task("hopper-medium").goal_mode == "none"
    env.close()


def test_medium_is_the_checkpoint_closest_to_a_third_of_the_expert():
    curve = [{"file": f"step_{i}.pt", "env_steps": 100 * i, "transitions": 100 * i, "eval_return": r}
             for i, r in enumerate([5.0, 300.0, 980.0, 1500.0, 1010.0, 2900.0], start=1)]
    assert loco.select_medium(curve, 3000.0) == 4  # target 1000: 1010 (off by 10) beats 980 (off by 20)
    assert loco.select_medium(curve, 2940.0) == 2  # target 980
    tie = [{"eval_return": 900.0}, {"eval_return": 1100.0}]
    assert loco.select_medium(tie, 3000.0) == 0  # earliest on a tie
    ladder = loco.ladder_of(curve, 2, random_transitions=150)
    assert [(r["policy"], r["transitions"]) for r in ladder] == [("random", 150), ("step_2.pt", 50),
                                                                ("step_3.pt", 100)]
    plan = {"dir": ".", "ladder": ladder, "medium": {"file": "step_3.pt"}, "expert": {"file": "expert.pt"}}
    parts = loco.parts_of("medium-replay", plan, 150)  # scaled down in proportion
    assert [n for _, _, n in parts] == [75, 25, 50] and parts[0][0] == ""
    with pytest.raises(ValueError):
        loco.parts_of("medium-replay", plan, 301)


def test_sac_updates_lower_the_critic_loss_on_hopper_transitions(tmp_path):
    torch.manual_seed(0)
    config = _tiny_config(tmp_path, critic_lr=1e-3, batch_size=64, env_steps=256)
    sac = sac_lib.SAC(sac_lib.Actor(11, 3, 64, 2), sac_lib.TwinQ(11, 3, 64, 2), config.init_alpha)
    learner = sac_lib.Learner(sac, config, 11, 3, torch.device("cpu"))
    envs = sac_lib.make_vector([lambda: loco.make_env("hopper")] * 2, "sync")
    obs, _ = envs.reset(seed=0)
    for _ in range(128):  # 256 random transitions, no updates yet
        obs = learner.collect(envs, obs, learning=False)[1]
    envs.close()
    fixed = learner.replay.sample(64)
    learner.step = lambda i: sac_lib.update(learner.sac, learner.opts, fixed, config)
    losses = [float(learner.step(i)["sac/q_loss"]) for i in range(120)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5]), (losses[:5], losses[-10:])


def test_committed_policies_of_every_env_are_complete(monkeypatch):
    """shared/data/locomotion/<env>/ as committed: every file policies.json names, medium-replay's size (the task's
    too) from its ladder, the reference scores from policies.json, actors of the env's sizes."""
    monkeypatch.delenv("MAGE_LOCOMOTION_DIR", raising=False)
    for env, env_id in loco.ENVS.items():
        plan = loco.read_plan(env)  # DatasetError if policies.json or a file it names is missing
        assert plan["env"] == env and plan["env_id"] == env_id and plan["recipe"] == loco.RECIPE
        assert plan["ladder"][0]["policy"] == "random" and plan["ladder"][-1]["policy"] == plan["medium"]["file"]
        replay = sum(r["transitions"] for r in plan["ladder"])
        assert replay == plan["medium"]["transitions"] == get_task(f"{env}-medium-replay").dataset_size
        assert plan["medium"]["env_steps"] < plan["expert"]["env_steps"]
        assert plan["expert"]["stopped_early"] or plan["expert"]["env_steps"] >= 1_000_000
        ref = plan["reference_scores"]
        assert reference_scores(f"{env}-medium-expert") == (ref["random"], plan["expert"]["eval_return"])
        policy = loco.BehaviourPolicy(loco.locomotion_dir(env) / "expert.pt")
        assert policy.env_id == env_id
        assert policy.act(np.zeros((2, loco.OBS_DIMS[env]), np.float32)).shape == (2, loco.ACT_DIMS[env])


def test_missing_policies_are_one_line_naming_the_training_command(tmp_path, data_dir, monkeypatch, capsys):
    # MAGE_LOCOMOTION_DIR replaces shared/data/locomotion/ for the library too (shared.tasks.locomotion_dir): with
    # it on an empty folder every env's committed policies are hidden, so all three envs take the missing path
    monkeypatch.setenv("MAGE_LOCOMOTION_DIR", str(tmp_path / "none"))
    status, stderr = run_as_a_user(["algorithms/iql.py", "--config", "configs/iql/hopper-medium.yaml", "--device",
                                    "cpu", "--out_dir", tmp_path / "run"], data_dir)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], stderr[-3000:]
    assert "python -m shared.data.locomotion train --env hopper" in lines[-1]
    with pytest.raises(DatasetError, match="train --env walker2d"):
        datasets.generate("walker2d-medium-replay", progress=False)
    with pytest.raises(KeyError, match="no reference scores for the halfcheetah locomotion tasks yet"):
        reference_scores("halfcheetah-medium-expert")
