"""The robot's own state, from the fields of standard ROS messages, as the policy needs it.

A real arm reports its end-effector pose (``geometry_msgs/PoseStamped``, or TF) and its finger
joints (``sensor_msgs/JointState``); the model's proprio is ``contract.PROPRIO_LAYOUT``: the
end-effector position followed by two finger positions in the training data's convention
(LIBERO's Panda: about +0.04 / -0.04 m open, 0 / 0 closed). ``GripperJoints`` maps named joint
positions to those two values (``scale * position + offset`` per finger), ``EePose`` checks a
pose, and ``integrate_pose`` moves a pose by a base-frame twist (the pose-target output).

No rclpy: the node passes message fields, so tests and tools use the same checks. Every
malformed input raises ``InputError`` saying what is wrong; the caller drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lawm_core import contract
from lawm_core.errors import InputError

# A quaternion whose norm is further than this from 1 is refused rather than renormalised.
QUATERNION_NORM_TOLERANCE = 1e-2


class GripperJoints:
    """Named finger joints -> the model's two proprio finger values.

    Args:
        joints: one or two joint names; one name gives both fingers (a single-actuator gripper
            such as a Robotiq 2F-85 or xArm's ``drive_joint``).
        scale, offset: two values each; finger ``i`` = ``scale[i] * position + offset[i]``, with
            ``position`` the joint's (``joints[i]``, or the one joint) value in the message.
    """

    def __init__(
        self, joints: Sequence[str], scale: Sequence[float], offset: Sequence[float]
    ) -> None:
        names = tuple(str(j) for j in joints)
        if not 1 <= len(names) <= contract.GRIPPER_STATE_DIM or not all(n.strip() for n in names):
            raise ValueError(f"gripper_joints must be 1 or 2 joint names, got {list(joints)!r}")
        self.joints = names
        self.scale = _pair("gripper_joint_scale", scale)
        self.offset = _pair("gripper_joint_offset", offset)

    def fingers(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        """A JointState's ``name`` and ``position`` -> float32 (2,) finger values.

        InputError for arrays of different lengths, a missing joint (the message names the
        joints it has), or a non-finite position."""
        names = list(names)
        values = np.asarray(positions, dtype=np.float64).reshape(-1)
        if len(names) != values.size:
            raise InputError(f"JointState has {len(names)} names but {values.size} positions")
        index = {n: i for i, n in enumerate(names)}
        missing = [j for j in self.joints if j not in index]
        if missing:
            shown = names[:12] + (["..."] if len(names) > 12 else [])
            raise InputError(f"JointState lacks gripper joint(s) {missing} (it has {shown})")
        q = np.array([values[index[j]] for j in self.joints], dtype=np.float64)
        if not np.all(np.isfinite(q)):
            raise InputError(f"gripper joint positions not finite: {dict(zip(self.joints, q))}")
        if q.size == 1:
            q = np.repeat(q, contract.GRIPPER_STATE_DIM)
        return (self.scale * q + self.offset).astype(np.float32)


@dataclass(frozen=True)
class EePose:
    """End-effector pose in the robot base frame: position (3,) m, orientation (x, y, z, w)."""

    position: np.ndarray
    orientation: np.ndarray

    @classmethod
    def from_fields(
        cls,
        position: Sequence[float],
        orientation: Sequence[float],
        frame_id: str = "",
        expected_frame: str = "",
    ) -> EePose:
        """Checked pose from a message's fields. InputError for a frame other than
        ``expected_frame`` (when given), a non-finite value, or a quaternion that is not of unit
        norm (beyond ``QUATERNION_NORM_TOLERANCE``; within it, renormalised)."""
        if expected_frame and frame_id.lstrip("/") != expected_frame.lstrip("/"):
            raise InputError(
                f"pose in frame {frame_id!r}, expected {expected_frame!r} (the robot base "
                "frame the commands are in)"
            )
        p = np.asarray(position, dtype=np.float64).reshape(-1)
        q = np.asarray(orientation, dtype=np.float64).reshape(-1)
        if p.shape != (3,) or q.shape != (4,):
            raise InputError(f"pose needs 3 + 4 values, got {p.size} + {q.size}")
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            raise InputError(f"pose not finite: position {p.tolist()}, orientation {q.tolist()}")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
            raise InputError(f"orientation quaternion {q.tolist()} has norm {norm:.4f}, not 1")
        return cls(p, q / norm)


def _pair(name: str, value: Sequence[float]) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 2 finite numbers, got {value!r}") from err
    if arr.shape != (contract.GRIPPER_STATE_DIM,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be 2 finite numbers, got {value!r}")
    return arr


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of (x, y, z, w) quaternions (rotation b, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def rotation_quaternion(rotvec: np.ndarray) -> np.ndarray:
    """A rotation vector (axis * angle, rad) -> its (x, y, z, w) quaternion."""
    r = np.asarray(rotvec, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.append(r / angle * np.sin(angle / 2), np.cos(angle / 2))


def integrate_pose(pose: EePose, linear: np.ndarray, angular: np.ndarray, dt: float) -> EePose:
    """The pose reached by moving at a base-frame twist for ``dt`` s: position + v dt, and the
    orientation turned by the rotation vector w dt about the base frame's axes (so a twist
    and the pose target it gives describe the same motion)."""
    v = np.asarray(linear, dtype=np.float64).reshape(3)
    w = np.asarray(angular, dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(w)) and np.isfinite(dt) and dt >= 0):
        raise InputError(f"cannot integrate a non-finite twist ({v}, {w}) over {dt} s")
    q = quaternion_multiply(rotation_quaternion(w * dt), pose.orientation)
    return EePose(pose.position + v * dt, q / np.linalg.norm(q))


# Proprio layout names (policy.json's ``proprio_layout``; the vocabulary is the contract's).
EE_NAMES = contract.PROPRIO_EE_NAMES  # from the end-effector pose
FINGER_NAMES = contract.PROPRIO_GRIPPER_NAMES  # from the finger joints, mapped
JOINT_PREFIX = contract.PROPRIO_JOINT_PREFIX  # "joint:<name>": that JointState position


class ProprioLayout:
    """Assembles the model's proprio, name by name, from standard robot messages.

    ``layout``: the model's ``proprio_layout``. ``ee_x``/``ee_y``/``ee_z`` come from the
    end-effector pose, ``gripper_left``/``gripper_right`` from the finger joints through
    ``GripperJoints`` (``gripper``), ``joint:<name>`` from a JointState's position of
    ``<name>``. ``check_sources`` says at configure which source a name lacks.
    """

    def __init__(self, layout: Sequence[str], gripper: GripperJoints | None = None) -> None:
        self.layout = tuple(layout)
        problems = [why for n in self.layout if (why := contract.proprio_name_problem(n))]
        if problems:
            raise ValueError("proprio_layout: " + "; ".join(problems))
        self.needs_pose = any(n in EE_NAMES for n in self.layout)
        self.needs_fingers = any(n in FINGER_NAMES for n in self.layout)
        self.joints = tuple(_joint_name(n) for n in self.layout if _joint_name(n))
        self.gripper = gripper

    def check_sources(self, has_pose: bool, has_joint_states: bool) -> None:
        """ValueError naming what the layout needs and the parameter that provides it."""
        missing = []
        if self.needs_pose and not has_pose:
            missing.append(f"{list(EE_NAMES)} need pose_topic or pose_tf_frame")
        if (self.needs_fingers or self.joints) and not has_joint_states:
            missing.append("finger / joint values need joint_states_topic")
        if self.needs_fingers and self.gripper is None:
            missing.append(f"{list(FINGER_NAMES)} need gripper_joints")
        if missing:
            raise ValueError(
                f"the model's proprio_layout {list(self.layout)}: " + "; ".join(missing)
            )

    @property
    def uses_joint_states(self) -> bool:
        return bool(self.joint_names)

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Every JointState joint the layout reads (``joint:<name>`` and the finger joints)."""
        fingers = self.gripper.joints if self.needs_fingers and self.gripper else ()
        return tuple(dict.fromkeys((*self.joints, *fingers)))

    def read_joints(self, names: Sequence[str], positions: Sequence[float]) -> dict[str, float]:
        """The needed joints a JointState carries, by name (possibly none of them: several
        publishers often share one topic, e.g. the arm's and the gripper's). InputError for
        mismatched arrays or a needed joint's non-finite position."""
        names = list(names)
        values = np.asarray(positions, dtype=np.float64).reshape(-1)
        if len(names) != values.size:
            raise InputError(f"JointState has {len(names)} names but {values.size} positions")
        index = {n: i for i, n in enumerate(names)}
        out = {j: float(values[index[j]]) for j in self.joint_names if j in index}
        bad = {j: v for j, v in out.items() if not np.isfinite(v)}
        if bad:
            raise InputError(f"joint positions not finite: {bad}")
        return out

    def assemble(self, ee: EePose | None, joints: dict[str, float] | None) -> np.ndarray | None:
        """float32 proprio in layout order, or None while a needed piece is unknown.
        ``joints``: the latest position of each joint by name (``read_joints``, merged)."""
        joints = joints or {}
        if self.needs_pose and ee is None:
            return None
        if any(j not in joints for j in self.joint_names):
            return None
        fingers = None
        if self.needs_fingers:
            fingers = self.gripper.fingers(
                list(self.gripper.joints), [joints[j] for j in self.gripper.joints]
            )
        values = []
        for name in self.layout:
            if name in EE_NAMES:
                values.append(ee.position[EE_NAMES.index(name)])
            elif name in FINGER_NAMES:
                values.append(fingers[FINGER_NAMES.index(name)])
            else:
                values.append(joints[_joint_name(name)])
        return np.asarray(values, dtype=np.float32)


def _joint_name(name: str) -> str:
    return name[len(JOINT_PREFIX) :] if name.startswith(JOINT_PREFIX) else ""
