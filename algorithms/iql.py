"""IQL: Implicit Q-Learning (Kostrikov, Nair, Levine, ICLR 2022, arXiv 2110.06169), CORL style, in one file.

V is fit by expectile regression to min(Q1, Q2) of the target critics (never querying unseen actions), the twin Q
by TD to r + discount * V(s'), and the actor by advantage-weighted regression, weight exp(beta * (Q - V)) <= 100.
Who gets the goal is the task's protocol (shared.tasks.goal_input). On maze2d-* IQL sees (observation, reward)
only, as D4RL's and CORL's IQL: the dataset's sparse reward, 1 within 0.45 of the fixed evaluation goal after the
step (the evaluation env's reward), no terminals. On multi2d-*, and on maze2d-* with ``goal_input: true`` (the
``iql-goal`` variant of benchmarks/run.py), it trains goal-conditioned with hindsight goals: each sampled transition
gets the trajectory's collection goal (infos/goal) or, with p_future_goal / p_random_goal, a later state of the same
trajectory (geometric offset) or a random dataset state; the episode ends when s' lies within goal_radius of the
goal, and the reward is 0 there and -1 elsewhere (the paper's antmaze convention r - 1: advantages of order 1, which
beta is tuned for; a 0/1 reward gives advantages of order 1 - discount and makes the actor plain BC).
(choice) Future-state goals are off by default: the evaluation rewards every step spent at the goal, the collection
goals show the controller stopping there while future states are passed through, and on the 50k umaze slice
(CPU, 10k steps) p_future_goal 0.3 scored 55.5 against 91.9 without.
Without the goal (maze2d, D4RL tasks) IQL uses the dataset rewards, scaled as in the paper (locomotion:
1000 / (max - min return); antmaze: r - 1; maze2d: as stored, as CORL).
Run:  python algorithms/iql.py --config configs/iql/maze2d-umaze.yaml [--field value ...]
"""

import copy
import math
import sys
from dataclasses import dataclass, field
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
from shared.tasks import algo_inputs, get_task, goal_input, goal_radius  # noqa: E402
from shared.training import (  # noqa: E402
    Stage, captured, expectile_loss, fused, load_optimizer, make_optimizer, make_step, resume_point, soft_update,
    train_loop, use_graphs,
)
from shared.utils import (  # noqa: E402
    RunError, check_data_fits, device_name, load_latest_checkpoint, resolve_device, rng_state, run_main, set_seed,
)


# ============================================================================ config
@dataclass
class TrainConfig:
    # --- run
    task: str = "maze2d-umaze"  # task name from shared/tasks.py (embedded maze2d-*/multi2d-* or a D4RL name)
    seed: int = 0  # training seed (models, sampling, relabelling)
    eval_seed: int = 1000  # first evaluation episode seed; episode i uses eval_seed + i
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"; asking for cuda without a GPU is an error
    out_dir: str = "runs"  # run folder root: checkpoints, metrics.jsonl and final.json go to out_dir/iql/task/seedK
    results_path: Optional[str] = None  # also write the final metrics JSON here (e.g. benchmarks/results/...)
    resume: bool = False  # continue from the newest checkpoint in the run folder
    wandb_mode: str = "offline"  # "online", "offline" or "disabled" (WANDB_MODE overrides)
    project: str = "mage-suite"  # W&B project
    # --- data
    dataset_path: Optional[str] = None  # a D4RL-format HDF5 file to train on instead of the task's default data
    dataset_size: Optional[int] = None  # transitions of embedded data to generate/use (None: the task's full size)
    dataset_seed: int = 0  # seed of the embedded dataset generator
    goal_input: Optional[bool] = None  # give the networks the goal; None: the task's protocol (maze2d no, multi2d yes)
    normalize_reward: bool = False  # without the goal: rewards times 1000 / (max - min trajectory return) (locomotion)
    reward_bias: float = 0.0  # without the goal: added to every reward after scaling (antmaze: -1)
    goal_radius: Optional[float] = None  # with the goal: reward 1 within this distance; None: the task's (0.45/0.5)
    p_data_goal: float = 1.0  # with the goal: share of samples whose goal is the trajectory's collection goal
    p_future_goal: float = 0.0  # with the goal: share whose goal is a later state of the same trajectory
    p_random_goal: float = 0.0  # with the goal: share whose goal is a random dataset state
    # --- model
    hidden_dim: int = 256  # width of the hidden layers of actor, critics and value
    n_layers: int = 2  # hidden layers of every MLP
    actor_dropout: float = 0.0  # dropout in the actor's hidden layers
    deterministic_actor: bool = False  # MSE-weighted deterministic actor instead of the Gaussian one
    # --- training
    batch_size: int = 256  # transitions per step
    steps: int = 1_000_000  # gradient steps
    actor_lr: float = 3e-4  # Adam learning rate of the actor (cosine-decayed to 0 over the run, as the paper)
    qf_lr: float = 3e-4  # Adam learning rate of the twin Q
    vf_lr: float = 3e-4  # Adam learning rate of V
    discount: float = 0.99  # discount factor
    tau: float = 0.005  # Polyak rate of the target Q networks
    expectile: float = 0.7  # expectile of V's regression onto Q (0.7 locomotion, 0.9 antmaze)
    beta: float = 3.0  # inverse temperature of the advantage weights (3 locomotion, 10 antmaze)
    exp_adv_max: float = 100.0  # advantage weights are clipped to this
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = True  # CUDA: every training step and the policy's forward run as captured CUDA graphs (CPU: eager)
    inductor: bool = False  # CUDA + compile: also fuse the losses with torch.compile (shared.training.fused): a
    # replayed step of these small MLPs is ~0.7 ms of ~150 short kernels, 1M steps 11-19 min on an H100
    log_every: int = 1000  # steps between logged training metrics
    checkpoint_every: int = 50_000  # steps between checkpoints (and at the end)
    # --- evaluation
    eval_every: int = 0  # steps between evaluations during training (0: only at the end)
    eval_episodes: int = 100  # episodes of the final evaluation
    eval_episodes_during: int = 20  # episodes of each evaluation during training
    num_eval_envs: int = 50  # environments stepped together (one batched forward pass per step)


# ============================================================================ data
@dataclass
class IQLData:
    buffer: TransitionBuffer  # fields observations (normalised), actions, index; with the goal: pos, goal, traj_last
    obs_norm: Normalizer  # state normalisation (saved in checkpoints)
    obs_dim: int
    act_dim: int
    goal_conditioned: bool  # whether the networks are given the goal (shared.tasks.goal_input)
    info: dict  # dataset source and recipe, for the results file
    goal_radius: float  # config.goal_radius, or the task's (shared.tasks.goal_radius)
    # obs_norm.goal() with device tensors, made once: relabelling then copies nothing host -> device
    pos_norm: Normalizer = field(init=False)

    def __post_init__(self) -> None:
        pos = self.obs_norm.goal()
        self.pos_norm = Normalizer(torch.as_tensor(pos.mean, device=self.buffer.device),
                                   torch.as_tensor(pos.std, device=self.buffer.device))

    @property
    def in_dim(self) -> int:
        """Input width of V, Q (before the action) and the actor: obs_dim, + 2 goal coordinates with the goal."""
        return self.obs_dim + (2 if self.goal_conditioned else 0)


def load_data(config: TrainConfig, device: torch.device, obs_norm: Optional[Normalizer] = None) -> IQLData:
    task = get_task(config.task)
    with_goal = goal_input(task, "iql", config.goal_input)
    data, info = load_dataset(task, dataset_path=config.dataset_path, size=config.dataset_size,
                              seed=config.dataset_seed)
    obs, actions = data["observations"].astype(np.float32), data["actions"].astype(np.float32)
    goals = data["infos/goal"].astype(np.float32) if with_goal else None
    bounds = split_trajectories(data["terminals"], data["timeouts"], goals)  # with the goal: one walk to it each
    check_data_fits(config, bounds)  # e.g. a dataset_size too small for the horizon: one line, before training
    obs_norm = obs_norm or Normalizer.fit(obs)
    n = len(obs)
    fields = {"observations": obs_norm.normalize(obs).astype(np.float32), "actions": actions,
              "index": np.arange(n, dtype=np.int64)}
    if with_goal:
        traj_last = np.zeros(n, np.int64)
        for start, end in bounds:
            traj_last[start:end] = end - 1
        fields.update(pos=obs[:, :2], goal=goals, traj_last=traj_last)
        probs = (config.p_data_goal, config.p_future_goal, config.p_random_goal)
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise RunError(f"p_data_goal, p_future_goal, p_random_goal must be >= 0 and sum to 1, got {probs}")
    else:
        rewards = data["rewards"].astype(np.float32)
        if config.normalize_reward:  # IQL / CORL locomotion: returns span 1000
            rets = returns_to_go(rewards, bounds, 1.0)[bounds[:, 0]]
            rewards = rewards * (1000.0 / max(float(rets.max() - rets.min()), 1e-6))
        fields.update(rewards=rewards + config.reward_bias, terminals=data["terminals"].astype(np.float32))
    buffer = TransitionBuffer(fields, bounds, device)
    print(f"[iql] {config.task}: {n:,} transitions, {len(bounds):,} trajectories, data = {info['source']}; "
          f"inputs: {algo_inputs(task, 'iql', config.goal_input)}")
    radius = goal_radius(task) if config.goal_radius is None else config.goal_radius
    return IQLData(buffer, obs_norm, obs.shape[1], actions.shape[1], with_goal, info, radius)


def sample_batch(data: IQLData, config: TrainConfig) -> dict:
    """(x, a, r, x', done, valid) with x = normalised state [+ normalised goal]; with the goal, relabelled here.

    ``valid`` is 0 on the last step of a trajectory that ended without a terminal / goal: its s' is not stored
    (TransitionBuffer points it at itself), so it gets no TD target.
    """
    b = data.buffer.sample(config.batch_size)
    s, s2 = b["observations"], b["next_observations"]
    if not data.goal_conditioned:
        done = b["terminals"]
        valid = 1.0 - (b["is_last"].float() * (1.0 - done))
        return {"x": s, "x2": s2, "a": b["actions"], "r": b["rewards"], "done": done, "valid": valid}
    f, B, dev = data.buffer.fields, config.batch_size, s.device
    idx = b["index"]
    # future state of the same trajectory: offset ~ Geometric(1 - discount) >= 1, capped at the trajectory's end
    u = torch.rand(B, device=dev).clamp_min(1e-12)
    offset = torch.floor(torch.log(u) / np.log(config.discount)).long() + 1
    future = torch.minimum(idx + offset, b["traj_last"])
    rand = torch.randint(len(data.buffer), (B,), device=dev)
    pick = torch.rand(B, device=dev)
    p_data, p_future = config.p_data_goal, config.p_future_goal
    goal = torch.where((pick < p_data)[:, None], b["goal"],
                       torch.where((pick < p_data + p_future)[:, None], f["pos"][future], f["pos"][rand]))
    next_pos = data.pos_norm.unnormalize(s2[:, :2])
    reached = (torch.linalg.norm(next_pos - goal, dim=-1) <= data.goal_radius).float()
    g = data.pos_norm.normalize(goal)
    valid = 1.0 - (b["is_last"].float() * (1.0 - reached))
    return {"x": torch.cat([s, g], 1), "x2": torch.cat([s2, g], 1), "a": b["actions"], "r": reached - 1.0,
            "done": reached, "valid": valid}


# ============================================================================ model
def mlp(in_dim: int, out_dim: int, hidden: int, n_layers: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden if n_layers else in_dim, out_dim))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    def __init__(self, in_dim: int, act_dim: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.q1 = mlp(in_dim + act_dim, 1, hidden, n_layers)
        self.q2 = mlp(in_dim + act_dim, 1, hidden, n_layers)

    def both(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa = torch.cat([x, a], -1)
        return self.q1(xa).squeeze(-1), self.q2(xa).squeeze(-1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self.both(x, a))


class Actor(nn.Module):
    """Gaussian with tanh mean and state-independent log std (the paper's policy), or deterministic tanh MLP."""

    def __init__(self, in_dim: int, act_dim: int, hidden: int, n_layers: int, dropout: float,
                 deterministic: bool) -> None:
        super().__init__()
        self.net = mlp(in_dim, act_dim, hidden, n_layers, dropout)
        self.deterministic = deterministic
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))

    def neg_log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        mean = self.forward(x).float()
        if self.deterministic:
            return (mean - a).pow(2).sum(-1)
        # no argument validation: it is a host sync (``if not valid.all()``), which a CUDA graph cannot capture
        dist = torch.distributions.Normal(mean, self.log_std.clamp(-5.0, 2.0).exp(), validate_args=False)
        return -dist.log_prob(a).sum(-1)


class IQL(nn.Module):
    def __init__(self, config: TrainConfig, in_dim: int, act_dim: int) -> None:
        super().__init__()
        self.qf = TwinQ(in_dim, act_dim, config.hidden_dim, config.n_layers)
        self.q_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.vf = mlp(in_dim, 1, config.hidden_dim, config.n_layers)
        self.actor = Actor(in_dim, act_dim, config.hidden_dim, config.n_layers, config.actor_dropout,
                           config.deterministic_actor)


def iql_losses(model: IQL, batch: dict, config: TrainConfig) -> tuple[dict, dict]:
    """The three IQL losses on one batch (V uses the target Q; Q uses V(s'); the actor uses Q_target - V)."""
    x, x2, a = batch["x"], batch["x2"], batch["a"]
    with torch.no_grad():
        q_t = model.q_target(x, a).float()
        next_v = model.vf(x2).squeeze(-1).float()
    v = model.vf(x).squeeze(-1).float()
    adv = q_t - v
    v_loss = expectile_loss(adv, config.expectile)
    target = batch["r"] + config.discount * (1.0 - batch["done"]) * next_v
    q1, q2 = model.qf.both(x, a)
    valid = batch["valid"]
    td = ((q1.float() - target).pow(2) + (q2.float() - target).pow(2)) * valid
    q_loss = td.sum() / (2 * valid.sum().clamp_min(1.0))
    weights = torch.exp(config.beta * adv.detach()).clamp(max=config.exp_adv_max)
    actor_loss = (weights * model.actor.neg_log_prob(x, a)).mean()
    stats = {"iql/v_loss": v_loss.detach(), "iql/q_loss": q_loss.detach(), "iql/actor_loss": actor_loss.detach(),
             "iql/v_mean": v.detach().mean(), "iql/adv_mean": adv.detach().mean(),
             "iql/weight_mean": weights.mean(), "iql/reward_mean": batch["r"].mean(),
             "iql/done_mean": batch["done"].mean()}  # tensors: no sync per step
    return {"v": v_loss, "q": q_loss, "actor": actor_loss}, stats


# ============================================================================ training
def update(model: IQL, optimizers: dict, batch: dict, config: TrainConfig) -> dict:
    """One gradient step of V, twin Q and actor on a batch, then the Polyak update of the target Q; stats are
    tensors (no host sync: the step can be captured as a CUDA graph)."""
    model.train()
    losses_fn = fused(iql_losses, config.inductor and config.compile and batch["x"].is_cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and batch["x"].is_cuda):
        losses, stats = losses_fn(model, batch, config)
    loss = losses["v"] + losses["q"] + losses["actor"]  # disjoint parameters: one backward serves all three
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers.values():
        opt.step()
    soft_update(model.q_target, model.qf, config.tau)
    # the actor's rate: a float (eager) or the captured optimiser's device tensor, read at log time
    return {**stats, "train/loss": loss.detach(), "train/actor_lr": optimizers["actor"].param_groups[0]["lr"]}


def training_stages(config: TrainConfig, data: IQLData, model: IQL, device: torch.device,
                    saved: Optional[dict] = None) -> tuple[list[Stage], Callable[[], dict]]:
    """One stage of ``config.steps`` updates for shared.training.train_loop, and the checkpoint contents."""
    graphs = use_graphs(config.compile, device)
    opts = {"v": make_optimizer(model.vf.parameters(), config.vf_lr, "adam", graphs),
            "q": make_optimizer(model.qf.parameters(), config.qf_lr, "adam", graphs),
            "actor": make_optimizer(model.actor.parameters(), config.actor_lr, "adam", graphs)}
    if saved is not None:
        for name, opt in opts.items():
            load_optimizer(opt, saved["optimizers"][name])
    total = max(1, config.steps)

    def actor_lr(i: int) -> float:  # CosineAnnealingLR(T_max=steps, eta_min=0) at step i, as the paper
        return config.actor_lr * 0.5 * (1.0 + math.cos(math.pi * i / total))

    def begin():
        return make_step(lambda batch: update(model, opts, batch, config), lambda: sample_batch(data, config),
                         [opts["actor"]], lr=actor_lr, graph=graphs)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
                "rng": rng_state(), "config": vars(config).copy(), "obs_norm": data.obs_norm.state_dict()}

    return [Stage("train", config.steps, begin)], checkpoint


# ============================================================================ evaluation
class IQLPolicy:
    """Acts with the actor's mean on the normalised observation (and goal): shared.evaluation's Policy protocol."""

    def __init__(self, model: IQL, data: IQLData, config: TrainConfig, device: torch.device) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        self.forward = captured(self._forward, use_graphs(config.compile, device))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.bf16 and x.is_cuda):
            return self.model.actor(x).float()

    def reset(self, goals: np.ndarray) -> None:
        self.goal_n = self.data.obs_norm.goal().normalize(goals).astype(np.float32)

    @torch.no_grad()
    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        x = self.data.obs_norm.normalize(obs.astype(np.float32))
        if self.data.goal_conditioned:
            x = np.concatenate([x, self.goal_n], 1)
        self.model.eval()
        a = self.forward(torch.as_tensor(x, dtype=torch.float32, device=self.device))
        return np.clip(a.cpu().numpy(), -1.0, 1.0)


# ============================================================================ main
def main(config: TrainConfig) -> dict:
    task = get_task(config.task)  # unknown task: one clear line
    require_evaluation(task)  # a D4RL task without gym/d4rl fails now, not after training
    config.goal_input = goal_input(task, "iql", config.goal_input)  # resolved: the results say what IQL was given
    device = resolve_device(config.device)
    set_seed(config.seed)
    run_dir = prepare_run_dir(config, "iql")
    state = load_latest_checkpoint(run_dir, map_location=device) if config.resume else None
    obs_norm = Normalizer.from_state_dict(state["obs_norm"]) if state else None
    data = load_data(config, device, obs_norm)
    model = IQL(config, data.in_dim, data.act_dim).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    step, elapsed = resume_point(state, "iql", run_dir)
    print(f"[iql] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device_name(device)}")
    logger = Logger(config, "iql", run_dir, config.wandb_mode, config.project)

    policy = IQLPolicy(model, data, config, device)  # one policy: its CUDA graphs persist across evaluations

    def run_eval(episodes: int):
        return evaluate(task, policy, episodes, config.eval_seed, num_envs=config.num_eval_envs)

    stages, checkpoint = training_stages(config, data, model, device, state)
    steps, train_wall = train_loop("iql", config, run_dir, logger, stages, step, checkpoint, run_eval, elapsed=elapsed)
    result = run_eval(config.eval_episodes)
    return finish_run("iql", config, run_dir, logger, data.info, result, steps, train_wall, device_name(device))


if __name__ == "__main__":
    run_main(main, TrainConfig)
