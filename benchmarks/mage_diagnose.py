"""Why does a trained MAGE policy score what it scores? Behaviour statistics of one run on a goal task.

    python benchmarks/mage_diagnose.py runs/mage/maze2d-umaze/seed0 [--episodes 20] [--set target_return=0.5 ...]
    python benchmarks/mage_diagnose.py RUN --checkpoint RUN/checkpoint_000002000.pt --track 4   # tiny, after stage 2

Loads the newest checkpoint of a MAGE run folder (its config, models and normalisation) and evaluates
  * the policy as trained (inverse dynamics on the generated latent): normalised score, share of episodes that reach
    the goal, median steps to the first reward, share of the remaining steps spent at the goal, mean |action|;
  * (point mazes) the same generated plans followed by Diffuser's maze controller instead of the inverse-dynamics head
    (action = (s_plan[k] - s)[pos] + (s_plan[k] - s)[vel]): if this scores well the plans are good and the head is
    the weak part, if not the plans themselves are;
  * (antmaze) the same generated plans followed by the data collector's goal-reaching ant controller
    (shared/data/ant_controller.pt, aimed at the plan's (x, y) ``--track`` steps ahead, e.g. --track 32): a
    diagnosis, not MAGE (it borrows the expert that made the data): if it scores, the plans lead to the goal and the
    head's gait is what fails;
  * (point mazes) the action the policy takes at rest on the goal and 0.3 away from it (a policy that stays at its
    goal pushes back towards it there);
  * on training segments: how far the decoded plan (generated, argmax) and the decoded reconstruction (true latent)
    are from the logged future, per step ahead, against holding the current state; and the inverse-dynamics head's
    action error on true vs generated latents.
  * with --rollouts (point mazes and antmaze): the episodes' paths drawn on the maze, and a stall probe at the last
    state of every episode that never reached its goal: its speed and distance to the goal, the return R the policy
    asks for there, and how far the plan made there moves (as the policy plans, with R = 1 or 0.5 asked instead,
    and with sampled tokens), beside the same at those episodes' starts: a plan that stays put where the episode
    stalled is a fixed point of the loop.
An antmaze checkpoint brought back from the GPU host by device_grid.sh's KEEP_RUNS comes in 15 MB parts: `cat
keep-<run path>.pt.part* > keep.pt`, then `python benchmarks/mage_diagnose.py . --checkpoint keep.pt` (with a
checkpoint the run folder is not read; the dataset its config names is generated here on first use).
Numbers for the data (mean |action| of the dataset) are printed beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.datasets import speed_summary  # noqa: E402
from shared.evaluation import Recorder, evaluate, goal_behaviour, make_eval_env  # noqa: E402
from shared.mazes import cell_to_xy, is_free, maze_map, xy_to_cell  # noqa: E402
from shared.tasks import get_task, is_antmaze, is_point_maze  # noqa: E402
from shared.utils import RunError, load_latest_checkpoint, load_script  # noqa: E402

mage = load_script(ROOT / "algorithms" / "mage.py", "mage")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a goal task's maze is and what its observation holds: the layout, metres per cell (point mazes 1,
    antmaze 4), the velocity's (x, y) columns of an observation, and the distance to a wall's edge at which the agent
    touches it (the point mass's radius 0.1, plus 0.05; the ant's legs reach ~1 m from its torso)."""

    grid: list
    scale: float
    velocity: slice
    touch: float


def geometry(task_name: str) -> Geometry:
    task = get_task(task_name)
    if is_antmaze(task):
        from shared.data import ant

        return Geometry(maze_map(task.maze), ant.MAZE_SCALING, slice(15, 17), 1.0)  # obs: qpos[:15] + qvel[:14]
    if is_point_maze(task):
        return Geometry(maze_map(task.maze), 1.0, slice(2, 4), 0.15)  # obs: x, y, vx, vy
    raise RunError(f"{task_name} is neither a point maze nor an antmaze: no maze to draw or probe")


AntController = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs [N, 29], target (x, y) [N, 2]) -> actions


def collector_controller() -> AntController:
    """The data collector's goal-reaching ant (shared/data/ant_controller.pt, without its noise): the expert that
    made the data, so a policy built on it diagnoses plans or routes, it is not an offline-RL result."""
    from shared.data.ant_controller import load_controller
    from shared.data.antmaze import CONTROLLER_PATH

    return load_controller(str(CONTROLLER_PATH), "cpu").act


def fit_tracker(data, config, ahead: int, steps: int, seed: int) -> AntController:
    """An ant controller learnt from the dataset alone: a_t regressed (MSE) on the collector's heading-invariant
    features of (s_t, the logged (x, y) ``ahead`` steps later), an MLP of two 256-unit layers. Where the
    inverse-dynamics head must read the direction to go from a world-frame latent and the torso's quaternion, this one
    is given it in the torso's frame: if it follows the plans where the head does not, the head's view of the plan is
    what fails."""
    from shared.data import ant

    torch.manual_seed(seed)
    cols = mage.state_columns(config, data.obs_dim, data.cond_dim)
    norm = data.obs_norm

    def batch(n: int):
        b = data.buffer.sample(n)
        obs = norm.unnormalize(b["cond"][:, 0, cols].float().cpu().numpy())
        xy = norm.goal().unnormalize(b["x"][:, ahead, 1:3].float().cpu().numpy())  # (R, x, y, ...): x, y
        keep = b["mask"][:, ahead].bool().cpu().numpy()
        return (ant.controller_features(torch.as_tensor(obs[keep]), torch.as_tensor(xy[keep])),
                b["actions"][:, 0].float().cpu()[torch.as_tensor(keep)])

    net = torch.nn.Sequential(torch.nn.Linear(ant.FEATURE_DIM, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, ant.ACT_DIM), torch.nn.Tanh())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    first = last = None
    with torch.enable_grad():
        for step in range(steps):
            f, a = batch(256)
            loss = (net(f) - a).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            first = loss.item() if first is None else first
            last = loss.item() if step >= steps - 100 else last
    f, a = batch(4096)
    with torch.no_grad():
        held = (net(f) - a).pow(2).mean().item()
    print(f"learnt tracker ({ahead} steps ahead, {steps} steps of batch 256): action mse {first:.3f} -> {last:.3f} "
          f"(fresh batch {held:.3f}; the data's noise alone is 0.04)")
    net.eval()

    @torch.no_grad()
    def act(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
        return net(ant.controller_features(torch.as_tensor(obs, dtype=torch.float32),
                                           torch.as_tensor(target, dtype=torch.float32))).numpy()

    return act


class TrackingPolicy(mage.MagePolicy):
    """MagePolicy that follows the decoded plan's state ``track`` steps ahead with Diffuser's maze controller (point
    mazes) or with an ant controller aimed at the plan's (x, y) (antmaze) instead of the inverse-dynamics head."""

    def __init__(self, *args, track: int, ant: Optional[AntController] = None) -> None:
        super().__init__(*args)
        self.track, self.ant = track, ant

    @torch.no_grad()
    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        cond = self.ask_return(self.condition(obs))  # the R the policy plans with, as MagePolicy
        self.model.eval()
        f_hat, _ = self.model.transformer.generate(cond, self.model.vq, self.config.temperature)
        plan = self.model.decode(f_hat, cond)[:, self.track, 1:].float().cpu().numpy()
        if self.ant is not None:  # the plan's first two columns are (x, y) with or without plan_dims
            return self.ant(obs, self.data.obs_norm.goal().unnormalize(plan[:, :2]))
        target = plan * self.data.obs_norm.std + self.data.obs_norm.mean
        return np.clip((target[:, :2] - obs[:, :2]) + (target[:, 2:4] - obs[:, 2:4]), -1.0, 1.0)


class RoutePolicy(mage.MagePolicy):
    """No plan: an ant controller aimed straight at the goal the policy would plan for (with waypoints: the square
    waypoint_hops ahead on the data's route, or the goal once that close). What the routes give without MAGE."""

    def __init__(self, *args, ant: AntController) -> None:
        super().__init__(*args)
        self.ant = ant

    def act(self, obs: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        self.condition(obs)  # sets goal_n: the waypoint (or goal), normalised
        return self.ant(obs, self.data.obs_norm.goal().unnormalize(self.goal_n))


@torch.no_grad()
def plan_accuracy(model, data, segments: int, seed: int) -> None:
    """Decoded plans and actions on logged segments (positions: normalised state dims 0-1)."""
    torch.manual_seed(seed)
    batch = data.buffer.sample(segments)
    x, cond = batch["x"], batch["cond"][:, 0]
    f_true = model.vq(model.encoder(x))[0]
    f_gen = model.transformer.generate(cond, model.vq, 0.0)[0]
    steps = [k for k in (1, 2, 4, 8, 16, 32, 64) if k < x.shape[1]]

    def position_error(plan: torch.Tensor) -> str:
        err = (plan[:, :, 1:3] - x[:, :, 1:3]).pow(2).mean((0, 2))
        return " ".join(f"{err[k]:.4f}" for k in steps)

    print(f"plan position error at steps {steps} ahead ({segments} training segments; mean squared, in units of the "
          f"positions' std, {data.obs_norm.std[0]:.2f} / {data.obs_norm.std[1]:.2f} in x / y):")
    print(f"  decoded reconstruction (true latent) {position_error(model.decode(f_true, cond))}")
    print(f"  decoded generated plan (argmax)      {position_error(model.decode(f_gen, cond))}")
    print(f"  holding the current state            {position_error(x[:, :1].expand_as(x))}")
    logged = batch["actions"][:, 0]
    for name, f in (("true", f_true), ("generated", f_gen)):
        act = model.act(f, cond)
        cos = torch.nn.functional.cosine_similarity(act, logged).mean()
        print(f"  head on {name:9s} latents: action mse {(act - logged).pow(2).mean():.3f}, cosine {cos:.2f}, "
              f"mean |a| {act.abs().mean():.2f}")


def refit_head(model, data, config, head_condition: str, steps: int, seed: int, pool: int = 32768) -> float:
    """Replace the inverse-dynamics head by a fresh one that sees ``head_condition`` ("all" of the condition, or the
    "state" alone; TrainConfig.head_condition) and fit it alone, everything else frozen, on the argmax generated
    latents of ``pool`` training segments (what the head acts on at evaluation): does the same model, with a head
    that cannot see the goal, act differently? With ``--set head_track=K`` the fresh head also sees where the plan is
    K steps on (TrainConfig.head_track). Returns the refitted head's L_inv on those latents."""
    torch.manual_seed(seed)
    head = mage.inverse_head(dataclasses.replace(config, head_condition=head_condition), data.obs_dim,
                             data.cond_dim, data.act_dim).to(next(model.parameters()).device)
    latents, conds, actions, masks, tracks = [], [], [], [], []
    with torch.no_grad():
        for _ in range(pool // 1024):
            batch = data.buffer.sample(1024)
            cond = batch["cond"][:, 0]
            latents.append(model.transformer.generate(cond, model.vq, 0.0)[0])
            conds.append(cond), actions.append(batch["actions"][:, 0]), masks.append(batch["mask"][:, 0])
            if model.head_track:  # as training pairs them: the logged position head_track steps on
                tracks.append(model.track_features(latents[-1], cond, mage.logged_target(batch["x"], config)))
    f, cond, act, mask = (torch.cat(t) for t in (latents, conds, actions, masks))
    track = torch.cat(tracks) if tracks else None
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        i = torch.randint(len(f), (config.batch_size,))
        loss = mage.masked_mse(head(f[i], cond[i], None if track is None else track[i]), act[i], mask[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        fit = mage.masked_mse(head(f, cond, track), act, mask)
    print(f"head refitted ({head_condition}: condition columns {head.cond_cols}) in {steps} steps on {len(f)} "
          f"generated latents: L_inv {fit:.3f}")
    model.inverse = head.eval()
    return float(fit)


def plot_rollouts(task_name: str, policy, episodes: int, seed: int, out: Path):
    """Evaluate ``policy`` as ``evaluate`` does and draw every episode's (x, y) path on the maze: reached episodes
    thin and blue, the others red, each of the first of them (up to 11) also on its own panel with start and goal.
    Returns the recorder, which episodes reached their goal, and the goals (for ``stall_probe``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = Recorder(policy)
    result = evaluate(task_name, rec, episodes, seed, num_envs=min(episodes, 50), progress=False)
    paths = np.concatenate([np.stack(wave, 1) for wave in rec.paths], 0)  # [episodes, T, 2] (wave lengths match:
    # every wave runs max_episode_steps on maze tasks)
    reached = np.asarray(result.first_reward_steps) >= 0
    goals = np.asarray(result.goals)
    geo = geometry(task_name)
    grid, a = geo.grid, geo.scale
    failed = np.flatnonzero(~reached)[:11]
    cols = min(4, 1 + len(failed))
    rows = -(-(1 + len(failed)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    panels = [(axes.flat[0], np.arange(episodes), f"all {episodes}: {reached.mean():.0%} reached")]
    panels += [(ax, [i], f"episode {i} (seed {seed + i})") for ax, i in zip(list(axes.flat)[1:], failed)]
    for ax, idx, title in panels:
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                if v == 1:
                    x, y = cell_to_xy(grid, (r, c)) * a
                    ax.add_patch(plt.Rectangle((x - a / 2, y - a / 2), a, a, color="0.75", lw=0))
        for i in idx:
            ok = reached[i]
            ax.plot(paths[i, :, 0], paths[i, :, 1], color="tab:blue" if ok else "tab:red",
                    lw=0.5 if ok else 1.0, alpha=0.35 if ok and len(idx) > 1 else 0.9)
            if len(idx) == 1 or not ok:
                ax.plot(*goals[i], marker="*", color="black" if ok else "tab:red", ms=9)
            if len(idx) == 1:
                ax.plot(*paths[i, 0], marker="o", color="tab:green", ms=5)
        ax.set_title(title, fontsize=8)
        ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlim(-a * len(grid[0]) / 2, a * len(grid[0]) / 2), ax.set_ylim(-a * len(grid) / 2, a * len(grid) / 2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{task_name}: MAGE's evaluation episodes (red: never reached the goal, star; green: start)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}: {int((~reached).sum())} of {episodes} episodes never reached the goal")
    return rec, reached, goals


@torch.no_grad()
def plans_at(policy, obs: np.ndarray, goals: np.ndarray, r: Optional[float] = None,
             temperature: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At states ``obs`` [N, obs_dim] with goals [N, 2]: the return R that ``policy`` (a MagePolicy) plans with
    there (with ``return_condition``; else its target_return), and for that plan, or for one made with ``r`` instead,
    its decoded (x, y) path [N, H, 2] (world units) and the head's action [N, act_dim] (clipped as the policy acts)."""
    model, data, config = policy.model, policy.data, policy.config
    policy.reset(goals)
    cond = policy.ask_return(policy.condition(obs))
    if r is not None and config.return_condition:
        cond = torch.cat([torch.full_like(cond[:, :1], r), cond[:, 1:]], 1)
    asked = cond[:, 0] if config.return_condition else torch.full_like(cond[:, 0], config.target_return)
    f_hat, _ = model.transformer.generate(cond, model.vq, temperature)
    path = model.decode(f_hat, cond)[:, :, 1:3].float().cpu().numpy() * data.obs_norm.std[:2] + data.obs_norm.mean[:2]
    action = model.act(f_hat, cond).clamp(-1.0, 1.0).float().cpu().numpy()
    return asked.cpu().numpy(), path, action


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, 2] arrays (0 where either is ~0)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.where((na > 1e-6) & (nb > 1e-6), (a * b).sum(1) / np.maximum(na * nb, 1e-12), 0.0)


def wall_geometry(geo: Geometry, xy: np.ndarray, path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For states ``xy`` [N, 2] and their plans' paths [N, H, 2]: the distance from each state to the nearest wall
    cell's edge (world units; ``geo.touch`` or less is touching), and the first plan step that lies in a wall cell
    (-1: none)."""
    grid = geo.grid
    walls = [cell_to_xy(grid, (i, j)) for i in range(len(grid)) for j in range(len(grid[0]))
             if not is_free(grid, (i, j))]
    w = np.asarray(walls)  # wall cell centres in cell units (cells 1 x 1)
    xy, path = xy / geo.scale, path / geo.scale
    gap = np.abs(xy[:, None, :] - w[None]) - 0.5  # per axis, outside the cell when > 0
    near = np.linalg.norm(np.maximum(gap, 0.0), axis=2).min(1) * geo.scale
    inside = (np.abs(path[:, :, None, :] - w[None, None]) < 0.5).all(3).any(2)  # [N, H]
    first = np.where(inside.any(1), inside.argmax(1), -1)
    return near, first


def moved(path: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """How far each plan's last step lies from its state [N] (world units)."""
    return np.linalg.norm(path[:, -1] - xy[:, :2], axis=1)


def stall_probe(policy, rec, reached: np.ndarray, goals: np.ndarray) -> None:
    """Where the episodes that never reached their goal ended up, and what the model plans there: is the plan to
    stay (a fixed point of the closed loop), and does asking for another return, or sampling, move it?"""
    first, last = np.concatenate(rec.first_obs), np.concatenate(rec.last_obs)
    failed = np.flatnonzero(~reached)
    if not len(failed):
        return
    data, config = policy.data, policy.config
    geo = geometry(config.task)
    speed = lambda o: np.linalg.norm(o[..., geo.velocity], axis=-1)  # noqa: E731
    dist = np.linalg.norm(last[failed, :2] - goals[failed], axis=1)
    print(f"stall probe: the {len(failed)} episodes that never reached the goal, at their last state (speed "
          f"{np.median(speed(last[failed])):.3f} median, {np.median(dist):.2f} from the goal)")
    if is_antmaze(get_task(config.task)):  # obs = [x, y, z, quat (w, x, y, z), joints, qvel]: is it on its back?
        from shared.data.ant import upright

        up = upright(last[failed, 3:7])  # the torso's z axis, world z component (1 upright, -1 on its back)
        print(f"  the ant there: torso height {np.median(last[failed, 2]):.2f} (median), upside down (torso z axis "
              f"pointing down) in {np.mean(up < 0):.0%}, tilted over 60 degrees in {np.mean(up < 0.5):.0%}")
    # how often the data shows a state that slow (its collector never stops on the way: such states are rare in it)
    cols = mage.state_columns(config, data.obs_dim, data.cond_dim)  # s_t in the condition (x may hold fewer dims)
    obs = data.buffer.fields["cond"][:, cols].float().cpu().numpy() * data.obs_norm.std + data.obs_norm.mean
    print(f"  data: {speed_summary(obs, geo.velocity)}; the episodes start at speed "
          f"{np.median(speed(first)):.3f} (median)")
    if reached.any():
        r0, _, _ = plans_at(policy, first[reached], goals[reached])
        print(f"  reached episodes at their start: R asked {np.median(r0):.3f} (median)")
    rows = [("as the policy plans", {}), ("R = 1", dict(r=1.0)), ("R = 0.5", dict(r=0.5)),
            ("sampled, temperature 1", dict(temperature=1.0))]
    for name, kw in rows:
        if "r" in kw and not config.return_condition:
            continue
        r_star, path, act = plans_at(policy, last[failed], goals[failed], **kw)
        _, path0, act0 = plans_at(policy, first[failed], goals[failed], **kw)
        print(f"  {name:24s} at the end: R asked {np.median(r_star):.3f}, plan "
              f"moves {np.median(moved(path, last[failed])):.2f} over the horizon, |action| "
              f"{np.median(np.abs(act).mean(1)):.2f}; at their start: plan moves "
              f"{np.median(moved(path0, first[failed])):.2f}, |action| {np.median(np.abs(act0).mean(1)):.2f}  "
              "(medians)")
    # where the plan goes, and where the head pushes: a plan through a wall is the transformer's error, a plan
    # around it with the action into it the head's
    xy = last[failed, :2]
    r_star, path, act = plans_at(policy, last[failed], goals[failed])
    near, in_wall = wall_geometry(geo, xy, path)
    ahead = path[:, min(8, path.shape[1] - 1)] - xy  # the plan's direction over its first 8 steps
    # the action's direction: a point mass's action is its (x, y) force; an ant's joint torques have none
    to_goal, to_plan = ((cosine(act[:, :2], goals[failed] - xy), cosine(act[:, :2], ahead)) if act.shape[1] == 2
                        else (np.full(len(xy), np.nan), np.full(len(xy), np.nan)))
    directed = act.shape[1] == 2  # only then is the action a direction to compare with the goal's and the plan's
    print(f"  at the end: {np.mean(near < geo.touch):.0%} touch a wall (within {geo.touch} of a wall cell's edge); "
          f"the plan enters a wall "
          f"cell in {np.mean(in_wall >= 0):.0%} (first such step: median "
          f"{np.median(in_wall[in_wall >= 0]) if (in_wall >= 0).any() else float('nan'):.0f})"
          + (f"; cosine of the action with the straight line to the goal {np.median(to_goal):.2f}, with the plan's "
             f"first 8 steps {np.median(to_plan):.2f} (medians)" if directed else ""))
    for i, k in enumerate(failed[:15]):
        print(f"    episode {k}: end ({last[k, 0]:.2f}, {last[k, 1]:.2f}) speed {speed(last[k]):.3f}, "
              f"goal ({goals[k, 0]:.1f}, {goals[k, 1]:.1f}); R asked {r_star[i]:.3f}, plan moves "
              f"{moved(path[i:i + 1], xy[i:i + 1])[0]:.2f}, |action| {np.abs(act[i]).mean():.2f}; wall "
              f"{near[i]:.2f} away, plan in a wall from step {in_wall[i]}"
              + (f"; action vs goal line {to_goal[i]:+.2f}, vs plan {to_plan[i]:+.2f}" if directed else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a MAGE run folder: out_dir/mage/<task>/seed<k>")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--track", type=int, default=None, help="plan step followed by a controller (0: skip): point "
                   "mazes push the point mass towards the plan's state (default 1); antmaze aims the data collector's "
                   "ant controller at the plan's (x, y) there (default H / 2: it was trained on goals 2-4 m away)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                   help="evaluation-time config overrides (--set a=1 b=2, or --set a=1 --set b=2)")
    p.add_argument("--segments", type=int, default=1024, help="training segments for the plan-accuracy check")
    p.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint file of the run (default: the newest)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (the run's fast path, when it trained with compile)")
    p.add_argument("--rollouts", type=Path, metavar="PNG", help="also draw the evaluation episodes' paths on the maze "
                   "(point mazes and antmaze; e.g. with --set task=multi2d-large on a maze2d-large run: its random "
                   "goals)")
    p.add_argument("--refit-head", choices=["all", "state", "track"], help="first replace the head by a fresh one "
                   "that sees all of the condition, the state alone, or only where the plan is --set head_track=K "
                   "steps on (TrainConfig.head_condition), fitted alone on generated latents (the rest frozen)")
    p.add_argument("--refit-steps", type=int, default=3000, help="steps of that fit")
    p.add_argument("--fit-tracker", type=int, default=0, metavar="STEPS", help="antmaze: also learn an ant controller "
                   "from the data (heading-frame features of the position --track steps ahead) in STEPS steps, and "
                   "evaluate it on the plans; and both controllers aimed at the routes without a plan")
    p.add_argument("--only", nargs="+", default=[], metavar="TEXT", help="evaluate only the ways of acting whose "
                   "names contain one of these (e.g. --only route: the no-plan controls beside a MAGE score)")
    args = p.parse_args()
    if args.checkpoint is not None:  # e.g. checkpoint_000002000.pt: the model after stage 2 of the tiny config
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    else:
        state = load_latest_checkpoint(args.run_dir, map_location="cpu")
    if state is None:
        raise RunError(f"no readable checkpoint in {args.run_dir}")
    fields = {f.name: f for f in dataclasses.fields(mage.TrainConfig)}
    values = {k: v for k, v in state["config"].items() if k in fields}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            raise RunError(f"unknown config field '{key}'")
        current = values.get(key, fields[key].default)  # a field newer than the checkpoint: its default's type
        values[key] = type(current)(value) if not isinstance(current, bool) else value == "true"
    device = torch.device(args.device)
    config = mage.TrainConfig(**{**values, "device": args.device})
    point_maze = is_point_maze(get_task(config.task))
    if args.rollouts:
        geometry(config.task)  # a task without a maze: one line, before any data or evaluation work
    data = mage.load_data(config, device)
    if not data.goal_conditioned:
        raise RunError(f"{config.task} is not a goal task: this diagnosis measures goal reaching")
    model = mage.MAGE(config, data.obs_dim, data.cond_dim, data.act_dim, data.obs_norm).to(device)
    # the weights the run acts with; a head that --refit-head replaces may differ (e.g. --set head_track=32 on a
    # checkpoint trained without it: its head and the normaliser it keeps are new)
    missing, unexpected = model.load_state_dict(state["model"], strict=not args.refit_head)
    if [k for k in missing + unexpected if not k.startswith("inverse.") and k not in ("obs_mean", "obs_std")]:
        raise RunError(f"checkpoint does not fit this config: missing {missing}, unexpected {unexpected}")
    model.eval()
    print(f"data: mean |action| {data.buffer.fields['actions'].abs().mean():.2f}")
    plan_accuracy(model, data, args.segments, config.seed)
    if data.waypoints is not None:  # the evaluation's route on the data's graph: does it stitch, and through walls?
        obs, info = make_eval_env(config.task).reset(seed=config.eval_seed)
        graph, geo = data.waypoints, geometry(config.task)
        dist, ahead = graph.route(np.asarray(info["goal"], np.float64), 1)
        node = first = graph.node(np.asarray(obs, np.float64)[None, :2])[0]
        cells = set()
        while dist[node] > 0:
            node = ahead[node]
            cells.add(xy_to_cell(geo.grid, graph.centre[node] / geo.scale))
        print(f"waypoints: {len(graph.centre)} squares; the evaluation start's route to its goal: {dist[first]} "
              f"squares (-1: none) through {len(cells)} maze cells, {sum(not is_free(geo.grid, c) for c in cells)} "
              "of them walls")
    if args.refit_head:
        refit_head(model, data, config, args.refit_head, args.refit_steps, config.seed)
    policies = {"inverse-dynamics head": mage.MagePolicy(model, data, config, device)}
    if args.track is None:
        args.track = 1 if point_maze else config.horizon // 2
    if args.track:
        if not 0 < args.track < config.horizon:
            raise RunError(f"--track {args.track}: a plan step in 1..{config.horizon - 1} (0: no controller)")
        if point_maze:
            policies[f"controller on plan step {args.track}"] = TrackingPolicy(model, data, config, device,
                                                                               track=args.track)
        else:
            collector = collector_controller()
            policies[f"collector on plan step {args.track}"] = TrackingPolicy(model, data, config, device,
                                                                              track=args.track, ant=collector)
            if args.fit_tracker:
                learnt = fit_tracker(data, config, args.track, args.fit_tracker, config.seed)
                policies[f"learnt tracker on plan step {args.track}"] = TrackingPolicy(
                    model, data, config, device, track=args.track, ant=learnt)
                policies["collector on the route, no plan"] = RoutePolicy(model, data, config, device, ant=collector)
                policies["learnt tracker on the route"] = RoutePolicy(model, data, config, device, ant=learnt)
    rows = {name: goal_behaviour(config.task, policy, args.episodes, config.eval_seed, num_envs=args.episodes)
            for name, policy in policies.items() if not args.only or any(text in name for text in args.only)}
    if not rows:
        raise RunError(f"--only {' '.join(args.only)}: none of {', '.join(policies)}")
    for name, row in rows.items():
        print(f"{name:28s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if args.rollouts:
        rec, reached, goals = plot_rollouts(config.task, policies["inverse-dynamics head"], args.episodes,
                                            config.eval_seed, args.rollouts)
        stall_probe(policies["inverse-dynamics head"], rec, reached, goals)
    if not point_maze:  # the probes at rest below build point-mass states (x, y, 0, 0)
        return
    env = make_eval_env(config.task)
    _, info = env.reset(seed=config.eval_seed)
    goal = info["goal"]
    policy = mage.MagePolicy(model, data, config, device)
    for offset in [(0.0, 0.0), (0.3, 0.0), (-0.3, 0.0), (0.0, 0.3), (0.0, -0.3)]:
        s = np.array([[goal[0] + offset[0], goal[1] + offset[1], 0.0, 0.0]], np.float32)
        policy.reset(goal[None])
        print(f"at rest {offset} from the goal: action {np.round(policy.act(s, np.zeros(1, np.float32))[0], 2)}")


if __name__ == "__main__":
    try:
        main()
    except RunError as exc:  # one clear line, as the training scripts do
        sys.exit(f"error: {exc}")
