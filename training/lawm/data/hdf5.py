"""LIBERO / robomimic HDF5 demonstrations.

Layout (one file per task in LIBERO)::

    data/                       attrs: problem_info (JSON with "language_instruction"),
                                       macros_image_convention ("opengl" | "opencv")
      demo_N/                   attrs: success (optional), language_instruction (optional,
                                       overrides the file's instruction for this episode)
        actions                 (T, 7) float
        obs/agentview_rgb       (T, H, W, 3) uint8
        obs/eye_in_hand_rgb     (T, H, W, 3) uint8
        obs/ee_pos              (T, 3)   or obs/ee_states (T, 6): first 3 columns
        obs/gripper_states      (T, 2)

Robosuite renders with OpenGL, whose image origin is bottom-left, so official LIBERO files
store frames upside down; ``macros_image_convention`` says which, and files without it are
official ones ("opengl").
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lawm.data.base import (
    HDF5_SUFFIXES,
    DataError,
    EpisodeSource,
    HandleCache,
    natural_key,
)
from lawm_core import contract


@dataclass(frozen=True)
class Hdf5Options:
    """How HDF5 demonstrations are opened.

    successful_only: skip demos whose ``success`` attribute is false (demos without one are
        kept).
    """

    successful_only: bool = True


def _open_h5(path: str):
    return h5py.File(path, "r")


_FILES = HandleCache(_open_h5, lambda f: f.close(), capacity=64)


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def instruction_from_filename(path: str | Path) -> str:
    """LIBERO names files ``[SCENE_PREFIX_]the_task_words_demo.hdf5``; recover the words."""
    stem = Path(path).stem
    stem = re.sub(r"_demo$", "", stem)
    words = stem.split("_")
    # Scene prefixes are all capitals (KITCHEN_SCENE3_, LIVING_ROOM_SCENE2_); task words never.
    while words and words[0].upper() == words[0] and any(ch.isalpha() for ch in words[0]):
        words.pop(0)
    return " ".join(w for w in words if w)


class Hdf5Episode(EpisodeSource):
    """One ``data/demo_N`` group of a LIBERO/robomimic file."""

    action_space = contract.ACTION_OSC_POSE_DELTA  # robosuite's OSC_POSE controller input

    def __init__(
        self,
        path: str,
        demo: str,
        length: int,
        instruction: str,
        cameras: tuple[str, ...],
        has_actions: bool,
        proprio_key: str | None,
        flip: bool,
        success: bool | None,
    ) -> None:
        self.path = path
        self.demo = demo
        self.name = f"{path}:{demo}"
        self.length = length
        self.instruction = instruction
        self.cameras = cameras
        self.has_actions = has_actions
        self.has_proprio = proprio_key is not None
        self._proprio_key = proprio_key  # "ee_pos" or "ee_states"
        self._flip = flip
        self.success = success

    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        try:
            group = _FILES.get(self.path)["data"][self.demo]
            obs = group["obs"]
            images = {}
            for cam in cameras:
                frames = obs[contract.HDF5_IMAGE_KEYS[cam]][start:stop]
                if self._flip:
                    frames = np.ascontiguousarray(frames[:, ::-1])
                images[cam] = frames
            out: dict[str, Any] = {"images": images, "actions": None, "proprio": None}
            if actions:
                out["actions"] = np.asarray(group["actions"][start:stop], dtype=np.float32)
            if proprio:
                pos = obs[self._proprio_key][start:stop, : contract.EE_POS_DIM]
                grip = obs["gripper_states"][start:stop]
                out["proprio"] = np.concatenate([pos, grip], axis=1).astype(np.float32)
        except (OSError, KeyError, ValueError) as err:
            _FILES.drop(self.path)
            raise DataError(f"{self.name}: reading frames [{start}, {stop}): {err}") from err
        return out


def _check_shape(name: str, ds: Any, length: int | None, tail: tuple[int | None, ...]) -> int:
    """Validate ``ds.shape == (length, *tail)`` (None: any); returns its length."""
    shape = tuple(ds.shape)
    ok = len(shape) == 1 + len(tail) and all(
        want is None or got == want for got, want in zip(shape[1:], tail)
    )
    if not ok:
        want = ("T", *("*" if t is None else t for t in tail))
        raise DataError(f"{name}: shape {shape}, expected {want}")
    if length is not None and shape[0] != length:
        raise DataError(f"{name}: {shape[0]} rows, but the episode has {length} frames")
    return shape[0]


def _episode(
    path: str, f: Any, demo: str, file_instruction: str, flip: bool, labelled: bool
) -> Hdf5Episode:
    where = f"{path}:data/{demo}"
    group = f["data"][demo]
    if "obs" not in group:
        raise DataError(f"{where}: missing key 'obs'")
    obs = group["obs"]
    cameras = tuple(c for c in contract.CAMERAS if contract.HDF5_IMAGE_KEYS[c] in obs)
    if not cameras:
        expected = [f"obs/{k}" for k in contract.HDF5_IMAGE_KEYS.values()]
        raise DataError(
            f"{where}: missing camera key: none of {expected} present "
            f"(obs has {sorted(obs.keys())})"
        )
    length = None
    for cam in cameras:
        key = contract.HDF5_IMAGE_KEYS[cam]
        ds = obs[key]
        if ds.dtype != np.uint8:
            raise DataError(f"{where}/obs/{key}: dtype {ds.dtype}, expected uint8")
        length = _check_shape(f"{where}/obs/{key}", ds, length, (None, None, 3))
    assert length is not None
    if length == 0:
        raise DataError(f"{where}: zero-length episode (no frames)")
    has_actions = False
    if labelled:
        if "actions" not in group:
            raise DataError(f"{where}: missing key 'actions' (open with labelled=False for video)")
        _check_shape(f"{where}/actions", group["actions"], length, (contract.ACTION_DIM,))
        has_actions = True
    proprio_key = None
    pos_key = "ee_pos" if "ee_pos" in obs else ("ee_states" if "ee_states" in obs else None)
    if pos_key is not None and "gripper_states" in obs:
        pos = obs[pos_key]
        if pos.ndim != 2 or pos.shape[1] < contract.EE_POS_DIM:
            raise DataError(f"{where}/obs/{pos_key}: shape {pos.shape}, expected (T, >=3)")
        _check_shape(f"{where}/obs/{pos_key}", pos, length, (pos.shape[1],))
        _check_shape(
            f"{where}/obs/gripper_states",
            obs["gripper_states"],
            length,
            (contract.GRIPPER_STATE_DIM,),
        )
        proprio_key = pos_key
    instruction = file_instruction
    if "language_instruction" in group.attrs:
        instruction = _attr_str(group.attrs["language_instruction"])
    success = bool(group.attrs["success"]) if "success" in group.attrs else None
    return Hdf5Episode(
        path, demo, length, instruction, cameras, has_actions, proprio_key, flip, success
    )


def open_hdf5_file(
    path: str | Path, labelled: bool = True, successful_only: bool = True
) -> list[Hdf5Episode]:
    """Every demo of one file, in natural order (demo_2 before demo_10)."""
    path = str(Path(path).resolve())
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise DataError(f"{path}: missing key 'data' (not a LIBERO/robomimic file?)")
            data = f["data"]
            file_instruction = instruction_from_filename(path)
            if "problem_info" in data.attrs:
                try:
                    info = json.loads(_attr_str(data.attrs["problem_info"]))
                    file_instruction = str(info.get("language_instruction", file_instruction))
                except (json.JSONDecodeError, AttributeError) as err:
                    raise DataError(
                        f"{path}: data.attrs['problem_info'] is not JSON: {err}"
                    ) from err
            convention = _attr_str(data.attrs.get("macros_image_convention", "opengl")).lower()
            if convention not in ("opengl", "opencv"):
                raise DataError(
                    f"{path}: macros_image_convention {convention!r}, expected opengl or opencv"
                )
            demos = sorted((k for k in data.keys() if k.startswith("demo")), key=natural_key)
            if not demos:
                raise DataError(f"{path}: no data/demo_* groups")
            episodes = [
                _episode(path, f, d, file_instruction, convention == "opengl", labelled)
                for d in demos
            ]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise DataError(f"{path}: cannot read HDF5 file (corrupt or truncated?): {err}") from err
    # A camera present in some demos but not others means a broken conversion, not a choice.
    all_cams = {c for e in episodes for c in e.cameras}
    for e in episodes:
        missing = sorted(all_cams - set(e.cameras))
        if missing:
            keys_missing = [f"obs/{contract.HDF5_IMAGE_KEYS[c]}" for c in missing]
            raise DataError(f"{e.name}: missing camera key {keys_missing} present in other demos")
    if successful_only:
        episodes = [e for e in episodes if e.success is not False]
    return episodes


def open_hdf5(
    path: str | Path, labelled: bool = True, options: Hdf5Options | None = None
) -> list[Hdf5Episode]:
    """A file, or every .hdf5/.h5 file in a folder (natural order)."""
    options = Hdf5Options() if options is None else options
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in HDF5_SUFFIXES and not p.name.startswith(".")
            ),
            key=lambda p: natural_key(p.name),
        )
        if not files:
            raise DataError(f"{path}: no .hdf5/.h5 files in the folder")
    else:
        files = [path]
    episodes: list[Hdf5Episode] = []
    for file in files:
        found = open_hdf5_file(file, labelled=labelled, successful_only=options.successful_only)
        if not found:
            warnings.warn(f"{file}: every demo is marked unsuccessful; none used", stacklevel=2)
        episodes += found
    return episodes
