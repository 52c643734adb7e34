"""When to run a control tick relative to the cameras' frames.

A timer-driven policy acts on the newest frames, which are up to one camera period old when the
tick fires (0-33 ms with a 30 Hz camera): that age is most of the end-to-end latency. When a
camera's next frame is due within ``max_wait_s``, the tick is better spent waiting for it: the
command then reflects images a few milliseconds old instead of a whole period. ``FramePhase``
learns one camera's period from arrival times (steady clock, seconds) and answers, at each
tick, how long to wait for it (0: act now). ``FrameWait`` applies the rule to every camera of a
policy: a tick waits for each camera whose frame is about to arrive, so that a pair of cameras
triggered together is used as a pair, not as one fresh frame and one a period old. A camera that
is irregular, late or not yet seen never makes a tick wait, and a wait never exceeds
``max_wait_s``. A wait may use all of ``max_wait_s`` even when the frame is due sooner: frames
arrive with a few ms of jitter (camera, driver, DDS, a loaded host), and a wait that gave up at
the due time would act on the previous frame, a whole period old.
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


class FrameWait:
    """The wait rule over several cameras.

    Args:
        cameras: camera names.
        max_wait_s: longest a tick may be deferred (0 disables waiting).
    """

    def __init__(self, cameras, max_wait_s: float) -> None:
        self.phases = {name: FramePhase(max_wait_s) for name in cameras}
        if not self.phases:
            raise ValueError("FrameWait needs at least one camera")
        self.max_wait_s = float(max_wait_s)

    def arrived(self, camera: str, t: float) -> None:
        """A frame of ``camera`` arrived at steady time ``t`` (seconds)."""
        self.phases[camera].arrived(t)

    def due(self, t: float) -> frozenset[str]:
        """At a tick at steady time ``t``: the cameras whose next frame is due within
        ``max_wait_s``, to wait for (empty: act now). The wait ends when the last of them
        arrives, or after ``max_wait_s``."""
        return frozenset(name for name, phase in self.phases.items() if phase.wait_s(t) > 0)

    def reset(self) -> None:
        for phase in self.phases.values():
            phase.reset()
