"""MAGE: Multi-scale Autoregressive GEneration for offline RL (Lin, Gao et al., ICLR 2026, arXiv 2602.23770).

One self-contained file, read top to bottom:
  config -> data -> (1) condition-guided multi-scale trajectory autoencoder -> (2) multi-scale transformer
  -> (3) condition-guided decoder + latent inverse dynamics, end-to-end through Gumbel-Softmax
  -> training (three stages, one step counter, checkpoints and --resume) -> evaluation (planning policy) -> main.

A training example is a segment x = [(R_t, s_t), ..., (R_{t+H-1}, s_{t+H-1})] of returns-to-go and states.
Actions are not generated: they come from an inverse-dynamics head on the aggregated latent.
Run:  python algorithms/mage.py --config configs/mage/maze2d-umaze.yaml [--field value ...]
Choices the paper leaves open are marked "(choice)" and listed in docs/mage.md.
"""


from collections import deque
import itertools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from shared.buffer import Normalizer, SegmentBuffer, goal_returns_to_go, returns_to_go, split_trajectories  # noqa: E402
from shared.datasets import load_dataset  # noqa: E402
from shared.evaluation import evaluate, require_evaluation  # noqa: E402
from shared.logger import Logger, finish_run, prepare_run_dir  # noqa: E402
from shared.tasks import Task, get_task, goal_radius, is_antmaze  # noqa: E402
from shared.training import (  # noqa: E402
    Stage, captured, expectile_loss, fused, load_optimizer, make_step, resume_point, train_loop, use_graphs,
)
from shared.training import make_optimizer as make_adam  # noqa: E402
from shared.utils import (  # noqa: E402
    RunError, check_data_fits, device_name, load_latest_checkpoint, resolve_device, rng_state, run_main, set_seed,
)


# ============================================================================ config
@dataclass
class TrainConfig:
    # --- run
    task: str = "maze2d-umaze"  # task name from shared/tasks.py (embedded maze2d-*/multi2d-* or a D4RL name)
    seed: int = 0  # training seed (models, sampling)
    eval_seed: int = 1000  # first evaluation episode seed; episode i uses eval_seed + i
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"; asking for cuda without a GPU is an error
    out_dir: str = "runs"  # run folder root: checkpoints, metrics.jsonl and final.json go to out_dir/mage/task/seedK
    results_path: Optional[str] = None  # also write the final metrics JSON here (e.g. benchmarks/results/...)
    also_evaluate: str = ""  # "TASK=PATH": also evaluate the trained policy on TASK (same data), its result to PATH
    resume: bool = False  # continue from the newest checkpoint in the run folder
    wandb_mode: str = "offline"  # "online", "offline" or "disabled" (WANDB_MODE overrides)
    project: str = "mage-suite"  # W&B project
    # --- data
    dataset_path: Optional[str] = None  # a D4RL-format HDF5 file to train on instead of the task's default data
    dataset_size: Optional[int] = None  # transitions of embedded data to generate/use (None: the task's full size)
    dataset_seed: int = 0  # seed of the embedded dataset generator
    horizon: int = 64  # H: time steps per generated segment
    plan_dims: int = 0  # > 0: the generated segment holds only the state's first plan_dims dims (antmaze: 2, the path
    # in (x, y); the condition keeps the whole state); 0: the whole state
    patch: int = 2  # temporal downsampling of the encoder: latent length L = horizon / patch (power of 2)
    discount: float = 0.99  # goal tasks: R_t = discount^(steps to the goal); reward tasks: RTG discount
    rtg_scale: float = 1.0  # reward tasks: returns-to-go are divided by this
    end_fraction: float = 0.0  # share of each batch starting in the last end_window steps of a trajectory
    end_window: int = 8  # goal tasks: the steps that reach the goal (the only data showing how to stop there)
    goal_relabel: float = 0.0  # goal tasks: share of segments whose goal is a later position of their own trajectory
    # (k steps ahead with probability ~ discount^k; R recomputed), as goal-conditioned RL relabels; 0: collector's goal
    # --- (1) multi-scale autoencoder
    scales: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # token-map lengths l_1..l_K; l_K = L
    codebook_size: int = 512  # V: entries of the one codebook shared by all scales
    code_dim: int = 32  # width of a code vector
    ae_channels: int = 128  # conv channels of encoder and decoder
    ae_blocks: int = 2  # residual blocks per resolution in encoder and decoder
    beta: float = 0.25  # commitment weight of the VQ loss
    phi_ratio: float = 0.5  # VAR's phi_k: share of the 1-D conv refinement after upsampling a scale
    dead_code_every: int = 200  # restart codes unused over this many steps (0: never)
    # --- (2) multi-scale transformer
    d_model: int = 256  # transformer width
    n_layers: int = 6  # transformer blocks
    n_heads: int = 8  # attention heads
    dropout: float = 0.1  # dropout in the transformer
    qk_norm: bool = False  # attention on unit-length queries and keys times a learnt per-head temperature (VAR trains
    # this way): bounded attention logits, the usual cure for loss spikes (antmaze-umaze's stage 2 spiked to NaN)
    scheduled_sampling: float = 0.0  # stage 2: chance that a scale's tokens in the transformer's input are its own
    # argmax prediction, the finer scales' targets re-quantised after it (0: VAR's teacher forcing; docs/mage.md)
    # --- (3) condition-guided decoder and inverse dynamics
    decoder_condition: bool = True  # condition the decoder on (R_t, s_t [, g]) (False: the paper's ablation)
    head_condition: str = "all"  # what the inverse-dynamics head sees beside the latent: "all" of (R_t, s_t [, g]),
    # or "state" (s_t only: no goal to beeline to past the plan; the paper's a_t = I(z) has no condition at all), or
    # "track" (only head_track's features: the action read off the decoded plan, as a learnt controller follows it)
    head_track: int = 0  # antmaze, > 0: the head also sees where the decoded plan is this many steps ahead, in the
    # ant's heading frame (the data collector's features; a world-frame latent left the ant standing: docs/mage.md)
    goal_snap: float = 0.0  # head_track, > 0: acting, a tracked plan position within this many metres of the goal
    # becomes the goal itself (the decoded plan resolves ~0.3 m, success needs 0.5 m: ants stopped 0.5-1.5 m short)
    adapter_dim: int = 64  # bottleneck width of the decoder adapters (trained in the end-to-end stage)
    gumbel_tau: float = 1.0  # Gumbel-Softmax temperature in end-to-end fine-tuning
    w_inv: float = 1.0  # weight of L_inv (action from the latent)
    w_cond: float = 1.0  # weight of L_cond (first decoded step matches the condition)
    w_ce: float = 1.0  # weight of the token cross-entropy kept during end-to-end fine-tuning
    # --- training
    batch_size: int = 256  # segments per step
    ae_steps: int = 20_000  # stage 1: autoencoder + inverse dynamics
    tf_steps: int = 30_000  # stage 2: transformer (next-scale cross-entropy)
    e2e_steps: int = 10_000  # stage 3: end-to-end through Gumbel-Softmax (transformer, adapters, inverse dynamics)
    lr: float = 3e-4  # AdamW learning rate of stages 1 and 2
    e2e_lr: float = 1e-4  # AdamW learning rate of stage 3
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 1.0  # gradient norm clip
    warmup_steps: int = 500  # linear warm-up at the start of each stage
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = True  # CUDA: every training step and every plan runs as a captured CUDA graph (CPU: eager)
    inductor: bool = False  # CUDA + compile: also fuse each stage's loss with torch.compile (shared.training.fused;
    # fewer kernels per step, compiled once per stage)
    log_every: int = 200  # steps between logged training metrics
    checkpoint_every: int = 5000  # steps between checkpoints (and at the end of every stage)
    # --- evaluation
    eval_every: int = 0  # steps between evaluations during stages 2-3 (0: only at the end)
    eval_episodes: int = 100  # episodes of the final evaluation
    eval_episodes_during: int = 20  # episodes of each evaluation during training
    num_eval_envs: int = 50  # environments stepped together (one batched plan per step)
    target_return: float = 1.0  # condition R at evaluation: goal tasks in [0, 1] (1 = at the goal); reward tasks raw
    return_condition: bool = False  # goal tasks: also condition on R_t (reward tasks always do). Off by default: the
    # hindsight R = discount^(steps to g) is fixed by (s, g), and a target of 1 far from g is out of distribution
    # (docs/mage.md)
    return_target_expectile: float = 0.0  # > 0: every plan asks for this expectile of R given the rest of the
    # condition, learnt from the data in stage 1 (ReturnTarget), instead of target_return (goal tasks: with
    # return_condition)
    temperature: float = 0.0  # token sampling temperature at evaluation (0: argmax)
    waypoint_hops: int = 0  # goal tasks, > 0: plan towards a waypoint this many squares along the data's shortest
    # route to the goal (WaypointGraph: stitches walks; antmaze-large's route is in no single walk); 0: the goal
    waypoint_square: float = 1.0  # side of the squares (x, y units) that WaypointGraph's nodes are

    def __post_init__(self) -> None:
        check_shapes(self)  # a bad --scales or --patch is one line before any data is loaded


def check_shapes(config: TrainConfig) -> None:
    """The latent length L = horizon / patch must be what the finest scale ends at."""
    if config.patch < 1 or config.horizon < 1:
        raise RunError(f"horizon ({config.horizon}) and patch ({config.patch}) must be > 0")
    L = config.horizon // config.patch
    if config.horizon % config.patch or config.patch & (config.patch - 1):
        raise RunError(f"patch ({config.patch}) must be a power of 2 dividing horizon ({config.horizon})")
    if config.scales[-1] != L or sorted(config.scales) != list(config.scales) or min(config.scales) < 1:
        raise RunError(f"scales {config.scales} must increase from >= 1 and end at horizon/patch = {L}")
    if config.head_condition not in ("all", "state", "track"):
        raise RunError(f"head_condition must be 'all', 'state' or 'track', not '{config.head_condition}'")
    if config.head_condition == "track" and not config.head_track:
        raise RunError("head_condition 'track' needs head_track > 0 (the plan step whose position the head follows)")
    if config.plan_dims < 0:
        raise RunError(f"plan_dims must be >= 0 (0: the whole state), not {config.plan_dims}")
    if not 0 <= config.head_track < config.horizon:
        raise RunError(f"head_track ({config.head_track}) must be a plan step in 1..{config.horizon - 1} (0: off)")
    if config.goal_snap < 0 or (config.goal_snap and not config.head_track):
        raise RunError(f"goal_snap ({config.goal_snap}) is a distance >= 0 that needs head_track > 0")


def plan_width(config: TrainConfig, obs_dim: int) -> int:
    """Channels of a generated segment: R_t, then the state's first plan_dims dims (all of them with 0)."""
    return 1 + (config.plan_dims or obs_dim)


def state_columns(config: TrainConfig, obs_dim: int, cond_dim: int) -> slice:
    """Where s_t sits in the condition that load_data builds: (R_t, s_t) on reward tasks (cond_dim == 1 + obs_dim),
    (R_t, s_t, g) on goal tasks with return_condition, (s_t, g) without."""
    start = 1 if cond_dim == 1 + obs_dim or config.return_condition else 0
    return slice(start, start + obs_dim)


# ============================================================================ data
@dataclass
class TrajectoryData:
    buffer: SegmentBuffer  # segments with fields x [H, 1+obs], cond [cond_dim], actions
    obs_norm: Normalizer  # state normalisation (saved in checkpoints)
    obs_dim: int
    act_dim: int
    cond_dim: int
    goal_conditioned: bool
    info: dict  # dataset source and recipe, for the results file
    goal_radius: float = 0.0  # goal tasks: distance (raw units) at which a goal counts as reached
    waypoints: Optional["WaypointGraph"] = None  # with waypoint_hops: the data's routes, for the evaluation policy


def load_data(config: TrainConfig, device: torch.device) -> TrajectoryData:
    """Dataset -> trajectories -> per-step (R, s), conditions and actions in a device-side segment buffer."""
    task = get_task(config.task)
    if task.goal_conditioned and config.return_target_expectile > 0 and not config.return_condition:
        raise RunError("return_target_expectile > 0 needs --return_condition true on a goal task (R is a condition "
                       "only then)")
    if config.goal_relabel > 0 and not task.goal_conditioned:
        raise RunError(f"goal_relabel needs a goal task; {config.task} has none")
    if task.goal_conditioned and config.plan_dims == 1:
        raise RunError("plan_dims on a goal task must be 0 or >= 2: the plan holds the goal's (x, y)")
    if config.waypoint_hops and (not task.goal_conditioned or config.waypoint_hops < 0 or config.waypoint_square <= 0):
        raise RunError(f"waypoint_hops ({config.waypoint_hops}) needs a goal task and waypoint_square > 0 "
                       f"({config.waypoint_square}); {config.task} is {'' if task.goal_conditioned else 'not '}one")
    if config.head_track and not is_antmaze(task):
        raise RunError(f"head_track ({config.head_track}) is for antmaze tasks (the ant's heading frame); "
                       f"{config.task} is not one")
    data, info = load_dataset(task, dataset_path=config.dataset_path, size=config.dataset_size,
                              seed=config.dataset_seed)
    obs, actions = data["observations"].astype(np.float32), data["actions"].astype(np.float32)
    # (choice) hindsight goal = the goal the data collector was driving to; R = discount^(steps to reach it); a
    # trajectory is one walk to one goal (antmaze's terminals at the evaluation goal do not end it)
    goals = data["infos/goal"].astype(np.float32) if task.goal_conditioned else None
    bounds = split_trajectories(data["terminals"], data["timeouts"], goals)
    check_data_fits(config, bounds)  # e.g. a dataset_size too small for the horizon: one line, before training
    if config.plan_dims > obs.shape[1]:
        raise RunError(f"plan_dims ({config.plan_dims}) is more than the {obs.shape[1]} dims of {config.task}'s state")
    obs_norm = Normalizer.fit(obs)
    s = obs_norm.normalize(obs)
    if task.goal_conditioned:
        rtg = goal_returns_to_go(obs[:, :2], goals, bounds, radius=goal_radius(task), discount=config.discount)
        goal_n = obs_norm.goal().normalize(goals)
    else:
        rtg = returns_to_go(data["rewards"], bounds, config.discount) / config.rtg_scale
        goal_n = np.zeros((len(obs), 0), np.float32)
    cond = np.concatenate([rtg[:, None], s, goal_n], 1).astype(np.float32)  # (R_t, s_t [, g])
    x = cond[:, :plan_width(config, obs.shape[1])].copy()  # the generated channels: (R_t, s_t or its first dims)
    if task.goal_conditioned and not config.return_condition:
        cond = cond[:, 1:]  # (s_t, g)
    fields = {"x": x, "cond": cond, "actions": actions}
    if config.goal_relabel > 0:
        fields["pos"] = obs[:, :2]  # raw (x, y): where a relabelled goal is reached
    buffer = SegmentBuffer(fields, bounds, config.horizon, device, end_window=config.end_window)
    print(f"[mage] {config.task}: {len(obs):,} transitions, {buffer.num_trajectories:,} trajectories, "
          f"data = {info['source']}")
    waypoints = WaypointGraph(obs[:, :2], bounds, config.waypoint_square) if config.waypoint_hops else None
    return TrajectoryData(buffer, obs_norm, obs.shape[1], actions.shape[1], cond.shape[1],
                          task.goal_conditioned, info, goal_radius(task) if task.goal_conditioned else 0.0, waypoints)


# ============================================================================ (1) multi-scale trajectory autoencoder
class ResBlock1d(nn.Module):
    """Conv residual block; ``film`` injects the condition, ``adapter`` is the zero-initialised condition-guided
    refinement (trained only in the end-to-end stage, so the base decoder stays frozen there)."""

    def __init__(self, channels: int, cond_dim: int = 0, adapter_dim: int = 0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None
        self.adapter = None
        if adapter_dim:
            self.adapter = nn.Sequential(nn.Conv1d(channels + cond_dim, adapter_dim, 1), nn.SiLU(),
                                         nn.Conv1d(adapter_dim, channels, 1))
            nn.init.zeros_(self.adapter[-1].weight)
            nn.init.zeros_(self.adapter[-1].bias)

    def forward(self, h: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(h)))
        if self.film is not None:
            scale, shift = self.film(c).unsqueeze(-1).chunk(2, dim=1)
            y = y * (1 + scale) + shift
        h = h + self.conv2(F.silu(self.norm2(y)))
        if self.adapter is not None:
            h = h + self.adapter(torch.cat([h, c.unsqueeze(-1).expand(-1, -1, h.shape[-1])], 1))
        return h


class TrajectoryEncoder(nn.Module):
    """x [B, H, D] -> continuous feature f [B, code_dim, L] with L = H / patch."""

    def __init__(self, in_dim: int, channels: int, code_dim: int, patch: int, blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(in_dim, channels, 3, padding=1)]
        for _ in range(int(math.log2(patch))):
            layers += [ResBlock1d(channels) for _ in range(blocks)]
            layers.append(nn.Conv1d(channels, channels, 4, stride=2, padding=1))
        layers += [ResBlock1d(channels) for _ in range(blocks)]
        layers += [nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv1d(channels, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2))


def resample_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """F.interpolate over time as a fixed [n_in, n_out] matrix (x @ M == F.interpolate(x, n_out, mode)): one matmul
    instead of upsample_linear1d, whose kernels (and backward) took most of a training step's GPU time."""
    eye = torch.eye(n_in)[None]
    extra = {"align_corners": False} if mode == "linear" else {}
    return F.interpolate(eye, size=n_out, mode=mode, **extra)[0]


class MultiScaleVQ(nn.Module):
    """VAR-style residual quantisation over time with one shared codebook.

    For each scale k (length l_k): area-downsample the residual to l_k, take the nearest code per position
    (token map m_k), upsample back to L (linear), refine with phi_k, subtract from the residual. sum_k z_k = f_hat.
    Both resamplings are fixed matrices (``resample_matrix``).
    """

    def __init__(self, scales: List[int], vocab: int, dim: int, beta: float, phi_ratio: float) -> None:
        super().__init__()
        self.scales, self.L, self.dim, self.beta, self.phi_ratio = list(scales), scales[-1], dim, beta, phi_ratio
        self.codebook = nn.Embedding(vocab, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / vocab, 1.0 / vocab)
        self.phi = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=1) for _ in scales)
        for k, length in enumerate(scales):  # not in the state dict: rebuilt from the scales
            self.register_buffer(f"down{k}", resample_matrix(self.L, length, "area"), persistent=False)
            self.register_buffer(f"up{k}", resample_matrix(length, self.L, "linear"), persistent=False)
        self.register_buffer("usage", torch.zeros(vocab))  # code hits since the last dead-code restart
        self.register_buffer("initialised", torch.tensor(False))
        self.bounds = list(itertools.accumulate([0] + self.scales))  # token offsets per scale, as Python ints
        self.ready = False  # the codebook is initialised (``init_codebook``; a Python flag: no sync to check it)

    def nearest(self, r: torch.Tensor) -> torch.Tensor:
        """r [B, dim, l] -> token indices [B, l] (nearest code in L2; fp32 so bf16 never flips a choice)."""
        flat = r.float().transpose(1, 2).reshape(-1, self.dim)
        cb = self.codebook.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)
        return dist.argmin(1).view(r.shape[0], r.shape[2])

    def embed_scale(self, k: int, idx: Optional[torch.Tensor] = None, onehot: Optional[torch.Tensor] = None):
        """Scale k's contribution z_k [B, dim, L] from token indices (or soft one-hots for Gumbel-Softmax)."""
        q = self.codebook(idx) if onehot is None else onehot @ self.codebook.weight  # [B, l_k, dim]
        q = q.transpose(1, 2)
        if q.shape[-1] != self.L:
            q = q @ getattr(self, f"up{k}").to(q.dtype)
        return (1 - self.phi_ratio) * q + self.phi_ratio * self.phi[k](q)

    def embed_sequence(self, idx: torch.Tensor) -> torch.Tensor:
        """sum_k z_k from the tokens of all scales in one flat sequence [B, sum l_k]."""
        b = self.bounds  # Python ints: torch.compile traces them as constants (a NumPy call here split its graph)
        return sum(self.embed_scale(k, idx[:, lo:hi]) for k, (lo, hi) in enumerate(zip(b[:-1], b[1:])))

    def next_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """VAR's teacher input for scale k+1: the accumulated latent area-downsampled to l_{k+1}, [B, l, dim]."""
        return self.downsample(f_hat, k + 1).transpose(1, 2)

    def downsample(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Area-downsample [B, dim, L] to scale k's length, in the input's precision (fp32 residuals stay fp32 under
        autocast, so bf16 never flips a token choice)."""
        with torch.autocast(x.device.type, enabled=False):
            return x @ getattr(self, f"down{k}").to(x.dtype)

    def forward(self, f: torch.Tensor):
        """Quantise f [B, dim, L]. Returns (f_hat with straight-through gradient, token maps, VQ loss, z_k list)."""
        f_ng = f.detach()
        resid, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
        idx_list, zs, loss = [], [], f.new_zeros(())
        for k, length in enumerate(self.scales):
            r_k = self.downsample(resid, k) if length != self.L else resid
            idx = self.nearest(r_k)
            z = self.embed_scale(k, idx)
            f_hat = f_hat + z
            resid = resid - z.detach()
            idx_list.append(idx)
            zs.append(z)
            # codebook/phi move towards f; the encoder commits to the current f_hat
            loss = loss + F.mse_loss(f_hat, f_ng) + self.beta * F.mse_loss(f_hat.detach(), f)
            if self.training:
                self.usage.index_add_(0, idx.flatten(), torch.ones_like(idx.flatten(), dtype=self.usage.dtype))
                self._last_resid = r_k.detach()
        f_st = f + (f_hat - f).detach()  # straight-through to the encoder
        return f_st, idx_list, loss / len(self.scales), zs

    @torch.no_grad()
    def requantize(self, f: torch.Tensor, pred: torch.Tensor, use_pred: torch.Tensor):
        """The residual quantisation of f [B, dim, L] when scale k's token map is its part of ``pred`` (all scales'
        tokens in one flat sequence [B, sum l_k]) wherever ``use_pred[:, k]`` ([B, K] bool) holds: each scale's target
        is the nearest code to what is left of f after the token maps actually used before it, so a finer scale
        learns to correct a coarser scale's wrong tokens. Returns (targets per scale, contributions z_k of the token
        maps used)."""
        resid, targets, zs, b = f.clone(), [], [], self.bounds
        for k, length in enumerate(self.scales):
            r_k = self.downsample(resid, k) if length != self.L else resid
            target = self.nearest(r_k)
            z = self.embed_scale(k, torch.where(use_pred[:, k:k + 1], pred[:, b[k]:b[k + 1]], target))
            resid = resid - z
            targets.append(target)
            zs.append(z)
        return targets, zs

    @torch.no_grad()
    def init_codebook(self, f: torch.Tensor) -> None:
        """(choice) Before the first training step: the codes start on random encoder features of ``f`` [B, dim, L],
        so none is dead from the first step, unless a checkpoint already initialised them. Called eagerly by
        ``update``: inside the compiled loss its bool() would split the graph and recompile it once the flag flips."""
        if not bool(self.initialised):
            self._init_from(f)
        self.ready = True

    @torch.no_grad()
    def _init_from(self, f: torch.Tensor) -> None:
        vecs = f.detach().transpose(1, 2).reshape(-1, self.dim)
        pick = torch.randint(len(vecs), (self.codebook.num_embeddings,), device=f.device)
        self.codebook.weight.copy_(vecs[pick] + 0.01 * torch.randn_like(vecs[pick]))
        self.initialised.fill_(True)

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Move codes that were never chosen since the last call onto recent residual vectors."""
        dead = (self.usage == 0).nonzero().flatten()
        if len(dead) and hasattr(self, "_last_resid"):
            vecs = self._last_resid.transpose(1, 2).reshape(-1, self.dim)
            pick = torch.randint(len(vecs), (len(dead),), device=vecs.device)
            self.codebook.weight[dead] = vecs[pick].to(self.codebook.weight.dtype)
        self.usage.zero_()
        return len(dead)


class ConditionGuidedDecoder(nn.Module):
    """Latent [B, code_dim, L] + condition (R_t, s_t [, g]) -> x_hat [B, H, D].

    FiLM carries the condition from stage 1 on; the adapters (zero-initialised) are D' of the paper, trained
    in the end-to-end stage with L_cond while the rest of the decoder is frozen.
    """

    def __init__(self, out_dim: int, channels: int, code_dim: int, cond_dim: int, patch: int, blocks: int,
                 adapter_dim: int) -> None:
        super().__init__()
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.inp = nn.Conv1d(code_dim, channels, 3, padding=1)
        self.stages = nn.ModuleList()
        for _ in range(int(math.log2(patch)) + 1):
            self.stages.append(nn.ModuleList(ResBlock1d(channels, channels, adapter_dim) for _ in range(blocks)))
        self.up = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding=1) for _ in range(int(math.log2(patch))))
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv1d(channels, out_dim, 3, padding=1))

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.cond_embed(cond)
        h = self.inp(z)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h, c)
            if i < len(self.up):
                h = self.up[i](h.unsqueeze(-1).expand(*h.shape, 2).flatten(-2))  # nearest x2 (cheap backward)
        return self.out(h).transpose(1, 2)

    def adapter_parameters(self):
        return [p for n, p in self.named_parameters() if ".adapter." in n]


class LatentInverseDynamics(nn.Module):
    """a_t = I(sum_k z_k, condition): the action read off the aggregated latent (L_inv).

    (choice) The latent and the condition enter through separate input layers (a shared one, initialised for the
    ~1000 latent inputs, would start the few condition inputs near zero) and ReLU units: a maze action is a sharp
    function of the state (waypoint switches), which ReLU MLPs fit better (lower L_inv than SiLU in our tests).
    """

    def __init__(self, code_dim: int, length: int, cond_dim: int, act_dim: int, hidden: int = 512,
                 cond_cols: Optional[slice] = slice(None), track_dim: int = 0) -> None:
        super().__init__()
        self.cond_cols = cond_cols  # the condition's columns it sees (head_condition); None: neither them nor z
        self.latent_in = nn.Linear(code_dim * length, hidden) if cond_cols is not None else None
        self.cond_in = nn.Linear(len(range(cond_dim)[cond_cols]), hidden) if cond_cols is not None else None
        self.track_in = nn.Linear(track_dim, hidden) if track_dim else None  # head_track's features
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, act_dim), nn.Tanh())

    def forward(self, z: torch.Tensor, cond: torch.Tensor, track: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = 0.0
        if self.cond_in is not None:
            h = self.cond_in(cond[:, self.cond_cols]) + self.latent_in(z.flatten(1))
        if self.track_in is not None:
            h = h + self.track_in(track)
        return self.net(h)


class ReturnTarget(nn.Module):
    """(choice) The R a plan asks for: an upper expectile of the data's R given the rest of the condition (s_t [, g]),
    i.e. a fast arrival (goal tasks) or a high return (reward tasks) that the data shows from here, so the target is
    ambitious but in distribution (a constant R = 1 is not, far from the goal). Trained in stage 1 (expectile
    regression, as IQL's value)."""

    def __init__(self, in_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, rest: torch.Tensor) -> torch.Tensor:
        return self.net(rest)[:, 0]


# ============================================================================ (2) multi-scale transformer
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
              dropout: float, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) | mask) v, written out. MAGE's sequences are short (at most sum l_k = 63 tokens, head
    dim 32): the fused kernels of F.scaled_dot_product_attention work in 64-128-row tiles and ran at < 10 TFLOP/s
    here (a third of the end-to-end step on one H200), while two batched matmuls and a softmax are cheap at this size
    (and inductor fuses the scaling, masking and softmax). ``mask``: True = may attend; ``scale``: the logits'
    scale (default 1 / sqrt(d))."""
    att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    return F.dropout(att.softmax(-1), dropout) @ v


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the condition (RTG reaches every scale)."""

    def __init__(self, d: int, heads: int, dropout: float, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        # qk_norm: cosine attention; the logit scale starts at sqrt(head dim), the plain attention's typical size
        self.log_temp = nn.Parameter(torch.full((1, heads, 1, 1), 0.5 * math.log(d // heads))) if qk_norm else None
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(4 * d, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x, c, mask=None, cache: Optional[list] = None):
        s1, b1, g1, s2, b2, g2 = self.ada(c).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).view(x.shape[0], x.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scale = None
        if self.log_temp is not None:  # the cache then holds unit keys
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            scale = self.log_temp.clamp(max=math.log(100.0)).exp()
        if cache is not None:  # generation: keys/values of coarser scales are kept, never recomputed
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        a = attention(q, k, v, mask, self.dropout if self.training else 0.0, scale)
        x = x + (1 + g1) * self.proj(a.transpose(1, 2).flatten(2))
        return x + (1 + g2) * self.mlp(self.norm2(x) * (1 + s2) + b2)


class MultiScaleTransformer(nn.Module):
    """p(m_1..m_K | c) = prod_k p(m_k | m_<k, c), VAR-style next-scale prediction.

    Sequence = [condition token(s) in scale 1's slots] + [scale-k inputs for k = 2..K], each the accumulated latent
    of scales < k downsampled to l_k. Block-causal: a position of scale k attends to scales <= k only.
    """

    def __init__(self, scales: List[int], vocab: int, code_dim: int, cond_dim: int, d: int, layers: int,
                 heads: int, dropout: float, qk_norm: bool = False) -> None:
        super().__init__()
        self.scales = list(scales)
        n = sum(scales)
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.word_embed = nn.Linear(code_dim, d)
        self.pos = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.level = nn.Embedding(len(scales), d)
        self.blocks = nn.ModuleList(AdaLNBlock(d, heads, dropout, qk_norm) for _ in range(layers))
        self.head_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.head = nn.Linear(d, vocab)
        level = torch.cat([torch.full((length,), k) for k, length in enumerate(scales)])
        self.register_buffer("level_ids", level, persistent=False)
        self.register_buffer("mask", level[:, None] >= level[None, :], persistent=False)  # True = may attend
        self.bounds = list(itertools.accumulate([0] + self.scales))

    def embed(self, c: torch.Tensor, inputs: Optional[torch.Tensor], k0: int, k1: int) -> torch.Tensor:
        """Token embeddings of scales k0..k1-1 (k0 = 0 starts with the condition token)."""
        parts = []
        if k0 == 0:  # scale 1 has no coarser latent: its slots hold the condition (VAR's start token)
            parts.append(c[:, None, :].expand(-1, self.scales[0], -1))
        if inputs is not None:
            parts.append(self.word_embed(inputs))
        lo, hi = self.bounds[k0], self.bounds[k1]
        return torch.cat(parts, 1) + self.pos[:, lo:hi] + self.level(self.level_ids[lo:hi])

    def logits(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.head_ada(c).unsqueeze(1).chunk(2, dim=-1)
        return self.head(self.head_norm(h) * (1 + scale) + shift)

    def forward(self, cond: torch.Tensor, scale_inputs: Optional[torch.Tensor]) -> torch.Tensor:
        """Teacher-forced logits [B, sum l_k, V]; scale_inputs [B, sum_{k>=2} l_k, code_dim] (None when K = 1)."""
        c = self.cond_embed(cond)
        h = self.embed(c, scale_inputs, 0, len(self.scales))
        for block in self.blocks:
            h = block(h, c, self.mask)
        return self.logits(h, c)

    def generate(self, cond: torch.Tensor, vq: MultiScaleVQ, temperature: float = 0.0, gumbel_tau: float = 0.0):
        """K forward passes (one per scale) with a KV cache. Returns (f_hat [B, dim, L], token maps).

        gumbel_tau > 0 draws straight-through Gumbel-Softmax one-hots (hard tokens forward, softmax(logits / tau)
        backward), so the whole generation stays differentiable (end-to-end stage); otherwise argmax (temperature 0)
        or sampling, under no_grad at test time.
        """
        c = self.cond_embed(cond)
        caches: list[list] = [[] for _ in self.blocks]
        f_hat = cond.new_zeros(cond.shape[0], vq.dim, vq.L)
        h, idx_list = self.embed(c, None, 0, 1), []
        for k in range(len(self.scales)):
            for block, cache in zip(self.blocks, caches):
                h = block(h, c, None, cache)  # new tokens see all cached (coarser) ones and their own scale
            logits = self.logits(h, c).float()
            if gumbel_tau > 0:
                onehot = F.gumbel_softmax(logits, tau=gumbel_tau, hard=True)
                idx_list.append(onehot.argmax(-1))
                z = vq.embed_scale(k, onehot=onehot)
            else:
                if temperature > 0:  # Gumbel-max: a sample of softmax(logits / T), graph-safe (no multinomial)
                    u = torch.rand_like(logits).clamp_(1e-10, 1.0)
                    idx = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
                else:
                    idx = logits.argmax(-1)
                idx_list.append(idx)
                z = vq.embed_scale(k, idx)
            f_hat = f_hat + z.to(f_hat.dtype)
            if k + 1 < len(self.scales):
                h = self.embed(c, vq.next_input(f_hat, k).to(c.dtype), k + 1, k + 2)
        return f_hat, idx_list


def inverse_head(config: TrainConfig, obs_dim: int, cond_dim: int, act_dim: int) -> LatentInverseDynamics:
    """The latent inverse-dynamics head, seeing the columns of the condition that ``head_condition`` names."""
    cols = {"state": state_columns(config, obs_dim, cond_dim), "track": None}.get(config.head_condition, slice(None))
    track_dim = 0
    if config.head_track:
        from shared.data.ant import FEATURE_DIM as track_dim  # imported only here: it loads the ant's MuJoCo env
    return LatentInverseDynamics(config.code_dim, config.horizon // config.patch, cond_dim, act_dim, cond_cols=cols,
                                 track_dim=track_dim)


# ============================================================================ (3) MAGE = the three parts together
class MAGE(nn.Module):
    def __init__(self, config: TrainConfig, obs_dim: int, cond_dim: int, act_dim: int,
                 obs_norm: Optional[Normalizer] = None) -> None:
        super().__init__()
        check_shapes(config)
        x_dim = plan_width(config, obs_dim)  # the generated segment's channels
        self.decoder_condition = config.decoder_condition
        self.head_track, self.state_cols = config.head_track, state_columns(config, obs_dim, cond_dim)
        self.goal_snap = config.goal_snap
        if config.head_track:  # the raw state and plan positions, for the heading-frame features (in checkpoints)
            from shared.data import ant

            if obs_norm is None or obs_dim != ant.OBS_DIM:
                raise RunError(f"head_track needs the ant's {ant.OBS_DIM}-dim state and its normaliser (obs_dim "
                               f"{obs_dim})")
            self.features = ant.controller_features
            # copies (torch.tensor): as_tensor shared the normaliser's float32 arrays, and loading another run's
            # checkpoint then overwrote the data's normaliser in place
            self.register_buffer("obs_mean", torch.tensor(obs_norm.mean, dtype=torch.float32))
            self.register_buffer("obs_std", torch.tensor(obs_norm.std, dtype=torch.float32))
        self.encoder = TrajectoryEncoder(x_dim, config.ae_channels, config.code_dim, config.patch, config.ae_blocks)
        self.vq = MultiScaleVQ(config.scales, config.codebook_size, config.code_dim, config.beta, config.phi_ratio)
        self.decoder = ConditionGuidedDecoder(x_dim, config.ae_channels, config.code_dim, cond_dim, config.patch,
                                              config.ae_blocks, config.adapter_dim)
        self.inverse = inverse_head(config, obs_dim, cond_dim, act_dim)
        self.transformer = MultiScaleTransformer(config.scales, config.codebook_size, config.code_dim, cond_dim,
                                                 config.d_model, config.n_layers, config.n_heads, config.dropout,
                                                 config.qk_norm)
        self.return_target = ReturnTarget(cond_dim - 1) if config.return_target_expectile > 0 else None

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, cond if self.decoder_condition else torch.zeros_like(cond))

    def act(self, z: torch.Tensor, cond: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a_t = I(z, condition); with head_track, I also sees a position head_track steps on as the data collector's
        controller sees its target (direction in the torso's heading frame, clipped distance): the direction to walk,
        which the head would otherwise have to rotate out of a world-frame latent itself. Acting, that position is
        the decoded plan's; training passes ``target``, where the logged segment is then (logged_target)."""
        return self.inverse(z, cond, self.track_features(z, cond, target) if self.head_track else None)

    def track_features(self, z: torch.Tensor, cond: torch.Tensor, target: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
        """head_track's input: the collector's features of (s_t, target), by default the decoded plan's (x, y)."""
        if target is None:  # an input, not a path for L_inv's gradient into the decoder
            target = self.decode(z, cond)[:, self.head_track, 1:3].detach()
            if self.goal_snap > 0:  # the goal (cond's last two columns, normalised as positions), once that close
                goal = cond[:, -2:].to(target.dtype)
                near = ((target - goal).float() * self.obs_std[:2]).norm(dim=-1, keepdim=True) <= self.goal_snap
                target = torch.where(near, goal, target)
        xy = target.float() * self.obs_std[:2] + self.obs_mean[:2]
        state = cond[:, self.state_cols].float() * self.obs_std + self.obs_mean
        return self.features(state, xy)

    def teacher_inputs(self, zs: list[torch.Tensor]) -> Optional[torch.Tensor]:
        """Transformer inputs for scales 2..K from the per-scale contributions z_k (None when K = 1)."""
        f_hat, inputs = torch.zeros_like(zs[0]), []
        for k in range(len(zs) - 1):
            f_hat = f_hat + zs[k]
            inputs.append(self.vq.next_input(f_hat, k))
        return torch.cat(inputs, 1) if inputs else None


def logged_target(x: torch.Tensor, config: TrainConfig) -> Optional[torch.Tensor]:
    """head_track's training target: the normalised (x, y) where the logged segment is head_track steps on (the
    last step once it has ended). (choice) Hindsight, as goal-conditioned BC labels a goal: the logged action is
    paired with where it led. Refitted heads reached antmaze-large's goal in 5 of 10 episodes with it, 3 of 10 paired
    with the generated plan's position instead (docs/mage.md)."""
    return x[:, config.head_track, 1:3] if config.head_track else None


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    err = (pred.float() - target.float()).pow(2).mean(-1)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def autoencoder_loss(model: MAGE, batch: dict, config: TrainConfig):
    """Stage 1: reconstruction + VQ, and L_inv pre-training of the head on the (detached) true latent."""
    x, cond, mask = batch["x"], batch["cond"][:, 0], batch["mask"]
    f_st, idx_list, vq_loss, zs = model.vq(model.encoder(x))
    recon = masked_mse(model.decode(f_st, cond), x, mask)
    # pre-training only: the detached latent keeps the encoder from being pushed to store action noise
    act = model.act(f_st.detach(), cond, logged_target(x, config))
    inv = masked_mse(act, batch["actions"][:, 0], mask[:, 0])
    loss = recon + vq_loss + config.w_inv * inv
    stats = {"ae/recon": recon.detach(), "ae/vq": vq_loss.detach(), "ae/inv": inv.detach()}  # tensors: no sync
    if model.return_target is not None:  # cond = (R_t, rest): learn the expectile of R_t given the rest
        target = expectile_loss(cond[:, 0].float() - model.return_target(cond[:, 1:]).float(),
                                config.return_target_expectile)
        loss = loss + target
        stats["ae/return_target"] = target.detach()
    return loss, stats


@torch.no_grad()
def autoencoder_diagnostics(model: MAGE, batch: dict, config: TrainConfig) -> dict:
    """Stage 1's log-step metrics (outside the training step): reconstruction from the first k scales only (should
    fall as k grows), codebook perplexity and usage."""
    x, cond, mask = batch["x"], batch["cond"][:, 0], batch["mask"]
    model.eval()
    _, idx_list, _, zs = model.vq(model.encoder(x))
    stats, partial = {}, torch.zeros_like(zs[0])
    for k, z in enumerate(zs):
        partial = partial + z
        stats[f"ae/recon_scale{k + 1}"] = masked_mse(model.decode(partial, cond), x, mask)
    counts = torch.bincount(torch.cat([i.flatten() for i in idx_list]), minlength=config.codebook_size)
    p = counts.float() / counts.sum()
    stats["ae/perplexity"] = torch.exp(-(p * (p + 1e-10).log()).sum())
    stats["ae/codebook_usage"] = (counts > 0).float().mean()
    return stats


def transformer_loss(model: MAGE, batch: dict, config: TrainConfig):
    """Stage 2: next-scale cross-entropy on the token maps of the frozen autoencoder; the inverse-dynamics head
    keeps learning L_inv on the latent of the transformer's predicted (argmax) tokens."""
    cond = batch["cond"][:, 0]
    with torch.no_grad():
        f = model.encoder(batch["x"])
        _, idx_list, _, zs = model.vq(f)
        if config.scheduled_sampling > 0:  # (choice) evaluation feeds each scale the argmax of the coarser ones:
            # train on some of them too (one teacher-forced pass gives the predictions; parallel scheduled sampling)
            pred = model.transformer(cond, model.teacher_inputs(zs)).argmax(-1)
            use_pred = torch.rand(cond.shape[0], len(zs), device=cond.device) < config.scheduled_sampling
            idx_list, zs = model.vq.requantize(f, pred, use_pred)
        inputs = model.teacher_inputs(zs)
    logits = model.transformer(cond, inputs)
    target = torch.cat(idx_list, 1)
    per_token = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
    ce = per_token.mean()
    pred = logits.detach().argmax(-1)
    hits = (pred == target).float()
    stats = {"tf/ce": ce.detach(), "tf/token_acc": hits.mean()}
    # per scale: which scales are hard to predict (coarse ones carry the plan, fine ones the collection noise)
    b = model.transformer.bounds
    for k in range(len(b) - 1):
        stats[f"tf/ce_scale{k + 1}"] = per_token[:, b[k]:b[k + 1]].detach().mean()
        stats[f"tf/token_acc_scale{k + 1}"] = hits[:, b[k]:b[k + 1]].mean()
    # (choice) the head needs many more updates than stage 1 gives it (the action of a maze state is a sharp
    # function), and on plan-like latents: predicted tokens carry the plan but not the logged action noise
    with torch.no_grad():
        f_pred = model.vq.embed_sequence(pred)
    inv = masked_mse(model.act(f_pred, cond, logged_target(batch["x"], config)), batch["actions"][:, 0],
                     batch["mask"][:, 0])
    stats["tf/inv"] = inv.detach()
    return ce + config.w_inv * inv, stats


def end_to_end_loss(model: MAGE, batch: dict, config: TrainConfig):
    """Stage 3: the transformer generates all K scales freely from the condition, with straight-through
    Gumbel-Softmax tokens, so L_inv and L_cond reach it; the decoder's adapters learn L_cond.

    Free-running (not teacher-forced) generation matters: a latent encoded from the true segment also encodes the
    noise of the logged actions, so an inverse-dynamics head fed with it learns to replay noise; fed with generated
    latents it learns the action expected under the plan (a teacher-forced stage 3, where every scale's tokens came
    from logits on the true coarser scales, learnt to replay the logged action noise in our first GPU runs). The
    teacher-forced cross-entropy keeps the transformer close to the data's token distribution.
    """
    x, cond, mask = batch["x"], batch["cond"][:, 0], batch["mask"]
    with torch.no_grad():
        _, idx_list, _, zs = model.vq(model.encoder(x))
        inputs = model.teacher_inputs(zs)
    logits = model.transformer(cond, inputs)
    ce = F.cross_entropy(logits.float().flatten(0, 1), torch.cat(idx_list, 1).flatten())
    f_gen, _ = model.transformer.generate(cond, model.vq, gumbel_tau=config.gumbel_tau)
    inv = masked_mse(model.act(f_gen, cond, logged_target(x, config)), batch["actions"][:, 0], mask[:, 0])
    loss = config.w_ce * ce + config.w_inv * inv
    cond_err = ce.new_zeros(())
    if config.decoder_condition:  # L_cond on the first decoded step, learnt by the adapters
        cond_err = F.mse_loss(model.decode(f_gen, cond)[:, 0].float(), x[:, 0].float())
        loss = loss + config.w_cond * cond_err
    return loss, {"e2e/ce": ce.detach(), "e2e/inv": inv.detach(), "e2e/cond": cond_err.detach()}


# ============================================================================ training
STAGES = ("autoencoder", "transformer", "end_to_end")
STAGE_LOSSES = {"autoencoder": autoencoder_loss, "transformer": transformer_loss, "end_to_end": end_to_end_loss}


def make_optimizer(model: MAGE, stage: str, config: TrainConfig, captured: bool = False) -> torch.optim.Optimizer:
    """Each stage trains its own parameters; the others are frozen (requires_grad off)."""
    model.requires_grad_(False)
    if stage == "autoencoder":
        params = [*model.encoder.parameters(), *model.vq.parameters(), *model.inverse.parameters(),
                  *(model.return_target.parameters() if model.return_target is not None else []),
                  *(p for n, p in model.decoder.named_parameters() if ".adapter." not in n)]
    elif stage == "transformer":
        params = [*model.transformer.parameters(), *model.inverse.parameters()]
    else:
        params = [*model.transformer.parameters(), *model.inverse.parameters()]
        if config.decoder_condition:
            params += model.decoder.adapter_parameters()
    for p in params:
        p.requires_grad_(True)
    lr = config.e2e_lr if stage == "end_to_end" else config.lr
    return make_adam(params, lr, "adamw", captured, weight_decay=config.weight_decay)


def update(model: MAGE, optimizer: torch.optim.Optimizer, batch: dict, config: TrainConfig, stage: str) -> dict:
    """One gradient step of ``stage`` on ``batch``; returns its stats as tensors (no host sync: capturable)."""
    model.train()
    if stage != "autoencoder":  # the autoencoder is frozen after stage 1
        model.encoder.eval(), model.vq.eval()
    loss_fn = fused(STAGE_LOSSES[stage], config.inductor and config.compile and batch["x"].is_cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and batch["x"].is_cuda):
        if stage == "autoencoder" and not model.vq.ready:  # once, eagerly (the first call is an eager warm-up)
            with torch.no_grad():
                model.vq.init_codebook(model.encoder(batch["x"]))
        loss, stats = loss_fn(model, batch, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return {**stats, "train/loss": loss.detach(), "train/grad_norm": grad_norm}


def sample_batch(data: TrajectoryData, config: TrainConfig) -> dict:
    batch = data.buffer.sample(config.batch_size, end_fraction=config.end_fraction, with_start=config.goal_relabel > 0)
    return relabel_goals(batch, data, config) if config.goal_relabel > 0 else batch


def relabel_goals(batch: dict, data: TrajectoryData, config: TrainConfig) -> dict:
    """Hindsight relabelling: a ``goal_relabel`` share of the segments aim at a later position of their own
    trajectory (k steps ahead with probability ~ discount^k) instead of the collector's goal, and every step's R
    becomes discount^(steps until within the goal radius of it). Without it antmaze has one goal per 1,000-step
    episode, most of its steps waiting there. Device-side tensor ops only: it runs inside the captured step."""
    buffer, start = data.buffer, batch.pop("start")
    # (choice) geometric, not uniform up to the trajectory's end: on antmaze that end is mostly the wait at the
    # collector's goal, so uniform goals would rarely fall inside a walk
    row = buffer.future_rows(start, config.discount)  # [B]: the relabelled goal is where the trajectory is then
    x, pos = batch["x"], batch.pop("pos")
    horizon = x.shape[1]
    steps = torch.arange(horizon, device=x.device)
    reached = (pos - buffer.fields["pos"][row][:, None]).norm(dim=-1) <= data.goal_radius  # [B, H]
    never = torch.full_like(reached, 2 ** 30, dtype=torch.long)
    # first step >= t inside the segment that is within the radius (a reverse running minimum)
    next_hit = torch.where(reached, steps.expand_as(reached), never).flip(1).cummin(1).values.flip(1)
    goal_at = (row - start)[:, None]  # the goal row itself; beyond the segment when >= H
    arrive = torch.where(steps <= goal_at, torch.minimum(next_hit, goal_at), next_hit)
    r = torch.where(arrive < 2 ** 30, torch.pow(config.discount, (arrive - steps).clamp_min(0).float()), 0.0)
    relabel = (torch.rand(len(start), device=x.device) < config.goal_relabel)[:, None]
    r = torch.where(relabel, r, x[..., 0])[..., None]
    # a normalised goal is the normalised state's (x, y) (Normalizer.goal), i.e. x's columns 1:3
    cond = batch["cond"]
    goal = torch.where(relabel[..., None], buffer.fields["x"][row][:, None, 1:3], cond[..., -2:])
    rest = cond[..., 1:-2] if config.return_condition else cond[..., :-2]  # s_t
    batch.update(x=torch.cat([r, x[..., 1:]], -1),
                 cond=torch.cat([r, rest, goal] if config.return_condition else [rest, goal], -1))
    return batch


def lr_factor(step_in_stage: int, stage_steps: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% within each stage."""
    if step_in_stage < warmup:
        return (step_in_stage + 1) / warmup
    progress = (step_in_stage - warmup) / max(1, stage_steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def stage_bounds(stage: str, config: TrainConfig) -> tuple[int, int]:
    starts = {"autoencoder": 0, "transformer": config.ae_steps, "end_to_end": config.ae_steps + config.tf_steps}
    lengths = {"autoencoder": config.ae_steps, "transformer": config.tf_steps, "end_to_end": config.e2e_steps}
    return starts[stage], lengths[stage]


def training_stages(config: TrainConfig, data: TrajectoryData, model: MAGE, device: torch.device,
                    saved: Optional[dict] = None) -> tuple[list[Stage], Callable[[], dict]]:
    """The three stages for shared.training.train_loop, and the checkpoint contents. Each stage's optimiser is built
    when the stage begins (and loaded from ``saved`` when a run resumes inside it)."""
    graphs = use_graphs(config.compile, device)
    current: dict = {}  # the running stage's optimiser, for checkpoints

    def stage(name: str) -> Stage:
        start, length = stage_bounds(name, config)

        def begin():
            opt = make_optimizer(model, name, config, captured=graphs)
            resumed_here = saved is not None and saved.get("stage") == name and saved["step"] < start + length
            if resumed_here:
                load_optimizer(opt, saved["optimizer"])  # resumed mid-stage
            current["optimizer"] = opt
            base = config.e2e_lr if name == "end_to_end" else config.lr
            return make_step(lambda batch: update(model, opt, batch, config, name),
                             lambda: sample_batch(data, config), [opt],
                             lr=lambda i: base * lr_factor(i - start, length, config.warmup_steps), graph=graphs)

        after = diagnostics = None
        if name == "autoencoder":
            def after(i: int):  # eager, between (captured) steps
                if config.dead_code_every and i % config.dead_code_every == 0:
                    return {"ae/dead_codes_restarted": model.vq.restart_dead_codes()}

            # its own random stream: how often a run logs never changes the batches it trains on
            diag_rng = torch.Generator(data.buffer.device).manual_seed(config.seed)

            def diagnostics():
                batch = data.buffer.sample(config.batch_size, generator=diag_rng)
                return autoencoder_diagnostics(model, batch, config)
        return Stage(name, start + length, begin, after, diagnostics)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "optimizer": current["optimizer"].state_dict(), "rng": rng_state(),
                "config": vars(config).copy(), "obs_norm": data.obs_norm.state_dict()}

    return [stage(n) for n in STAGES], checkpoint


def train(config: TrainConfig, data: TrajectoryData, model: MAGE, run_dir: Path, logger: Logger,
          device: torch.device, evaluate_fn=None) -> tuple[int, float]:
    """Run the three stages from the newest checkpoint (if resuming) to the end; returns (final step, training
    wall time, including the time before a resume)."""
    saved = load_latest_checkpoint(run_dir, map_location=device) if config.resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
    step, elapsed = resume_point(saved, "mage", run_dir)
    stages, checkpoint = training_stages(config, data, model, device, saved)
    return train_loop("mage", config, run_dir, logger, stages, step, checkpoint, evaluate_fn,
                      eval_from=config.ae_steps, elapsed=elapsed)


# ============================================================================ evaluation
class WaypointGraph:
    """(choice, ours: the paper does not say how MAGE chains walks) The data's routes, for goals beyond one walk.

    The (x, y) plane is cut into squares of side ``square``; every square the data visits is a node, and an edge
    a -> b joins two squares wherever one step of a trajectory goes from a to b. Walks that cross the same square
    share its node, so a route can follow one walk and continue on another (stitching, as the value function of IQL
    does). ``route(goal, hops)`` runs a breadth-first search back from the goal's square; a state's waypoint is then
    the square ``hops`` further along its shortest route (its mean visited position), or the goal itself once the
    goal is that close, or when no route leads there. Only the dataset is used, not the maze's map."""

    def __init__(self, xy: np.ndarray, bounds: np.ndarray, square: float) -> None:
        self.square = square
        keys = np.floor(xy / square).astype(np.int64)
        self.lo, size = keys.min(0), keys.max(0) - keys.min(0) + 1
        flat = (keys[:, 0] - self.lo[0]) * size[1] + (keys[:, 1] - self.lo[1])
        squares, node = np.unique(flat, return_inverse=True)
        count = np.bincount(node, minlength=len(squares))
        self.centre = np.stack([np.bincount(node, xy[:, k], len(squares)) for k in range(2)], 1) / count[:, None]
        moves = np.ones(len(xy) - 1, bool)
        moves[bounds[:, 1][bounds[:, 1] < len(xy)] - 1] = False  # a trajectory's last step leads nowhere
        a, b = node[:-1][moves], node[1:][moves]
        edges = np.unique(np.stack([a, b], 1)[a != b], axis=0)
        self.into = [[] for _ in squares]  # predecessors: the search runs from the goal backwards
        for u, v in edges:
            self.into[v].append(u)
        # every square of the bounding box -> the nearest visited one (a state the data never visited still gets one)
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), -1).reshape(-1, 2)
        centres = (grid + self.lo + 0.5) * square
        near = np.linalg.norm(centres[:, None] - self.centre[None], axis=-1).argmin(1)
        self.nearest = near.reshape(*size)
        self.size = size

    def node(self, xy: np.ndarray) -> np.ndarray:
        keys = np.clip(np.floor(xy / self.square).astype(np.int64) - self.lo, 0, self.size - 1)
        return self.nearest[keys[:, 0], keys[:, 1]]

    def route(self, goal: np.ndarray, hops: int) -> tuple[np.ndarray, np.ndarray]:
        """For one goal (x, y): every node's squares to the goal's (-1: no route) and the node ``hops`` on."""
        target = int(self.node(goal[None])[0])
        dist, step = np.full(len(self.into), -1), np.arange(len(self.into))
        dist[target], queue = 0, deque([target])
        while queue:
            v = queue.popleft()
            for u in self.into[v]:
                if dist[u] < 0:
                    dist[u], step[u] = dist[v] + 1, v
                    queue.append(u)
        ahead = np.arange(len(step))
        for _ in range(hops):
            ahead = step[ahead]
        return dist, ahead


class MagePolicy:
    """Plans K scales from (s_t, R_t [, g]) and acts with the latent inverse-dynamics head (shared.evaluation's
    Policy protocol). Plans at every step; reward tasks lower R by the rewards received (as DT).
    On CUDA with ``compile`` the K-pass plan is a CUDA graph per batch size (captured at the first plan of that
    size, replayed after, on the live weights): keep one policy for every evaluation of a run. With ``inductor``
    the plan is fused as the training losses are: a maze2d-large evaluation is 800 plans in a row, and they were
    about half of its 11.7 s (benchmarks/budget/h100-2026-12-07a)."""

    def __init__(self, model: MAGE, data: TrajectoryData, config: TrainConfig, device: torch.device) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        graphs = use_graphs(config.compile, device)
        self.plan_actions = captured(fused(self._plan_actions, config.inductor and graphs), graphs)

    def ask_return(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition a plan is made from: with a learnt return target, R = its expectile from here (goal tasks:
        clamped to [0, 1]) in place of the requested R."""
        if self.model.return_target is None:
            return cond
        r = self.model.return_target(cond[:, 1:])
        r = r.clamp(0.0, 1.0) if self.data.goal_conditioned else r
        return torch.cat([r[:, None], cond[:, 1:]], 1)

    def _plan_actions(self, cond: torch.Tensor) -> torch.Tensor:
        """Condition [N, cond_dim] -> the action [N, act_dim] (fp32)."""
        cond = self.ask_return(cond)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.bf16 and cond.is_cuda):
            f_hat, _ = self.model.transformer.generate(cond, self.model.vq, self.config.temperature)
            return self.model.act(f_hat, cond).float()

    def reset(self, goals: np.ndarray) -> None:
        n = len(goals)
        self.goals = goals[:, :2].astype(np.float32)
        self.goal_n = self.data.obs_norm.goal().normalize(goals).astype(np.float32)
        if self.data.waypoints is not None:  # each episode's routes to its goal, once: [n, nodes] each
            routes = [self.data.waypoints.route(g, self.config.waypoint_hops) for g in self.goals]
            self.route_dist, self.route_ahead = (np.stack(r) for r in zip(*routes))
        scale = 1.0 if self.data.goal_conditioned else self.config.rtg_scale
        self.rtg = np.full(n, self.config.target_return / scale, np.float32)

    @torch.no_grad()
    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        if not self.data.goal_conditioned:
            self.rtg = self.rtg - last_rewards.astype(np.float32) / self.config.rtg_scale
        self.model.eval()
        return np.clip(self.plan_actions(self.condition(obs)).cpu().numpy(), -1.0, 1.0)

    def condition(self, obs: np.ndarray) -> torch.Tensor:
        """(R_t, s_t) on reward tasks, (s_t, g) on goal tasks ((R_t, s_t, g) with return_condition), as in load_data."""
        s = self.data.obs_norm.normalize(obs.astype(np.float32))
        if self.data.waypoints is not None:  # g = the waypoint on the way, until the goal itself is that close
            envs, nodes = np.arange(len(obs)), self.data.waypoints.node(obs[:, :2])
            far = self.route_dist[envs, nodes] > self.config.waypoint_hops  # -1 (no route): the goal itself
            waypoint = self.data.waypoints.centre[self.route_ahead[envs, nodes]]
            target = np.where(far[:, None], waypoint, self.goals).astype(np.float32)
            self.goal_n = self.data.obs_norm.goal().normalize(target)
        parts = [self.rtg[:, None], s] + ([self.goal_n] if self.data.goal_conditioned else [])
        if self.data.goal_conditioned and not self.config.return_condition:
            parts = parts[1:]
        return torch.as_tensor(np.concatenate(parts, 1), device=self.device)


# ============================================================================ main
def main(config: TrainConfig) -> dict:
    task = get_task(config.task)  # unknown task: one clear line
    require_evaluation(task)  # a D4RL task without gym/d4rl fails now, not after training
    device = resolve_device(config.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks the fastest 1-D convolutions
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (token choice stays fp32: see nearest)
    set_seed(config.seed)
    run_dir = prepare_run_dir(config, "mage")
    data = load_data(config, device)
    model = MAGE(config, data.obs_dim, data.cond_dim, data.act_dim, data.obs_norm).to(device)
    print(f"[mage] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device_name(device)}")
    logger = Logger(config, "mage", run_dir, config.wandb_mode, config.project)
    policy = MagePolicy(model, data, config, device)  # one policy: its CUDA graphs persist

    def run_eval(episodes: int, on: str | Task = task):
        return evaluate(on, policy, episodes, config.eval_seed, num_envs=config.num_eval_envs,
                        progress=sys.stderr.isatty())

    steps, train_wall = train(config, data, model, run_dir, logger, device, run_eval)
    result = run_eval(config.eval_episodes)
    return finish_run("mage", config, run_dir, logger, data.info, result, steps, train_wall, device_name(device),
                      evaluate_on=lambda other: run_eval(config.eval_episodes, other))


if __name__ == "__main__":
    run_main(main, TrainConfig)
