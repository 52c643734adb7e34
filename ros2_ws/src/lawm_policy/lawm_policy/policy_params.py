"""The policy node's parameters: declared once (name, default, description), read into one
frozen dataclass, validated into the safety filter's limits and the action mapper.

No rclpy: ``read_params`` takes a function that returns a parameter's value by name, so the
node, tests and tools read parameters the same way.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from lawm_core.command import ActionMapper, GripperSwitch
from lawm_core.model import PolicyModel
from lawm_core.robot_state import GripperJoints
from lawm_core.safety import SafetyLimits

GRIPPER_INTERFACES = ("float64", "joint_trajectory", "gripper_action", "parallel_gripper_action")


@dataclass(frozen=True)
class PolicyParams:
    model_dir: str
    camera_topics: tuple[str, ...]
    proprio_topic: str
    instruction: str
    control_rate_hz: float
    stale_timeout_s: float
    frozen_timeout_s: float
    providers: str
    threads: int
    backend: str
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
    pose_topic: str
    pose_tf_frame: str
    joint_states_topic: str
    gripper_joints: tuple[str, ...]
    gripper_joint_scale: tuple[float, ...]
    gripper_joint_offset: tuple[float, ...]
    gripper_interface: str
    gripper_action_name: str
    gripper_command_joints: tuple[str, ...]
    gripper_open_position: float
    gripper_closed_position: float
    gripper_max_effort: float
    gripper_move_time_s: float
    gripper_hysteresis: float
    pose_target: bool
    servo_node: str


# name -> (default, description). Declared once, read into PolicyParams.
PARAMETERS: dict[str, tuple[object, str]] = {
    "model_dir": ("", "Exported model directory (policy.onnx + policy.json [+ text encoder])."),
    "camera_topics": (
        ["/camera/agentview/image_raw", "/camera/eye_in_hand/image_raw"],
        "One image topic per camera, in the order of the model's 'cameras'.",
    ),
    "proprio_topic": (
        "",
        "std_msgs/Float32MultiArray [ee_x, ee_y, ee_z, gripper_l, gripper_r] (the model's own "
        "layout); empty: the robot state comes from pose_topic / pose_tf_frame + "
        "joint_states_topic, or, with none of them, the model gets the training mean.",
    ),
    "pose_topic": (
        "",
        "geometry_msgs/PoseStamped of the end effector in frame_id (the robot base frame); a "
        "pose in another frame is refused.",
    ),
    "pose_tf_frame": (
        "",
        "End-effector TF frame, looked up from frame_id (needs tf2_ros); instead of pose_topic.",
    ),
    "joint_states_topic": ("", "sensor_msgs/JointState carrying the gripper finger joints."),
    "gripper_joints": (
        [""],
        "1 or 2 JointState names giving the model's two finger values (one: both fingers).",
    ),
    "gripper_joint_scale": (
        [1.0, -1.0],
        "Finger i = scale[i] * joint position + offset[i], in the model's convention (LIBERO's "
        "Panda fingers: about +0.04 / -0.04 m open, 0 / 0 closed).",
    ),
    "gripper_joint_offset": ([0.0, 0.0], "See gripper_joint_scale."),
    "instruction": ("", "Task instruction until one arrives on ~/instruction."),
    "control_rate_hz": (0.0, "Inference and command rate; 0 takes the model's own rate."),
    "stale_timeout_s": (0.5, "Inputs older than this give a zero twist."),
    "frozen_timeout_s": (
        0.0,
        "A camera whose frames stay byte-identical for this long (a frozen driver re-sending "
        "its last frame) is treated as stale; 0: off (a simulator may render identical "
        "frames; a real camera's noise never does).",
    ),
    "providers": ("auto", "onnxruntime providers: auto, tensorrt, cuda or cpu."),
    "threads": (0, "Inference threads, onnxruntime and OpenVINO (0: their default)."),
    "backend": (
        "auto",
        "Inference backend: auto (the fastest whose actions match fp32 within the export's "
        "tolerance on its reference frames; fp32 otherwise), onnxruntime (fp32), "
        "onnxruntime-int8, openvino, openvino-bf16 or openvino-int8 (each checked the same "
        "way; one that fails leaves fp32 running).",
    ),
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
        0.017,
        "Longest a control tick waits for the cameras' frames that are about to arrive (the "
        "command then reflects fresh images instead of ones up to a camera period old); "
        "0: never wait. Not used on sim time.",
    ),
    "gripper_interface": (
        "float64",
        "Gripper output besides ~/cmd_gripper (Float64 +1 close / -1 open, latched, sent on "
        "change): float64 (nothing else), joint_trajectory (trajectory_msgs/JointTrajectory on "
        "~/cmd_gripper_trajectory), gripper_action (control_msgs/action/GripperCommand goals "
        "to gripper_action_name) or parallel_gripper_action (ParallelGripperCommand goals for "
        "gripper_command_joints); the actions need control_msgs.",
    ),
    "gripper_action_name": (
        "gripper_controller/gripper_cmd",
        "GripperCommand action server (gripper_interface gripper_action).",
    ),
    "gripper_command_joints": ([""], "Joint names of the gripper JointTrajectory."),
    "gripper_open_position": (0.0, "Joint position / GripperCommand position meaning open."),
    "gripper_closed_position": (0.8, "Joint position / GripperCommand position meaning closed."),
    "gripper_max_effort": (0.0, "GripperCommand max_effort (the controller's units)."),
    "gripper_move_time_s": (0.5, "time_from_start of the gripper JointTrajectory point."),
    "gripper_hysteresis": (
        0.1,
        "Band around gripper_threshold: the gripper closes above threshold + h/2 and opens "
        "below threshold - h/2, so it never chatters; commands go out only on change.",
    ),
    "pose_target": (
        False,
        "Also publish ~/cmd_pose (PoseStamped in frame_id): the measured end-effector pose "
        "moved by the commanded twist over one control period, for Cartesian pose/impedance "
        "controllers; needs pose_topic or pose_tf_frame.",
    ),
    "servo_node": (
        "",
        "MoveIt Servo node (e.g. /servo_node): switched to TWIST and unpaused when commands "
        "start, paused when they stop; empty: not managed.",
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
GAIN_PARAMETERS = ("linear_scale", "angular_scale", "gripper_threshold", "gripper_hysteresis")
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


# List parameters holding text (every other list holds numbers); [""] means none.
STRING_LISTS = ("camera_topics", "gripper_joints", "gripper_command_joints")


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
        if f.name in STRING_LISTS:
            v = tuple(str(t) for t in v if str(t).strip()) if isinstance(v, (list, tuple)) else v
        elif isinstance(v, (list, tuple, array.array)):
            v = _tuple(v)
        values[f.name] = v
    if values["workspace_min"] == (0.0,):
        values["workspace_min"] = ()
    if values["workspace_max"] == (0.0,):
        values["workspace_max"] = ()
    return PolicyParams(**values)


def gripper_switch(p: PolicyParams) -> GripperSwitch:
    """Open/close decisions with the node's threshold and hysteresis (ValueError if invalid)."""
    return GripperSwitch(p.gripper_threshold, p.gripper_hysteresis)


def has_pose_source(p: PolicyParams) -> bool:
    return bool(p.proprio_topic or p.pose_topic or p.pose_tf_frame)


def check_robot_io(p: PolicyParams) -> None:
    """ValueError, quoting the value, for robot-state and arm-output parameters that cannot
    work together (checked at configure)."""
    if p.pose_topic and p.pose_tf_frame:
        raise ValueError(
            f"pose_topic {p.pose_topic!r} and pose_tf_frame {p.pose_tf_frame!r} are both set: "
            "choose one source of the end-effector pose"
        )
    standard = [n for n in ("pose_topic", "pose_tf_frame", "joint_states_topic") if getattr(p, n)]
    if p.proprio_topic and standard:
        raise ValueError(
            f"proprio_topic {p.proprio_topic!r} and {standard} are both set: the robot state "
            "comes either from the model-layout Float32MultiArray or from standard messages"
        )
    if p.joint_states_topic and p.gripper_joints:
        GripperJoints(p.gripper_joints, p.gripper_joint_scale, p.gripper_joint_offset)
    if p.gripper_interface not in GRIPPER_INTERFACES:
        raise ValueError(
            f"gripper_interface {p.gripper_interface!r} is not one of {list(GRIPPER_INTERFACES)}"
        )
    if p.gripper_interface == "joint_trajectory" and not p.gripper_command_joints:
        raise ValueError("gripper_interface 'joint_trajectory' needs gripper_command_joints")
    action = p.gripper_interface in ("gripper_action", "parallel_gripper_action")
    if action and not p.gripper_action_name.strip():
        raise ValueError(f"gripper_interface {p.gripper_interface!r} needs gripper_action_name")
    for name in ("gripper_open_position", "gripper_closed_position", "gripper_max_effort"):
        value = getattr(p, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if p.gripper_max_effort < 0:
        raise ValueError(f"gripper_max_effort must be >= 0, got {p.gripper_max_effort!r}")
    if not (math.isfinite(p.gripper_move_time_s) and p.gripper_move_time_s > 0):
        raise ValueError(f"gripper_move_time_s must be > 0, got {p.gripper_move_time_s!r}")
    if p.pose_target and not (p.pose_topic or p.pose_tf_frame):
        raise ValueError(
            "pose_target needs the measured end-effector pose: set pose_topic or pose_tf_frame"
        )


def safety_limits(p: PolicyParams) -> SafetyLimits:
    """The safety filter's limits; ValueError for invalid ones, or for a workspace box
    without a pose source (the fence needs the end effector's position)."""
    if (p.workspace_min or p.workspace_max) and not has_pose_source(p):
        raise ValueError(
            "workspace_min/workspace_max set but no pose source (proprio_topic, pose_topic or "
            "pose_tf_frame): the workspace fence needs the end effector's position; set one, "
            "or [0.0] for both to turn the fence off"
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
