"""Which inputs are too old to act on.

The node calls ``update(name, stamp, now)`` for every accepted message (stamp = the message
header's time, now = the node's clock, both in seconds) and ``stale(now)`` every control tick;
a non-empty list means: publish a zero twist and a diagnostic warning. A stamp from the future
(beyond a small clock-skew tolerance) or from the far past is rejected and does not refresh
the input, so a sender with a broken clock cannot keep the robot moving. With
``frozen_timeout_s``, a message whose content (a digest the caller passes) has not changed for
that long is rejected too: a camera driver that keeps re-sending its last frame with new
stamps (a frozen sensor) goes stale like one that stopped. A real camera's noise changes every
frame; a simulator's may not, so simulation leaves it off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _seconds(name: str, value: float, positive: bool = False) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from err
    if not math.isfinite(f) or f < 0 or (positive and f == 0):
        raise ValueError(f"{name} must be finite and {'>' if positive else '>='} 0, got {value!r}")
    return f


class StalenessWatchdog:
    """Tracks the newest accepted stamp of each named input.

    Args:
        timeout_s: an input is stale when its newest accepted stamp is older than this.
        required: the inputs that must all be fresh (cameras, proprio, instruction, ...).
        future_tolerance_s: stamps up to this far ahead of ``now`` are accepted (clock skew).
        max_age_s: stamps older than this are rejected outright (a wrong clock, e.g. zero).
        frozen_timeout_s: content unchanged for longer than this is rejected (0: off).

    Attributes: ``rejections`` (name -> reason for its latest rejected stamp),
    ``rejected_count`` (name -> number of rejected stamps).
    """

    def __init__(
        self,
        timeout_s: float,
        required: Iterable[str],
        future_tolerance_s: float = 0.5,
        max_age_s: float = 3600.0,
        frozen_timeout_s: float = 0.0,
    ) -> None:
        self.timeout_s = _seconds("timeout_s", timeout_s, positive=True)
        self.future_tolerance_s = _seconds("future_tolerance_s", future_tolerance_s)
        self.max_age_s = _seconds("max_age_s", max_age_s, positive=True)
        self.frozen_timeout_s = _seconds("frozen_timeout_s", frozen_timeout_s)
        self._content: dict[str, tuple[object, float]] = {}  # name -> (digest, since stamp)
        self.required: tuple[str, ...] = tuple(dict.fromkeys(required))
        self._stamps: dict[str, float] = {}
        self.rejections: dict[str, str] = {}
        self.rejected_count: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every stamp (e.g. when the node deactivates)."""
        self._stamps.clear()
        self._content.clear()
        self.rejections.clear()
        self.rejected_count.clear()

    def _reject(self, name: str, reason: str) -> bool:
        self.rejections[name] = reason
        self.rejected_count[name] = self.rejected_count.get(name, 0) + 1
        return False

    def update(self, name: str, stamp_s: float, now_s: float, content: object = None) -> bool:
        """Record that ``name`` arrived with ``stamp_s``; False (and a reason in
        ``rejections[name]``) if the stamp is non-finite, negative, in the future by more than the
        tolerance, or older than ``max_age_s``, or if ``content`` (a digest; None: not tracked)
        has been the same for more than ``frozen_timeout_s``. The latest accepted stamp
        replaces the stored one, even if older (a restarted simulation's clock goes back)."""
        try:
            stamp, now = float(stamp_s), float(now_s)
        except (TypeError, ValueError):
            return self._reject(name, f"stamp {stamp_s!r} / now {now_s!r} not numbers")
        if not (math.isfinite(stamp) and math.isfinite(now)):
            return self._reject(name, f"non-finite stamp {stamp!r} (now {now!r})")
        if stamp < 0:  # builtin_interfaces/Time's sec is signed; no ROS time is negative
            return self._reject(name, f"negative stamp {stamp:.3f} s is not a time")
        age = now - stamp
        if age < -self.future_tolerance_s:
            return self._reject(
                name,
                f"stamp {stamp:.3f} s is {-age:.3f} s in the future "
                f"(tolerance {self.future_tolerance_s:g} s)",
            )
        if age > self.max_age_s:
            return self._reject(
                name, f"stamp {stamp:.3f} s is {age:.1f} s old (max {self.max_age_s:g} s)"
            )
        if content is not None and self.frozen_timeout_s > 0:
            seen = self._content.get(name)
            if seen is None or seen[0] != content or stamp < seen[1]:
                self._content[name] = (content, stamp)
            elif stamp - seen[1] > self.frozen_timeout_s:
                return self._reject(
                    name,
                    f"frozen: the same content for {stamp - seen[1]:.2f} s "
                    f"(frozen_timeout_s {self.frozen_timeout_s:g})",
                )
        self._stamps[name] = stamp
        return True

    def ages(self, now_s: float) -> dict[str, float]:
        """name -> seconds since its newest accepted stamp, for every input seen and every
        required one (``inf`` if never seen)."""
        now = float(now_s)
        out = {name: math.inf for name in self.required}
        out.update({name: now - stamp for name, stamp in self._stamps.items()})
        return out

    def stale_reasons(self, now_s: float) -> dict[str, str]:
        """Required input -> why it is stale, in ``required`` order (empty: all fresh)."""
        now = float(now_s)
        out: dict[str, str] = {}
        for name in self.required:
            stamp = self._stamps.get(name)
            if stamp is None:
                out[name] = "never received" + (
                    f" (last stamp rejected: {self.rejections[name]})"
                    if name in self.rejections
                    else ""
                )
                continue
            age = now - stamp
            if not math.isfinite(age):
                out[name] = f"age not finite (now {now!r})"
            elif age > self.timeout_s:
                out[name] = f"{age:.3f} s old (timeout {self.timeout_s:g} s)"
            elif age < -self.future_tolerance_s:
                out[name] = f"stamp {-age:.3f} s ahead of the clock (clock went back?)"
        return out

    def stale(self, now_s: float) -> list[str]:
        """Required inputs never seen, older than ``timeout_s``, or ahead of the clock."""
        return list(self.stale_reasons(now_s))
