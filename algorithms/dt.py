"""Decision Transformer (Chen, Lu, Rajeswaran et al., NeurIPS 2021, arXiv 2106.01345), CORL style, in one file.

A GPT over the interleaved tokens (R_1, s_1, a_1, ..., R_K, s_K, a_K) of the last K steps, causally masked, that
predicts a_t from the output at s_t. Every token embedding gets the timestep embedding added and, when DT is given
the goal, a goal embedding too. Who gets the goal is the task's protocol (shared.tasks.goal_input): on maze2d-* DT
sees (observation, return-to-go of the dataset's sparse reward at the fixed evaluation goal) only, as CORL's DT; on
multi2d-*, and on maze2d-* with ``goal_input: true`` (the ``dt-goal`` variant of benchmarks/run.py), it is
goal-conditioned.
With the goal: R_t is the hindsight goal-reaching return-to-go discount^(steps until within 0.45 of the trajectory's
collection goal infos/goal) in [0, 1] (shared.buffer.goal_returns_to_go, the same R as MAGE); evaluation conditions
on R = target_return (1.0: "at the goal") at every step and on the env's goal.
Without the goal: R_t is the undiscounted return-to-go of the dataset rewards times reward_scale; evaluation starts
from target_return and subtracts the rewards received, as in the paper.
Run:  python algorithms/dt.py --config configs/dt/maze2d-umaze.yaml [--field value ...]
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from shared.buffer import Normalizer, SegmentBuffer, goal_returns_to_go, returns_to_go, split_trajectories  # noqa: E402
from shared.datasets import load_dataset  # noqa: E402
from shared.evaluation import evaluate, require_evaluation  # noqa: E402
from shared.logger import Logger, finish_run, prepare_run_dir  # noqa: E402
from shared.tasks import algo_inputs, get_task, goal_input, goal_radius  # noqa: E402
from shared.training import (  # noqa: E402
    Stage, captured, load_optimizer, make_optimizer, make_step, resume_point, train_loop, use_graphs,
)
from shared.utils import (  # noqa: E402
    RunError, check_data_fits, device_name, load_latest_checkpoint, resolve_device, rng_state, run_main, set_seed,
)


# ============================================================================ config
@dataclass
class TrainConfig:
    # --- run
    task: str = "maze2d-umaze"  # task name from shared/tasks.py (embedded maze2d-*/multi2d-* or a D4RL name)
    seed: int = 0  # training seed (model, sampling)
    eval_seed: int = 1000  # first evaluation episode seed; episode i uses eval_seed + i
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"; asking for cuda without a GPU is an error
    out_dir: str = "runs"  # run folder root: checkpoints, metrics.jsonl and final.json go to out_dir/dt/task/seedK
    results_path: Optional[str] = None  # also write the final metrics JSON here (e.g. benchmarks/results/...)
    resume: bool = False  # continue from the newest checkpoint in the run folder
    wandb_mode: str = "offline"  # "online", "offline" or "disabled" (WANDB_MODE overrides)
    project: str = "mage-suite"  # W&B project
    # --- data
    dataset_path: Optional[str] = None  # a D4RL-format HDF5 file to train on instead of the task's default data
    dataset_size: Optional[int] = None  # transitions of embedded data to generate/use (None: the task's full size)
    dataset_seed: int = 0  # seed of the embedded dataset generator
    goal_input: Optional[bool] = None  # give DT the goal; None: the task's protocol (maze2d no, multi2d yes)
    seq_len: int = 20  # K: time steps in the context (3K tokens)
    episode_len: int = 1000  # timestep embeddings cover max(episode_len, task episode length, longest trajectory)
    discount: float = 0.99  # with the goal: R_t = discount^(steps to the goal) (without: undiscounted RTG)
    goal_radius: Optional[float] = None  # with the goal: where the hindsight goal counts as reached; None: the task's
    reward_scale: float = 0.001  # without the goal: returns-to-go are multiplied by this (with the goal: unused)
    # --- model
    embedding_dim: int = 128  # transformer width
    n_layers: int = 3  # transformer blocks
    n_heads: int = 1  # attention heads
    attention_dropout: float = 0.1  # dropout on attention weights
    residual_dropout: float = 0.1  # dropout on each block's residual branches
    embedding_dropout: float = 0.1  # dropout on the token embeddings
    # --- training
    batch_size: int = 64  # segments per step
    steps: int = 100_000  # gradient steps
    lr: float = 1e-4  # AdamW learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 0.25  # gradient norm clip
    warmup_steps: int = 10_000  # linear learning-rate warm-up, then constant (as the paper)
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = True  # CUDA: every training step and the policy's forward run as captured CUDA graphs (CPU: eager)
    log_every: int = 1000  # steps between logged training metrics
    checkpoint_every: int = 20_000  # steps between checkpoints (and at the end)
    # --- evaluation
    eval_every: int = 0  # steps between evaluations during training (0: only at the end)
    eval_episodes: int = 100  # episodes of the final evaluation
    eval_episodes_during: int = 20  # episodes of each evaluation during training
    num_eval_envs: int = 50  # environments stepped together (one batched forward pass per step)
    target_return: float = 1.0  # R at the first step: with the goal in [0, 1] (kept every step); without, raw


# ============================================================================ data
@dataclass
class SequenceData:
    buffer: SegmentBuffer  # segments of states, actions, returns, timesteps (+ goals) of length seq_len
    obs_norm: Normalizer  # state normalisation (saved in checkpoints)
    obs_dim: int
    act_dim: int
    goal_dim: int  # 2 when DT is given the goal (shared.tasks.goal_input), 0 otherwise
    max_timestep: int  # size of the timestep embedding table
    info: dict  # dataset source and recipe, for the results file


def load_data(config: TrainConfig, device: torch.device, obs_norm: Optional[Normalizer] = None) -> SequenceData:
    task = get_task(config.task)
    with_goal = goal_input(task, "dt", config.goal_input)
    data, info = load_dataset(task, dataset_path=config.dataset_path, size=config.dataset_size,
                              seed=config.dataset_seed)
    obs, actions = data["observations"].astype(np.float32), data["actions"].astype(np.float32)
    goals = data["infos/goal"].astype(np.float32) if with_goal else None
    bounds = split_trajectories(data["terminals"], data["timeouts"], goals)  # with the goal: one walk to it each
    check_data_fits(config, bounds)  # e.g. a dataset_size too small for the horizon: one line, before training
    obs_norm = obs_norm or Normalizer.fit(obs)
    timesteps = np.zeros(len(obs), np.int64)
    for start, end in bounds:
        timesteps[start:end] = np.arange(end - start)
    fields = {"states": obs_norm.normalize(obs).astype(np.float32), "actions": actions, "timesteps": timesteps}
    if with_goal:
        radius = goal_radius(task) if config.goal_radius is None else config.goal_radius
        rtg = goal_returns_to_go(obs[:, :2], goals, bounds, radius=radius, discount=config.discount)
        fields["goals"] = obs_norm.goal().normalize(goals).astype(np.float32)
    else:
        rtg = returns_to_go(data["rewards"], bounds, 1.0) * config.reward_scale
    fields["returns"] = rtg[:, None].astype(np.float32)
    max_timestep = max(config.episode_len, task.max_episode_steps, int((bounds[:, 1] - bounds[:, 0]).max()))
    buffer = SegmentBuffer(fields, bounds, config.seq_len, device)
    print(f"[dt] {config.task}: {len(obs):,} transitions, {buffer.num_trajectories:,} trajectories, "
          f"data = {info['source']}; inputs: {algo_inputs(task, 'dt', config.goal_input)}")
    return SequenceData(buffer, obs_norm, obs.shape[1], actions.shape[1], 2 if with_goal else 0,
                        max_timestep, info)


# ============================================================================ model
class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, attention_dropout: float, residual_dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise RunError(f"embedding_dim ({d}) must be divisible by n_heads ({heads})")
        self.heads, self.attention_dropout = heads, attention_dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(residual_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # is_causal: token i attends to tokens j <= i only
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class Block(nn.Module):
    """Pre-norm GPT block."""

    def __init__(self, d: int, heads: int, attention_dropout: float, residual_dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, attention_dropout, residual_dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(residual_dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DecisionTransformer(nn.Module):
    def __init__(self, config: TrainConfig, state_dim: int, act_dim: int, goal_dim: int, max_timestep: int) -> None:
        super().__init__()
        d = config.embedding_dim
        self.max_timestep = max_timestep
        self.timestep_emb = nn.Embedding(max_timestep, d)
        self.state_emb = nn.Linear(state_dim, d)
        self.action_emb = nn.Linear(act_dim, d)
        self.return_emb = nn.Linear(1, d)
        self.goal_emb = nn.Linear(goal_dim, d) if goal_dim else None
        self.emb_norm = nn.LayerNorm(d)
        self.emb_drop = nn.Dropout(config.embedding_dropout)
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.attention_dropout, config.residual_dropout)
                                    for _ in range(config.n_layers))
        self.out_norm = nn.LayerNorm(d)
        self.action_head = nn.Sequential(nn.Linear(d, act_dim), nn.Tanh())
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def encode(self, states: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, timesteps: torch.Tensor,
               goals: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, T, .] inputs -> transformer outputs of the 3T tokens (R_1, s_1, a_1, R_2, ...), [B, 3T, d]."""
        B, T = states.shape[:2]
        extra = self.timestep_emb(timesteps.clamp(0, self.max_timestep - 1))
        if self.goal_emb is not None:
            extra = extra + self.goal_emb(goals)
        tokens = torch.stack([self.return_emb(returns), self.state_emb(states), self.action_emb(actions)], 2)
        h = (tokens + extra.unsqueeze(2)).reshape(B, 3 * T, -1)
        h = self.emb_drop(self.emb_norm(h))
        for block in self.blocks:
            h = block(h)
        return self.out_norm(h)

    def forward(self, states, actions, returns, timesteps, goals=None) -> torch.Tensor:
        """Predicted a_t [B, T, act_dim] from the output at s_t (which sees R_<=t, s_<=t, a_<t)."""
        h = self.encode(states, actions, returns, timesteps, goals)
        return self.action_head(h[:, 1::3])


def dt_loss(model: DecisionTransformer, batch: dict) -> tuple[torch.Tensor, dict]:
    pred = model(batch["states"], batch["actions"], batch["returns"], batch["timesteps"], batch.get("goals"))
    mask = batch["mask"]
    err = (pred.float() - batch["actions"].float()).pow(2).mean(-1)
    loss = (err * mask).sum() / mask.sum().clamp_min(1.0)
    return loss, {"dt/action_mse": loss.detach()}  # a tensor: no sync per step


# ============================================================================ training
def update(model: DecisionTransformer, optimizer: torch.optim.Optimizer, batch: dict, config: TrainConfig) -> dict:
    """One gradient step on a batch of segments; stats are tensors (no host sync: the step can be captured as a
    CUDA graph)."""
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and batch["states"].is_cuda):
        loss, stats = dt_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    # the rate: a float (eager) or the captured optimiser's device tensor, read at log time
    return {**stats, "train/loss": loss.detach(), "train/grad_norm": grad_norm,
            "train/lr": optimizer.param_groups[0]["lr"]}


def training_stages(config: TrainConfig, data: SequenceData, model: DecisionTransformer, device: torch.device,
                    saved: Optional[dict] = None) -> tuple[list[Stage], Callable[[], dict]]:
    """One stage of ``config.steps`` updates for shared.training.train_loop, and the checkpoint contents."""
    graphs = use_graphs(config.compile, device)
    optimizer = make_optimizer(model.parameters(), config.lr, "adamw", graphs, betas=tuple(config.betas),
                               weight_decay=config.weight_decay)
    if saved is not None:
        load_optimizer(optimizer, saved["optimizer"])

    def lr(i: int) -> float:  # linear warm-up over warmup_steps, then constant (as the paper)
        return config.lr * min(1.0, (i + 1) / max(1, config.warmup_steps))

    def begin():
        return make_step(lambda batch: update(model, optimizer, batch, config),
                         lambda: data.buffer.sample(config.batch_size), [optimizer], lr=lr, graph=graphs)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                "config": vars(config).copy(), "obs_norm": data.obs_norm.state_dict()}

    return [Stage("train", config.steps, begin)], checkpoint


# ============================================================================ evaluation
class DTPolicy:
    """Keeps each env's history of (R, s, a, t) and acts on the last K steps (shared.evaluation's Policy protocol).

    The envs of a batch step in lockstep, so one history length serves all of them. On CUDA with ``compile`` the
    forward is a CUDA graph per input shape (history lengths 1..K, per batch size), replayed on the live weights:
    keep one policy for every evaluation of a run.
    """

    def __init__(self, model: DecisionTransformer, data: SequenceData, config: TrainConfig,
                 device: torch.device) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        self.forward = captured(self._forward, use_graphs(config.compile, device))

    def _forward(self, states: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, timesteps: torch.Tensor,
                 goals: torch.Tensor) -> torch.Tensor:
        """[N, T, .] history -> the action at its last step [N, act_dim] (fp32). ``goals`` is [N, T, 0] on reward
        tasks (tensors only: a captured function takes no None), which the model without goal embedding ignores."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.bf16 and states.is_cuda):
            return self.model(states, actions, returns, timesteps, goals)[:, -1].float()

    def reset(self, goals: np.ndarray) -> None:
        n, K, dev = len(goals), self.config.seq_len, self.device
        self.goals = torch.as_tensor(self.data.obs_norm.goal().normalize(goals), dtype=torch.float32, device=dev)
        if not self.data.goal_dim:
            self.goals = self.goals[:, :0]
        self.states = torch.zeros(n, 0, self.data.obs_dim, device=dev)
        self.actions = torch.zeros(n, 0, self.data.act_dim, device=dev)
        self.returns = torch.zeros(n, 0, 1, device=dev)
        self.rtg = torch.full((n, 1), float(self.config.target_return), device=dev)
        if not self.data.goal_dim:
            self.rtg = self.rtg * self.config.reward_scale
        self.t, self.K = 0, K

    @torch.no_grad()
    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        dev, K = self.device, self.K
        if self.t > 0 and not self.data.goal_dim:  # reward-to-go falls with the rewards received
            r = torch.as_tensor(last_rewards, dtype=torch.float32, device=dev)[:, None]
            self.rtg = self.rtg - r * self.config.reward_scale
        s = self.data.obs_norm.normalize(torch.as_tensor(obs, dtype=torch.float32, device=dev))
        n = len(s)
        # append this step with a placeholder action (a_t's token comes after s_t: causally invisible to it)
        self.states = torch.cat([self.states, s[:, None]], 1)[:, -K:]
        self.returns = torch.cat([self.returns, self.rtg[:, None]], 1)[:, -K:]
        self.actions = torch.cat([self.actions, torch.zeros(n, 1, self.data.act_dim, device=dev)], 1)[:, -K:]
        T = self.states.shape[1]
        timesteps = torch.arange(self.t - T + 1, self.t + 1, device=dev).expand(n, T)
        goals = self.goals[:, None].expand(n, T, -1)
        self.model.eval()
        a = self.forward(self.states, self.actions, self.returns, timesteps, goals).clamp(-1.0, 1.0)
        self.actions[:, -1] = a
        self.t += 1
        return a.cpu().numpy()


# ============================================================================ main
def main(config: TrainConfig) -> dict:
    task = get_task(config.task)  # unknown task: one clear line
    require_evaluation(task)  # a D4RL task without gym/d4rl fails now, not after training
    config.goal_input = goal_input(task, "dt", config.goal_input)  # resolved: the results say what DT was given
    device = resolve_device(config.device)
    set_seed(config.seed)
    run_dir = prepare_run_dir(config, "dt")
    state = load_latest_checkpoint(run_dir, map_location=device) if config.resume else None
    obs_norm = Normalizer.from_state_dict(state["obs_norm"]) if state else None
    data = load_data(config, device, obs_norm)
    model = DecisionTransformer(config, data.obs_dim, data.act_dim, data.goal_dim, data.max_timestep).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    step, elapsed = resume_point(state, "dt", run_dir)
    print(f"[dt] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device_name(device)}")
    logger = Logger(config, "dt", run_dir, config.wandb_mode, config.project)

    policy = DTPolicy(model, data, config, device)  # one policy: its CUDA graphs persist across evaluations

    def run_eval(episodes: int):
        return evaluate(task, policy, episodes, config.eval_seed, num_envs=config.num_eval_envs)

    stages, checkpoint = training_stages(config, data, model, device, state)
    steps, train_wall = train_loop("dt", config, run_dir, logger, stages, step, checkpoint, run_eval, elapsed=elapsed)
    result = run_eval(config.eval_episodes)
    return finish_run("dt", config, run_dir, logger, data.info, result, steps, train_wall, device_name(device))


if __name__ == "__main__":
    run_main(main, TrainConfig)
