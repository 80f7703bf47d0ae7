"""Behaviour cloning and top-return-filtered BC ("10% BC", Chen et al. 2021), CORL style, in one file.

An MLP maps the normalised state (plus, when given the goal, the normalised goal) to an action, trained by MSE to
the dataset action (``policy: mse``, CORL's BC) or by the likelihood of a tanh-Gaussian (``policy: gaussian``).
Which tasks give the goal is the task's protocol (shared.tasks.goal_input): on maze2d-* BC sees the state only, as
D4RL's and CORL's BC; on multi2d-* it is goal-conditioned. ``goal_input: true`` makes it goal-conditioned on maze2d
too (the ``bc-goal`` variant of benchmarks/run.py): during training the goal is the collection goal ``infos/goal``
of each trajectory (hindsight), at evaluation the goal the env hands to ``Policy.reset``.
``filter_top_fraction`` < 1 keeps only the trajectories with the highest returns (sum of dataset rewards, CORL's
``keep_best_trajectories``); their results carry the algorithm name ``bc<percent>`` (e.g. ``bc10``), while the run
folder stays out_dir/bc/task/seedK (benchmarks/run.py gives each variant its own out_dir).
Run:  python algorithms/bc.py --config configs/bc/maze2d-umaze.yaml [--field value ...]
"""

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from shared.buffer import Normalizer, TransitionBuffer, returns_to_go, split_trajectories  # noqa: E402
from shared.datasets import load_dataset  # noqa: E402
from shared.evaluation import evaluate, require_evaluation  # noqa: E402
from shared.logger import Logger, finish_run, prepare_run_dir  # noqa: E402
from shared.tasks import algo_inputs, get_task, goal_input  # noqa: E402
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
    out_dir: str = "runs"  # run folder root: checkpoints, metrics.jsonl and final.json go to out_dir/bc/task/seedK
    results_path: Optional[str] = None  # also write the final metrics JSON here (e.g. benchmarks/results/...)
    resume: bool = False  # continue from the newest checkpoint in the run folder
    wandb_mode: str = "offline"  # "online", "offline" or "disabled" (WANDB_MODE overrides)
    project: str = "mage-suite"  # W&B project
    # --- data
    dataset_path: Optional[str] = None  # a D4RL-format HDF5 file to train on instead of the task's default data
    dataset_size: Optional[int] = None  # transitions of embedded data to generate/use (None: the task's full size)
    dataset_seed: int = 0  # seed of the embedded dataset generator
    filter_top_fraction: float = 1.0  # keep the trajectories with the top returns (0.1 = 10 percent BC; 1.0 = all)
    goal_input: Optional[bool] = None  # give the policy the goal; None: the task's protocol (maze2d no, multi2d yes)
    # --- model
    policy: str = "mse"  # "mse": deterministic tanh MLP (CORL's BC); "gaussian": tanh-Gaussian, max likelihood
    hidden_dim: int = 256  # width of the MLP's hidden layers
    n_layers: int = 2  # hidden layers of the MLP
    dropout: float = 0.0  # dropout after every hidden layer
    # --- training
    batch_size: int = 256  # transitions per step
    steps: int = 1_000_000  # gradient steps
    lr: float = 3e-4  # Adam learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 0.0  # gradient norm clip (0: none)
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = True  # CUDA: every training step and the policy's forward run as captured CUDA graphs (CPU: eager)
    log_every: int = 1000  # steps between logged training metrics
    checkpoint_every: int = 50_000  # steps between checkpoints (and at the end)
    # --- evaluation
    eval_every: int = 0  # steps between evaluations during training (0: only at the end)
    eval_episodes: int = 100  # episodes of the final evaluation
    eval_episodes_during: int = 20  # episodes of each evaluation during training
    num_eval_envs: int = 50  # environments stepped together (one batched forward pass per step)


def algo_name(config: TrainConfig) -> str:
    """"bc" for plain BC, "bc10" for filter_top_fraction 0.1 (the name in the results and W&B)."""
    if not 0.0 < config.filter_top_fraction <= 1.0:
        raise RunError(f"filter_top_fraction must be in (0, 1], got {config.filter_top_fraction}")
    return "bc" if config.filter_top_fraction >= 1.0 else f"bc{round(100 * config.filter_top_fraction):g}"


# ============================================================================ data
@dataclass
class BCData:
    buffer: TransitionBuffer  # fields inputs [N, in_dim] (normalised state [+ goal]) and actions [N, act_dim]
    obs_norm: Normalizer  # state normalisation (saved in checkpoints)
    obs_dim: int
    act_dim: int
    in_dim: int  # policy input width: obs_dim (+ 2 goal coordinates when given the goal)
    goal_conditioned: bool  # whether the policy is given the goal (shared.tasks.goal_input)
    info: dict  # dataset source and recipe, for the results file


def keep_top_trajectories(rewards: np.ndarray, bounds: np.ndarray, fraction: float) -> np.ndarray:
    """Bounds of the ceil(fraction * n) trajectories with the highest undiscounted returns (ties: earlier first)."""
    if fraction >= 1.0:
        return bounds
    returns = returns_to_go(rewards, bounds, 1.0)[bounds[:, 0]]
    keep = max(1, math.ceil(fraction * len(bounds)))
    order = np.argsort(-returns, kind="stable")[:keep]
    return bounds[np.sort(order)]


def load_data(config: TrainConfig, device: torch.device, obs_norm: Optional[Normalizer] = None) -> BCData:
    """Dataset -> (optionally) top trajectories -> normalised (state [, hindsight goal], action) pairs."""
    task = get_task(config.task)
    with_goal = goal_input(task, "bc", config.goal_input)
    data, info = load_dataset(task, dataset_path=config.dataset_path, size=config.dataset_size,
                              seed=config.dataset_seed)
    obs, actions = data["observations"].astype(np.float32), data["actions"].astype(np.float32)
    bounds = split_trajectories(data["terminals"], data["timeouts"])
    check_data_fits(config, bounds)  # e.g. a dataset_size too small for the horizon: one line, before training
    kept = keep_top_trajectories(data["rewards"], bounds, config.filter_top_fraction)
    rows = np.concatenate([np.arange(s, e) for s, e in kept])
    obs_norm = obs_norm or Normalizer.fit(obs)  # statistics of the full dataset, as CORL
    inputs = obs_norm.normalize(obs[rows])
    if with_goal:
        goals = data["infos/goal"][rows].astype(np.float32)  # hindsight goal: where the collector was driving
        inputs = np.concatenate([inputs, obs_norm.goal().normalize(goals)], 1)
    inputs = inputs.astype(np.float32)
    lengths = kept[:, 1] - kept[:, 0]
    new_bounds = np.stack([np.cumsum(lengths) - lengths, np.cumsum(lengths)], 1)
    buffer = TransitionBuffer({"inputs": inputs, "actions": actions[rows]}, new_bounds, device)
    print(f"[bc] {config.task}: {len(rows):,} of {len(obs):,} transitions ({len(kept):,} of {len(bounds):,} "
          f"trajectories), data = {info['source']}; inputs: {algo_inputs(task, 'bc', config.goal_input)}")
    return BCData(buffer, obs_norm, obs.shape[1], actions.shape[1], inputs.shape[1], with_goal, info)


# ============================================================================ model
class Actor(nn.Module):
    """MLP policy. ``mse``: a = tanh(f(x)). ``gaussian``: a = tanh(u), u ~ N(f(x), exp(log_std(x))^2)."""

    def __init__(self, in_dim: int, act_dim: int, hidden: int, n_layers: int, dropout: float, kind: str) -> None:
        super().__init__()
        if kind not in ("mse", "gaussian"):
            raise RunError(f"policy must be 'mse' or 'gaussian', got '{kind}'")
        self.kind, self.act_dim = kind, act_dim
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(hidden if n_layers else in_dim, act_dim * (2 if kind == "gaussian" else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic action in [-1, 1] (the Gaussian's tanh(mean))."""
        return torch.tanh(self.head(self.trunk(x))[..., : self.act_dim])

    def loss(self, x: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.head(self.trunk(x)).float()
        if self.kind == "mse":
            mse = (torch.tanh(out) - actions).pow(2).mean()
            return mse, {"bc/mse": mse.detach()}
        mean, log_std = out.chunk(2, -1)
        log_std = log_std.clamp(-5.0, 2.0)
        a = actions.clamp(-1 + 1e-4, 1 - 1e-4)
        u = torch.atanh(a)
        # log N(u; mean, std) - log|d tanh(u)/du|: the tanh-Gaussian's density at the dataset action
        logp = torch.distributions.Normal(mean, log_std.exp(), validate_args=False).log_prob(u) - torch.log1p(-a.pow(2))
        nll = -logp.sum(-1).mean()
        mse = (torch.tanh(mean) - actions).pow(2).mean()
        return nll, {"bc/nll": nll.detach(), "bc/mse": mse.detach()}


# ============================================================================ training
def update(actor: Actor, optimizer: torch.optim.Optimizer, batch: dict, config: TrainConfig) -> dict:
    """One gradient step on a batch; stats are tensors (no host sync: the step can be captured as a CUDA graph)."""
    actor.train()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and batch["inputs"].is_cuda):
        loss, stats = actor.loss(batch["inputs"], batch["actions"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(actor.parameters(), config.grad_clip or float("inf"))
    optimizer.step()
    return {**stats, "train/loss": loss.detach(), "train/grad_norm": grad_norm}


def training_stages(config: TrainConfig, data: BCData, actor: Actor, device: torch.device,
                    saved: Optional[dict] = None) -> tuple[list[Stage], Callable[[], dict]]:
    """One stage of ``config.steps`` updates for shared.training.train_loop, and the checkpoint contents."""
    graphs = use_graphs(config.compile, device)
    optimizer = make_optimizer(actor.parameters(), config.lr, "adamw", graphs, weight_decay=config.weight_decay)
    if saved is not None:
        load_optimizer(optimizer, saved["optimizer"])

    def begin():
        return make_step(lambda batch: update(actor, optimizer, batch, config),
                         lambda: data.buffer.sample(config.batch_size), [optimizer], graph=graphs)

    def checkpoint() -> dict:
        return {"model": actor.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                "config": vars(config).copy(), "obs_norm": data.obs_norm.state_dict()}

    return [Stage("train", config.steps, begin)], checkpoint


# ============================================================================ evaluation
class BCPolicy:
    """Acts with the MLP on the normalised observation (and goal): shared.evaluation's Policy protocol."""

    def __init__(self, actor: Actor, data: BCData, config: TrainConfig, device: torch.device) -> None:
        self.actor, self.data, self.config, self.device = actor, data, config, device
        self.forward = captured(self._forward, use_graphs(config.compile, device))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.bf16 and x.is_cuda):
            return self.actor(x).float()

    def reset(self, goals: np.ndarray) -> None:
        self.goal_n = self.data.obs_norm.goal().normalize(goals).astype(np.float32)

    @torch.no_grad()
    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        x = self.data.obs_norm.normalize(obs.astype(np.float32))
        if self.data.goal_conditioned:
            x = np.concatenate([x, self.goal_n], 1)
        self.actor.eval()
        a = self.forward(torch.as_tensor(x, dtype=torch.float32, device=self.device))
        return np.clip(a.cpu().numpy(), -1.0, 1.0)


# ============================================================================ main
def main(config: TrainConfig) -> dict:
    task = get_task(config.task)  # unknown task: one clear line
    require_evaluation(task)  # a D4RL task without gym/d4rl fails now, not after training
    config.goal_input = goal_input(task, "bc", config.goal_input)  # resolved: the results say what BC was given
    algo = algo_name(config)
    device = resolve_device(config.device)
    set_seed(config.seed)
    run_dir = prepare_run_dir(config, "bc")
    state = load_latest_checkpoint(run_dir, map_location=device) if config.resume else None
    obs_norm = Normalizer.from_state_dict(state["obs_norm"]) if state else None
    data = load_data(config, device, obs_norm)
    actor = Actor(data.in_dim, data.act_dim, config.hidden_dim, config.n_layers, config.dropout,
                  config.policy).to(device)
    if state is not None:
        actor.load_state_dict(state["model"])  # the same key as the other algorithms
    step, elapsed = resume_point(state, algo, run_dir)
    print(f"[{algo}] {sum(p.numel() for p in actor.parameters()) / 1e6:.2f}M parameters on {device_name(device)}")
    logger = Logger(config, algo, run_dir, config.wandb_mode, config.project)

    policy = BCPolicy(actor, data, config, device)

    def run_eval(episodes: int):
        return evaluate(task, policy, episodes, config.eval_seed, num_envs=config.num_eval_envs)

    stages, checkpoint = training_stages(config, data, actor, device, state)
    steps, train_wall = train_loop(algo, config, run_dir, logger, stages, step, checkpoint, run_eval, elapsed=elapsed)
    result = run_eval(config.eval_episodes)
    return finish_run(algo, config, run_dir, logger, data.info, result, steps, train_wall, device_name(device))


if __name__ == "__main__":
    run_main(main, TrainConfig)
