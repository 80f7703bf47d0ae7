import os

import h5py
import numpy as np
import pytest

from shared import datasets
from shared.datasets import (
    DatasetError,
    cache_path,
    content_hash,
    generate,
    generate_arrays,
    load_dataset,
    read_attrs,
)
from shared.mazes import PointMazeSim, cell_to_xy, maze_map
from shared.tasks import get_task
from conftest import write_d4rl_hdf5

SIZE = 20_000


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGE_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def umaze_data():
    return generate_arrays("maze2d-umaze", SIZE, seed=0, progress=False)


def test_same_seed_same_content_different_seed_different(umaze_data):
    again = generate_arrays("maze2d-umaze", SIZE, seed=0, progress=False)
    other = generate_arrays("maze2d-umaze", SIZE, seed=1, progress=False)
    assert content_hash(again) == content_hash(umaze_data)
    assert content_hash(other) != content_hash(umaze_data)


def test_workers_do_not_change_content(monkeypatch):
    monkeypatch.setattr(datasets, "CHUNK_SIZE", 6_000)  # 4 chunks, the last one shorter
    one = generate_arrays("maze2d-medium", SIZE, seed=3, workers=1, progress=False)
    two = generate_arrays("maze2d-medium", SIZE, seed=3, workers=2, progress=False)
    assert content_hash(one) == content_hash(two)
    assert np.flatnonzero(one["timeouts"][5_999::6_000]).tolist() == [0, 1, 2]  # each chunk ends a trajectory
    assert one["timeouts"][-1]


def test_layout_and_dtypes(umaze_data):
    d = umaze_data
    assert d["observations"].shape == (SIZE, 4) and d["observations"].dtype == np.float32
    assert d["actions"].shape == (SIZE, 2) and np.abs(d["actions"]).max() <= 1.0
    for key in ("infos/goal", "infos/qpos", "infos/qvel"):
        assert d[key].shape == (SIZE, 2) and d[key].dtype == np.float32
    assert d["terminals"].dtype == bool and not d["terminals"].any()
    np.testing.assert_array_equal(d["infos/qpos"], d["observations"][:, :2])
    np.testing.assert_array_equal(d["infos/qvel"], d["observations"][:, 2:])


@pytest.mark.parametrize("name", ["maze2d-umaze", "maze2d-large"])
def test_replay_reproduces_next_observation(name):
    d = generate_arrays(name, 5_000, seed=2, progress=False)
    point_env = PointMazeSim(get_task(name).maze).env.unwrapped.point_env
    for t in np.flatnonzero(~d["timeouts"][:-1]):
        point_env.set_state(d["infos/qpos"][t].astype(np.float64), d["infos/qvel"][t].astype(np.float64))
        next_obs, *_ = point_env.step(d["actions"][t].astype(np.float64))
        np.testing.assert_allclose(next_obs, d["observations"][t + 1], atol=1e-5, rtol=0)


def test_rewards_follow_distance_to_eval_goal(umaze_data):
    d = umaze_data
    task = get_task("maze2d-umaze")
    goal = cell_to_xy(maze_map(task.maze), task.eval_goal_cell)
    within = np.linalg.norm(d["observations"][1:, :2].astype(np.float64) - goal, axis=1) <= 0.45
    np.testing.assert_array_equal(d["rewards"][:-1], within.astype(np.float32))  # reward of the reached state
    assert 0 < d["rewards"].mean() < 1


def test_timeouts_exactly_at_goal_switches(umaze_data):
    d = umaze_data
    changes = np.flatnonzero(np.any(d["infos/goal"][1:] != d["infos/goal"][:-1], axis=1))
    np.testing.assert_array_equal(changes, np.flatnonzero(d["timeouts"][:-1]))
    assert d["timeouts"][-1]
    segment = np.diff(np.r_[-1, np.flatnonzero(d["timeouts"])])
    assert segment.max() <= get_task("maze2d-umaze").max_episode_steps


def test_goal_switches_when_controller_reaches_goal(umaze_data):
    d = umaze_data
    ends = np.flatnonzero(d["timeouts"][:-1])
    dist = np.linalg.norm(d["observations"][ends, :2] - d["infos/goal"][ends], axis=1)
    assert np.all(dist < 0.1 + 1e-6)  # never stuck in this sample: every switch is a success


def test_generate_cache_reuse_and_attrs(tmp_cache, monkeypatch):
    path = generate("maze2d-umaze", size=SIZE, seed=0, progress=False)
    assert path == cache_path("maze2d-umaze", SIZE, 0) and path.parent == tmp_cache
    attrs = read_attrs(path)
    assert attrs["complete"] and attrs["recipe"] == datasets.RECIPE
    assert attrs["recipe_version"] == datasets.RECIPE_VERSION
    assert (attrs["task"], attrs["size"], attrs["seed"]) == ("maze2d-umaze", SIZE, 0)
    for key in ("gymnasium", "gymnasium_robotics", "mujoco", "content_sha256"):
        assert key in attrs
    assert not [p for p in tmp_cache.iterdir() if p.name.endswith(".tmp")]

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached file should have been reused")

    monkeypatch.setattr(datasets, "generate_arrays", no_generation)
    data, info = load_dataset("multi2d-umaze", size=SIZE, seed=0)  # multi2d-* trains on maze2d-* data
    assert info["path"] == str(path) and info["source"].startswith("generated")
    assert info["recipe_version"] == datasets.RECIPE_VERSION and info["size"] == SIZE and info["seed"] == 0
    assert content_hash({k: data[k] for k in data}) == attrs["content_sha256"]


def _tamper(path, **attrs):
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value


@pytest.mark.parametrize("change", [{"seed": 5}, {"recipe_version": 0}, {"size": 7}, {"task": "maze2d-large"},
                                    {"complete": None}])
def test_mismatched_or_incomplete_cache_is_regenerated(change):
    path = generate("maze2d-umaze", size=SIZE, seed=0, progress=False)
    good_hash = read_attrs(path)["content_sha256"]
    _tamper(path, **change)
    mtime = os.stat(path).st_mtime_ns
    data, info = load_dataset("maze2d-umaze", size=SIZE, seed=0)
    attrs = read_attrs(path)
    assert os.stat(path).st_mtime_ns != mtime  # replaced, not reused
    assert attrs["complete"] and attrs["seed"] == 0 and attrs["content_sha256"] == good_hash


def test_out_file_is_never_overwritten(tmp_path):
    out = tmp_path / "mine.hdf5"
    out.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="mine.hdf5"):
        generate("maze2d-umaze", size=SIZE, out=out, progress=False)
    assert out.read_bytes() == b"user data"
    with pytest.raises(SystemExit, match="not a matching generated dataset"):
        datasets.main(["generate", "maze2d-umaze", "--size", str(SIZE), "--out", str(out)])


def test_cli_generate_info_verify(tmp_path, capsys):
    out = tmp_path / "umaze.hdf5"
    datasets.main(["generate", "maze2d-umaze", "--size", "3000", "--seed", "4", "--out", str(out)])
    datasets.main(["generate", "maze2d-umaze", "--size", "3000", "--seed", "4", "--out", str(out)])  # reuse: OK
    datasets.main(["info", str(out)])
    datasets.main(["verify", str(out)])
    printed = capsys.readouterr().out
    assert "observations: float32 (3000, 4)" in printed and f"OK {out}" in printed
    with pytest.raises(FileExistsError):
        generate("maze2d-umaze", size=3000, seed=5, out=out, progress=False)  # other seed: not a match


# --- loader rejections: each a one-line DatasetError naming the file ----------------------------------------------




def _rejects(path, match):
    with pytest.raises(DatasetError) as info:
        load_dataset("maze2d-umaze", dataset_path=path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and match in message, message


def test_loader_accepts_valid_user_file(tmp_path):
    data, info = load_dataset("maze2d-umaze", dataset_path=write_d4rl_hdf5(tmp_path / "ok.hdf5"))
    assert data["observations"].shape == (50, 4) and info["source"].startswith("user file")


def test_loader_rejects_truncated_file(tmp_path):
    path = generate("maze2d-umaze", size=3000, seed=0, out=tmp_path / "full.hdf5", progress=False)
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    _rejects(cut, "cannot read HDF5")
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an hdf5 file at all")
    _rejects(garbage, "cannot read HDF5")


def test_loader_rejects_missing_key(tmp_path):
    _rejects(write_d4rl_hdf5(tmp_path / "a.hdf5", drop="actions"), "key 'actions' missing")


def test_loader_rejects_wrong_shape(tmp_path):
    _rejects(write_d4rl_hdf5(tmp_path / "b.hdf5", rewards=np.zeros((50, 2), np.float32)), "'rewards' must be 1-D")
    _rejects(write_d4rl_hdf5(tmp_path / "c.hdf5", actions=np.zeros((49, 2), np.float32)), "'actions' has 49 rows")


def test_loader_rejects_nan(tmp_path):
    obs = np.zeros((50, 4), np.float32)
    obs[10, 2] = np.nan
    _rejects(write_d4rl_hdf5(tmp_path / "d.hdf5", observations=obs), "NaN")


def test_loader_rejects_empty(tmp_path):
    _rejects(write_d4rl_hdf5(tmp_path / "e.hdf5", n=0), "empty")


def test_loader_rejects_wrong_observation_size(tmp_path):
    _rejects(write_d4rl_hdf5(tmp_path / "f.hdf5", obs_dim=11), "observations have size 11")


def test_loader_rejects_incomplete_generated_file(tmp_path):
    path = generate("maze2d-umaze", size=3000, seed=0, out=tmp_path / "g.hdf5", progress=False)
    _tamper(path, complete=None)
    _rejects(path, "incomplete")


def test_d4rl_task_without_data_fails_clearly():
    with pytest.raises(DatasetError, match="pass dataset_path"):
        load_dataset("maze2d-umaze-v1")


def test_loader_rejects_generated_file_of_another_task(tmp_path):
    path = generate("maze2d-umaze", size=3000, seed=0, out=tmp_path / "h.hdf5", progress=False)
    with pytest.raises(DatasetError, match="generated for task 'maze2d-umaze', not 'maze2d-large'"):
        load_dataset("multi2d-large", dataset_path=path)
    data, info = load_dataset("multi2d-umaze", dataset_path=path)
    assert info["source"].startswith("generated") and info["seed"] == 0 and len(data["rewards"]) == 3000


@pytest.mark.parametrize("task, obs_dim", [("hopper-medium-v2", 11), ("walker2d-medium-replay-v2", 17),
                                           ("kitchen-complete-v0", 60), ("door-human-v1", 39),
                                           ("antmaze-umaze-v2", 29)])
def test_d4rl_layout_files_of_each_family_load_and_wrong_sizes_are_refused(tmp_path, task, obs_dim):
    path = write_d4rl_hdf5(tmp_path / "ok.hdf5", n=40, obs_dim=obs_dim, terminals=np.arange(40) % 20 == 19)
    data, info = load_dataset(task, dataset_path=path)
    assert data["observations"].shape == (40, obs_dim) and data["terminals"].sum() == 2
    assert info["source"] == f"user file {path}"
    with pytest.raises(DatasetError, match=f"observations have size {obs_dim + 1}, the task's env expects {obs_dim}"):
        load_dataset(task, dataset_path=write_d4rl_hdf5(tmp_path / "bad.hdf5", obs_dim=obs_dim + 1))


def test_speed_summary_counts_slow_states_and_their_longest_run():
    speed = np.array([3.0, 0.05, 0.05, 0.2, 3.0, 0.2, 3.0, 3.0, 0.05, 3.0])
    obs = np.zeros((len(speed), 4), np.float32)
    obs[:, 2] = speed  # vx = speed, vy = 0
    line = datasets.speed_summary(obs)
    assert line == ("speed: median 1.60; 30.00% of states slower than 0.1 (longest run 2 steps); "
                    "50.00% of states slower than 0.3 (longest run 3 steps)"), line
