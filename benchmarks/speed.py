"""Speed of MAGE, DT and Diffuser on one device, in one process: action latency, training throughput, memory.

    python benchmarks/speed.py [--task maze2d-large] [--bf16] [--compile] [--device auto] [--out ...]
    python benchmarks/speed.py --quick --device cpu --out /tmp/speed.json     # smoke test: tiny models, seconds

Each model is built from ``configs/<algo>/<task>.yaml`` through the algorithm's own TrainConfig and model class,
with random weights and fake normalisation statistics (timing does not depend on them), and driven through the
algorithm's own evaluation policy (``act``: normalise, plan, read actions, copy to the host), so a latency here
is what one evaluation step costs. Measured:
  * time to produce one action for a batch of 1 and of 64 envs (median of many calls after warm-up). MAGE plans
    at every call (its K scales); DT runs its full context of K steps; for Diffuser the full plan (all configured
    denoising steps) is the time of the step that plans: we report the per-plan time, the per-step time of
    following a plan, and the amortised per-action time when it plans every N steps (N = replan_every, or once
    per episode when replan_every = 0);
  * training steps/s at the config's batch size (for MAGE per stage and over its three-stage schedule);
  * peak GPU memory (torch.cuda.max_memory_allocated) of each measurement;
  * MAGE's per-action time as the horizon H grows (64 ... 512, scales 1, 2, 4, ... ending at H / patch) and as
    the number of scales K grows at the config's H; and MAGE at Diffuser's horizon for an equal-horizon ratio.
The baseline is fp32 eager; ``--bf16`` (bf16 autocast, as the configs' bf16 flag) and ``--compile``
(torch.compile of the heavy modules) add settings measured in the same process and report their gains.
Prints tables and ratios and writes JSON (device name, torch version, git commit) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from shared.buffer import Normalizer, SegmentBuffer  # noqa: E402
from shared.tasks import get_task  # noqa: E402
from shared.utils import device_name, git_commit, load_script, resolve_device  # noqa: E402

ALGOS = ("mage", "dt", "diffuser")
OBS_DIM, ACT_DIM, GOAL_DIM = 4, 2, 2  # maze2d / multi2d: (x, y, vx, vy), (ax, ay), goal (x, y)
QUICK_OVERRIDES = {  # tiny models for the CPU smoke test
    "mage": dict(horizon=16, patch=2, scales=[1, 2, 4, 8], codebook_size=32, code_dim=8, ae_channels=16,
                 ae_blocks=1, adapter_dim=8, d_model=32, n_layers=1, n_heads=2, batch_size=8),
    "dt": dict(seq_len=4, embedding_dim=32, n_layers=1, n_heads=1, batch_size=8),
    "diffuser": dict(horizon=16, n_diffusion_steps=4, dim=8, dim_mults=[1, 2], batch_size=8, train_steps=10),
}


@dataclasses.dataclass
class Budget:
    """Iterations of each measurement."""

    warmup: int = 10
    iters: int = 50  # per-action calls (MAGE, DT, following a Diffuser plan)
    plan_warmup: int = 2
    plan_iters: int = 10  # Diffuser plans
    train_warmup: int = 10
    train_iters: int = 50  # training steps (per MAGE stage)
    sweep_iters: int = 30  # MAGE H and K sweeps
    batches: tuple = (1, 64)
    horizons: tuple = (64, 128, 256, 512)
    ks: tuple = (1, 2, 4, 6, 8, 12)


QUICK = Budget(warmup=1, iters=3, plan_warmup=1, plan_iters=2, train_warmup=1, train_iters=2, sweep_iters=2,
               batches=(1, 64), horizons=(16, 32), ks=(1, 2, 4))


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


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> dict:
    """Median (and min, mean) wall time in ms of fn() after warm-up; the first call's time is kept apart
    (it includes torch.compile's compilation when compiling)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "mean_ms": round(statistics.fmean(times), 4), "first_call_s": round(first, 3), "iters": iters}


def steps_per_s(step: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return round(iters / (time.perf_counter() - t0), 3)


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
        "goals": rng.standard_normal((n, GOAL_DIM)).astype(np.float32),
        "rtg": rng.uniform(0, 1, n).astype(np.float32),
        "timesteps": np.tile(np.arange(length), n_traj).astype(np.int64),
    }
    bounds = np.stack([np.arange(n_traj) * length, (np.arange(n_traj) + 1) * length], 1).astype(np.int64)
    return arrays, bounds


def identity_norm(dim: int) -> Normalizer:
    return Normalizer(np.zeros(dim, np.float32), np.ones(dim, np.float32))


def autocast_for(config, device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(config.bf16) and device.type == "cuda")


def n_params(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def compile_modules(algo: str, model: torch.nn.Module, mode: str) -> list[str]:
    """torch.compile (in place, nn.Module.compile) of the modules that carry the compute; returns their names."""
    if algo == "mage":
        names = ["encoder", "decoder", "inverse", "transformer"] + \
                [f"transformer.blocks.{i}" for i in range(len(model.transformer.blocks))]
    elif algo == "dt":
        names = [""]
    else:
        names = ["denoiser"] + (["value"] if getattr(model, "value", None) is not None else [])
    for name in names:
        model.get_submodule(name).compile(mode=mode)
    return [n or "model" for n in names]


# ----------------------------------------------------------------------------- per algorithm
class Bench:
    """Builds one algorithm's model, fake data and policy; measures latency and training throughput."""

    def __init__(self, algo: str, config, device: torch.device, task: str, budget: Budget) -> None:
        self.algo, self.config, self.device, self.task, self.budget = algo, config, device, task, budget
        self.mod = load_algorithm(algo)
        self.episode_len = get_task(task).max_episode_steps
        horizon = {"mage": "horizon", "dt": "seq_len", "diffuser": "horizon"}[algo]
        length = max(200, 2 * getattr(config, horizon))
        arrays, bounds = fake_trajectories(8 if budget is QUICK else 32, length)
        getattr(self, f"_build_{algo}")(arrays, bounds)

    # --- builders (the algorithms' own dataclasses and model classes)
    def _build_mage(self, a: dict, bounds: np.ndarray) -> None:
        m, c = self.mod, self.config
        x = np.concatenate([a["rtg"][:, None], a["obs"]], 1)
        cond = np.concatenate([x if c.return_condition else a["obs"], a["goals"]], 1)  # (R,) s, g on goal tasks
        cond_dim = cond.shape[1]
        buffer = SegmentBuffer({"x": x, "cond": cond, "actions": a["actions"]}, bounds, c.horizon, self.device)
        self.data = m.TrajectoryData(buffer, identity_norm(OBS_DIM), OBS_DIM, ACT_DIM, cond_dim, True, {})
        self.model = m.MAGE(c, 1 + OBS_DIM, cond_dim, ACT_DIM).to(self.device)
        self.make_policy = lambda: m.MagePolicy(self.model, self.data, c, self.device)

    def _build_dt(self, a: dict, bounds: np.ndarray) -> None:
        m, c = self.mod, self.config
        fields = {"states": a["obs"], "actions": a["actions"], "timesteps": a["timesteps"], "goals": a["goals"],
                  "returns": a["rtg"][:, None]}
        buffer = SegmentBuffer(fields, bounds, c.seq_len, self.device)
        max_t = max(c.episode_len, self.episode_len, int(bounds[0, 1]))
        self.data = m.SequenceData(buffer, identity_norm(OBS_DIM), OBS_DIM, ACT_DIM, GOAL_DIM, max_t, {})
        self.model = m.DecisionTransformer(c, OBS_DIM, ACT_DIM, GOAL_DIM, max_t).to(self.device)
        self.make_policy = lambda: m.DTPolicy(self.model, self.data, c, self.device)

    def _build_diffuser(self, a: dict, bounds: np.ndarray) -> None:
        m, c = self.mod, self.config
        x = np.clip(np.concatenate([a["actions"], a["obs"]], 1), -1, 1)
        buffer = SegmentBuffer({"x": x}, bounds, c.horizon, self.device)
        self.data = m.TrajectoryData(buffer, identity_norm(OBS_DIM + ACT_DIM), OBS_DIM, ACT_DIM, True, None, None,
                                     (0.0, 1.0), {})
        self.model = m.Diffuser(c, OBS_DIM, ACT_DIM).to(self.device)
        self.make_policy = lambda: m.DiffuserPolicy(self.model, self.data, c, self.device)

    # --- latency
    def _inputs(self, batch: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        obs = rng.standard_normal((batch, OBS_DIM)).astype(np.float32)
        goals = rng.standard_normal((batch, GOAL_DIM)).astype(np.float32)
        return obs, goals, np.zeros(batch, np.float32)

    def latency(self, batch: int, iters: Optional[int] = None) -> dict:
        """Per-action time at this batch size (+ Diffuser's per-plan and amortised times) and peak memory."""
        b = self.budget
        iters = iters or b.iters
        obs, goals, rewards = self._inputs(batch)
        policy = self.make_policy()
        self.model.eval()
        reset_peak(self.device)
        if self.algo != "diffuser":
            policy.reset(goals)
            warmup = b.warmup + (self.config.seq_len if self.algo == "dt" else 0)  # DT: a full context of K steps
            out = time_calls(lambda: policy.act(obs, rewards), warmup, iters, self.device)
            out["per_action_ms"] = out["median_ms"]
        else:
            def plan():
                policy.reset(goals)  # drops the plan: the next act plans (all denoising steps)
                policy.act(obs, rewards)

            plan_t = time_calls(plan, b.plan_warmup, b.plan_iters, self.device)
            policy.reset(goals)
            policy.act(obs, rewards)
            follow = time_calls(lambda: policy.act(obs, rewards), b.warmup, iters, self.device)
            every = self.config.replan_every if self.config.replan_every > 0 else self.episode_len
            amortised = (plan_t["median_ms"] + (every - 1) * follow["median_ms"]) / every
            out = {"plan": plan_t, "follow_plan": follow, "per_plan_ms": plan_t["median_ms"],
                   "follow_ms": follow["median_ms"], "replans_every": every,
                   "denoising_steps": len(self.model.timesteps(self.config.n_sample_steps)),
                   "amortised_per_action_ms": round(amortised, 4), "per_action_ms": plan_t["median_ms"]}
        out["peak_memory_mib"] = peak_mib(self.device)
        return out

    # --- training
    def training(self) -> dict:
        b, c, m, dev = self.budget, self.config, self.mod, self.device
        autocast = autocast_for(c, dev)
        reset_peak(dev)
        out: dict[str, Any] = {"batch_size": c.batch_size}
        if self.algo == "mage":
            rates = {}
            for stage in m.STAGES:
                opt = m.make_optimizer(self.model, stage, c)
                params = [p for g in opt.param_groups for p in g["params"]]

                def step(stage=stage, opt=opt, params=params):
                    self.model.train()
                    batch = self.data.buffer.sample(c.batch_size)
                    with autocast:
                        if stage == "autoencoder":
                            loss, _ = m.autoencoder_loss(self.model, batch, c)
                        else:
                            self.model.encoder.eval(), self.model.vq.eval()
                            fn = m.transformer_loss if stage == "transformer" else m.end_to_end_loss
                            loss, _ = fn(self.model, batch, c)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                    opt.step()

                rates[stage] = steps_per_s(step, b.train_warmup, b.train_iters, dev)
            lengths = {"autoencoder": c.ae_steps, "transformer": c.tf_steps, "end_to_end": c.e2e_steps}
            total = sum(lengths.values())
            out["per_stage_steps_per_s"] = rates
            out["steps_per_s"] = round(total / sum(lengths[s] / rates[s] for s in m.STAGES), 3)
            out["schedule"] = lengths
        elif self.algo == "dt":
            opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

            def step():
                self.model.train()
                batch = self.data.buffer.sample(c.batch_size)
                with autocast:
                    loss, _ = m.dt_loss(self.model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                opt.step()

            out["steps_per_s"] = steps_per_s(step, b.train_warmup, b.train_iters, dev)
        else:
            opt = torch.optim.Adam(self.model.parameters(), lr=c.lr)
            cond_mask = m.training_conditions(self.model, True, dev)
            ema = m.EMA(self.model, c.ema_decay)
            count = [0]

            def step():
                self.model.train()
                batch = m.sample_batch(self.data, c.batch_size)
                with autocast:
                    loss, _ = self.model.losses(batch["x"], cond_mask, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                opt.step()
                count[0] += 1
                if count[0] % c.ema_every == 0:
                    ema.update(self.model)

            out["steps_per_s"] = steps_per_s(step, b.train_warmup, b.train_iters, dev)
        out["peak_memory_mib"] = peak_mib(dev)
        return out


def describe(algo: str, c) -> dict:
    keys = {"mage": ("horizon", "patch", "scales", "codebook_size", "code_dim", "ae_channels", "d_model", "n_layers",
                     "n_heads", "batch_size", "replan_every"),
            "dt": ("seq_len", "embedding_dim", "n_layers", "n_heads", "batch_size"),
            "diffuser": ("horizon", "n_diffusion_steps", "n_sample_steps", "dim", "dim_mults", "batch_size",
                         "replan_every")}[algo]
    return {k: getattr(c, k) for k in keys if hasattr(c, k)}


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main
def measure_setting(name: str, bf16: bool, compiled: bool, args, device: torch.device, budget: Budget) -> dict:
    out = {}
    for algo in ALGOS:
        mod = load_algorithm(algo)
        overrides = {**(QUICK_OVERRIDES[algo] if args.quick else {}), "bf16": bf16}
        bench = None
        try:
            config = make_config(mod, algo, args.task, args.device, overrides)
            bench = Bench(algo, config, device, args.task, budget)
            entry: dict[str, Any] = {"config": describe(algo, config), "params_m": n_params(bench.model)}
            if compiled:
                entry["compiled_modules"] = compile_modules(algo, bench.model, args.compile_mode)
            entry["latency"] = {f"batch{b}": bench.latency(b) for b in budget.batches}
            entry["training"] = bench.training()
        except Exception as exc:  # one failing setting (e.g. torch.compile) must not lose the others
            if name == "fp32":
                raise
            entry = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
            traceback.print_exc()
        out[algo] = entry
        print(f"  [{name}] {algo}: " + summary_line(entry), flush=True)
        del bench
        if "CUDA error" in entry.get("error", ""):  # the CUDA context is lost: no later GPU call can succeed
            raise DeviceLost(entry["error"])
        free(device)
    return out


class DeviceLost(RuntimeError):
    """A CUDA error (e.g. inside torch.compile's autotuning) left the process's GPU context unusable."""


def summary_line(entry: dict) -> str:
    if "error" in entry:
        return entry["error"]
    parts = []
    for key, lat in entry["latency"].items():
        parts.append(f"{key} {lat['per_action_ms']:.2f} ms")
        if "amortised_per_action_ms" in lat:
            parts[-1] += f" (plan; amortised {lat['amortised_per_action_ms']:.3f} ms)"
    return ", ".join(parts) + f", train {entry['training']['steps_per_s']:.1f} steps/s"


def mage_sweeps(args, device: torch.device, budget: Budget, diffuser_horizon: int) -> dict:
    """MAGE per-action time vs H (scales 1, 2, 4, ... H/patch) and vs K (at the config's H), fp32 eager."""
    mod = load_algorithm("mage")
    base = make_config(mod, "mage", args.task, args.device, {**(QUICK_OVERRIDES["mage"] if args.quick else {}),
                                                              "bf16": False})

    def run(horizon: int, scales: list[int], patch: int) -> dict:
        c = dataclasses.replace(base, horizon=horizon, patch=patch, scales=scales)
        bench = Bench("mage", c, device, args.task, budget)
        row = {"horizon": horizon, "patch": patch, "scales": scales, "K": len(scales),
               "params_m": n_params(bench.model)}
        for b in budget.batches:
            lat = bench.latency(b, budget.sweep_iters)
            row[f"batch{b}_ms"] = lat["per_action_ms"]
            row[f"batch{b}_peak_memory_mib"] = lat["peak_memory_mib"]
        del bench
        free(device)
        return row

    def patch_for(horizon: int) -> int:
        patch = base.patch
        while horizon % patch:
            patch //= 2
        return max(patch, 1)

    horizon_rows = []
    for h in budget.horizons:
        p = patch_for(h)
        horizon_rows.append(run(h, pow2_scales(h // p), p))
        print(f"  MAGE H={h}: {horizon_rows[-1]}", flush=True)
    k_rows = []
    length = base.horizon // base.patch
    for k in budget.ks:
        if k > length:
            continue
        k_rows.append(run(base.horizon, k_scales(length, k), base.patch))
        print(f"  MAGE K={k}: {k_rows[-1]}", flush=True)
    p = patch_for(diffuser_horizon)
    equal = run(diffuser_horizon, pow2_scales(diffuser_horizon // p), p)
    print(f"  MAGE at Diffuser's horizon {diffuser_horizon}: {equal}", flush=True)
    return {"horizon_sweep": horizon_rows, "k_sweep": k_rows, "at_diffuser_horizon": equal}


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return round(a / b, 3)


def ratios_of(setting: dict, equal: Optional[dict], batches: tuple) -> dict:
    def lat(algo: str, b: int, key: str = "per_action_ms") -> Optional[float]:
        e = setting.get(algo, {})
        return e.get("latency", {}).get(f"batch{b}", {}).get(key) if "error" not in e else None

    out = {}
    for b in batches:
        suffix = "" if b == 1 else f"_batch{b}"
        if equal is not None:
            out[f"diffuser_over_mage_latency{suffix}"] = ratio(lat("diffuser", b, "per_plan_ms"),
                                                               equal.get(f"batch{b}_ms"))
        out[f"diffuser_over_mage_latency_configs{suffix}"] = ratio(lat("diffuser", b, "per_plan_ms"), lat("mage", b))
        out[f"diffuser_amortised_over_mage_latency{suffix}"] = ratio(lat("diffuser", b, "amortised_per_action_ms"),
                                                                     lat("mage", b))
        out[f"mage_over_dt_latency{suffix}"] = ratio(lat("mage", b), lat("dt", b))
    return out


def gains_of(base: dict, other: dict, batches: tuple) -> dict:
    """How much faster a setting is than the fp32 eager baseline (> 1: faster)."""
    out = {}
    for algo in ALGOS:
        if "error" in other.get(algo, {"error": 1}) or "error" in base.get(algo, {"error": 1}):
            continue
        g = {}
        for b in batches:
            key = "per_plan_ms" if algo == "diffuser" else "per_action_ms"
            g[f"latency_batch{b}"] = ratio(base[algo]["latency"][f"batch{b}"][key],
                                           other[algo]["latency"][f"batch{b}"][key])
        g["training"] = ratio(other[algo]["training"]["steps_per_s"], base[algo]["training"]["steps_per_s"])
        out[algo] = g
    return out


def print_tables(payload: dict) -> None:
    print(f"\n{payload['device']} | torch {payload['torch']} | {payload['task']}" + (" | QUICK" if payload["quick"]
                                                                                      else ""))
    bs = payload["batches"]
    head = f"{'setting':14s} {'algo':9s}" + "".join(f" {'ms/act b' + str(b):>12s}" for b in bs) + \
        f" {'train steps/s':>13s} {'peak MiB (train)':>16s}"
    print(head)
    for setting, algos in payload["settings"].items():
        for algo, e in algos.items():
            if "error" in e:
                print(f"{setting:14s} {algo:9s} error: {e['error']}")
                continue
            cells = "".join(f" {e['latency'][f'batch{b}']['per_action_ms']:12.3f}" for b in bs)
            mem = e["training"]["peak_memory_mib"]
            print(f"{setting:14s} {algo:9s}{cells} {e['training']['steps_per_s']:13.2f} "
                  f"{'-' if mem is None else mem:>16}")
            lat = e["latency"].get("batch1", {})
            if "amortised_per_action_ms" in lat:
                print(f"{'':24s}diffuser: {lat['denoising_steps']} denoising steps per plan, plans every "
                      f"{lat['replans_every']} steps: amortised " +
                      ", ".join(f"b{b} {e['latency'][f'batch{b}']['amortised_per_action_ms']:.3f} ms" for b in bs))
    sw = payload["mage_sweeps"]
    print("\nMAGE per-action time vs horizon (scales 1, 2, 4, ..., H/patch):")
    for r in sw["horizon_sweep"]:
        print(f"  H={r['horizon']:4d} K={r['K']:2d} " + "  ".join(f"b{b} {r[f'batch{b}_ms']:.3f} ms" for b in bs))
    print("MAGE per-action time vs number of scales K (config horizon):")
    for r in sw["k_sweep"]:
        print(f"  K={r['K']:2d} scales={r['scales']} " + "  ".join(f"b{b} {r[f'batch{b}_ms']:.3f} ms" for b in bs))
    print("\nratios (fp32 eager):")
    for k, v in payload["ratios"].items():
        print(f"  {k}: {v}")
    for setting, g in payload.get("gains", {}).items():
        print(f"gains of {setting} over fp32 eager (>1 = faster): {g}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="maze2d-large", help="maze2d-* or multi2d-* (the configs' task)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--bf16", action="store_true", help="also measure with bf16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, reduce-overhead, ...)")
    p.add_argument("--quick", action="store_true", help="tiny models and few iterations (CPU smoke test)")
    p.add_argument("--skip-sweeps", action="store_true", help="skip MAGE's H and K sweeps")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    args = p.parse_args(argv)
    if not args.task.startswith(("maze2d-", "multi2d-")):
        p.error("--task must be an embedded maze task (maze2d-* or multi2d-*)")
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # as the algorithms' main(): fixed shapes, TF32 matmuls
    torch.set_float32_matmul_precision("high")
    budget = QUICK if args.quick else Budget()
    load_before = os.getloadavg()[0]
    print(f"speed on {device_name(device)} (torch {torch.__version__}), task {args.task}", flush=True)
    settings = [("fp32", False, False)]
    if args.bf16:
        settings.append(("bf16", True, False))
    if args.compile:
        settings.append(("fp32+compile", False, True))
        if args.bf16:
            settings.append(("bf16+compile", True, True))
    results = {}
    sweeps = {"horizon_sweep": [], "k_sweep": [], "at_diffuser_horizon": None}
    for name, bf16, compiled in settings:
        if bf16 and device.type != "cuda":
            print(f"note: {name}: the algorithms apply bf16 autocast on CUDA only; measuring fp32 on {device}")
        try:
            results[name] = measure_setting(name, bf16, compiled, args, device, budget)
        except DeviceLost as exc:  # keep what was measured, skip the rest, still write the file
            results[name] = {algo: {"error": str(exc)} for algo in ALGOS}
            for later, *_ in settings[len(results):]:
                results[later] = {algo: {"error": f"skipped: the CUDA context was lost in {name}"} for algo in ALGOS}
            break
        if compiled:
            torch._dynamo.reset()
        if name == "fp32" and not args.skip_sweeps:  # the sweeps are fp32 eager: measured before any compiling
            sweeps = mage_sweeps(args, device, budget, results["fp32"]["diffuser"]["config"]["horizon"])
    payload = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "task": args.task,
        "quick": args.quick,
        "batches": list(budget.batches),
        "budget": dataclasses.asdict(budget),
        "compile_mode": args.compile_mode if args.compile else None,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "settings": results,
        "mage_sweeps": sweeps,
        "ratios": ratios_of(results["fp32"], sweeps["at_diffuser_horizon"], budget.batches),
        "ratios_by_setting": {n: ratios_of(r, None, budget.batches) for n, r in results.items()},
        "gains": {n: gains_of(results["fp32"], r, budget.batches) for n, r in results.items() if n != "fp32"},
        "notes": "random weights, fake normalisation statistics; latency = median wall time of the algorithm's "
                 "policy.act (host arrays in and out) after warm-up; Diffuser per_action_ms is its per-plan time, "
                 "amortised_per_action_ms spreads one plan over replans_every steps; diffuser_over_mage_latency "
                 "compares Diffuser's plan with MAGE's at Diffuser's horizon (mage_sweeps.at_diffuser_horizon), "
                 "*_configs at each config's own horizon; sweeps are fp32 eager.",
    }
    print_tables(payload)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
