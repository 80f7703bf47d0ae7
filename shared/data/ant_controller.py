"""The goal-reaching ant: SAC in the open arena on D4RL's 10 Hz, gear-30 ant (shared/data/ant.py), the low-level
policy that walks the maze planner's waypoints when the antmaze datasets are generated.

Input: the heading-invariant features of ``ant.controller_features`` (proprioception with the yaw taken out, the
goal's direction and clipped distance in the torso's heading frame); output: the 8 joint torques in [-1, 1].
Training: N arena envs stepped in parallel (gymnasium's AsyncVectorEnv, one process each; SyncVectorEnv for tests),
a replay buffer on the training device, and one ``update`` (shared/data/sac.py) per gradient step (twin Q,
tanh-Gaussian actor, learned temperature) that obeys shared/training.py's capture rules, so on CUDA it runs as one
CUDA graph replay (``make_step``); the env workers step while the GPU updates.
Writes: ``controller_path`` (the actor's weights, ~0.3 MB, read by ``load_controller``), ``results_path`` (JSON: the
training curve, arena success on random 2-4 m targets, success following the planner's waypoints across each maze)
and checkpoints under ``out_dir``.

Train:     python -m shared.data.ant_controller --config configs/ant_controller.yaml [--device cuda --num_envs 16]
Evaluate:  python -m shared.data.ant_controller --config configs/ant_controller.yaml --evaluate_only true
"""


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
from tqdm import tqdm

from shared.data import ant
from shared.data import sac as sac_lib
from shared.data.sac import Learner, TwinQ, make_vector
from shared.utils import RunError, atomic_write_bytes, atomic_write_json, device_name, resolve_device, run_main
from shared.utils import save_checkpoint, set_seed

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


# ============================================================================ networks (shared/data/sac.py)
class Actor(sac_lib.Actor):
    """tanh-squashed Gaussian on the controller features of a 31-dim (29 observation + 2 goal) input."""

    def __init__(self, hidden: int, n_layers: int, dist_clip: float) -> None:
        super().__init__(ant.FEATURE_DIM, ant.ACT_DIM, hidden, n_layers)
        self.dist_clip = dist_clip

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return ant.controller_features(obs[..., :ant.OBS_DIM], obs[..., ant.OBS_DIM:ant.OBS_DIM + 2], self.dist_clip)


class SAC(sac_lib.SAC):
    def __init__(self, config: TrainConfig) -> None:
        super().__init__(Actor(config.hidden_dim, config.n_layers, config.dist_clip),
                         TwinQ(ant.FEATURE_DIM, ant.ACT_DIM, config.hidden_dim, config.n_layers), config.init_alpha)


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
    learner = Learner(SAC(config), config, ant.FEATURE_DIM, ant.ACT_DIM, device)
    sac, opts = learner.sac, learner.opts

    def act_greedy(obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return learner.act_greedy(np.concatenate([obs, goal], -1))

    n = config.num_envs
    vec_steps = -(-config.env_steps // n)
    print(f"[ant_controller] SAC on {device_name(device)}: {n} {config.vector_env} envs, {vec_steps * n:,} env "
          f"steps, {config.utd * n:g} updates per vector step (batch {config.batch_size}), graphs={learner.graphs}",
          flush=True)
    obs, _ = envs.reset(seed=config.seed)
    ep_ret, ep_len = np.zeros(n), np.zeros(n, int)
    window: dict = {"returns": [], "goals": [], "lengths": [], "flips": 0}
    curve: list[dict] = []
    evals: list[dict] = []
    t0 = time.time()
    last_print = time.time()
    bar = tqdm(total=vec_steps * n, desc="ant_controller", unit="step", dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    for it in range(vec_steps):
        env_steps = it * n
        learning = env_steps >= config.learning_starts
        _, next_obs, rew, term, trunc, info = learner.collect(envs, obs, learning)
        ended = term | trunc
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
            entry = {"env_steps": done_steps, "updates": learner.updates, "wall_s": round(time.time() - t0, 1),
                     "env_steps_per_s": round(done_steps / max(time.time() - t0, 1e-9), 1),
                     "episodes": len(window["returns"])}
            if window["returns"]:
                lengths = np.array(window["lengths"])
                entry.update(return_mean=float(np.mean(window["returns"])),
                             goals_per_episode=float(np.mean(window["goals"])),
                             goals_per_100_steps=float(100 * np.sum(window["goals"]) / max(1, lengths.sum())),
                             flips=window["flips"])
            entry.update(learner.stats_dict())
            curve.append(entry)
            window = {"returns": [], "goals": [], "lengths": [], "flips": 0}
            bar.set_postfix({k: f"{entry[k]:.3g}" for k in ("return_mean", "goals_per_100_steps") if k in entry})
        if bar.disable and time.time() - last_print > 30:
            last = curve[-1] if curve else {}
            print(f"[ant_controller] {done_steps:,}/{vec_steps * n:,} env steps, {learner.updates:,} updates, "
                  f"{done_steps / (time.time() - t0):.0f} steps/s, return {last.get('return_mean', float('nan')):.1f},"
                  f" goals/100 steps {last.get('goals_per_100_steps', float('nan')):.2f}", flush=True)
            last_print = time.time()
        if crossed(config.checkpoint_every) and it < vec_steps - 1:
            save_checkpoint(Path(config.out_dir), done_steps, {
                "sac": sac.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
                "updates": learner.updates, "config": asdict(config)})
            # the weights so far, where the final ones will go: a run stopped early still leaves a controller
            save_controller(config.controller_path, sac.actor, config,
                            {"env_steps": done_steps, "updates": learner.updates, "final": False})
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
    info = {"env_steps": vec_steps * n, "updates": learner.updates, "train_wall_s": round(train_wall, 1),
            "arena_success_rate": final["success_rate"], "final": True}
    save_controller(config.controller_path, sac.actor, config, info)
    mazes = evaluate_mazes(act_greedy, config) if config.maze_eval_episodes > 0 else {}
    result = {"config": asdict(config), "device": device_name(device), "train_wall_s": round(train_wall, 1),
              "env_wait_s": round(learner.env_time, 1), "env_steps": vec_steps * n, "updates": learner.updates,
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
