"""rosbag2 recordings (sqlite3 ``.db3`` or ``.mcap``) as episodes, via the ``rosbags`` library.

One bag is one episode. Supported messages:

* cameras: ``sensor_msgs/Image`` (rgb8, bgr8, mono8, rgba8, bgra8) or
  ``sensor_msgs/CompressedImage`` (jpeg, png);
* actions: ``std_msgs/Float32MultiArray`` / ``Float64MultiArray`` with 7 values, or
  ``geometry_msgs/TwistStamped`` (linear xyz, angular xyz) plus the gripper from an optional
  ``std_msgs/Float64`` topic (0 without one);
* proprio: ``Float32MultiArray`` / ``Float64MultiArray`` with 5 values (ee_pos 3, gripper 2);
* instruction: given, or the first non-empty ``std_msgs/String`` on an instruction topic.

Time alignment: the first camera's timestamps are the frame clock. Every other topic
contributes, for each frame, its latest message stamped at or before the frame time (header
stamps where the message has a header, else the log time). Frames before every required topic
has produced a message are dropped. Opening a bag scans it once, decoding only the small
messages (actions, proprio); images are decoded on ``read``, and only the requested frames.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lawm.data.base import ROSBAG_SUFFIXES, DataError, EpisodeSource, HandleCache, natural_key
from lawm_core import contract
from lawm_core.bags import typestore

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
ARRAY_TYPES = ("std_msgs/msg/Float32MultiArray", "std_msgs/msg/Float64MultiArray")
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
ACTION_TYPES = (*ARRAY_TYPES, TWIST_STAMPED)
FLOAT_TYPES = ("std_msgs/msg/Float64", "std_msgs/msg/Float32")
STRING = "std_msgs/msg/String"
# Types whose first field is std_msgs/Header: their stamp is parsed straight from the CDR bytes.
_HEADER_TYPES = (*IMAGE_TYPES, TWIST_STAMPED)
_ENCODING_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1}


def _open_reader(path: str):
    from rosbags.rosbag2 import Reader

    reader = Reader(Path(path))
    reader.open()
    return reader


_READERS = HandleCache(_open_reader, lambda r: r.close(), capacity=16)


def is_bag(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in ROSBAG_SUFFIXES or path.name == "metadata.yaml"


def header_stamp(raw: bytes | memoryview, msgtype: str, logtime: int) -> int:
    """Header stamp (ns) of a CDR message whose first field is a Header; else ``logtime``.

    A zero stamp (drivers that never fill it) also falls back to the log time.
    """
    if msgtype in _HEADER_TYPES and len(raw) >= 12:
        # CDR encapsulation header: byte 1 is odd for little-endian representations.
        fmt = "<iI" if raw[1] & 1 else ">iI"
        sec, nanosec = struct.unpack_from(fmt, raw, 4)
        stamp = sec * 1_000_000_000 + nanosec
        if stamp > 0:
            return stamp
    return logtime


def decode_image(raw: bytes | memoryview, msgtype: str, where: str) -> np.ndarray:
    """CDR Image/CompressedImage -> uint8 (H, W, 3) RGB."""
    import cv2

    msg = typestore().deserialize_cdr(raw, msgtype)
    data = np.asarray(msg.data, dtype=np.uint8)
    if msgtype == COMPRESSED_IMAGE:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"{where}: cannot decode CompressedImage (format {msg.format!r})")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc = msg.encoding.lower()
    if enc not in _ENCODING_CHANNELS:
        raise DataError(
            f"{where}: unsupported image encoding {msg.encoding!r}; "
            f"supported: {sorted(_ENCODING_CHANNELS)}"
        )
    c = _ENCODING_CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if step < w * c or data.size < h * step or h == 0 or w == 0:
        raise DataError(
            f"{where}: image {w}x{h} {enc} step {step} does not fit its {data.size} bytes"
        )
    img = data[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if c == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        return np.ascontiguousarray(img[:, :, 2::-1])
    return np.ascontiguousarray(img[:, :, :3])


def _values(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype in ARRAY_TYPES:
        return np.asarray(msg.data, dtype=np.float64).ravel()
    if msgtype == TWIST_STAMPED:
        t = msg.twist
        return np.array(
            [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
        )
    return np.array([float(msg.data)])  # std_msgs/Float64, Float32


class _Stream:
    """Timestamps (and small decoded values or message positions) of one topic."""

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.logtimes: list[int] = []
        self.occurrences: list[int] = []  # index among messages sharing a log time
        self.values: list[np.ndarray] = []
        self._last = (None, -1)

    def add(self, stamp: int, logtime: int, value: np.ndarray | None = None) -> None:
        last_time, count = self._last
        count = count + 1 if logtime == last_time else 0
        self._last = (logtime, count)
        self.stamps.append(stamp)
        self.logtimes.append(logtime)
        self.occurrences.append(count)
        if value is not None:
            self.values.append(value)

    def latest(self, times: np.ndarray) -> np.ndarray:
        """For each time, the index (into stamp-sorted order) of the latest message at or
        before it (-1 if none), and the permutation that sorts by stamp."""
        order = np.argsort(np.asarray(self.stamps, dtype=np.int64), kind="stable")
        sorted_stamps = np.asarray(self.stamps, dtype=np.int64)[order]
        idx = np.searchsorted(sorted_stamps, times, side="right") - 1
        return np.where(idx >= 0, order[np.maximum(idx, 0)], -1)


class RosbagEpisode(EpisodeSource):
    """One rosbag2 recording.

    Args:
        path: bag folder (with metadata.yaml) or a bare ``.mcap`` / ``.db3`` file.
        image_topics: camera (one of ``contract.CAMERAS``) -> topic; the first is the frame clock.
            None: the bag's image topics, when that is unambiguous (one topic -> agentview; two
            with one named like a wrist/hand camera -> that one is eye_in_hand).
        action_topic: the command topic; None: the one topic named ``*action*``, if exactly one.
            Ignored with ``labelled=False``.
        proprio_topic: robot state (5 values); None: the one topic named ``*proprio*``, if any.
        gripper_topic: gripper command (std_msgs/Float64) for a TwistStamped action topic.
        instruction: the episode's instruction; else read from ``instruction_topic`` (or the one
            String topic named ``*instruction*``); else "".
    """

    def __init__(
        self,
        path: str | Path,
        image_topics: dict[str, str] | None = None,
        action_topic: str | None = None,
        proprio_topic: str | None = None,
        gripper_topic: str | None = None,
        instruction: str | None = None,
        instruction_topic: str | None = None,
        labelled: bool = True,
    ) -> None:
        path = Path(path)
        if path.name == "metadata.yaml":
            path = path.parent
        self.path = str(path)
        self.name = self.path
        self.success = None
        try:
            reader = _READERS.get(self.path)
            self._build_index(
                reader,
                image_topics,
                action_topic,
                proprio_topic,
                gripper_topic,
                instruction,
                instruction_topic,
                labelled,
            )
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt bag can fail anywhere in its parser
            _READERS.drop(self.path)
            raise DataError(
                f"{self.path}: cannot read rosbag2 (corrupt or truncated?): "
                f"{type(err).__name__}: {err}"
            ) from err

    # -- index ----------------------------------------------------------------------------------
    def _build_index(
        self,
        reader: Any,
        image_topics: dict[str, str] | None,
        action_topic: str | None,
        proprio_topic: str | None,
        gripper_topic: str | None,
        instruction: str | None,
        instruction_topic: str | None,
        labelled: bool,
    ) -> None:
        types = {topic: info.msgtype for topic, info in reader.topics.items()}
        listing = ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "none"

        def named(word: str, allowed: tuple[str, ...]) -> str | None:
            hits = [t for t, m in types.items() if word in t.lower() and m in allowed]
            return hits[0] if len(hits) == 1 else None

        if image_topics is None:
            image_topics = self._guess_cameras(types, listing)
        if not image_topics:
            raise DataError(f"{self.path}: image_topics is empty; the bag has: {listing}")
        unknown = [c for c in image_topics if c not in contract.CAMERAS]
        if unknown:
            raise DataError(f"{self.path}: unknown cameras {unknown}; known: {contract.CAMERAS}")
        if labelled and action_topic is None:
            action_topic = named("action", ACTION_TYPES)
        if not labelled:
            action_topic = None  # never read labels for unlabeled use
        if proprio_topic is None:
            proprio_topic = named("proprio", ARRAY_TYPES)
        if instruction is None and instruction_topic is None:
            instruction_topic = named("instruction", (STRING,))

        wanted: dict[str, tuple[str, ...]] = {t: IMAGE_TYPES for t in image_topics.values()}
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
            raise DataError(f"{self.path}: missing topics {missing}; the bag has: {listing}")
        for topic, allowed in wanted.items():
            if types[topic] not in allowed:
                raise DataError(
                    f"{self.path}: topic {topic} has type {types[topic]}, expected one of "
                    f"{list(allowed)}"
                )

        # One pass over the bag; images contribute only their stamps and positions.
        streams = {t: _Stream() for t in wanted if t != instruction_topic}
        text = None
        ts = typestore()
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, logtime, raw in reader.messages(connections=conns):
            topic, msgtype = conn.topic, conn.msgtype
            if topic == instruction_topic:
                if text is None:
                    data = ts.deserialize_cdr(raw, msgtype).data.strip()
                    text = data or None
                continue
            stamp = header_stamp(raw, msgtype, logtime)
            value = None
            if msgtype not in IMAGE_TYPES:
                value = _values(ts.deserialize_cdr(raw, msgtype), msgtype)
            streams[topic].add(stamp, logtime, value)

        cams = tuple(image_topics)
        clock = streams[image_topics[cams[0]]]
        if not clock.stamps:
            raise DataError(f"{self.path}: camera topic {image_topics[cams[0]]} has no messages")
        frame_times = np.sort(np.asarray(clock.stamps, dtype=np.int64), kind="stable")
        picks = {topic: s.latest(frame_times) for topic, s in streams.items()}
        keep = np.ones(len(frame_times), dtype=bool)
        for idx in picks.values():
            keep &= idx >= 0
        if not keep.any():
            empty = [t for t, s in streams.items() if not s.stamps]
            raise DataError(
                f"{self.path}: no camera frame comes after a message on every required topic"
                + (f" (no messages on {empty})" if empty else "")
            )
        picks = {topic: idx[keep] for topic, idx in picks.items()}
        self.length = int(keep.sum())
        self.frame_times = frame_times[keep]  # ns, the frame clock

        self._image_topics = dict(image_topics)
        self._positions: dict[str, np.ndarray] = {}
        for cam, topic in image_topics.items():
            s, idx = streams[topic], picks[topic]
            # (log time, occurrence) identifies the message for a time-bounded re-read.
            self._positions[cam] = np.stack(
                [np.asarray(s.logtimes, np.int64)[idx], np.asarray(s.occurrences, np.int64)[idx]],
                axis=1,
            )
        self.cameras = tuple(c for c in contract.CAMERAS if c in image_topics)

        self._actions = None
        if action_topic is not None:
            vals = [streams[action_topic].values[i] for i in picks[action_topic]]
            if types[action_topic] == TWIST_STAMPED:
                if gripper_topic is not None:
                    grip = [streams[gripper_topic].values[i][0] for i in picks[gripper_topic]]
                else:
                    grip = [0.0] * len(vals)
                vals = [np.append(v, g) for v, g in zip(vals, grip)]
            self._actions = self._matrix(vals, contract.ACTION_DIM, "action", action_topic)
        self.has_actions = self._actions is not None
        self._proprio = None
        if proprio_topic is not None:
            vals = [streams[proprio_topic].values[i] for i in picks[proprio_topic]]
            self._proprio = self._matrix(vals, contract.PROPRIO_DIM, "proprio", proprio_topic)
        self.has_proprio = self._proprio is not None
        if instruction is None:
            instruction = text or ""
        self.instruction = instruction
        self.topics = {
            "images": dict(image_topics),
            "actions": action_topic,
            "proprio": proprio_topic,
            "gripper": gripper_topic,
            "instruction": instruction_topic,
        }

    def _matrix(self, rows: list[np.ndarray], dim: int, what: str, topic: str) -> np.ndarray:
        bad = {len(r) for r in rows if len(r) != dim}
        if bad:
            raise DataError(
                f"{self.path}: {what} topic {topic} has messages with {sorted(bad)} values, "
                f"expected {dim}"
            )
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)

    def _guess_cameras(self, types: dict[str, str], listing: str) -> dict[str, str]:
        images = sorted(t for t, m in types.items() if m in IMAGE_TYPES)
        if len(images) == 1:
            return {contract.AGENTVIEW: images[0]}
        if len(images) == 2:
            wrist = [t for t in images if any(w in t.lower() for w in ("wrist", "hand", "eye"))]
            if len(wrist) == 1:
                other = next(t for t in images if t != wrist[0])
                return {contract.AGENTVIEW: other, contract.EYE_IN_HAND: wrist[0]}
        raise DataError(
            f"{self.path}: cannot tell which image topics are which cameras; pass image_topics "
            f"(camera -> topic, cameras {contract.CAMERAS}); the bag has: {listing}"
        )

    # -- reading --------------------------------------------------------------------------------
    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"images": {}, "actions": None, "proprio": None}
        if actions:
            out["actions"] = self._actions[start:stop].copy()
        if proprio:
            out["proprio"] = self._proprio[start:stop].copy()
        if cameras:
            try:
                reader = _READERS.get(self.path)
                for cam in cameras:
                    out["images"][cam] = self._read_camera(reader, cam, start, stop)
            except DataError:
                raise
            except Exception as err:  # noqa: BLE001 - see __init__
                _READERS.drop(self.path)
                raise DataError(
                    f"{self.name}: reading frames [{start}, {stop}) failed: "
                    f"{type(err).__name__}: {err}"
                ) from err
        return out

    def _read_camera(self, reader: Any, cam: str, start: int, stop: int) -> np.ndarray:
        topic = self._image_topics[cam]
        pos = self._positions[cam][start:stop]
        need = {(int(t), int(o)) for t, o in pos}
        conns = [c for c in reader.connections if c.topic == topic]
        decoded: dict[tuple[int, int], np.ndarray] = {}
        last, count = None, 0
        for conn, logtime, raw in reader.messages(
            connections=conns, start=int(pos[:, 0].min()), stop=int(pos[:, 0].max()) + 1
        ):
            count = count + 1 if logtime == last else 0
            last = logtime
            key = (logtime, count)
            if key in need and key not in decoded:
                decoded[key] = decode_image(raw, conn.msgtype, f"{self.path} {topic}")
                if len(decoded) == len(need):
                    break
        try:
            frames = [decoded[(int(t), int(o))] for t, o in pos]
        except KeyError as err:
            raise DataError(f"{self.path}: {topic} message at {err} vanished since open") from err
        if len({f.shape for f in frames}) > 1:
            raise DataError(f"{self.path}: {topic} frames differ in size")
        return np.stack(frames)


def open_rosbags(path: str | Path, labelled: bool = True, **options: Any) -> list[RosbagEpisode]:
    """A bag (folder with metadata.yaml, .mcap, .db3) or a folder of bags, one episode each."""
    path = Path(path)
    if is_bag(path):
        bags = [path]
    elif path.is_dir():
        bags = sorted(
            (p for p in path.iterdir() if is_bag(p) and p.name != "metadata.yaml"),
            key=lambda p: natural_key(p.name),
        )
        if not bags:
            raise DataError(
                f"{path}: not a rosbag2 (no metadata.yaml, .mcap or .db3) and holds no bags"
            )
    else:
        raise DataError(f"{path}: not a rosbag2 (expected a folder or a .mcap/.db3 file)")
    episodes = [RosbagEpisode(b, labelled=labelled, **options) for b in bags]
    unlabelled = [e.name for e in episodes if labelled and not e.has_actions]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} bag(s) have no action topic (pass action_topic), e.g. "
            f"{unlabelled[0]}",
            stacklevel=2,
        )
    return episodes
