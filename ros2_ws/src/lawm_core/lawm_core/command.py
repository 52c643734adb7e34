"""Raw 7-D action -> end-effector velocity twist + gripper command, in the model's declared units.

Action layout (``contract.ACTION_LAYOUT``): dx, dy, dz, droll, dpitch, dyaw, gripper, in the
training data's units (``StepResult.raw``: the denormalised action). The exported model's
``ActionSpace`` (policy.json) says what those units are: displacements per control step
(``osc_pose_delta``: velocity = raw * per_unit * control_rate_hz) or velocities (``twist``:
velocity = raw * per_unit). A raw 0 is therefore always a zero twist, whatever the data's range.
Per-axis gains in [0, 1] then slow the arm down; the gripper is +1 (close) once the raw value has
gone ``gripper_threshold`` of the way from the declared open value to the closed one, else -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lawm_core import contract
from lawm_core.errors import InputError
from lawm_core.sidecar import ActionSpace


@dataclass
class Command:
    """linear (3,) m/s, angular (3,) rad/s, gripper: +1 close, -1 open (0 = no command)."""

    linear: np.ndarray
    angular: np.ndarray
    gripper: float

    def __post_init__(self) -> None:
        self.linear = np.array(self.linear, dtype=np.float64).reshape(-1)
        self.angular = np.array(self.angular, dtype=np.float64).reshape(-1)
        self.gripper = float(self.gripper)
        if self.linear.shape != (3,) or self.angular.shape != (3,):
            raise InputError(
                f"Command needs linear and angular of 3 values, got {self.linear.shape} and "
                f"{self.angular.shape}"
            )

    @classmethod
    def zero(cls, gripper: float = 0.0) -> Command:
        """No motion; ``gripper`` defaults to 0 (no gripper command)."""
        return cls(np.zeros(3), np.zeros(3), gripper)

    def is_finite(self) -> bool:
        return bool(
            np.all(np.isfinite(self.linear))
            and np.all(np.isfinite(self.angular))
            and np.isfinite(self.gripper)
        )

    def copy(self) -> Command:
        return Command(self.linear.copy(), self.angular.copy(), self.gripper)


def _gain(name: str, value: Sequence[float]) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 3 gains in [0, 1], got {value!r}") from err
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"{name} must be 3 gains in [0, 1], got {value!r}")
    return arr


class ActionMapper:
    """``to_command(raw (7,)) -> Command`` for a model's action space.

    Args:
        space: the model's ``ActionSpace`` (``PolicyModel.spec.action_space``).
        control_rate_hz: the model's control rate (``PolicyModel.control_rate_hz``): an
            ``osc_pose_delta`` action is a displacement over one of its periods.
        linear_scale: gains in [0, 1] on the velocity of dx, dy, dz (1: the model's own speed).
        angular_scale: gains in [0, 1] on droll, dpitch, dyaw.
        gripper_threshold: in (0, 1): how far from the declared open value towards the closed
            one the raw gripper value must be to close (0.5: halfway; raw 0 for the sign
            convention).

    Attributes: ``linear_per_unit`` / ``angular_per_unit``: m/s and rad/s per unit of raw action
    (before the gains).
    """

    def __init__(
        self,
        space: ActionSpace,
        control_rate_hz: float,
        linear_scale: Sequence[float] = (1.0, 1.0, 1.0),
        angular_scale: Sequence[float] = (1.0, 1.0, 1.0),
        gripper_threshold: float = 0.5,
    ) -> None:
        if space.kind not in contract.ACTION_KINDS:
            raise ValueError(
                f"unknown action space {space.kind!r}; known: {list(contract.ACTION_KINDS)}"
            )
        rate = float(control_rate_hz)
        if not (np.isfinite(rate) and rate > 0):
            raise ValueError(f"control_rate_hz must be finite and > 0, got {control_rate_hz!r}")
        per_second = rate if space.kind == contract.ACTION_OSC_POSE_DELTA else 1.0
        self.space = space
        self.linear_per_unit = space.linear_per_unit * per_second
        self.angular_per_unit = space.angular_per_unit * per_second
        self.linear_scale = _gain("linear_scale", linear_scale)
        self.angular_scale = _gain("angular_scale", angular_scale)
        self.gripper_threshold = float(gripper_threshold)
        if not 0 < self.gripper_threshold < 1:
            raise ValueError(f"gripper_threshold must be in (0, 1), got {gripper_threshold!r}")

    def closing(self, raw: np.ndarray) -> float:
        """How far the raw gripper value is from the declared open value towards the closed
        one (0 open, 1 closed; beyond either end outside [0, 1]); NaN for a non-finite value."""
        grip = float(np.asarray(raw, dtype=np.float64).reshape(-1)[contract.GRIPPER_INDEX])
        if not np.isfinite(grip):
            return float("nan")
        space = self.space
        return (grip - space.gripper_open) / (space.gripper_closed - space.gripper_open)

    def to_command(self, raw: np.ndarray) -> Command:
        """Raw (denormalised) action (7,) -> Command. Non-finite values come out non-finite (a
        NaN gripper stays NaN) for the safety filter to catch."""
        a = np.asarray(raw, dtype=np.float64).reshape(-1)
        if a.shape != (contract.ACTION_DIM,):
            raise InputError(
                f"action has shape {np.shape(raw)}, expected ({contract.ACTION_DIM},)"
            )
        closing = self.closing(a)
        if not np.isfinite(closing):
            gripper = float("nan")
        elif closing > self.gripper_threshold:
            gripper = contract.GRIPPER_CLOSE
        else:
            gripper = contract.GRIPPER_OPEN
        return Command(
            a[:3] * (self.linear_per_unit * self.linear_scale),
            a[3:6] * (self.angular_per_unit * self.angular_scale),
            gripper,
        )


class GripperSwitch:
    """Open/close decisions with hysteresis, reported only when they change.

    ``update(closing)`` takes ``ActionMapper.closing`` of each action and returns the new
    command (``GRIPPER_CLOSE`` / ``GRIPPER_OPEN``) when the gripper should change, else None:
    it closes once ``closing`` exceeds ``threshold + hysteresis / 2`` and opens once it falls
    below ``threshold - hysteresis / 2``, so a value hovering at the threshold never makes the
    gripper chatter. The first decision after ``reset`` (start, enable, an episode start) is
    always sent, against the plain threshold. A non-finite ``closing`` changes nothing.
    """

    def __init__(self, threshold: float = 0.5, hysteresis: float = 0.1) -> None:
        self.threshold = float(threshold)
        self.hysteresis = float(hysteresis)
        if not 0 < self.threshold < 1:
            raise ValueError(f"gripper_threshold must be in (0, 1), got {threshold!r}")
        band = self.hysteresis / 2
        if not (np.isfinite(band) and band >= 0):
            raise ValueError(f"gripper_hysteresis must be >= 0, got {hysteresis!r}")
        if not 0 < self.threshold - band <= self.threshold + band < 1:
            raise ValueError(
                f"gripper_hysteresis {hysteresis!r} around gripper_threshold {threshold!r} must "
                "keep threshold +- hysteresis / 2 inside (0, 1)"
            )
        self.state: float | None = None  # the last command sent (None: none since reset)

    def reset(self) -> None:
        """Forget the last command: the next decision is sent."""
        self.state = None

    def update(self, closing: float) -> float | None:
        """The gripper command to send now, or None (no change)."""
        if not np.isfinite(closing):
            return None
        band = self.hysteresis / 2
        if self.state is None:
            want = contract.GRIPPER_CLOSE if closing > self.threshold else contract.GRIPPER_OPEN
        elif self.state == contract.GRIPPER_CLOSE:
            want = contract.GRIPPER_OPEN if closing < self.threshold - band else self.state
        else:
            want = contract.GRIPPER_CLOSE if closing > self.threshold + band else self.state
        if want == self.state:
            return None
        self.state = want
        return want
