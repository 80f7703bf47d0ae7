"""Offline data as trajectories: splitting, returns-to-go, normalisation and fast segment/transition sampling.

Sampling happens on the training device with one gather, so a batch of 256 x H=128 costs microseconds on a
GPU and never dominates a training step (``benchmarks/buffer_speed.py`` measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


def split_trajectories(terminals: np.ndarray, timeouts: np.ndarray, goals: Optional[np.ndarray] = None) -> np.ndarray:
    """[n, 2] array of (start, end) index pairs, end exclusive; a trajectory ends at a terminal or timeout.

    With ``goals`` (the collector's commanded goal per step, for hindsight goal relabelling) a terminal ends a
    trajectory only where the goal changes after it: D4RL's antmaze marks every step at the *evaluation* goal
    terminal while the collector walks on towards its own goal (antmaze-umaze: every step after arrival, which
    would cut the data into thousands of one-step trajectories), and those steps do not end the walk."""
    terminals = np.asarray(terminals, bool)
    if goals is not None and len(terminals):
        goals = np.asarray(goals).reshape(len(terminals), -1)
        changes = np.ones(len(terminals), bool)
        changes[:-1] = np.any(goals[1:] != goals[:-1], axis=1)
        terminals = terminals & changes
    done = np.logical_or(terminals, np.asarray(timeouts, bool))
    ends = np.flatnonzero(done) + 1
    if len(done) and (len(ends) == 0 or ends[-1] != len(done)):
        ends = np.append(ends, len(done))  # the last, unfinished trajectory
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1).astype(np.int64)


def returns_to_go(rewards: np.ndarray, bounds: np.ndarray, discount: float = 1.0) -> np.ndarray:
    """R_t = sum_{k>=t} discount^(k-t) r_k within each trajectory."""
    rewards = np.asarray(rewards, np.float64)
    rtg = np.zeros_like(rewards)
    for start, end in bounds:
        acc = 0.0
        for t in range(end - 1, start - 1, -1):
            acc = rewards[t] + discount * acc
            rtg[t] = acc
    return rtg.astype(np.float32)


def goal_returns_to_go(positions: np.ndarray, goals: np.ndarray, bounds: np.ndarray, radius: float,
                       discount: float) -> np.ndarray:
    """Hindsight goal-reaching return-to-go, scaled to [0, 1]: discount^(steps until within ``radius``).

    This is the discounted return of reward 1 per step at the goal with the goal absorbing, times
    (1 - discount); it is 0 where the trajectory never reaches its goal.
    """
    reached = np.linalg.norm(positions - goals, axis=-1) <= radius
    rtg = np.zeros(len(positions), np.float32)
    for start, end in bounds:
        next_hit = None
        for t in range(end - 1, start - 1, -1):
            if reached[t]:
                next_hit = t
            rtg[t] = 0.0 if next_hit is None else discount ** (next_hit - t)
    return rtg


@dataclass
class Normalizer:
    """Per-dimension affine normalisation; saved in checkpoints so evaluation uses the training statistics.
    ``mean`` and ``std`` are numpy arrays, or tensors on the device that normalises (no copy per call)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, eps: float = 1e-3) -> "Normalizer":
        return cls(x.mean(0).astype(np.float32), (x.std(0) + eps).astype(np.float32))

    def normalize(self, x):
        return (x - _like(self.mean, x)) / _like(self.std, x)

    def unnormalize(self, x):
        return x * _like(self.std, x) + _like(self.mean, x)

    def goal(self) -> "Normalizer":
        """The normaliser of goal positions (x, y) [N, 2]: the statistics of the state's first two dimensions (the
        position on maze tasks), so that a normalised goal and the normalised state's position share units."""
        return Normalizer(self.mean[:2], self.std[:2])

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def _like(a: np.ndarray, x):
    return torch.as_tensor(a, device=x.device, dtype=x.dtype) if isinstance(x, torch.Tensor) else a


class SegmentBuffer:
    """Fixed-horizon segments of trajectories, padded at the end by repeating the last step.

    ``fields`` maps names to per-step arrays [N, ...] (all the same N); every start t of every trajectory is a
    valid segment start, and ``mask`` [B, H] is 1 on real steps and 0 on padding. ``end_window`` marks the last
    steps of each trajectory so that ``sample(end_fraction=...)`` can over-represent them. ``future_rows`` draws a
    later step of a segment's own trajectory (hindsight goals).
    """

    def __init__(self, fields: dict[str, np.ndarray], bounds: np.ndarray, horizon: int,
                 device: torch.device | str = "cpu", min_length: int = 1, end_window: int = 0) -> None:
        self.horizon = horizon
        self.device = torch.device(device)
        bounds = np.asarray([b for b in bounds if b[1] - b[0] >= min_length])
        if len(bounds) == 0:
            raise ValueError(f"no trajectory of at least {min_length} steps in the dataset")
        index, starts, mask, end_starts, last = [], [], [], [], []
        offset = 0
        for start, end in bounds:
            length = end - start
            # rows of this padded trajectory point back into the flat dataset
            idx = np.concatenate([np.arange(start, end), np.full(horizon - 1, end - 1)])
            index.append(idx)
            mask.append(np.concatenate([np.ones(length), np.zeros(horizon - 1)]))
            starts.append(offset + np.arange(length))
            end_starts.append(offset + np.arange(max(0, length - end_window), length))
            last.append(np.full(len(idx), offset + length - 1))
            offset += len(idx)
        index = np.concatenate(index)
        self.fields = {k: torch.as_tensor(np.asarray(v)[index], device=self.device) for k, v in fields.items()}
        self.mask = torch.as_tensor(np.concatenate(mask), dtype=torch.float32, device=self.device)
        self.starts = torch.as_tensor(np.concatenate(starts), device=self.device)
        self.end_starts = torch.as_tensor(np.concatenate(end_starts), device=self.device, dtype=torch.long)
        self.last_row = torch.as_tensor(np.concatenate(last), device=self.device, dtype=torch.long)
        self.num_trajectories = len(bounds)
        self._offsets = torch.arange(horizon, device=self.device)

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None,
               end_fraction: float = 0.0, with_start: bool = False) -> dict[str, torch.Tensor]:
        """``end_fraction`` of the batch starts within the last ``end_window`` steps of a trajectory; ``with_start``
        adds each segment's first row (``batch["start"]``, for ``future_rows``)."""
        n_end = int(round(batch_size * end_fraction)) if len(self.end_starts) else 0
        pick = torch.randint(len(self.starts), (batch_size - n_end,), device=self.device, generator=generator)
        first = self.starts[pick]
        if n_end:
            pick_end = torch.randint(len(self.end_starts), (n_end,), device=self.device, generator=generator)
            first = torch.cat([first, self.end_starts[pick_end]])
        rows = first[:, None] + self._offsets  # [B, H]
        batch = {k: v[rows] for k, v in self.fields.items()}
        batch["mask"] = self.mask[rows]
        if with_start:
            batch["start"] = first
        return batch

    def future_rows(self, start: torch.Tensor, discount: Optional[float] = None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """For segment first rows ``start`` [B], a row from that step to the last step of its trajectory (both
        included), as ``fields[k][row]`` indexes it: uniform, or ``discount`` k steps ahead with probability
        proportional to discount^k (geometric; what lies past the trajectory's end falls on its last step)."""
        span = self.last_row[start] - start + 1
        u = torch.rand(start.shape, device=self.device, generator=generator)
        ahead = (u * span).long() if discount is None else (torch.log1p(-u) / math.log(discount)).long()
        return start + torch.minimum(ahead, span - 1)


class TransitionBuffer:
    """(s, a, r, s', done, ...) transitions for value-based methods; s' stays inside the trajectory."""

    def __init__(self, fields: dict[str, np.ndarray], bounds: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        n = len(next(iter(fields.values())))
        nxt = np.arange(1, n + 1)
        last = np.zeros(n, bool)
        last[np.asarray(bounds)[:, 1] - 1] = True
        nxt[last] = np.flatnonzero(last)  # the last step of a trajectory points at itself
        self.fields = {k: torch.as_tensor(np.asarray(v), device=self.device) for k, v in fields.items()}
        self.next_index = torch.as_tensor(nxt, device=self.device)
        self.is_last = torch.as_tensor(last, device=self.device)

    def __len__(self) -> int:
        return len(self.next_index)

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(self), (batch_size,), device=self.device, generator=generator)
        batch = {k: v[idx] for k, v in self.fields.items()}
        batch.update({f"next_{k}": v[self.next_index[idx]] for k, v in self.fields.items() if k == "observations"})
        batch["is_last"] = self.is_last[idx]
        return batch
