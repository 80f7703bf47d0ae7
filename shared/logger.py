"""Logging shared by every algorithm: W&B (offline by default), local metric history and the results schema.

Every run writes ``<run_dir>/metrics.jsonl`` (one JSON per logged step) and ``<run_dir>/final.json``; the
committed benchmark files ``benchmarks/results/<algo>/<task>/seed<k>.json`` use the same ``final`` schema.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from shared.tasks import get_task
from shared.utils import RunError, atomic_write_json, git_commit

try:
    import fcntl
except ImportError:  # not POSIX: no run-folder lock
    fcntl = None

RESULT_KEYS = (
    "algo", "task", "seed", "dataset", "normalized_score", "normalized_score_std", "return_mean", "return_std",
    "episodes", "train_steps", "train_wall_s", "action_latency_ms", "device", "git_commit",
)


class Logger:
    """Log scalars to W&B (if enabled) and to a local JSONL file that tables can be rebuilt from."""

    def __init__(self, config: Any, algo: str, run_dir: Path, wandb_mode: str = "offline",
                 project: str = "mage-suite") -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history_path = self.run_dir / "metrics.jsonl"
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        self.wandb = None
        mode = os.environ.get("WANDB_MODE", wandb_mode)
        if mode != "disabled":
            try:
                import wandb  # lazy: the GPU machine has no wandb
            except ImportError:
                print("note: wandb is not installed; logging to metrics.jsonl only")
            else:
                self.wandb = wandb.init(
                    project=project, group=cfg["task"], name=f"{algo}-{cfg['task']}-seed{cfg['seed']}",
                    config={"algo": algo, **cfg}, mode=mode, dir=str(self.run_dir), reinit="finish_previous",
                    # resuming a killed run continues the same W&B run
                    id=f"{algo}-{cfg['task']}-seed{cfg['seed']}-{_short_hash(str(self.run_dir))}", resume="allow",
                )

    def log(self, metrics: dict[str, float], step: int) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def finish(self, final: Optional[dict] = None) -> None:
        if self.wandb is not None:
            if final:
                self.wandb.summary.update({k: v for k, v in final.items() if isinstance(v, (int, float, str))})
            self.wandb.finish()


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:8]


def learning_curve(history_path: Path, key: str = "eval/normalized_score") -> list[list[float]]:
    """[[step, value], ...] of one metric from a run's metrics.jsonl."""
    curve = []
    if Path(history_path).exists():
        for line in Path(history_path).read_text().splitlines():
            row = json.loads(line)
            if key in row:
                curve.append([row["step"], row[key]])
    return curve


def make_result(algo: str, config: Any, dataset_info: dict, eval_result: Any, train_steps: int,
                train_wall_s: float, device: str, curve: Optional[list] = None) -> dict:
    """One run's final metrics in the suite's schema (the same for every algorithm)."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    ev = eval_result.to_dict() if hasattr(eval_result, "to_dict") else dict(eval_result)
    return {
        "algo": algo,
        "task": cfg["task"],
        "seed": cfg["seed"],
        "dataset": {k: dataset_info.get(k) for k in ("source", "recipe", "recipe_version", "size", "seed", "path")},
        "normalized_score": ev["score_mean"],
        "normalized_score_std": ev["score_std"],
        "return_mean": ev["return_mean"],
        "return_std": ev["return_std"],
        "success_rate": ev.get("success_rate"),
        "episodes": ev["episodes"],
        "train_steps": train_steps,
        "train_wall_s": round(train_wall_s, 2),
        "action_latency_ms": ev.get("action_latency_ms"),
        "action_latency_batch": ev.get("latency_batch_size", ev.get("action_latency_batch")),
        "device": device,
        "git_commit": git_commit(),
        "learning_curve": curve or [],
        "episode_detail": episode_detail(ev),
        "config": cfg,
    }


def episode_detail(ev: dict) -> dict:
    """Per-episode outcomes of an evaluation (``EvalResult.to_dict()``), rounded to keep result files small: returns,
    first reward step (-1: never), and on goal tasks start and goal (x, y), the closest distance to the goal and the
    final (x, y). Older result files lack it (or its last two)."""
    detail = {"returns": [round(r, 4) for r in ev.get("returns", [])],
              "first_reward_step": list(ev.get("first_reward_steps", []))}
    if ev.get("goals"):
        detail["start_xy"] = [[round(v, 4) for v in xy] for xy in ev["starts"]]
        detail["goal_xy"] = [[round(v, 4) for v in xy] for xy in ev["goals"]]
    if ev.get("closest"):
        detail["closest_goal_distance"] = [round(d, 3) for d in ev["closest"]]
        detail["end_xy"] = [[round(v, 4) for v in xy] for xy in ev["ends"]]
    return detail


def write_result(path: Path, result: dict, overwrite: bool = False) -> Path:
    """Write a final-metrics JSON atomically; never replace an existing result unless asked to."""
    path = Path(path)
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise RunError(f"result for {path} lacks keys {missing}")
    if path.exists() and not overwrite:
        raise RunError(f"result file {path} already exists; refusing to overwrite it (remove it or pick another path)")
    atomic_write_json(path, result)
    return path


def prepare_run_dir(config: Any, algo: str) -> Path:
    """``out_dir/algo/task/seedK``; refuses to start over a run that has checkpoints unless resuming, in a folder
    that another live process uses, or when ``results_path`` already exists."""
    run_dir = Path(config.out_dir) / algo / config.task / f"seed{config.seed}"
    if not config.resume and any(run_dir.glob("checkpoint_*.pt")):
        raise RunError(f"{run_dir} already holds checkpoints; pass --resume true to continue or pick another out_dir")
    results_path = getattr(config, "results_path", None)
    also = also_evaluate(config)
    for path in [results_path] + ([also[1]] if also else []):
        if path and Path(path).exists():  # refuse now, not after hours of training (write_result would)
            raise RunError(f"result file {path} already exists; refusing to start a run that could not write it "
                           "(remove it or pick another results_path / also_evaluate)")
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock_run_dir(run_dir)
    return run_dir


_RUN_LOCKS: dict[str, int] = {}  # run folders this process holds -> fd of their lock; the OS frees it at exit


def _lock_run_dir(run_dir: Path) -> None:
    """One process per run folder: a second run started (or resumed) while the first is alive is refused."""
    key = str(run_dir.resolve())
    if fcntl is None or key in _RUN_LOCKS:
        return
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):  # a filesystem without locks: go on unlocked
            os.close(fd)
            return
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunError(f"{run_dir} is in use by another running process (pid {owner}); wait for it to finish "
                       "or pick another out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _RUN_LOCKS[key] = fd


def also_evaluate(config: Any) -> Optional[tuple[str, str]]:
    """(task, result path) of ``config.also_evaluate`` ("TASK=PATH"), None when unset. The other task must train on
    the same data (maze2d-X and multi2d-X: benchmarks/run.py's twin runs), else one line before any work."""
    value = getattr(config, "also_evaluate", "")
    if not value:
        return None
    task, sep, path = value.partition("=")
    if not sep or not path:
        raise RunError(f"also_evaluate '{value}': expected TASK=PATH (e.g. multi2d-large=results/seed0.json)")
    other, own = get_task(task), get_task(config.task)
    if other.data_name != own.data_name:
        raise RunError(f"also_evaluate: {other.name} trains on {other.data_name}, not on {own.data_name} as "
                       f"{own.name}; a policy is evaluated only on a task of its own data")
    return other.name, path


def finish_run(algo: str, config: Any, run_dir: Path, logger: Logger, dataset_info: dict, eval_result: Any,
               train_steps: int, train_wall_s: float, device: str,
               evaluate_on: Optional[Callable[[str], Any]] = None) -> dict:
    """Log the final evaluation, write ``run_dir/final.json`` (and ``config.results_path``), close W&B. With
    ``config.also_evaluate``, ``evaluate_on(task)`` evaluates the same policy on that task too and its result is
    written as that task's (its learning curve empty: the run evaluated its own task during training)."""
    logger.log({"eval/normalized_score": eval_result.score_mean, "eval/return": eval_result.return_mean,
                "eval/success_rate": eval_result.success_rate}, train_steps)
    final = make_result(algo, config, dataset_info, eval_result, train_steps, train_wall_s, device,
                        learning_curve(Path(run_dir) / "metrics.jsonl"))
    write_result(Path(run_dir) / "final.json", final, overwrite=True)
    if getattr(config, "results_path", None):
        write_result(Path(config.results_path), final)
    print(f"[{algo}] {config.task} seed {config.seed}: normalized score {eval_result.score_mean:.1f} "
          f"± {eval_result.score_std:.1f} (return {eval_result.return_mean:.1f}), {train_steps} steps "
          f"in {train_wall_s:.0f}s on {device}")
    also = also_evaluate(config)
    if also is not None:
        if evaluate_on is None:
            raise RunError(f"{algo} cannot evaluate on another task (also_evaluate)")
        task, path = also
        other = evaluate_on(task)
        twin = dataclasses.replace(config, task=task, results_path=path, also_evaluate="")
        twin_result = {**make_result(algo, twin, dataset_info, other, train_steps, train_wall_s, device),
                       "trained_by": f"the {config.task} run of seed {config.seed} (one training, both evaluations)"}
        write_result(Path(path), twin_result)
        logger.log({"eval_also/normalized_score": other.score_mean, "eval_also/success_rate": other.success_rate},
                   train_steps)
        print(f"[{algo}] {task} seed {config.seed} (the same policy): normalized score {other.score_mean:.1f} "
              f"± {other.score_std:.1f} (return {other.return_mean:.1f})")
    logger.finish(final)
    return final
