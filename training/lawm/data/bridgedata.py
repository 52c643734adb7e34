"""BridgeData v2 raw trajectories: JPEG frames and language only.

Layout (nested arbitrarily deep, e.g. ``<env>/<task>/<date>/raw/traj_group0/traj3``)::

    traj3/images0/im_0.jpg .. im_<T-1>.jpg    the fixed over-the-shoulder camera
    traj3/lang.txt                            instruction on its first line (or in the group
                                              folder above); later lines hold confidences
    traj3/*.pkl                               actions/state: never opened here

The ``.pkl`` files are pickles: unpickling data from the internet runs arbitrary code, so this
loader reads frames and text only; BridgeData is used as unlabeled video.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lawm.data.base import DataError, EpisodeSource, first_line, natural_key
from lawm_core import contract

_FRAME = re.compile(r"^im_(\d+)\.jpe?g$", re.IGNORECASE)


def _frame_files(images_dir: str) -> list[tuple[int, str]]:
    """(frame number, file name) of every im_<n>.jpg, in numeric order."""
    with os.scandir(images_dir) as it:
        found = [(int(m.group(1)), e.name) for e in it if (m := _FRAME.match(e.name))]
    return sorted(found)


def find_trajectories(root: str | Path, first_only: bool = False) -> list[Path]:
    """Folders ``traj*`` holding ``images0/im_*.jpg`` under ``root`` (natural order)."""
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here.name.startswith("traj") and "images0" in dirnames:
            if _frame_files(os.path.join(dirpath, "images0")):
                found.append(here)
                if first_only:
                    return found
            dirnames.clear()  # nothing nests inside a trajectory; skip its image folders
            continue
        # Image folders of other cameras hold only JPEGs: no need to list them.
        dirnames[:] = sorted(
            (d for d in dirnames if not d.startswith(("images", "depth"))), key=natural_key
        )
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(root))))


def read_instruction(traj: Path) -> str | None:
    """First non-empty line of lang.txt in the trajectory or its group folder; None if none."""
    for folder in (traj, traj.parent):
        lang = folder / "lang.txt"
        if lang.is_file():
            return first_line(lang.read_text(errors="replace"))
    return None


class BridgeDataEpisode(EpisodeSource):
    """One BridgeData trajectory: ``images0`` frames as the agentview camera."""

    def __init__(self, traj: str | Path, frames: list[tuple[int, str]], instruction: str) -> None:
        self.path = str(traj)
        self.name = self.path
        # Frame numbers only (compact for ~60k trajectories); explicit names just when the
        # files are not spelled im_<n>.jpg (e.g. zero-padded).
        self._numbers = np.asarray([n for n, _ in frames], dtype=np.int32)
        canonical = all(name == f"im_{n}.jpg" for n, name in frames)
        self._names = None if canonical else [name for _, name in frames]
        self.length = len(frames)
        self.instruction = instruction
        self.cameras = (contract.AGENTVIEW,)
        self.has_actions = False
        self.has_proprio = False
        self.success = None

    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"images": {}, "actions": None, "proprio": None}
        if not cameras:
            return out
        frames = []
        for i in range(start, stop):
            name = self._names[i] if self._names else f"im_{self._numbers[i]}.jpg"
            file = os.path.join(self.path, "images0", name)
            bgr = cv2.imread(file, cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(f"{file}: cannot decode JPEG (missing, corrupt or truncated)")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise DataError(f"{self.name}: frames differ in size: {sorted(shapes)}")
        out["images"][contract.AGENTVIEW] = np.stack(frames)
        return out


def open_bridgedata(root: str | Path) -> list[BridgeDataEpisode]:
    """Every trajectory under ``root``; those without lang.txt get "" and one warning."""
    root = Path(root)
    trajs = find_trajectories(root)
    if not trajs:
        raise DataError(f"{root}: no BridgeData trajectories (traj*/images0/im_*.jpg) found")
    episodes = []
    unlabelled = []
    for traj in trajs:
        frames = _frame_files(str(traj / "images0"))
        instruction = read_instruction(traj)
        if instruction is None:
            unlabelled.append(traj)
        episodes.append(BridgeDataEpisode(traj, frames, instruction or ""))
    if unlabelled:
        warnings.warn(
            f"{root}: {len(unlabelled)} of {len(trajs)} trajectories have no lang.txt "
            f"(instruction set to ''), e.g. {unlabelled[0]}",
            stacklevel=2,
        )
    return episodes
