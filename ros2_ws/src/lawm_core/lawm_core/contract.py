"""The vocabulary shared by training, export, recording, replay and the robot, spelled once.

Camera names, the proprio and action layouts, the exported model's file and tensor names, and
the LIBERO/robomimic HDF5 observation keys. Pure Python (no numpy, torch or rclpy), so every
layer can import it. The exported-model sidecar built from these names is ``lawm_core.sidecar``.
"""

from __future__ import annotations

# Cameras, in model input order. Names follow the LIBERO/robomimic observation keys without the
# `_rgb` suffix.
AGENTVIEW = "agentview"
EYE_IN_HAND = "eye_in_hand"
CAMERAS: tuple[str, ...] = (AGENTVIEW, EYE_IN_HAND)

# Proprioception: end-effector position (3) + the two gripper finger positions (2) by default.
# A model's layout is a property of its training data (policy.json "proprio_layout"), written
# with these names: "ee_x", "ee_y", "ee_z" (end-effector position in the robot base frame),
# "gripper_left", "gripper_right" (LIBERO Panda finger qpos), "joint:<name>" (the position of a
# sensor_msgs/JointState joint by name). A model trained without robot state has none (empty
# layout, no proprio graph input).
PROPRIO_EE_NAMES: tuple[str, ...] = ("ee_x", "ee_y", "ee_z")
PROPRIO_GRIPPER_NAMES: tuple[str, ...] = ("gripper_left", "gripper_right")
PROPRIO_JOINT_PREFIX = "joint:"
PROPRIO_LAYOUT: tuple[str, ...] = (*PROPRIO_EE_NAMES, *PROPRIO_GRIPPER_NAMES)
EE_POS_DIM = 3
GRIPPER_STATE_DIM = 2
PROPRIO_DIM = len(PROPRIO_LAYOUT)

# Actions: 7-D end-effector command; the model predicts it normalised to [-1, 1], the runtime
# denormalises it to the training data's units (its "raw" action).
ACTION_LAYOUT: tuple[str, ...] = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ACTION_DIM = len(ACTION_LAYOUT)
GRIPPER_INDEX = 6  # -1 open, +1 closed
GRIPPER_CLOSE = 1.0
GRIPPER_OPEN = -1.0

# What a raw action means physically (policy.json's "action_space"), by the kind of data the
# policy was trained on:
# - OSC_POSE_DELTA: LIBERO/robosuite OSC_POSE controller input: per control step, a unit of
#   dx/dy/dz moves the end effector OSC_POSE_LINEAR_M m, a unit of droll/dpitch/dyaw turns it
#   OSC_POSE_ANGULAR_RAD rad (the controller's output_max over input_max 1).
# - TWIST: recorded velocity commands (geometry_msgs/TwistStamped): m/s and rad/s.
ACTION_OSC_POSE_DELTA = "osc_pose_delta"
ACTION_TWIST = "twist"
ACTION_KINDS: tuple[str, ...] = (ACTION_OSC_POSE_DELTA, ACTION_TWIST)
OSC_POSE_LINEAR_M = 0.05
OSC_POSE_ANGULAR_RAD = 0.5
ACTION_FRAME = "robot_base"  # both kinds command the end effector in the robot's base frame
# The gripper dimension: SIGN is -1 open, +1 closed (LIBERO, and ~/cmd_gripper); WIDTH is a
# finger opening in m, with the values meaning open and closed declared alongside.
GRIPPER_SIGN = "sign"
GRIPPER_WIDTH = "width"
GRIPPER_CONVENTIONS: tuple[str, ...] = (GRIPPER_SIGN, GRIPPER_WIDTH)

# HDF5 (LIBERO / robomimic) observation keys.
HDF5_IMAGE_KEYS = {AGENTVIEW: "agentview_rgb", EYE_IN_HAND: "eye_in_hand_rgb"}

# The exported model folder.
SIDECAR_FILE = "policy.json"
ONNX_FILE = "policy.onnx"
TEXT_ENCODER_ONNX = "text_encoder.onnx"
TEXT_ENCODER_SIDECAR_FILE = "text_encoder.json"
TOKENIZER_FILE = "tokenizer.json"
# Low-precision companions (optional, written by export when it had training data):
INT8_ONNX_FILE = "policy.int8.onnx"  # static int8 QDQ, calibrated on the training frames
REFERENCE_FILE = "reference.npz"  # graph inputs from the training data + fp32 actions
CALIBRATION_REPORT_FILE = "calibration.json"  # how the int8 model was calibrated and chosen
# A low-precision backend runs only when its actions stay within the sidecar's tolerance of
# fp32 on the reference set; no sidecar may state more than this (normalised action units).
MAX_PARITY_TOLERANCE = 0.02

# Exported ONNX input/output names.
ONNX_IMAGE_PREFIX = "image_"  # + camera: uint8 (B, H, W, 3), RGB, upright
ONNX_PROPRIO_INPUT = "proprio"  # float32 (B, P), raw units (normalised in-graph); P > 0 only
ONNX_LANG_INPUT = "lang"  # float32 (B, lang_dim)
ONNX_ACTION_OUTPUT = "actions"  # float32 (B, K, ACTION_DIM), clamped to [-1, 1]

# The exported text encoder's input/output names.
TEXT_INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask")  # int64 (B, L)
TEXT_OUTPUT_NAME = "embedding"  # float32 (B, D), L2-normalised


def onnx_image_input(camera: str) -> str:
    """The ONNX input name of a camera's image."""
    return f"{ONNX_IMAGE_PREFIX}{camera}"


def onnx_input_names(cameras: tuple[str, ...] | list[str], proprio: bool = True) -> list[str]:
    """The policy graph's inputs in order: one image per camera, proprio (only when the model
    takes robot state: ``proprio``, i.e. a proprio_dim > 0), language."""
    return [
        *(onnx_image_input(c) for c in cameras),
        *((ONNX_PROPRIO_INPUT,) if proprio else ()),
        ONNX_LANG_INPUT,
    ]


def proprio_name_problem(name: object) -> str | None:
    """Why ``name`` is not a proprio layout entry (None when it is one): one of
    PROPRIO_EE_NAMES, PROPRIO_GRIPPER_NAMES or ``joint:<joint name>``."""
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if name in PROPRIO_EE_NAMES or name in PROPRIO_GRIPPER_NAMES:
        return None
    joint = name[len(PROPRIO_JOINT_PREFIX) :]
    if name.startswith(PROPRIO_JOINT_PREFIX) and joint and joint == joint.strip():
        return None
    known = ", ".join((*PROPRIO_EE_NAMES, *PROPRIO_GRIPPER_NAMES))
    return f"{name!r} is not a proprio name ({known} or {PROPRIO_JOINT_PREFIX}<joint name>)"
