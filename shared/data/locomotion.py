"""The embedded locomotion datasets: D4RL's hopper / halfcheetah / walker2d recipe regenerated with this project's
SAC (shared/data/sac.py) on gymnasium's Hopper-v5, HalfCheetah-v5 and Walker2d-v5 (MuJoCo from PyPI). Not D4RL's
files: other simulator versions, other policies, so the returns are not comparable with D4RL's in absolute terms.

1. Behaviour policies (``train``, on the GPU machine): SAC for ``env_steps`` (1M) env steps, the actor saved every
   ``checkpoint_every`` env steps with the number of transitions the replay buffer had collected by then and its
   evaluation return (``eval_episodes_during`` episodes of the sampled policy); the final actor is the expert
   (evaluated over ``eval_episodes``). D4RL's rule then picks "medium": the checkpoint whose evaluation return is
   closest to one third of the expert's (``select_medium``; the earliest on a tie). Committed to
   shared/data/locomotion/<env>/ (``policies.json`` + a few ~0.3 MB actor files): the expert, the medium policy and
   the ladder of checkpoints before it, with the random-action warm-up, the reference scores and the curve
   (``training.json``).
2. Datasets (``generate_arrays``, through shared.datasets' Recipe: cached, atomic, verified, progress bar):
   - ``<env>-medium``: 1e6 transitions of the medium policy;
   - ``<env>-medium-expert``: the same 1e6 medium transitions followed by 1e6 of the expert (D4RL's 50/50);
   - ``<env>-medium-replay``: the replay buffer up to the medium checkpoint, APPROXIMATED: D4RL stored the buffer
     itself; here each rung of the ladder is rolled out for the transitions the buffer collected while it was the
     newest policy (uniform random actions for the warm-up, then checkpoint k for the transitions collected after
     checkpoint k-1 up to checkpoint k). Same size and the same mix of policy qualities as the buffer, but fresh
     episodes of checkpoint policies instead of the training run's own (committing the raw buffer would be ~50 MB
     per env).
   Actions are SAMPLED from the SAC policy (tanh of a Gaussian draw: the stochastic "exploration" policy, as D4RL's
   data-collection scripts ran their rlkit SAC policies), the Gaussian noise from numpy generators seeded per lane,
   so a dataset is deterministic from its seed. ``terminals`` = the env's termination (hopper and walker2d falling;
   halfcheetah never), ``timeouts`` = the 1,000-step limit (and the cut at the end of each lane), never both.

Layout (D4RL's HDF5): observations [N, obs_dim] (float32, gymnasium v5's observation: D4RL's v2 layout), actions
[N, act_dim], rewards [N], terminals [N], timeouts [N], infos/qpos, infos/qvel [N, nq / nv] (float64, the state
before the step). Replaying a transition: set the env's state to (qpos[t], qvel[t]), step actions[t] ->
observations[t + 1], rewards[t], terminals[t] (``check`` does this for a sample).

Determinism: a part (one policy's share) is cut into chunks of ``CHUNK_SIZE`` transitions, each of ``LANES``
independent lanes of consecutive episodes stepped in lockstep (one batched actor call per step), every lane seeded
by (seed, part, chunk, lane): the content depends on neither the number of worker processes nor the order they ran.

    python -m shared.data.locomotion train --env hopper --config configs/locomotion_sac.yaml [--device cuda]
    python -m shared.datasets generate hopper-medium [--size N] [--workers W]
"""


import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gymnasium
import numpy as np

from shared.datasets import DatasetError, Recipe, run_chunks
from shared.tasks import LOCOMOTION_DIR, locomotion_dir, locomotion_replay_size
from shared.tasks import LOCOMOTION_ENVS as ENVS

OBS_DIMS = {"hopper": 11, "halfcheetah": 17, "walker2d": 17}
ACT_DIMS = {"hopper": 3, "halfcheetah": 6, "walker2d": 6}
QUALITIES = ("medium", "medium-replay", "medium-expert")
RECIPE = "d4rl-locomotion-sac"
RECIPE_VERSION = 1  # bump whenever generated content changes: cached files of other versions are not reused
EPISODE_STEPS = 1000  # D4RL's and gymnasium v5's time limit
CHUNK_SIZE = 50_000  # transitions per chunk (the unit of parallelism)
LANES = 10  # lanes per chunk, stepped in lockstep
MEDIUM_FRACTION = 1.0 / 3.0  # D4RL: medium = about one third of the expert's return
POLICIES_FILE = "policies.json"
WEIGHTS_ROOT = LOCOMOTION_DIR  # shared/data/locomotion/<env>/
RESIM_TOLERANCE = 1e-5  # max |re-simulated - stored| next observation per unit of scale (float32 observations)
TRAIN_COMMAND = ("python -m shared.data.locomotion train --env {env} --config configs/locomotion_sac.yaml "
                 "--device cuda")
SOURCE = ("regenerated with this project's SAC, not D4RL's files (D4RL's locomotion recipe on gymnasium's "
          "{env_id}{note})")
REPLAY_NOTE = "; the replay buffer approximated by rolling out the checkpoints up to medium"
PART_IDS = {"random": 0, "medium": 1, "expert": 2}  # seeds of the parts; ladder rung k (k >= 1) is 100 + k


def split_task(task_name: str) -> Tuple[str, str]:
    """'hopper-medium-replay' -> ('hopper', 'medium-replay')."""
    env, _, quality = task_name.partition("-")
    if env not in ENVS or quality not in QUALITIES:
        raise ValueError(f"task '{task_name}' is not an embedded locomotion dataset "
                         f"({', '.join(f'{e}-{q}' for e in ENVS for q in QUALITIES)})")
    return env, quality


# ============================================================================ policies (files)
def save_policy(path: Path, actor, env: str, hidden_dim: int, n_layers: int, info: Optional[dict] = None) -> None:
    import torch

    from shared.utils import atomic_write_bytes

    state = {"format": 1, "env_id": ENVS[env], "actor": {k: v.detach().cpu() for k, v in actor.state_dict().items()},
             "obs_dim": OBS_DIMS[env], "act_dim": ACT_DIMS[env], "hidden_dim": hidden_dim, "n_layers": n_layers,
             "info": info or {}}
    buf = io.BytesIO()
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


class BehaviourPolicy:
    """A saved SAC actor on the CPU: ``act(obs, normals)`` = tanh(mean + std * normals) (the sampled policy; normals
    None: tanh(mean), the deterministic one), numpy in and out, one observation or a batch."""

    def __init__(self, path: os.PathLike) -> None:
        import torch

        from shared.data.sac import Actor

        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != 1 or "env_id" not in state:
            raise DatasetError(f"{path} is not a locomotion policy file")
        self.env_id, self.info = state["env_id"], state.get("info", {})
        self.actor = Actor(state["obs_dim"], state["act_dim"], state["hidden_dim"], state["n_layers"])
        self.actor.load_state_dict(state["actor"])
        self.actor.eval()

    def act(self, obs: np.ndarray, normals: Optional[np.ndarray] = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            mean, log_std = self.actor.dist(torch.as_tensor(np.asarray(obs, np.float32)))
            u = mean if normals is None else mean + log_std.exp() * torch.as_tensor(normals, dtype=torch.float32)
            return torch.tanh(u).numpy()


def policy_files(plan: Mapping[str, Any]) -> List[str]:
    """The actor files a plan uses: the expert, the medium policy and the ladder's checkpoints (no duplicates)."""
    names = [plan["expert"]["file"], plan["medium"]["file"]] + [r["policy"] for r in plan["ladder"]]
    return list(dict.fromkeys(name for name in names if name != "random"))


def read_plan(env: str, weights_dir: Optional[os.PathLike] = None) -> dict:
    """policies.json of an env (expert, medium, ladder, reference scores); a missing one is ONE clear line."""
    root = Path(weights_dir) if weights_dir is not None else locomotion_dir(env)
    path = root / POLICIES_FILE
    if not path.exists():
        raise DatasetError(f"no SAC behaviour policies for {env} in {root} (the {env}-* datasets are generated from "
                           f"them): train them on a GPU with `{TRAIN_COMMAND.format(env=env)}`")
    plan = json.loads(path.read_text())
    plan["dir"] = str(root)
    for name in policy_files(plan):
        if not (root / name).exists():
            raise DatasetError(f"{path} names {name}, which is missing: retrain with "
                               f"`{TRAIN_COMMAND.format(env=env)}`")
    return plan


def plan_sha256(plan: Mapping[str, Any]) -> str:
    """sha256 over the policy files a dataset is generated from (and the ladder's shares)."""
    root = Path(plan["dir"])
    digest = hashlib.sha256(json.dumps([[r["policy"], r["transitions"]] for r in plan["ladder"]]).encode())
    for name in policy_files(plan):
        digest.update(name.encode() + (root / name).read_bytes())
    return digest.hexdigest()


def select_medium(checkpoints: Sequence[Mapping[str, Any]], expert_return: float,
                  fraction: float = MEDIUM_FRACTION) -> int:
    """D4RL's rule: the index of the checkpoint whose evaluation return is closest to ``fraction`` of the expert's
    (the earliest on a tie)."""
    if not checkpoints:
        raise ValueError("no checkpoints to choose the medium policy from")
    target = fraction * expert_return
    return min(range(len(checkpoints)), key=lambda i: (abs(checkpoints[i]["eval_return"] - target), i))


def ladder_of(checkpoints: Sequence[Mapping[str, Any]], medium: int, random_transitions: int) -> List[dict]:
    """The medium-replay rungs: the random warm-up, then checkpoint k for the transitions collected after checkpoint
    k - 1 (or after the warm-up) up to checkpoint k, for k up to the medium one."""
    rungs = [{"policy": "random", "transitions": int(min(random_transitions, checkpoints[medium]["transitions"]))}]
    before = rungs[0]["transitions"]
    for c in checkpoints[:medium + 1]:
        share = int(c["transitions"]) - before
        if share > 0:
            rungs.append({"policy": c["file"], "transitions": share, "env_steps": int(c["env_steps"]),
                          "eval_return": c["eval_return"]})
            before = int(c["transitions"])
    return rungs


# ============================================================================ generation
def make_env(env: str) -> gymnasium.Env:
    return gymnasium.make(ENVS[env], max_episode_steps=EPISODE_STEPS)


def _generate_chunk(env: str, policy_path: str, part: int, seed: int, chunk: int, length: int,
                    progress: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    """``length`` transitions of one policy (``policy_path`` '' = uniform random actions) in LANES lanes stepped in
    lockstep; lane i of the chunk seeded by (seed, part, chunk, i) only."""
    import torch

    torch.set_num_threads(1)  # one process per core: no thread oversubscription
    policy = BehaviourPolicy(policy_path) if policy_path else None
    lanes = min(LANES, length)
    sizes = [length // lanes + (i < length % lanes) for i in range(lanes)]
    rngs = [np.random.default_rng(np.random.SeedSequence([seed, part, chunk, i])) for i in range(lanes)]
    envs = [make_env(env) for _ in range(lanes)]
    act_dim = ACT_DIMS[env]
    obs = np.stack([e.reset(seed=int(r.integers(2 ** 31)))[0] for e, r in zip(envs, rngs)])
    out: List[Dict[str, list]] = [{k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts",
                                                     "qpos", "qvel")} for _ in range(lanes)]
    done_steps = 0
    for t in range(max(sizes)):
        live = [i for i in range(lanes) if t < sizes[i]]
        normals = np.stack([rngs[i].standard_normal(act_dim) for i in live])
        if policy is None:
            actions = np.stack([rngs[i].uniform(-1.0, 1.0, act_dim) for i in live]).astype(np.float32)
        else:
            actions = np.clip(policy.act(obs[live], normals), -1.0, 1.0).astype(np.float32)
        for j, i in enumerate(live):
            data, rec = envs[i].unwrapped.data, out[i]
            rec["qpos"].append(data.qpos.copy())
            rec["qvel"].append(data.qvel.copy())
            rec["observations"].append(obs[i].copy())
            rec["actions"].append(actions[j])
            next_obs, reward, term, trunc, _ = envs[i].step(actions[j])
            last = t == sizes[i] - 1
            rec["rewards"].append(reward)
            rec["terminals"].append(bool(term))
            rec["timeouts"].append(bool((trunc or last) and not term))
            obs[i] = envs[i].reset(seed=int(rngs[i].integers(2 ** 31)))[0] if term or trunc else next_obs
        done_steps += len(live)
        if progress is not None and done_steps >= 1000:
            progress(done_steps)
            done_steps = 0
    if progress is not None and done_steps:
        progress(done_steps)
    for e in envs:
        e.close()
    cat = {k: np.concatenate([np.asarray(rec[k]) for rec in out]) for k in out[0]}
    return {"observations": cat["observations"].astype(np.float32), "actions": cat["actions"].astype(np.float32),
            "rewards": cat["rewards"].astype(np.float32), "terminals": cat["terminals"].astype(bool),
            "timeouts": cat["timeouts"].astype(bool), "infos/qpos": cat["qpos"].astype(np.float64),
            "infos/qvel": cat["qvel"].astype(np.float64)}


def full_size(task_name: str, weights_dir: Optional[os.PathLike] = None) -> Optional[int]:
    """Transitions of the full dataset: 1e6 (medium), 2e6 (medium-expert), the ladder's total (medium-replay; None
    while the policies are not there)."""
    env, quality = split_task(task_name)
    if quality == "medium":
        return 1_000_000
    if quality == "medium-expert":
        return 2_000_000
    return locomotion_replay_size(env, weights_dir) or None


def parts_of(quality: str, plan: Mapping[str, Any], size: int) -> List[Tuple[str, int, int]]:
    """(policy file or '' for random, part id, transitions) of each part of a dataset of ``size`` transitions."""
    root = Path(plan["dir"])
    medium = str(root / plan["medium"]["file"])
    if quality == "medium":
        return [(medium, PART_IDS["medium"], size)]
    if quality == "medium-expert":
        if size % 2:
            raise ValueError(f"a medium-expert dataset has an even size (medium + expert 50/50), got {size}")
        return [(medium, PART_IDS["medium"], size // 2), (str(root / plan["expert"]["file"]), PART_IDS["expert"],
                                                         size // 2)]
    shares = np.array([r["transitions"] for r in plan["ladder"]], np.int64)
    total = int(shares.sum())
    if size > total:
        raise ValueError(f"medium-replay has {total:,} transitions (the buffer up to the medium checkpoint), "
                         f"asked for {size:,}")
    # a smaller size: every rung scaled down in proportion (largest remainders get the leftover transitions)
    exact = shares * size / total
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: size - int(counts.sum())]] += 1
    return [("" if r["policy"] == "random" else str(root / r["policy"]), PART_IDS["random"] if r["policy"] == "random"
             else 100 + k, int(c)) for k, (r, c) in enumerate(zip(plan["ladder"], counts)) if c > 0]


def generate_arrays(task_name: str, size: Optional[int] = None, seed: int = 0, workers: int = 1,
                    progress: bool = True, weights_dir: Optional[os.PathLike] = None) -> Dict[str, np.ndarray]:
    """A dataset in memory, identical for any number of workers; ``weights_dir`` (default the committed policies,
    shared/data/locomotion/<env>/) holds policies.json and the actor files."""
    env, quality = split_task(task_name)
    plan = read_plan(env, weights_dir)
    size = int(size or full_size(task_name, plan["dir"]))
    if size <= 0:
        raise ValueError(f"dataset size must be positive, got {size}")
    jobs = [(env, path, part, seed, chunk, min(CHUNK_SIZE, n - start))
            for path, part, n in parts_of(quality, plan, size)
            for chunk, start in enumerate(range(0, n, CHUNK_SIZE))]
    return run_chunks(_generate_chunk, jobs, size, f"generating {task_name}", workers, progress)


# ============================================================================ verification
def resimulate(arrays: Mapping[str, np.ndarray], env: str, indices: Sequence[int]
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(observation from the stored state, next observation, reward, terminated) of each transition, re-simulated
    from (infos/qpos, infos/qvel)[t] and actions[t] through the env."""
    sim = make_env(env)
    sim.reset(seed=0)
    base = sim.unwrapped
    obs, next_obs, rewards, terms = [], [], [], []
    try:
        for t in indices:
            base.set_state(arrays["infos/qpos"][t], arrays["infos/qvel"][t])
            obs.append(base._get_obs())
            o, r, term, _, _ = base.step(arrays["actions"][t])
            next_obs.append(o)
            rewards.append(r)
            terms.append(term)
    finally:
        sim.close()
    return np.asarray(obs), np.asarray(next_obs), np.asarray(rewards), np.asarray(terms, bool)


def statistics(arrays: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"]) + 1
    starts = np.concatenate([[0], ends[:-1]])
    returns = np.array([arrays["rewards"][s:e].sum() for s, e in zip(starts, ends)])
    full = (ends - starts) == EPISODE_STEPS
    return {"transitions": int(len(arrays["rewards"])), "episodes": int(len(ends)),
            "terminals": int(arrays["terminals"].sum()), "timeouts": int(arrays["timeouts"].sum()),
            "return_mean": float(returns.mean()), "return_max": float(returns.max()),
            "full_episode_return_mean": float(returns[full].mean()) if full.any() else None}


def check(arrays: Mapping[str, np.ndarray], task_name: str, path: Any = "<memory>", samples: int = 64,
          seed: int = 0) -> Dict[str, Any]:
    """Deep verification; DatasetError (one line naming ``path``) on the first problem: layout, actions in [-1, 1],
    terminals / timeouts (never both; episodes of at most 1,000 steps, the last one closed), and ``samples``
    transitions (terminal ones among them where there are) re-simulated from the stored state: the observation, the
    next observation, the reward and the termination."""
    from shared.tasks import get_task

    env, _ = split_task(get_task(task_name).data_name)

    def fail(problem: str) -> None:
        raise DatasetError(f"dataset {path}: {problem}")

    obs, actions, n = arrays["observations"], arrays["actions"], len(arrays["observations"])
    for key in ("infos/qpos", "infos/qvel"):
        if key not in arrays or len(arrays[key]) != n:
            fail(f"'{key}' missing or of the wrong length")
    if obs.shape[1] != OBS_DIMS[env] or actions.shape[1] != ACT_DIMS[env]:
        fail(f"observations/actions have sizes {obs.shape[1]}/{actions.shape[1]}, expected {OBS_DIMS[env]}/"
             f"{ACT_DIMS[env]}")
    if np.abs(actions).max() > 1.0:
        fail("actions outside [-1, 1]")
    terminals, timeouts = np.asarray(arrays["terminals"], bool), np.asarray(arrays["timeouts"], bool)
    if np.any(terminals & timeouts):
        fail("a transition is both a terminal and a timeout")
    if not (terminals[-1] or timeouts[-1]):
        fail("the last episode is not closed by a terminal or a timeout")
    ends = np.flatnonzero(terminals | timeouts)
    if np.diff(np.concatenate([[-1], ends])).max() > EPISODE_STEPS:
        fail(f"an episode is longer than {EPISODE_STEPS} steps")
    if env == "halfcheetah" and terminals.any():
        fail("halfcheetah never terminates, but terminals are set")
    rng = np.random.default_rng(seed)
    inner = np.flatnonzero(~(terminals | timeouts))
    term_idx = np.flatnonzero(terminals)
    picks = rng.choice(term_idx, min(len(term_idx), samples // 4), replace=False) if len(term_idx) else []
    pool = inner if len(inner) else np.arange(n)
    picks = np.concatenate([picks, rng.choice(pool, samples - len(picks), replace=len(pool) < samples)])
    picks = picks.astype(np.int64)
    now, nxt, rewards, terms = resimulate(arrays, env, picks)
    if np.abs(now - obs[picks]).max() > RESIM_TOLERANCE * (1 + np.abs(obs[picks]).max()):
        fail("observations differ from the stored simulator states (infos/qpos, infos/qvel)")
    inside = ~(terminals | timeouts)[picks]
    error = float(np.abs(nxt[inside] - obs[picks[inside] + 1]).max()) if inside.any() else 0.0
    if not error <= RESIM_TOLERANCE * (1 + float(np.abs(obs).max())):
        fail(f"re-simulating {len(picks)} transitions gives next observations up to {error:.3g} off")
    if np.abs(rewards - arrays["rewards"][picks]).max() > 1e-4 * (1 + np.abs(rewards).max()):
        fail("the env's reward differs from the stored rewards")
    if not np.array_equal(terms, terminals[picks]):
        fail("the env's termination differs from the stored terminals")
    return {**statistics(arrays), "resim_samples": int(len(picks)), "resim_max_error": error}


def recipe(task_name: str) -> Recipe:
    """The locomotion family as shared.datasets generates, caches and verifies it (the policies must be there)."""
    env, quality = split_task(task_name)
    plan = read_plan(env)
    source = SOURCE.format(env_id=ENVS[env], note=REPLAY_NOTE if quality == "medium-replay" else "")
    return Recipe(RECIPE, RECIPE_VERSION, source, OBS_DIMS[env], generate_arrays,
                  default_workers=os.cpu_count() or 1, expected={"policies_sha256": plan_sha256(plan)},
                  attrs={"chunk_size": CHUNK_SIZE, "lanes": LANES, "episode_steps": EPISODE_STEPS,
                         "medium_env_steps": plan["medium"]["env_steps"], "policy_sampling": "tanh-Gaussian sample"},
                  check=check)


def reference_scores(env: str) -> Tuple[float, float]:
    """(random, expert) returns of an env, measured when its policies were trained (policies.json)."""
    try:
        plan = read_plan(env)
    except DatasetError as exc:
        raise KeyError(f"no reference scores for the {env} locomotion tasks yet: {exc}") from None
    ref = plan["reference_scores"]
    return float(ref["random"]), float(ref["expert"])


class LocomotionEnv:
    """Evaluation env of an embedded locomotion task (gymnasium's v5 env, 1,000 steps), with the interface of
    shared.mazes.MazeEnv: float32 observations, reset -> (obs, {"goal": zeros(2)})."""

    def __init__(self, env_id: str, max_episode_steps: int = EPISODE_STEPS) -> None:
        self.env = gymnasium.make(env_id, max_episode_steps=max_episode_steps)
        self.max_episode_steps = max_episode_steps
        self.observation_dim = int(np.prod(self.env.observation_space.shape))
        self.action_dim = int(np.prod(self.env.action_space.shape))

    def reset(self, seed: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, np.float32), {"goal": np.zeros(2, np.float32)}

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, np.float32))
        return np.asarray(obs, np.float32), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()


# ============================================================================ training the behaviour policies
@dataclass
class TrainConfig:
    env: str = "hopper"  # hopper, halfcheetah or walker2d (gymnasium's v5 envs)
    # --- run
    seed: int = 0  # seed of the networks, the replay sampling and the training envs (env i gets seed + i)
    eval_seed: int = 10_000  # first seed of the evaluation episodes
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    out_dir: str = "runs/locomotion"  # every checkpoint's actor goes to <out_dir>/<env>/ (not committed)
    weights_dir: str = ""  # where the selected policies go ("": shared/data/locomotion/<env>, the committed ones)
    # --- envs
    num_envs: int = 16  # training envs stepped in parallel (one worker process each with vector_env "async")
    vector_env: str = "async"  # "async" (AsyncVectorEnv, one process per env) or "sync" (in-process: tests, CPU)
    # --- SAC (shared/data/sac.py)
    env_steps: int = 1_000_000  # environment steps in all (over all envs); D4RL's SAC ran 1M (hopper, walker2d)
    learning_starts: int = 10_000  # uniform random actions for this many env steps before learning starts
    utd: float = 0.25  # gradient updates per environment step (num_envs * utd updates per vector step)
    batch_size: int = 1024  # transitions per gradient update
    buffer_size: int = 1_000_000  # replay capacity (transitions; held on the training device; >= env_steps keeps all)
    hidden_dim: int = 256  # width of the actor's and critics' hidden layers (D4RL's SAC: 256 x 2)
    n_layers: int = 2  # hidden layers of every MLP
    actor_lr: float = 3e-4  # Adam learning rate of the actor
    critic_lr: float = 3e-4  # Adam learning rate of the twin Q
    alpha_lr: float = 3e-4  # Adam learning rate of log(temperature)
    init_alpha: float = 1.0  # initial entropy temperature (rlkit's)
    target_entropy: float = 0.0  # temperature target; 0: -|A| (rlkit's default)
    discount: float = 0.99  # discount factor
    tau: float = 0.005  # Polyak rate of the target critics
    compile: bool = True  # CUDA: every gradient update and the acting forward run as captured CUDA graphs
    max_train_s: float = 0.0  # stop training after this many seconds, then select and write as usual (0: no limit)
    # --- logging, checkpoints, evaluation
    log_every: int = 10_000  # env steps between entries of the training curve
    checkpoint_every: int = 25_000  # env steps between saved actors (the candidates for medium)
    eval_episodes_during: int = 10  # episodes of each checkpoint's evaluation (the sampled policy)
    eval_episodes: int = 50  # episodes of the final evaluation of the expert and of the medium policy
    random_episodes: int = 100  # episodes of the random policy's reference return
    num_eval_envs: int = 10  # evaluation envs stepped in parallel

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"env must be one of {', '.join(ENVS)}, got {self.env!r}")
        if self.vector_env not in ("async", "sync"):
            raise ValueError(f"vector_env must be 'async' or 'sync', got {self.vector_env!r}")
        if min(self.num_envs, self.num_eval_envs, self.checkpoint_every, self.log_every, self.eval_episodes,
               self.eval_episodes_during, self.random_episodes) < 1:
            raise ValueError("num_envs, num_eval_envs, checkpoint_every, log_every and the episode counts must be >= 1")
        if self.utd <= 0 or self.batch_size < 1:
            raise ValueError("utd must be > 0 and batch_size >= 1")
        if self.buffer_size < self.env_steps:
            raise ValueError("buffer_size must hold every transition (>= env_steps): medium-replay is the buffer")
        if self.target_entropy == 0.0:
            self.target_entropy = -float(ACT_DIMS[self.env])


def evaluate_policy(learner, envs: gymnasium.vector.VectorEnv, episodes: int, seed: int) -> Dict[str, float]:
    """Mean and std return of the sampled policy over ``episodes`` episodes (waves of num_envs, each env seeded
    seed + its episode index)."""
    import torch

    n, returns = envs.num_envs, []
    for first in range(0, episodes, n):
        k = min(n, episodes - first)
        obs, _ = envs.reset(seed=[seed + first + i for i in range(n)])
        ret, alive = np.zeros(n), np.arange(n) < k
        while alive.any():
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=torch.float32, device=learner.device)
                actions = learner.explore(x).clamp(-1, 1).cpu().numpy()
            obs, rew, term, trunc, _ = envs.step(actions)
            ret += rew * alive
            alive &= ~(term | trunc)
        returns += ret[:k].tolist()
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "episodes": len(returns)}


def random_reference(env: str, episodes: int, seed: int) -> Dict[str, float]:
    """The uniform random policy's return through shared.evaluation (the protocol the algorithms are scored by)."""
    from shared.evaluation import RandomPolicy, evaluate

    res = evaluate(f"{env}-medium", RandomPolicy(ACT_DIMS[env], seed), episodes, seed, num_envs=10, progress=False)
    return {"return_mean": res.return_mean, "return_std": res.return_std, "episodes": episodes}


def train(config: TrainConfig) -> dict:
    from tqdm import tqdm

    from shared.data.sac import SAC, Actor, Learner, TwinQ, make_vector
    from shared.utils import atomic_write_json, device_name, resolve_device, set_seed

    env, obs_dim, act_dim = config.env, OBS_DIMS[config.env], ACT_DIMS[config.env]
    set_seed(config.seed)
    fn = lambda: make_env(env)  # noqa: E731
    envs = make_vector([fn] * config.num_envs, config.vector_env)  # before any CUDA use
    eval_envs = make_vector([fn] * config.num_eval_envs, config.vector_env)
    device = resolve_device(config.device)
    sac = SAC(Actor(obs_dim, act_dim, config.hidden_dim, config.n_layers),
              TwinQ(obs_dim, act_dim, config.hidden_dim, config.n_layers), config.init_alpha)
    learner = Learner(sac, config, obs_dim, act_dim, device)
    run_dir = Path(config.out_dir) / env
    n = config.num_envs
    vec_steps = -(-config.env_steps // n)
    print(f"[locomotion] SAC on {ENVS[env]}, {device_name(device)}: {n} {config.vector_env} envs, {vec_steps * n:,} "
          f"env steps, {config.utd * n:g} updates per vector step (batch {config.batch_size}), "
          f"graphs={learner.graphs}", flush=True)
    obs, _ = envs.reset(seed=config.seed)
    ep_ret = np.zeros(n)
    window: List[float] = []
    curve: List[dict] = []
    checkpoints: List[dict] = []
    random_transitions = 0
    t0 = last_print = time.time()
    eval_time = 0.0
    bar = tqdm(total=vec_steps * n, desc=f"sac {env}", unit="step", dynamic_ncols=True, disable=not sys.stderr.isatty())
    stopped_early = False
    for it in range(vec_steps):
        env_steps = it * n
        if config.max_train_s and it and time.time() - t0 > config.max_train_s and checkpoints:
            stopped_early, vec_steps = True, it  # what was trained so far is the expert
            print(f"[locomotion] {env}: max_train_s reached, training stops at {it * n:,} env steps", flush=True)
            break
        learning = env_steps >= config.learning_starts
        random_transitions += 0 if learning else n
        _, obs, rew, term, trunc, _ = learner.collect(envs, obs, learning)
        ep_ret += rew
        for i in np.flatnonzero(term | trunc):
            window.append(float(ep_ret[i]))
            ep_ret[i] = 0.0
        bar.update(n)
        done_steps = (it + 1) * n
        crossed = lambda every: done_steps // every > env_steps // every  # noqa: E731
        if crossed(config.log_every) or it == vec_steps - 1:
            entry = {"env_steps": done_steps, "updates": learner.updates, "wall_s": round(time.time() - t0, 1),
                     "episodes": len(window), **learner.stats_dict()}
            if window:
                entry["train_return_mean"] = float(np.mean(window))
            curve.append(entry)
            window = []
            bar.set_postfix({"return": f"{entry.get('train_return_mean', float('nan')):.0f}"})
        if crossed(config.checkpoint_every) and it < vec_steps - 1:
            te = time.time()
            res = evaluate_policy(learner, eval_envs, config.eval_episodes_during, config.eval_seed)
            eval_time += time.time() - te
            name = f"step_{done_steps:07d}.pt"
            save_policy(run_dir / name, learner.sac.actor, env, config.hidden_dim, config.n_layers,
                        {"env_steps": done_steps, "eval_return": res["return_mean"]})
            checkpoints.append({"file": name, "env_steps": done_steps, "transitions": int(learner.replay.n),
                                "updates": learner.updates, "eval_return": res["return_mean"],
                                "eval_return_std": res["return_std"], "eval_episodes": res["episodes"]})
            if bar.disable or time.time() - last_print > 30:
                print(f"[locomotion] {env} {done_steps:,}/{vec_steps * n:,} env steps, {learner.updates:,} updates, "
                      f"{done_steps / (time.time() - t0):.0f} steps/s, eval return {res['return_mean']:.1f}",
                      flush=True)
                last_print = time.time()
    bar.close()
    train_wall = time.time() - t0
    envs.close()
    expert = evaluate_policy(learner, eval_envs, config.eval_episodes, config.eval_seed)
    save_policy(run_dir / "expert.pt", learner.sac.actor, env, config.hidden_dim, config.n_layers,
                {"env_steps": vec_steps * n, "eval_return": expert["return_mean"], "final": True,
                 "stopped_early": stopped_early})
    medium = select_medium(checkpoints, expert["return_mean"])
    # the medium policy's return over as many episodes as the expert's
    import torch

    from shared.utils import RunError

    state = torch.load(run_dir / checkpoints[medium]["file"], map_location=device, weights_only=True)
    final_actor = {k: v.clone() for k, v in learner.sac.actor.state_dict().items()}
    learner.sac.actor.load_state_dict(state["actor"])
    medium_eval = evaluate_policy(learner, eval_envs, config.eval_episodes, config.eval_seed)
    learner.sac.actor.load_state_dict(final_actor)
    eval_envs.close()
    random = random_reference(env, config.random_episodes, config.eval_seed)
    ladder = ladder_of(checkpoints, medium, random_transitions)
    out = Path(config.weights_dir) if config.weights_dir else locomotion_dir(env)
    if out.resolve() == run_dir.resolve():
        raise RunError("weights_dir must differ from <out_dir>/<env> (the checkpoints of the run)")
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("step_*.pt")) + [out / "expert.pt"]:
        old.unlink(missing_ok=True)
    m = checkpoints[medium]
    for name in policy_files({"expert": {"file": "expert.pt"}, "medium": m, "ladder": ladder}):
        shutil.copyfile(run_dir / name, out / name)
    plan = {
        "env": env, "env_id": ENVS[env], "recipe": RECIPE, "recipe_version": RECIPE_VERSION,
        "expert": {"file": "expert.pt", "env_steps": vec_steps * n, "stopped_early": stopped_early,
                   "eval_return": expert["return_mean"],
                   "eval_return_std": expert["return_std"], "eval_episodes": expert["episodes"]},
        "medium": {"file": m["file"], "env_steps": m["env_steps"], "transitions": m["transitions"],
                   "selection_return": m["eval_return"], "eval_return": medium_eval["return_mean"],
                   "eval_return_std": medium_eval["return_std"], "eval_episodes": medium_eval["episodes"],
                   "target_return": MEDIUM_FRACTION * expert["return_mean"]},
        "ladder": ladder,
        "reference_scores": {"random": random["return_mean"], "expert": expert["return_mean"],
                             "random_std": random["return_std"], "expert_std": expert["return_std"],
                             "random_episodes": random["episodes"], "expert_episodes": expert["episodes"],
                             "eval_seed": config.eval_seed,
                             "policies": {"random": "uniform in [-1, 1] (shared.evaluation.RandomPolicy)",
                                          "expert": "the final SAC actor, sampled (tanh-Gaussian)"}},
        "evaluation": "returns of the sampled policy on gymnasium's v5 env, 1,000 steps",
        "training": "training.json",
    }
    result = {"config": asdict(config), "device": device_name(device), "train_wall_s": round(train_wall, 1),
              "eval_wall_s": round(eval_time, 1), "env_wait_s": round(learner.env_time, 1),
              "env_steps": vec_steps * n, "stopped_early": stopped_early, "updates": learner.updates,
              "random_transitions": random_transitions,
              "env_steps_per_s": round(vec_steps * n / train_wall, 1), "curve": curve, "checkpoints": checkpoints,
              "medium_index": medium, "wall_s": round(time.time() - t0, 1)}
    atomic_write_json(out / "training.json", result)
    atomic_write_json(out / POLICIES_FILE, plan, sort_keys=False)
    print(f"[locomotion] {env}: expert return {expert['return_mean']:.1f}, medium {m['file']} "
          f"(return {medium_eval['return_mean']:.1f}, target {plan['medium']['target_return']:.1f}), random "
          f"{random['return_mean']:.1f}; medium-replay {sum(r['transitions'] for r in ladder):,} transitions from "
          f"{len(ladder)} rungs; wrote {out} ({result['wall_s']:.0f} s in all)", flush=True)
    return result


def main(argv: Optional[List[str]] = None) -> None:
    """python -m shared.data.locomotion train [--env ENV] [--config FILE] [--field value ...]"""
    from shared.utils import run_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        sys.exit("usage: python -m shared.data.locomotion train --env hopper|halfcheetah|walker2d "
                 "[--config configs/locomotion_sac.yaml] [--device cuda] [--num_envs N] [--field value ...]")
    sys.argv = [sys.argv[0]] + argv[1:]
    run_main(train, TrainConfig)


if __name__ == "__main__":
    main()
