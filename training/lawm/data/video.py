"""Unlabeled video: plain folders of clips and Something-Something v2 as released.

A clip is one episode with a single camera (reported as ``contract.AGENTVIEW``), no actions and no
robot state. Decoding uses PyAV when installed, else OpenCV. Frame counts are taken at open
time from the container (or, when it does not say, by demuxing packets, which reads the file
but decodes nothing); long clips also keep their frame timestamps so ``read`` can seek to the
nearest keyframe instead of decoding from the start.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lawm.data.base import (
    VIDEO_SUFFIXES,
    DataError,
    EpisodeSource,
    first_line,
    natural_key,
    skip_or_raise,
)
from lawm_core import contract

try:  # PyAV is preferred: exact timestamps and seeking.
    import av

    BACKEND = "av"
except ImportError:  # pragma: no cover - exercised only where PyAV is missing
    av = None
    BACKEND = "cv2"

# Clips longer than this keep a per-frame timestamp index (8 bytes a frame) to seek on read.
SEEK_MIN_FRAMES = 256


def _av_errors() -> tuple[type[BaseException], ...]:
    errs: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, EOFError)
    if av is not None:
        errs = (*errs, av.FFmpegError)
    return errs


# -- probing ------------------------------------------------------------------------------------
def _probe_av(path: str) -> tuple[int, np.ndarray | None]:
    with av.open(path) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if 0 < n <= SEEK_MIN_FRAMES:
            return n, None
        # The container does not say (WebM) or the clip is long: list packet timestamps.
        pts = [p.pts for p in container.demux(stream) if p.size]
    if pts and all(p is not None for p in pts):
        index = np.sort(np.asarray(pts, dtype=np.int64))
        return len(index), (index if len(index) > SEEK_MIN_FRAMES else None)
    # No timestamps (some AVI files): count by decoding.
    with av.open(path) as container:
        n = sum(1 for _ in container.decode(container.streams.video[0]))
    return n, None


def _probe_cv2(path: str) -> tuple[int, None]:
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: OpenCV cannot open the video")
        n = 0
        while cap.grab():  # CAP_PROP_FRAME_COUNT is an estimate for many containers
            n += 1
    finally:
        cap.release()
    return n, None


def probe_video(path: str | Path, backend: str | None = None) -> tuple[int, np.ndarray | None]:
    """(frame count, sorted frame pts or None). Raises DataError for unreadable files."""
    path = str(path)
    backend = backend or BACKEND
    try:
        n, pts = _probe_av(path) if backend == "av" else _probe_cv2(path)
    except DataError:
        raise
    except _av_errors() as err:
        raise DataError(f"{path}: cannot read video (corrupt or truncated?): {err}") from err
    if n == 0:
        raise DataError(f"{path}: zero-length video (no frames)")
    return n, pts


# -- decoding -----------------------------------------------------------------------------------
def _fill_gaps(frames: list[np.ndarray | None], before: np.ndarray | None) -> list[np.ndarray]:
    # Containers can overcount by a frame or two (hidden VP8 alt-ref packets, a truncated last
    # GOP); hold the nearest decoded frame rather than fail a whole training run.
    last = before
    for i, f in enumerate(frames):
        if f is None:
            frames[i] = last
        else:
            last = f
    first = next((f for f in frames if f is not None), None)
    return [first if f is None else f for f in frames]


def _read_av(path: str, start: int, stop: int, pts: np.ndarray | None) -> list[np.ndarray | None]:
    n = stop - start
    out: list[np.ndarray | None] = [None] * n
    before = None
    with av.open(path) as container:
        stream = container.streams.video[0]
        if pts is not None and start > 0:
            wanted = {int(p): i for i, p in enumerate(pts[start:stop])}
            last = int(pts[stop - 1])
            container.seek(int(pts[start]), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    break
                i = wanted.get(int(frame.pts))
                if i is not None:
                    out[i] = frame.to_ndarray(format="rgb24")
                elif frame.pts < pts[start]:
                    before = frame
                if frame.pts >= last:
                    break
            if any(f is not None for f in out):
                held = None if before is None else before.to_ndarray(format="rgb24")
                return _fill_gaps(out, held)
            container.seek(0, stream=stream, backward=True)
        prev = None
        for i, frame in enumerate(container.decode(stream)):
            if i >= stop:
                break
            if i >= start:
                out[i - start] = frame.to_ndarray(format="rgb24")
            prev = frame
    if all(f is None for f in out):
        if prev is None:
            raise DataError(f"{path}: no frame could be decoded")
        before = prev.to_ndarray(format="rgb24")
        return _fill_gaps(out, before)
    return _fill_gaps(out, None)


def _read_cv2(path: str, start: int, stop: int) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = [None] * (stop - start)
    cap = cv2.VideoCapture(path)
    prev = None
    try:
        for i in range(stop):
            ok, bgr = cap.read() if i >= start else (cap.grab(), None)
            if not ok:
                break
            if bgr is not None:
                prev = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                out[i - start] = prev
    finally:
        cap.release()
    if prev is None:
        raise DataError(f"{path}: no frame in [{start}, {stop}) could be decoded")
    return _fill_gaps(out, None)


class VideoEpisode(EpisodeSource):
    """One video clip: frames only, reported as the agentview camera."""

    def __init__(
        self,
        path: str | Path,
        instruction: str,
        length: int,
        pts: np.ndarray | None = None,
        backend: str | None = None,
    ) -> None:
        self.path = str(path)
        self.name = self.path
        self.instruction = instruction
        self.length = int(length)
        self.cameras = (contract.AGENTVIEW,)
        self.has_actions = False
        self.has_proprio = False
        self.success = None
        self._pts = pts
        self._backend = backend or BACKEND

    @classmethod
    def open(cls, path: str | Path, instruction: str, backend: str | None = None) -> VideoEpisode:
        n, pts = probe_video(path, backend)
        return cls(path, instruction, n, pts, backend)

    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"images": {}, "actions": None, "proprio": None}
        if not cameras:
            return out
        try:
            if self._backend == "av":
                frames = _read_av(self.path, start, stop, self._pts)
            else:
                frames = _read_cv2(self.path, start, stop)
            out["images"][contract.AGENTVIEW] = np.stack(frames)
        except DataError:
            raise
        except _av_errors() as err:
            raise DataError(f"{self.name}: decoding frames [{start}, {stop}): {err}") from err
        return out


def _open_many(items: Sequence[tuple[Path, str]], backend: str | None) -> list[VideoEpisode]:
    # Probing is I/O and demuxing inside FFmpeg (GIL released): threads overlap it.
    def one(item: tuple[Path, str]) -> VideoEpisode | Exception:
        try:
            return VideoEpisode.open(item[0], item[1], backend)
        except (DataError, OSError) as err:
            return err

    if len(items) < 8:
        found = [one(it) for it in items]
    else:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = list(pool.map(one, items))
    out = []
    for item, episode in zip(items, found):
        if isinstance(episode, Exception):
            skip_or_raise(episode, str(item[0]))
        else:
            out.append(episode)
    return out


# -- plain video folders -----------------------------------------------------------------------
def instruction_for_video(path: Path) -> str:
    """``<stem>.txt`` beside the clip (first non-empty line) or the stem with spaces; "" for a
    stem that is only a number (a dataset id such as SSv2's ``101.webm``, not an instruction)."""
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        return first_line(sidecar.read_text(errors="replace"))
    if path.stem.isdigit():
        return ""
    return path.stem.replace("_", " ").strip()


def open_video(path: str | Path, backend: str | None = None) -> list[VideoEpisode]:
    """A video file, or every video under a folder (recursively, natural order).

    Clips named by a number have no instruction; when that is every clip of a folder (the
    Something-Something v2 videos without their labels) a warning says so.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise DataError(f"{path}: not a video file (expected {', '.join(VIDEO_SUFFIXES)})")
        files = [path]
    else:
        files = sorted(
            (
                p
                for p in path.rglob("*")
                if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and p.name[0] != "."
            ),
            key=lambda p: natural_key(str(p.relative_to(path))),
        )
        if not files:
            raise DataError(
                f"{path}: empty video folder (no {'/'.join(s[1:] for s in VIDEO_SUFFIXES)} files)"
            )
    items = [(f, instruction_for_video(f)) for f in files]
    numeric = [f for f, text in items if not text and f.stem.isdigit()]
    if len(numeric) == len(items):
        warnings.warn(
            f"{path}: every clip is named by a number (e.g. {numeric[0].name}), so none has "
            "an instruction; for Something-Something v2 put its labels (train.json, "
            "validation.json) next to or above the folder, or give each clip a <stem>.txt",
            stacklevel=2,
        )
    return _open_many(items, backend)


# -- Something-Something v2 --------------------------------------------------------------------
SSV2_SPLITS = ("train", "validation", "test")
_SSV2_ALIASES = {"valid": "validation", "val": "validation"}
# The release's labels archive names them <split>.json; the original 20BN one
# something-something-v2-<split>.json.
_SSV2_PREFIXES = ("", "something-something-v2-")


@dataclass(frozen=True)
class Ssv2Options:
    """How a Something-Something v2 folder is opened.

    split: "train" (default), "validation" (also "valid") or "test": only the clips listed in
        that split's labels file are used (test clips have no label, so no instruction).
    """

    split: str = "train"

    def __post_init__(self) -> None:
        split = _SSV2_ALIASES.get(self.split, self.split)
        if split not in SSV2_SPLITS:
            raise DataError(
                f"Something-Something v2 split {self.split!r}: expected one of "
                f"{', '.join(SSV2_SPLITS)}"
            )
        object.__setattr__(self, "split", split)


def _looks_like_ssv2_labels(path: Path) -> bool:
    # Peek only: the real train.json is ~20 MB and detection should stay cheap.
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith("[") and '"id"' in head


def ssv2_label_places(folder: str | Path) -> list[Path]:
    """Where a video folder's labels may be, nearest first: the folder, its labels/, then its
    parent and grandparent and their labels/ (the release unpacks the videos into
    ``20bn-something-something-v2/`` and the labels into ``labels/`` beside it)."""
    folder = Path(folder).resolve()
    places = []
    for base in (folder, folder.parent, folder.parent.parent):
        places += [base, base / "labels"]
    return list(dict.fromkeys(places))


def find_ssv2_labels(folder: str | Path) -> dict[str, Path]:
    """{split: labels file} from the nearest place holding any split's file; {} if none."""
    for place in ssv2_label_places(folder):
        if not place.is_dir():
            continue
        found = {}
        for split in SSV2_SPLITS:
            for prefix in _SSV2_PREFIXES:
                candidate = place / f"{prefix}{split}.json"
                if candidate.is_file() and _looks_like_ssv2_labels(candidate):
                    found[split] = candidate
                    break
        if found:
            return found
    return {}


def ssv2_instruction(entry: dict[str, Any]) -> str:
    """``label`` if present, else ``template`` without its [brackets]."""
    if entry.get("label"):
        return str(entry["label"]).strip()
    if entry.get("template"):
        return re.sub(r"\[([^\]]*)\]", r"\1", str(entry["template"])).strip()
    return ""


def _read_split(path: Path) -> dict[str, str]:
    """{clip id: instruction} of one labels file, in its order."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot parse labels JSON: {err}") from err
    if not isinstance(entries, list):
        raise DataError(f"{path}: labels JSON must be a list of objects with 'id'")
    return {
        str(e["id"]): ssv2_instruction(e) for e in entries if isinstance(e, dict) and "id" in e
    }


def open_ssv2(
    folder: str | Path, backend: str | None = None, options: Ssv2Options | None = None
) -> list[VideoEpisode]:
    """The ``<id>.webm`` clips of ``folder`` listed in the requested split's labels file, each
    with its instruction; clips of other splits are left out."""
    options = options or Ssv2Options()
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: ssv2 expects a folder of <id>.webm files")
    label_files = find_ssv2_labels(folder)
    if not label_files:
        places = ", ".join(str(p) for p in ssv2_label_places(folder))
        raise DataError(
            f"{folder}: no Something-Something v2 labels JSON (train.json, validation.json, "
            f"test.json: lists of objects with 'id') in {places}"
        )
    split_file = label_files.get(options.split)
    if split_file is None:
        place = next(iter(label_files.values())).parent
        raise DataError(
            f"{folder}: no {options.split}.json in {place} (it has "
            f"{', '.join(p.name for p in label_files.values())}); pass --split with one of "
            f"{', '.join(label_files)}"
        )
    labels = _read_split(split_file)
    with os.scandir(folder) as it:
        files = sorted(
            (
                Path(e.path)
                for e in it
                if e.name[0] != "."
                and e.name.lower().endswith(".webm")
                and e.name[:-5] in labels
                and e.is_file()
            ),
            key=lambda p: natural_key(p.name),
        )
    if not files:
        raise DataError(
            f"{folder}: none of the {len(labels)} clips of {split_file} is in the folder "
            "(no matching <id>.webm)"
        )
    if not any(labels[f.stem] for f in files):
        warnings.warn(
            f"{split_file}: no clip has a label or template, so the clips have no "
            "instruction (the test split is released without labels)",
            stacklevel=2,
        )
    return _open_many([(f, labels[f.stem]) for f in files], backend)
