"""The project's SAC (twin Q, tanh-Gaussian actor, learned temperature), shared by the behaviour policies it trains:
the goal-reaching ant of the antmaze datasets (shared/data/ant_controller.py) and the hopper / halfcheetah / walker2d
policies of the locomotion datasets (shared/data/locomotion.py).

What a trainer provides: an ``Actor`` (subclassed where its inputs are features of the observation, as the ant's;
``features`` is the identity here), a ``TwinQ`` on those features, and a config with the SAC fields (``seed``,
``compile``, ``buffer_size``, ``env_steps``, ``batch_size``, ``utd``, ``discount``, ``tau``, ``target_entropy``, the
three learning rates, ``learning_starts``). ``Learner`` holds the networks, optimisers and the replay buffer on the
training device and steps a gymnasium vector env: ``collect`` acts (uniform random before ``learning_starts``, then
the sampled policy), runs the due gradient updates while the async env workers step, and adds the transitions. Every
update obeys shared/training.py's capture rules, so on CUDA it is one CUDA graph replay.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import Optional

import gymnasium
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.training import captured, make_optimizer, make_step, soft_update, use_graphs

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


# ============================================================================ networks
def mlp(in_dim: int, out_dim: int, hidden: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden if n_layers else in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """tanh-squashed Gaussian on ``features(obs)`` (the observation itself unless a subclass says otherwise)."""

    def __init__(self, in_dim: int, act_dim: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.net = mlp(in_dim, 2 * act_dim, hidden, n_layers)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def dist(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log std) of the Gaussian before the tanh."""
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
        """The deterministic policy: tanh of the mean."""
        return torch.tanh(self.dist(self.features(obs))[0])


class TwinQ(nn.Module):
    """Two Q(features, action) MLPs (``q1`` then ``q2``), their outputs squeezed to [batch]."""

    def __init__(self, in_dim: int, act_dim: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.q1, self.q2 = (mlp(in_dim + act_dim, 1, hidden, n_layers) for _ in range(2))

    def forward(self, feats: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([feats, a], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SAC(nn.Module):
    """Actor, twin Q, its Polyak target and log(temperature): the parameters one ``update`` trains."""

    def __init__(self, actor: Actor, qf: TwinQ, init_alpha: float) -> None:
        super().__init__()
        self.actor = actor
        self.qf = qf
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((1,), math.log(init_alpha)))


# ============================================================================ replay
class Replay:
    """Fixed-capacity ring buffer on the training device, of actor features (not raw observations where they differ:
    the features are computed once per transition when it is added, not twice per sampled row in every update).
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
def update(sac: SAC, opts: dict, batch: dict, config) -> dict:
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
    soft_update(sac.qf_target, qf, config.tau)
    return {"train/loss": loss.detach(), "sac/q_loss": q_loss.detach(), "sac/actor_loss": actor_loss.detach(),
            "sac/alpha": alpha[0], "sac/entropy": -logp.detach().mean(), "sac/q_mean": q1.detach().mean()}


def make_optimizers(sac: SAC, config, graphs: bool) -> dict:
    return {"critic": make_optimizer(sac.qf.parameters(), config.critic_lr, "adam", graphs),
            "actor": make_optimizer(sac.actor.parameters(), config.actor_lr, "adam", graphs),
            "alpha": make_optimizer([sac.log_alpha], config.alpha_lr, "adam", graphs)}


# ============================================================================ envs and the collection loop
def make_vector(fns: list, kind: str) -> gymnasium.vector.VectorEnv:
    """N envs with same-step autoreset (the returned observation of an ended env is its next episode's first, the
    last one in info["final_obs"])."""
    mode = gymnasium.vector.AutoresetMode.SAME_STEP
    if kind == "async":  # spawn: the parent may hold CUDA, which forked children must not inherit
        return gymnasium.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
    return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=mode)


class Learner:
    """SAC, its optimisers, the replay buffer and the (captured on CUDA) update, on ``device``.

    ``collect`` is one vector step of training; ``act_greedy`` the deterministic policy on a batch of observations.
    ``updates`` counts gradient steps, ``stats`` holds the last step's (device) statistics, ``env_time`` the seconds
    spent waiting for the envs."""

    def __init__(self, sac: SAC, config, feat_dim: int, act_dim: int, device: torch.device) -> None:
        self.config, self.device, self.act_dim = config, device, act_dim
        self.graphs = use_graphs(config.compile, device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.sac = sac = sac.to(device)
        self.opts = opts = make_optimizers(sac, config, self.graphs)
        self.replay = replay = Replay(min(config.buffer_size, config.env_steps), feat_dim, act_dim, device)
        self.step = make_step(lambda batch: update(sac, opts, batch, config), lambda: replay.sample(config.batch_size),
                              list(opts.values()), graph=self.graphs)
        self.explore = captured(lambda obs: sac.actor.sample(sac.actor.features(obs))[0], self.graphs)
        # obs and next obs of every env: one launch (none where the features are the observation itself)
        identity = type(sac.actor).features is Actor.features
        self.featurize = (lambda obs: obs) if identity else captured(lambda obs: sac.actor.features(obs), self.graphs)
        self.greedy = captured(lambda obs: sac.actor(obs), self.graphs)
        self.rng = np.random.default_rng(config.seed)
        self.updates, self.update_credit, self.env_time = 0, 0.0, 0.0
        self.stats: Optional[dict] = None

    def act_greedy(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.greedy(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).clamp(-1, 1).cpu().numpy()

    def collect(self, envs: gymnasium.vector.VectorEnv, obs: np.ndarray, learning: bool) -> tuple:
        """One vector step: act (uniform random until ``learning``, then the sampled policy), step the envs with the
        due updates in between (``num_envs * utd`` per step on average, while async workers step), add the
        transitions (true final observations at episode ends; ``done`` = termination, not truncation).
        Returns (actions, next_obs, rewards, terminated, truncated, info)."""
        config, device, n = self.config, self.device, envs.num_envs
        if learning:
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=torch.float32, device=device)
                actions = self.explore(x).clamp(-1, 1).cpu().numpy()
        else:
            actions = self.rng.uniform(-1.0, 1.0, (n, self.act_dim)).astype(np.float32)
        te = time.time()
        overlap = hasattr(envs, "step_async")  # AsyncVectorEnv: the workers step while the GPU updates
        if overlap:
            envs.step_async(actions)
        else:
            next_obs, rew, term, trunc, info = envs.step(actions)
        self.env_time += time.time() - te
        if learning:
            self.update_credit += config.utd * n
            while self.update_credit >= 1.0:
                self.stats = self.step(self.updates)
                self.updates += 1
                self.update_credit -= 1.0
        if overlap:
            te = time.time()
            next_obs, rew, term, trunc, info = envs.step_wait()
            self.env_time += time.time() - te
        real_next = next_obs.copy()
        for i in np.flatnonzero(term | trunc):
            real_next[i] = info["final_obs"][i]
        with torch.no_grad():
            feats = self.featurize(torch.as_tensor(np.concatenate([obs, real_next]), dtype=torch.float32,
                                                   device=device))
        self.replay.add(feats[:n], actions, rew, feats[n:], term.astype(np.float32))
        return actions, next_obs, rew, term, trunc, info

    def stats_dict(self) -> dict:
        """The last update's statistics as floats (a host sync), keyed by their short names."""
        return {} if self.stats is None else {k.split("/")[-1]: float(v) for k, v in self.stats.items()}
