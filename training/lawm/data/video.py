"""Unlabeled video: plain folders of clips and Something-Something v2.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    def one(item: tuple[Path, str]) -> VideoEpisode:
        return VideoEpisode.open(item[0], item[1], backend)

    if len(items) < 8:
        return [one(it) for it in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, items))


# -- plain video folders -----------------------------------------------------------------------
def instruction_for_video(path: Path) -> str:
    """``<stem>.txt`` beside the clip (first non-empty line) or the stem with spaces."""
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        return first_line(sidecar.read_text(errors="replace"))
    return path.stem.replace("_", " ").strip()


def open_video(path: str | Path, backend: str | None = None) -> list[VideoEpisode]:
    """A video file, or every video under a folder (recursively, natural order)."""
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
    return _open_many([(f, instruction_for_video(f)) for f in files], backend)


# -- Something-Something v2 --------------------------------------------------------------------
def _looks_like_ssv2_labels(path: Path) -> bool:
    # Peek only: the real train.json is ~20 MB and detection should stay cheap.
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith("[") and '"id"' in head


def find_ssv2_labels(folder: str | Path) -> list[Path]:
    """Label JSON files for a SSv2 video folder: in it, in its labels/, or in ../labels/."""
    folder = Path(folder)
    places = [folder, folder / "labels", folder.parent / "labels"]
    found = []
    for place in places:
        if place.is_dir():
            found += sorted(p for p in place.glob("*.json") if _looks_like_ssv2_labels(p))
    return found


def ssv2_instruction(entry: dict[str, Any]) -> str:
    """``label`` if present, else ``template`` without its [brackets]."""
    if entry.get("label"):
        return str(entry["label"]).strip()
    if entry.get("template"):
        return re.sub(r"\[([^\]]*)\]", r"\1", str(entry["template"])).strip()
    return ""


def open_ssv2(folder: str | Path, backend: str | None = None) -> list[VideoEpisode]:
    """Every ``<id>.webm`` in ``folder``, its instruction from the labels JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: ssv2 expects a folder of <id>.webm files")
    label_files = find_ssv2_labels(folder)
    if not label_files:
        raise DataError(
            f"{folder}: no Something-Something v2 labels JSON (a list of objects with 'id') in "
            f"the folder, its labels/ or ../labels/"
        )
    labels: dict[str, str] = {}
    for lf in label_files:
        try:
            entries = json.loads(lf.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{lf}: cannot parse labels JSON: {err}") from err
        if not isinstance(entries, list):
            raise DataError(f"{lf}: labels JSON must be a list of objects")
        for entry in entries:
            if isinstance(entry, dict) and "id" in entry:
                labels[str(entry["id"])] = ssv2_instruction(entry)
    with os.scandir(folder) as it:
        files = sorted(
            (
                Path(e.path)
                for e in it
                if e.is_file() and e.name.lower().endswith(".webm") and e.name[0] != "."
            ),
            key=lambda p: natural_key(p.name),
        )
    if not files:
        raise DataError(f"{folder}: empty video folder (no .webm files)")
    return _open_many([(f, labels.get(f.stem, "")) for f in files], backend)
