"""Property tests (hypothesis) of shared/buffer.py against brute-force definitions on random trajectories."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.buffer import Normalizer, SegmentBuffer, goal_returns_to_go, returns_to_go, split_trajectories

SETTINGS = settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ in the checkout


@st.composite
def episode_flags(draw, max_len=60):
    """(terminals, timeouts) of a random flat dataset (possibly ending mid-trajectory)."""
    n = draw(st.integers(1, max_len))
    terminals = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    timeouts = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    # sparse ends as well as dense ones
    keep = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))) < draw(st.floats(0.05, 1))
    return terminals & keep, timeouts & keep


@st.composite
def trajectories(draw, max_len=60):
    terminals, timeouts = draw(episode_flags(max_len))
    seed = draw(st.integers(0, 2**31 - 1))
    return terminals, timeouts, np.random.default_rng(seed)


@SETTINGS
@given(episode_flags())
def test_split_covers_every_index_once_and_ends_at_every_terminal_or_timeout(flags):
    terminals, timeouts = flags
    n = len(terminals)
    bounds = split_trajectories(terminals, timeouts)
    covered = np.concatenate([np.arange(s, e) for s, e in bounds])
    assert covered.tolist() == list(range(n))  # every index exactly once, in order
    assert (bounds[:, 1] > bounds[:, 0]).all()  # no empty trajectory
    done = terminals | timeouts
    ends = set((bounds[:, 1] - 1).tolist())
    assert set(np.flatnonzero(done).tolist()) <= ends  # a trajectory ends at every terminal/timeout...
    for s, e in bounds:  # ...and nowhere else, except the unfinished last one
        assert not done[s:e - 1].any()
        assert done[e - 1] or e == n


@SETTINGS
@given(episode_flags(), st.integers(0, 2**31 - 1))
def test_split_with_goals_ends_at_timeouts_and_goal_switches_never_at_a_terminal_on_the_way(flags, seed):
    """Hindsight goal use (MAGE, dt/iql with the goal): a trajectory is one walk to one commanded goal; a terminal
    (antmaze: a step at the evaluation goal) ends it only where the goal changes next."""
    terminals, timeouts = flags
    n = len(terminals)
    goal_id = np.cumsum(np.random.default_rng(seed).random(n) < 0.3)  # runs of one commanded goal
    goals = np.stack([goal_id, -goal_id], axis=1).astype(np.float32)
    bounds = split_trajectories(terminals, timeouts, goals)
    covered = np.concatenate([np.arange(s, e) for s, e in bounds])
    assert covered.tolist() == list(range(n))
    switch = np.r_[np.any(goals[1:] != goals[:-1], axis=1), True]
    expected_done = timeouts | (terminals & switch)
    for s, e in bounds:
        assert not expected_done[s:e - 1].any()
        assert expected_done[e - 1] or e == n
    assert set(np.flatnonzero(expected_done).tolist()) <= set((bounds[:, 1] - 1).tolist())
    same_goal = np.zeros((n, 2))  # one goal all along: only timeouts end trajectories
    assert np.array_equal(split_trajectories(terminals, timeouts, same_goal),
                          split_trajectories(np.zeros(n, bool), timeouts))


def _brute_rtg(rewards, bounds, discount):
    out = np.zeros(len(rewards))
    for s, e in bounds:
        for t in range(s, e):
            out[t] = sum(discount ** (k - t) * rewards[k] for k in range(t, e))
    return out


@SETTINGS
@given(trajectories(), st.sampled_from([1.0, 0.99, 0.9, 0.5, 0.0]))
def test_returns_to_go_equal_brute_force(data, discount):
    terminals, timeouts, rng = data
    rewards = rng.normal(size=len(terminals)).astype(np.float32)
    bounds = split_trajectories(terminals, timeouts)
    rtg = returns_to_go(rewards, bounds, discount)
    assert rtg.dtype == np.float32
    np.testing.assert_allclose(rtg, _brute_rtg(rewards.astype(np.float64), bounds, discount), rtol=1e-5, atol=1e-4)


@SETTINGS
@given(trajectories(), st.sampled_from([1.0, 0.99, 0.9, 0.5]), st.floats(0.05, 1.5))
def test_goal_returns_to_go_in_unit_interval_one_at_goal_and_brute_force(data, discount, radius):
    terminals, timeouts, rng = data
    n = len(terminals)
    positions = rng.uniform(-2, 2, size=(n, 2))
    goals = rng.uniform(-2, 2, size=(n, 2))
    bounds = split_trajectories(terminals, timeouts)
    rtg = goal_returns_to_go(positions, goals, bounds, radius, discount)
    assert ((rtg >= 0) & (rtg <= 1)).all()
    reached = np.linalg.norm(positions - goals, axis=-1) <= radius
    assert (rtg[reached] == 1.0).all()
    expected = np.zeros(n)
    for s, e in bounds:  # discount^(steps until the first step within the radius, in the same trajectory)
        for t in range(s, e):
            hits = [k for k in range(t, e) if reached[k]]
            expected[t] = discount ** (hits[0] - t) if hits else 0.0
    np.testing.assert_allclose(rtg, expected, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(trajectories(max_len=40), st.integers(1, 8), st.integers(0, 5), st.integers(1, 4),
       st.sampled_from([0.0, 0.5, 1.0]))
def test_segment_buffer_samples_inside_one_trajectory(data, horizon, end_window, min_length, end_fraction):
    terminals, timeouts, rng = data
    n = len(terminals)
    bounds = split_trajectories(terminals, timeouts)
    if not (bounds[:, 1] - bounds[:, 0] >= min_length).any():
        min_length = 1
    index = np.arange(n)
    traj_id = np.repeat(np.arange(len(bounds)), bounds[:, 1] - bounds[:, 0])
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    buffer = SegmentBuffer({"index": index, "obs": obs}, bounds, horizon, min_length=min_length,
                           end_window=end_window)
    kept = [(s, e) for s, e in bounds if e - s >= min_length]
    assert len(buffer) == sum(e - s for s, e in kept) and buffer.num_trajectories == len(kept)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    batch = buffer.sample(64, generator=generator, end_fraction=end_fraction)
    idx, mask = batch["index"].numpy(), batch["mask"].numpy()
    assert idx.shape == mask.shape == (64, horizon) and batch["obs"].shape == (64, horizon, 3)
    n_end = int(round(64 * end_fraction)) if end_window else 0
    for row, (rows, m) in enumerate(zip(idx, mask)):
        start, end = bounds[traj_id[rows[0]]]
        assert end - start >= min_length
        real = int(m.sum())
        assert m.tolist() == [1.0] * real + [0.0] * (horizon - real) and real >= 1
        # real steps are consecutive dataset steps of one trajectory; padding repeats its last step
        assert rows[:real].tolist() == list(range(rows[0], rows[0] + real))
        assert real == min(horizon, end - rows[0])
        assert (rows[real:] == end - 1).all() and (rows < end).all() and (rows >= start).all()
        np.testing.assert_array_equal(batch["obs"][row].numpy(), obs[rows])  # every field gathers the same rows
        if row >= 64 - n_end:  # the end_fraction part starts within the last end_window steps
            assert rows[0] >= end - end_window


@SETTINGS
@given(st.integers(1, 50), st.integers(1, 6), st.integers(0, 2**31 - 1), st.floats(-100, 100), st.floats(1e-3, 100))
def test_normalizer_round_trips(n, dim, seed, shift, scale):
    rng = np.random.default_rng(seed)
    x = (shift + scale * rng.normal(size=(n, dim))).astype(np.float32)
    norm = Normalizer.fit(x)
    assert (norm.std > 0).all()
    restored = Normalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(restored.mean, norm.mean)
    np.testing.assert_array_equal(restored.std, norm.std)
    tol = dict(rtol=1e-4, atol=1e-4 * (abs(shift) + scale))
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x)), x, **tol)
    xt = torch.as_tensor(x)
    back = restored.unnormalize(restored.normalize(xt))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), x, **tol)
    if n > 1:  # normalised data has mean ~0 and std below 1 (the eps)
        z = norm.normalize(x)
        assert np.abs(z.mean(0)).max() < 1e-2 * (1 + abs(shift) / scale)
        assert (z.std(0) <= 1 + 1e-3).all()


def test_future_rows_stay_in_the_segment_own_trajectory_and_the_geometric_ones_look_ahead_discount_steps():
    bounds = np.array([[0, 400], [400, 450], [450, 2450]])
    buffer = SegmentBuffer({"t": np.arange(2450)}, bounds, horizon=8)
    generator = torch.Generator().manual_seed(0)
    batch = buffer.sample(4096, generator=generator, with_start=True)
    start = batch["start"]
    for discount in (None, 0.99):
        row = buffer.future_rows(start, discount, generator=generator)
        t0, t1 = buffer.fields["t"][start], buffer.fields["t"][row]
        traj = np.searchsorted(bounds[:, 1], t0.numpy(), side="right")
        assert (t1 >= t0).all() and (t1.numpy() < bounds[traj, 1]).all()  # later, same trajectory
        ahead = (t1 - t0).float()
        if discount is None:  # uniform over what is left: on average half of it
            left = torch.as_tensor(bounds[traj, 1]) - t0 - 1
            assert float(ahead.mean()) == pytest.approx(float(left.float().mean()) / 2, rel=0.05)
        else:  # in the long trajectory, far from its end: the geometric mean discount / (1 - discount) = 99
            far = torch.as_tensor(traj == 2) & (t0 < 1500)
            assert float(ahead[far].mean()) == pytest.approx(99, rel=0.1)
