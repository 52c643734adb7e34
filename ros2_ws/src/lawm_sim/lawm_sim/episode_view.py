"""Episodes you can look at: one episode (from a dataset, or a closed-loop rollout) on one
timeline, as an MCAP file for Foxglove or a Rerun recording (``.rrd``).

- **MCAP** (``.mcap``, always available: the ``mcap`` package is small): each camera on
  ``/camera/<name>`` as ``foxglove.CompressedImage`` (PNG, lossless), the actions on
  ``/action`` and the robot state on ``/proprio`` as JSON objects with one named field per
  value (plottable), the instruction on ``/instruction`` and, for a rollout, the outcome on
  ``/outcome``; log times at the episode's control rate.
- **Rerun** (``.rrd``, when ``rerun-sdk`` is installed: ``make setup-viewer``; its wheel is
  about 170 MB because it bundles the viewer): ``cameras/<name>`` images, ``action/<name>``
  and ``proprio/<name>`` scalars, the instruction and outcome as text, on the ``step``
  timeline and a ``time`` timeline in seconds.

Both are written beside their path and renamed into place.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lawm_core import contract
from lawm_core.files import atomic_path

VIEW_SUFFIXES = (".mcap", ".rrd")
ACTION_NAMES = contract.ACTION_LAYOUT
START_NS = 1_000_000_000

_IMAGE_SCHEMA = {
    "title": "foxglove.CompressedImage",
    "type": "object",
    "properties": {
        "timestamp": {
            "type": "object",
            "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}},
        },
        "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"},
    },
}


class ViewError(ValueError):
    """The episode cannot be written as asked; the message says why."""


def _fields_schema(title: str, names: Sequence[str], kind: str = "number") -> dict:
    return {"title": title, "type": "object",
            "properties": {n: {"type": kind} for n in names}}  # fmt: skip


def _check(images: Mapping[str, np.ndarray], rate_hz: float, arrays: dict) -> int:
    if not images:
        raise ViewError("an episode needs at least one camera")
    lengths = {len(v) for v in images.values()} | {
        len(v) for v in arrays.values() if v is not None
    }
    if len(lengths) != 1 or 0 in lengths:
        raise ViewError(f"cameras and arrays differ in length: {sorted(lengths)}")
    if not rate_hz > 0:
        raise ViewError(f"rate {rate_hz!r} must be positive")
    return lengths.pop()


def write_episode_view(
    path: str | Path,
    images: Mapping[str, np.ndarray],
    instruction: str,
    rate_hz: float,
    *,
    actions: np.ndarray | None = None,
    proprio: np.ndarray | None = None,
    proprio_names: Sequence[str] | None = None,
    outcome: Mapping[str, Any] | None = None,
    name: str = "episode",
) -> Path:
    """Write one episode to ``path`` (``.mcap`` or ``.rrd``). images: camera -> uint8
    (T, H, W, 3) RGB; actions (T, 7) and proprio (T, P) optional; ``outcome`` (e.g.
    {"success": True, "steps": 131}) for a rollout."""
    path = Path(path)
    if path.suffix not in VIEW_SUFFIXES:
        raise ViewError(f"{path}: the file must end in {' or '.join(VIEW_SUFFIXES)}")
    n = _check(images, rate_hz, {"actions": actions, "proprio": proprio})
    if proprio is not None:
        proprio_names = list(proprio_names or [f"p{i}" for i in range(proprio.shape[1])])
        if len(proprio_names) != proprio.shape[1]:
            raise ViewError(f"{len(proprio_names)} proprio names for {proprio.shape[1]} values")
    stamps = START_NS + np.round(np.arange(n) * 1e9 / rate_hz).astype(np.int64)
    write = _write_mcap if path.suffix == ".mcap" else _write_rrd
    with atomic_path(path) as tmp:
        write(tmp, images, instruction, stamps, actions, proprio, proprio_names, outcome, name)
    return path


def _write_mcap(tmp, images, instruction, stamps, actions, proprio, proprio_names, outcome, _):
    from mcap.writer import Writer

    with open(tmp, "wb") as f:
        w = Writer(f)
        w.start(profile="", library="lawm")

        def channel(topic: str, schema: dict) -> int:
            sid = w.register_schema(schema["title"], "jsonschema", json.dumps(schema).encode())
            return w.register_channel(topic, "json", sid)

        def put(cid: int, t: int, msg: dict) -> None:
            w.add_message(cid, log_time=int(t), publish_time=int(t), data=json.dumps(msg).encode())

        cams = {c: channel(f"/camera/{c}", _IMAGE_SCHEMA) for c in images}
        act = channel("/action", _fields_schema("lawm.Action", ACTION_NAMES)) if (
            actions is not None) else None  # fmt: skip
        pro = channel("/proprio", _fields_schema("lawm.Proprio", proprio_names)) if (
            proprio is not None) else None  # fmt: skip
        text = channel("/instruction", _fields_schema("lawm.Instruction", ["text"], "string"))
        put(text, stamps[0], {"text": instruction})
        for k, t in enumerate(stamps):
            sec, nsec = divmod(int(t), 1_000_000_000)
            for cam, cid in cams.items():
                ok, png = cv2.imencode(".png", cv2.cvtColor(images[cam][k], cv2.COLOR_RGB2BGR))
                if not ok:
                    raise ViewError(f"cannot encode frame {k} of {cam}")
                put(cid, t, {"timestamp": {"sec": sec, "nsec": nsec}, "frame_id": cam,
                             "data": base64.b64encode(png.tobytes()).decode(),
                             "format": "png"})  # fmt: skip
            if act is not None:
                put(act, t, dict(zip(ACTION_NAMES, map(float, actions[k]), strict=True)))
            if pro is not None:
                put(pro, t, dict(zip(proprio_names, map(float, proprio[k]), strict=True)))
        if outcome is not None:
            schema = {"title": "lawm.Outcome", "type": "object"}
            put(channel("/outcome", schema), stamps[-1], dict(outcome))
        w.finish()


def _write_rrd(tmp, images, instruction, stamps, actions, proprio, proprio_names, outcome, name):
    try:
        import rerun as rr
    except ImportError:
        raise ViewError(
            "a .rrd file needs the rerun-sdk package (make setup-viewer, or pip install "
            "rerun-sdk); a .mcap file needs nothing more"
        ) from None
    rec = rr.RecordingStream("lawm", recording_id=name)
    rec.save(str(tmp))
    rec.log("instruction", rr.TextDocument(instruction), static=True)
    for k, t in enumerate(stamps):
        rec.set_time("step", sequence=k)
        rec.set_time("time", duration=float(t - stamps[0]) / 1e9)
        for cam, frames in images.items():
            rec.log(f"cameras/{cam}", rr.Image(frames[k]))
        if actions is not None:
            for i, n in enumerate(ACTION_NAMES):
                rec.log(f"action/{n}", rr.Scalars(float(actions[k, i])))
        if proprio is not None:
            for i, n in enumerate(proprio_names):
                rec.log(f"proprio/{n.replace(':', '_')}", rr.Scalars(float(proprio[k, i])))
    if outcome is not None:
        rec.log("outcome", rr.TextDocument(json.dumps(dict(outcome))), static=True)
    rec.flush()
    rec.disconnect()
