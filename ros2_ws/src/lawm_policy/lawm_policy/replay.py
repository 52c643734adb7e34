"""Rosbag replay evaluation, the ROS-free part: read a bag, align it, score predictions.

Used by ``lawm_policy.replay_eval`` (the CLI/node). Needs ``rosbags`` (pure-Python rosbag2
reader, sqlite3 and mcap) and numpy; matplotlib only for the plot (imported when drawing);
onnxruntime only for ``run_offline``. No rclpy, no torch.

Bag layout (the same as ``lawm.data.rosbag`` reads for training):

- cameras: ``sensor_msgs/Image`` topics, one per model camera (``camera -> topic``). The first
  camera is the **frame clock**: every message on its topic is one frame, at its header stamp
  (the log time where the stamp is zero).
- recorded action: ``std_msgs/Float32MultiArray`` / ``Float64MultiArray`` with 7 values
  (dx, dy, dz, droll, dpitch, dyaw, gripper), or ``geometry_msgs/TwistStamped`` (the first six;
  the gripper from an optional ``std_msgs/Float64`` topic, else not scored).
- proprio (optional): ``Float32MultiArray`` / ``Float64MultiArray`` with 5 values.
- instruction (optional): the first non-empty ``std_msgs/String`` on an ``*instruction*`` topic.

Alignment: every other topic contributes, for each frame, its latest message stamped at or
before the frame time (header stamps where the message has one, else the log time), as in
training. A camera message that is not on the frame clock belongs (for live matching) to the
frame whose time is nearest its own stamp.

Bad input (missing or unreadable bag, missing topics, empty bag, wrong types or sizes, an
unusable model directory) raises ``ReplayError`` with a message that says what and why, and
for missing topics lists the topics the bag has.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ACTION_LAYOUT: tuple[str, ...] = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ACTION_DIM = len(ACTION_LAYOUT)
PROPRIO_DIM = 5
GRIPPER = ACTION_LAYOUT.index("gripper")

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
ARRAY_TYPES = ("std_msgs/msg/Float32MultiArray", "std_msgs/msg/Float64MultiArray")
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
ACTION_TYPES = (*ARRAY_TYPES, TWIST_STAMPED)
FLOAT_TYPES = ("std_msgs/msg/Float64", "std_msgs/msg/Float32")
STRING = "std_msgs/msg/String"
_HEADER_TYPES = (IMAGE, COMPRESSED_IMAGE, TWIST_STAMPED)
BAG_SUFFIXES = (".mcap", ".db3")
AUTO = "auto"
NONE_VALUES = ("", "none")

REPORT_FILE = "report.json"
PLOT_FILE = "actions.png"
PREDICTIONS_FILE = "predictions.csv"


class ReplayError(Exception):
    """Input that cannot be evaluated (``exit_code`` 2), or a graph that never answered
    (``exit_code`` 1). The message is meant for the operator, as is."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------ arguments
def parse_image_topics(items: Iterable[str] | None) -> dict[str, str] | None:
    """``["agentview=/cam/a", "eye_in_hand=/cam/b"]`` (or one comma-separated item) ->
    ``{camera: topic}`` in the given order; None (auto) when nothing or only "" is given."""
    mapping: dict[str, str] = {}
    for item in items or ():
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            camera, sep, topic = part.partition("=")
            camera, topic = camera.strip(), topic.strip()
            if not sep or not camera or not topic:
                raise ReplayError(f"--image-topic {part!r}: expected CAMERA=TOPIC")
            if camera in mapping:
                raise ReplayError(f"--image-topic: camera {camera!r} given twice")
            mapping[camera] = topic if topic.startswith("/") else "/" + topic
    return mapping or None


def optional_topic(value: str | None) -> str | None:
    """CLI topic value: None or "auto" -> "auto"; "" or "none" -> None; else the topic."""
    if value is None or value.strip().lower() == AUTO:
        return AUTO
    if value.strip().lower() in NONE_VALUES:
        return None
    value = value.strip()
    return value if value.startswith("/") else "/" + value


# ------------------------------------------------------------------------------ bag access
def typestore():
    """rosbags' ROS 2 Jazzy type store (its type hashes match rclpy's)."""
    from rosbags.typesys import Stores, get_typestore

    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE


_TYPESTORE = None


def header_stamp(raw: bytes | memoryview, msgtype: str, logtime: int) -> int:
    """Header stamp (ns) parsed straight from a CDR message whose first field is a Header;
    the log time for other types or a zero stamp."""
    if msgtype in _HEADER_TYPES and len(raw) >= 12:
        fmt = "<iI" if raw[1] & 1 else ">iI"  # CDR encapsulation: odd = little endian
        sec, nanosec = struct.unpack_from(fmt, raw, 4)
        stamp = sec * 1_000_000_000 + nanosec
        if stamp > 0:
            return stamp
    return logtime


def restamp(raw: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a CDR message with a Header first (Image, TwistStamped, ...) whose
    ``header.stamp`` is ``stamp_ns``; the payload is untouched (no deserialisation)."""
    out = bytearray(raw)
    if len(out) < 12:
        raise ReplayError(f"message of {len(out)} bytes is too short to carry a header")
    fmt = "<iI" if out[1] & 1 else ">iI"
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    struct.pack_into(fmt, out, 4, sec, nanosec)
    return bytes(out)


def _bag_error(path: Path, err: BaseException) -> ReplayError:
    return ReplayError(
        f"{path}: cannot read rosbag2 (corrupt or truncated?): {type(err).__name__}: {err}"
    )


def _open_reader(path: Path):
    from rosbags.rosbag2 import Reader

    reader = Reader(path)
    reader.open()
    return reader


def resolve_bag_path(path: str | Path) -> Path:
    """Check that ``path`` looks like a rosbag2 (folder with metadata.yaml, .mcap or .db3)."""
    p = Path(path).expanduser()
    if p.name == "metadata.yaml":
        p = p.parent
    if not p.exists():
        raise ReplayError(f"{p}: no such bag (expected a rosbag2 folder or a .mcap/.db3 file)")
    if p.is_dir():
        if not (p / "metadata.yaml").is_file():
            inside = sorted(q.name for q in p.iterdir())[:10]
            raise ReplayError(
                f"{p}: not a rosbag2 folder (no metadata.yaml; it holds {inside or 'nothing'})"
            )
    elif p.suffix.lower() not in BAG_SUFFIXES:
        raise ReplayError(f"{p}: not a rosbag2 file (expected a .mcap or .db3 file, or a folder)")
    return p.resolve()


@dataclass
class Selection:
    """Which bag topics play which role."""

    images: dict[str, str]  # camera -> topic; the first camera is the frame clock
    action: str
    action_type: str
    proprio: str | None = None
    gripper: str | None = None
    instruction: str | None = None

    @property
    def clock(self) -> str:
        return next(iter(self.images.values()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": dict(self.images),
            "frame_clock": self.clock,
            "action": self.action,
            "action_type": self.action_type,
            "proprio": self.proprio,
            "gripper": self.gripper,
            "instruction": self.instruction,
        }


@dataclass
class BagIndex:
    """One scan of a bag: frames, recorded actions and proprio aligned to them, and for each
    camera message (in bag order, per topic) its stamp and the frame it belongs to."""

    path: Path
    storage: str
    topics: dict[str, str]  # every topic in the bag -> type
    counts: dict[str, int]  # messages per topic
    selection: Selection
    frame_stamps: np.ndarray  # int64 ns (N,), frame clock header stamps, bag order
    frame_logtimes: np.ndarray  # int64 ns (N,)
    recorded: np.ndarray  # float64 (N, 7); NaN where nothing was recorded yet / not recorded
    proprio: np.ndarray | None  # float32 (N, 5), NaN rows before the first proprio message
    image_stamps: dict[str, np.ndarray]  # topic -> int64 (M,) header stamps, bag order
    image_frame: dict[str, np.ndarray]  # topic -> int64 (M,) frame index of each message
    frame_images: dict[str, np.ndarray]  # camera -> int64 (N,) message used per frame, -1 none
    instruction: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frame_stamps.size)

    @property
    def frame_times_s(self) -> np.ndarray:
        return (self.frame_stamps - self.frame_stamps[0]) * 1e-9

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, raw CDR) of ``topics`` in bag order; a read failure raises
        ReplayError."""
        wanted = set(topics)
        reader = None
        try:
            reader = _open_reader(self.path)
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn, logtime, raw in reader.messages(connections=conns):
                yield conn.topic, int(logtime), raw
        except ReplayError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged bag fails anywhere in its parser
            raise _bag_error(self.path, err) from err
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception:  # noqa: BLE001 - closing a damaged bag may fail too
                    pass

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "storage": self.storage,
            "topics": dict(sorted(self.topics.items())),
            "message_counts": dict(sorted(self.counts.items())),
            "frames": self.n_frames,
            "duration_s": round(float(self.frame_times_s[-1]), 6),
        }


def _storage_of(path: Path) -> str:
    if path.is_dir():
        files = [q.suffix.lower() for q in path.iterdir()]
        return "mcap" if ".mcap" in files else "sqlite3" if ".db3" in files else "unknown"
    return "mcap" if path.suffix.lower() == ".mcap" else "sqlite3"


def _listing(types: Mapping[str, str]) -> str:
    return ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "no topics at all"


def _guess_cameras(types: Mapping[str, str], listing: str, path: Path) -> dict[str, str]:
    """One Image topic -> agentview; two with one named like a wrist camera -> agentview +
    eye_in_hand (the rule ``lawm.data.rosbag`` uses)."""
    images = sorted(t for t, m in types.items() if m == IMAGE)
    if len(images) == 1:
        return {"agentview": images[0]}
    if len(images) == 2:
        wrist = [t for t in images if any(w in t.lower() for w in ("wrist", "hand", "eye"))]
        if len(wrist) == 1:
            other = next(t for t in images if t != wrist[0])
            return {"agentview": other, "eye_in_hand": wrist[0]}
    raise ReplayError(
        f"{path}: cannot tell which image topics are which cameras ({len(images)} "
        "sensor_msgs/Image topics); pass --image-topic CAMERA=TOPIC for each camera; the bag "
        f"has: {listing}"
    )


def _pick_named(types: Mapping[str, str], word: str, allowed: Sequence[str]) -> list[str]:
    return sorted(t for t, m in types.items() if word in t.lower() and m in allowed)


def _latest_at_or_before(stamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each time, the index (into ``stamps``' own order) of the latest message stamped at
    or before it; -1 where none."""
    if stamps.size == 0:
        return np.full(times.shape, -1, np.int64)
    order = np.argsort(stamps, kind="stable")
    idx = np.searchsorted(stamps[order], times, side="right") - 1
    return np.where(idx >= 0, order[np.maximum(idx, 0)], -1).astype(np.int64)


def _nearest(sorted_times: np.ndarray, order: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index (into the unsorted array that ``order`` sorts) of the nearest time per value."""
    pos = np.clip(np.searchsorted(sorted_times, values), 1, max(1, sorted_times.size - 1))
    if sorted_times.size == 1:
        return np.zeros(values.shape, np.int64)
    left, right = sorted_times[pos - 1], sorted_times[pos]
    pick = np.where(values - left <= right - values, pos - 1, pos)
    return order[pick].astype(np.int64)


def open_bag(
    path: str | Path,
    image_topics: Mapping[str, str] | None = None,
    action_topic: str | None = AUTO,
    proprio_topic: str | None = AUTO,
    gripper_topic: str | None = None,
    instruction_topic: str | None = AUTO,
    cameras: Sequence[str] | None = None,
) -> BagIndex:
    """Scan a bag once and return its ``BagIndex``.

    Args:
        path: bag folder (with metadata.yaml) or a bare ``.mcap`` / ``.db3`` file.
        image_topics: camera -> Image topic (the first camera is the frame clock); None: guess
            (one Image topic -> agentview; two, one named like a wrist camera -> eye_in_hand).
        action_topic: the recorded action; "auto": the one action-typed topic named
            ``*action*``.
        proprio_topic: "auto": the one array topic named ``*proprio*`` if any; None: none.
        gripper_topic: gripper (Float64) for a TwistStamped action topic; None: not scored.
        instruction_topic: "auto": the one String topic named ``*instruction*`` if any.
        cameras: the model's cameras, if known: the mapping must name exactly these.
    """
    path = resolve_bag_path(path)
    try:
        reader = _open_reader(path)
    except Exception as err:  # noqa: BLE001 - see BagIndex.messages
        raise _bag_error(path, err) from err
    try:
        return _scan(
            reader,
            path,
            image_topics,
            action_topic,
            proprio_topic,
            gripper_topic,
            instruction_topic,
            cameras,
        )
    except ReplayError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _bag_error(path, err) from err
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001
            pass


def _scan(
    reader: Any,
    path: Path,
    image_topics: Mapping[str, str] | None,
    action_topic: str | None,
    proprio_topic: str | None,
    gripper_topic: str | None,
    instruction_topic: str | None,
    cameras: Sequence[str] | None,
) -> BagIndex:
    types = {t: (info.msgtype or "?") for t, info in reader.topics.items()}
    listing = _listing(types)
    if not types:
        raise ReplayError(f"{path}: the bag is empty (no topics, no messages)")

    images = dict(image_topics) if image_topics else _guess_cameras(types, listing, path)
    if cameras is not None and set(images) != set(cameras):
        raise ReplayError(
            f"the model's cameras are {list(cameras)} but the image topics are given for "
            f"{list(images)}; pass --image-topic CAMERA=TOPIC for each model camera"
        )
    if action_topic == AUTO:
        hits = _pick_named(types, "action", ACTION_TYPES)
        if len(hits) != 1:
            raise ReplayError(
                f"{path}: {'several' if hits else 'no'} recorded action topics "
                f"({hits or 'none named *action*'}); pass --action-topic; the bag has: {listing}"
            )
        action_topic = hits[0]
    if action_topic is None:
        raise ReplayError("a recorded action topic is needed (--action-topic)")
    if proprio_topic == AUTO:
        hits = _pick_named(types, "proprio", ARRAY_TYPES)
        proprio_topic = hits[0] if len(hits) == 1 else None
    if instruction_topic == AUTO:
        hits = _pick_named(types, "instruction", (STRING,))
        instruction_topic = hits[0] if len(hits) == 1 else None

    wanted: dict[str, tuple[str, ...]] = {t: (IMAGE,) for t in images.values()}
    for topic, allowed in (
        (action_topic, ACTION_TYPES),
        (proprio_topic, ARRAY_TYPES),
        (gripper_topic, FLOAT_TYPES),
        (instruction_topic, (STRING,)),
    ):
        if topic is not None:
            wanted[topic] = allowed
    missing = [t for t in wanted if t not in types]
    if missing:
        raise ReplayError(f"{path}: missing topics {missing}; the bag has: {listing}")
    for topic, allowed in wanted.items():
        if types[topic] not in allowed:
            hint = (
                " (the policy node takes raw images)" if types[topic] == COMPRESSED_IMAGE else ""
            )
            raise ReplayError(
                f"{path}: topic {topic} has type {types[topic]}, expected "
                f"{' or '.join(allowed)}{hint}"
            )
    sel = Selection(
        images=images,
        action=action_topic,
        action_type=types[action_topic],
        proprio=proprio_topic,
        gripper=gripper_topic,
        instruction=instruction_topic,
    )

    ts = typestore()
    stamps: dict[str, list[int]] = {t: [] for t in wanted}
    logtimes: dict[str, list[int]] = {t: [] for t in wanted}
    values: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    text = None
    conns = [c for c in reader.connections if c.topic in wanted]
    for conn, logtime, raw in reader.messages(connections=conns):
        topic, msgtype = conn.topic, conn.msgtype
        if topic == instruction_topic:
            if text is None:
                text = ts.deserialize_cdr(raw, msgtype).data.strip() or None
            continue
        stamps[topic].append(header_stamp(raw, msgtype, logtime))
        logtimes[topic].append(int(logtime))
        if msgtype == IMAGE:
            continue
        msg = ts.deserialize_cdr(raw, msgtype)
        if msgtype in ARRAY_TYPES:
            values[topic].append(np.asarray(msg.data, np.float64).ravel())
        elif msgtype == TWIST_STAMPED:
            t = msg.twist
            values[topic].append(
                np.array(
                    [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
                )
            )
        else:
            values[topic].append(np.array([float(msg.data)]))

    counts = {t: int(getattr(info, "msgcount", 0) or 0) for t, info in reader.topics.items()}
    for t in wanted:
        counts[t] = len(stamps[t]) if t != instruction_topic else counts.get(t, 0)
    clock = sel.clock
    if not stamps[clock]:
        empty = [t for t in images.values() if not stamps[t]]
        raise ReplayError(
            f"{path}: no messages on the camera topic(s) {empty} (empty bag?); message counts: "
            + ", ".join(f"{t}: {counts.get(t, 0)}" for t in sorted(types))
        )
    for cam, topic in images.items():
        if not stamps[topic]:
            raise ReplayError(f"{path}: camera {cam} topic {topic} has no messages")
    if not stamps[action_topic]:
        raise ReplayError(f"{path}: the recorded action topic {action_topic} has no messages")

    frame_stamps = np.asarray(stamps[clock], np.int64)
    frame_logtimes = np.asarray(logtimes[clock], np.int64)
    n = frame_stamps.size

    def aligned(topic: str, dim: int, what: str) -> np.ndarray:
        rows = values[topic]
        bad = sorted({len(r) for r in rows if len(r) != dim})
        if bad:
            raise ReplayError(
                f"{path}: {what} topic {topic} has messages with {bad} values, expected {dim}"
            )
        mat = np.asarray(rows, np.float64).reshape(len(rows), dim)
        idx = _latest_at_or_before(np.asarray(stamps[topic], np.int64), frame_stamps)
        out = np.full((n, dim), np.nan)
        out[idx >= 0] = mat[idx[idx >= 0]]
        return out

    if sel.action_type == TWIST_STAMPED:
        recorded = np.full((n, ACTION_DIM), np.nan)
        recorded[:, :6] = aligned(action_topic, 6, "action")
        if gripper_topic is not None:
            recorded[:, GRIPPER] = aligned(gripper_topic, 1, "gripper")[:, 0]
    else:
        recorded = aligned(action_topic, ACTION_DIM, "action")
    proprio = None
    if proprio_topic is not None:
        if not stamps[proprio_topic]:
            raise ReplayError(f"{path}: the proprio topic {proprio_topic} has no messages")
        proprio = aligned(proprio_topic, PROPRIO_DIM, "proprio").astype(np.float32)

    order = np.argsort(frame_stamps, kind="stable")
    sorted_frames = frame_stamps[order]
    image_stamps, image_frame, frame_images = {}, {}, {}
    for cam, topic in images.items():
        s = np.asarray(stamps[topic], np.int64)
        image_stamps[topic] = s
        if topic == clock:
            image_frame[topic] = np.arange(n, dtype=np.int64)
            frame_images[cam] = np.arange(n, dtype=np.int64)
        else:
            image_frame[topic] = _nearest(sorted_frames, order, s)
            frame_images[cam] = _latest_at_or_before(s, frame_stamps)
    return BagIndex(
        path=path,
        storage=_storage_of(path),
        topics=types,
        counts=counts,
        selection=sel,
        frame_stamps=frame_stamps,
        frame_logtimes=frame_logtimes,
        recorded=recorded,
        proprio=proprio,
        image_stamps=image_stamps,
        image_frame=image_frame,
        frame_images=frame_images,
        instruction=text,
    )


# ------------------------------------------------------------------------------ evaluation
@dataclass
class Evaluation:
    """Per-frame outcome of a replay (live or offline)."""

    mode: str
    predicted: np.ndarray  # float64 (N, 7), NaN rows for frames without an answer
    latency_ms: np.ndarray  # float64 (N,), NaN for frames without an answer
    answered: np.ndarray  # bool (N,)
    published: int  # frames sent to the policy (live) / processed (offline)
    latency_what: str
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def run_offline(
    index: BagIndex,
    model_dir: str | Path,
    instruction: str | None,
    providers: str = "auto",
    threads: int = 0,
) -> Evaluation:
    """The policy node's per-tick computation, once per frame, without ROS.

    For each frame: decode and fit every camera's image (latest at or before the frame),
    ``PolicyModel.predict`` with the aligned proprio (the training mean without a proprio
    topic) and the instruction's embedding, ``TemporalAggregator.step``, ``denormalize``.
    A frame with a missing or malformed input is skipped and the aggregation restarts, as the
    node does on stale input. Latency is the time of those steps (the inference time).
    """
    from lawm_core.aggregation import TemporalAggregator
    from lawm_core.errors import InputError, ModelLoadError
    from lawm_core.model import PolicyModel
    from lawm_core.preprocess import fit_image, image_from_msg_fields

    try:
        model = PolicyModel(model_dir, providers=providers, threads=threads)
    except ModelLoadError as err:
        raise ReplayError(f"cannot load the model: {err}") from err
    if model.action_dim != ACTION_DIM:
        raise ReplayError(f"{model_dir}: the model's action_dim is {model.action_dim}, not 7")
    sel = index.selection
    if set(sel.images) != set(model.cameras):
        raise ReplayError(
            f"the model's cameras are {list(model.cameras)} but the image topics are given "
            f"for {list(sel.images)}; pass --image-topic CAMERA=TOPIC for each model camera"
        )
    if not instruction:
        raise ReplayError(
            "no instruction: pass --instruction TEXT (the bag has no instruction topic)"
        )
    if not (Path(model_dir) / "text_encoder.json").is_file():
        raise ReplayError(
            f"{model_dir}: no text encoder (text_encoder.json) to embed the instruction; "
            "export the model with its text encoder"
        )
    from lawm_core.text_encoder import TextEncoderRuntime

    try:
        lang = TextEncoderRuntime(Path(model_dir)).embed(instruction).astype(np.float32)
    except ModelLoadError as err:
        raise ReplayError(f"cannot load the text encoder: {err}") from err
    except ValueError as err:
        raise ReplayError(f"instruction {instruction!r} refused: {err}") from err
    model.warmup()

    n = index.n_frames
    mean = np.asarray(model.sidecar["normalization"]["proprio_mean"], np.float32)
    aggregator = TemporalAggregator(model.chunk_size, model.action_dim)
    predicted = np.full((n, ACTION_DIM), np.nan)
    latency = np.full(n, np.nan)
    answered = np.zeros(n, bool)
    warnings: list[str] = []

    # Which camera message each frame needs, and the last frame that needs it (to evict).
    topic_cam = {t: c for c, t in sel.images.items()}
    needs = {c: index.frame_images[c] for c in sel.images}
    last_use: dict[str, dict[int, int]] = {}
    for cam, idx in needs.items():
        last_use[cam] = {}
        for frame, k in enumerate(idx.tolist()):
            if k >= 0:
                last_use[cam][k] = frame
    cache: dict[str, dict[int, np.ndarray | InputError]] = {c: {} for c in sel.images}
    seen = dict.fromkeys(sel.images, 0)
    ts = typestore()
    next_frame = 0

    def ready(frame: int) -> bool:
        return all(needs[c][frame] < seen[c] for c in sel.images)

    def process(frame: int) -> None:
        t0 = time.perf_counter()
        images = {}
        problem = None
        for cam in model.cameras:
            k = int(needs[cam][frame])
            got = cache[cam].get(k) if k >= 0 else None
            if got is None:
                problem = f"no {cam} image yet"
            elif isinstance(got, InputError):
                problem = f"{cam}: {got}"
            else:
                images[cam] = got
        proprio = mean
        if index.proprio is not None:
            proprio = index.proprio[frame]
            if not np.all(np.isfinite(proprio)):
                problem = problem or "no proprio yet"
        if problem is None:
            try:
                chunk = model.predict(images, proprio, lang)
                action = aggregator.step(chunk)
                predicted[frame] = model.denormalize(action)
                latency[frame] = (time.perf_counter() - t0) * 1e3
                answered[frame] = True
            except InputError as err:
                problem = str(err)
        if problem is not None:
            aggregator.reset()
            if len(warnings) < 20:
                warnings.append(f"frame {frame} skipped: {problem}")
        for cam in sel.images:  # forget images no later frame needs
            for k in [k for k in cache[cam] if last_use[cam].get(k, -1) <= frame]:
                del cache[cam][k]

    for topic, _logtime, raw in index.messages(sel.images.values()):
        cam = topic_cam[topic]
        k = seen[cam]
        seen[cam] += 1
        if k in last_use[cam]:
            try:
                msg = ts.deserialize_cdr(raw, IMAGE)
                rgb = image_from_msg_fields(
                    msg.data, msg.encoding, msg.height, msg.width, msg.step
                )
                cache[cam][k] = fit_image(rgb, model.image_size)
            except InputError as err:
                cache[cam][k] = err
        while next_frame < n and ready(next_frame):
            process(next_frame)
            next_frame += 1
    while next_frame < n:  # a bag that changed since the scan
        process(next_frame)
        next_frame += 1
    if not answered.any():
        raise ReplayError(
            f"{index.path}: no frame could be evaluated ({warnings[0] if warnings else '?'})"
        )
    return Evaluation(
        mode="offline",
        predicted=predicted,
        latency_ms=latency,
        answered=answered,
        published=n,
        latency_what="inference time per frame (preprocess + predict + aggregate + denormalize)",
        extra={
            "model": {
                "dir": str(Path(model_dir).resolve()),
                "onnx_sha256": model.sidecar["onnx_sha256"],
                "provider": model.provider,
                "image_size": model.image_size,
                "chunk_size": model.chunk_size,
                "cameras": list(model.cameras),
            }
        },
        warnings=warnings,
    )


@dataclass
class LiveOutputs:
    """What a live replay saw. Times are ns on the system clock (ROS time, no sim time).

    ``image_stamps``: restamped header stamp -> (topic, k-th message on that topic).
    ``twists``: (header stamp, source timestamp, receipt time) per ``cmd_twist`` message.
    ``actions``: (source timestamp, receipt time, values) per ``action`` message.
    """

    image_stamps: dict[int, tuple[str, int]]
    twists: list[tuple[int, int, int]]
    actions: list[tuple[int, int, Sequence[float]]]
    published_frames: int


def match_live_outputs(index: BagIndex, outputs: LiveOutputs) -> Evaluation:
    """Match the policy's outputs to the frames they came from.

    A twist whose header stamp is a stamp we gave an image answers that image's frame (the
    policy stamps its command with the newest image it used); the first such twist per frame
    counts, its latency is receipt - stamp. Its raw action is the ``~/action`` the node
    published in the same tick, just before the twist: in source-time order, the action seen
    since the previous twist. Zero twists of a stale policy carry the current time, match no
    image, and close no action.
    """
    n = index.n_frames
    predicted = np.full((n, ACTION_DIM), np.nan)
    latency = np.full(n, np.nan)
    answered = np.zeros(n, bool)
    has_source = all(t[1] > 0 for t in outputs.twists) and all(a[0] > 0 for a in outputs.actions)
    # Events in publication order: (time, kind, seq) with actions before a twist at a tie.
    events: list[tuple[int, int, int]] = []
    for i, a in enumerate(outputs.actions):
        events.append((a[0] if has_source else a[1], 0, i))
    for i, t in enumerate(outputs.twists):
        events.append((t[1] if has_source else t[2], 1, i))
    events.sort()
    pending: int | None = None
    repeats = 0
    unmatched = 0
    for _, kind, i in events:
        if kind == 0:
            pending = i
            continue
        stamp, _source, received = outputs.twists[i]
        action, pending = pending, None
        where = outputs.image_stamps.get(stamp)
        if where is None:
            unmatched += 1
            continue
        topic, k = where
        frame = int(index.image_frame[topic][k])
        if answered[frame]:
            repeats += 1
            continue
        answered[frame] = True
        latency[frame] = (received - stamp) * 1e-6
        if action is not None:
            values = np.asarray(outputs.actions[action][2], np.float64)
            if values.shape == (ACTION_DIM,):
                predicted[frame] = values
    return Evaluation(
        mode="live",
        predicted=predicted,
        latency_ms=latency,
        answered=answered,
        published=outputs.published_frames,
        latency_what="restamped image header stamp -> cmd_twist receipt (includes waiting "
        "for the policy's next control tick)",
        extra={
            "outputs": {
                "twists": len(outputs.twists),
                "actions": len(outputs.actions),
                "twists_for_an_already_answered_frame": repeats,
                "twists_matching_no_frame": unmatched,
                "paired_by": "source timestamp" if has_source else "receipt order",
            }
        },
    )


# ------------------------------------------------------------------------------ metrics
def finite_or_none(x: float | np.floating | None) -> float | None:
    """A float for JSON: None for None, NaN or infinity."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def compute_metrics(predicted: np.ndarray, recorded: np.ndarray) -> dict[str, Any]:
    """Per action dimension: MAE, RMSE, Pearson r and n over the frames where both are finite
    (Pearson is null with fewer than 2 frames or a constant series); the mean MAE/RMSE over
    the dimensions; gripper sign agreement (closed = value > 0) over the scored frames."""
    pred = np.asarray(predicted, np.float64)
    rec = np.asarray(recorded, np.float64)
    per_dim: dict[str, dict[str, Any]] = {}
    for d, name in enumerate(ACTION_LAYOUT):
        ok = np.isfinite(pred[:, d]) & np.isfinite(rec[:, d])
        p, r = pred[ok, d], rec[ok, d]
        entry: dict[str, Any] = {"n": int(ok.sum()), "mae": None, "rmse": None, "pearson": None}
        if ok.any():
            err = p - r
            entry["mae"] = finite_or_none(np.mean(np.abs(err)))
            entry["rmse"] = finite_or_none(np.sqrt(np.mean(err**2)))
            if ok.sum() >= 2 and np.std(p) > 0 and np.std(r) > 0:
                entry["pearson"] = finite_or_none(np.corrcoef(p, r)[0, 1])
        per_dim[name] = entry
    maes = [e["mae"] for e in per_dim.values() if e["mae"] is not None]
    rmses = [e["rmse"] for e in per_dim.values() if e["rmse"] is not None]
    ok = np.isfinite(pred[:, GRIPPER]) & np.isfinite(rec[:, GRIPPER])
    agree = None
    if ok.any():
        agree = float(np.mean((pred[ok, GRIPPER] > 0) == (rec[ok, GRIPPER] > 0)))
    return {
        "per_dim": per_dim,
        "mae_mean": finite_or_none(np.mean(maes)) if maes else None,
        "rmse_mean": finite_or_none(np.mean(rmses)) if rmses else None,
        "gripper_sign_agreement": agree,
        "gripper_frames": int(ok.sum()),
    }


def latency_stats(latency_ms: np.ndarray) -> dict[str, Any]:
    ms = np.asarray(latency_ms, np.float64)
    ms = ms[np.isfinite(ms)]
    if ms.size == 0:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    return {
        "n": int(ms.size),
        "p50": finite_or_none(np.percentile(ms, 50)),
        "p99": finite_or_none(np.percentile(ms, 99)),
        "mean": finite_or_none(ms.mean()),
        "max": finite_or_none(ms.max()),
    }


def build_report(
    index: BagIndex,
    ev: Evaluation,
    *,
    instruction: str | None,
    instruction_source: str,
    settings: Mapping[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    compared = np.isfinite(ev.predicted).any(axis=1) & np.isfinite(index.recorded).any(axis=1)
    answered = int(ev.answered.sum())
    return {
        "mode": ev.mode,
        "bag": str(index.path),
        "storage": index.storage,
        "topics": index.selection.as_dict(),
        "bag_topics": dict(sorted(index.topics.items())),
        "instruction": instruction,
        "instruction_source": instruction_source,
        "settings": dict(settings),
        "action_layout": list(ACTION_LAYOUT),
        "frames": {
            "in_bag": index.n_frames,
            "published": int(ev.published),
            "answered": answered,
            "dropped": int(ev.published) - answered,
            "compared": int(compared.sum()),
        },
        "metrics": compute_metrics(ev.predicted, index.recorded),
        "latency_ms": {**latency_stats(ev.latency_ms), "measures": ev.latency_what},
        **ev.extra,
        "warnings": list(ev.warnings),
        "files": {
            "report": str(out_dir / REPORT_FILE),
            "predictions": str(out_dir / PREDICTIONS_FILE),
            "plot": str(out_dir / PLOT_FILE),
        },
    }


# ------------------------------------------------------------------------------ outputs
def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predictions_csv(index: BagIndex, ev: Evaluation) -> str:
    """One row per frame: frame, time_s (since the first frame), answered, latency_ms, the
    predicted and the recorded action per dimension (empty where there is none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["frame", "time_s", "answered", "latency_ms"]
        + [f"pred_{n}" for n in ACTION_LAYOUT]
        + [f"rec_{n}" for n in ACTION_LAYOUT]
    )

    def num(x: float) -> str:
        return repr(float(x)) if math.isfinite(x) else ""

    times = index.frame_times_s
    for i in range(index.n_frames):
        w.writerow(
            [i, f"{times[i]:.6f}", int(ev.answered[i]), num(ev.latency_ms[i])]
            + [num(v) for v in ev.predicted[i]]
            + [num(v) for v in index.recorded[i]]
        )
    return buf.getvalue()


def plot_actions(index: BagIndex, ev: Evaluation, path: Path, title: str) -> None:
    """Predicted vs recorded action per dimension over the bag's time (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = index.frame_times_s
    fig, axes = plt.subplots(ACTION_DIM, 1, figsize=(10, 2.0 * ACTION_DIM), sharex=True)
    try:
        for d, (ax, name) in enumerate(zip(axes, ACTION_LAYOUT)):
            ax.plot(t, index.recorded[:, d], color="0.3", lw=1.2, label="recorded")
            ax.plot(
                t, ev.predicted[:, d], color="tab:red", lw=1.0, marker=".", ms=3, label="predicted"
            )
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("time since first frame (s)")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    _atomic_write(path, buf.getvalue())


def write_outputs(out_dir: Path, report: Mapping[str, Any], index: BagIndex, ev: Evaluation):
    """``predictions.csv``, ``actions.png`` and (last) ``report.json``, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / PREDICTIONS_FILE, predictions_csv(index, ev).encode())
    title = f"{ev.mode}: {index.path.name} ({index.n_frames} frames)"
    plot_actions(index, ev, out_dir / PLOT_FILE, title)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    _atomic_write(out_dir / REPORT_FILE, text.encode())
