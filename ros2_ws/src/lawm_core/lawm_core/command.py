"""Normalised 7-D delta action -> end-effector velocity twist + gripper command.

Action layout (``lawm.contract.ACTION_LAYOUT``): dx, dy, dz, droll, dpitch, dyaw, gripper, each in
[-1, 1]. A per-axis scale turns the first six into m/s and rad/s; the gripper is thresholded
to +1 (close) or -1 (open).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lawm_core.errors import InputError

GRIPPER_CLOSE = 1.0
GRIPPER_OPEN = -1.0
ACTION_DIM = 7


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


def _scale(name: str, value: Sequence[float]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be 3 finite values >= 0, got {value!r}")
    return arr


class ActionMapper:
    """``to_command(action (7,)) -> Command``.

    Args:
        linear_scale: m/s per unit action for dx, dy, dz.
        angular_scale: rad/s per unit action for droll, dpitch, dyaw.
        gripper_threshold: action[6] above it closes (+1), otherwise opens (-1).
    """

    def __init__(
        self,
        linear_scale: Sequence[float],
        angular_scale: Sequence[float],
        gripper_threshold: float = 0.0,
    ) -> None:
        self.linear_scale = _scale("linear_scale", linear_scale)
        self.angular_scale = _scale("angular_scale", angular_scale)
        self.gripper_threshold = float(gripper_threshold)
        if not np.isfinite(self.gripper_threshold):
            raise ValueError(f"gripper_threshold must be finite, got {gripper_threshold!r}")

    def to_command(self, action: np.ndarray) -> Command:
        """Normalised action (7,) -> Command. Non-finite values come out non-finite (a NaN
        gripper stays NaN) for the safety filter to catch."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise InputError(f"action has shape {np.shape(action)}, expected ({ACTION_DIM},)")
        grip = a[6]
        if not np.isfinite(grip):
            gripper = float("nan")
        else:
            gripper = GRIPPER_CLOSE if grip > self.gripper_threshold else GRIPPER_OPEN
        return Command(a[:3] * self.linear_scale, a[3:6] * self.angular_scale, gripper)
