"""Faults a long run meets: SIGKILL mid-training and mid-generation, corrupt checkpoints, a full disk, two runs in
one folder. Real subprocesses where the fault is a process dying; BC is the cheapest algorithm to drive."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from shared import utils
from shared.datasets import DatasetError, generate, load_dataset, verify
from shared.logger import prepare_run_dir, write_result
from shared.utils import RunError, atomic_write_json, load_latest_checkpoint, save_checkpoint


ROOT = Path(__file__).resolve().parents[1]
DATA_SIZE = 30_000  # the size the other test files use, so the session dataset cache is shared
# tiny BC: a few hundred steps of a small MLP, 5 evaluation episodes
BC_ARGS = ["--config", "configs/bc/tiny.yaml", "--dataset_size", str(DATA_SIZE), "--device", "cpu",
           "--hidden_dim", "64", "--batch_size", "64", "--log_every", "50", "--eval_episodes", "5",
           "--num_eval_envs", "5", "--wandb_mode", "disabled"]


def _env(data_dir):
    # one torch thread per process: 2 shared cores; the dataset cache of the session (conftest's data_dir)
    return {**os.environ, "MAGE_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": ""}


class Proc(subprocess.Popen):
    """A subprocess whose stdout/stderr go to temporary files (no pipe to fill up while we wait on it)."""

    def __init__(self, cmd, env):
        self.files = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        super().__init__(cmd, cwd=ROOT, env=env, stdout=self.files[0], stderr=self.files[1], text=True)

    def output(self, timeout=300):
        """(stdout, stderr) once the process has ended."""
        self.wait(timeout=timeout)
        texts = []
        for f in self.files:
            f.seek(0)
            texts.append(f.read())
        return texts[0], texts[1]

    def stderr_so_far(self):
        self.files[1].flush()
        with open(f"/proc/self/fd/{self.files[1].fileno()}") as f:
            return f.read()


def _bc(args, data_dir):
    return Proc([sys.executable, "algorithms/bc.py", *BC_ARGS, *args], _env(data_dir))


def _wait_for(predicate, proc, timeout=180.0, poll=0.02):
    """Poll until ``predicate()`` holds; fails if ``proc`` exits first or time runs out."""
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            err = proc.output()[1]
            pytest.fail(f"process ended (rc {proc.returncode}) before the fault could be injected:\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting to inject the fault")
        time.sleep(poll)


def _finish(proc, timeout=300):
    out, err = proc.output(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _ensure_dataset(data_dir):
    """Generate the session's 30k dataset in this process first, so the subprocesses below only read it."""
    assert os.environ["MAGE_DATA_DIR"] == str(data_dir)  # conftest's session cache
    load_dataset("maze2d-umaze", size=DATA_SIZE)


# ----------------------------------------------------------------------------------------------- kill and resume


@pytest.mark.slow  # a whole run or generation in a subprocess
def test_sigkilled_run_resumes_to_the_same_final_metrics(data_dir, tmp_path):
    _ensure_dataset(data_dir)
    steps = ["--steps", "600", "--checkpoint_every", "100"]
    straight = _bc([*steps, "--out_dir", str(tmp_path / "straight")], data_dir)
    killed = _bc([*steps, "--out_dir", str(tmp_path / "killed")], data_dir)  # both at once: 2 cores
    run_dir = tmp_path / "killed" / "bc" / "maze2d-umaze" / "seed0"
    _wait_for(lambda: any(run_dir.glob("checkpoint_*.pt")), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / "final.json").exists(), "the run finished before it was killed: raise --steps"
    first = sorted(run_dir.glob("checkpoint_*.pt"))
    assert first and int(first[-1].stem.split("_")[1]) < 600

    # without --resume the folder is refused (one line), with it the run continues from the checkpoint
    refused = _bc([*steps, "--out_dir", str(tmp_path / "killed")], data_dir)
    _, err = refused.output(timeout=120)
    assert refused.returncode == 1 and err.strip().splitlines()[-1].startswith("error:")
    assert "already holds checkpoints" in err and "--resume true" in err and "Traceback" not in err
    out, _ = _finish(_bc([*steps, "--out_dir", str(tmp_path / "killed"), "--resume", "true"], data_dir))
    assert "resumed from step" in out
    _finish(straight)

    a = json.loads((tmp_path / "straight" / "bc" / "maze2d-umaze" / "seed0" / "final.json").read_text())
    b = json.loads((run_dir / "final.json").read_text())
    for key in ("normalized_score", "normalized_score_std", "return_mean", "return_std", "train_steps"):
        assert a[key] == b[key], (key, a[key], b[key])


# ----------------------------------------------------------------------------------------- killed generation


@pytest.mark.slow  # a whole run or generation in a subprocess
def test_sigkilled_generation_leaves_nothing_usable_and_a_later_generate_succeeds(tmp_path):
    out = tmp_path / "gen" / "umaze.hdf5"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "shared.datasets", "generate", "maze2d-umaze", "--size", "200000", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def killed_when(predicate):
        proc = Proc(cmd, env)
        _wait_for(lambda: predicate(proc), proc, timeout=240, poll=0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # whatever is there must be refused, never taken as a valid dataset
            with pytest.raises(DatasetError):
                verify(out)
            with pytest.raises(DatasetError):
                load_dataset("maze2d-umaze", dataset_path=out)

    # while the HDF5 temp file is being written (the dangerous moment), then mid-generation (nothing on disk yet)
    killed_when(lambda proc: any(p.name.endswith(".tmp") for p in out.parent.iterdir()))
    assert not out.exists()
    killed_when(lambda proc: re.search(r"[1-9]0000/200000", proc.stderr_so_far()))  # >= 10k transitions made
    assert not out.exists()
    # SIGKILL runs no cleanup: a temp file may be left, hidden and under a name no loader reads
    assert all(p.name.startswith(f".{out.name}.") and p.suffix == ".tmp" for p in out.parent.iterdir())

    assert generate("maze2d-umaze", size=200_000, out=out, progress=False) == out
    assert verify(out)["size"] == 200_000
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the killed writers' temp files are gone


# ------------------------------------------------------------------------------------------ corrupt checkpoints


def _two_checkpoints(run_dir):
    save_checkpoint(run_dir, 100, {"weights": torch.arange(5.0)})
    save_checkpoint(run_dir, 200, {"weights": torch.arange(5.0) * 2})
    return sorted(run_dir.glob("checkpoint_*.pt"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_checkpoint"])
def test_corrupt_newest_checkpoint_is_refused_and_the_previous_one_used(damage, tmp_path, capsys):
    older, newest = _two_checkpoints(tmp_path)
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(4096))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        torch.save([1, 2, 3], newest)
    state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 100 and torch.equal(state["weights"], torch.arange(5.0))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint") and newest.name in lines[0], lines
    assert "older" in lines[0]


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path, capsys):
    for path in _two_checkpoints(tmp_path):
        path.write_bytes(b"\0" * 100)
    with pytest.raises(utils.RunError, match="none of the 2 checkpoints .* is readable"):
        load_latest_checkpoint(tmp_path)
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    assert load_latest_checkpoint(tmp_path / "empty") is None  # no checkpoint at all: a fresh start


def test_failed_checkpoint_write_keeps_the_previous_ones(tmp_path, monkeypatch):
    older, newest = _two_checkpoints(tmp_path)

    def full_disk_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.torch, "save", full_disk_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 300, {"weights": torch.zeros(5)})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [older.name, newest.name]  # no temp file, none deleted
    assert load_latest_checkpoint(tmp_path)["step"] == 200


# ------------------------------------------------------------------------------------------------- disk full


def _result(score):
    keys = ("algo", "task", "seed", "dataset", "normalized_score", "normalized_score_std", "return_mean",
            "return_std", "episodes", "train_steps", "train_wall_s", "action_latency_ms", "device", "git_commit")
    return {**{k: 0 for k in keys}, "normalized_score": score}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDiskFile:
    """A file object whose writes fail as on a full disk (after the OS accepted a few bytes)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fault", ["fsync", "write", "replace"])
def test_full_disk_while_writing_results_loses_nothing(fault, tmp_path, monkeypatch):
    path = tmp_path / "results" / "seed0.json"
    write_result(path, _result(1.0))
    before = path.read_bytes()
    if fault == "fsync":
        monkeypatch.setattr(utils.os, "fsync", _enospc)
    elif fault == "write":
        real = utils.os.fdopen
        monkeypatch.setattr(utils.os, "fdopen", lambda *a, **k: _FullDiskFile(real(*a, **k)))
    else:
        monkeypatch.setattr(utils.os, "replace", _enospc)
    with pytest.raises(OSError) as info:
        write_result(path, _result(2.0), overwrite=True)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "results" / "other.json", {"a": 1})
    monkeypatch.undo()
    assert path.read_bytes() == before and json.loads(before)["normalized_score"] == 1.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file, no half-written other.json


def test_results_are_never_overwritten_without_overwrite(tmp_path):
    path = tmp_path / "seed0.json"
    write_result(path, _result(1.0))
    with pytest.raises(RunError, match="already exists; refusing to overwrite"):
        write_result(path, _result(2.0))
    assert json.loads(path.read_text())["normalized_score"] == 1.0
    write_result(path, _result(3.0), overwrite=True)
    assert json.loads(path.read_text())["normalized_score"] == 3.0


def test_a_run_whose_result_file_exists_is_refused_before_training(tmp_path):
    result = tmp_path / "results" / "seed0.json"
    write_result(result, _result(1.0))
    config = SimpleNamespace(out_dir=str(tmp_path / "runs"), task="maze2d-umaze", seed=0, resume=False,
                             results_path=str(result))
    with pytest.raises(RunError, match="already exists; refusing to start a run"):
        prepare_run_dir(config, "bc")
    assert json.loads(result.read_text())["normalized_score"] == 1.0
    config.results_path = str(tmp_path / "results" / "seed1.json")
    run_dir = prepare_run_dir(config, "bc")
    assert prepare_run_dir(config, "bc") == run_dir  # the same process may prepare its folder again (in-process)


@pytest.mark.slow  # a whole run or generation in a subprocess
def test_full_disk_in_a_run_is_one_line(tmp_path):
    """run_main reports an OSError (disk full, permissions) as one line, not a traceback."""
    code = ("import errno, sys; sys.path.insert(0, '.'); from shared.utils import run_main, RunError\n"
            "from dataclasses import dataclass\n"
            "@dataclass\nclass C:\n    x: int = 0\n"
            "def main(c):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "run_main(main, C)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: [Errno 28] No space left on device"]


# --------------------------------------------------------------------------------------- two runs, one folder


@pytest.mark.slow  # a whole run or generation in a subprocess
def test_two_runs_in_one_folder_do_not_overwrite_each_other(data_dir, tmp_path):
    _ensure_dataset(data_dir)
    folder = ["--out_dir", str(tmp_path), "--steps", "1000000", "--checkpoint_every", "50"]
    run_dir = tmp_path / "bc" / "maze2d-umaze" / "seed0"
    first = _bc(folder, data_dir)
    try:
        _wait_for(lambda: any(run_dir.glob("checkpoint_*.pt")), first)
        # a fresh run is refused because of the checkpoints; a "resume" is refused because the first is alive
        seconds = {match: _bc([*folder, *extra], data_dir)
                   for extra, match in (([], "already holds checkpoints"), (["--resume", "true"], "in use by another"))}
        for match, second in seconds.items():
            _, err = second.output(timeout=120)
            last = err.strip().splitlines()[-1]
            assert second.returncode == 1 and "Traceback" not in err, err[-3000:]
            assert last.startswith("error:") and match in last and str(run_dir) in last, last
            assert first.poll() is None  # the first run is untouched and still training
        assert not (run_dir / "final.json").exists()
    finally:
        first.kill()
        first.wait()


def test_only_orphaned_temp_files_are_removed(tmp_path):
    import socket

    from shared.utils import remove_orphaned_temp_files

    out, host = tmp_path / "d.hdf5", socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".d.hdf5.{host}-{dead.pid}.abc.tmp"
    live = tmp_path / f".d.hdf5.{host}-{os.getpid()}.abc.tmp"
    other_host = tmp_path / f".d.hdf5.elsewhere-{dead.pid}.abc.tmp"
    for p in (orphan, live, other_host):
        p.write_bytes(b"partial")
    remove_orphaned_temp_files(out)
    assert not orphan.exists() and live.exists() and other_host.exists()
