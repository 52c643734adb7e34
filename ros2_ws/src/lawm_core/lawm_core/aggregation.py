"""Temporal aggregation of action chunks (BAKU/ACT style, uniform weights).

At every control step the policy predicts a chunk of K actions for steps t, t+1, ..., t+K-1.
The action executed at step t is the mean of every stored prediction for t: row 0 of the chunk
predicted now, row 1 of the chunk predicted one step ago, ..., row K-1 of the chunk predicted
K-1 steps ago; then clamped to [-1, 1]. Uniform weights, as in the reference code.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from lawm_core.errors import InputError


class TemporalAggregator:
    """``step(chunk (K, A)) -> action (A,)``: record the chunk predicted now, return the mean
    of all predictions for the current step, clamped to [-1, 1], and advance one step.

    ``len()`` is the number of chunks that contributed to the latest ``step`` (0 after
    ``reset``; at most K). A chunk of the wrong shape or with non-finite values raises
    InputError and leaves the buffer unchanged (time does not advance).
    """

    def __init__(self, chunk_size: int, action_dim: int) -> None:
        for name, value in (("chunk_size", chunk_size), ("action_dim", action_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        # Newest first: self._chunks[k] was predicted k steps before the latest step.
        self._chunks: deque[np.ndarray] = deque(maxlen=self.chunk_size)
        self._rows = np.arange(self.chunk_size)

    def __len__(self) -> int:
        return len(self._chunks)

    def reset(self) -> None:
        """Forget every stored prediction (a new episode, or after a pause)."""
        self._chunks.clear()

    def step(self, chunk: np.ndarray) -> np.ndarray:
        """Record ``chunk`` (K, A) as predicted now; return this step's action (A,) float64."""
        try:
            arr = np.array(chunk, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as err:
            raise InputError(f"action chunk is not numeric ({err})") from err
        want = (self.chunk_size, self.action_dim)
        if arr.shape != want:
            raise InputError(f"action chunk has shape {arr.shape}, expected {want}")
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[:3].tolist()
            raise InputError(f"action chunk has non-finite values (e.g. at {bad})")
        self._chunks.appendleft(arr)
        n = len(self._chunks)
        stacked = np.stack(self._chunks)  # (n, K, A), newest first
        current = stacked[self._rows[:n], self._rows[:n]]  # row k of the chunk from k steps ago
        return np.clip(current.mean(axis=0), -1.0, 1.0)
