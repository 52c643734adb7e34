"""The one key vocabulary: camera names, observation keys and the action layout.

Imported by the datasets, the models, the exporter and (through the exported sidecar) the robot
runtime, so a name is spelled in exactly one place. Pure Python: no torch import.
"""

from __future__ import annotations

# Cameras, in model input order. Names follow the LIBERO/robomimic observation keys without the
# `_rgb` suffix.
AGENTVIEW = "agentview"
EYE_IN_HAND = "eye_in_hand"
CAMERAS: tuple[str, ...] = (AGENTVIEW, EYE_IN_HAND)

# Proprioception: end-effector position (3) + the two gripper finger positions (2).
EE_POS_DIM = 3
GRIPPER_STATE_DIM = 2
PROPRIO_DIM = EE_POS_DIM + GRIPPER_STATE_DIM

# Actions: 7-D delta end-effector command, normalised to [-1, 1].
ACTION_LAYOUT: tuple[str, ...] = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ACTION_DIM = len(ACTION_LAYOUT)
GRIPPER_INDEX = 6  # -1 open, +1 closed

# Sample dictionary keys produced by lawm.data and consumed by lawm.models.
IMAGES = "images"  # dict camera -> uint8 tensor (B, T, 3, H, W)
PROPRIO = "proprio"  # float32 (B, T, PROPRIO_DIM)
ACTIONS = "actions"  # float32 (B, K, ACTION_DIM), normalised to [-1, 1]
ACTION_MASK = "action_mask"  # bool (B, K): False where the chunk ran past the episode end
LANG = "lang"  # float32 (B, lang_dim) sentence embedding
INSTRUCTION = "instruction"  # the raw text (list[str] in a batch)
HAS_PROPRIO = "has_proprio"  # bool (B,): False for video with no robot state

# HDF5 (LIBERO / robomimic) observation keys.
HDF5_IMAGE_KEYS = {AGENTVIEW: "agentview_rgb", EYE_IN_HAND: "eye_in_hand_rgb"}

# Exported ONNX input/output names.
ONNX_IMAGE_INPUT = "image_{camera}"  # uint8 (B, H, W, 3), RGB, upright
ONNX_PROPRIO_INPUT = "proprio"  # float32 (B, PROPRIO_DIM), raw units (normalised in-graph)
ONNX_LANG_INPUT = "lang"  # float32 (B, lang_dim)
ONNX_ACTION_OUTPUT = "actions"  # float32 (B, K, ACTION_DIM), clamped to [-1, 1]


def onnx_image_input(camera: str) -> str:
    return ONNX_IMAGE_INPUT.format(camera=camera)
