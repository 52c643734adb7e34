"""Episode sources: the lazily read unit of every dataset format, and what the formats share.

An :class:`EpisodeSource` describes one episode (its length, cameras, instruction, whether it
carries actions and robot state) and reads any frame range on demand. Sources hold paths and
small integer/float indices only, never open handles or image data, so a dataset of thousands
of episodes costs little memory and pickles cheaply into DataLoader workers.
"""

from __future__ import annotations

import contextlib
import os
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np

from lawm_core import contract

HDF5_SUFFIXES = (".hdf5", ".h5")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov")
ROSBAG_SUFFIXES = (".mcap", ".db3")


class DataError(ValueError):
    """Input data is unusable; the message names the file and the problem."""


# Opening data with --skip-bad: a list that collects one line per file or episode that could
# not be opened (the loaders then go on without it); None: such an error is raised.
_SKIPPED: ContextVar[list[str] | None] = ContextVar("lawm_skipped_files", default=None)


@contextlib.contextmanager
def skipping_bad(into: list[str]) -> Iterator[list[str]]:
    """Within this block the loaders skip files and episodes they cannot open, appending one
    line for each to ``into``, instead of raising."""
    token = _SKIPPED.set(into)
    try:
        yield into
    finally:
        _SKIPPED.reset(token)


def skip_or_raise(err: Exception, what: str) -> None:
    """Inside ``skipping_bad``: record ``what: err`` (its first line) and return; otherwise
    raise it as a DataError naming ``what``."""
    text = first_line(str(err)) or type(err).__name__
    line = text if text.startswith(what) else f"{what}: {text}"
    skipped = _SKIPPED.get()
    if skipped is None:
        if isinstance(err, DataError):
            raise err
        raise DataError(line) from err
    skipped.append(line)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: demo_2 before demo_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class HandleCache:
    """Per-process LRU cache of open file handles, keyed by path.

    DataLoader workers are forked from the process that built the dataset. A handle opened
    before the fork must not be used in the child (HDF5 and sqlite keep process-local state and
    file offsets), so the whole cache is abandoned, not closed, when ``os.getpid()`` changes.
    """

    def __init__(
        self, opener: Callable[[str], Any], closer: Callable[[Any], None], capacity: int = 32
    ) -> None:
        self._opener = opener
        self._closer = closer
        self._capacity = capacity
        self._pid = os.getpid()
        self._handles: OrderedDict[str, Any] = OrderedDict()
        # Handles inherited from the parent: kept referenced so the child never closes them.
        self._inherited: list[Any] = []

    def get(self, path: str) -> Any:
        pid = os.getpid()
        if pid != self._pid:
            self._inherited.extend(self._handles.values())
            self._handles = OrderedDict()
            self._pid = pid
        handle = self._handles.get(path)
        if handle is not None:
            self._handles.move_to_end(path)
            return handle
        handle = self._opener(path)
        self._handles[path] = handle
        while len(self._handles) > self._capacity:
            _, old = self._handles.popitem(last=False)
            self._close(old)
        return handle

    def drop(self, path: str) -> None:
        """Forget (and close) the handle for ``path``, e.g. after a read error."""
        if os.getpid() != self._pid:
            return
        handle = self._handles.pop(path, None)
        if handle is not None:
            self._close(handle)

    def clear(self) -> None:
        if os.getpid() == self._pid:
            for handle in self._handles.values():
                self._close(handle)
        self._handles = OrderedDict()
        self._pid = os.getpid()

    def _close(self, handle: Any) -> None:
        with contextlib.suppress(Exception):
            self._closer(handle)


class EpisodeSource(ABC):
    """One episode, read lazily.

    Attributes:
        name: where it comes from, e.g. ``"/data/x.hdf5:demo_3"``.
        length: number of frames (>= 1).
        instruction: the task's language instruction ("" when unknown).
        cameras: which of ``contract.CAMERAS`` it has, in ``contract.CAMERAS`` order.
        has_actions: whether ``read`` returns actions (False for video and for sources opened
            with ``labelled=False``).
        has_proprio: whether ``read`` returns robot state.
        success: the recorded outcome, None when the format does not say.
        action_space: what the actions physically are (one of ``contract.ACTION_KINDS``), None
            when the format does not say; export records it in ``policy.json``.
        proprio_layout: the names of the robot-state values ``read`` returns (the vocabulary
            of ``lawm_core.contract``); the default is ``contract.PROPRIO_LAYOUT``.
        control_rate_hz: the rate of the episode's steps, None when the format does not say.
        gripper_convention: how the gripper action is written (``contract.GRIPPER_SIGN`` or
            ``GRIPPER_WIDTH``), None when the format does not say.
    """

    name: str
    length: int
    instruction: str
    cameras: tuple[str, ...]
    has_actions: bool
    has_proprio: bool
    success: bool | None
    action_space: str | None = None
    proprio_layout: tuple[str, ...] = contract.PROPRIO_LAYOUT
    control_rate_hz: float | None = None
    gripper_convention: str | None = None

    def read(
        self,
        start: int,
        stop: int,
        cameras: Sequence[str] | None = None,
        actions: bool = True,
        proprio: bool = True,
    ) -> dict[str, Any]:
        """Frames ``start`` .. ``stop - 1`` (n = stop - start).

        Returns ``{"images": {camera: uint8 (n, H, W, 3) RGB upright}, "actions": float32 (n, 7)
        or None, "proprio": float32 (n, len(proprio_layout)) or None}``. ``cameras`` restricts
        which cameras are decoded (cameras the source lacks are left out of ``images``);
        ``actions=False`` / ``proprio=False`` skip reading those, so a caller can guarantee no
        label is touched.
        """
        if not (0 <= start < stop <= self.length):
            raise IndexError(
                f"{self.name}: frame range [{start}, {stop}) outside [0, {self.length})"
            )
        if cameras is None:
            wanted = self.cameras
        else:
            unknown = [c for c in cameras if c not in contract.CAMERAS]
            if unknown:
                raise ValueError(f"unknown cameras {unknown}; known: {contract.CAMERAS}")
            wanted = tuple(c for c in self.cameras if c in cameras)
        out = self._read(
            start, stop, wanted, actions and self.has_actions, proprio and self.has_proprio
        )
        self._check_read(out, start, stop, wanted, actions, proprio)
        return out

    @abstractmethod
    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        """Format-specific read; ``cameras`` are all present in the source."""

    def _check_read(
        self,
        out: dict[str, Any],
        start: int,
        stop: int,
        cameras: tuple[str, ...],
        actions: bool,
        proprio: bool,
    ) -> None:
        # One place that guarantees the contract, whatever the format's decoder did.
        n = stop - start
        for cam in cameras:
            img = out["images"].get(cam)
            if (
                img is None
                or img.dtype != np.uint8
                or img.ndim != 4
                or img.shape[0] != n
                or img.shape[3] != 3
            ):
                got = None if img is None else (img.shape, str(img.dtype))
                raise DataError(
                    f"{self.name}: camera {cam!r} frames [{start}, {stop}) decoded as {got}, "
                    f"expected uint8 ({n}, H, W, 3)"
                )
        for key, want, dim in (
            ("actions", actions and self.has_actions, contract.ACTION_DIM),
            ("proprio", proprio and self.has_proprio, len(self.proprio_layout)),
        ):
            arr = out.get(key)
            if not want:
                out[key] = None
            elif arr is None or arr.shape != (n, dim) or arr.dtype != np.float32:
                got = None if arr is None else (arr.shape, str(arr.dtype))
                raise DataError(
                    f"{self.name}: {key} [{start}, {stop}) read as {got}, "
                    f"expected float32 ({n}, {dim})"
                )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, length={self.length}, "
            f"cameras={self.cameras}, actions={self.has_actions}, proprio={self.has_proprio})"
        )


def data_proprio_layout(sources: Sequence[EpisodeSource]) -> tuple[str, ...] | None:
    """The proprio layout of the episodes that have robot state (None when none has); a
    DataError naming two episodes when they differ (one model takes one layout)."""
    layouts: dict[tuple[str, ...], str] = {}
    for src in sources:
        if src.has_proprio:
            layouts.setdefault(tuple(src.proprio_layout), src.name)
    if len(layouts) > 1:
        (a, na), (b, nb) = list(layouts.items())[:2]
        raise DataError(
            f"episodes differ in their robot state: {na} has proprio {list(a)}, {nb} has "
            f"{list(b)}; one model takes one proprio layout: give every episode the same proprio "
            "topics (--proprio-topic, or --proprio-pose-topic/--proprio-joint-states-topic with "
            "--proprio-joints)"
        )
    return next(iter(layouts), None)


# -- helpers shared by the formats ----------------------------------------------------------
def first_line(text: str) -> str:
    """The first non-empty line, stripped ("" if none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def require_labelled(sources, command: str, why: str) -> None:
    """DataError naming ``command`` when some of ``sources`` carry no actions (``why``: what
    the command needs the actions for)."""
    unlabelled = [s.name for s in sources if not s.has_actions]
    if unlabelled:
        raise DataError(
            f"{command} needs labelled episodes ({why}); {len(unlabelled)} of {len(sources)} "
            f"have none, e.g. {unlabelled[:3]}; pass --data with demonstrations that carry "
            "actions (LIBERO/robomimic HDF5, or rosbag2 with --action-topic), not video"
        )
