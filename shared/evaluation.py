"""Batched policy evaluation on a task's evaluation env.

Policy protocol (every algorithm of the suite implements it; no base class needed)::

    class Policy(Protocol):
        def reset(self, goals: np.ndarray) -> None: ...
            # a new batch of N episodes begins; goals float32[N, 2] (zeros for tasks without goals)
        def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray: ...
            # obs float32[N, obs_dim], reward of each env's previous step (0 at t=0) -> actions float32[N, act_dim]

Episodes run in waves of up to `num_envs` envs stepped together: one `reset` per wave, then one `act` call per
step for the whole wave. Episode i is reset with seed `seed + i`, so results do not depend on `num_envs` as long
as the policy's own randomness is per episode (see RandomPolicy). Envs whose episode has ended keep their last
observation in the batch and their actions are ignored.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Protocol, Tuple

import numpy as np
from tqdm import tqdm

from shared.tasks import Task, get_task, is_antmaze, is_locomotion, normalized_score


class Policy(Protocol):
    def reset(self, goals: np.ndarray) -> None: ...

    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray: ...


@dataclass
class EvalResult:
    task: str
    episodes: int
    seed: int
    returns: List[float]
    normalized: List[float]  # NaN when the task has no reference scores yet
    return_mean: float
    return_std: float
    score_mean: float
    score_std: float
    success_rate: float  # fraction of episodes that ever got a reward > 0
    action_latency_ms: float  # median wall-clock time of one `act` call
    latency_batch_size: int  # the batch size (number of envs) of those calls
    # per episode, in episode order: env step (0-based) of the first reward > 0, -1 if none; on goal tasks the
    # start (x, y) (first two observation dims at reset) and the goal (x, y), the closest the agent came to the goal
    # and where it ended (an agent that never scores: stuck near the start, or lost near the goal?), empty lists on
    # other tasks
    first_reward_steps: List[int] = field(default_factory=list)
    starts: List[List[float]] = field(default_factory=list)
    goals: List[List[float]] = field(default_factory=list)
    closest: List[float] = field(default_factory=list)
    ends: List[List[float]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Recorder:
    """Wraps a Policy and keeps, per wave of episodes, the rewards it is shown and the size of its actions (for
    ``goal_behaviour``) and the observations it sees (``paths``: their first two dims, the (x, y) path on maze
    tasks; ``first_obs`` / ``last_obs``: where each episode began and where it ended up)."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.waves = policy, []  # per wave: (rewards [T, N], mean |action| per step [T])
        self.observations: list = []  # per wave: obs per step [T, N, obs_dim] (an ended episode's last one repeats)

    @property
    def paths(self) -> list:
        return [[obs[:, :2] for obs in wave] for wave in self.observations]

    @property
    def first_obs(self) -> list:
        return [wave[0] for wave in self.observations]

    @property
    def last_obs(self) -> list:
        return [wave[-1] for wave in self.observations]

    def reset(self, goals: np.ndarray) -> None:
        self.waves.append(([], []))
        self.observations.append([])
        self.policy.reset(goals)

    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        rewards, sizes = self.waves[-1]
        self.observations[-1].append(np.asarray(obs).copy())
        rewards.append(np.asarray(last_rewards, np.float32).copy())
        action = self.policy.act(obs, last_rewards)
        sizes.append(float(np.abs(action).mean()))
        return action


def goal_behaviour(task: str, policy: Policy, episodes: int, seed: int, num_envs: int = 50) -> Dict[str, Any]:
    """How a policy reaches a goal task's goal, evaluated as ``evaluate`` does: normalised score (mean, std), share of
    episodes reaching the goal, median step of the first reward, share of the steps after arrival spent at the goal,
    mean |action|."""
    rec = Recorder(policy)
    result = evaluate(task, rec, episodes, seed, num_envs=num_envs, progress=False)
    first, at_goal, sizes = [], [], []
    for rewards, wave_sizes in rec.waves:
        shown = np.stack(rewards[1:])  # [T - 1, N]: the reward of step t is shown at step t + 1
        for col in shown.T:
            if (col > 0).any():
                f = int(np.argmax(col > 0))
                first.append(f)
                at_goal.append(float((col[f:] > 0).mean()))
        sizes += wave_sizes
    return {"score": result.score_mean, "score_std": result.score_std, "reached": result.success_rate,
            "first_reward_step_median": float(np.median(first)) if first else float("nan"),
            "time_at_goal_after_arrival": float(np.mean(at_goal)) if at_goal else 0.0,
            "mean_abs_action": float(np.mean(sizes))}


class RandomPolicy:
    """Uniform actions in [-1, 1]; each episode draws from its own generator seeded by (seed, episode index)."""

    def __init__(self, action_dim: int, seed: int = 0):
        self.action_dim = action_dim
        self.seed = seed
        self.episodes_started = 0
        self.rngs: List[np.random.Generator] = []

    def reset(self, goals: np.ndarray) -> None:
        first = self.episodes_started
        self.rngs = [np.random.default_rng([self.seed, first + i]) for i in range(len(goals))]
        self.episodes_started += len(goals)

    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        return np.stack([rng.uniform(-1.0, 1.0, self.action_dim) for rng in self.rngs]).astype(np.float32)


class D4RLEnv:
    """Original D4RL env through the old `gym` + `d4rl` packages, with MazeEnv's interface."""

    def __init__(self, task: Task):
        try:
            import d4rl  # noqa: F401  (registers the D4RL envs)
            import gym
        except Exception as e:
            from shared.utils import RunError  # (a RuntimeError) run_main prints it as one line; lazy: imports torch

            raise RunError(
                f"evaluating the original D4RL task '{task.name}' requires the `gym` and `d4rl` packages ({e})"
            ) from None
        self.env = gym.make(task.env_id)
        self.max_episode_steps = task.max_episode_steps
        self.observation_dim = int(np.prod(self.env.observation_space.shape))
        self.action_dim = int(np.prod(self.env.action_space.shape))
        self.steps = 0

    def reset(self, seed: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        try:
            out = self.env.reset(seed=seed)
        except TypeError:  # gym < 0.26
            self.env.seed(seed)
            out = self.env.reset()
        obs = out[0] if isinstance(out, tuple) else out
        target = getattr(self.env.unwrapped, "_target", None)  # maze2d's fixed goal, in observation coordinates
        goal = np.asarray(target[:2] if target is not None else np.zeros(2), dtype=np.float32)
        self.steps = 0
        return np.asarray(obs, dtype=np.float32), {"goal": goal}

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        out = self.env.step(action)
        if len(out) == 5:
            obs, reward, terminated, truncated, info = out
        else:
            obs, reward, done, info = out
            truncated = bool(info.get("TimeLimit.truncated", False))
            terminated = bool(done) and not truncated
        self.steps += 1
        truncated = bool(truncated) or self.steps >= self.max_episode_steps
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), truncated, info

    def close(self) -> None:
        self.env.close()


_ENV_CACHE: dict = {}  # task name -> evaluation envs, reused across calls (every reset is fully seeded)


def make_eval_env(task_name: str | Task):
    """MazeEnv for embedded maze2d tasks, shared.data.ant's AntMazeD4RL for embedded antmaze tasks, LocomotionEnv
    (shared/data/locomotion.py: gymnasium's v5 env) for embedded locomotion tasks, D4RLEnv (needs gym + d4rl) for
    original D4RL tasks, MinariEnv (the env a Minari dataset recorded for evaluation) for Minari tasks."""
    task = get_task(task_name)
    if task.source == "d4rl":
        return D4RLEnv(task)
    if task.source == "minari":
        from shared.data.minari import MinariEnv  # lazy: minari is an optional dependency

        return MinariEnv(task.env_id, task.max_episode_steps)
    if is_antmaze(task):  # D4RL's antmaze evaluation: start (1, 1), the fixed goal cell with D4RL's goal noise
        from shared.data.ant import make_maze_env  # lazy: the ant model (gymnasium-robotics' AntMaze-v5)

        return make_maze_env(task.maze, goal_cell=task.eval_goal_cell, max_episode_steps=task.max_episode_steps)
    if is_locomotion(task):  # gymnasium's Hopper-v5 / HalfCheetah-v5 / Walker2d-v5, 1,000 steps
        from shared.data.locomotion import LocomotionEnv

        return LocomotionEnv(task.env_id, task.max_episode_steps)
    from shared.mazes import MazeEnv

    return MazeEnv(task)


def require_evaluation(task_name: str | Task) -> None:
    """Fail at the start of a run, not after hours of training, when the task cannot be evaluated here: the original
    D4RL tasks need the `gym` and `d4rl` packages even when the dataset comes from a file (RunError, one line); Minari
    tasks need minari, the downloaded dataset and its env's packages (DatasetError, one line)."""
    if get_task(task_name).source in ("d4rl", "minari"):
        make_eval_env(task_name).close()


def _normalize(task_name: str, value: float) -> float:
    try:
        return float(normalized_score(task_name, value))
    except (FileNotFoundError, KeyError):  # reference scores not measured yet (e.g. while measuring them)
        return math.nan


def evaluate(
    task_name: str | Task,
    policy: Policy,
    episodes: int,
    seed: int,
    num_envs: int = 10,
    progress: bool = True,
) -> EvalResult:
    """Run `episodes` episodes (episode i seeded `seed + i`) in waves of up to `num_envs` envs."""
    task = get_task(task_name)
    task_name = task.name
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs = max(1, min(num_envs, episodes))
    # building a maze env compiles its MuJoCo model (~0.2 s): keep them for the next evaluation of this task
    cached = _ENV_CACHE.setdefault(task_name, [])
    while len(cached) < num_envs:
        cached.append(make_eval_env(task_name))
    envs = cached[:num_envs]
    returns: List[float] = []
    first_reward_steps: List[int] = []
    starts: List[List[float]] = []
    goal_xys: List[List[float]] = []
    closest: List[float] = []
    ends: List[List[float]] = []
    latencies: List[float] = []
    latency_batch = num_envs
    bar = tqdm(total=episodes * task.max_episode_steps, unit="step", desc=f"eval {task_name}", disable=not progress)
    try:
        for first in range(0, episodes, num_envs):
            wave = envs[: min(num_envs, episodes - first)]
            n = len(wave)
            resets = [env.reset(seed=seed + first + i) for i, env in enumerate(wave)]
            obs = np.stack([o for o, _ in resets]).astype(np.float32)
            goals = np.stack([info["goal"] for _, info in resets]).astype(np.float32)
            if task.goal_conditioned:
                starts.extend(obs[:, :2].tolist())
                goal_xys.extend(goals.tolist())
            last_rewards = np.zeros(n, dtype=np.float32)
            wave_returns = np.zeros(n, dtype=np.float64)
            wave_first = np.full(n, -1, dtype=np.int64)
            alive = np.ones(n, dtype=bool)
            wave_closest = np.linalg.norm(obs[:, :2] - goals[:, :2], axis=1) if task.goal_conditioned else None
            policy.reset(goals)
            t = 0  # every env still alive has taken exactly t steps: ended envs are never stepped again
            while alive.any():
                start = time.perf_counter()
                actions = np.asarray(policy.act(obs, last_rewards))
                if n == latency_batch:
                    latencies.append(time.perf_counter() - start)
                stepping = np.flatnonzero(alive)
                for i in stepping:
                    o, r, terminated, truncated, _ = wave[i].step(actions[i])
                    obs[i], last_rewards[i] = o, r
                    wave_returns[i] += r
                    if r > 0 and wave_first[i] < 0:
                        wave_first[i] = t
                    alive[i] = not (terminated or truncated)
                if task.goal_conditioned:
                    wave_closest = np.minimum(wave_closest, np.linalg.norm(obs[:, :2] - goals[:, :2], axis=1))
                bar.update(len(stepping))
                t += 1
            returns.extend(wave_returns.tolist())
            first_reward_steps.extend(wave_first.tolist())
            if task.goal_conditioned:
                closest.extend(wave_closest.tolist())
                ends.extend(obs[:, :2].tolist())
    finally:
        bar.close()

    normalized = [_normalize(task_name, r) for r in returns]
    return EvalResult(
        task=task_name,
        episodes=episodes,
        seed=seed,
        returns=returns,
        normalized=normalized,
        return_mean=float(np.mean(returns)),
        return_std=float(np.std(returns)),
        score_mean=float(np.mean(normalized)),
        score_std=float(np.std(normalized)),
        success_rate=float(np.mean(np.asarray(first_reward_steps) >= 0)),
        action_latency_ms=1000.0 * float(np.median(latencies)) if latencies else math.nan,
        latency_batch_size=latency_batch,
        first_reward_steps=first_reward_steps,
        starts=starts,
        goals=goal_xys,
        closest=closest,
        ends=ends,
    )
