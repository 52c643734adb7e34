"""rosbag2 recordings (sqlite3 ``.db3`` or ``.mcap``) as episodes, via the ``rosbags`` library.

One bag is one episode. Supported messages:

* cameras: ``sensor_msgs/Image`` (rgb8, bgr8, mono8, rgba8, bgra8) or
  ``sensor_msgs/CompressedImage`` (jpeg, png), decoded by ``lawm_core.bags`` as replay
  evaluation decodes them;
* actions: ``std_msgs/Float32MultiArray`` / ``Float64MultiArray`` with 7 values, or
  ``geometry_msgs/TwistStamped`` (linear xyz, angular xyz) plus the gripper from a
  ``std_msgs/Float64`` / ``Float32`` topic (given, or the one named ``*gripper*``). A gripper
  topic is usually published on change only: each step holds its latest value at or before the
  step, and the open value (``gripper_open``) before its first message. Without a gripper topic
  the gripper is 0 throughout, with a warning;
* proprio (robot state; its names are the episode's ``proprio_layout``, the vocabulary of
  ``lawm_core.contract``): a ``Float32MultiArray`` / ``Float64MultiArray`` in the default
  layout (``contract.PROPRIO_LAYOUT``, 5 values); or a ``geometry_msgs/PoseStamped`` (the
  end-effector position: ``ee_x``, ``ee_y``, ``ee_z``) and/or a ``sensor_msgs/JointState``
  (the positions of the named joints: ``joint:<name>``, each from the latest message naming
  it, so arm and gripper joints may come in separate messages);
* instruction: given, or the first non-empty ``std_msgs/String`` on an instruction topic.

Steps. Times are header stamps where the message has a header (log times for the others and
for zero stamps). The first step is the first frame of the first camera at which every
required topic (cameras, actions, proprio) has produced a message. With ``control_rate_hz``
(training passes the model's control rate), the steps are a regular grid at that rate from
there to the last time every required topic still has a message; every topic contributes, for
each step, its latest message stamped at or before the step time: cameras too (a 30 Hz camera
at 20 Hz steps skips frames), and the action is the command in force at the step's time.
Without it, the first camera's frames are the steps and ``control_rate_hz`` is the rate that
camera was recorded at. ``recorded_rates`` holds each topic's recorded rate. Opening a bag
scans it once, decoding only the small messages (actions, proprio, gripper); images are decoded
on ``read``, and only the requested frames.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lawm.data.base import (
    ROSBAG_SUFFIXES,
    DataError,
    EpisodeSource,
    HandleCache,
    natural_key,
    skip_or_raise,
)
from lawm_core import bags, contract
from lawm_core.errors import InputError

_READERS = HandleCache(bags.open_reader, bags.close_reader, capacity=16)
log = logging.getLogger(__name__)

# Hints appended to errors, for the training CLI and for RosbagOptions.
_JOINTS_HINT = "pass --proprio-joints (RosbagOptions.proprio_joints) with names from that list"
_ARRAY_HINT = (
    "a Float32MultiArray proprio topic (--proprio-topic) carries the model's default layout "
    f"{list(contract.PROPRIO_LAYOUT)}; for other robot state pass --proprio-pose-topic "
    "(PoseStamped) and/or --proprio-joint-states-topic with --proprio-joints"
)


def is_bag(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in ROSBAG_SUFFIXES or path.name == "metadata.yaml"


@dataclass(frozen=True)
class RosbagOptions:
    """Which topics of a rosbag2 make up an episode, and at what rate it is stepped (see
    :class:`RosbagEpisode` for the guesses made for the topics left None).

    image_topics: camera (one of ``contract.CAMERAS``) -> Image/CompressedImage topic; the
        first is the frame clock.
    action_topic: the recorded 7-D action (or TwistStamped command) topic.
    proprio_topic: robot state as an array in the default layout (5 values).
    gripper_topic: gripper command (std_msgs/Float64 or Float32) for a TwistStamped action
        topic.
    instruction: the episode's instruction; else read from ``instruction_topic``.
    instruction_topic: a std_msgs/String topic holding the instruction.
    proprio_pose_topic: geometry_msgs/PoseStamped of the end effector (-> ee_x, ee_y, ee_z).
    proprio_joint_states_topic: sensor_msgs/JointState topic (None with ``proprio_joints``:
        the bag's one JointState topic).
    proprio_joints: the joints whose positions are proprio (-> ``joint:<name>``).
    control_rate_hz: resample the episode to steps at this rate; None: the first camera's
        frames are the steps.
    gripper_open: the gripper value before the gripper topic's first message.
    """

    image_topics: Mapping[str, str] | None = None
    action_topic: str | None = None
    proprio_topic: str | None = None
    gripper_topic: str | None = None
    instruction: str | None = None
    instruction_topic: str | None = None
    proprio_pose_topic: str | None = None
    proprio_joint_states_topic: str | None = None
    proprio_joints: Sequence[str] | None = None
    control_rate_hz: float | None = None
    gripper_open: float = contract.GRIPPER_OPEN


@dataclass(frozen=True)
class _Topics:
    """The topics one bag's episode is read from (None: not read)."""

    images: dict[str, str]  # camera -> topic; the first is the frame clock
    action: str | None
    proprio: str | None  # an array in the default layout
    pose: str | None
    joint_states: str | None
    joints: tuple[str, ...]
    gripper: str | None
    instruction: str | None

    def wanted(self) -> dict[str, tuple[str, ...]]:
        """Topic -> the message types allowed on it."""
        wanted: dict[str, tuple[str, ...]] = {t: bags.IMAGE_TYPES for t in self.images.values()}
        for topic, allowed in (
            (self.action, bags.ACTION_TYPES),
            (self.proprio, bags.ARRAY_TYPES),
            (self.pose, (bags.POSE_STAMPED,)),
            (self.joint_states, (bags.JOINT_STATE,)),
            (self.gripper, bags.FLOAT_TYPES),
            (self.instruction, (bags.STRING,)),
        ):
            if topic is not None:
                wanted[topic] = allowed
        return wanted

    def proprio_layout(self) -> tuple[str, ...] | None:
        """The proprio names these topics give, None without robot state."""
        if self.proprio is not None:
            return contract.PROPRIO_LAYOUT
        names = contract.PROPRIO_EE_NAMES if self.pose is not None else ()
        names += tuple(contract.PROPRIO_JOINT_PREFIX + j for j in self.joints)
        return names or None


class RosbagEpisode(EpisodeSource):
    """One rosbag2 recording.

    Args:
        path: bag folder (with metadata.yaml) or a bare ``.mcap`` / ``.db3`` file.
        image_topics: camera (one of ``contract.CAMERAS``) -> topic; the first is the frame clock.
            None: the bag's image topics, when that is unambiguous (one topic -> agentview; two
            with one named like a wrist/hand camera -> that one is eye_in_hand).
        action_topic: the command topic; None: the one topic named ``*action*``, if exactly one.
            Ignored with ``labelled=False``.
        proprio_topic: robot state (5 values); None: the one topic named ``*proprio*``, if any
            (only when no pose or joint-state proprio is given).
        gripper_topic: gripper command (std_msgs/Float64) for a TwistStamped action topic; None:
            the one Float64/Float32 topic named ``*gripper*``, if exactly one.
        instruction: the episode's instruction; else read from ``instruction_topic`` (or the one
            String topic named ``*instruction*``); else "".
        options: the remaining settings (``RosbagOptions``: pose / joint-state proprio, the
            control rate, the gripper's open value); its topic fields are overridden by the
            arguments above.

    Attributes (besides ``EpisodeSource``'s): ``frame_times`` int64 (length,) ns, the step
    times; ``control_rate_hz``; ``recorded_rates`` topic -> Hz (None: fewer than 2 messages);
    ``topics`` (images, actions, proprio, gripper, instruction) and ``state_topics`` (pose,
    joint_states, joints) as used.
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
        options: RosbagOptions | None = None,
    ) -> None:
        path = Path(path)
        if path.name == "metadata.yaml":
            path = path.parent
        self.path = str(path)
        self.name = self.path
        self.success = None
        opts = RosbagOptions(
            image_topics=image_topics,
            action_topic=action_topic,
            proprio_topic=proprio_topic,
            gripper_topic=gripper_topic,
            instruction=instruction,
            instruction_topic=instruction_topic,
            **(
                {}
                if options is None
                else {
                    "proprio_pose_topic": options.proprio_pose_topic,
                    "proprio_joint_states_topic": options.proprio_joint_states_topic,
                    "proprio_joints": options.proprio_joints,
                    "control_rate_hz": options.control_rate_hz,
                    "gripper_open": options.gripper_open,
                }
            ),
        )
        try:
            reader = _READERS.get(self.path)
            self._build_index(reader, opts, labelled)
        except DataError:
            raise
        except bags.BagError as err:  # a missing topic or a wrong type, size or path
            raise DataError(str(err)) from err
        except Exception as err:  # noqa: BLE001 - a corrupt bag can fail anywhere in its parser
            _READERS.drop(self.path)
            raise DataError(str(bags.read_error(self.path, err))) from err

    # -- index ----------------------------------------------------------------------------------
    def _build_index(self, reader: Any, opts: RosbagOptions, labelled: bool) -> None:
        types = bags.topic_types(reader)
        topics = self._choose_topics(types, opts, labelled)
        wanted = topics.wanted()
        bags.check_topics(self.path, types, wanted)

        # One pass over the bag; images contribute only their stamps and positions.
        streams = bags.scan(reader, wanted)
        text = streams.pop(topics.instruction).text if topics.instruction is not None else None
        joints = self._joint_series(streams, topics)
        required = {t: streams[t].stamps for t in topics.images.values()}
        for topic in (topics.action, topics.proprio, topics.pose):
            if topic is not None:
                required[topic] = streams[topic].stamps
        for joint, (stamps, _) in joints.items():
            required[f"{topics.joint_states} [{joint}]"] = stamps
        self._set_steps(streams[next(iter(topics.images.values()))].stamps, required, opts)
        self.recorded_rates = {t: bags.recorded_rate(s.stamps) for t, s in streams.items()}
        self._index_images(streams, topics.images)
        self._actions = self._action_values(types, streams, topics, opts.gripper_open)
        self.has_actions = self._actions is not None
        # A recorded TwistStamped command is a velocity; a bare array's units are unknown.
        twist = topics.action is not None and types[topics.action] == bags.TWIST_STAMPED
        self.action_space = contract.ACTION_TWIST if twist else None
        self._proprio = self._proprio_values(streams, topics, joints)
        self.has_proprio = self._proprio is not None
        self.proprio_layout = topics.proprio_layout() or contract.PROPRIO_LAYOUT
        if opts.instruction is None:
            self.instruction = text or ""
        else:
            self.instruction = opts.instruction
        self.topics = {
            "images": dict(topics.images),
            "actions": topics.action,
            "proprio": topics.proprio,
            "gripper": topics.gripper,
            "instruction": topics.instruction,
        }
        self.state_topics = {
            "pose": topics.pose,
            "joint_states": topics.joint_states,
            "joints": list(topics.joints),
        }

    def _choose_topics(
        self, types: dict[str, str], opts: RosbagOptions, labelled: bool
    ) -> _Topics:
        """The given topics, with the unambiguous guesses filled in for those left None."""

        def named(word: str, allowed: tuple[str, ...]) -> str | None:
            hits = bags.named_topics(types, word, allowed)
            return hits[0] if len(hits) == 1 else None

        image_topics = None if opts.image_topics is None else dict(opts.image_topics)
        if image_topics is None:
            image_topics = bags.guess_cameras(types)
            if image_topics is None:
                raise DataError(
                    f"{self.path}: cannot tell which image topics are which cameras; pass "
                    f"--image-topic CAMERA=TOPIC (RosbagOptions.image_topics, cameras "
                    f"{contract.CAMERAS}); the bag has: {bags.listing(types)}"
                )
        if not image_topics:
            raise DataError(
                f"{self.path}: image_topics is empty; the bag has: {bags.listing(types)}"
            )
        unknown = [c for c in image_topics if c not in contract.CAMERAS]
        if unknown:
            raise DataError(f"{self.path}: unknown cameras {unknown}; known: {contract.CAMERAS}")
        action_topic = opts.action_topic
        if labelled and action_topic is None:
            action_topic = named("action", bags.ACTION_TYPES)
        if not labelled:
            action_topic = None  # never read labels for unlabeled use
        gripper_topic = self._choose_gripper(types, action_topic, opts.gripper_topic, named)
        pose, joint_states, joints = self._choose_state(types, opts)
        proprio_topic = opts.proprio_topic
        if proprio_topic is None and pose is None and joint_states is None:
            proprio_topic = named("proprio", bags.ARRAY_TYPES)
        instruction_topic = opts.instruction_topic
        if opts.instruction is None and instruction_topic is None:
            instruction_topic = named("instruction", (bags.STRING,))
        return _Topics(
            image_topics,
            action_topic,
            proprio_topic,
            pose,
            joint_states,
            joints,
            gripper_topic,
            instruction_topic,
        )

    def _choose_gripper(
        self, types: dict[str, str], action: str | None, gripper: str | None, named: Any
    ) -> str | None:
        """The gripper topic of a TwistStamped action topic (None for other actions)."""
        if action is None or action not in types:
            return None  # unlabelled use, or check_topics names the missing action topic
        if types[action] != bags.TWIST_STAMPED:
            if gripper is not None:
                raise DataError(
                    f"{self.path}: a gripper topic ({gripper}) goes with a TwistStamped action "
                    f"topic, and {action} is {types[action]}, whose 7 values hold the gripper "
                    f"already; drop --gripper-topic (RosbagOptions.gripper_topic)"
                )
            return None
        return gripper if gripper is not None else named("gripper", bags.FLOAT_TYPES)

    def _choose_state(
        self, types: dict[str, str], opts: RosbagOptions
    ) -> tuple[str | None, str | None, tuple[str, ...]]:
        """(pose topic, joint-state topic, joints) of the standard-message proprio."""
        joints = tuple(opts.proprio_joints or ())
        joint_states = opts.proprio_joint_states_topic
        pose = opts.proprio_pose_topic
        if opts.proprio_topic is not None and (pose or joint_states or joints):
            raise DataError(
                f"{self.path}: --proprio-topic {opts.proprio_topic} (an array in the default "
                "layout) and --proprio-pose-topic/--proprio-joint-states-topic (standard "
                "messages) are alternatives; pass one of them"
            )
        dup = sorted({j for j in joints if joints.count(j) > 1})
        if dup or any(not j.strip() for j in joints):
            raise DataError(
                f"{self.path}: --proprio-joints {list(joints)} names a joint twice or an empty "
                "name; list each joint once"
            )
        if joints and joint_states is None:
            found = sorted(t for t, m in types.items() if m == bags.JOINT_STATE)
            if len(found) != 1:
                raise DataError(
                    f"{self.path}: --proprio-joints needs --proprio-joint-states-topic; the bag "
                    f"has {len(found)} sensor_msgs/JointState topics {found}"
                )
            joint_states = found[0]
        return pose, joint_states, joints

    def _joint_series(
        self, streams: dict[str, bags.Stream], topics: _Topics
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Joint -> (stamps, positions) of the messages naming it."""
        if topics.joint_states is None:
            return {}
        stream = streams[topics.joint_states]
        if not topics.joints:
            known = sorted({n for names in stream.names for n in names})
            raise DataError(
                f"{self.path}: JointState topic {topics.joint_states} given without the "
                f"joints to read; its joints: {', '.join(known) or 'none'}; {_JOINTS_HINT}"
            )
        try:
            return {
                j: bags.joint_series(self.path, topics.joint_states, stream, j)
                for j in topics.joints
            }
        except bags.BagError as err:
            raise DataError(f"{err}; {_JOINTS_HINT}") from err

    def _set_steps(
        self, clock: np.ndarray, required: dict[str, np.ndarray], opts: RosbagOptions
    ) -> None:
        """Set ``length``, ``frame_times`` (the step times, ns) and ``control_rate_hz``.

        ``clock``: the first camera's stamps; ``required``: label -> stamps of every topic a
        step needs a message of."""
        empty = [label for label, stamps in required.items() if not len(stamps)]
        if empty:
            raise DataError(f"{self.path}: no messages on {empty}")
        start = max(int(s.min()) for s in required.values())
        clock = np.sort(np.asarray(clock, np.int64), kind="stable")
        frames = clock[clock >= start]
        if not frames.size:
            raise DataError(
                f"{self.path}: no camera frame comes after a message on every required topic "
                f"({list(required)}); the last of them starts at {start} ns"
            )
        if opts.control_rate_hz is None:
            times = frames
            self.control_rate_hz = bags.recorded_rate(clock)
        else:
            end = min(int(s.max()) for s in required.values())
            times = bags.step_grid(int(frames[0]), end, float(opts.control_rate_hz))
            if not times.size:
                raise DataError(
                    f"{self.path}: the required topics {list(required)} never all have messages "
                    f"at once (one ends at {end} ns, before the first frame at {frames[0]} ns)"
                )
            self.control_rate_hz = float(opts.control_rate_hz)
        self.length = int(times.size)
        self.frame_times = times

    def _index_images(self, streams: dict[str, bags.Stream], image_topics: dict[str, str]) -> None:
        """Remember where each step's image lies in the bag, per camera."""
        self._image_topics = dict(image_topics)
        self._positions: dict[str, np.ndarray] = {}
        for cam, topic in image_topics.items():
            s = streams[topic]
            idx = bags.latest_at_or_before(s.stamps, self.frame_times)
            # (log time, occurrence) identifies the message for a time-bounded re-read.
            self._positions[cam] = np.stack([s.logtimes[idx], s.occurrences[idx]], axis=1)
        self.cameras = tuple(c for c in contract.CAMERAS if c in image_topics)

    def _picked(self, stream: bags.Stream) -> list[np.ndarray]:
        """The values of ``stream``'s latest message at or before each step (all exist)."""
        idx = bags.latest_at_or_before(stream.stamps, self.frame_times)
        return [stream.values[i] for i in idx]

    def _action_values(
        self,
        types: dict[str, str],
        streams: dict[str, bags.Stream],
        topics: _Topics,
        gripper_open: float,
    ) -> np.ndarray | None:
        """(T, ACTION_DIM) float32 actions per step, or None without an action topic."""
        if topics.action is None:
            return None
        vals = self._picked(streams[topics.action])
        if types[topics.action] == bags.TWIST_STAMPED:
            grip = np.zeros(len(vals))
            if topics.gripper is not None:
                g = streams[topics.gripper]
                idx = bags.latest_at_or_before(g.stamps, self.frame_times)
                grip = np.array(
                    [g.values[i][0] if i >= 0 else gripper_open for i in idx], np.float64
                )
            vals = [np.append(v, x) for v, x in zip(vals, grip)]
        return bags.value_matrix(
            self.path, vals, contract.ACTION_DIM, "action", topics.action
        ).astype(np.float32)

    def _proprio_values(
        self,
        streams: dict[str, bags.Stream],
        topics: _Topics,
        joints: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> np.ndarray | None:
        """(T, len(proprio_layout)) float32 robot state per step, or None without any."""
        parts = []
        if topics.proprio is not None:
            vals = self._picked(streams[topics.proprio])
            try:
                parts.append(
                    bags.value_matrix(
                        self.path, vals, len(contract.PROPRIO_LAYOUT), "proprio", topics.proprio
                    )
                )
            except bags.BagError as err:
                raise DataError(f"{err}; {_ARRAY_HINT}") from err
        if topics.pose is not None:
            vals = self._picked(streams[topics.pose])
            parts.append(bags.value_matrix(self.path, vals, 3, "pose", topics.pose))
        for stamps, positions in joints.values():
            parts.append(positions[bags.latest_at_or_before(stamps, self.frame_times)][:, None])
        if not parts:
            return None
        return np.concatenate(parts, axis=1).astype(np.float32)

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


def open_rosbags(
    path: str | Path, labelled: bool = True, options: RosbagOptions | None = None
) -> list[RosbagEpisode]:
    """A bag (folder with metadata.yaml, .mcap, .db3) or a folder of bags, one episode each.

    Says what it did with the recorded rates (one log line), and warns about bags whose
    TwistStamped commands have no gripper topic and about a gripper topic that never changes.
    """
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
    episodes = []
    for b in paths:
        try:
            episodes.append(
                RosbagEpisode(
                    b,
                    image_topics=None if opts.image_topics is None else dict(opts.image_topics),
                    action_topic=opts.action_topic,
                    proprio_topic=opts.proprio_topic,
                    gripper_topic=opts.gripper_topic,
                    instruction=opts.instruction,
                    instruction_topic=opts.instruction_topic,
                    labelled=labelled,
                    options=opts,
                )
            )
        except (DataError, OSError) as err:
            skip_or_raise(err, str(b))
    if not episodes:
        raise DataError(f"{path}: no bag could be opened")
    unlabelled = [e.name for e in episodes if labelled and not e.has_actions]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} bag(s) have no action topic (set RosbagOptions.action_topic "
            f"or --action-topic), e.g. {unlabelled[0]}",
            stacklevel=2,
        )
    _check_gripper(episodes)
    log.info("%s", rates_line(path, episodes, opts.control_rate_hz))
    return episodes


def _check_gripper(episodes: Sequence[RosbagEpisode]) -> None:
    """Warn about TwistStamped commands without a gripper topic, and about a gripper topic
    whose value never changes in any bag."""
    twist = [e for e in episodes if e.has_actions and e.action_space == contract.ACTION_TWIST]
    blind = [e for e in twist if e.topics["gripper"] is None]
    if blind:
        warnings.warn(
            f"{len(blind)} bag(s) command geometry_msgs/TwistStamped on "
            f"{blind[0].topics['actions']} and have no gripper topic, so their gripper "
            f"dimension trains as a constant 0, e.g. {blind[0].name}; pass --gripper-topic "
            "TOPIC (RosbagOptions.gripper_topic, std_msgs/Float64) with the gripper command",
            stacklevel=3,
        )
    gripped = [e for e in twist if e.topics["gripper"] is not None]
    if gripped:
        values = np.unique(
            np.concatenate([e._actions[:, contract.GRIPPER_INDEX] for e in gripped])
        )
        if values.size == 1:
            warnings.warn(
                f"gripper topic {gripped[0].topics['gripper']}: the gripper command is "
                f"{values[0]:g} at every step of {len(gripped)} bag(s) (e.g. {gripped[0].name}), "
                "so the model learns a constant gripper; check --gripper-topic",
                stacklevel=3,
            )


def rates_line(path: str | Path, episodes: Sequence[RosbagEpisode], rate: float | None) -> str:
    """One line saying how the bags under ``path`` were stepped, with the first bag's
    recorded rates."""
    if not episodes:
        return f"{path}: no bags"
    first = episodes[0]
    recorded = ", ".join(
        f"{t} {r:.1f} Hz" if r is not None else f"{t} (one message)"
        for t, r in first.recorded_rates.items()
    )
    if rate is not None:
        how = f"resampled to {rate:g} Hz steps (latest message at or before each step)"
    else:
        clock = next(iter(first.topics["images"].values()))
        how = f"stepped at the frames of {clock}"
    return (
        f"rosbag2 {path}: {len(episodes)} bag(s), {sum(e.length for e in episodes)} steps, "
        f"{how}; recorded rates (first bag): {recorded}"
    )
