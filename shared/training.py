"""The loop around every algorithm's ``update``: progress, NaN guard, checkpoints, evaluation, resume, and the fast
path (the whole training step, or a planning call, captured once as a CUDA graph and replayed).

An algorithm provides, per training stage, a ``step(i)`` that samples a batch and runs its ``update(model,
optimizer, batch, config) -> stats`` (stats are tensors: nothing in a step waits for the GPU). ``make_step`` builds
it, eager or captured; ``train_loop`` drives the stages. Host syncs happen only on log, checkpoint and evaluation
steps, and every ``sync_every`` steps so that the host never runs far ahead of the GPU.

Why CUDA graphs: the models here are small, so an eager step is thousands of tiny kernel launches whose CPU cost
exceeds their GPU time. A captured step replays all of them with one launch. What capture needs, and what every
``update`` therefore obeys: static shapes, no host syncs (``.item()``, ``if tensor``), randomness from torch's CUDA
generator (graph-safe), optimisers built by ``make_optimizer`` (capturable, learning rate as a device tensor).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from tqdm import tqdm

from shared.utils import RunError, save_checkpoint, set_rng_state

Stats = dict  # name -> 0-d tensor (or float)


# ----------------------------------------------------------------------------- weight averaging
class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers, kept in a frozen copy of the
    module (Diffuser plans with it, MAGE acts with it). ``update`` runs eagerly between captured steps; the copy's
    tensors change in place, so CUDA graphs captured on it replay the averaged weights."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model, self.decay = copy.deepcopy(model).requires_grad_(False).eval(), decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, copy_only: bool = False) -> None:
        ema = [t for t in self.model.state_dict().values() if t.dtype.is_floating_point]
        new = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        torch._foreach_lerp_(ema, new, 1.0 if copy_only else 1.0 - self.decay)


@torch.no_grad()
def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """Polyak update of a target network, target <- (1 - tau) target + tau source: one multi-tensor kernel rather
    than one per parameter (IQL's and SAC's target Q; capturable in a CUDA graph)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


# ----------------------------------------------------------------------------- losses
def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Expectile regression on ``diff`` = target - prediction: squared error weighted ``expectile`` where the target
    is above the prediction and 1 - ``expectile`` where it is below (IQL's V; MAGE's learnt return target)."""
    diff = diff.float()
    return (torch.abs(expectile - (diff < 0).float()) * diff.pow(2)).mean()


# ----------------------------------------------------------------------------- optimisers
def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, kind: str = "adamw", captured: bool = False,
                   **kwargs: Any) -> torch.optim.Optimizer:
    """Adam/AdamW: fused on CUDA; ``captured``: also capturable with the learning rate held in a device tensor, so a
    CUDA graph can replay the update and ``set_lr`` can change the rate between replays."""
    params = list(params)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    cuda = bool(params) and all(p.is_cuda for p in params)
    if captured:
        if not cuda:
            raise RunError("a captured (CUDA graph) step needs every parameter on a CUDA device")
        return cls(params, lr=torch.tensor(lr, device=params[0].device), fused=True, capturable=True, **kwargs)
    return cls(params, lr=lr, fused=True if cuda else None, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Learning rate of every group: written into the device tensor of a captured optimiser (no sync, no re-capture)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``load_state_dict`` that keeps this optimiser's own kind, whatever run wrote the checkpoint: a captured one keeps
    its learning rate in a device tensor and stays capturable and fused, an eager one keeps a float rate. (Plain
    load_state_dict would take the flags from the checkpoint: an eager run's state resumed under ``compile`` would
    then sync inside the graph's capture.)"""
    lrs = [g["lr"] for g in optimizer.param_groups]
    own = [{k: g[k] for k in ("capturable", "fused", "foreach") if k in g} for g in optimizer.param_groups]
    state = {**state, "param_groups": [{**saved, **flags} for saved, flags in zip(state["param_groups"], own)]}
    optimizer.load_state_dict(state)
    for group, old in zip(optimizer.param_groups, lrs):
        value = float(group["lr"])
        if isinstance(old, torch.Tensor):
            old.fill_(value)
            group["lr"] = old
        else:
            group["lr"] = value


# ----------------------------------------------------------------------------- CUDA graphs
class CapturedStep:
    """A training step (sample, forward, backward, clip, optimiser) captured as one CUDA graph after a few eager
    warm-up calls (which are real steps: they train too). Each later call replays the graph: one launch.

    The returned stats are the graph's static output tensors, overwritten by the next replay: read them (or clone
    them) before calling again.
    """

    def __init__(self, fn: Callable[[], Stats], warmup: int = 3) -> None:
        self.fn, self.warmup, self.calls = fn, warmup, 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: Optional[Stats] = None
        self.stream = torch.cuda.Stream()

    def __call__(self) -> Stats:
        if self.graph is not None:
            self.graph.replay()
            return self.out
        self.calls += 1
        # warm-up on a side stream (as torch.cuda.graph requires): cuDNN autotuning, optimiser state, lazy inits
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = self.fn()
        torch.cuda.current_stream().wait_stream(self.stream)
        if self.calls >= self.warmup:
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records, runs nothing: the next call's replay is the next step
                self.out = self.fn()
            torch.cuda.empty_cache()  # hand back what the eager warm-up cached: a graph needs only its own pool
        return out


class CapturedFunction:
    """A no-grad function of tensors (a plan, an action) as CUDA graphs, one per input shape: inputs are copied into
    static buffers, the graph replays, the static outputs are returned (read them before the next call)."""

    def __init__(self, fn: Callable[..., Any], warmup: int = 2) -> None:
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, *args: torch.Tensor) -> Any:
        key = tuple((a.shape, a.dtype) for a in args)
        if key not in self.graphs:
            static = [a.clone() for a in args]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(self.warmup):
                    self.fn(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = self.fn(*static)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for buf, a in zip(static, args):
            buf.copy_(a)
        graph.replay()
        return out


def captured(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any]:
    """``fn`` as per-shape CUDA graphs when ``enabled`` (planning at evaluation batch sizes), else ``fn`` itself."""
    return CapturedFunction(fn) if enabled else fn


_FUSED: dict = {}


def fused(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any]:
    """``fn`` (a loss) compiled by torch.compile when ``enabled``: inductor fuses its many small elementwise kernels
    (the CUDA graph of the step still wraps it), at the cost of compiling once per process and shape. ATen's RNG
    (``fallback_random``) keeps dropout and noise on torch's graph-safe generator."""
    if not enabled:
        return fn
    if fn not in _FUSED:
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
        _FUSED[fn] = torch.compile(fn, dynamic=False)
    return _FUSED[fn]


def use_graphs(compile: bool, device: torch.device) -> bool:
    """The fast path runs on CUDA only; CPU runs (tests, CI, the tiny configs) stay eager."""
    return bool(compile) and device.type == "cuda"


def make_step(update: Callable[[dict], Stats], sample: Callable[[], dict], optimizers: list,
              lr: Optional[Callable[[int], float]] = None, graph: bool = False) -> Callable[[int], Stats]:
    """``step(i)``: set the learning rate of step i (``lr``), sample a batch and update, eager or captured."""
    run: Callable[[], Stats] = lambda: update(sample())  # noqa: E731
    if graph:
        run = CapturedStep(run)

    def step(i: int) -> Stats:
        if lr is not None:
            value = lr(i)
            for opt in optimizers:
                set_lr(opt, value)
        return run()

    return step


# ----------------------------------------------------------------------------- the loop
def resume_point(state: Optional[dict], name: str, run_dir: Path) -> tuple[int, float]:
    """(step, training time so far) of a resumed checkpoint, with its RNG states restored (call it once the models
    are built and loaded: building them draws random numbers); (0, 0.0) for a fresh run (``state`` None)."""
    if state is None:
        return 0, 0.0
    set_rng_state(state["rng"])
    print(f"[{name}] resumed from step {state['step']} ({run_dir})")
    return state["step"], state.get("train_wall_s", 0.0)



@dataclass
class Stage:
    """A phase of training: MAGE has three, the baselines one. ``begin()`` is called when the loop enters the stage
    (at its first step, or mid-way after a resume) and returns ``step(i) -> stats`` (``make_step``)."""

    name: str
    end: int  # global step at which the stage ends
    begin: Callable[[], Callable[[int], Stats]]
    after_step: Optional[Callable[[int], Optional[dict]]] = None  # eager work after step i+1 (EMA, dead codes)
    diagnostics: Optional[Callable[[], dict]] = None  # extra (slower) metrics on log steps, outside the step


def _value(v: Any) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def _duration(seconds: float) -> str:
    """'42 s', '7.5 min', '8.8 h': a rough remaining time (later stages may run at another pace)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def train_loop(name: str, config: Any, run_dir: Path, logger: Any, stages: list[Stage], step: int,
               checkpoint_state: Callable[[], dict], evaluate_fn: Optional[Callable[[int], Any]] = None,
               eval_from: int = 0, elapsed: float = 0.0, sync_every: int = 100) -> tuple[int, float]:
    """Run the stages from ``step`` (0, or a resumed checkpoint's) to the last stage's end.

    Logs stats every ``config.log_every`` steps, checkpoints every ``config.checkpoint_every`` steps and at the end
    of every stage (``checkpoint_state()`` plus the step and the elapsed training time), evaluates every
    ``config.eval_every`` steps after ``eval_from`` with ``config.eval_episodes_during`` episodes. A non-finite
    ``train/loss`` is remembered on the GPU and stops the run at the next log or checkpoint step, before any
    checkpoint could hold it. Returns (final step, training wall time including the time before a resume).
    """
    total = stages[-1].end
    bar = tqdm(total=total, initial=step, desc=name, dynamic_ncols=True, disable=not sys.stderr.isatty())
    t0, last_print = time.time() - elapsed, time.time()
    window = (step, time.time())  # (step, time) of the last log: the logged training speed
    started = window  # this process's start: the pace of the plain progress lines
    bad: Optional[torch.Tensor] = None  # step + 1 of the first non-finite loss (0: none), on the device
    for stage in stages:
        if step >= stage.end:
            continue
        run = stage.begin()
        bar.set_description(f"{name} [{stage.name}]" if len(stages) > 1 else name)
        while step < stage.end:
            stats = run(step)
            loss = stats["train/loss"]
            first_bad = torch.where(torch.isfinite(loss), 0, step + 1)
            bad = first_bad if bad is None else torch.where(bad > 0, bad, first_bad)
            step += 1
            bar.update(1)
            log_now = step % config.log_every == 0
            save_now = step % config.checkpoint_every == 0 or step == stage.end
            if log_now or save_now:
                if int(bad) > 0:
                    last = sorted(Path(run_dir).glob("checkpoint_*.pt"))
                    where = f" ({stage.name} stage)" if len(stages) > 1 else ""
                    raise RunError(f"loss became nan or inf at step {int(bad)}{where}; stopped, the last good "
                                   f"checkpoint is {last[-1] if last else 'none (no checkpoint written yet)'}")
            extra = stage.after_step(step) if stage.after_step is not None else None
            if log_now:
                metrics = {k: _value(v) for k, v in stats.items()}
                metrics.update(extra or {})
                if stage.diagnostics is not None:
                    metrics.update({k: _value(v) for k, v in stage.diagnostics().items()})
                now = time.time()
                metrics["train/steps_per_s"] = (step - window[0]) / max(now - window[1], 1e-9)  # incl. evaluations
                window = (step, now)
                logger.log(metrics, step)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(metrics.items())[:3]})
            elif step % sync_every == 0 and loss.is_cuda:
                torch.cuda.synchronize()  # the host stays within sync_every steps of the GPU
            if bar.disable and time.time() - last_print > 30:  # no TTY (batch jobs): a plain line every 30 s
                rate = (step - started[0]) / max(time.time() - started[1], 1e-9)
                print(f"[{name}] step {step}/{total} {stage.name} loss {_value(loss):.4f} ({rate:.3g} steps/s, "
                      f"{_duration((total - step) / max(rate, 1e-9))} left at this pace)", flush=True)
                last_print = time.time()
            if save_now:
                save_checkpoint(run_dir, step, {**checkpoint_state(), "stage": stage.name,
                                                "train_wall_s": time.time() - t0})
            if (evaluate_fn is not None and config.eval_every and step > eval_from
                    and step % config.eval_every == 0 and step < total):
                res = evaluate_fn(config.eval_episodes_during)
                logger.log({"eval/normalized_score": res.score_mean, "eval/return": res.return_mean}, step)
    bar.close()
    return step, time.time() - t0

