"""Normalisation statistics, streamed over episodes (actions and robot state only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lawm.data.base import EpisodeSource, data_proprio_layout
from lawm_core import contract

STD_FLOOR = 1e-6


class _Moments:
    """Running mean / variance (Chan et al. pairwise merge: stable for any episode count)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        nb = len(x)
        if nb == 0:
            return
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


def compute_stats(
    sources: Sequence[EpisodeSource], max_frames: int | None = None, proprio_dim: int | None = None
) -> dict[str, np.ndarray]:
    """Action range and proprio moments over ``sources`` (images are never read).

    max_frames caps the frames used for each statistic (episodes in order, the last one cut).
    Returns float32 ``action_min``, ``action_max`` (7,), ``proprio_mean``, ``proprio_std``
    (P,) (std floored at 1e-6), and bool 0-d arrays ``has_action_stats`` /
    ``has_proprio_stats``; without data the defaults are -1 / 1 and 0 / 1. P: ``proprio_dim``,
    default the size of the episodes' proprio layout (``contract.PROPRIO_DIM`` without any).
    """
    if proprio_dim is None:
        layout = data_proprio_layout(sources)
        proprio_dim = contract.PROPRIO_DIM if layout is None else len(layout)
    a_min = np.full(contract.ACTION_DIM, np.inf)
    a_max = np.full(contract.ACTION_DIM, -np.inf)
    a_frames = 0
    moments = _Moments(proprio_dim)
    cap = float("inf") if max_frames is None else int(max_frames)
    for src in sources:
        need_a = src.has_actions and a_frames < cap
        need_p = src.has_proprio and moments.n < cap
        if not (need_a or need_p):
            continue
        data = src.read(0, src.length, cameras=(), actions=need_a, proprio=need_p)
        if data["actions"] is not None:
            acts = data["actions"][: int(min(len(data["actions"]), cap - a_frames))]
            if len(acts):
                a_min = np.minimum(a_min, acts.min(0))
                a_max = np.maximum(a_max, acts.max(0))
                a_frames += len(acts)
        if data["proprio"] is not None:
            moments.add(data["proprio"][: int(min(len(data["proprio"]), cap - moments.n))])
    has_actions = a_frames > 0
    has_proprio = moments.n > 0
    return {
        "action_min": (a_min if has_actions else -np.ones(contract.ACTION_DIM)).astype(np.float32),
        "action_max": (a_max if has_actions else np.ones(contract.ACTION_DIM)).astype(np.float32),
        "proprio_mean": (moments.mean if has_proprio else np.zeros(proprio_dim)).astype(
            np.float32
        ),
        "proprio_std": (
            np.maximum(moments.std(), STD_FLOOR) if has_proprio else np.ones(proprio_dim)
        ).astype(np.float32),
        "has_action_stats": np.array(has_actions),
        "has_proprio_stats": np.array(has_proprio),
    }
