"""The model's proprio, per replay step, from the robot-state messages a bag holds.

An exported model declares its robot state by name (``policy.json`` ``proprio_layout``, the
vocabulary of ``lawm_core.contract``): ``ee_x``, ``ee_y``, ``ee_z`` (end-effector position in
the robot base frame), ``gripper_left``, ``gripper_right`` (LIBERO finger positions) and
``joint:<name>`` (a ``sensor_msgs/JointState`` joint position by name). A bag gives them as

- the model-layout array (``--proprio-topic``: ``Float32MultiArray`` / ``Float64MultiArray``
  with one value per layout name, in layout order), used as it is; or
- standard messages, assembled name by name: ``ee_*`` from the position of a
  ``geometry_msgs/PoseStamped`` (``--proprio-pose-topic``), ``joint:<name>`` from a
  ``sensor_msgs/JointState`` (``--proprio-joint-states-topic``).

The messages are read by ``lawm_core.bags`` as training reads them: each value is the latest at
or before the step's time, per joint (``bags.joint_series``: drivers that publish arm and
gripper joints in separate JointState messages on one topic are read joint by joint). A name
the given topics cannot provide, or a joint no message names, is a ``ProprioError`` that says
which and what to pass instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lawm_core import bags, contract

POSE_STAMPED = bags.POSE_STAMPED
JOINT_STATE = bags.JOINT_STATE
EE_NAMES: tuple[str, ...] = contract.PROPRIO_EE_NAMES
JOINT_PREFIX = contract.PROPRIO_JOINT_PREFIX
MAX_LISTED = 12  # joint names shown in an error


class ProprioError(ValueError):
    """A layout the given topics cannot provide; the message says which names and what to
    pass (the caller adds the bag)."""


def check_layout(
    layout: Sequence[str], pose_topic: str | None, joint_states_topic: str | None
) -> list[str]:
    """ProprioError unless every name of ``layout`` can come from the given standard topics;
    returns notes on a given topic the layout does not use."""
    problems: list[str] = []
    for name in layout:
        if name in EE_NAMES and pose_topic is None:
            problems.append(f"{name} needs --proprio-pose-topic (geometry_msgs/PoseStamped)")
        elif name.startswith(JOINT_PREFIX) and joint_states_topic is None:
            problems.append(f"{name} needs --proprio-joint-states-topic (sensor_msgs/JointState)")
        elif name not in EE_NAMES and not name.startswith(JOINT_PREFIX):
            problems.append(
                f"{name} is not in a PoseStamped or a JointState (pass --proprio-topic with "
                f"the {len(layout)}-value array in the model's layout)"
            )
    if problems:
        raise ProprioError(
            f"the model's proprio_layout {list(layout)} cannot be assembled: "
            + "; ".join(problems)
        )
    notes = []
    if pose_topic is not None and not any(n in EE_NAMES for n in layout):
        notes.append(f"--proprio-pose-topic {pose_topic} unused: the layout has no ee_x/y/z")
    if joint_states_topic is not None and not any(n.startswith(JOINT_PREFIX) for n in layout):
        notes.append(
            f"--proprio-joint-states-topic {joint_states_topic} unused: the layout has no "
            f"{JOINT_PREFIX}<name>"
        )
    return notes


def required_stamps(
    layout: Sequence[str],
    where: str,
    pose: tuple[str, bags.Stream] | None,
    joints: tuple[str, bags.Stream] | None,
) -> dict[str, np.ndarray]:
    """Label -> the stamps of every message source ``layout`` needs (the pose topic, each
    joint), for the first step that has them all. ProprioError naming the joints no message
    of the topic names (and the joints it has), or an empty pose topic."""
    check_layout(layout, pose[0] if pose else None, joints[0] if joints else None)
    out: dict[str, np.ndarray] = {}
    if any(n in EE_NAMES for n in layout):
        if not len(pose[1]):
            raise ProprioError(f"--proprio-pose-topic {pose[0]} has no messages")
        out[pose[0]] = pose[1].stamps
    wanted = [n[len(JOINT_PREFIX) :] for n in layout if n.startswith(JOINT_PREFIX)]
    if wanted:
        topic, stream = joints
        has = {n for names in stream.names for n in names}
        missing = [j for j in wanted if j not in has]
        if missing:
            shown = sorted(has)[:MAX_LISTED] + (["..."] if len(has) > MAX_LISTED else [])
            raise ProprioError(
                f"--proprio-joint-states-topic {topic}: no message names joint(s) {missing} of "
                f"the model's proprio_layout ({len(stream)} messages; it has "
                f"{shown or 'no joints'}); record those joints, or export the model from data "
                "with this robot's joint names"
            )
        for joint in wanted:
            out[f"{topic} {joint}"] = bags.joint_series(where, topic, stream, joint)[0]
    return out


def assemble(
    layout: Sequence[str],
    times: np.ndarray,
    where: str,
    pose: tuple[str, bags.Stream] | None,
    joints: tuple[str, bags.Stream] | None,
) -> np.ndarray:
    """float32 (T, len(layout)): each name's latest value at or before each of ``times``
    (int64 ns); NaN where that value has not been published yet. ``pose``/``joints``:
    (topic, its ``bags.scan`` stream). ProprioError as ``required_stamps``."""
    required_stamps(layout, where, pose, joints)
    times = np.asarray(times, np.int64)
    out = np.full((times.size, len(layout)), np.nan)
    for col, name in enumerate(layout):
        if name in EE_NAMES:
            stream = pose[1]
            stamps = stream.stamps
            values = np.asarray([v[EE_NAMES.index(name)] for v in stream.values], np.float64)
        else:
            topic, stream = joints
            stamps, values = bags.joint_series(where, topic, stream, name[len(JOINT_PREFIX) :])
        idx = bags.latest_at_or_before(stamps, times)
        ok = idx >= 0
        out[ok, col] = values[idx[ok]]
    return out.astype(np.float32)
