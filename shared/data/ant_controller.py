"""The goal-reaching ant: SAC in the open arena on D4RL's 10 Hz, gear-30 ant (shared/data/ant.py), the low-level
policy that walks the maze planner's waypoints when the antmaze datasets are generated.

Input: the heading-invariant features of ``ant.controller_features`` (proprioception with the yaw taken out, the
goal's direction and clipped distance in the torso's heading frame); output: the 8 joint torques in [-1, 1].
Training: N arena envs stepped in parallel (gymnasium's AsyncVectorEnv, one process each; SyncVectorEnv for tests),
a replay buffer on the training device, and one ``update`` per gradient step (twin Q, tanh-Gaussian actor,
learned temperature) that obeys shared/training.py's capture rules, so on CUDA it runs as one CUDA graph replay
(``make_step``); the env workers step while the GPU updates.
Writes: ``controller_path`` (the actor's weights, ~0.3 MB, read by ``load_controller``), ``results_path`` (JSON: the
training curve, arena success on random 2-4 m targets, success following the planner's waypoints across each maze)
and checkpoints under ``out_dir``.

Train:     python -m shared.data.ant_controller --config configs/ant_controller.yaml [--device cuda --num_envs 16]
Evaluate:  python -m shared.data.ant_controller --config configs/ant_controller.yaml --evaluate_only true
"""


import copy
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import gymnasium
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from shared.data import ant
from shared.training import captured, make_optimizer, make_step, use_graphs
from shared.utils import RunError, atomic_write_bytes, atomic_write_json, device_name, resolve_device, run_main
from shared.utils import save_checkpoint, set_seed

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
MAZES = ("umaze", "medium", "large")


# ============================================================================ config
@dataclass
class TrainConfig:
    # --- run
    seed: int = 0  # seed of the networks, the replay sampling and the training envs (env i gets seed + i)
    eval_seed: int = 10_000  # first seed of the evaluation envs (arena and mazes)
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    out_dir: str = "runs/ant_controller"  # checkpoints (the two newest are kept)
    controller_path: str = "shared/data/ant_controller.pt"  # the trained actor's weights (what load_controller reads)
    results_path: str = "shared/data/ant_controller.json"  # training curve and evaluation (JSON)
    evaluate_only: bool = False  # no training: evaluate the controller at controller_path (arena + mazes)
    # --- envs
    num_envs: int = 16  # arena envs stepped in parallel (one worker process each with vector_env "async")
    vector_env: str = "async"  # "async" (AsyncVectorEnv, one process per env) or "sync" (in-process: tests, CPU)
    max_episode_steps: int = 500  # training episode length (50 s at 10 Hz; several goals per episode)
    goal_min: float = 2.0  # targets are drawn this far from the torso at least (metres) ...
    goal_max: float = 4.0  # ... and at most
    goal_radius: float = 0.45  # a goal is reached within this distance (gymnasium-robotics' AntMaze radius)
    goal_timeout: int = 200  # training: a goal not reached in this many steps is replaced by a new one
    progress_scale: float = 10.0  # reward per metre of progress towards the goal (10: the approach speed in m/s)
    reach_bonus: float = 5.0  # reward for reaching a goal
    ctrl_cost: float = 0.02  # reward penalty per unit of sum(action^2) (a regulariser: a trot costs ~0.1 per step)
    dist_clip: float = 4.0  # the distance feature saturates here (farther waypoints look like 4 m ones)
    # --- SAC
    env_steps: int = 1_000_000  # environment steps in all (over all envs)
    learning_starts: int = 10_000  # uniform random actions for this many env steps before learning starts
    utd: float = 0.25  # gradient updates per environment step (num_envs * utd updates per vector step)
    batch_size: int = 1024  # transitions per gradient update
    buffer_size: int = 1_000_000  # replay capacity (transitions; held on the training device)
    hidden_dim: int = 256  # width of the actor's and critics' hidden layers
    n_layers: int = 2  # hidden layers of every MLP
    actor_lr: float = 3e-4  # Adam learning rate of the actor
    critic_lr: float = 3e-4  # Adam learning rate of the twin Q
    alpha_lr: float = 3e-4  # Adam learning rate of log(temperature)
    init_alpha: float = 0.1  # initial entropy temperature
    target_entropy: float = -4.0  # temperature target: -|A| / 2 (OGBench's ant)
    discount: float = 0.99  # discount factor (10 s horizon at 10 Hz)
    tau: float = 0.005  # Polyak rate of the target critics
    compile: bool = True  # CUDA: every gradient update and the acting forward run as captured CUDA graphs
    # --- logging, checkpoints, evaluation
    log_every: int = 20_000  # env steps between entries of the training curve
    checkpoint_every: int = 200_000  # env steps between checkpoints
    eval_every: int = 200_000  # env steps between arena evaluations during training (0: only at the end)
    eval_episodes_during: int = 48  # arena episodes per evaluation during training
    eval_episodes: int = 200  # arena episodes of the final evaluation
    eval_max_steps: int = 200  # an arena evaluation episode fails after this many steps (20 s)
    maze_eval_episodes: int = 48  # episodes per maze of the final waypoint-following evaluation (0: skip it)
    maze_max_steps: int = 1000  # a maze episode fails after this many steps (D4RL's 1,000; umaze evaluates 700)
    num_eval_envs: int = 16  # evaluation envs stepped in parallel

    def __post_init__(self) -> None:
        if self.vector_env not in ("async", "sync"):
            raise ValueError(f"vector_env must be 'async' or 'sync', got {self.vector_env!r}")
        if self.num_envs < 1 or self.num_eval_envs < 1:
            raise ValueError("num_envs and num_eval_envs must be >= 1")
        if not 0 < self.goal_min <= self.goal_max:
            raise ValueError("need 0 < goal_min <= goal_max")
        if self.utd <= 0 or self.batch_size < 1:
            raise ValueError("utd must be > 0 and batch_size >= 1")


# ============================================================================ networks
def mlp(in_dim: int, out_dim: int, hidden: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden if n_layers else in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """tanh-squashed Gaussian on the controller features of a 31-dim (29 observation + 2 goal) input."""

    def __init__(self, hidden: int, n_layers: int, dist_clip: float) -> None:
        super().__init__()
        self.dist_clip = dist_clip
        self.net = mlp(ant.FEATURE_DIM, 2 * ant.ACT_DIM, hidden, n_layers)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return ant.controller_features(obs[..., :ant.OBS_DIM], obs[..., ant.OBS_DIM:ant.OBS_DIM + 2], self.dist_clip)

    def dist(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(feats).chunk(2, -1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return mean, log_std

    def sample(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action, log-probability) by the reparameterisation trick; randn from torch's (graph-safe) generator."""
        mean, log_std = self.dist(feats)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = (-0.5 * ((u - mean) / std).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2u)), the stable form
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic controller: tanh of the mean."""
        return torch.tanh(self.dist(self.features(obs))[0])


class TwinQ(nn.Module):
    def __init__(self, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.q1 = mlp(ant.FEATURE_DIM + ant.ACT_DIM, 1, hidden, n_layers)
        self.q2 = mlp(ant.FEATURE_DIM + ant.ACT_DIM, 1, hidden, n_layers)

    def forward(self, feats: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([feats, a], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SAC(nn.Module):
    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.actor = Actor(config.hidden_dim, config.n_layers, config.dist_clip)
        self.qf = TwinQ(config.hidden_dim, config.n_layers)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((1,), math.log(config.init_alpha)))


# ============================================================================ replay
class Replay:
    """Fixed-capacity ring buffer on the training device, of controller features (not raw observations: the
    features are computed once per transition when it is added, not twice per sampled row in every update).
    ``add`` runs eagerly between steps; ``sample`` draws indices as floor(U * size) with ``size`` a device tensor,
    so a captured step samples the growing buffer with no host sync and no re-capture."""

    def __init__(self, capacity: int, feat_dim: int, act_dim: int, device: torch.device) -> None:
        self.capacity, self.device, self.ptr, self.n = capacity, device, 0, 0
        z = functools.partial(torch.zeros, device=device)
        self.feat, self.next_feat = z(capacity, feat_dim), z(capacity, feat_dim)
        self.act, self.rew, self.done = z(capacity, act_dim), z(capacity), z(capacity)
        self.size = z(())

    def add(self, feat, act, rew, next_feat, done) -> None:
        """One row per env: tensors or arrays of [k, feat_dim], [k, act_dim], [k], [k, feat_dim], [k]."""
        k = len(feat)
        idx = torch.as_tensor((self.ptr + np.arange(k)) % self.capacity, device=self.device)
        for buf, value in ((self.feat, feat), (self.act, act), (self.rew, rew), (self.next_feat, next_feat),
                           (self.done, done)):
            buf.index_copy_(0, idx, torch.as_tensor(value, dtype=torch.float32, device=self.device))
        self.ptr = int((self.ptr + k) % self.capacity)
        self.n = min(self.n + k, self.capacity)
        self.size.fill_(float(self.n))

    def sample(self, batch_size: int) -> dict:
        idx = (torch.rand(batch_size, device=self.device) * self.size).long().clamp_(max=self.capacity - 1)
        return {"feat": self.feat[idx], "act": self.act[idx], "rew": self.rew[idx], "next_feat": self.next_feat[idx],
                "done": self.done[idx]}


# ============================================================================ the update
def update(sac: SAC, opts: dict, batch: dict, config: TrainConfig) -> dict:
    """One SAC gradient step: twin-Q TD to r + discount * (min Q_target(s', a') - alpha log pi(a'|s')), the actor to
    max min Q(s, a) - alpha log pi(a|s) (through frozen critics), the temperature towards ``target_entropy``; one
    backward for the three disjoint parameter sets, then the Polyak update. Stats are tensors: no host sync, so the
    step can be captured as a CUDA graph."""
    actor, qf = sac.actor, sac.qf
    feats, next_feats = batch["feat"], batch["next_feat"]
    alpha = sac.log_alpha.exp().detach()
    with torch.no_grad():
        next_a, next_logp = actor.sample(next_feats)
        tq1, tq2 = sac.qf_target(next_feats, next_a)
        target = batch["rew"] + config.discount * (1.0 - batch["done"]) * (torch.minimum(tq1, tq2) - alpha * next_logp)
    q1, q2 = qf(feats, batch["act"])
    q_loss = 0.5 * ((q1 - target).pow(2) + (q2 - target).pow(2)).mean()
    qf.requires_grad_(False)  # the actor's loss reaches the critics' input, not their weights
    a, logp = actor.sample(feats)
    pq1, pq2 = qf(feats, a)
    qf.requires_grad_(True)
    actor_loss = (alpha * logp - torch.minimum(pq1, pq2)).mean()
    alpha_loss = -(sac.log_alpha * (logp.detach() + config.target_entropy)).mean()
    loss = q_loss + actor_loss + alpha_loss
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in opts.values():
        opt.step()
    with torch.no_grad():  # one multi-tensor kernel rather than one per parameter
        torch._foreach_lerp_(list(sac.qf_target.parameters()), list(qf.parameters()), config.tau)
    return {"train/loss": loss.detach(), "sac/q_loss": q_loss.detach(), "sac/actor_loss": actor_loss.detach(),
            "sac/alpha": alpha[0], "sac/entropy": -logp.detach().mean(), "sac/q_mean": q1.detach().mean()}


def make_optimizers(sac: SAC, config: TrainConfig, graphs: bool) -> dict:
    return {"critic": make_optimizer(sac.qf.parameters(), config.critic_lr, "adam", graphs),
            "actor": make_optimizer(sac.actor.parameters(), config.actor_lr, "adam", graphs),
            "alpha": make_optimizer([sac.log_alpha], config.alpha_lr, "adam", graphs)}


# ============================================================================ the controller (for the data generator)
class Controller:
    """The trained goal-reaching ant: ``act(obs, goal)`` with D4RL's 29-dim observations and world-frame (x, y)
    goals, one or a batch (numpy in, numpy out), gives joint torques in [-1, 1] (the actor's mean; add the
    generator's noise outside)."""

    def __init__(self, actor: Actor, device: torch.device, info: Optional[dict] = None) -> None:
        self.actor, self.device, self.info = actor.to(device).eval(), device, info or {}

    @torch.no_grad()
    def act(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        obs, goal = np.asarray(obs, np.float32), np.asarray(goal, np.float32)
        single = obs.ndim == 1
        obs, goal = np.atleast_2d(obs), np.atleast_2d(goal)
        if obs.shape[-1] != ant.OBS_DIM or goal.shape[-1] != 2 or len(obs) != len(goal):
            raise ValueError(f"act expects obs [N, {ant.OBS_DIM}] and goal [N, 2], got {obs.shape} and {goal.shape}")
        x = torch.as_tensor(np.concatenate([obs, goal], -1), device=self.device)
        a = self.actor(x).clamp(-1.0, 1.0).cpu().numpy()
        return a[0] if single else a


def save_controller(path: str, actor: Actor, config: TrainConfig, extra: Optional[dict] = None) -> None:
    import io

    state = {"format": 1, "actor": {k: v.detach().cpu() for k, v in actor.state_dict().items()},
             "hidden_dim": config.hidden_dim, "n_layers": config.n_layers, "dist_clip": config.dist_clip,
             "model": {"timestep": ant.TIMESTEP, "frame_skip": ant.FRAME_SKIP, "gear": ant.GEAR},
             "info": extra or {}}
    buf = io.BytesIO()
    torch.save(state, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_controller(path: str, device: str = "cpu") -> Controller:
    """The controller saved by a training run (the file at ``controller_path``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != 1:
        raise RunError(f"{path} is not an ant controller file (format {state.get('format')!r})")
    model = state["model"]
    if (model["timestep"], model["frame_skip"], model["gear"]) != (ant.TIMESTEP, ant.FRAME_SKIP, ant.GEAR):
        raise RunError(f"{path} was trained on another ant model ({model}) than shared/data/ant.py's")
    actor = Actor(state["hidden_dim"], state["n_layers"], state["dist_clip"])
    actor.load_state_dict(state["actor"])
    return Controller(actor, torch.device(device), state.get("info"))


# ============================================================================ envs and evaluation
def make_vector(fns: list, kind: str) -> gymnasium.vector.VectorEnv:
    """N envs with same-step autoreset (the returned observation of an ended env is its next episode's first, the
    last one in info["final_obs"])."""
    mode = gymnasium.vector.AutoresetMode.SAME_STEP
    if kind == "async":  # spawn: the parent may hold CUDA, which forked children must not inherit
        return gymnasium.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
    return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def arena_fn(config: TrainConfig, continuing: bool) -> Callable[[], gymnasium.Env]:
    kwargs = dict(continuing=continuing, goal_min=config.goal_min, goal_max=config.goal_max,
                  goal_radius=config.goal_radius, goal_timeout=config.goal_timeout,
                  progress_scale=config.progress_scale, reach_bonus=config.reach_bonus, ctrl_cost=config.ctrl_cost,
                  max_episode_steps=config.max_episode_steps if continuing else config.eval_max_steps)
    return functools.partial(ant.make_arena_env, **kwargs)


def run_episodes(envs: gymnasium.vector.VectorEnv, policy: Callable[[np.ndarray], np.ndarray], episodes: int,
                 seed: int) -> dict:
    """``episodes`` episodes spread evenly over the envs (env i runs its first ceil(episodes / N) ones; the rest
    are dropped: no bias towards short episodes), deterministic given the seed and N. Success = info["success"] at
    the episode's last step."""
    n = envs.num_envs
    quota = -(-episodes // n)
    obs, _ = envs.reset(seed=seed)
    done = np.zeros(n, int)
    steps = np.zeros(n, int)
    results: list[list[tuple[bool, int]]] = [[] for _ in range(n)]
    while (done < quota).any():
        obs, _, term, trunc, info = envs.step(policy(obs))
        steps += 1
        for i in np.flatnonzero(term | trunc):
            if done[i] < quota:
                final = info["final_info"]
                results[i].append((bool(final["success"][i]), int(steps[i])))
                done[i] += 1
            steps[i] = 0
    flat = [r for k in range(quota) for i in range(n) for r in results[i][k:k + 1]][:episodes]
    success = np.array([s for s, _ in flat], float)
    lengths = np.array([t for s, t in flat if s], float)
    return {"episodes": len(flat), "success_rate": float(success.mean()),
            "success_stderr": float(success.std() / max(1.0, math.sqrt(len(flat) - 1))),
            "mean_steps_to_success": float(lengths.mean()) if len(lengths) else None}


def arena_policy(act: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda obs: act(obs[:, :ant.OBS_DIM], obs[:, ant.OBS_DIM:])


def evaluate_arena(act: Callable, config: TrainConfig, episodes: int, envs=None) -> dict:
    """Success reaching one random target goal_min..goal_max metres away within eval_max_steps (deterministic)."""
    own = envs is None
    if own:
        envs = make_vector([arena_fn(config, False)] * config.num_eval_envs, config.vector_env)
    try:
        return run_episodes(envs, arena_policy(act), episodes, config.eval_seed)
    finally:
        if own:
            envs.close()


def maze_fn(maze: str, max_steps: int) -> Callable[[], gymnasium.Env]:
    return functools.partial(ant.make_maze_env, maze, max_episode_steps=max_steps, goal_in_obs=True)


def evaluate_mazes(act: Callable, config: TrainConfig, mazes: Sequence[str] = MAZES,
                   episodes: Optional[int] = None) -> dict:
    """The controller following the planner's waypoints (ant.MazeWaypoints, no jitter) from D4RL's start cell to
    its evaluation goal (with D4RL's start and goal noise); success = within 0.5 m of the goal in maze_max_steps."""
    episodes = config.maze_eval_episodes if episodes is None else episodes
    out = {}
    for maze in mazes:
        planner = ant.MazeWaypoints(maze)

        def policy(obs: np.ndarray) -> np.ndarray:
            waypoints = np.stack([planner.waypoint(o[:2], o[ant.OBS_DIM:ant.OBS_DIM + 2]) for o in obs])
            return act(obs[:, :ant.OBS_DIM], waypoints)

        t0 = time.time()
        envs = make_vector([maze_fn(maze, config.maze_max_steps)] * config.num_eval_envs, config.vector_env)
        try:
            res = run_episodes(envs, policy, episodes, config.eval_seed)
        finally:
            envs.close()
        res["max_steps"] = config.maze_max_steps
        res["goal_cell"] = list(ant.EVAL_GOAL_CELLS[maze])
        res["start_cell"] = list(ant.EVAL_START_CELL)
        res["wall_s"] = round(time.time() - t0, 1)
        out[maze] = res
        print(f"[ant_controller] maze {maze}: success {res['success_rate']:.3f} over {res['episodes']} episodes "
              f"(mean steps to success {res['mean_steps_to_success']})", flush=True)
    return out


# ============================================================================ training
def train(config: TrainConfig) -> dict:
    set_seed(config.seed)
    envs = make_vector([arena_fn(config, True)] * config.num_envs, config.vector_env)  # before any CUDA use
    eval_envs = make_vector([arena_fn(config, False)] * config.num_eval_envs, config.vector_env)
    device = resolve_device(config.device)
    graphs = use_graphs(config.compile, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sac = SAC(config).to(device)
    opts = make_optimizers(sac, config, graphs)
    replay = Replay(min(config.buffer_size, config.env_steps), ant.FEATURE_DIM, ant.ACT_DIM, device)
    step = make_step(lambda batch: update(sac, opts, batch, config), lambda: replay.sample(config.batch_size),
                     list(opts.values()), graph=graphs)

    def sample_action(obs: torch.Tensor) -> torch.Tensor:
        return sac.actor.sample(sac.actor.features(obs))[0]

    explore = captured(sample_action, graphs)
    featurize = captured(lambda obs: sac.actor.features(obs), graphs)  # obs and next obs of every env: one launch
    greedy = captured(lambda obs: sac.actor(obs), graphs)

    def act_greedy(obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.concatenate([obs, goal], -1), dtype=torch.float32, device=device)
        with torch.no_grad():
            return greedy(x).clamp(-1, 1).cpu().numpy()

    n = config.num_envs
    vec_steps = -(-config.env_steps // n)
    updates_per_vec = config.utd * n
    print(f"[ant_controller] SAC on {device_name(device)}: {n} {config.vector_env} envs, {vec_steps * n:,} env "
          f"steps, {updates_per_vec:g} updates per vector step (batch {config.batch_size}), graphs={graphs}",
          flush=True)
    rng = np.random.default_rng(config.seed)
    obs, _ = envs.reset(seed=config.seed)
    ep_ret, ep_len = np.zeros(n), np.zeros(n, int)
    window: dict = {"returns": [], "goals": [], "lengths": [], "flips": 0}
    curve: list[dict] = []
    evals: list[dict] = []
    stats: Optional[dict] = None
    updates, update_credit = 0, 0.0
    t0 = time.time()
    env_time = 0.0
    last_print = time.time()
    bar = tqdm(total=vec_steps * n, desc="ant_controller", unit="step", dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    for it in range(vec_steps):
        env_steps = it * n
        learning = env_steps >= config.learning_starts
        if learning:
            with torch.no_grad():
                actions = explore(torch.as_tensor(obs, device=device)).clamp(-1, 1).cpu().numpy()
        else:
            actions = rng.uniform(-1.0, 1.0, (n, ant.ACT_DIM)).astype(np.float32)
        te = time.time()
        overlap = hasattr(envs, "step_async")  # AsyncVectorEnv: the workers step while the GPU updates
        if overlap:
            envs.step_async(actions)
        else:
            next_obs, rew, term, trunc, info = envs.step(actions)
        env_time += time.time() - te
        if learning:
            update_credit += updates_per_vec
            while update_credit >= 1.0:
                stats = step(updates)
                updates += 1
                update_credit -= 1.0
        if overlap:
            te = time.time()
            next_obs, rew, term, trunc, info = envs.step_wait()
            env_time += time.time() - te
        real_next = next_obs.copy()
        ended = term | trunc
        for i in np.flatnonzero(ended):
            real_next[i] = info["final_obs"][i]
        with torch.no_grad():
            feats = featurize(torch.as_tensor(np.concatenate([obs, real_next]), device=device))
        replay.add(feats[:n], actions, rew, feats[n:], term.astype(np.float32))
        obs = next_obs
        ep_ret += rew
        ep_len += 1
        for i in np.flatnonzero(ended):
            window["returns"].append(float(ep_ret[i]))
            window["lengths"].append(int(ep_len[i]))
            window["goals"].append(int(info["final_info"]["goals_reached"][i]))
            window["flips"] += int(info["final_info"]["flipped"][i])
            ep_ret[i], ep_len[i] = 0.0, 0
        bar.update(n)
        done_steps = (it + 1) * n
        crossed = lambda every: every and done_steps // every > env_steps // every  # noqa: E731
        if crossed(config.log_every) or it == vec_steps - 1:
            entry = {"env_steps": done_steps, "updates": updates, "wall_s": round(time.time() - t0, 1),
                     "env_steps_per_s": round(done_steps / max(time.time() - t0, 1e-9), 1),
                     "episodes": len(window["returns"])}
            if window["returns"]:
                lengths = np.array(window["lengths"])
                entry.update(return_mean=float(np.mean(window["returns"])),
                             goals_per_episode=float(np.mean(window["goals"])),
                             goals_per_100_steps=float(100 * np.sum(window["goals"]) / max(1, lengths.sum())),
                             flips=window["flips"])
            if stats is not None:
                entry.update({k.split("/")[-1]: float(v) for k, v in stats.items()})
            curve.append(entry)
            window = {"returns": [], "goals": [], "lengths": [], "flips": 0}
            bar.set_postfix({k: f"{entry[k]:.3g}" for k in ("return_mean", "goals_per_100_steps") if k in entry})
        if bar.disable and time.time() - last_print > 30:
            last = curve[-1] if curve else {}
            print(f"[ant_controller] {done_steps:,}/{vec_steps * n:,} env steps, {updates:,} updates, "
                  f"{done_steps / (time.time() - t0):.0f} steps/s, return {last.get('return_mean', float('nan')):.1f},"
                  f" goals/100 steps {last.get('goals_per_100_steps', float('nan')):.2f}", flush=True)
            last_print = time.time()
        if crossed(config.checkpoint_every) and it < vec_steps - 1:
            save_checkpoint(Path(config.out_dir), done_steps, {
                "sac": sac.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
                "updates": updates, "config": asdict(config)})
            # the weights so far, where the final ones will go: a run stopped early still leaves a controller
            save_controller(config.controller_path, sac.actor, config,
                            {"env_steps": done_steps, "updates": updates, "final": False})
        if crossed(config.eval_every) and learning and it < vec_steps - 1:
            res = evaluate_arena(act_greedy, config, config.eval_episodes_during, eval_envs)
            evals.append({"env_steps": done_steps, **res})
            print(f"[ant_controller] eval at {done_steps:,} env steps: arena success {res['success_rate']:.3f}",
                  flush=True)
    bar.close()
    train_wall = time.time() - t0
    envs.close()
    final = evaluate_arena(act_greedy, config, config.eval_episodes, eval_envs)
    eval_envs.close()
    print(f"[ant_controller] arena success {final['success_rate']:.3f} over {final['episodes']} episodes "
          f"(targets {config.goal_min:g}-{config.goal_max:g} m, radius {config.goal_radius}, "
          f"{config.eval_max_steps} steps)", flush=True)
    info = {"env_steps": vec_steps * n, "updates": updates, "train_wall_s": round(train_wall, 1),
            "arena_success_rate": final["success_rate"], "final": True}
    save_controller(config.controller_path, sac.actor, config, info)
    mazes = evaluate_mazes(act_greedy, config) if config.maze_eval_episodes > 0 else {}
    result = {"config": asdict(config), "device": device_name(device), "train_wall_s": round(train_wall, 1),
              "env_wait_s": round(env_time, 1), "env_steps": vec_steps * n, "updates": updates,
              "env_steps_per_s": round(vec_steps * n / train_wall, 1), "curve": curve, "evals": evals,
              "arena": final, "mazes": mazes, "controller_path": config.controller_path,
              "wall_s": round(time.time() - t0, 1)}
    Path(config.results_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(config.results_path), result)
    print(f"[ant_controller] wrote {config.controller_path} and {config.results_path} "
          f"({result['wall_s']:.0f} s in all)", flush=True)
    return result


def evaluate_only(config: TrainConfig) -> dict:
    if not Path(config.controller_path).exists():
        raise RunError(f"no controller at {config.controller_path}: train one first")
    device = resolve_device(config.device)
    controller = load_controller(config.controller_path, str(device))
    t0 = time.time()
    arena = evaluate_arena(controller.act, config, config.eval_episodes)
    print(f"[ant_controller] arena success {arena['success_rate']:.3f} over {arena['episodes']} episodes", flush=True)
    mazes = evaluate_mazes(controller.act, config) if config.maze_eval_episodes > 0 else {}
    result = {"controller_path": config.controller_path, "device": device_name(device), "arena": arena,
              "mazes": mazes, "wall_s": round(time.time() - t0, 1), "config": asdict(config)}
    path = Path(config.results_path).with_name(Path(config.results_path).stem + "_eval.json")
    atomic_write_json(path, result)
    print(f"[ant_controller] wrote {path}", flush=True)
    return result


def main(config: TrainConfig) -> dict:
    return evaluate_only(config) if config.evaluate_only else train(config)


if __name__ == "__main__":
    run_main(main, TrainConfig)
