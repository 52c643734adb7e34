"""When to run a control tick relative to the camera's frames.

A timer-driven policy acts on the newest frame, which is up to one camera period old when the
tick fires (0-33 ms with a 30 Hz camera): that age is most of the end-to-end latency. When the
next frame is due within ``max_wait_s``, the tick is better spent waiting for it: the command
then reflects an image a few milliseconds old instead of a whole period. ``FramePhase`` learns
the camera's period from arrival times (steady clock, seconds) and answers, at each tick, how
long to wait (0: act now). A camera that is irregular, late or not yet seen never makes a tick
wait, and a wait never exceeds ``max_wait_s``.
"""

from __future__ import annotations

import math


class FramePhase:
    """Frame period estimate (exponential average of inter-arrival times) and the wait rule.

    Args:
        max_wait_s: longest a tick may be deferred (0 disables waiting).
        smoothing: weight of each new inter-arrival time in the period estimate.
        max_period_s: gaps longer than this (a camera that paused) do not update the estimate.
    """

    def __init__(
        self, max_wait_s: float, smoothing: float = 0.1, max_period_s: float = 0.5
    ) -> None:
        if not (math.isfinite(max_wait_s) and max_wait_s >= 0):
            raise ValueError(f"max_wait_s must be finite and >= 0, got {max_wait_s!r}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        self.max_wait_s = float(max_wait_s)
        self.smoothing = float(smoothing)
        self.max_period_s = float(max_period_s)
        self.period_s: float | None = None
        self.last_s: float | None = None
        self.arrivals = 0

    def arrived(self, t: float) -> None:
        """A frame arrived at steady time ``t`` (seconds)."""
        if self.last_s is not None:
            gap = t - self.last_s
            if 0 < gap <= self.max_period_s:
                if self.period_s is None:
                    self.period_s = gap
                else:
                    self.period_s += self.smoothing * (gap - self.period_s)
        self.last_s = t
        self.arrivals += 1

    def wait_s(self, t: float) -> float:
        """Seconds a tick at steady time ``t`` should wait for the next frame (0: act now)."""
        if self.max_wait_s <= 0 or self.period_s is None or self.last_s is None:
            return 0.0
        if self.arrivals < 5:  # too few frames to trust the period
            return 0.0
        due_in = self.last_s + self.period_s - t
        if 0.0 < due_in <= self.max_wait_s:
            return due_in
        return 0.0

    def reset(self) -> None:
        self.period_s = self.last_s = None
        self.arrivals = 0
