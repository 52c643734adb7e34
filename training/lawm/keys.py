"""Keys of the sample dictionaries the data loaders produce and the models consume.

Training-internal; the vocabulary shared with the robot (cameras, layouts, tensor names) is
``lawm_core.contract``.
"""

from __future__ import annotations

IMAGES = "images"  # dict camera -> uint8 tensor (B, T, 3, H, W)
PROPRIO = "proprio"  # float32 (B, T, PROPRIO_DIM)
ACTIONS = "actions"  # float32 (B, K, ACTION_DIM), normalised to [-1, 1]
ACTION_MASK = "action_mask"  # bool (B, K): False where the chunk ran past the episode end
LANG = "lang"  # float32 (B, lang_dim) sentence embedding
INSTRUCTION = "instruction"  # the raw text (list[str] in a batch)
HAS_PROPRIO = "has_proprio"  # bool (B,): False for video with no robot state
