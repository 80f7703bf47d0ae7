"""Bad input to a run ends it with ONE clear line on stderr (no traceback) and a non-zero exit status.

Every case runs ``python algorithms/bc.py ...`` as a real subprocess, as a user would; the cases run a few at a
time (each is mostly interpreter start-up). More config and dataset cases are checked in-process below (cheap)."""

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import load_algorithm, run_as_a_user, write_d4rl_hdf5

from shared.datasets import DatasetError, load_dataset
from shared.utils import parse_config

ROOT = Path(__file__).resolve().parents[1]




def _nan_obs():
    obs = np.zeros((50, 4), np.float32)
    obs[7, 1] = np.nan
    return obs


# case -> (exit status, substrings the last stderr line must hold)
EXPECTED = {
    "unknown_key_yaml": (2, ["config error:", "bogus_key", "valid fields:"]),
    "unknown_key_cli": (2, ["config error: unknown option --bogus_key"]),
    "wrong_type_cli": (2, ["config error: field 'steps' expects int, got 'many'"]),
    "unknown_task": (1, ["error: unknown task 'maze3d-umaze'; known tasks:", "maze2d-umaze"]),
    "cuda_without_gpu": (1, ["error: device 'cuda' was asked for but no CUDA GPU is visible"]),
    "obs_size_mismatch": (1, ["error: dataset", "obs11.hdf5", "observations have size 11", "expects 4"]),
    "empty_dataset": (1, ["error: dataset", "empty.hdf5", "empty (0 transitions)"]),
    "nan_in_data": (1, ["error: dataset", "nan.hdf5", "'observations' contains NaN or inf"]),
    "truncated_file": (1, ["error: dataset", "cut.hdf5", "cannot read HDF5 file"]),
}
if importlib.util.find_spec("d4rl") is None:  # with d4rl installed this run would train instead
    EXPECTED["d4rl_task_without_d4rl"] = (1, ["error: evaluating the original D4RL task 'hopper-medium-v2' requires"])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, data_dir):
    """Run every case once; {case: (returncode, stderr)}."""
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "bogus.yaml").write_text("task: maze2d-umaze\nsteps: 10\nbogus_key: 3\n")
    full = write_d4rl_hdf5(tmp / "full.hdf5", n=2000)
    (tmp / "cut.hdf5").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    data = {
        "obs_size_mismatch": write_d4rl_hdf5(tmp / "obs11.hdf5", obs_dim=11),
        "empty_dataset": write_d4rl_hdf5(tmp / "empty.hdf5", n=0),
        "nan_in_data": write_d4rl_hdf5(tmp / "nan.hdf5", observations=_nan_obs()),
        "truncated_file": tmp / "cut.hdf5",
    }
    hopper = write_d4rl_hdf5(tmp / "hopper.hdf5", obs_dim=11, actions=np.zeros((50, 3), np.float32))
    args = {
        "unknown_key_yaml": ["--config", str(tmp / "bogus.yaml")],
        "unknown_key_cli": ["--config", "configs/bc/tiny.yaml", "--bogus_key", "3"],
        "wrong_type_cli": ["--config", "configs/bc/tiny.yaml", "--steps", "many"],
        "unknown_task": ["--task", "maze3d-umaze"],
        "cuda_without_gpu": ["--device", "cuda"],
        **{case: ["--task", "maze2d-umaze", "--dataset_path", str(path), "--device", "cpu"]
           for case, path in data.items()},
        "d4rl_task_without_d4rl": ["--task", "hopper-medium-v2", "--dataset_path", str(hopper), "--device", "cpu"],
    }
    args = {case: a for case, a in args.items() if case in EXPECTED}
    assert args.keys() == EXPECTED.keys()
    # no GPU in any case (so --device cuda fails the same way on a GPU machine); never generate outside the cache

    def run(case):
        return case, run_as_a_user(["algorithms/bc.py", *args[case], "--out_dir", tmp / "runs" / case], data_dir)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, EXPECTED))


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_input_is_one_clear_line(case, outcomes):
    returncode, stderr = outcomes[case]
    status, needles = EXPECTED[case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = lines[-1]
    for needle in needles:
        assert needle in last, (needle, last)
    # the error is that one line: no other line of the output reports an error
    assert [line for line in lines if "error" in line.lower()] == [last], stderr[-3000:]


# ------------------------------------------------------------------------- in-process: parse_config, load_dataset

bc = load_algorithm("bc")


@pytest.mark.parametrize("args, field, value", [
    (["--steps", "1e3"], "steps", 1000),  # whole numbers in any spelling
    (["--steps", "2_000"], "steps", 2000),
    (["--resume", "true"], "resume", True),
    (["--resume", "No"], "resume", False),
    (["--bf16", "0"], "bf16", False),
    (["--lr", "3e-4"], "lr", 3e-4),
    (["--dataset_size", "null"], "dataset_size", None),
    (["--dataset_size", "30000"], "dataset_size", 30000),
])
def test_good_values_parse(args, field, value):
    assert getattr(parse_config(bc.TrainConfig, args), field) == value


@pytest.mark.parametrize("args, line", [
    (["--steps", "1.5"], "config error: field 'steps' expects int, got '1.5'"),
    (["--resume", "maybe"], "config error: field 'resume' expects bool, got 'maybe'"),
    (["--steps", "true"], "config error: field 'steps' expects int, got 'True'"),
    (["--lr", "fast"], "config error: field 'lr' expects float, got 'fast'"),
    (["--lr", "true"], "config error: field 'lr' expects float, got 'True'"),
    (["--bf16", "2"], "config error: field 'bf16' expects bool, got '2'"),
    (["--dataset_size", "big"], "config error: field 'dataset_size' expects Optional[int], got 'big'"),
    (["--config", "/nonexistent/x.yaml"], "config error: no config file /nonexistent/x.yaml"),
    (["--config", "configs/bc/maze2d-larg.yaml"], "config error: no config file configs/bc/maze2d-larg.yaml; did you "
                                                  "mean configs/bc/maze2d-large.yaml?"),
    # a prefix of a field is not that field (argparse alone would take --step 10 as --steps 10)
    (["--step", "10"], "config error: unknown option --step; did you mean --steps? (full field names only; "
                       "`--help` lists them)"),
    (["--eval_episodes_durng=5"], "config error: unknown option --eval_episodes_durng; did you mean "
                                  "--eval_episodes_during? (full field names only; `--help` lists them)"),
])
def test_bad_values_are_one_line(args, line, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(bc.TrainConfig, args)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_config_file_values_are_checked_too(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text('task: maze2d-umaze\nresume: "false"\n')
    assert parse_config(bc.TrainConfig, ["--config", str(path)]).resume is False  # not bool("false") == True
    path.write_text("task: maze2d-umaze\nbatch_size: 1.5\n")  # pyrallis alone would train with batch_size 1
    with pytest.raises(SystemExit):
        parse_config(bc.TrainConfig, ["--config", str(path)])
    assert capsys.readouterr().err.strip() == "config error: field 'batch_size' expects int, got '1.5'"
    path.write_text("task: maze2d-umaze\nstep: 10\n")
    with pytest.raises(SystemExit):
        parse_config(bc.TrainConfig, ["--config", str(path)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'step'" in line and "valid fields:" in line and " steps," in line


@pytest.mark.parametrize("kind, match", [
    ("inf", "'rewards' contains NaN or inf"),
    ("missing_key", "key 'actions' missing"),
    ("not_found", "file not found"),
    ("directory", "cannot read HDF5 file"),
])
def test_more_dataset_errors_are_one_line(kind, match, tmp_path):
    if kind == "inf":
        rewards = np.zeros(50, np.float32)
        rewards[3] = -np.inf
        path = write_d4rl_hdf5(tmp_path / "inf.hdf5", rewards=rewards)
    elif kind == "missing_key":
        path = write_d4rl_hdf5(tmp_path / "noactions.hdf5", drop="actions")
    elif kind == "not_found":
        path = tmp_path / "absent.hdf5"
    else:
        path = tmp_path
    with pytest.raises(DatasetError) as info:
        load_dataset("maze2d-umaze", dataset_path=path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"dataset {path}") and match in message, message


@pytest.mark.parametrize("algo, args, line", [
    ("iql", ["--batch_size", "-5"], "config error: field 'batch_size' must be > 0, got -5"),
    ("mage", ["--codebook_size", "0"], "config error: field 'codebook_size' must be > 0, got 0"),
    ("dt", ["--seq_len", "0"], "config error: field 'seq_len' must be > 0, got 0"),
    ("bc", ["--dropout", "1.5"], "config error: field 'dropout' must be in [0, 1), got 1.5"),
    ("iql", ["--expectile", "1"], "config error: field 'expectile' must be in (0, 1), got 1.0"),
    ("diffuser", ["--ema_decay", "-0.1"], "config error: field 'ema_decay' must be in [0, 1), got -0.1"),
    ("mage", ["--scales", "[1, 2, 5]"],
     "config error: scales [1, 2, 5] must increase from >= 1 and end at horizon/patch = 32"),
    ("mage", ["--patch", "0"], "config error: horizon (64) and patch (0) must be > 0"),
])
def test_out_of_range_values_are_one_line_before_any_data(algo, args, line, capsys):
    """A value outside its range is named at parse time, before the dataset is even looked at."""
    with pytest.raises(SystemExit) as info:
        parse_config(load_algorithm(algo).TrainConfig, args)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
