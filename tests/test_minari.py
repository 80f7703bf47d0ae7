"""Minari datasets as a source (shared/data/minari.py): small datasets written with minari's own DataCollector on the
real envs (PointMaze, AntMaze, FrankaKitchen, AdroitHandDoor, Hopper) into a temporary MINARI_DATASETS_PATH under
the ids the registered tasks use, converted through the suite, evaluated in the recovered env, and a tiny run of
every algorithm on the PointMaze one. Needs `pip install -r requirements-minari.txt` (skipped without minari)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, load_algorithm

minari = pytest.importorskip("minari")
pytest.importorskip("jax")  # DataCollector needs minari[create]

import gymnasium as gym  # noqa: E402
import gymnasium_robotics  # noqa: E402

from shared import evaluation  # noqa: E402
from shared.buffer import split_trajectories  # noqa: E402
from shared.data import minari as M  # noqa: E402
from shared.datasets import DatasetError, load_dataset  # noqa: E402
from shared.evaluation import RandomPolicy, evaluate, make_eval_env  # noqa: E402
from shared.tasks import MINARI_IDS, get_task, reference_scores  # noqa: E402
from shared.utils import parse_config  # noqa: E402

gym.register_envs(gymnasium_robotics)
STEPS = 300  # transitions per dataset
EVAL_STEPS = 50  # episode length of the recorded eval envs (keeps evaluation cheap)
UMAZE_G = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
POINT_REF = (0.0, 20.0)  # ref_min_score / ref_max_score written into the PointMaze dataset


def _envs():
    """task -> (collection env, eval env or None, reference scores or None, policy)."""
    M.patch_kitchen_for_mujoco4()

    def toward_goal(obs, rng):  # a noisy P-controller on the commanded goal (ignores walls): some successes
        a = 10.0 * (obs["desired_goal"] - obs["observation"][:2]) - obs["observation"][2:]
        return np.clip(a + rng.normal(0, 0.5, 2), -1, 1).astype(np.float32)

    return {
        "minari-pointmaze-umaze": (
            gym.make("PointMaze_UMaze-v3", continuing_task=True, reset_target=True, max_episode_steps=100),
            gym.make("PointMaze_UMaze-v3", maze_map=UMAZE_G, continuing_task=True, reset_target=False,
                     max_episode_steps=EVAL_STEPS), POINT_REF, toward_goal),
        "minari-antmaze-umaze": (
            gym.make("AntMaze_UMaze-v5", continuing_task=True, max_episode_steps=100),
            gym.make("AntMaze_UMaze-v5", maze_map=UMAZE_G, continuing_task=True, reset_target=False,
                     max_episode_steps=EVAL_STEPS), (0.0, 1.0), None),
        "minari-kitchen-complete": (
            gym.make("FrankaKitchen-v1", tasks_to_complete=["microwave", "kettle"], max_episode_steps=EVAL_STEPS),
            None, (0.0, 4.0), None),
        "minari-door-human": (gym.make("AdroitHandDoor-v1", max_episode_steps=EVAL_STEPS), None, (-56.5, 2880.6), None),
        "minari-hopper-medium": (gym.make("Hopper-v5", max_episode_steps=EVAL_STEPS), None, None, None),  # no refs
    }


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    M.open_dataset.cache_clear()
    M.reference_scores.cache_clear()
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari's "author is None"-style notices
        for task, (env, eval_env, ref, policy) in _envs().items():
            env = minari.DataCollector(env)
            obs, _ = env.reset(seed=0)
            env.action_space.seed(0)
            for _ in range(STEPS):
                action = policy(obs, rng) if policy else env.action_space.sample()
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    obs, _ = env.reset()
            env.create_dataset(dataset_id=MINARI_IDS[task][0], eval_env=eval_env, algorithm_name="random",
                               author="tests", author_email="-", code_permalink="-", description="test data",
                               ref_min_score=ref[0] if ref else None, ref_max_score=ref[1] if ref else None)
    yield path
    for name in list(evaluation._ENV_CACHE):  # envs built on these datasets
        if name.startswith("minari"):
            evaluation._ENV_CACHE.pop(name)
    M.open_dataset.cache_clear()
    M.reference_scores.cache_clear()
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


FAMILIES = ["minari-pointmaze-umaze", "minari-antmaze-umaze", "minari-kitchen-complete", "minari-door-human",
            "minari-hopper-medium"]


@pytest.mark.parametrize("task", FAMILIES)
def test_conversion_matches_the_minari_episodes(minari_dir, task):
    dataset_id = MINARI_IDS[task][0]
    data, info = load_dataset(task)
    episodes = list(minari.load_dataset(dataset_id).iterate_episodes())
    n = sum(len(e.rewards) for e in episodes)
    assert len(data["observations"]) == n == STEPS
    assert data["terminals"].dtype == bool and data["timeouts"].dtype == bool
    # trajectories = Minari's episodes, ended by its terminations / truncations
    bounds = split_trajectories(data["terminals"], data["timeouts"])
    assert [e - s for s, e in bounds] == [len(e.rewards) for e in episodes]
    np.testing.assert_array_equal(data["terminals"], np.concatenate([e.terminations for e in episodes]))
    np.testing.assert_array_equal(data["rewards"], np.concatenate([e.rewards for e in episodes]).astype(np.float32))
    np.testing.assert_array_equal(data["actions"], np.concatenate([e.actions for e in episodes]).astype(np.float32))
    obs = [e.observations for e in episodes]
    if task == "minari-pointmaze-umaze":  # [x, y, vx, vy], goal = the commanded goal
        expected = np.concatenate([o["observation"][:-1] for o in obs])
        np.testing.assert_array_equal(data["infos/goal"],
                                      np.concatenate([o["desired_goal"][:-1] for o in obs]).astype(np.float32))
        assert get_task(task).goal_conditioned
    elif task == "minari-antmaze-umaze":  # [x, y] + proprioception + goal
        expected = np.concatenate([np.concatenate([o["achieved_goal"][:-1], o["observation"][:-1],
                                                   o["desired_goal"][:-1]], 1) for o in obs])
        np.testing.assert_array_equal(data["observations"][:, -2:], data["infos/goal"])
        assert not get_task(task).goal_conditioned
    elif task == "minari-kitchen-complete":
        expected = np.concatenate([o["observation"][:-1] for o in obs])
        assert expected.shape[1] == 59 and "infos/goal" not in data
    else:
        expected = np.concatenate([o[:-1] for o in obs])
    np.testing.assert_array_equal(data["observations"], expected.astype(np.float32))
    if task == "minari-hopper-medium":
        assert data["terminals"].any()  # the hopper falls: real terminals, not timeouts
    assert info["source"].startswith(f"minari:{dataset_id} ") and "version" in info["source"]
    assert info["recipe"] == "minari" and info["recipe_version"] == int(dataset_id[-1]) and info["size"] == STEPS


@pytest.mark.parametrize("task", FAMILIES)
def test_recovered_eval_env_matches_the_data_and_normalises_with_minari_refs(minari_dir, task, capfd):
    data, _ = load_dataset(task)
    env = make_eval_env(task)
    obs, info = env.reset(seed=3)
    assert obs.shape == data["observations"].shape[1:] and obs.dtype == np.float32
    if task in ("minari-pointmaze-umaze", "minari-antmaze-umaze"):
        goal = env.env.unwrapped.goal
        np.testing.assert_allclose(info["goal"], goal, atol=1e-6)  # the goal the recorded eval env set
        if task == "minari-antmaze-umaze":
            np.testing.assert_allclose(obs[-2:], goal, atol=1e-6)
    env.close()
    result = evaluate(task, RandomPolicy(data["actions"].shape[1], seed=0), episodes=2, seed=0, num_envs=2,
                      progress=False)
    ref = _envs()[task][2]
    if ref is None:  # no reference scores in the dataset: NaN, and said so
        assert all(math.isnan(x) for x in result.normalized) and all(np.isfinite(result.returns))
        M.reference_scores.cache_clear()
        with pytest.raises(KeyError, match="no ref_min_score"):
            reference_scores(task)
        assert "has no ref_min_score/ref_max_score" in capfd.readouterr().err
    else:
        lo, hi = ref
        np.testing.assert_allclose(result.normalized, [100 * (r - lo) / (hi - lo) for r in result.returns])


def test_missing_dataset_id_is_one_clear_line(minari_dir):
    with pytest.raises(DatasetError) as info:
        load_dataset("minari:D4RL/kitchen/nothing-v9")
    message = str(info.value)
    assert "\n" not in message and "`minari download D4RL/kitchen/nothing-v9`" in message, message


def test_missing_dataset_from_the_command_line(tmp_path):
    """The documented command on a registered Minari task whose data is not downloaded: one line, exit 1."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "empty"), "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, str(ROOT / "algorithms/bc.py"), "--config",
                          str(ROOT / "configs/bc/minari-kitchen-complete.yaml"), "--out_dir", str(tmp_path / "runs"),
                          "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "run `minari download D4RL/kitchen/complete-v2`" in last, out.stderr


def test_minari_not_installed_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` now raises ImportError
    M.open_dataset.cache_clear()
    try:
        for call in (lambda: load_dataset("minari-door-human"), lambda: make_eval_env("minari:D4RL/door/x-v0")):
            with pytest.raises(DatasetError) as info:
                call()
            message = str(info.value)
            assert "\n" not in message and "pip install -r requirements-minari.txt" in message, message
    finally:
        M.open_dataset.cache_clear()


def test_the_suite_does_not_import_minari_unless_asked():
    code = ("import sys; import shared.datasets, shared.evaluation, shared.tasks, shared.data.minari; "
            "from shared.datasets import load_dataset; load_dataset('maze2d-umaze', size=2000); "
            "assert 'minari' not in sys.modules, 'minari imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "MAGE_DATA_DIR": os.environ["MAGE_DATA_DIR"]})
    assert out.returncode == 0, out.stderr[-2000:]


ALGOS = ("bc", "iql", "dt", "diffuser", "mage")
TINY = {  # a few dozen steps each: the run must go end to end on Minari data, not learn
    "bc": dict(hidden_dim=32, steps=40, log_every=10),
    "iql": dict(hidden_dim=32, steps=40, log_every=10),
    "dt": dict(embedding_dim=32, n_layers=1, n_heads=1, seq_len=5, batch_size=16, steps=30, warmup_steps=5,
               log_every=10),
    "diffuser": dict(horizon=16, n_diffusion_steps=5, dim=8, dim_mults=[1, 2, 4], batch_size=16, steps=30,
                     log_every=10, ema_start=5),
    "mage": dict(horizon=8, scales=[1, 2, 4], codebook_size=16, code_dim=8, ae_channels=16, ae_blocks=1, d_model=32,
                 n_layers=1, n_heads=2, batch_size=16, ae_steps=20, tf_steps=20, e2e_steps=10, warmup_steps=5,
                 log_every=10),
}


@pytest.mark.parametrize("algo", ALGOS)
def test_tiny_run_of_every_algorithm_on_minari_pointmaze(minari_dir, tmp_path, algo):
    module = load_algorithm(algo)
    task = "minari-pointmaze-umaze"
    config = parse_config(module.TrainConfig, ["--config", str(ROOT / f"configs/{algo}/{task}.yaml")])
    config = dataclasses.replace(config, **TINY[algo], device="cpu", wandb_mode="disabled", out_dir=str(tmp_path),
                                 eval_episodes=2, num_eval_envs=2, checkpoint_every=10**6,
                                 results_path=str(tmp_path / "result.json"))
    if hasattr(config, "compile"):
        config = dataclasses.replace(config, compile=False)
    final = module.main(config)
    saved = json.loads(Path(config.results_path).read_text())
    assert saved["dataset"]["source"].startswith("minari:D4RL/pointmaze/umaze-v2 ")  # the source is named
    assert saved["dataset"]["recipe"] == "minari" and saved["dataset"]["recipe_version"] == 2
    assert saved["episodes"] == 2 and np.isfinite(saved["return_mean"])
    lo, hi = POINT_REF  # normalised with the dataset's own reference scores
    assert final["normalized_score"] == pytest.approx(100 * (final["return_mean"] - lo) / (hi - lo))


@pytest.mark.parametrize("algo", ALGOS)
def test_every_minari_config_is_valid_and_names_its_dataset(algo):
    module = load_algorithm(algo)
    fields = {f.name: f for f in dataclasses.fields(module.TrainConfig)}
    for task, (dataset_id, _) in MINARI_IDS.items():
        path = ROOT / f"configs/{algo}/{task}.yaml"
        values = yaml.safe_load(path.read_text())
        assert set(values) <= set(fields), (path, set(values) - set(fields))  # (pyrallis would refuse them)
        assert values["task"] == task and get_task(task).source == "minari"
        dataclasses.replace(module.TrainConfig(), **values)
        assert dataset_id in path.read_text().split("task:")[0], path  # the header says which Minari id


def test_tables_keep_minari_results_apart_and_name_the_dataset():
    from shared.utils import load_script

    tables = load_script(ROOT / "benchmarks" / "tables.py", "tables_for_minari")
    assert tables.group_of("minari-hopper-medium") == "minari" != tables.group_of("hopper-medium-v2")
    assert tables.group_of("minari:D4RL/door/human-v2") == "minari"
    run = {"dataset": {"source": M.source_label("mujoco/hopper/medium-v0")}, "normalized_score": 50.0}
    cells = {("bc", "minari-hopper-medium"): tables.Cell("bc", "minari-hopper-medium", [run])}
    table = "\n".join(tables.score_table("minari", ["minari-hopper-medium"], ["bc"], cells))
    assert "`minari-hopper-medium` (minari:mujoco/hopper/medium-v0)" in table, table
