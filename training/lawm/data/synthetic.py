"""Tiny synthetic robot data whose pixels are caused by the actions.

A coloured block sits on a textured table seen from above (agentview) and from a camera that
moves with the end effector (eye_in_hand: 2x zoom, offset). A scripted controller pushes the
block towards the corner named by the instruction, closes the gripper (the block darkens) and
lifts it (the block grows, as if nearer the camera), then holds still. So:

* dx, dy move the block by ``STEP`` world units per unit action; dz lifts it; the gripper
  action sets its shade; the rotation dims are always 0. Where the action moves nothing the
  next frame is identical, pixel for pixel.
* the target corner depends only on the instruction, and the block colour is random, so a
  policy needs frame + instruction to predict the action, and a world model needs frame +
  action to predict the next frame.

Writers are atomic (temporary file beside the target, then ``os.replace``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from lawm_core import contract
from lawm_core.files import atomic_path, atomic_write_text
from lawm_sim.recording import write_video

DEFAULT_INSTRUCTIONS: tuple[str, ...] = (
    "push the block to the top left corner and lift it",
    "push the block to the top right corner and lift it",
    "push the block to the bottom right corner and lift it",
    "push the block to the bottom left corner and lift it",
)
PALETTE = np.array(
    [(230, 50, 40), (40, 200, 70), (50, 100, 240), (240, 210, 40), (210, 60, 220), (40, 220, 220)],
    dtype=np.float32,
)
STEP = 0.035  # world units moved per unit of dx / dy (the table is [0, 1]^2)
LIFT_STEP = 0.125  # lift per unit of dz (lift is in [0, 1]): 8 steps to the top
REACHED = 0.04  # distance at which the controller grasps
CLOSED_SHADE = 0.45  # a closed gripper darkens the block to this fraction of its colour
_SUPER = 4  # supersampling of the agentview render: sub-pixel motion stays visible
_WORLD_LO, _WORLD_HI = -0.5, 1.5  # the rendered table extends past [0, 1] for the wrist view
_WRIST_OFFSET = np.array([0.1, 0.08])
_WRIST_HALF = 0.25  # half-width of the wrist camera's view (2x zoom)


def targets(n: int) -> np.ndarray:
    """(n, 2) target positions on a circle, starting top-left, clockwise (y points down)."""
    angles = -0.75 * np.pi + np.arange(n) * 2 * np.pi / n
    return 0.5 + 0.3 * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.random((6, 6, 3)).astype(np.float32)
    tex = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    tex = 70 + 80 * np.clip(tex, 0, 1)
    # Grid lines every 0.25 world units: the moving wrist camera sees them slide.
    unit = size / (_WORLD_HI - _WORLD_LO)
    for v in np.arange(_WORLD_LO, _WORLD_HI + 1e-9, 0.25):
        p = int(round((v - _WORLD_LO) * unit))
        tex[max(p - 1, 0) : p + 1, :] *= 0.7
        tex[:, max(p - 1, 0) : p + 1] *= 0.7
    return tex.astype(np.float32)


class _Renderer:
    def __init__(self, image_size: int, texture: np.ndarray) -> None:
        self.size = image_size
        self.texture = texture
        self.unit = texture.shape[0] / (_WORLD_HI - _WORLD_LO)  # canvas px per world unit

    def _px(self, v: float) -> int:
        return int(round((v - _WORLD_LO) * self.unit))

    def _view(self, canvas: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        x0, y0 = self._px(lo[0]), self._px(lo[1])
        x1, y1 = self._px(hi[0]), self._px(hi[1])
        crop = canvas[y0:y1, x0:x1]
        out = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def _coverage(self, lo: float, hi: float) -> tuple[int, np.ndarray]:
        """First canvas pixel and the fraction of each pixel inside [lo, hi) (world units)."""
        a, b = (lo - _WORLD_LO) * self.unit, (hi - _WORLD_LO) * self.unit
        first = int(np.floor(a))
        edges = np.arange(first, int(np.ceil(b)) + 1, dtype=np.float64)
        return first, np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, 1.0)

    def render(self, pos: np.ndarray, lift: float, color: np.ndarray) -> dict[str, np.ndarray]:
        canvas = self.texture.copy()
        half = 0.07 * (1.0 + 0.6 * lift)
        # Anti-aliased edges: any motion, however small, changes the pixels.
        x0, cx = self._coverage(pos[0] - half, pos[0] + half)
        y0, cy = self._coverage(pos[1] - half, pos[1] + half)
        cover = (cy[:, None] * cx[None, :])[..., None].astype(np.float32)
        patch = canvas[y0 : y0 + len(cy), x0 : x0 + len(cx)]
        patch *= 1.0 - cover
        patch += cover * color
        wrist = pos + _WRIST_OFFSET
        return {
            contract.AGENTVIEW: self._view(canvas, np.zeros(2), np.ones(2)),
            contract.EYE_IN_HAND: self._view(canvas, wrist - _WRIST_HALF, wrist + _WRIST_HALF),
        }


def simulate_episode(
    rng: np.random.Generator, task: int, n_tasks: int, length: int, image_size: int
) -> dict[str, Any]:
    """One scripted episode.

    Returns images {camera: uint8 (T, S, S, 3)}, actions float32 (T, 7) in [-1, 1] (action t
    leads from frame t to frame t + 1), ee_pos float32 (T, 3) (block x, y, lift),
    gripper_states float32 (T, 2), and success (the block was lifted).
    """
    target = targets(n_tasks)[task]
    # Start as far away as the episode allows the task to be finished in (reach at full
    # speed, a few slower steps near the target, grasp, lift): most frames show motion.
    lift_steps = int(np.ceil(1.0 / LIFT_STEP))
    far = float(np.clip(STEP * (length - lift_steps - 7), 0.1, 0.7))
    for _ in range(1000):
        angle = rng.uniform(0, 2 * np.pi)
        pos = target + rng.uniform(min(0.15, far), far) * np.array([np.cos(angle), np.sin(angle)])
        if np.all((pos > 0.1) & (pos < 0.9)):
            break
    color = PALETTE[rng.integers(len(PALETTE))]
    render = _Renderer(image_size, _texture(rng, _SUPER * image_size * 2))
    lift, gripper = 0.0, -1.0
    frames: dict[str, list[np.ndarray]] = {c: [] for c in contract.CAMERAS}
    actions, ee_pos, grip_states = [], [], []
    for _ in range(length):
        shade = color * (CLOSED_SHADE if gripper > 0 else 1.0)
        for cam, img in render.render(pos, lift, shade).items():
            frames[cam].append(img)
        ee_pos.append([pos[0], pos[1], lift])
        grip_states.append([0.04, -0.04] if gripper < 0 else [0.01, -0.01])
        action = np.zeros(contract.ACTION_DIM)
        action[contract.GRIPPER_INDEX] = gripper
        err = target - pos
        if gripper < 0 and np.linalg.norm(err) > REACHED:  # reach
            action[:2] = np.clip(0.5 * err / STEP + rng.normal(0, 0.2, 2), -1, 1)
        elif gripper < 0:  # grasp
            action[contract.GRIPPER_INDEX] = 1.0
        elif lift < 1.0:  # lift
            action[2] = 1.0
        actions.append(action)
        pos = np.clip(pos + STEP * action[:2], 0.05, 0.95)
        lift = float(np.clip(lift + LIFT_STEP * action[2], 0.0, 1.0))
        gripper = action[contract.GRIPPER_INDEX]
    return {
        "images": {c: np.stack(v) for c, v in frames.items()},
        "actions": np.asarray(actions, dtype=np.float32),
        "ee_pos": np.asarray(ee_pos, dtype=np.float32),
        "gripper_states": np.asarray(grip_states, dtype=np.float32),
        "success": bool(lift >= 1.0),
    }


def _check(episodes: int, length: int, image_size: int, instruction_set: Sequence[str]) -> None:
    if episodes < 1 or length < 2:
        raise ValueError(f"need episodes >= 1 and length >= 2, got {episodes}, {length}")
    if image_size < 8 or image_size % 2:
        raise ValueError(f"image_size must be even and >= 8, got {image_size}")
    if not instruction_set:
        raise ValueError("instruction_set must name at least one instruction")


def write_synthetic_hdf5(
    path: str | Path,
    episodes: int = 8,
    length: int = 40,
    image_size: int = 32,
    seed: int = 0,
    instruction_set: Sequence[str] = DEFAULT_INSTRUCTIONS,
) -> Path:
    """Write a LIBERO-layout HDF5 file of scripted episodes (upright images, opencv
    convention). Episode i follows ``instruction_set[i % len(instruction_set)]``, recorded in
    the demo's ``language_instruction`` attribute (the file's ``problem_info`` names the
    first). Returns the path."""
    _check(episodes, length, image_size, instruction_set)
    path = Path(path)
    rng = np.random.default_rng(seed)
    n_tasks = len(instruction_set)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "synthetic_block", "language_instruction": instruction_set[0]}
        )
        data.attrs["macros_image_convention"] = "opencv"
        data.attrs["env_args"] = json.dumps({"env_name": "lawm_synthetic", "seed": seed})
        data.attrs["total"] = episodes * length
        for i in range(episodes):
            ep = simulate_episode(rng, i % n_tasks, n_tasks, length, image_size)
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = length
            demo.attrs["success"] = ep["success"]
            demo.attrs["language_instruction"] = instruction_set[i % n_tasks]
            demo.create_dataset("actions", data=ep["actions"])
            rewards = np.zeros(length, np.float32)
            rewards[-1] = float(ep["success"])
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=(np.arange(length) == length - 1).astype(np.uint8))
            obs = demo.create_group("obs")
            for cam, key in contract.HDF5_IMAGE_KEYS.items():
                # One chunk per frame: windows read a few frames at a time.
                frames = ep["images"][cam]
                obs.create_dataset(key, data=frames, chunks=(1, *frames.shape[1:]))
            obs.create_dataset("ee_pos", data=ep["ee_pos"])
            ee_states = np.concatenate([ep["ee_pos"], np.zeros((length, 3), np.float32)], axis=1)
            obs.create_dataset("ee_states", data=ee_states)
            obs.create_dataset("gripper_states", data=ep["gripper_states"])
    return path


def write_synthetic_videos(
    folder: str | Path,
    clips: int = 4,
    length: int = 40,
    image_size: int = 32,
    fmt: str = "mp4",
    seed: int = 0,
    instruction_set: Sequence[str] = DEFAULT_INSTRUCTIONS,
    fps: int = 20,
) -> list[Path]:
    """Write agentview clips ``clip_000.<fmt>`` (yuv420p) with ``clip_000.txt`` instructions.

    fmt: mp4 (libx264, else mpeg4), webm (VP9, else VP8), avi (mpeg4) or mkv. Returns the video
    paths.
    """
    _check(clips, length, image_size, instruction_set)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_tasks = len(instruction_set)
    paths = []
    for i in range(clips):
        ep = simulate_episode(rng, i % n_tasks, n_tasks, length, image_size)
        video = folder / f"clip_{i:03d}.{fmt.lstrip('.')}"
        write_video(video, ep["images"][contract.AGENTVIEW], fps=fps)
        atomic_write_text(video.with_suffix(".txt"), instruction_set[i % n_tasks] + "\n")
        paths.append(video)
    return paths
