"""Shared fixtures: W&B off, a session-wide dataset cache with small generated datasets."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["WANDB_MODE"] = "disabled"
# small models: one thread avoids thread-sync stalls on a busy 2-core machine (10-30x faster here)
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """All tests share one dataset cache (MAGE_DATA_DIR), so each small dataset is generated once."""
    path = os.environ.get("MAGE_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("datasets"))
    old = os.environ.get("MAGE_DATA_DIR")
    os.environ["MAGE_DATA_DIR"] = path
    yield Path(path)
    if old is None:
        os.environ.pop("MAGE_DATA_DIR", None)
    else:
        os.environ["MAGE_DATA_DIR"] = old


def load_algorithm(name: str):
    """algorithms/<name>.py as a module (the files are scripts, not a package), imported once per session."""
    from shared.utils import load_script

    return load_script(ROOT / "algorithms" / f"{name}.py", f"algo_{name}")


def run_as_a_user(args: list, data_dir: Path) -> tuple[int, str]:
    """``python *args`` in the repository root, as a user runs it (no GPU, W&B off, one thread) on the session's
    dataset cache: (exit status, stderr)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MAGE_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr


def write_d4rl_hdf5(path, n=50, obs_dim=4, drop=None, **override):
    """A small D4RL-format file (the layout of ~/.d4rl/datasets/*.hdf5); ``drop`` leaves one key out."""
    arrays = {
        "observations": np.zeros((n, obs_dim), np.float32),
        "actions": np.zeros((n, 2), np.float32),
        "rewards": np.zeros(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
        "infos/goal": np.zeros((n, 2), np.float32),
    }
    arrays.update(override)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key != drop:
                f.create_dataset(key, data=value)
    return path
