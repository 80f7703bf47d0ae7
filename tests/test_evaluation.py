import json
import math

import numpy as np
import pytest

from shared.evaluation import EvalResult, RandomPolicy, evaluate
from shared.mazes import WaypointPolicy
from shared.reference_scores import EMBEDDED_TASKS
from shared.tasks import REFERENCE_SCORES_PATH, normalized_score


@pytest.mark.parametrize("policy_name", ["random", "expert"])
def test_num_envs_does_not_change_results(policy_name):
    def make():
        return RandomPolicy(2, seed=3) if policy_name == "random" else WaypointPolicy("umaze", noise=0.5, seed=3)

    one = evaluate("maze2d-umaze", make(), episodes=6, seed=11, num_envs=1, progress=False)
    four = evaluate("maze2d-umaze", make(), episodes=6, seed=11, num_envs=4, progress=False)
    assert one.returns == four.returns
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
