"""Config hygiene found once the data is loaded: a dataset too small for the config is one clear line (as the bad
input of tests/test_bad_input.py), not a run that trains silently and reports nonsense."""

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_as_a_user

from shared.utils import ConfigError, check_data_fits

# algorithm -> the line a tiny config with --dataset_size 10 ends with (exit status 2, as parse-time config errors)
TOO_SMALL = {
    "iql": "config error: dataset_size 10 gives 10 transitions, fewer than one batch (batch_size 256)",
    "dt": "config error: dataset_size 10 gives 10 transitions, fewer than one batch (batch_size 64)",
    "mage": "config error: dataset_size 10 gives no segment of horizon 16: its longest trajectory has 10 steps "
            "(10 transitions)",
}


@pytest.fixture(scope="module")
def too_small_runs(tmp_path_factory, data_dir):
    """Every TOO_SMALL algorithm run once as a user would: {algo: (returncode, stderr)}."""
    runs = tmp_path_factory.mktemp("hygiene")

    def run(algo):
        return run_as_a_user([f"algorithms/{algo}.py", "--config", f"configs/{algo}/tiny.yaml", "--dataset_size", "10",
                              "--device", "cpu", "--out_dir", runs / algo], data_dir)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(TOO_SMALL, pool.map(run, TOO_SMALL)))


@pytest.mark.parametrize("algo", list(TOO_SMALL))
def test_a_dataset_too_small_for_the_config_is_one_line_before_training(algo, too_small_runs):
    returncode, stderr = too_small_runs[algo]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1] == TOO_SMALL[algo], lines[-1]
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], stderr[-3000:]


@pytest.mark.parametrize("fields, bounds, message", [
    (dict(horizon=16, batch_size=4, dataset_size=None), [[0, 10], [10, 25]],
     "the dataset gives no segment of horizon 16: its longest trajectory has 15 steps"),
    (dict(seq_len=20, batch_size=4, dataset_size=30), [[0, 19], [19, 30]],
     "dataset_size 30 gives no segment of seq_len 20"),
    (dict(batch_size=256, dataset_size=100), [[0, 100]],
     r"dataset_size 100 gives 100 transitions, fewer than one batch \(batch_size 256\)"),
])
def test_check_data_fits_names_what_the_data_cannot_fill(fields, bounds, message):
    with pytest.raises(ConfigError, match=message):
        check_data_fits(SimpleNamespace(**fields), np.asarray(bounds))


@pytest.mark.parametrize("fields, bounds", [
    (dict(horizon=16, batch_size=64, dataset_size=None), [[0, 10], [10, 26]]),  # one trajectory of 16 suffices
    (dict(batch_size=512, dataset_size=None), [[0, 300]]),  # a whole dataset is used whatever its size
    (dict(batch_size=256, dataset_size=256), [[0, 256]]),
])
def test_check_data_fits_passes_data_that_fits(fields, bounds):
    check_data_fits(SimpleNamespace(**fields), np.asarray(bounds))
