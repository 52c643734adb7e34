"""One scan of a bag for replay evaluation: which topics play which role, and the frames.

The bag is read by ``lawm_core.bags``, the reading code training uses too, so a bag the
training loader takes is replayed with the same message types, stamps and camera guesses.

- cameras: ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topics, one per model
  camera (``camera -> topic``). The first camera is the **frame clock**: every message on its
  topic is one frame, at its header stamp (the log time where the stamp is zero), in bag order.
- recorded action: ``Float32MultiArray`` / ``Float64MultiArray`` with 7 values, or
  ``geometry_msgs/TwistStamped`` (the first six; the gripper from an optional ``Float64``
  topic, else not scored).
- proprio (optional): ``Float32MultiArray`` / ``Float64MultiArray`` with 5 values.
- instruction (optional): the first non-empty ``std_msgs/String`` on an ``*instruction*`` topic.

Alignment: every other topic contributes, for each frame, its latest message stamped at or
before the frame time, as in training (which, unlike replay, also drops the frames before
every topic has spoken). A camera message that is not on the frame clock belongs (for live
matching) to the frame whose time is nearest its own stamp.

Bad input (missing or unreadable bag, missing topics, empty bag, wrong types or sizes) raises
``ReplayError`` with a message that says what and why, and for missing topics lists the topics
the bag has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import bags, contract

AUTO = "auto"


class ReplayError(Exception):
    """Input that cannot be evaluated (``exit_code`` 2), or a graph that never answered
    (``exit_code`` 1). The message is meant for the operator, as is."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
        """float64 (N,): seconds since the first frame."""
        return (self.frame_stamps - self.frame_stamps[0]) * 1e-9

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, raw CDR) of ``topics`` in bag order; a read failure raises
        ReplayError."""
        try:
            yield from bags.messages(self.path, topics)
        except bags.BagError as err:
            raise ReplayError(str(err)) from err

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "storage": self.storage,
            "topics": dict(sorted(self.topics.items())),
            "message_counts": dict(sorted(self.counts.items())),
            "frames": self.n_frames,
            "duration_s": round(float(self.frame_times_s[-1]), 6),
        }


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
        image_topics: camera -> Image or CompressedImage topic (the first camera is the frame
            clock); None: guessed as training guesses (``lawm_core.bags.guess_cameras``).
        action_topic: the recorded action; "auto": the one action-typed topic named
            ``*action*``.
        proprio_topic: "auto": the one array topic named ``*proprio*`` if any; None: none.
        gripper_topic: gripper (Float64) for a TwistStamped action topic; None: not scored.
        instruction_topic: "auto": the one String topic named ``*instruction*`` if any.
        cameras: the model's cameras, if known: the mapping must name exactly these.
    """
    try:
        path = bags.bag_path(path)
        reader = bags.open_reader(path)
    except bags.BagError as err:
        raise ReplayError(str(err)) from err
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
    except bags.BagError as err:
        raise ReplayError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - a damaged bag fails anywhere in its parser
        raise ReplayError(str(bags.read_error(path, err))) from err
    finally:
        bags.close_reader(reader)


def _select(
    types: Mapping[str, str],
    path: Path,
    image_topics: Mapping[str, str] | None,
    action_topic: str | None,
    proprio_topic: str | None,
    gripper_topic: str | None,
    instruction_topic: str | None,
    cameras: Sequence[str] | None,
) -> Selection:
    listing = bags.listing(types)
    images = dict(image_topics) if image_topics else bags.guess_cameras(types)
    if images is None:
        n_images = sum(1 for m in types.values() if m in bags.IMAGE_TYPES)
        raise ReplayError(
            f"{path}: cannot tell which image topics are which cameras ({n_images} image "
            "topics); pass --image-topic CAMERA=TOPIC for each camera; the bag has: "
            f"{listing}"
        )
    if cameras is not None and set(images) != set(cameras):
        raise ReplayError(
            f"the model's cameras are {list(cameras)} but the image topics are given for "
            f"{list(images)}; pass --image-topic CAMERA=TOPIC for each model camera"
        )
    if action_topic == AUTO:
        hits = bags.named_topics(types, "action", bags.ACTION_TYPES)
        if len(hits) != 1:
            raise ReplayError(
                f"{path}: {'several' if hits else 'no'} recorded action topics "
                f"({hits or 'none named *action*'}); pass --action-topic; the bag has: {listing}"
            )
        action_topic = hits[0]
    if action_topic is None:
        raise ReplayError("a recorded action topic is needed (--action-topic)")
    if proprio_topic == AUTO:
        hits = bags.named_topics(types, "proprio", bags.ARRAY_TYPES)
        proprio_topic = hits[0] if len(hits) == 1 else None
    if instruction_topic == AUTO:
        hits = bags.named_topics(types, "instruction", (bags.STRING,))
        instruction_topic = hits[0] if len(hits) == 1 else None

    wanted: dict[str, tuple[str, ...]] = {t: bags.IMAGE_TYPES for t in images.values()}
    for topic, allowed in (
        (action_topic, bags.ACTION_TYPES),
        (proprio_topic, bags.ARRAY_TYPES),
        (gripper_topic, bags.FLOAT_TYPES),
        (instruction_topic, (bags.STRING,)),
    ):
        if topic is not None:
            wanted[topic] = allowed
    bags.check_topics(str(path), types, wanted)
    return Selection(
        images=images,
        action=action_topic,
        action_type=types[action_topic],
        proprio=proprio_topic,
        gripper=gripper_topic,
        instruction=instruction_topic,
    )


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
    types = bags.topic_types(reader)
    if not types:
        raise ReplayError(f"{path}: the bag is empty (no topics, no messages)")
    sel = _select(
        types,
        path,
        image_topics,
        action_topic,
        proprio_topic,
        gripper_topic,
        instruction_topic,
        cameras,
    )
    roles = [*sel.images.values(), sel.action, sel.proprio, sel.gripper, sel.instruction]
    streams = bags.scan(reader, [t for t in roles if t is not None])

    counts = {t: int(getattr(info, "msgcount", 0) or 0) for t, info in reader.topics.items()}
    counts.update({t: len(s) for t, s in streams.items()})
    clock = streams[sel.clock]
    if not len(clock):
        empty = [t for t in sel.images.values() if not len(streams[t])]
        raise ReplayError(
            f"{path}: no messages on the camera topic(s) {empty} (empty bag?); message counts: "
            + ", ".join(f"{t}: {counts.get(t, 0)}" for t in sorted(types))
        )
    for cam, topic in sel.images.items():
        if not len(streams[topic]):
            raise ReplayError(f"{path}: camera {cam} topic {topic} has no messages")
    if not len(streams[sel.action]):
        raise ReplayError(f"{path}: the recorded action topic {sel.action} has no messages")

    frame_stamps = clock.stamps
    n = frame_stamps.size

    def aligned(topic: str, dim: int, what: str) -> np.ndarray:
        """float64 (N, dim): the topic's latest values at or before each frame, NaN rows
        before its first message."""
        s = streams[topic]
        mat = bags.value_matrix(str(path), s.values, dim, what, topic)
        idx = bags.latest_at_or_before(s.stamps, frame_stamps)
        out = np.full((n, dim), np.nan)
        out[idx >= 0] = mat[idx[idx >= 0]]
        return out

    if sel.action_type == bags.TWIST_STAMPED:
        recorded = np.full((n, contract.ACTION_DIM), np.nan)
        recorded[:, :6] = aligned(sel.action, 6, "action")
        if sel.gripper is not None:
            recorded[:, contract.GRIPPER_INDEX] = aligned(sel.gripper, 1, "gripper")[:, 0]
    else:
        recorded = aligned(sel.action, contract.ACTION_DIM, "action")
    proprio = None
    if sel.proprio is not None:
        if not len(streams[sel.proprio]):
            raise ReplayError(f"{path}: the proprio topic {sel.proprio} has no messages")
        proprio = aligned(sel.proprio, contract.PROPRIO_DIM, "proprio").astype(np.float32)

    image_stamps, image_frame, frame_images = {}, {}, {}
    for cam, topic in sel.images.items():
        stamps = streams[topic].stamps
        image_stamps[topic] = stamps
        if topic == sel.clock:
            image_frame[topic] = np.arange(n, dtype=np.int64)
            frame_images[cam] = np.arange(n, dtype=np.int64)
        else:
            image_frame[topic] = bags.nearest(frame_stamps, stamps)
            frame_images[cam] = bags.latest_at_or_before(stamps, frame_stamps)
    return BagIndex(
        path=path,
        storage=bags.storage_of(path),
        topics=types,
        counts=counts,
        selection=sel,
        frame_stamps=frame_stamps,
        frame_logtimes=clock.logtimes,
        recorded=recorded,
        proprio=proprio,
        image_stamps=image_stamps,
        image_frame=image_frame,
        frame_images=frame_images,
        instruction=streams[sel.instruction].text if sel.instruction else None,
    )
