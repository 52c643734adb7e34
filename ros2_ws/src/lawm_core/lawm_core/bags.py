"""rosbag2 files as the ROS 2 tools write them (sqlite3 or mcap), read without ROS.

The one reading code of the training loader (``lawm.data.rosbag``) and of replay evaluation
(``lawm_policy.eval_replay``), so that a bag one of them takes the other takes too, frame for
frame; the simulation's recorder writes its bags with ``typestore``. numpy, OpenCV and the
pure-Python ``rosbags`` package (imported when a bag is opened); no torch, no rclpy.

Messages, per role:

* cameras: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8, decoded as the policy node
  decodes them) or ``sensor_msgs/CompressedImage`` (any image ``cv2.imdecode`` reads: JPEG and
  PNG as image_transport's ``compressed`` plugin writes them, ``format`` like
  ``"rgb8; jpeg compressed bgr8"``), both to RGB;
* actions: ``std_msgs/Float32MultiArray`` / ``Float64MultiArray`` (7 values), or
  ``geometry_msgs/TwistStamped`` (linear xyz, angular xyz) with the gripper on a
  ``std_msgs/Float64`` / ``Float32`` topic;
* proprio: ``Float32MultiArray`` / ``Float64MultiArray`` (one value per name of the model's
  proprio layout), ``geometry_msgs/PoseStamped`` (its position) or ``sensor_msgs/JointState``
  (positions by joint name, ``joint_series``);
* instruction: the first non-empty ``std_msgs/String``.

Times: a message whose first field is a ``std_msgs/Header`` is at its header stamp (parsed
from the CDR bytes, nothing deserialised), others, and zero stamps, at their log time. Other
topics are aligned to a camera's frames, or to a regular grid of step times (``step_grid``), by
``latest_at_or_before``; ``nearest`` gives the frame a message is closest to;
``recorded_rate`` says at what rate a topic was recorded.

Failures: ``BagError`` (bad path, unreadable or truncated bag, missing topic, wrong type or
size), its message naming the bag or topic and saying why, for missing topics with the list of
what the bag has; ``InputError`` for one image that cannot be decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import contract
from lawm_core.errors import InputError
from lawm_core.preprocess import image_from_compressed, image_from_msg_fields

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES: tuple[str, ...] = (IMAGE, COMPRESSED_IMAGE)
ARRAY_TYPES: tuple[str, ...] = ("std_msgs/msg/Float32MultiArray", "std_msgs/msg/Float64MultiArray")
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
ACTION_TYPES: tuple[str, ...] = (*ARRAY_TYPES, TWIST_STAMPED)
FLOAT_TYPES: tuple[str, ...] = ("std_msgs/msg/Float64", "std_msgs/msg/Float32")
STRING = "std_msgs/msg/String"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
JOINT_STATE = "sensor_msgs/msg/JointState"
# Types whose first field is a std_msgs/Header.
HEADER_TYPES: tuple[str, ...] = (*IMAGE_TYPES, TWIST_STAMPED, POSE_STAMPED, JOINT_STATE)
BAG_SUFFIXES: tuple[str, ...] = (".mcap", ".db3")
# Words in a topic name that mark the wrist camera (eye_in_hand) when guessing.
WRIST_WORDS: tuple[str, ...] = ("wrist", "hand", "eye")

_TYPESTORE = None


class BagError(ValueError):
    """A bag that cannot be read as asked. The message names the bag or topic and says why."""


def typestore():
    """The ROS 2 Jazzy type store (built once per process; its type hashes match rclpy's)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        # rosbags: optional, only bag reading and writing need it.
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE


# ------------------------------------------------------------------------------ opening
def bag_path(path: str | Path) -> Path:
    """The absolute path of a rosbag2 (a folder with metadata.yaml, or a bare .mcap/.db3 file;
    ``metadata.yaml`` itself stands for its folder). BagError saying why when it is not one."""
    p = Path(path).expanduser()
    if p.name == "metadata.yaml":
        p = p.parent
    if not p.exists():
        raise BagError(f"{p}: no such bag (expected a rosbag2 folder or a .mcap/.db3 file)")
    if p.is_dir():
        if not (p / "metadata.yaml").is_file():
            inside = sorted(q.name for q in p.iterdir())[:10]
            raise BagError(
                f"{p}: not a rosbag2 folder (no metadata.yaml; it holds {inside or 'nothing'})"
            )
    elif p.suffix.lower() not in BAG_SUFFIXES:
        raise BagError(f"{p}: not a rosbag2 file (expected a .mcap or .db3 file, or a folder)")
    return p.resolve()


def storage_of(path: str | Path) -> str:
    """The storage plugin by the files' suffix: "mcap", "sqlite3" or "unknown"."""
    p = Path(path)
    suffixes = [q.suffix.lower() for q in p.iterdir()] if p.is_dir() else [p.suffix.lower()]
    return "mcap" if ".mcap" in suffixes else "sqlite3" if ".db3" in suffixes else "unknown"


def read_error(path: str | Path, err: BaseException) -> BagError:
    """The error for a bag whose reading failed inside rosbags (a damaged or truncated file
    fails anywhere in its parser)."""
    return BagError(
        f"{path}: cannot read rosbag2 (corrupt or truncated?): {type(err).__name__}: {err}"
    )


def open_reader(path: str | Path):
    """An open ``rosbags.rosbag2.Reader`` (sqlite3 or mcap; close it); BagError if the bag
    cannot be opened."""
    # rosbags: optional, only bag reading needs it.
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(Path(path))
        reader.open()
    except Exception as err:  # noqa: BLE001 - see read_error
        raise read_error(path, err) from err
    return reader


def close_reader(reader: Any) -> None:
    """Close a reader; closing a damaged bag may fail too, and there is nothing left to do."""
    try:
        reader.close()
    except Exception:  # noqa: BLE001
        pass


def messages(path: str | Path, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
    """(topic, log time ns, raw CDR) of ``topics`` in bag order, from a reader of its own;
    BagError when reading fails."""
    wanted = set(topics)
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, logtime, raw in reader.messages(connections=conns):
            yield conn.topic, int(logtime), raw
    except Exception as err:  # noqa: BLE001 - see read_error
        raise read_error(path, err) from err
    finally:
        close_reader(reader)


# ------------------------------------------------------------------------------ topics
def topic_types(reader: Any) -> dict[str, str]:
    """Every topic of an open reader -> its message type ("?" where unknown)."""
    return {topic: (info.msgtype or "?") for topic, info in reader.topics.items()}


def listing(types: Mapping[str, str]) -> str:
    """``topic [type], ...`` for error messages."""
    return ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "no topics at all"


def named_topics(types: Mapping[str, str], word: str, allowed: Sequence[str]) -> list[str]:
    """The topics of an allowed type whose name contains ``word`` (any case), sorted."""
    return sorted(t for t, m in types.items() if word in t.lower() and m in allowed)


def guess_cameras(types: Mapping[str, str]) -> dict[str, str] | None:
    """Camera -> topic from the bag's image topics when that is unambiguous, else None.

    A CompressedImage topic ``X/compressed`` beside an image topic ``X`` is the same camera
    (image_transport) and does not count. One image topic: agentview; two, exactly one named
    like a wrist camera (``WRIST_WORDS``): that one is eye_in_hand, the other agentview.
    """
    found = {t for t, m in types.items() if m in IMAGE_TYPES}
    twins = {
        t
        for t in found
        if types[t] == COMPRESSED_IMAGE
        and t.endswith("/compressed")
        and t.rpartition("/")[0] in found
    }
    images = sorted(found - twins)
    if len(images) == 1:
        return {contract.AGENTVIEW: images[0]}
    if len(images) == 2:
        wrist = [t for t in images if any(w in t.lower() for w in WRIST_WORDS)]
        if len(wrist) == 1:
            other = next(t for t in images if t != wrist[0])
            return {contract.AGENTVIEW: other, contract.EYE_IN_HAND: wrist[0]}
    return None


def check_topics(
    where: str, types: Mapping[str, str], wanted: Mapping[str, Sequence[str]]
) -> None:
    """BagError unless every ``wanted`` topic is in the bag with one of its allowed types."""
    missing = [t for t in wanted if t not in types]
    if missing:
        raise BagError(f"{where}: missing topics {missing}; the bag has: {listing(types)}")
    for topic, allowed in wanted.items():
        if types[topic] not in allowed:
            expected = " or ".join(allowed)
            raise BagError(f"{where}: topic {topic} has type {types[topic]}, expected {expected}")


# ------------------------------------------------------------------------------ messages
def header_stamp(raw: bytes | memoryview, msgtype: str, logtime: int) -> int:
    """Header stamp (ns) parsed from a CDR message whose first field is a Header; ``logtime``
    for other types and for a zero stamp (drivers that never fill it)."""
    if msgtype in HEADER_TYPES and len(raw) >= 12:
        fmt = "<iI" if raw[1] & 1 else ">iI"  # CDR encapsulation: odd = little endian
        sec, nanosec = struct.unpack_from(fmt, raw, 4)
        stamp = sec * 1_000_000_000 + nanosec
        if stamp > 0:
            return stamp
    return int(logtime)


def restamp(raw: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a CDR message with a Header first whose ``header.stamp`` is ``stamp_ns``; the
    payload is untouched (nothing deserialised)."""
    out = bytearray(raw)
    if len(out) < 12:
        raise BagError(f"message of {len(out)} bytes is too short to carry a header")
    fmt = "<iI" if out[1] & 1 else ">iI"
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    struct.pack_into(fmt, out, 4, sec, nanosec)
    return bytes(out)


def decode_image(raw: bytes | memoryview, msgtype: str) -> np.ndarray:
    """A CDR ``sensor_msgs/Image`` or ``CompressedImage`` -> (H, W, 3) uint8 RGB, a new array.

    Raw images go through the policy node's decoder (``image_from_msg_fields``); compressed
    ones through ``image_from_compressed``. InputError saying
    why for a damaged message, an unsupported encoding or size, or undecodable bytes.
    """
    if msgtype not in IMAGE_TYPES:
        raise InputError(f"{msgtype} is not an image type ({' or '.join(IMAGE_TYPES)})")
    try:
        msg = typestore().deserialize_cdr(raw, msgtype)
    except Exception as err:  # noqa: BLE001 - a damaged message fails anywhere in the parser
        raise InputError(f"damaged {msgtype} message: {type(err).__name__}: {err}") from err
    if msgtype == IMAGE:
        return image_from_msg_fields(msg.data, msg.encoding, msg.height, msg.width, msg.step)
    return image_from_compressed(msg.data, msg.format)


def message_values(msg: Any, msgtype: str) -> np.ndarray:
    """float64 (D,): an array's data, a TwistStamped's (linear xyz, angular xyz), a Float's
    value, a PoseStamped's position (x, y, z), a JointState's positions (in its name order)."""
    if msgtype in ARRAY_TYPES:
        return np.asarray(msg.data, dtype=np.float64).ravel()
    if msgtype == TWIST_STAMPED:
        t = msg.twist
        return np.array(
            [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
        )
    if msgtype in FLOAT_TYPES:
        return np.array([float(msg.data)])
    if msgtype == POSE_STAMPED:
        p = msg.pose.position
        return np.array([p.x, p.y, p.z], np.float64)
    if msgtype == JOINT_STATE:
        return np.asarray(msg.position, dtype=np.float64).ravel()
    raise BagError(f"{msgtype} carries no numeric values")


def value_matrix(
    where: str, rows: Sequence[np.ndarray], dim: int, what: str, topic: str
) -> np.ndarray:
    """float64 (M, dim) from the values of a topic's M messages; BagError if one has another
    size."""
    bad = sorted({len(r) for r in rows if len(r) != dim})
    if bad:
        raise BagError(
            f"{where}: {what} topic {topic} has messages with {bad} values, expected {dim}"
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), dim)


@dataclass
class Stream:
    """One topic's messages in bag order. Images keep only their times and positions (decode
    them with ``decode_image`` when needed), numeric topics their values, String topics their
    first non-empty text."""

    msgtype: str
    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 (M,) ns
    logtimes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 (M,)
    # int64 (M,): index among the topic's messages with the same log time, so that
    # (log time, occurrence) finds a message again in a time-bounded read.
    occurrences: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: list[np.ndarray] = field(default_factory=list)  # float64 (D,) per message
    text: str | None = None
    names: list[tuple[str, ...]] = field(default_factory=list)  # JointState: joint names per msg

    def __len__(self) -> int:
        return int(self.stamps.size)


def scan(reader: Any, topics: Iterable[str]) -> dict[str, Stream]:
    """One pass over an open reader: topic -> ``Stream`` for each of ``topics`` (present in
    the bag). Exceptions of a damaged bag propagate (wrap them with ``read_error``)."""
    types = topic_types(reader)
    wanted = [t for t in dict.fromkeys(topics) if t in types]
    stamps: dict[str, list[int]] = {t: [] for t in wanted}
    logtimes: dict[str, list[int]] = {t: [] for t in wanted}
    occurrences: dict[str, list[int]] = {t: [] for t in wanted}
    out = {t: Stream(types[t]) for t in wanted}
    ts = typestore()
    conns = [c for c in reader.connections if c.topic in out]
    for conn, logtime, raw in reader.messages(connections=conns):
        topic, msgtype, logtime = conn.topic, conn.msgtype, int(logtime)
        same = logtimes[topic] and logtimes[topic][-1] == logtime
        occurrences[topic].append(occurrences[topic][-1] + 1 if same else 0)
        stamps[topic].append(header_stamp(raw, msgtype, logtime))
        logtimes[topic].append(logtime)
        stream = out[topic]
        if msgtype == STRING:
            if stream.text is None:
                stream.text = ts.deserialize_cdr(raw, msgtype).data.strip() or None
        elif msgtype not in IMAGE_TYPES:
            msg = ts.deserialize_cdr(raw, msgtype)
            stream.values.append(message_values(msg, msgtype))
            if msgtype == JOINT_STATE:
                stream.names.append(tuple(str(n) for n in msg.name))
    for topic, stream in out.items():
        stream.stamps = np.asarray(stamps[topic], np.int64)
        stream.logtimes = np.asarray(logtimes[topic], np.int64)
        stream.occurrences = np.asarray(occurrences[topic], np.int64)
    return out


def joint_series(
    where: str, topic: str, stream: Stream, joint: str
) -> tuple[np.ndarray, np.ndarray]:
    """(stamps int64 (M_j,), positions float64 (M_j,)) of the messages of a JointState
    ``stream`` that name ``joint`` (drivers may publish arm and gripper joints in separate
    messages on one topic). BagError naming the joint and the joints the topic has when no
    message names it, or when a message has fewer positions than names."""
    stamps: list[int] = []
    values: list[float] = []
    for stamp, names, pos in zip(stream.stamps, stream.names, stream.values):
        if joint not in names:
            continue
        i = names.index(joint)
        if i >= len(pos):
            raise BagError(
                f"{where}: JointState topic {topic} has a message with {len(names)} names but "
                f"{len(pos)} positions"
            )
        stamps.append(int(stamp))
        values.append(float(pos[i]))
    if not stamps:
        known = sorted({n for names in stream.names for n in names})
        shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
        raise BagError(
            f"{where}: JointState topic {topic} has no joint {joint!r} in any of its "
            f"{len(stream)} messages; its joints: {shown or 'none'}"
        )
    return np.asarray(stamps, np.int64), np.asarray(values, np.float64)


# ------------------------------------------------------------------------------ alignment
def recorded_rate(stamps: np.ndarray) -> float | None:
    """The rate (Hz) a topic was recorded at: one over the median interval between its
    distinct stamps; None with fewer than two."""
    distinct = np.unique(np.asarray(stamps, np.int64))
    if distinct.size < 2:
        return None
    return 1e9 / float(np.median(np.diff(distinct)))


def step_grid(first_ns: int, last_ns: int, rate_hz: float) -> np.ndarray:
    """int64 (T,): the regular step times first, first + 1/rate, ... up to ``last_ns``
    (rounded to the ns); empty when ``last_ns < first_ns``."""
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz!r}")
    if last_ns < first_ns:
        return np.zeros(0, np.int64)
    n = int(np.floor((last_ns - first_ns) * rate_hz / 1e9 + 1e-9)) + 1
    times = int(first_ns) + np.round(np.arange(n) * (1e9 / rate_hz)).astype(np.int64)
    return times[times <= last_ns]


def latest_at_or_before(stamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """int64 (T,): for each of ``times`` (T,), the index into ``stamps`` (M,) (in its own
    order) of the latest message stamped at or before it; -1 where there is none."""
    stamps = np.asarray(stamps, np.int64)
    times = np.asarray(times, np.int64)
    if stamps.size == 0:
        return np.full(times.shape, -1, np.int64)
    order = np.argsort(stamps, kind="stable")
    idx = np.searchsorted(stamps[order], times, side="right") - 1
    return np.where(idx >= 0, order[np.maximum(idx, 0)], -1).astype(np.int64)


def nearest(stamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """int64 (T,): for each of ``times`` (T,), the index into ``stamps`` (M > 0,) of the
    nearest stamp (the earlier one at a tie)."""
    stamps = np.asarray(stamps, np.int64)
    times = np.asarray(times, np.int64)
    if stamps.size == 0:
        raise ValueError("nearest: no stamps to choose from")
    if stamps.size == 1:
        return np.zeros(times.shape, np.int64)
    order = np.argsort(stamps, kind="stable")
    ordered = stamps[order]
    pos = np.clip(np.searchsorted(ordered, times), 1, ordered.size - 1)
    left, right = ordered[pos - 1], ordered[pos]
    pick = np.where(times - left <= right - times, pos - 1, pos)
    return order[pick].astype(np.int64)
