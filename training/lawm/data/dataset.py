"""Windows over episodes as torch samples, and their collation into batches.

The index is integers only: a cumulative count of windows per episode, so a dataset over
hundreds of thousands of clips costs a few MB and forks cheaply into DataLoader workers. Every
sample is read from disk on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from lawm import keys
from lawm.data.base import DataError, EpisodeSource, data_proprio_layout, first_line
from lawm_core import contract

MODES = ("pretrain", "finetune")
# Sample keys without a constant in lawm.keys (the models read them with .get()).
SKIPPED = "skipped"  # str per sample with skip_bad: why its window stood in for another
CAMERA_MASK = "camera_mask"  # bool (n_cameras,): the episode has this camera
FRAME_MASK = "frame_mask"  # bool (T,): False for frames repeated past the episode end


def square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) -> uint8 (n, 3, size, size): centre crop to square, INTER_AREA."""
    n, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[:, top : top + side, left : left + side]
    if side != size:
        frames = np.stack(
            [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
        )
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


def _pad_last(x: np.ndarray, length: int) -> np.ndarray:
    """Repeat the last row so that ``len(x) == length``."""
    if len(x) >= length:
        return x[:length]
    return np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)], axis=0)


class WindowDataset(torch.utils.data.Dataset):
    """Training windows over a list of episode sources.

    mode "pretrain": one window per (episode, t) with t in [0, length - 1) (frame t + 1 must
    exist); the sample holds frames t .. t + K (T = K + 1), repeating the last frame past the
    episode end. No action is read unless ``with_actions=True`` (used to evaluate latent
    actions against recorded ones).

    mode "finetune": one window per (episode, t), t in [0, length); the sample holds frame t
    (T = 1) and actions t .. t + K - 1. Every source must have actions.

    ``proprio_dim`` P: the model's proprio size; default: that of the episodes' proprio layout
    (``contract.PROPRIO_DIM`` when none has robot state). Episodes with robot state must all
    have one layout of that size.

    A sample (K = chunk_size, S = image_size, C = len(cameras))::

        images        {camera: uint8 (T, 3, S, S)}  zeros for a camera the episode lacks
        camera_mask   bool (C,)
        frame_mask    bool (T,)                     False for repeated frames
        proprio       float32 (T, P)                zeros without robot state
        has_proprio   bool ()
        actions       float32 (K, 7) raw units      finetune, or pretrain with with_actions
        action_mask   bool (K,)                     False past the end (rows repeat the last)
        instruction   str
        skipped       str                           with skip_bad: "" or why the window asked
                                                    for was replaced (its episode unreadable)

    A window that cannot be read raises DataError naming the episode and the frames; with
    ``skip_bad`` its episode is set aside in this process and the next readable episode's
    first window stands in (the sample's ``skipped`` says which episode and why).
    """

    def __init__(
        self,
        sources: Sequence[EpisodeSource],
        cameras: Sequence[str],
        image_size: int,
        chunk_size: int,
        mode: str,
        with_actions: bool | None = None,
        proprio_dim: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        cameras = tuple(cameras)
        unknown = [c for c in cameras if c not in contract.CAMERAS]
        if not cameras or unknown:
            raise ValueError(
                f"cameras must be a non-empty subset of {contract.CAMERAS}, got {cameras}"
            )
        if image_size <= 0 or chunk_size <= 0:
            raise ValueError(
                f"image_size and chunk_size must be positive, got {image_size}, {chunk_size}"
            )
        if with_actions is None:
            with_actions = mode == "finetune"
        if mode == "finetune" and not with_actions:
            raise ValueError(
                "finetune samples always carry actions; with_actions must not be False"
            )
        self.sources = list(sources)
        self.cameras = cameras
        self.image_size = int(image_size)
        self.chunk_size = int(chunk_size)
        self.mode = mode
        self.with_actions = bool(with_actions)
        self.frames = chunk_size + 1 if mode == "pretrain" else 1
        self.skip_bad = bool(skip_bad)
        self._bad: dict[int, str] = {}  # source index -> why it cannot be read (this process)

        if self.with_actions:
            unlabelled = [s.name for s in self.sources if not s.has_actions]
            if unlabelled:
                raise DataError(
                    f"{len(unlabelled)} episode(s) have no actions but {mode} needs them "
                    f"(opened with labelled=False, or a video format?): {unlabelled[:3]}"
                )
        layout = data_proprio_layout(self.sources)
        if proprio_dim is None:
            proprio_dim = contract.PROPRIO_DIM if layout is None else len(layout)
        if layout is not None and len(layout) != proprio_dim:
            raise DataError(
                f"the episodes' robot state has {len(layout)} values {list(layout)}, the model "
                f"takes {proprio_dim}"
            )
        self.proprio_dim = int(proprio_dim)
        blind = [s.name for s in self.sources if not set(s.cameras) & set(cameras)]
        if blind:
            raise DataError(f"episode(s) with none of the cameras {cameras}: {blind[:3]}")
        shift = 1 if mode == "pretrain" else 0
        counts = np.array([max(s.length - shift, 0) for s in self.sources], dtype=np.int64)
        self._windowless = {i for i, c in enumerate(counts) if c == 0}
        self._ends = np.cumsum(counts)
        if len(self._ends) == 0 or self._ends[-1] == 0:
            names = [s.name for s in self.sources[:3]]
            raise DataError(
                f"no {mode} windows: {len(self.sources)} episode(s) "
                f"{'(pretraining needs >= 2 frames each) ' if shift else ''}{names}"
            )

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Window ``index`` -> (source index, start frame t)."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        src = int(np.searchsorted(self._ends, index, side="right"))
        begin = int(self._ends[src - 1]) if src else 0
        return src, index - begin

    def __getitem__(self, index: int) -> dict[str, Any]:
        src_i, t = self.locate(int(index))
        note = ""
        for _ in range(len(self.sources)):
            if src_i not in self._bad and src_i not in self._windowless:
                try:
                    sample = self._window(src_i, t)
                except (DataError, OSError) as err:
                    name = self.sources[src_i].name
                    reason = first_line(str(err)) or type(err).__name__
                    if not reason.startswith(name):
                        reason = f"{name}: {reason}"
                    if not self.skip_bad:
                        raise DataError(f"{reason} (window at frame {t})") from err
                    self._bad[src_i] = reason
                    note = note or reason
                else:
                    if self.skip_bad:
                        sample[SKIPPED] = note
                    return sample
            note = note or self._bad.get(src_i, "")
            src_i, t = (src_i + 1) % len(self.sources), 0
        raise DataError(f"no episode can be read; the first: {next(iter(self._bad.values()))}")

    def _window(self, src_i: int, t: int) -> dict[str, Any]:
        src = self.sources[src_i]
        k, n_frames, size = self.chunk_size, self.frames, self.image_size
        stop = min(t + n_frames, src.length)
        present = tuple(c for c in self.cameras if c in src.cameras)
        data = src.read(t, stop, cameras=present, actions=False, proprio=src.has_proprio)
        n = stop - t

        images = {}
        for cam in self.cameras:
            if cam in data["images"]:
                frames = _pad_last(square_resize(data["images"][cam], size), n_frames)
                images[cam] = torch.from_numpy(frames)
            else:
                images[cam] = torch.zeros(n_frames, 3, size, size, dtype=torch.uint8)
        if data["proprio"] is not None:
            proprio = torch.from_numpy(_pad_last(data["proprio"], n_frames))
        else:
            proprio = torch.zeros(n_frames, self.proprio_dim, dtype=torch.float32)
        sample: dict[str, Any] = {
            keys.IMAGES: images,
            CAMERA_MASK: torch.tensor([c in src.cameras for c in self.cameras]),
            FRAME_MASK: torch.arange(n_frames) < n,
            keys.PROPRIO: proprio,
            keys.HAS_PROPRIO: torch.tensor(data["proprio"] is not None),
            keys.INSTRUCTION: src.instruction,
        }
        if self.with_actions:
            a_stop = min(t + k, src.length)
            acts = src.read(t, a_stop, cameras=(), actions=True, proprio=False)["actions"]
            sample[keys.ACTIONS] = torch.from_numpy(_pad_last(acts, k))
            sample[keys.ACTION_MASK] = torch.arange(k) < (a_stop - t)
        return sample


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A collated batch with its tensors (also those one dict level down, the cameras) on
    ``device``; other values as they are."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: tensors gain a leading B, ``images`` stays a dict of (B, T, 3, S, S),
    strings become lists."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    names = set(batch[0])
    for sample in batch[1:]:
        if set(sample) != names:
            raise ValueError(f"samples differ in keys: {sorted(names)} vs {sorted(sample)}")

    def stack(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, torch.Tensor):
            return torch.stack(values)
        if isinstance(first, dict):
            return {key: stack([v[key] for v in values]) for key in first}
        if isinstance(first, str):
            return list(values)
        return torch.as_tensor(values)

    return {key: stack([s[key] for s in batch]) for key in batch[0]}
