import json
import math

import numpy as np
import pytest

from shared import evaluation
from shared.evaluation import EvalResult, RandomPolicy, Recorder, evaluate
from shared.mazes import WaypointPolicy, cell_to_xy, is_free, maze_map, xy_to_cell
from shared.reference_scores import EMBEDDED_TASKS
from shared.tasks import REFERENCE_SCORES_PATH, normalized_score


@pytest.mark.parametrize("policy_name", ["random", "expert"])
def test_num_envs_does_not_change_results(policy_name):
    def make():
        return RandomPolicy(2, seed=3) if policy_name == "random" else WaypointPolicy("umaze", noise=0.5, seed=3)

    one = evaluate("maze2d-umaze", make(), episodes=6, seed=11, num_envs=1, progress=False)
    four = evaluate("maze2d-umaze", make(), episodes=6, seed=11, num_envs=4, progress=False)
    assert one.returns == four.returns
    assert (one.first_reward_steps, one.starts, one.goals) == (four.first_reward_steps, four.starts, four.goals)
    assert len(one.returns) == 6 and one.latency_batch_size == 1 and four.latency_batch_size == 4


def test_multi_goal_task_and_result_fields():
    result = evaluate("multi2d-medium", WaypointPolicy("medium", seed=0), episodes=4, seed=0, num_envs=2,
                      progress=False)
    assert isinstance(result, EvalResult)
    assert result.success_rate == 1.0 and result.return_mean > 0
    assert result.action_latency_ms > 0 and math.isfinite(result.score_mean)
    d = result.to_dict()
    for key in ("returns", "normalized", "return_mean", "return_std", "score_mean", "score_std", "success_rate",
                "episodes", "action_latency_ms", "latency_batch_size"):
        assert key in d
    json.dumps(d)


@pytest.mark.parametrize("policy_name", ["random", "expert"])
def test_per_episode_first_reward_steps_starts_and_goals(policy_name):
    policy = RandomPolicy(2, seed=0) if policy_name == "random" else WaypointPolicy("umaze", seed=0)
    rec = Recorder(policy)
    result = evaluate("multi2d-umaze", rec, episodes=6, seed=0, num_envs=4, progress=False)  # waves of 4 and 2
    first = np.array(result.first_reward_steps)
    assert first.shape == (6,) and np.array_equal(first >= 0, np.array(result.returns) > 0)
    assert result.success_rate == np.mean(first >= 0)
    # the policy is shown step t's reward at step t + 1: its first positive one is the env step of the first reward
    shown = [col for rewards, _ in rec.waves for col in np.stack(rewards[1:]).T]
    assert [int(np.argmax(col > 0)) if (col > 0).any() else -1 for col in shown] == first.tolist()
    if policy_name == "expert":
        assert (first > 0).all()  # reached in every episode, never at step 0: the start is another cell
    else:
        assert (first == -1).sum() >= 5
    grid = maze_map("umaze")
    assert np.array(result.starts).shape == np.array(result.goals).shape == (6, 2)
    for start, goal in zip(result.starts, result.goals):
        start_cell, goal_cell = xy_to_cell(grid, start), xy_to_cell(grid, goal)
        assert is_free(grid, start_cell) and start_cell != goal_cell
        assert np.allclose(cell_to_xy(grid, goal_cell), goal)  # the goal is its cell's centre
    assert len(set(map(tuple, result.goals))) > 1  # a random goal per episode
    # the recorded first and last observations are where each episode began and where its path ends
    first_obs, last_obs = np.concatenate(rec.first_obs), np.concatenate(rec.last_obs)
    paths = np.concatenate([np.stack(wave, 1) for wave in rec.paths], 0)
    assert first_obs.shape == last_obs.shape == (6, 4)
    assert np.allclose(first_obs[:, :2], result.starts) and np.allclose(last_obs[:, :2], paths[:, -1])
    # the closest approach to the goal over every position the episode visited (those the policy saw, and the end)
    goals, ends = np.array(result.goals), np.array(result.ends)
    seen = np.linalg.norm(paths - goals[:, None], axis=2).min(1)
    assert np.allclose(result.closest, np.minimum(seen, np.linalg.norm(ends - goals, axis=1)), atol=1e-5)
    if policy_name == "expert":
        assert (np.array(result.closest) < 0.5).all()  # reached: within the goal radius


def test_tasks_without_goals_record_no_starts_or_goals():
    result = evaluate("hopper-medium", RandomPolicy(3, seed=0), episodes=3, seed=0, num_envs=2, progress=False)
    assert result.starts == result.goals == result.closest == result.ends == [] and len(result.first_reward_steps) == 3


class EndingEnv:
    """Episode of seed s: observation (s, -s, 0, 0), reward 1 from step FIRST[s] on, ends after LENGTH[s] steps."""

    LENGTH, FIRST = [2, 5, 3, 4, 1], [1, -1, 0, 3, -1]  # -1: never rewarded

    def reset(self, seed):
        self.seed, self.steps = seed, 0
        return np.array([seed, -seed, 0, 0], np.float32), {"goal": np.array([seed, 1.0], np.float32)}

    def step(self, action):
        first = self.FIRST[self.seed]
        reward = float(0 <= first <= self.steps)
        self.steps += 1
        return np.zeros(4, np.float32), reward, self.steps == self.LENGTH[self.seed], False, {}


@pytest.mark.parametrize("num_envs", [2, 3])
def test_first_reward_steps_of_episodes_that_end_at_different_steps(num_envs, monkeypatch):
    """Envs whose episode ended are not stepped again: each episode's step index still counts its own steps."""
    monkeypatch.setitem(evaluation._ENV_CACHE, "maze2d-umaze", [EndingEnv() for _ in range(num_envs)])
    result = evaluate("maze2d-umaze", RandomPolicy(2), episodes=5, seed=0, num_envs=num_envs, progress=False)
    assert result.first_reward_steps == EndingEnv.FIRST
    assert result.returns == [1.0, 0.0, 3.0, 1.0, 0.0]
    assert result.starts == [[s, -s] for s in range(5)] and result.goals == [[s, 1.0] for s in range(5)]


class RecordingPolicy(RandomPolicy):
    def __init__(self):
        super().__init__(2, seed=0)
        self.goals, self.rewards_seen = [], []

    def reset(self, goals):
        self.goals.append(goals.copy())
        super().reset(goals)

    def act(self, obs, last_rewards):
        assert obs.dtype == np.float32 and obs.shape == (len(self.rngs), 4)
        self.rewards_seen.append(last_rewards.copy())
        return super().act(obs, last_rewards)


def test_policy_protocol_calls():
    policy = RecordingPolicy()
    evaluate("maze2d-umaze", policy, episodes=3, seed=0, num_envs=2, progress=False)
    assert [g.shape for g in policy.goals] == [(2, 2), (1, 2)]
    assert np.all(policy.goals[0] == np.array([-1.0, 1.0], np.float32))  # umaze eval goal cell (1, 1)
    assert not policy.rewards_seen[0].any()  # 0 at t = 0
    assert len(policy.rewards_seen) == 2 * 300


def test_reference_file_covers_embedded_tasks():
    table = json.loads(REFERENCE_SCORES_PATH.read_text())
    for name in EMBEDDED_TASKS:
        entry = table["tasks"][name]
        assert entry["episodes"] >= 100 and entry["expert"] > entry["random"] >= 0
        assert normalized_score(name, entry["random"]) == pytest.approx(0.0, abs=1e-9)
        assert normalized_score(name, entry["expert"]) == pytest.approx(100.0)


@pytest.mark.parametrize("policy_name", ["random", "expert"])
def test_reference_scores_reproduce(policy_name):
    """Re-measuring with the stored seed gives the stored numbers: normalised 0 (random) and 100 (expert)."""
    table = json.loads(REFERENCE_SCORES_PATH.read_text())
    entry, seed = table["tasks"]["maze2d-umaze"], table["eval_seed"]
    policy = RandomPolicy(2, seed=seed) if policy_name == "random" else WaypointPolicy("umaze", 0.0, seed)
    result = evaluate("maze2d-umaze", policy, entry["episodes"], seed, num_envs=10, progress=False)
    assert result.return_mean == pytest.approx(entry[policy_name])
    assert result.score_mean == pytest.approx(0.0 if policy_name == "random" else 100.0, abs=1e-9)


def test_d4rl_task_needs_d4rl():
    try:
        import d4rl  # noqa: F401
        pytest.skip("d4rl is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="requires the `gym` and `d4rl` packages") as info:
        evaluate("maze2d-umaze-v1", RandomPolicy(2), episodes=1, seed=0, progress=False)
    assert "\n" not in str(info.value)
