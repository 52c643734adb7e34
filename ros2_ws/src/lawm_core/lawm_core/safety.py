"""Last line of defence between the policy and the arm: clamp, limit, fence and smooth.

``SafetyFilter.filter(cmd, dt, ee_pos)`` applies, in order:

1. NaN guard: a non-finite value anywhere in the command (or a non-finite or negative ``dt``)
   gives a zero twist at once, not ramped, with the gripper held at its previous output, and
   the rate limiter restarts from zero. Reason ``"non-finite"`` (``"invalid dt"``).
2. Per-axis clamps of the linear and angular velocity; the gripper is clamped to [-1, 1].
3. Speed limits: a linear (angular) velocity whose norm exceeds the maximum speed is scaled
   down, keeping its direction.
4. Workspace box (only with limits ``workspace_min/max`` and an ``ee_pos``): a linear
   component that would carry the end effector past a face of the box within ``dt`` is cut to
   reach the face at most, i.e. zeroed once at or outside it; motion back inwards is never
   limited. An ``ee_pos`` with non-finite values zeroes the linear velocity.
5. Rate limit against the previous output: the change of the linear (angular) velocity vector
   has a norm of at most ``max_linear_accel * dt`` (``max_angular_accel * dt``).

The workspace rule is applied again after the rate limit, so a wall stops outward motion at
once even if that is a harder stop than the acceleration limit allows. Every output is finite,
within the per-axis clamps and speed limits, respects the workspace, and (except for those
stops) changes by no more than the acceleration limits allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lawm_core.command import Command
from lawm_core.errors import InputError

NON_FINITE = "non-finite"
INVALID_DT = "invalid dt"
LINEAR_AXIS_CLAMP = "linear axis clamp"
ANGULAR_AXIS_CLAMP = "angular axis clamp"
GRIPPER_CLAMP = "gripper clamp"
LINEAR_SPEED = "linear speed"
ANGULAR_SPEED = "angular speed"
WORKSPACE = "workspace"
LINEAR_RATE = "linear rate limit"
ANGULAR_RATE = "angular rate limit"


def _triple(name: str, value: Sequence[float], positive: bool) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 3 numbers, got {value!r}") from err
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    if positive and not all(v > 0 for v in vals):
        raise ValueError(f"{name} must be > 0 on every axis, got {value!r}")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class SafetyLimits:
    """Limits in m/s, rad/s, m/s^2, rad/s^2 and metres (workspace, in the ``ee_pos`` frame)."""

    max_linear_axis: Sequence[float]
    max_angular_axis: Sequence[float]
    max_linear_speed: float
    max_angular_speed: float
    max_linear_accel: float
    max_angular_accel: float
    workspace_min: Sequence[float] | None = None
    workspace_max: Sequence[float] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields to tuples of floats once
        set_(self, "max_linear_axis", _triple("max_linear_axis", self.max_linear_axis, True))
        set_(self, "max_angular_axis", _triple("max_angular_axis", self.max_angular_axis, True))
        for name in (
            "max_linear_speed",
            "max_angular_speed",
            "max_linear_accel",
            "max_angular_accel",
        ):
            value = getattr(self, name)
            try:
                f = float(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be a number, got {value!r}") from err
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
            set_(self, name, f)
        lo, hi = self.workspace_min, self.workspace_max
        if (lo is None) != (hi is None):
            raise ValueError(f"workspace_min and workspace_max go together, got {lo!r} and {hi!r}")
        if lo is not None and hi is not None:
            lo_t = _triple("workspace_min", lo, False)
            hi_t = _triple("workspace_max", hi, False)
            bad = [i for i in range(3) if not lo_t[i] < hi_t[i]]
            if bad:
                raise ValueError(
                    f"workspace_min must be < workspace_max on every axis, got {list(lo_t)} "
                    f"and {list(hi_t)} (axis {bad})"
                )
            set_(self, "workspace_min", lo_t)
            set_(self, "workspace_max", hi_t)

    @property
    def has_workspace(self) -> bool:
        return self.workspace_min is not None


def _limit_norm(v: np.ndarray, limit: float) -> tuple[np.ndarray, bool]:
    n = float(np.linalg.norm(v))
    if n <= limit:
        return v, False
    return v * (limit / n), True


class SafetyFilter:
    """``filter(cmd, dt, ee_pos=None) -> (safe Command, reasons)``; see the module docstring.

    ``reasons`` lists what intervened this call (the module's constants), empty when the
    command passed unchanged. ``reset()`` makes the previous output zero (gripper 0).
    """

    def __init__(self, limits: SafetyLimits) -> None:
        if not isinstance(limits, SafetyLimits):
            raise TypeError(f"limits must be SafetyLimits, got {type(limits).__name__}")
        self.limits = limits
        self._lin_axis = np.asarray(limits.max_linear_axis, dtype=np.float64)
        self._ang_axis = np.asarray(limits.max_angular_axis, dtype=np.float64)
        if limits.has_workspace:
            self._ws_min = np.asarray(limits.workspace_min, dtype=np.float64)
            self._ws_max = np.asarray(limits.workspace_max, dtype=np.float64)
        self.previous = Command.zero()

    def reset(self) -> None:
        self.previous = Command.zero()

    def _stop(self, reason: str) -> tuple[Command, list[str]]:
        out = Command.zero(gripper=self.previous.gripper)
        self.previous = out.copy()
        return out, [reason]

    def _fence(self, lin: np.ndarray, dt: float, ee_pos: np.ndarray | None) -> bool:
        """Cut outward linear components in place; True if any changed."""
        if not self.limits.has_workspace or ee_pos is None:
            return False
        if not np.all(np.isfinite(ee_pos)):
            changed = bool(np.any(lin != 0))
            lin[:] = 0.0
            return changed
        before = lin.copy()
        if dt > 0:
            # Largest outward speed that stops at the face within dt (0 once at or past it).
            up = np.maximum(self._ws_max - ee_pos, 0.0) / dt
            down = np.minimum(self._ws_min - ee_pos, 0.0) / dt
            np.minimum(lin, up, out=lin, where=lin > 0)
            np.maximum(lin, down, out=lin, where=lin < 0)
        else:
            lin[(lin > 0) & (ee_pos >= self._ws_max)] = 0.0
            lin[(lin < 0) & (ee_pos <= self._ws_min)] = 0.0
        return bool(np.any(lin != before))

    def filter(
        self, cmd: Command, dt: float, ee_pos: np.ndarray | None = None
    ) -> tuple[Command, list[str]]:
        lim = self.limits
        try:
            dt = float(dt)
        except (TypeError, ValueError):
            dt = math.nan
        if not (math.isfinite(dt) and dt >= 0):
            return self._stop(INVALID_DT)
        if not isinstance(cmd, Command):
            raise TypeError(f"cmd must be a Command, got {type(cmd).__name__}")
        if ee_pos is not None:
            ee_pos = np.asarray(ee_pos, dtype=np.float64).reshape(-1)
            if ee_pos.shape != (3,):
                raise InputError(f"ee_pos must have 3 values, got shape {ee_pos.shape}")
        if not cmd.is_finite():
            return self._stop(NON_FINITE)

        reasons: list[str] = []
        gripper = min(max(cmd.gripper, -1.0), 1.0)
        if gripper != cmd.gripper:
            reasons.append(GRIPPER_CLAMP)
        lin = np.clip(cmd.linear, -self._lin_axis, self._lin_axis)
        if np.any(lin != cmd.linear):
            reasons.append(LINEAR_AXIS_CLAMP)
        ang = np.clip(cmd.angular, -self._ang_axis, self._ang_axis)
        if np.any(ang != cmd.angular):
            reasons.append(ANGULAR_AXIS_CLAMP)

        lin, hit = _limit_norm(lin, lim.max_linear_speed)
        if hit:
            reasons.append(LINEAR_SPEED)
        ang, hit = _limit_norm(ang, lim.max_angular_speed)
        if hit:
            reasons.append(ANGULAR_SPEED)

        if self._fence(lin, dt, ee_pos):
            reasons.append(WORKSPACE)

        prev = self.previous
        d_lin, hit = _limit_norm(lin - prev.linear, lim.max_linear_accel * dt)
        if hit:
            lin = prev.linear + d_lin
            reasons.append(LINEAR_RATE)
        d_ang, hit = _limit_norm(ang - prev.angular, lim.max_angular_accel * dt)
        if hit:
            ang = prev.angular + d_ang
            reasons.append(ANGULAR_RATE)
        # The previous output may push outwards from where the arm is now: the wall wins.
        if self._fence(lin, dt, ee_pos) and WORKSPACE not in reasons:
            reasons.append(WORKSPACE)
        # Interpolating between two in-limit commands stays in limits up to rounding; make the
        # per-axis bound exact.
        np.clip(lin, -self._lin_axis, self._lin_axis, out=lin)
        np.clip(ang, -self._ang_axis, self._ang_axis, out=ang)

        out = Command(lin, ang, gripper)
        self.previous = out.copy()
        return out, reasons
