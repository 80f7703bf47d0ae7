"""Speed of MAGE, DT, Diffuser, IQL and BC on one device, in one process: training throughput, action latency and
peak memory, each measured eager and through the CUDA-graph fast path, side by side.

    python benchmarks/speed.py [--task maze2d-large] [--algos mage,dt,diffuser,iql,bc] [--settings eager,graphs]
                               [--bf16] [--cudnn-benchmark on|off] [--skip-sweeps] [--device auto] [--out ...]
    python benchmarks/speed.py --quick --device cpu --out /tmp/speed.json     # smoke test: tiny models, seconds
    python benchmarks/speed.py --algos mage --settings graphs+bf16,graphs+inductor+bf16 --latency-only --skip-sweeps
                                          # the evaluation plan alone, unfused against fused (no training compile)

Each algorithm is built from ``configs/<algo>/<task>.yaml`` through its own TrainConfig, data and model classes,
with random weights, fake data and identity normalisation (timing does not depend on them), and timed through its
own code, not copies of it:
  * training: every stage of ``training_stages(...)`` as shared.training.train_loop runs it
    (``step = stage.begin()``, then ``step(i)`` and the stage's ``after_step``), at the config's batch size. The
    first calls (with config.compile on CUDA: CapturedStep's eager warm-up calls and the capture of the whole step)
    are timed apart as ``first_calls_s``; steps/s is measured after them. MAGE: per stage and weighted by its
    three-stage schedule;
  * acting: the algorithm's evaluation policy (``reset(goals)``, ``act(obs, rewards)``: normalise, plan, copy to
    the host) at a batch of 1 and of 64 envs: the median after warm-up, the first call (where the graphs policy
    captures that batch size) apart as ``first_call_s``. DT acts on a full context of K steps; Diffuser: the time
    of a plan (all its denoising steps), of following a plan, and amortised per action when it plans every N steps
    (N = replan_every, or once per episode when replan_every = 0);
  * peak GPU memory (torch.cuda.max_memory_allocated) of each measurement, including warm-up and capture
    (``peak_memory_mib``) and in steady state after them (``steady_peak_memory_mib``);
  * the FLOPs of one training step per stage (training_flops) and the TFLOP/s each setting achieves with them
    (``--flops-only``: the count alone, seconds to minutes on any device);
  * MAGE's per-action time as the horizon H grows (scales 1, 2, 4, ... ending at H / patch) and as the number of
    scales K grows at the config's H, and MAGE at Diffuser's horizon for an equal-horizon ratio (fp32, both
    settings).
Settings, each on a freshly built model with the same seed (training changes the weights):
  eager   config.compile = False: the eager path;
  graphs  config.compile = True: each training step is one CUDA-graph replay, each plan / forward of the policy one
          replay per batch size. CUDA only: on CPU use_graphs() keeps the eager path, so it is recorded as skipped;
both fp32 (config.bf16 = False); ``--bf16`` adds the bf16 variants of the chosen settings (bf16 autocast, CUDA only),
which ``--settings`` also takes by name (e.g. ``graphs,graphs+bf16``).
Per algorithm the speed-ups graphs over eager; ratios between the algorithms (from the graphs setting where it
ran, else eager); the project's targets (maze2d-large configs, one H200) with measured values and whether they are
met. A setting that fails records its error and the run goes on; a CUDA error that loses the GPU context skips the
remaining GPU measurements, and the JSON is still written. Prints tables; writes JSON (device, torch, CUDA, git
commit, cuDNN benchmark state) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.buffer import Normalizer, SegmentBuffer, TransitionBuffer  # noqa: E402
from shared.tasks import get_task, goal_radius  # noqa: E402
from shared.training import EMA, CapturedStep  # noqa: E402
from shared.utils import device_name, git_commit, load_script, resolve_device, set_seed  # noqa: E402

ALGOS = ("mage", "dt", "diffuser", "iql", "bc")
NAMES = {"mage": "MAGE", "dt": "DT", "diffuser": "Diffuser", "iql": "IQL", "bc": "BC"}
OBS_DIM, ACT_DIM, GOAL_DIM = 4, 2, 2  # maze2d / multi2d: (x, y, vx, vy), (ax, ay), goal (x, y)
SEED = 0  # every model of every setting starts from the same weights
# CapturedStep runs this many eager calls (the last of them also records the graph) before its first replay
CAPTURE_CALLS = int(inspect.signature(CapturedStep.__init__).parameters["warmup"].default)
QUICK_OVERRIDES = {  # tiny models for the CPU smoke test
    "mage": dict(horizon=16, patch=2, scales=[1, 2, 4, 8], codebook_size=32, code_dim=8, ae_channels=16,
                 ae_blocks=1, adapter_dim=8, d_model=32, n_layers=1, n_heads=2, batch_size=8),
    "dt": dict(seq_len=4, embedding_dim=32, n_layers=1, n_heads=1, batch_size=8),
    "diffuser": dict(horizon=16, n_diffusion_steps=4, dim=8, dim_mults=[1, 2], batch_size=8),
    "iql": dict(hidden_dim=32, n_layers=2, batch_size=8),
    "bc": dict(hidden_dim=32, n_layers=2, batch_size=8),
}
STAGE_LENGTHS = {"autoencoder": "ae_steps", "transformer": "tf_steps", "end_to_end": "e2e_steps"}  # MAGE schedule


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    compile: bool  # config.compile: the CUDA-graph fast path
    bf16: bool  # config.bf16: bf16 autocast
    inductor: bool = False  # config.inductor (MAGE, Diffuser, IQL): the loss also fused by torch.compile (others skip)


INDUCTOR_ALGOS = ("mage", "diffuser", "iql")  # the algorithms with config.inductor
# graphs+inductor is measured only when asked for (--settings eager,graphs,graphs+inductor): it compiles for minutes
SETTINGS = (Setting("eager", False, False), Setting("graphs", True, False),
            Setting("graphs+inductor", True, False, True))
DEFAULT_SETTINGS = "eager,graphs"
BF16_SETTINGS = (Setting("eager+bf16", False, True), Setting("graphs+bf16", True, True),
                 Setting("graphs+inductor+bf16", True, True, True))


@dataclasses.dataclass
class Budget:
    """Iterations of each measurement."""

    warmup: int = 10  # per-action calls after the first (MAGE, DT, IQL, BC, following a Diffuser plan)
    iters: int = 100
    plan_warmup: int = 2  # Diffuser plans
    plan_iters: int = 10
    train_warmup: int = 10  # training steps per stage, first calls included (at least CAPTURE_CALLS + 1)
    train_iters: int = 200
    sweep_iters: int = 30  # MAGE H and K sweeps
    batches: tuple = (1, 64)
    horizons: tuple = (64, 128, 256, 512)
    ks: tuple = (1, 2, 4, 6, 8, 12)


QUICK = Budget(warmup=1, iters=3, plan_warmup=1, plan_iters=2, train_warmup=CAPTURE_CALLS + 1, train_iters=2,
               sweep_iters=2, batches=(1, 64), horizons=(16, 32), ks=(1, 2, 4))

# (key, algorithm, what, comparison, target, unit): maze2d-large configs on one H200, judged on the graphs setting
TARGETS = (
    ("mage_stage1_steps_per_s", "mage", "training steps/s, stage 1 (autoencoder)", ">=", 300, "steps/s"),
    ("mage_stage2_steps_per_s", "mage", "training steps/s, stage 2 (transformer)", ">=", 400, "steps/s"),
    ("mage_stage3_steps_per_s", "mage", "training steps/s, stage 3 (end to end)", ">=", 100, "steps/s"),
    ("mage_action_batch1_ms", "mage", "one action, batch 1", "<=", 3, "ms"),
    ("mage_action_batch64_ms", "mage", "one action, batch 64", "<=", 4, "ms"),
    ("mage_over_dt_latency_batch64", "mage", "MAGE / DT action time, batch 64", "<=", 2, "x"),
    ("dt_steps_per_s", "dt", "training steps/s", ">=", 1000, "steps/s"),
    ("dt_action_batch1_ms", "dt", "one action, batch 1", "<=", 1, "ms"),
    ("diffuser_steps_per_s", "diffuser", "training steps/s", ">=", 300, "steps/s"),
    ("diffuser_plan_batch1_ms", "diffuser", "one plan, batch 1", "<=", 150, "ms"),
    ("iql_steps_per_s", "iql", "training steps/s", ">=", 3000, "steps/s"),
    ("bc_steps_per_s", "bc", "training steps/s", ">=", 3000, "steps/s"),
) + tuple((f"{a}_train_peak_memory_mib", a, "peak GPU memory of training", "<=", 8192, "MiB") for a in ALGOS)


# ----------------------------------------------------------------------------- helpers
def load_algorithm(name: str):
    """algorithms/<name>.py as a module (the files are scripts; they put the repo root on sys.path)."""
    return load_script(ROOT / "algorithms" / f"{name}.py", f"speed_algo_{name}")


def make_config(module, algo: str, task: str, device: str, overrides: dict):
    """The committed config file through the algorithm's TrainConfig (pyrallis decoding, as ``--config``), with
    overrides on top. (pyrallis.decode, not the CLI parser: building the CLI help costs seconds per call.)"""
    import pyrallis
    import yaml

    values = yaml.safe_load((ROOT / "configs" / algo / f"{task}.yaml").read_text()) or {}
    values.update(device=device, **overrides)
    return pyrallis.decode(module.TrainConfig, values)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def allocated_mib(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return round(torch.cuda.memory_allocated(device) / 2**20, 1)


def reserved_peak_mib(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_reserved(device) / 2**20, 1)


def max_or_none(*values: Optional[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> dict:
    """Median (and min, mean) wall time in ms of fn() after a first call (timed apart: a graphs policy captures
    there) and ``warmup`` more; peak memory including the first calls and in steady state."""
    reset_peak(device)
    before = allocated_mib(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup)):
        fn()
    sync(device)
    warm_peak, warm_reserved = peak_mib(device), reserved_peak_mib(device)
    reset_peak(device)
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    steady = peak_mib(device)
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "mean_ms": round(statistics.fmean(times), 4), "first_call_s": round(first, 4), "iters": iters,
            "allocated_before_mib": before, "peak_memory_mib": max_or_none(warm_peak, steady),
            "steady_peak_memory_mib": steady,
            "peak_reserved_mib": max_or_none(warm_reserved, reserved_peak_mib(device))}


def pow2_scales(length: int) -> list[int]:
    """1, 2, 4, ... below L, then L (VAR's schedule ending at the latent length)."""
    scales, s = [], 1
    while s < length:
        scales.append(s)
        s *= 2
    return scales + [length]


def k_scales(length: int, k: int) -> list[int]:
    """K strictly increasing scale lengths from about 1 to L, geometrically spaced, ending at L."""
    if k < 1 or k > length:
        raise ValueError(f"K = {k} scales do not fit a latent of length {length}")
    if k == 1:
        return [length]
    raw = [length ** (i / (k - 1)) for i in range(k)]
    scales = []
    for i, v in enumerate(raw):
        lo = scales[-1] + 1 if scales else 1
        hi = length - (k - 1 - i)  # leave room for the scales still to come
        scales.append(min(max(int(round(v)), lo), hi))
    return scales


def fake_trajectories(n_traj: int, length: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_traj * length
    arrays = {
        "obs": rng.standard_normal((n, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        "goals": np.repeat(rng.standard_normal((n_traj, GOAL_DIM)), length, 0).astype(np.float32),
        "rtg": rng.uniform(0, 1, n).astype(np.float32),
        "timesteps": np.tile(np.arange(length), n_traj).astype(np.int64),
    }
    bounds = np.stack([np.arange(n_traj) * length, (np.arange(n_traj) + 1) * length], 1).astype(np.int64)
    return arrays, bounds


def identity_norm(dim: int) -> Normalizer:
    return Normalizer(np.zeros(dim, np.float32), np.ones(dim, np.float32))


def n_params(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def cuda_alive(device: torch.device) -> bool:
    """False when the process's CUDA context is unusable (a sticky error such as an illegal address, or a stream
    left capturing): then no later GPU measurement can succeed."""
    if device.type != "cuda":
        return True
    try:
        x = torch.ones(4, device=device)
        ok = float((x + 1).sum().item()) == 8.0
        torch.cuda.synchronize(device)
        return ok
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def skip_reason(setting: Setting, device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        return None
    if setting.compile:
        return "CUDA graphs need CUDA (use_graphs: on CPU config.compile runs the eager path, measured as eager)"
    if setting.bf16:
        return "bf16 autocast is CUDA only (on CPU the algorithms run fp32)"
    return None


def describe(algo: str, c) -> dict:
    keys = {"mage": ("horizon", "patch", "scales", "codebook_size", "code_dim", "ae_channels", "d_model", "n_layers",
                     "n_heads", "batch_size", "replan_every"),
            "dt": ("seq_len", "embedding_dim", "n_layers", "n_heads", "batch_size"),
            "diffuser": ("horizon", "n_diffusion_steps", "n_sample_steps", "dim", "dim_mults", "batch_size",
                         "replan_every"),
            "iql": ("hidden_dim", "n_layers", "deterministic_actor", "batch_size"),
            "bc": ("hidden_dim", "n_layers", "policy", "batch_size")}[algo]
    return {k: getattr(c, k) for k in keys if hasattr(c, k)}


# ----------------------------------------------------------------------------- per algorithm and setting
class Bench:
    """One algorithm's data, model, training stages and policy, built by the algorithm's own classes."""

    def __init__(self, algo: str, config, device: torch.device, task: str, quick: bool) -> None:
        self.algo, self.config, self.device = algo, config, device
        self.mod = load_algorithm(algo)
        self.episode_len = get_task(task).max_episode_steps
        self.goal_radius = goal_radius(get_task(task))
        horizon = {"mage": "horizon", "dt": "seq_len", "diffuser": "horizon"}.get(algo)
        length = max(200, 2 * getattr(config, horizon)) if horizon else 400
        arrays, bounds = fake_trajectories(8 if quick else 32, length)
        set_seed(SEED)  # the same initial weights in every setting
        getattr(self, f"_build_{algo}")(arrays, bounds)

    # --- builders: the algorithms' own dataclasses, model classes, training_stages and policies
    def _build_mage(self, a: dict, bounds: np.ndarray) -> None:
        m, c, dev = self.mod, self.config, self.device
        x = np.concatenate([a["rtg"][:, None], a["obs"]], 1)
        cond = np.concatenate([x if c.return_condition else a["obs"], a["goals"]], 1)  # (R,) s, g on goal tasks
        cond_dim = cond.shape[1]
        buffer = SegmentBuffer({"x": x, "cond": cond, "actions": a["actions"]}, bounds, c.horizon, dev,
                               end_window=c.end_window)
        self.data = m.TrajectoryData(buffer, identity_norm(OBS_DIM), OBS_DIM, ACT_DIM, cond_dim, True, {})
        self.model = m.MAGE(c, OBS_DIM, cond_dim, ACT_DIM).to(dev)
        self.stages = lambda: m.training_stages(c, self.data, self.model, dev)
        self.make_policy = lambda: m.MagePolicy(self.model, self.data, c, dev)

    def _build_dt(self, a: dict, bounds: np.ndarray) -> None:
        m, c, dev = self.mod, self.config, self.device
        fields = {"states": a["obs"], "actions": a["actions"], "timesteps": a["timesteps"], "goals": a["goals"],
                  "returns": a["rtg"][:, None]}
        buffer = SegmentBuffer(fields, bounds, c.seq_len, dev)
        max_t = max(c.episode_len, self.episode_len, int(bounds[0, 1]))
        self.data = m.SequenceData(buffer, identity_norm(OBS_DIM), OBS_DIM, ACT_DIM, GOAL_DIM, max_t, {})
        self.model = m.DecisionTransformer(c, OBS_DIM, ACT_DIM, GOAL_DIM, max_t).to(dev)
        self.stages = lambda: m.training_stages(c, self.data, self.model, dev)
        self.make_policy = lambda: m.DTPolicy(self.model, self.data, c, dev)

    def _build_diffuser(self, a: dict, bounds: np.ndarray) -> None:
        m, c, dev = self.mod, self.config, self.device
        D = OBS_DIM + ACT_DIM
        x = np.clip(np.concatenate([a["actions"], a["obs"]], 1), -1, 1)
        buffer = SegmentBuffer({"x": x}, bounds, c.horizon, dev)
        rest = np.zeros(D, bool)
        rest[:ACT_DIM] = True  # padding rests: zero action and velocity (load_data with pad_rest on a maze)
        rest[ACT_DIM + 2:] = True
        rest_dims = torch.as_tensor(rest, device=dev) if c.pad_rest else None
        rest_values = torch.zeros(D, device=dev) if c.pad_rest else None
        self.data = m.TrajectoryData(buffer, identity_norm(D), OBS_DIM, ACT_DIM, True, rest_dims, rest_values,
                                     (0.0, 1.0), {})
        self.model = m.Diffuser(c, OBS_DIM, ACT_DIM).to(dev)
        self.ema = EMA(self.model, c.ema_decay)
        self.stages = lambda: m.training_stages(c, self.data, self.model, self.ema, dev)
        self.make_policy = lambda: m.DiffuserPolicy(self.ema.model, self.data, c, dev)  # plans with the EMA

    def _build_iql(self, a: dict, bounds: np.ndarray) -> None:
        m, c, dev = self.mod, self.config, self.device
        n = len(a["obs"])
        traj_last = np.zeros(n, np.int64)
        for start, end in bounds:
            traj_last[start:end] = end - 1
        fields = {"observations": a["obs"], "actions": a["actions"], "index": np.arange(n, dtype=np.int64),
                  "pos": a["obs"][:, :2].copy(), "goal": a["goals"], "traj_last": traj_last}
        buffer = TransitionBuffer(fields, bounds, dev)
        self.data = m.IQLData(buffer, identity_norm(OBS_DIM), OBS_DIM, ACT_DIM, True, {}, self.goal_radius)
        self.model = m.IQL(c, OBS_DIM + GOAL_DIM, ACT_DIM).to(dev)
        self.stages = lambda: m.training_stages(c, self.data, self.model, dev)
        self.make_policy = lambda: m.IQLPolicy(self.model, self.data, c, dev)

    def _build_bc(self, a: dict, bounds: np.ndarray) -> None:
        m, c, dev = self.mod, self.config, self.device
        inputs = np.concatenate([a["obs"], a["goals"]], 1).astype(np.float32)
        buffer = TransitionBuffer({"inputs": inputs, "actions": a["actions"]}, bounds, dev)
        self.data = m.BCData(buffer, identity_norm(OBS_DIM), OBS_DIM, ACT_DIM, inputs.shape[1], True, {})
        self.model = m.Actor(inputs.shape[1], ACT_DIM, c.hidden_dim, c.n_layers, c.dropout, c.policy).to(dev)
        self.stages = lambda: m.training_stages(c, self.data, self.model, dev)
        self.make_policy = lambda: m.BCPolicy(self.model, self.data, c, dev)

    # --- training
    def training(self, budget: Budget, profile_steps: int = 0) -> dict:
        """Every stage as train_loop runs it: begin(), then step(i) and after_step(i + 1). ``profile_steps`` > 0
        (CUDA) also records the GPU kernel time and kernel count per step (``kernel_profile``)."""
        dev, c = self.device, self.config
        warmup = max(budget.train_warmup, CAPTURE_CALLS + 1)  # the graphs setting replays from call 4 on
        stages, _ = self.stages()
        out: dict[str, Any] = {"batch_size": c.batch_size, "first_calls": CAPTURE_CALLS,
                               "warmup_calls": warmup, "iters": budget.train_iters, "stages": {}}
        start = 0
        for stage in stages:
            reset_peak(dev)
            before = allocated_mib(dev)
            t0 = time.perf_counter()
            step = stage.begin()
            i = run_steps(stage, step, start, CAPTURE_CALLS)[0]  # graphs: eager warm-ups, the last one captures
            sync(dev)
            first = time.perf_counter() - t0
            i = run_steps(stage, step, i, warmup - CAPTURE_CALLS)[0]  # graphs: the first replays
            sync(dev)
            warm_peak, warm_reserved = peak_mib(dev), reserved_peak_mib(dev)
            reset_peak(dev)
            t0 = time.perf_counter()
            i, stats = run_steps(stage, step, i, budget.train_iters)
            sync(dev)
            elapsed = time.perf_counter() - t0
            steady = peak_mib(dev)
            profile = None
            if profile_steps and dev.type == "cuda":
                i, profile = kernel_profile(lambda i, f=step: run_steps(stage, f, i, 1)[0], i, profile_steps, dev)
            loss = stats.get("train/loss")
            loss = float(loss.item() if isinstance(loss, torch.Tensor) else loss) if loss is not None else None
            out["stages"][stage.name] = {
                "steps_per_s": round(budget.train_iters / elapsed, 3), "first_calls_s": round(first, 4),
                "allocated_before_mib": before, "peak_memory_mib": max_or_none(warm_peak, steady),
                "steady_peak_memory_mib": steady,
                "peak_reserved_mib": max_or_none(warm_reserved, reserved_peak_mib(dev)),
                "loss_finite": None if loss is None else math.isfinite(loss)}
            if profile is not None:
                out["stages"][stage.name]["kernel_profile"] = profile
            del step, stats  # the captured graph and its memory pool go with the step
            free(dev)
            start = stage.end
        rates = {name: s["steps_per_s"] for name, s in out["stages"].items()}
        out["per_stage_steps_per_s"] = rates
        if self.algo == "mage":
            lengths = {name: getattr(c, STAGE_LENGTHS[name]) for name in rates}
            out["schedule"] = lengths
            out["steps_per_s"] = round(sum(lengths.values()) / sum(lengths[s] / rates[s] for s in rates), 3)
        else:
            out["steps_per_s"] = next(iter(rates.values()))
        out["first_calls_s"] = round(sum(s["first_calls_s"] for s in out["stages"].values()), 4)
        out["peak_memory_mib"] = max_or_none(*(s["peak_memory_mib"] for s in out["stages"].values()))
        out["steady_peak_memory_mib"] = max_or_none(*(s["steady_peak_memory_mib"] for s in out["stages"].values()))
        out["peak_reserved_mib"] = max_or_none(*(s["peak_reserved_mib"] for s in out["stages"].values()))
        return out

    # --- acting
    def _inputs(self, batch: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        obs = rng.standard_normal((batch, OBS_DIM)).astype(np.float32)
        goals = rng.standard_normal((batch, GOAL_DIM)).astype(np.float32)
        return obs, goals, np.zeros(batch, np.float32)

    def latency(self, policy, batch: int, budget: Budget, iters: Optional[int] = None) -> dict:
        """Per-action time at this batch size (Diffuser: per plan, following it, amortised) and peak memory."""
        iters = iters or budget.iters
        obs, goals, rewards = self._inputs(batch)
        if self.algo != "diffuser":
            policy.reset(goals)
            warmup = budget.warmup + (self.config.seq_len if self.algo == "dt" else 0)  # DT: a full context
            out = time_calls(lambda: policy.act(obs, rewards), warmup, iters, self.device)
            out["per_action_ms"] = out["median_ms"]
            return out

        def plan():
            policy.reset(goals)  # drops the plan: the next act plans (all denoising steps)
            policy.act(obs, rewards)

        plan_t = time_calls(plan, budget.plan_warmup, budget.plan_iters, self.device)
        policy.reset(goals)
        policy.act(obs, rewards)
        follow = time_calls(lambda: policy.act(obs, rewards), budget.warmup, iters, self.device)
        every = self.config.replan_every if self.config.replan_every > 0 else self.episode_len
        amortised = (plan_t["median_ms"] + (every - 1) * follow["median_ms"]) / every
        try:
            steps = len(self.model.timesteps(self.config.n_sample_steps))
        except Exception:  # noqa: BLE001 - descriptive only
            steps = self.config.n_sample_steps or self.config.n_diffusion_steps
        return {"plan": plan_t, "follow_plan": follow, "per_plan_ms": plan_t["median_ms"],
                "follow_ms": follow["median_ms"], "replans_every": every, "denoising_steps": steps,
                "amortised_per_action_ms": round(amortised, 4), "per_action_ms": plan_t["median_ms"],
                "first_call_s": plan_t["first_call_s"],
                "peak_memory_mib": max_or_none(plan_t["peak_memory_mib"], follow["peak_memory_mib"]),
                "steady_peak_memory_mib": max_or_none(plan_t["steady_peak_memory_mib"],
                                                      follow["steady_peak_memory_mib"])}


def kernel_profile(step: Callable[[int], int], i: int, n: int, device: torch.device) -> tuple[int, dict]:
    """torch.profiler over n steps: GPU kernel time and kernels per step, and the heaviest kernels. The kernel time of
    an eager step is the floor under its captured replay (which removes launch overhead only); the profile of a
    replayed (and inductor-fused) step says what that setting leaves."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            i = step(i)
        sync(device)
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    kernels = [e for e in events if e.self_device_time_total > 0]

    def rows(key: Callable) -> list[dict]:
        return [{"name": e.key[:90], "ms_per_step": round(e.self_device_time_total / n / 1000, 3),
                 "calls_per_step": round(e.count / n, 1)} for e in sorted(kernels, key=key)[:16]]

    return i, {"steps": n, "gpu_ms_per_step": round(gpu_us / n / 1000, 3),
               "kernels_per_step": round(sum(e.count for e in kernels) / n, 1),
               "bound_steps_per_s": round(n * 1e6 / gpu_us, 1) if gpu_us else None,
               "top_kernels": rows(lambda e: -e.self_device_time_total),  # where the time goes
               "most_launched": rows(lambda e: -e.count)}  # where the kernel count comes from


def training_flops(algo: str, args, device: torch.device) -> dict:
    """GFLOP of one training step per stage: the matmuls, convolutions and attention that torch's FlopCounterMode
    sees in the eager fp32 step (a captured or fused step does the same arithmetic, unseen by the counter). Times a
    setting's steps/s, it gives the TFLOP/s that setting achieves (``achieved_tflop_per_s``), against the device's
    peak: is a steps/s target within reach of this model at this batch size?"""
    from torch.utils.flop_counter import FlopCounterMode

    bench = Bench(algo, algo_config(algo, args, Setting("eager", False, False)), device, args.task, args.quick)
    stages, _ = bench.stages()
    out, start = {}, 0
    for stage in stages:
        step = stage.begin()
        i = run_steps(stage, step, start, 1)[0]  # the first step may differ (MAGE initialises its codebook)
        with FlopCounterMode(display=False) as counter:
            run_steps(stage, step, i, 1)
        out[stage.name] = round(counter.get_total_flops() / 1e9, 6)
        start = stage.end
    del bench, stages
    free(device)
    return out


def run_steps(stage, step: Callable[[int], dict], i: int, n: int) -> tuple[int, dict]:
    """n training steps from global step i, as train_loop runs them: step(i), then the stage's after_step(i + 1)."""
    stats: dict = {}
    for _ in range(n):
        stats = step(i)
        if stage.after_step is not None:
            stage.after_step(i + 1)
        i += 1
    return i, stats


def algo_config(algo: str, args, setting: Setting, extra: Optional[dict] = None):
    mod = load_algorithm(algo)
    overrides = {**(QUICK_OVERRIDES[algo] if args.quick else {}), "compile": setting.compile, "bf16": setting.bf16}
    if algo in INDUCTOR_ALGOS:  # both ways: a committed config with `inductor: true` must not leak into "graphs"
        overrides["inductor"] = setting.inductor
    return make_config(mod, algo, args.task, args.device, {**overrides, **(extra or {})})


def measure(algo: str, setting: Setting, args, device: torch.device, budget: Budget) -> dict:
    """Training and latency of one algorithm in one setting, on a freshly built model; errors are recorded."""
    skip = skip_reason(setting, device)
    if setting.inductor and algo not in INDUCTOR_ALGOS:
        skip = f"inductor fusion (config.inductor) is an option of {' and '.join(INDUCTOR_ALGOS)} only"
    if skip:
        return {"skipped": skip}
    bench = policy = None
    try:
        try:
            config = algo_config(algo, args, setting)
            bench = Bench(algo, config, device, args.task, args.quick)
        except Exception as exc:  # one failing setting must not lose the others
            traceback.print_exc()
            return {"error": error_text(exc)}
        entry: dict[str, Any] = {"config": describe(algo, config), "params_m": n_params(bench.model)}
        try:  # training and acting fail independently (e.g. a capture that fails in one of them)
            entry["training"] = ({"skipped": "--latency-only"} if args.latency_only
                                 else bench.training(budget, args.profile_steps))
        except Exception as exc:
            traceback.print_exc()
            entry["training"] = {"error": error_text(exc)}
        if not cuda_alive(device):
            entry["latency"] = {"error": "skipped: the CUDA context was lost in training"}
        else:
            try:
                policy = bench.make_policy()
                entry["latency"] = {f"batch{b}": bench.latency(policy, b, budget) for b in budget.batches}
            except Exception as exc:
                traceback.print_exc()
                entry["latency"] = {"error": error_text(exc)}
        failed = [f"{k}: {entry[k]['error']}" for k in ("training", "latency") if "error" in entry[k]]
        if failed:
            entry["error"] = "; ".join(failed)[:500]
        return entry
    finally:
        del bench, policy
        if cuda_alive(device):
            free(device)


class DeviceLost(RuntimeError):
    """A CUDA error left the process's GPU context unusable."""


def summary_line(entry: dict) -> str:
    if "skipped" in entry:
        return f"skipped ({entry['skipped']})"
    tr, lats = section(entry, "training"), section(entry, "latency")
    parts = []
    if tr is not None:
        parts.append(f"train {tr['steps_per_s']:.1f} steps/s")
        if len(tr["stages"]) > 1:
            parts[-1] += " (" + ", ".join(f"{k} {v:.1f}" for k, v in tr["per_stage_steps_per_s"].items()) + ")"
        if tr.get("peak_memory_mib") is not None:
            parts.append(f"train peak {tr['peak_memory_mib']:.0f} MiB")
    for key, lat in (lats or {}).items():
        parts.append(f"{key} {lat['per_action_ms']:.3f} ms")
        if "amortised_per_action_ms" in lat:
            parts[-1] += f" (plan; amortised {lat['amortised_per_action_ms']:.3f} ms)"
    if "error" in entry:
        parts.append(f"ERROR {entry['error']}")
    return ", ".join(parts)


def section(entry: Optional[dict], name: str) -> Optional[dict]:
    """An entry's training or latency results; None when the setting was skipped or that part failed."""
    if not isinstance(entry, dict):
        return None
    part = entry.get(name)
    return part if isinstance(part, dict) and "error" not in part and "skipped" not in part else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return round(a / b, 3)


def speedups(fast: dict, slow: dict, batches: tuple) -> dict:
    """How much faster ``fast`` is than ``slow`` (> 1: faster), and its training memory relative to slow's."""
    out: dict[str, Optional[float]] = {}
    ft, st = section(fast, "training"), section(slow, "training")
    if ft is not None and st is not None:
        out["training"] = ratio(ft["steps_per_s"], st["steps_per_s"])
        if len(ft["stages"]) > 1:
            for name, rate in ft["per_stage_steps_per_s"].items():
                out[f"training_{name}"] = ratio(rate, st["per_stage_steps_per_s"].get(name))
    fl, sl = section(fast, "latency"), section(slow, "latency")
    if fl is not None and sl is not None:
        for b in batches:
            f, s = fl[f"batch{b}"], sl[f"batch{b}"]
            out[f"latency_batch{b}"] = ratio(s["per_action_ms"], f["per_action_ms"])
            if "amortised_per_action_ms" in f:
                out[f"amortised_latency_batch{b}"] = ratio(s["amortised_per_action_ms"],
                                                           f["amortised_per_action_ms"])
    if ft is not None and st is not None:
        out["training_peak_memory"] = ratio(ft["peak_memory_mib"], st["peak_memory_mib"])
    return out


def speedups_of(settings: dict, batches: tuple) -> dict:
    pairs = [("graphs", "eager"), ("graphs+bf16", "eager+bf16"), ("eager+bf16", "eager"), ("graphs+bf16", "graphs"),
             ("graphs+inductor", "graphs"), ("graphs+inductor+bf16", "graphs"),
             ("graphs+inductor+bf16", "graphs+bf16")]
    return {f"{a}_over_{b}": speedups(settings[a], settings[b], batches) for a, b in pairs
            if a in settings and b in settings}


# ----------------------------------------------------------------------------- MAGE sweeps
def mage_sweeps(args, device: torch.device, budget: Budget, settings: list[Setting]) -> dict:
    """MAGE per-action time vs H (scales 1, 2, 4, ... H/patch) and vs K (at the config's H), in each fp32 setting
    that runs on this device; Diffuser's horizon gives the equal-horizon comparison."""
    measured = [s for s in settings if not s.bf16 and not s.inductor and skip_reason(s, device) is None]
    base = algo_config("mage", args, SETTINGS[0])
    try:
        diffuser_horizon = algo_config("diffuser", args, SETTINGS[0]).horizon
    except Exception as exc:  # noqa: BLE001 - the sweep runs without the equal-horizon point
        print(f"  MAGE sweeps: no Diffuser horizon ({error_text(exc)})")
        diffuser_horizon = None

    def run(horizon: int, scales: list[int], patch: int) -> dict:
        row: dict[str, Any] = {"horizon": horizon, "patch": patch, "scales": scales, "K": len(scales)}
        for setting in measured:
            if not cuda_alive(device):
                raise DeviceLost(f"the CUDA context was lost before MAGE H={horizon} K={len(scales)}")
            bench = policy = None
            try:
                c = dataclasses.replace(base, horizon=horizon, patch=patch, scales=scales, compile=setting.compile)
                bench = Bench("mage", c, device, args.task, args.quick)
                row["params_m"] = n_params(bench.model)
                policy = bench.make_policy()
                cells = {}
                for b in budget.batches:
                    lat = bench.latency(policy, b, budget, budget.sweep_iters)
                    cells[f"batch{b}_ms"] = lat["per_action_ms"]
                    cells[f"batch{b}_first_call_s"] = lat["first_call_s"]
                    cells[f"batch{b}_peak_memory_mib"] = lat["peak_memory_mib"]
                    cells[f"batch{b}_steady_peak_memory_mib"] = lat["steady_peak_memory_mib"]
                row[setting.name] = cells
            except Exception as exc:  # noqa: BLE001 - recorded per row and setting
                traceback.print_exc()
                row[setting.name] = {"error": error_text(exc)}
            finally:
                del bench, policy
                if cuda_alive(device):
                    free(device)
        return row

    def patch_for(horizon: int) -> int:
        patch = base.patch
        while horizon % patch:
            patch //= 2
        return max(patch, 1)

    out: dict[str, Any] = {"settings": [s.name for s in measured], "horizon_sweep": [], "k_sweep": [],
                           "at_diffuser_horizon": None}
    try:
        for h in budget.horizons:
            p = patch_for(h)
            out["horizon_sweep"].append(run(h, pow2_scales(h // p), p))
            print(f"  MAGE H={h}: {sweep_line(out['horizon_sweep'][-1], out['settings'], budget.batches)}",
                  flush=True)
        length = base.horizon // base.patch
        for k in budget.ks:
            if k > length:
                continue
            out["k_sweep"].append(run(base.horizon, k_scales(length, k), base.patch))
            print(f"  MAGE K={k}: {sweep_line(out['k_sweep'][-1], out['settings'], budget.batches)}", flush=True)
        if diffuser_horizon is not None:
            p = patch_for(diffuser_horizon)
            out["at_diffuser_horizon"] = run(diffuser_horizon, pow2_scales(diffuser_horizon // p), p)
            print(f"  MAGE at Diffuser's horizon {diffuser_horizon}: "
                  f"{sweep_line(out['at_diffuser_horizon'], out['settings'], budget.batches)}", flush=True)
    except DeviceLost as exc:
        out["error"] = str(exc)
    return out


def sweep_line(row: dict, settings: list[str], batches: tuple) -> str:
    parts = [f"K={row['K']} scales={row['scales']}"]
    for s in settings:
        cells = row.get(s, {})
        if "error" in cells:
            parts.append(f"{s}: {cells['error']}")
        elif cells:
            parts.append(f"{s}: " + " ".join(f"b{b} {cells[f'batch{b}_ms']:.3f} ms" for b in batches))
    return "  ".join(parts)


# ----------------------------------------------------------------------------- ratios and targets
def ratios_of(algos: dict, sweeps: dict, setting: str, batches: tuple) -> dict:
    def lat(algo: str, b: int, key: str = "per_action_ms") -> Optional[float]:
        lats = section(algos.get(algo, {}).get("settings", {}).get(setting), "latency")
        return lats[f"batch{b}"].get(key) if lats is not None else None

    equal = (sweeps or {}).get("at_diffuser_horizon") or {}
    out = {}
    for b in batches:
        suffix = "" if b == 1 else f"_batch{b}"
        out[f"diffuser_over_mage_latency{suffix}"] = ratio(lat("diffuser", b, "per_plan_ms"),
                                                           (equal.get(setting) or {}).get(f"batch{b}_ms"))
        out[f"diffuser_over_mage_latency_configs{suffix}"] = ratio(lat("diffuser", b, "per_plan_ms"), lat("mage", b))
        out[f"diffuser_amortised_over_mage_latency{suffix}"] = ratio(lat("diffuser", b, "amortised_per_action_ms"),
                                                                     lat("mage", b))
        out[f"mage_over_dt_latency{suffix}"] = ratio(lat("mage", b), lat("dt", b))
    return out


def preferred(by_setting: dict[str, dict]) -> tuple[dict, dict]:
    """Each ratio from the graphs setting where it could be computed, else from eager."""
    values, source = {}, {}
    keys = next(iter(by_setting.values()), {})
    for key in keys:
        values[key], source[key] = None, None
        for setting in ("graphs", "eager"):
            v = by_setting.get(setting, {}).get(key)
            if v is not None:
                values[key], source[key] = v, setting
                break
    return values, source


def target_value(key: str, entry: dict, ratios: dict) -> Optional[float]:
    """The measured value of target ``key`` in one setting's entry (None: not measured there)."""
    tr, lat = section(entry, "training") or {}, section(entry, "latency") or {}
    if key.startswith("mage_stage"):
        stages = list((tr.get("per_stage_steps_per_s") or {}).values())
        n = int(key[len("mage_stage")]) - 1
        return stages[n] if n < len(stages) else None
    if key.endswith("_steps_per_s"):
        return tr.get("steps_per_s")
    if key.endswith("_train_peak_memory_mib"):
        return tr.get("peak_memory_mib")
    if key.startswith("mage_over_dt_latency"):
        return ratios.get(key)
    for b in (1, 64):
        if key.endswith(f"_batch{b}_ms") and f"batch{b}" in lat:
            return lat[f"batch{b}"]["per_plan_ms" if "_plan_" in key else "per_action_ms"]
    return None


def targets_of(algos: dict, by_setting: dict[str, dict]) -> dict:
    """Every target with its measured value, from the graphs setting where it ran, else eager."""
    out = {}
    for key, algo, what, op, target, unit in TARGETS:
        row: dict[str, Any] = {"what": f"{NAMES[algo]}: {what}", "target": target, "op": op, "unit": unit,
                               "measured": None, "met": False, "setting": None}
        settings = algos.get(algo, {}).get("settings", {})
        for setting in ("graphs", "eager"):
            entry = settings.get(setting)
            if not isinstance(entry, dict):
                continue
            value = target_value(key, entry, by_setting.get(setting, {}))
            if value is not None:
                row.update(measured=value, setting=setting,
                           met=bool(value >= target if op == ">=" else value <= target))
                break
        if row["measured"] is None:
            row["note"] = "not measured (no CUDA memory on CPU, or the measurement failed)"
        out[key] = row
    return out


# ----------------------------------------------------------------------------- output
def print_tables(payload: dict) -> None:
    print(f"\n{payload['device']} | torch {payload['torch']} | {payload['task']} | cuDNN benchmark "
          f"{'on' if payload['cudnn_benchmark'] else 'off'}" + (" | QUICK" if payload["quick"] else ""))
    bs = payload["batches"]
    for algo, a in payload["algorithms"].items():
        for setting, e in a["settings"].items():
            print(f"{algo:9s} {setting:12s} {summary_line(e)}")
            tr = section(e, "training")
            if tr is not None:
                print(f"{'':22s}first calls (incl. capture) {tr['first_calls_s']:.2f} s, steady-state peak "
                      f"{tr['steady_peak_memory_mib']} MiB")
            lat = (section(e, "latency") or {}).get("batch1", {})
            if "amortised_per_action_ms" in lat:
                print(f"{'':22s}{lat['denoising_steps']} denoising steps per plan, plans every "
                      f"{lat['replans_every']} steps")
        for name, gains in a.get("speedups", {}).items():
            if gains:
                print(f"{'':22s}{name}: " + ", ".join(f"{k} {v}" for k, v in gains.items()))
    sw = payload["mage_sweeps"]
    if sw.get("horizon_sweep") or sw.get("k_sweep"):
        print("\nMAGE per-action time vs horizon (scales 1, 2, 4, ..., H/patch):")
        for r in sw["horizon_sweep"]:
            print(f"  H={r['horizon']:4d} " + sweep_line(r, sw["settings"], bs))
        print("MAGE per-action time vs number of scales K (config horizon):")
        for r in sw["k_sweep"]:
            print("  " + sweep_line(r, sw["settings"], bs))
    print("\nratios:")
    for k, v in payload["ratios"].items():
        print(f"  {k}: {v} ({payload['ratios_setting'][k]})")
    print("\ntargets:")
    for k, t in payload["targets"].items():
        mark = "MET " if t["met"] else ("miss" if t["measured"] is not None else "  - ")
        print(f"  {mark} {t['what']}: {t['measured']} {t['unit']} (target {t['op']} {t['target']}; {t['setting']})")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="maze2d-large", help="maze2d-* or multi2d-* (the configs' task)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated subset of " + ", ".join(ALGOS))
    p.add_argument("--profile-steps", type=int, default=5,
                   help="CUDA: profile this many training steps per stage in every setting (GPU kernel time and count "
                        "per step; CUPTI also sees the kernels of a replayed CUDA graph); 0: off")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="settings to measure, in this order (eager, graphs, graphs+inductor); e.g. 'graphs' alone, "
                        "so that no earlier setting has run cuDNN's autotuning for it")
    p.add_argument("--bf16", action="store_true", help="also measure eager and graphs with bf16 autocast (CUDA)")
    p.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on",
                   help="torch.backends.cudnn.benchmark (on: as the algorithms' main(); off: no autotuning "
                        "workspaces, to see whether they make the peaks)")
    p.add_argument("--quick", action="store_true", help="tiny models and few iterations (CPU smoke test)")
    p.add_argument("--skip-sweeps", action="store_true", help="skip MAGE's H and K sweeps")
    p.add_argument("--flops-only", action="store_true",
                   help="only count each algorithm's FLOPs per training step and stage (seconds, on any device; "
                        "multiply by a measured steps/s for the TFLOP/s it achieves) and write them to --out")
    p.add_argument("--latency-only", action="store_true",
                   help="time acting only (no training steps, so no training compile): e.g. an evaluation plan's "
                        "cost in a few minutes of a GPU lease")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    args = p.parse_args(argv)
    if not args.task.startswith(("maze2d-", "multi2d-")):
        p.error("--task must be an embedded maze task (maze2d-* or multi2d-*)")
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    if not algos or set(algos) - set(ALGOS):
        p.error(f"--algos: choose from {', '.join(ALGOS)}")
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
    torch.set_float32_matmul_precision("high")  # as the algorithms' main(): TF32 matmuls
    budget = QUICK if args.quick else Budget()
    chosen = [x.strip() for x in args.settings.split(",") if x.strip()]
    by_name = {s.name: s for s in SETTINGS + BF16_SETTINGS}
    if not chosen or set(chosen) - set(by_name):
        p.error(f"--settings: choose from {', '.join(by_name)} (--bf16 adds the bf16 variants of those chosen)")
    settings = [by_name[n] for n in chosen] + ([by_name[f"{n}+bf16"] for n in chosen if f"{n}+bf16" in by_name]
                                               if args.bf16 else [])
    settings = list(dict.fromkeys(settings))  # a setting named twice runs once
    load_before = os.getloadavg()[0]
    name = device_name(device)  # asked now: after a lost CUDA context the driver may not answer
    print(f"speed on {name} (torch {torch.__version__}), task {args.task}, cuDNN benchmark "
          f"{args.cudnn_benchmark}, settings {', '.join(s.name for s in settings)}", flush=True)

    if args.flops_only:
        counted = {algo: {"gflop_per_step": training_flops(algo, args, device)} for algo in algos}
        for algo, entry in counted.items():
            print(f"  {algo}: GFLOP per training step {entry['gflop_per_step']}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "git_commit": git_commit(),
                                        "task": args.task, "quick": args.quick, "algorithms": counted,
                                        "notes": "gflop_per_step: see training_flops()"}, indent=2) + "\n")
        return 0
    results: dict[str, dict] = {}
    lost: Optional[str] = None
    for algo in algos:
        entry: dict[str, Any] = {"config": None, "params_m": None, "settings": {}}
        for setting in settings:
            if lost is not None:
                e = {"error": f"skipped: the CUDA context was lost earlier ({lost})"}
            else:
                e = measure(algo, setting, args, device, budget)
                if "error" in e and not cuda_alive(device):
                    lost = f"{algo} {setting.name}: {e['error']}"
            for key in ("config", "params_m"):  # the same for every setting: kept once, at the algorithm
                if key in e:
                    value = e.pop(key)
                    entry[key] = value if entry[key] is None else entry[key]
            entry["settings"][setting.name] = e
            print(f"  {algo} [{setting.name}]: {summary_line(e)}", flush=True)
        entry["speedups"] = speedups_of(entry["settings"], budget.batches)
        if not args.latency_only and lost is None:
            try:
                entry["gflop_per_step"] = flops = training_flops(algo, args, device)
                rates = {name: tr["per_stage_steps_per_s"] for name, e in entry["settings"].items()
                         if (tr := section(e, "training")) is not None}
                entry["achieved_tflop_per_s"] = {name: {k: round(v * flops[k] / 1e3, 3) for k, v in r.items()
                                                        if k in flops} for name, r in rates.items()}
                print(f"  {algo}: GFLOP per training step {flops}; achieved TFLOP/s {entry['achieved_tflop_per_s']}",
                      flush=True)
            except Exception as exc:  # counting must not lose the timings
                traceback.print_exc()
                entry["gflop_per_step"] = {"error": error_text(exc)}
        results[algo] = entry

    sweeps: dict[str, Any] = {"settings": [], "horizon_sweep": [], "k_sweep": [], "at_diffuser_horizon": None}
    if "mage" in algos and not args.skip_sweeps:
        if lost is not None:
            sweeps["error"] = f"skipped: the CUDA context was lost earlier ({lost})"
        else:
            sweeps = mage_sweeps(args, device, budget, settings)
            if "error" in sweeps:
                lost = f"MAGE sweeps: {sweeps['error']}"
    by_setting = {s.name: ratios_of(results, sweeps, s.name, budget.batches) for s in settings}
    ratios, ratios_setting = preferred(by_setting)
    targets = targets_of(results, by_setting)
    payload = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "task": args.task,
        "quick": args.quick,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_benchmark_requested": args.cudnn_benchmark == "on",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "batches": list(budget.batches),
        "budget": dataclasses.asdict(budget),
        "capture_calls": CAPTURE_CALLS,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "settings": {s.name: {"compile": s.compile, "bf16": s.bf16, "skipped": skip_reason(s, device)}
                     for s in settings},
        "algorithms": results,
        "device_lost": lost,
        "mage_sweeps": sweeps,
        "ratios": ratios,
        "ratios_setting": ratios_setting,
        "ratios_by_setting": by_setting,
        "targets": targets,
        "targets_summary": {"met": sum(t["met"] for t in targets.values()),
                            "measured": sum(t["measured"] is not None for t in targets.values()),
                            "total": len(targets),
                            "comparable": device.type == "cuda" and "H200" in name
                            and args.task == "maze2d-large" and not args.quick,
                            "basis": "maze2d-large configs on one H200, fp32, graphs setting (eager where graphs "
                                     "did not run)"},
        "notes": "random weights, fake data, identity normalisation. Training: per stage of training_stages, "
                 "stage.begin() then step(i) and the stage's after_step (Diffuser's EMA, MAGE's dead-code "
                 "restarts), synchronised before and after; first_calls_s = begin() and the first capture_calls "
                 "steps (graphs: eager warm-ups and the capture); steps/s over budget.train_iters steps after "
                 "warmup_calls. Latency = median wall time of policy.act (host arrays in and out) after a first "
                 "call (first_call_s: the graphs policy captures there) and warm-up, one policy per setting for "
                 "both batch sizes; Diffuser per_action_ms is its per-plan time, amortised_per_action_ms spreads "
                 "one plan over replans_every steps. peak_memory_mib includes warm-up and capture, "
                 "steady_peak_memory_mib only the timed part (torch.cuda.max_memory_allocated after "
                 "reset_peak_memory_stats). speedups: > 1 = the first setting is faster; training_peak_memory is "
                 "the ratio of peaks. ratios: from the graphs setting where both sides ran (ratios_setting), "
                 "diffuser_over_mage_latency against MAGE at Diffuser's horizon (mage_sweeps.at_diffuser_horizon), "
                 "*_configs at each config's own horizon. gflop_per_step: the matmul / convolution / attention "
                 "FLOPs of one eager fp32 training step per stage (torch.utils.flop_counter; the same arithmetic "
                 "in every setting); achieved_tflop_per_s = a setting's steps/s x those. "
                 "MAGE sweeps: fp32, in every setting that runs on the "
                 "device (eager and graphs on CUDA). cuDNN autotuning (cudnn_benchmark) runs once per convolution "
                 "shape and process: the first setting that meets a shape pays for it (time and workspace, in its "
                 "first_calls_s and peak_memory_mib), later settings reuse the choice; --settings sets the order "
                 "or runs one setting alone.",
    }
    print_tables(payload)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
