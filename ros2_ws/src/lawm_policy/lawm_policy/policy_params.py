"""The policy node's parameters: declared once (name, default, description), read into one
frozen dataclass, validated into the safety filter's limits and the action mapper.

No rclpy: ``read_params`` takes a function that returns a parameter's value by name, so the
node, tests and tools read parameters the same way.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass, fields

from lawm_core.command import ActionMapper
from lawm_core.model import PolicyModel
from lawm_core.safety import SafetyLimits


@dataclass(frozen=True)
class PolicyParams:
    model_dir: str
    camera_topics: tuple[str, ...]
    proprio_topic: str
    instruction: str
    control_rate_hz: float
    stale_timeout_s: float
    providers: str
    threads: int
    frame_id: str
    linear_scale: tuple[float, ...]
    angular_scale: tuple[float, ...]
    gripper_threshold: float
    max_linear_axis: tuple[float, ...]
    max_angular_axis: tuple[float, ...]
    max_linear_speed: float
    max_angular_speed: float
    max_linear_accel: float
    max_angular_accel: float
    workspace_min: tuple[float, ...]
    workspace_max: tuple[float, ...]
    diagnostics_period_s: float
    frame_wait_s: float


# name -> (default, description). Declared once, read into PolicyParams.
PARAMETERS: dict[str, tuple[object, str]] = {
    "model_dir": ("", "Exported model directory (policy.onnx + policy.json [+ text encoder])."),
    "camera_topics": (
        ["/camera/agentview/image_raw", "/camera/eye_in_hand/image_raw"],
        "One image topic per camera, in the order of the model's 'cameras'.",
    ),
    "proprio_topic": (
        "",
        "std_msgs/Float32MultiArray [ee_x, ee_y, ee_z, gripper_l, gripper_r]; empty: the "
        "model gets the training mean (no robot state).",
    ),
    "instruction": ("", "Task instruction until one arrives on ~/instruction."),
    "control_rate_hz": (0.0, "Inference and command rate; 0 takes the model's own rate."),
    "stale_timeout_s": (0.5, "Inputs older than this give a zero twist."),
    "providers": ("auto", "onnxruntime providers: auto, tensorrt, cuda or cpu."),
    "threads": (0, "onnxruntime intra-op threads (0: onnxruntime's default)."),
    "frame_id": ("base_link", "Frame of the published twist."),
    "linear_scale": (
        [1.0, 1.0, 1.0],
        "Gains in [0, 1] on the model's linear velocity (x, y, z); the velocity itself follows "
        "from the raw action and policy.json's action_space (1: the speed of the data).",
    ),
    "angular_scale": ([1.0, 1.0, 1.0], "Gains in [0, 1] on the angular velocity (rx, ry, rz)."),
    "gripper_threshold": (
        0.5,
        "In (0, 1): how far the raw gripper action must go from the model's open value towards "
        "its closed value to close the gripper.",
    ),
    "max_linear_axis": ([0.25, 0.25, 0.25], "Per-axis linear speed limit, m/s."),
    "max_angular_axis": ([0.8, 0.8, 0.8], "Per-axis angular speed limit, rad/s."),
    "max_linear_speed": (0.3, "Linear speed norm limit, m/s."),
    "max_angular_speed": (1.0, "Angular speed norm limit, rad/s."),
    "max_linear_accel": (2.0, "Linear rate limit, m/s^2."),
    "max_angular_accel": (6.0, "Angular rate limit, rad/s^2."),
    "workspace_min": ([0.0], "Workspace box minimum [x, y, z] in the proprio frame; [0.0]: off."),
    "workspace_max": ([0.0], "Workspace box maximum [x, y, z]; [0.0]: off."),
    "diagnostics_period_s": (1.0, "Period of /diagnostics messages."),
    "frame_wait_s": (
        0.012,
        "Longest a control tick waits for the cameras' frames that are about to arrive (the "
        "command then reflects fresh images instead of ones up to a camera period old); "
        "0: never wait. Not used on sim time.",
    ),
    "start_enabled": (
        True,
        "Commands reach the arm from the start; false: dry run (the policy runs, ~/action and "
        "/diagnostics are published, the twist stays zero, no gripper command) until "
        "~/enable is called with true.",
    ),
}

# Applied while configured or active, validated as a whole (SafetyLimits, ActionMapper); every
# other parameter of PARAMETERS is read at configure and refused while configured.
GAIN_PARAMETERS = ("linear_scale", "angular_scale", "gripper_threshold")
SAFETY_PARAMETERS = (
    "max_linear_axis",
    "max_angular_axis",
    "max_linear_speed",
    "max_angular_speed",
    "max_linear_accel",
    "max_angular_accel",
    "workspace_min",
    "workspace_max",
)
# Changeable at any time: only the next configure reads it.
ANY_TIME_PARAMETERS = ("start_enabled",)


def _tuple(value) -> tuple:
    return tuple(float(v) for v in value)


def action_mapper(model: PolicyModel, p: PolicyParams) -> ActionMapper:
    """Raw actions in the model's declared units -> commands, with the node's gains."""
    return ActionMapper(
        model.spec.action_space,
        model.control_rate_hz,
        p.linear_scale,
        p.angular_scale,
        p.gripper_threshold,
    )


def read_params(
    value_of: Callable[[str], object], changes: dict[str, object] | None = None
) -> PolicyParams:
    """The parameters as ``value_of(name)`` gives them, or as they would be with ``changes``."""
    changes = changes or {}
    values = {}
    for f in fields(PolicyParams):
        v = changes[f.name] if f.name in changes else value_of(f.name)
        values[f.name] = (
            _tuple(v)
            if isinstance(v, (list, tuple, array.array)) and f.name != "camera_topics"
            else v
        )
    values["camera_topics"] = tuple(str(t) for t in values["camera_topics"])
    if values["workspace_min"] == (0.0,):
        values["workspace_min"] = ()
    if values["workspace_max"] == (0.0,):
        values["workspace_max"] = ()
    return PolicyParams(**values)


def safety_limits(p: PolicyParams) -> SafetyLimits:
    """The safety filter's limits; ValueError for invalid ones, or for a workspace box
    without a pose source (the fence needs the end effector's position)."""
    if (p.workspace_min or p.workspace_max) and not p.proprio_topic:
        raise ValueError(
            "workspace_min/workspace_max set but proprio_topic is empty: the workspace "
            "fence needs the end effector's position; set proprio_topic, or [0.0] for "
            "both to turn the fence off"
        )
    return SafetyLimits(
        max_linear_axis=p.max_linear_axis,
        max_angular_axis=p.max_angular_axis,
        max_linear_speed=p.max_linear_speed,
        max_angular_speed=p.max_angular_speed,
        max_linear_accel=p.max_linear_accel,
        max_angular_accel=p.max_angular_accel,
        workspace_min=p.workspace_min or None,
        workspace_max=p.workspace_max or None,
    )
