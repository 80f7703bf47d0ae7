"""Diffuser: Planning with Diffusion for Flexible Behavior Synthesis (Janner, Du, Tenenbaum, Levine; ICML 2022).

One self-contained file, read top to bottom:
  config -> data -> temporal U-Net (denoiser) and value function -> Gaussian diffusion over trajectories
  (training loss, inpainting, respaced / guided sampling) -> training (checkpoints, EMA, --resume)
  -> evaluation (planning policy) -> main.

A trajectory is tau = [(a_0, s_0), ..., (a_{H-1}, s_{H-1})], normalised per dimension; the whole [H, act+obs] array
is denoised at once by a 1-D convolutional U-Net over time. Planning is conditional sampling:
  * goal tasks (maze2d-*, multi2d-*): inpaint the current state at index 0 and the goal (x, y, 0, 0) at H-1 at every
    denoising step, then track the planned states with Diffuser's simple controller;
  * reward tasks (AntMaze, locomotion): inpaint the current state, guide sampling with the gradient of a value
    function trained on noisy trajectories, keep the best of n_plans samples and execute its first action.
Run:  python algorithms/diffuser.py --config configs/diffuser/maze2d-umaze.yaml [--field value ...]
Choices the paper leaves open, and departures from it, are marked "(choice)".
"""

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

from shared.buffer import Normalizer, SegmentBuffer, returns_to_go, split_trajectories  # noqa: E402
from shared.datasets import load_dataset  # noqa: E402
from shared.evaluation import evaluate, require_evaluation  # noqa: E402
from shared.logger import Logger, finish_run, prepare_run_dir  # noqa: E402
from shared.tasks import Task, get_task, goal_input, is_point_maze  # noqa: E402
from shared.training import (  # noqa: E402
    EMA, Stage, captured, fused, load_optimizer, make_optimizer, make_step, resume_point, train_loop, use_graphs,
)
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
    out_dir: str = "runs"  # run folder root: checkpoints, metrics.jsonl, final.json go to out_dir/diffuser/task/seedK
    results_path: Optional[str] = None  # also write the final metrics JSON here (e.g. benchmarks/results/...)
    also_evaluate: str = ""  # "TASK=PATH": also evaluate the trained policy on TASK (same data), its result to PATH
    resume: bool = False  # continue from the newest checkpoint in the run folder
    wandb_mode: str = "offline"  # "online", "offline" or "disabled" (WANDB_MODE overrides)
    project: str = "mage-suite"  # W&B project
    # --- data
    dataset_path: Optional[str] = None  # a D4RL-format HDF5 file to train on instead of the task's default data
    dataset_size: Optional[int] = None  # transitions of embedded data to generate/use (None: the task's full size)
    dataset_seed: int = 0  # seed of the embedded dataset generator
    horizon: int = 128  # H: time steps per planned trajectory (divisible by 2^(len(dim_mults)-1))
    normalizer: str = "limits"  # "limits" (min/max -> [-1, 1], Diffuser's mazes) or "gaussian" (locomotion)
    pad_rest: bool = True  # maze tasks: padding after a trajectory's end rests at its last position, zero vel/action
    discount: float = 0.997  # value guidance: discount of the returns the value function learns
    termination_penalty: float = 0.0  # value guidance: added to the reward of terminal transitions (Diffuser: -100)
    # --- model
    dim: int = 32  # base channel width of the temporal U-Net
    dim_mults: List[int] = field(default_factory=lambda: [1, 4, 8])  # channel multiplier per U-Net resolution
    kernel_size: int = 5  # temporal convolution kernel
    n_diffusion_steps: int = 64  # T: diffusion steps of training (cosine beta schedule)
    predict_epsilon: bool = False  # True: the network predicts the noise; False: it predicts x0 (Diffuser's mazes)
    clip_denoised: bool = True  # clip predicted x0 to [-1, 1] while sampling (for the limits normaliser)
    action_weight: float = 1.0  # loss weight of the first action a_0 (Diffuser: 1 mazes, 10 locomotion)
    loss_discount: float = 1.0  # loss weight of step t is loss_discount^t
    value_guidance: bool = False  # train a value function on noisy trajectories and guide sampling with it
    # --- training
    batch_size: int = 256  # trajectories per step
    steps: int = 30_000  # optimiser steps (Diffuser: 2e6 mazes / 1e6 locomotion at batch 32 x 2)
    lr: float = 2e-4  # Adam learning rate (denoiser and value function)
    grad_clip: float = 1.0  # gradient norm clip per network (0: off; Diffuser: none)
    ema_decay: float = 0.995  # EMA of the weights used for planning
    ema_every: int = 10  # steps between EMA updates
    ema_start: int = 1000  # before this step the EMA copies the weights
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = True  # CUDA: every training step and unguided plan run as captured CUDA graphs (CPU: eager)
    inductor: bool = False  # CUDA + compile: also fuse the loss with torch.compile (shared.training.fused)
    cpu_threads: int = 0  # CPU runs: torch threads (0: torch's default); 1 avoids thread thrashing on a busy machine
    log_every: int = 200  # steps between logged training metrics
    checkpoint_every: int = 5000  # steps between checkpoints (and at the end)
    # --- evaluation
    eval_every: int = 0  # steps between evaluations during training (0: only at the end)
    eval_episodes: int = 100  # episodes of the final evaluation
    eval_episodes_during: int = 20  # episodes of each evaluation during training
    num_eval_envs: int = 50  # environments stepped together (all of them planned in one batched sampling call)
    n_sample_steps: int = 0  # denoising steps at sampling time (0: all T; fewer: respaced DDPM/DDIM over T)
    sample_eta: float = 1.0  # 1: DDPM ancestral sampling (exact Diffuser when n_sample_steps = T); 0: DDIM
    replan_every: int = 0  # goal tasks: environment steps between plans (0: plan once per episode, as Diffuser)
    n_plans: int = 64  # reward tasks: plans sampled per state; the one of highest value is executed
    guide_scale: float = 0.1  # value guidance: gradient step size
    n_guide_steps: int = 2  # value guidance: gradient steps per denoising step
    t_stopgrad: int = 2  # value guidance: no guidance at diffusion steps t < t_stopgrad
    scale_grad_by_std: bool = True  # value guidance: multiply the gradient by the step's posterior variance


# ============================================================================ data
@dataclass
class TrajectoryData:
    buffer: SegmentBuffer  # segments with fields x [H, act+obs] (normalised) and value (discounted return)
    x_norm: Normalizer  # per-dimension normalisation of (a, s) (saved in checkpoints)
    obs_dim: int
    act_dim: int
    goal_conditioned: bool
    rest_dims: Optional[torch.Tensor]  # [D] bool: dims set to rest on padded steps (maze tasks with pad_rest)
    rest_values: Optional[torch.Tensor]  # [D] normalised zero of those dims
    value_stats: tuple  # (mean, std) of the value targets; the value net predicts the standardised target
    info: dict  # dataset source and recipe, for the results file


def fit_normalizer(x: np.ndarray, kind: str) -> Normalizer:
    """Gaussian (mean/std) or limits (min/max -> [-1, 1]) normalisation, both as the shared affine Normalizer."""
    if kind == "gaussian":
        return Normalizer.fit(x)
    if kind == "limits":
        lo, hi = x.min(0), x.max(0)
        return Normalizer(((hi + lo) / 2).astype(np.float32), ((hi - lo) / 2 + 1e-4).astype(np.float32))
    raise RunError(f"normalizer must be 'limits' or 'gaussian', got '{kind}'")


def load_data(config: TrainConfig, device: torch.device) -> TrajectoryData:
    """Dataset -> trajectories -> normalised (a, s) per step (+ discounted returns) in a device-side buffer."""
    task = get_task(config.task)
    with_goal = goal_input(task, "diffuser")  # AntMaze: no goal (value guidance; shared.tasks.GOAL_PLANNERS)
    data, info = load_dataset(task, dataset_path=config.dataset_path, size=config.dataset_size,
                              seed=config.dataset_seed)
    obs, actions = data["observations"].astype(np.float32), data["actions"].astype(np.float32)
    # (choice) trajectories are split at timeouts (goal switches of the collector) rather than Diffuser's
    # maze2d_set_terminals (where the agent leaves the evaluation goal); segments run past the end with padding
    bounds = split_trajectories(data["terminals"], data["timeouts"])
    check_data_fits(config, bounds)  # e.g. a dataset_size too small for the horizon: one line, before training
    x = np.concatenate([actions, obs], 1)
    x_norm = fit_normalizer(x, config.normalizer)
    fields = {"x": x_norm.normalize(x).astype(np.float32)}
    value_stats = (0.0, 1.0)
    if config.value_guidance:
        # Diffuser's ValueDataset: discounted return from the segment start to the end of its trajectory
        rewards = data["rewards"].astype(np.float32) + config.termination_penalty * data["terminals"]
        values = returns_to_go(rewards, bounds, config.discount)
        value_stats = (float(values.mean()), float(values.std() + 1e-6))
        fields["value"] = values
    buffer = SegmentBuffer(fields, bounds, config.horizon, device)
    obs_dim, act_dim = obs.shape[1], actions.shape[1]
    rest_dims = rest_values = None
    if config.pad_rest and with_goal and is_point_maze(task):
        rest = np.zeros(act_dim + obs_dim, bool)
        rest[:act_dim] = True  # actions
        rest[act_dim + 2:] = True  # velocities
        zero = x_norm.normalize(np.zeros(act_dim + obs_dim, np.float32))
        rest_dims = torch.as_tensor(rest, device=device)
        rest_values = torch.as_tensor(zero, dtype=torch.float32, device=device)
    print(f"[diffuser] {config.task}: {len(obs):,} transitions, {buffer.num_trajectories:,} trajectories, "
          f"data = {info['source']}")
    return TrajectoryData(buffer, x_norm, obs_dim, act_dim, with_goal, rest_dims, rest_values,
                          value_stats, info)


def sample_batch(data: TrajectoryData, config: TrainConfig) -> dict:
    """Segments x [B, H, D] (rest padding on maze tasks) and, with value guidance, the standardised value target."""
    batch = data.buffer.sample(config.batch_size)
    if data.rest_dims is not None:  # (choice) the agent rests at its goal after the trajectory ends
        pad = (batch["mask"] == 0)[..., None] & data.rest_dims
        batch["x"] = torch.where(pad, data.rest_values, batch["x"])
    if "value" in batch:
        v_mean, v_std = data.value_stats
        batch["value_target"] = (batch["value"][:, 0] - v_mean) / v_std
    return batch


# ============================================================================ temporal U-Net and value function
class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / (half - 1))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], -1)


class ConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(8, c_out),
                                 nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks; the diffusion-time embedding is added between them; 1x1-conv residual."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, kernel: int) -> None:
        super().__init__()
        self.block1, self.block2 = ConvBlock(c_in, c_out, kernel), ConvBlock(c_out, c_out, kernel)
        self.time = nn.Sequential(nn.Mish(), nn.Linear(t_dim, c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.time(t_emb)[..., None]
        return self.block2(h) + self.skip(x)


def time_mlp(dim: int) -> nn.Module:
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


class TemporalUnet(nn.Module):
    """x [B, H, D] noisy trajectory, t [B] diffusion step -> [B, H, D] (x0 or noise).

    Per resolution: two residual blocks then a stride-2 downsampling (not after the last); two middle blocks; the
    decoder mirrors it with skip connections and transposed-conv upsampling. Convolutions are over time only, so
    the receptive field (not the horizon) bounds how far information travels: local consistency, global plan.
    """

    def __init__(self, transition_dim: int, dim: int, dim_mults: List[int], kernel: int) -> None:
        super().__init__()
        chans = [transition_dim] + [dim * m for m in dim_mults]
        pairs = list(zip(chans[:-1], chans[1:]))
        self.time = time_mlp(dim)
        self.downs = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.downs.append(nn.ModuleList([
                ResidualTemporalBlock(c_in, c_out, dim, kernel), ResidualTemporalBlock(c_out, c_out, dim, kernel),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)]))
        mid = chans[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, dim, kernel)
        self.mid2 = ResidualTemporalBlock(mid, mid, dim, kernel)
        self.ups = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):  # one upsampling per downsampling
            self.ups.append(nn.ModuleList([
                ResidualTemporalBlock(2 * c_out, c_in, dim, kernel), ResidualTemporalBlock(c_in, c_in, dim, kernel),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(ConvBlock(dim, dim, kernel), nn.Conv1d(dim, transition_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time(t)
        h = x.transpose(1, 2)
        skips = []
        for block1, block2, down in self.downs:
            h = block2(block1(h, t_emb), t_emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, t_emb), t_emb)
        for block1, block2, up in self.ups:
            h = torch.cat([h, skips.pop()], 1)
            h = up(block2(block1(h, t_emb), t_emb))
        return self.final(h).transpose(1, 2)


class ValueFunction(nn.Module):
    """The U-Net's encoder half, pooled over time, + time embedding -> scalar J(tau_t, t) (Diffuser's guide)."""

    def __init__(self, transition_dim: int, dim: int, dim_mults: List[int], kernel: int) -> None:
        super().__init__()
        chans = [transition_dim] + [dim * m for m in dim_mults]
        self.time = time_mlp(dim)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            self.blocks.append(nn.ModuleList([
                ResidualTemporalBlock(c_in, c_out, dim, kernel), ResidualTemporalBlock(c_out, c_out, dim, kernel),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)]))
        self.head = nn.Sequential(nn.Linear(chans[-1] + dim, chans[-1]), nn.Mish(), nn.Linear(chans[-1], 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time(t)
        h = x.transpose(1, 2)
        for block1, block2, down in self.blocks:
            h = block2(block1(h, t_emb), t_emb)
            if h.shape[-1] > 1:
                h = down(h)
        return self.head(torch.cat([h.mean(-1), t_emb], -1)).squeeze(-1)


# ============================================================================ Gaussian diffusion over trajectories
def cosine_beta_schedule(steps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)."""
    t = np.linspace(0, steps, steps + 1, dtype=np.float64)
    abar = np.cos(((t / steps) + s) / (1 + s) * np.pi / 2) ** 2
    abar = abar / abar[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


def apply_conditioning(x: torch.Tensor, cond_mask: torch.Tensor, cond_values: torch.Tensor) -> torch.Tensor:
    """Inpainting: entries where cond_mask [B|1, H, D] is set take cond_values, exactly."""
    return torch.where(cond_mask, cond_values.to(x.dtype), x)


class Diffuser(nn.Module):
    """Denoiser (+ optional value function), noise schedule, training losses and (guided) sampling."""

    def __init__(self, config: TrainConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        levels = len(config.dim_mults)
        if config.horizon % (2 ** (levels - 1)):
            raise RunError(f"horizon ({config.horizon}) must be divisible by 2^(len(dim_mults) - 1) = "
                           f"{2 ** (levels - 1)}")
        if (config.dim * min(config.dim_mults)) % 8:
            raise RunError(f"dim * dim_mults must be multiples of 8 (GroupNorm), got dim={config.dim}")
        self.horizon, self.obs_dim, self.act_dim = config.horizon, obs_dim, act_dim
        self.T, self.predict_epsilon, self.clip_denoised = config.n_diffusion_steps, config.predict_epsilon, \
            config.clip_denoised
        D = obs_dim + act_dim
        self.denoiser = TemporalUnet(D, config.dim, config.dim_mults, config.kernel_size)
        self.value = ValueFunction(D, config.dim, config.dim_mults, config.kernel_size) if config.value_guidance \
            else None
        betas = cosine_beta_schedule(self.T)
        abar = np.cumprod(1 - betas)
        self.register_buffer("alphas_cumprod", torch.tensor(abar, dtype=torch.float32))
        self.abar64 = abar  # float64 copy for the per-step sampling coefficients
        weights = torch.ones(config.horizon, D) * (config.loss_discount ** torch.arange(config.horizon))[:, None]
        weights[0, :act_dim] = config.action_weight  # Diffuser weights the first action separately
        self.register_buffer("loss_weights", weights / weights.mean())

    # ------------------------------------------------------------------ training
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t][:, None, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def losses(self, x0: torch.Tensor, cond_mask: torch.Tensor, value_target: Optional[torch.Tensor] = None):
        """Denoising loss (weighted MSE on x0 or noise) and, with value guidance, the value regression loss.
        Training conditions on the segment's own states at the inpainted indices, as at planning time."""
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        x_noisy = apply_conditioning(self.q_sample(x0, t, noise), cond_mask, x0)
        out = self.denoiser(x_noisy, t).float()
        if self.predict_epsilon:
            free = (~cond_mask).float()  # (choice) no loss on inpainted entries, whose noise is unobservable
            err = (out - noise).pow(2) * self.loss_weights * free
            loss = err.sum() / (self.loss_weights * free).expand_as(err).sum()
        else:
            out = apply_conditioning(out, cond_mask, x0)
            loss = ((out - x0).pow(2) * self.loss_weights).mean()
        a0 = (out[:, 0, :self.act_dim] - (noise if self.predict_epsilon else x0)[:, 0, :self.act_dim]).pow(2).mean()
        stats = {"diffusion/loss": loss.detach(), "diffusion/a0_loss": a0.detach()}  # tensors: no sync per step
        if self.value is None:
            return loss, stats
        v_pred = self.value(x_noisy.detach(), t).float()
        v_loss = F.mse_loss(v_pred, value_target)
        stats["value/loss"] = v_loss.detach()
        return loss + v_loss, stats

    # ------------------------------------------------------------------ sampling
    def timesteps(self, n_sample_steps: int) -> List[int]:
        """Descending diffusion steps visited while sampling: all T, or n evenly spaced ones ending at 0."""
        if n_sample_steps <= 0 or n_sample_steps >= self.T:
            return list(range(self.T - 1, -1, -1))
        return sorted({int(round(v)) for v in np.linspace(0, self.T - 1, n_sample_steps)}, reverse=True)

    def predict_x0(self, x: torch.Tensor, t: int, ab: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output -> (x0, implied noise); x0 clipped to [-1, 1] if clip_denoised."""
        out = self.denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0 = (x - math.sqrt(1 - ab) * out) / math.sqrt(ab) if self.predict_epsilon else out
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        return x0, eps

    def value_of(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.value(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()

    @torch.no_grad()
    def sample(self, cond_mask: torch.Tensor, cond_values: torch.Tensor, n_sample_steps: int = 0, eta: float = 1.0,
               guide_scale: float = 0.0, n_guide_steps: int = 0, t_stopgrad: int = 0, scale_grad_by_std: bool = True,
               autocast=None) -> torch.Tensor:
        """Reverse diffusion from N(0, I) with the conditions inpainted after every step (and at the start).

        Each step from t to t_prev (respaced when n_sample_steps < T) is the generalised DDIM update
          x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
          sigma^2 = eta^2 (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev);
        with eta = 1 this is exactly DDPM's posterior q(x_prev | x_t, x0) (Diffuser's sampler when all T steps are
        visited). Value guidance (Diffuser's n_step_guided_p_sample): before each denoising step, n_guide_steps
        times x <- x + scale * Var_t * grad_x J(x, t), except for t < t_stopgrad.
        """
        autocast = autocast or torch.autocast("cpu", enabled=False)
        x = apply_conditioning(torch.randn(cond_values.shape, device=cond_values.device), cond_mask, cond_values)
        steps = self.timesteps(n_sample_steps)
        for i, t in enumerate(steps):
            ab = float(self.abar64[t])
            ab_prev = float(self.abar64[steps[i + 1]]) if i + 1 < len(steps) else 1.0
            var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)  # posterior variance of this (respaced) step
            if self.value is not None and guide_scale > 0 and t >= t_stopgrad:
                for _ in range(n_guide_steps):
                    with torch.enable_grad(), autocast:
                        xg = x.detach().requires_grad_(True)
                        grad, = torch.autograd.grad(self.value_of(xg, t).sum(), xg)
                    x = apply_conditioning(x + guide_scale * (var if scale_grad_by_std else 1.0) * grad.float(),
                                           cond_mask, cond_values)
            with autocast:
                x0, eps = self.predict_x0(x, t, ab)
            sigma = eta * math.sqrt(max(var, 0.0))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
            if i + 1 < len(steps) and sigma > 0:
                x = x + sigma * torch.randn_like(x)
            x = apply_conditioning(x, cond_mask, cond_values)
        return x


# ============================================================================ training
def training_conditions(model: Diffuser, goal_conditioned: bool, device: torch.device) -> torch.Tensor:
    """[1, H, D] inpainting mask: the state at index 0, and for goal tasks also the state at H-1."""
    mask = torch.zeros(1, model.horizon, model.obs_dim + model.act_dim, dtype=torch.bool, device=device)
    mask[:, 0, model.act_dim:] = True
    if goal_conditioned:
        mask[:, -1, model.act_dim:] = True
    return mask


def update(model: Diffuser, optimizer: torch.optim.Optimizer, batch: dict, config: TrainConfig,
           cond_mask: torch.Tensor) -> dict:
    """One gradient step on a batch (``cond_mask``: ``training_conditions``); stats are tensors (no host sync: the
    step can be captured as a CUDA graph). The EMA is updated between steps (``training_stages``' after_step)."""
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and batch["x"].is_cuda):
        losses = fused(model.losses, config.inductor and config.compile and batch["x"].is_cuda)
        loss, stats = losses(batch["x"], cond_mask, batch.get("value_target"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nets = [model.denoiser] + ([model.value] if model.value is not None else [])
    grad_norms = [torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip or float("inf"))
                  for net in nets]  # per network: the value function's gradients never shrink the denoiser's
    optimizer.step()
    return {**stats, "train/loss": loss.detach(), "train/grad_norm": grad_norms[0]}


def training_stages(config: TrainConfig, data: TrajectoryData, model: Diffuser, ema: EMA, device: torch.device,
                    saved: Optional[dict] = None) -> tuple[list[Stage], Callable[[], dict]]:
    """One stage of ``config.steps`` updates (EMA every ema_every steps) for shared.training.train_loop, and
    the checkpoint contents."""
    graphs = use_graphs(config.compile, device)
    extra = {"foreach": True} if device.type == "cpu" else {}  # CPU: one multi-tensor update for the many U-Net tensors
    optimizer = make_optimizer(model.parameters(), config.lr, "adam", graphs, **extra)
    if saved is not None:
        load_optimizer(optimizer, saved["optimizer"])
    cond_mask = training_conditions(model, data.goal_conditioned, device)

    def begin():
        return make_step(lambda batch: update(model, optimizer, batch, config, cond_mask),
                         lambda: sample_batch(data, config), [optimizer], graph=graphs)

    def after_step(i: int) -> None:  # eager, between steps; i counts the steps done
        if i % config.ema_every == 0:
            ema.update(model, copy_only=i < config.ema_start)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(), "config": vars(config).copy(), "x_norm": data.x_norm.state_dict(),
                "value_stats": list(data.value_stats)}

    return [Stage("train", config.steps, begin, after_step)], checkpoint


def resume(config: TrainConfig, data: TrajectoryData, model: Diffuser, ema: EMA, run_dir: Path,
           device: torch.device) -> tuple[int, float, Optional[dict]]:
    """With ``config.resume``: model, EMA and RNG from the newest checkpoint in run_dir. Returns (step, training
    time so far, the checkpoint for ``training_stages``), or (0, 0.0, None) for a fresh run."""
    state = load_latest_checkpoint(run_dir, map_location=device) if config.resume else None
    if state is None:
        return 0, 0.0, None
    saved = Normalizer.from_state_dict(state["x_norm"])
    if not (np.allclose(saved.mean, data.x_norm.mean) and np.allclose(saved.std, data.x_norm.std)):
        raise RunError(f"the dataset's normalisation differs from the checkpoint's in {run_dir}; "
                       "resume with the same dataset settings")
    model.load_state_dict(state["model"])
    ema.model.load_state_dict(state["ema"])
    return (*resume_point(state, "diffuser", run_dir), state)


# ============================================================================ evaluation
class DiffuserPolicy:
    """Planning policy (shared.evaluation's Policy protocol), batched: all envs are planned in one sampling call.

    Goal tasks: plan once (or every replan_every steps) with the state inpainted at 0 and (goal, zero velocity) at
    H-1, then Diffuser's maze2d controller: a = (x_next - x) + (v_next - v) towards the next planned state; once
    the plan is used up, towards (goal, 0). Reward tasks: replan every step, n_plans guided samples per env,
    execute the first action of the highest-value plan.
    On CUDA with ``compile`` an unguided plan (all denoising steps, with inpainting) is one CUDA graph per batch
    size, replayed on the live (EMA) weights: keep one policy for every evaluation of a run. Value-guided sampling
    needs autograd inside and stays eager.
    """

    def __init__(self, model: Diffuser, data: TrajectoryData, config: TrainConfig, device: torch.device) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda")
        self.D = data.obs_dim + data.act_dim
        self.plan_unguided = captured(self._plan_unguided, use_graphs(config.compile, device))

    def _plan_unguided(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Inpainting mask and values [N, H, D] -> a sampled plan [N, H, D] (fp32): a function of tensors only."""
        c = self.config
        return self.model.sample(mask, values, c.n_sample_steps, c.sample_eta, autocast=self.autocast)

    def reset(self, goals: np.ndarray) -> None:
        self.goals = np.asarray(goals, np.float32)
        self.t, self.t_plan, self.plan = 0, 0, None

    def _normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        x = np.concatenate([np.zeros((len(obs), self.data.act_dim), np.float32), obs.astype(np.float32)], 1)
        return self.data.x_norm.normalize(x)[:, self.data.act_dim:]

    def conditions(self, obs: np.ndarray, goals: Optional[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inpainting mask and values [N, H, D] for states obs (and goals) in raw coordinates."""
        n, A, H = len(obs), self.data.act_dim, self.model.horizon
        mask = torch.zeros(n, H, self.D, dtype=torch.bool, device=self.device)
        values = torch.zeros(n, H, self.D, device=self.device)
        mask[:, 0, A:] = True
        values[:, 0, A:] = torch.as_tensor(self._normalize_obs(obs), device=self.device)
        if goals is not None:  # Diffuser's maze2d target: (x, y, 0, 0)
            g = np.zeros_like(obs, dtype=np.float32)
            g[:, :2] = goals
            mask[:, -1, A:] = True
            values[:, -1, A:] = torch.as_tensor(self._normalize_obs(g), device=self.device)
        return mask, values

    def sample(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A plan per row of (mask, values). Unguided plans are the captured function's static output: read them
        before the next plan."""
        c = self.config
        self.model.eval()
        if self.model.value is None or c.guide_scale <= 0 or c.n_guide_steps <= 0:
            return self.plan_unguided(mask, values)
        return self.model.sample(mask, values, c.n_sample_steps, c.sample_eta, c.guide_scale, c.n_guide_steps,
                                 c.t_stopgrad, c.scale_grad_by_std, self.autocast)

    @torch.no_grad()
    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        if self.data.goal_conditioned:
            action = self._act_goal(obs)
        else:
            action = self._act_reward(obs)
        self.t += 1
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _act_goal(self, obs: np.ndarray) -> np.ndarray:
        every = self.config.replan_every
        if self.plan is None or (every > 0 and self.t - self.t_plan >= every):
            x = self.sample(*self.conditions(obs, self.goals))
            self.plan = self.data.x_norm.unnormalize(x.float().cpu().numpy())[:, :, self.data.act_dim:]
            self.t_plan = self.t
        k = self.t - self.t_plan + 1  # index of the next planned state
        if k < self.model.horizon:
            target = self.plan[:, k]
        else:  # plan used up: hold the goal
            target = np.concatenate([self.goals, np.zeros((len(obs), 2), np.float32)], 1)
        return (target[:, :2] - obs[:, :2]) + (target[:, 2:4] - obs[:, 2:4])

    def _act_reward(self, obs: np.ndarray) -> np.ndarray:
        n, k = len(obs), max(1, self.config.n_plans)
        mask, values = self.conditions(np.repeat(obs, k, 0), None)
        x = self.sample(mask, values)
        if self.model.value is not None and k > 1:
            with self.autocast:
                v = self.model.value_of(x, 0).view(n, k)
            best = v.argmax(1)
        else:
            best = torch.zeros(n, dtype=torch.long, device=x.device)
        x = x.view(n, k, self.model.horizon, self.D)[torch.arange(n, device=x.device), best]
        return self.data.x_norm.unnormalize(x[:, 0].float().cpu().numpy())[:, :self.data.act_dim]


# ============================================================================ main
def main(config: TrainConfig) -> dict:
    task = get_task(config.task)  # unknown task: one clear line
    require_evaluation(task)  # a D4RL task without gym/d4rl fails now, not after training
    device = resolve_device(config.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest 1-D convolutions
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (convolutions use TF32 already)
    if device.type == "cpu" and config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    set_seed(config.seed)
    run_dir = prepare_run_dir(config, "diffuser")
    data = load_data(config, device)
    model = Diffuser(config, data.obs_dim, data.act_dim).to(device)
    ema = EMA(model, config.ema_decay)
    step, elapsed, state = resume(config, data, model, ema, run_dir, device)
    print(f"[diffuser] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device_name(device)}")
    logger = Logger(config, "diffuser", run_dir, config.wandb_mode, config.project)

    policy = DiffuserPolicy(ema.model, data, config, device)  # one policy: its CUDA graphs persist (EMA weights)

    def run_eval(episodes: int, on: str | Task = task):
        return evaluate(on, policy, episodes, config.eval_seed, num_envs=config.num_eval_envs,
                        progress=sys.stderr.isatty())

    stages, checkpoint = training_stages(config, data, model, ema, device, state)
    steps, train_wall = train_loop("diffuser", config, run_dir, logger, stages, step, checkpoint, run_eval,
                                   elapsed=elapsed)
    result = run_eval(config.eval_episodes)
    return finish_run("diffuser", config, run_dir, logger, data.info, result, steps, train_wall, device_name(device),
                      evaluate_on=lambda other: run_eval(config.eval_episodes, other))


if __name__ == "__main__":
    run_main(main, TrainConfig)
