"""rosbag2 recordings (sqlite3 ``.db3`` or ``.mcap``) as episodes, via the ``rosbags`` library.

One bag is one episode. Supported messages:

* cameras: ``sensor_msgs/Image`` (rgb8, bgr8, mono8, rgba8, bgra8) or
  ``sensor_msgs/CompressedImage`` (jpeg, png), decoded by ``lawm_core.bags`` as replay
  evaluation decodes them;
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

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lawm.data.base import ROSBAG_SUFFIXES, DataError, EpisodeSource, HandleCache, natural_key
from lawm_core import bags, contract
from lawm_core.errors import InputError

_READERS = HandleCache(bags.open_reader, bags.close_reader, capacity=16)


def is_bag(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in ROSBAG_SUFFIXES or path.name == "metadata.yaml"


@dataclass(frozen=True)
class _Topics:
    """The topics one bag's episode is read from (None: not read)."""

    images: dict[str, str]  # camera -> topic; the first is the frame clock
    action: str | None
    proprio: str | None
    gripper: str | None
    instruction: str | None

    def wanted(self) -> dict[str, tuple[str, ...]]:
        """Topic -> the message types allowed on it."""
        wanted: dict[str, tuple[str, ...]] = {t: bags.IMAGE_TYPES for t in self.images.values()}
        for topic, allowed in (
            (self.action, bags.ACTION_TYPES),
            (self.proprio, bags.ARRAY_TYPES),
            (self.gripper, bags.FLOAT_TYPES),
            (self.instruction, (bags.STRING,)),
        ):
            if topic is not None:
                wanted[topic] = allowed
        return wanted


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
        except bags.BagError as err:  # a missing topic or a wrong type, size or path
            raise DataError(str(err)) from err
        except Exception as err:  # noqa: BLE001 - a corrupt bag can fail anywhere in its parser
            _READERS.drop(self.path)
            raise DataError(str(bags.read_error(self.path, err))) from err

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
        types = bags.topic_types(reader)
        topics = self._choose_topics(
            types,
            image_topics,
            action_topic,
            proprio_topic,
            gripper_topic,
            instruction,
            instruction_topic,
            labelled,
        )
        wanted = topics.wanted()
        bags.check_topics(self.path, types, wanted)

        # One pass over the bag; images contribute only their stamps and positions.
        streams = bags.scan(reader, wanted)
        text = streams.pop(topics.instruction).text if topics.instruction is not None else None
        picks = self._align(streams, topics.images)
        self._index_images(streams, picks, topics.images)
        self._actions = self._action_values(types, streams, picks, topics)
        self.has_actions = self._actions is not None
        # A recorded TwistStamped command is a velocity; a bare array's units are unknown.
        twist = topics.action is not None and types[topics.action] == bags.TWIST_STAMPED
        self.action_space = contract.ACTION_TWIST if twist else None
        self._proprio = None
        if topics.proprio is not None:
            self._proprio = self._matrix(
                streams, picks, topics.proprio, contract.PROPRIO_DIM, "proprio"
            )
        self.has_proprio = self._proprio is not None
        if instruction is None:
            instruction = text or ""
        self.instruction = instruction
        self.topics = {
            "images": dict(topics.images),
            "actions": topics.action,
            "proprio": topics.proprio,
            "gripper": topics.gripper,
            "instruction": topics.instruction,
        }

    def _choose_topics(
        self,
        types: dict[str, str],
        image_topics: dict[str, str] | None,
        action_topic: str | None,
        proprio_topic: str | None,
        gripper_topic: str | None,
        instruction: str | None,
        instruction_topic: str | None,
        labelled: bool,
    ) -> _Topics:
        """The given topics, with the unambiguous guesses filled in for those left None."""

        def named(word: str, allowed: tuple[str, ...]) -> str | None:
            hits = bags.named_topics(types, word, allowed)
            return hits[0] if len(hits) == 1 else None

        if image_topics is None:
            image_topics = bags.guess_cameras(types)
            if image_topics is None:
                raise DataError(
                    f"{self.path}: cannot tell which image topics are which cameras; pass "
                    f"image_topics (camera -> topic, cameras {contract.CAMERAS}); the bag has: "
                    f"{bags.listing(types)}"
                )
        if not image_topics:
            raise DataError(
                f"{self.path}: image_topics is empty; the bag has: {bags.listing(types)}"
            )
        unknown = [c for c in image_topics if c not in contract.CAMERAS]
        if unknown:
            raise DataError(f"{self.path}: unknown cameras {unknown}; known: {contract.CAMERAS}")
        if labelled and action_topic is None:
            action_topic = named("action", bags.ACTION_TYPES)
        if not labelled:
            action_topic = None  # never read labels for unlabeled use
        if proprio_topic is None:
            proprio_topic = named("proprio", bags.ARRAY_TYPES)
        if instruction is None and instruction_topic is None:
            instruction_topic = named("instruction", (bags.STRING,))
        return _Topics(image_topics, action_topic, proprio_topic, gripper_topic, instruction_topic)

    def _align(
        self, streams: dict[str, bags.Stream], image_topics: dict[str, str]
    ) -> dict[str, np.ndarray]:
        """Set the frame clock (``length``, ``frame_times`` (T,) ns) from the first camera.

        Returns topic -> (T,) index of its latest message at or before each kept frame."""
        clock_topic = image_topics[next(iter(image_topics))]
        clock = streams[clock_topic]
        if not len(clock):
            raise DataError(f"{self.path}: camera topic {clock_topic} has no messages")
        frame_times = np.sort(clock.stamps, kind="stable")
        picks = {t: bags.latest_at_or_before(s.stamps, frame_times) for t, s in streams.items()}
        keep = np.ones(len(frame_times), dtype=bool)
        for idx in picks.values():
            keep &= idx >= 0
        if not keep.any():
            empty = [t for t, s in streams.items() if not len(s)]
            raise DataError(
                f"{self.path}: no camera frame comes after a message on every required topic"
                + (f" (no messages on {empty})" if empty else "")
            )
        self.length = int(keep.sum())
        self.frame_times = frame_times[keep]  # ns, the frame clock
        return {topic: idx[keep] for topic, idx in picks.items()}

    def _index_images(
        self,
        streams: dict[str, bags.Stream],
        picks: dict[str, np.ndarray],
        image_topics: dict[str, str],
    ) -> None:
        """Remember where each kept frame's image lies in the bag, per camera."""
        self._image_topics = dict(image_topics)
        self._positions: dict[str, np.ndarray] = {}
        for cam, topic in image_topics.items():
            s, idx = streams[topic], picks[topic]
            # (log time, occurrence) identifies the message for a time-bounded re-read.
            self._positions[cam] = np.stack([s.logtimes[idx], s.occurrences[idx]], axis=1)
        self.cameras = tuple(c for c in contract.CAMERAS if c in image_topics)

    def _action_values(
        self,
        types: dict[str, str],
        streams: dict[str, bags.Stream],
        picks: dict[str, np.ndarray],
        topics: _Topics,
    ) -> np.ndarray | None:
        """(T, ACTION_DIM) float32 actions per frame, or None without an action topic."""
        if topics.action is None:
            return None
        vals = [streams[topics.action].values[i] for i in picks[topics.action]]
        if types[topics.action] == bags.TWIST_STAMPED:
            if topics.gripper is not None:
                grip = [streams[topics.gripper].values[i][0] for i in picks[topics.gripper]]
            else:
                grip = [0.0] * len(vals)
            vals = [np.append(v, g) for v, g in zip(vals, grip)]
        return bags.value_matrix(
            self.path, vals, contract.ACTION_DIM, "action", topics.action
        ).astype(np.float32)

    def _matrix(
        self,
        streams: dict[str, bags.Stream],
        picks: dict[str, np.ndarray],
        topic: str,
        dim: int,
        what: str,
    ) -> np.ndarray:
        """(T, dim) float32: ``topic``'s message picked for each frame."""
        vals = [streams[topic].values[i] for i in picks[topic]]
        return bags.value_matrix(self.path, vals, dim, what, topic).astype(np.float32)

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
                try:
                    decoded[key] = bags.decode_image(raw, conn.msgtype)
                except InputError as err:
                    raise DataError(f"{self.path} {topic} at {logtime} ns: {err}") from err
                if len(decoded) == len(need):
                    break
        try:
            frames = [decoded[(int(t), int(o))] for t, o in pos]
        except KeyError as err:
            raise DataError(f"{self.path}: {topic} message at {err} vanished since open") from err
        if len({f.shape for f in frames}) > 1:
            raise DataError(f"{self.path}: {topic} frames differ in size")
        return np.stack(frames)


@dataclass(frozen=True)
class RosbagOptions:
    """Which topics of a rosbag2 make up an episode (see :class:`RosbagEpisode` for the
    guesses made for the topics left None).

    image_topics: camera (one of ``contract.CAMERAS``) -> Image/CompressedImage topic; the
        first is the frame clock.
    action_topic: the recorded 7-D action (or TwistStamped command) topic.
    proprio_topic: robot state (5 values).
    gripper_topic: gripper command (std_msgs/Float64) for a TwistStamped action topic.
    instruction: the episode's instruction; else read from ``instruction_topic``.
    instruction_topic: a std_msgs/String topic holding the instruction.
    """

    image_topics: Mapping[str, str] | None = None
    action_topic: str | None = None
    proprio_topic: str | None = None
    gripper_topic: str | None = None
    instruction: str | None = None
    instruction_topic: str | None = None


def open_rosbags(
    path: str | Path, labelled: bool = True, options: RosbagOptions | None = None
) -> list[RosbagEpisode]:
    """A bag (folder with metadata.yaml, .mcap, .db3) or a folder of bags, one episode each."""
    opts = RosbagOptions() if options is None else options
    path = Path(path)
    if is_bag(path):
        paths = [path]
    elif path.is_dir():
        paths = sorted(
            (p for p in path.iterdir() if is_bag(p) and p.name != "metadata.yaml"),
            key=lambda p: natural_key(p.name),
        )
        if not paths:
            raise DataError(
                f"{path}: not a rosbag2 (no metadata.yaml, .mcap or .db3) and holds no bags"
            )
    else:
        raise DataError(f"{path}: not a rosbag2 (expected a folder or a .mcap/.db3 file)")
    episodes = [
        RosbagEpisode(
            b,
            image_topics=None if opts.image_topics is None else dict(opts.image_topics),
            action_topic=opts.action_topic,
            proprio_topic=opts.proprio_topic,
            gripper_topic=opts.gripper_topic,
            instruction=opts.instruction,
            instruction_topic=opts.instruction_topic,
            labelled=labelled,
        )
        for b in paths
    ]
    unlabelled = [e.name for e in episodes if labelled and not e.has_actions]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} bag(s) have no action topic (set RosbagOptions.action_topic "
            f"or --action-topic), e.g. {unlabelled[0]}",
            stacklevel=2,
        )
    return episodes
