"""One scan of a bag for replay evaluation: which topics play which role, and the steps.

The bag is read by ``lawm_core.bags``, the reading code training uses too, so a bag the
training loader takes is replayed with the same message types, stamps and camera guesses.

- cameras: ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topics, one per model
  camera (``camera -> topic``); when the model's cameras are known (offline, or live with
  ``--model-dir``), only those are needed and other image topics are left out. The first
  camera is the **frame clock**.
- recorded action: ``Float32MultiArray`` / ``Float64MultiArray`` with 7 values, or
  ``geometry_msgs/TwistStamped`` (the first six; the gripper from an optional ``Float64``
  topic, else not scored, with a warning naming ``--gripper-topic``).
- robot state (optional): the model-layout array (``Float32MultiArray`` /
  ``Float64MultiArray``), or a ``geometry_msgs/PoseStamped`` and a ``sensor_msgs/JointState``
  assembled into the model's ``proprio_layout`` (``proprio``). Only a model that takes robot
  state (``proprio_dim`` > 0) needs one.
- instruction (optional): the first non-empty ``std_msgs/String`` on an ``*instruction*`` topic.

Steps. Offline replay runs at the model's control rate (``step_hz``), by the rule training
resamples bags by (``lawm_core.bags.step_grid``): steps on a regular grid at that rate from the
first frame-clock message at which the model's inputs (its cameras, its robot state) and the
recorded action all have a message, to the last time they all still have one; every topic
(each camera included) contributes its latest message stamped at or before each step. A step
whose image is older than ``STALE_S`` is not evaluated, as the policy node would not act on
it. Without ``step_hz`` (live replay, where the policy node keeps its own rate) every
frame-clock message is a step. A camera message belongs (for live matching) to the step whose
time is nearest its own stamp. ``BagIndex.rates`` says which rates were found and used.

Bad input (missing or unreadable bag, missing topics, empty bag, wrong types or sizes, a
model input the bag cannot give) raises ``ReplayError`` with a message that says what and why,
and for missing topics lists the topics the bag has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import bags, contract
from lawm_policy.eval_replay import proprio as state

AUTO = "auto"
# A step whose newest image is older than this is skipped (the policy node's default
# stale_timeout_s: it would send a zero twist instead of acting on it).
STALE_S = 0.5


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
    proprio: str | None = None  # the model-layout array
    gripper: str | None = None
    instruction: str | None = None
    pose: str | None = None  # PoseStamped: ee_x/ee_y/ee_z
    joint_states: str | None = None  # JointState: joint:<name>

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
            "proprio_pose": self.pose,
            "proprio_joint_states": self.joint_states,
            "gripper": self.gripper,
            "instruction": self.instruction,
        }


@dataclass
class BagIndex:
    """One scan of a bag: the steps, recorded actions and proprio aligned to them, and for
    each camera message (in bag order, per topic) its stamp and the step it belongs to."""

    path: Path
    storage: str
    topics: dict[str, str]  # every topic in the bag -> type
    counts: dict[str, int]  # messages per topic
    selection: Selection
    frame_stamps: np.ndarray  # int64 ns (N,): the steps' times
    recorded: np.ndarray  # float64 (N, 7); NaN where nothing was recorded yet / not recorded
    # float32 (N, P) in ``proprio_layout`` order, NaN rows before the robot state is known;
    # None: no robot state is fed (none selected, or not assembled: live replay).
    proprio: np.ndarray | None
    image_stamps: dict[str, np.ndarray]  # topic -> int64 (M,) header stamps, bag order
    image_frame: dict[str, np.ndarray]  # topic -> int64 (M,) step index of each message
    frame_images: dict[str, np.ndarray]  # camera -> int64 (N,) message used per step, -1 none
    instruction: str | None = None
    proprio_layout: tuple[str, ...] | None = None  # the columns of ``proprio``
    step_hz: float | None = None  # None: one step per frame-clock message
    stale_ns: int | None = None  # steps with an image older than this are not evaluated
    topic_hz: dict[str, float | None] = field(default_factory=dict)  # measured, per topic
    notes: list[str] = field(default_factory=list)  # to state in the report's warnings

    @property
    def n_frames(self) -> int:
        return int(self.frame_stamps.size)

    @property
    def frame_times_s(self) -> np.ndarray:
        """float64 (N,): seconds since the first step."""
        return (self.frame_stamps - self.frame_stamps[0]) * 1e-9

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, raw CDR) of ``topics`` in bag order; a read failure raises
        ReplayError."""
        try:
            yield from bags.messages(self.path, topics)
        except bags.BagError as err:
            raise ReplayError(str(err)) from err

    def rates(self) -> dict[str, Any]:
        """The rates found in the bag (median message rate per selected topic and camera) and
        the step rate used."""
        sel = self.selection
        if self.step_hz is None:
            stepping = f"one step per message of the frame clock {sel.clock}"
        else:
            stepping = (
                f"a {self.step_hz:g} Hz grid from the first {sel.clock} message at which the "
                "model's inputs and the recorded action all have a message (as training "
                "resamples bags), each topic's latest message at or before each step"
            )
        return {
            "cameras_hz": {c: self.topic_hz.get(t) for c, t in sel.images.items()},
            "topics_hz": dict(self.topic_hz),
            "steps_hz": self.step_hz,
            "stepping": stepping,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "storage": self.storage,
            "topics": dict(sorted(self.topics.items())),
            "message_counts": dict(sorted(self.counts.items())),
            "frames": self.n_frames,
            "duration_s": round(float(self.frame_times_s[-1]), 6),
        }


@dataclass(frozen=True)
class ProprioRequest:
    """The robot state to select and assemble.

    ``layout``: the model's ``proprio_layout`` when it is known and the proprio is to be fed
    from the bag (offline); () for a model without robot state (no proprio topic is read);
    None: unknown (live replay: the recorded state messages are played as they are).
    ``topic`` (the model-layout array): "auto" (the one ``*proprio*`` array topic, if any),
    None (none), or a topic. ``pose``/``joint_states``: PoseStamped / JointState topics."""

    layout: tuple[str, ...] | None = None
    topic: str | None = AUTO
    pose: str | None = None
    joint_states: str | None = None


def rate_hz(stamps: np.ndarray) -> float | None:
    """The rate (Hz, 3 decimals) a topic was recorded at (``bags.recorded_rate``)."""
    hz = bags.recorded_rate(stamps)
    return None if hz is None else round(hz, 3)


def open_bag(
    path: str | Path,
    image_topics: Mapping[str, str] | None = None,
    action_topic: str | None = AUTO,
    proprio_topic: str | None = AUTO,
    gripper_topic: str | None = None,
    instruction_topic: str | None = AUTO,
    cameras: Sequence[str] | None = None,
    *,
    step_hz: float | None = None,
    proprio: ProprioRequest | None = None,
) -> BagIndex:
    """Scan a bag once and return its ``BagIndex``.

    Args:
        path: bag folder (with metadata.yaml) or a bare ``.mcap`` / ``.db3`` file.
        image_topics: camera -> Image or CompressedImage topic (the first camera is the frame
            clock); None: guessed as training guesses (``lawm_core.bags.guess_cameras``).
        action_topic: the recorded action; "auto": the one action-typed topic named
            ``*action*``.
        proprio_topic: "auto": the one array topic named ``*proprio*`` if any; None: none
            (``proprio``, when given, replaces it).
        gripper_topic: gripper (Float64) for a TwistStamped action topic; None: not scored.
        instruction_topic: "auto": the one String topic named ``*instruction*`` if any.
        cameras: the model's cameras, if known: the mapping must name these (in the model's
            order; others are left out).
        step_hz: steps on a grid at this rate (the model's control rate); None: one step per
            frame-clock message.
        proprio: the robot state to read (see ``ProprioRequest``).
    """
    request = proprio or ProprioRequest(topic=proprio_topic)
    try:
        path = bags.bag_path(path)
        reader = bags.open_reader(path)
    except bags.BagError as err:
        raise ReplayError(str(err)) from err
    try:
        types = bags.topic_types(reader)
        if not types:
            raise ReplayError(f"{path}: the bag is empty (no topics, no messages)")
        sel, notes = _select(
            types,
            path,
            image_topics,
            action_topic,
            request,
            gripper_topic,
            instruction_topic,
            cameras,
        )
        index = _scan(reader, path, types, sel, request.layout, step_hz)
        index.notes[:0] = notes
        return index
    except ReplayError:
        raise
    except state.ProprioError as err:
        raise ReplayError(f"{path}: {err}") from err
    except bags.BagError as err:
        raise ReplayError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - a damaged bag fails anywhere in its parser
        raise ReplayError(str(bags.read_error(path, err))) from err
    finally:
        bags.close_reader(reader)


def _select_cameras(
    types: Mapping[str, str],
    path: Path,
    image_topics: Mapping[str, str] | None,
    cameras: Sequence[str] | None,
    notes: list[str],
) -> dict[str, str]:
    listing = bags.listing(types)
    images = dict(image_topics) if image_topics else bags.guess_cameras(types)
    if images is None:
        n_images = sum(1 for m in types.values() if m in bags.IMAGE_TYPES)
        wanted = list(cameras) if cameras is not None else "each camera"
        raise ReplayError(
            f"{path}: cannot tell which image topics are which cameras ({n_images} image "
            f"topics); pass --image-topic CAMERA=TOPIC for {wanted}; the bag has: {listing}"
        )
    if cameras is None:
        return images
    missing = [c for c in cameras if c not in images]
    if missing:
        raise ReplayError(
            f"the model's cameras are {list(cameras)} but no image topic is given for "
            f"{missing} (given: {images}); pass --image-topic CAMERA=TOPIC for each model "
            f"camera; the bag has: {listing}"
        )
    extra = {c: t for c, t in images.items() if c not in cameras}
    if extra:
        notes.append(f"camera topics {extra} not replayed: the model takes {list(cameras)}")
    return {c: images[c] for c in cameras}


def _select_proprio(
    types: Mapping[str, str], path: Path, req: ProprioRequest, notes: list[str]
) -> tuple[str | None, str | None, str | None]:
    """(array topic, pose topic, joint-states topic) to read."""
    topic, pose, joints = req.topic, req.pose, req.joint_states
    standard = pose is not None or joints is not None
    if req.layout == ():
        given = [t for t in (None if topic == AUTO else topic, pose, joints) if t]
        if given:
            notes.append(f"the model takes no robot state: {given} not used")
        return None, None, None
    if topic == AUTO:
        hits = [] if standard else bags.named_topics(types, "proprio", bags.ARRAY_TYPES)
        topic = hits[0] if len(hits) == 1 else None
        explicit_none = False
    else:
        explicit_none = topic is None
        if topic is not None and standard:
            raise ReplayError(
                f"--proprio-topic {topic} and --proprio-pose-topic/--proprio-joint-states-topic "
                "are both given: pass either the model-layout array or the standard messages"
            )
    layout = req.layout
    if layout and standard:
        try:
            notes += state.check_layout(layout, pose, joints)
        except state.ProprioError as err:
            raise ReplayError(f"{path}: {err}") from err
    elif layout and topic is None:
        if not explicit_none:
            raise ReplayError(
                f"{path}: the model takes robot state {list(layout)} but no proprio topic is "
                f"given or named *proprio*; pass --proprio-topic TOPIC (the {len(layout)}-value "
                "array), --proprio-pose-topic / --proprio-joint-states-topic (PoseStamped / "
                "JointState), or --proprio-topic none to feed the training mean; the bag has: "
                f"{bags.listing(types)}"
            )
        notes.append(
            f"--proprio-topic none: the model takes robot state {list(layout)} and gets its "
            "training mean instead, so its actions are not the ones it would give on the robot"
        )
    return topic, pose, joints


def _select(
    types: Mapping[str, str],
    path: Path,
    image_topics: Mapping[str, str] | None,
    action_topic: str | None,
    req: ProprioRequest,
    gripper_topic: str | None,
    instruction_topic: str | None,
    cameras: Sequence[str] | None,
) -> tuple[Selection, list[str]]:
    notes: list[str] = []
    listing = bags.listing(types)
    images = _select_cameras(types, path, image_topics, cameras, notes)
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
    proprio_topic, pose, joints = _select_proprio(types, path, req, notes)
    if instruction_topic == AUTO:
        hits = bags.named_topics(types, "instruction", (bags.STRING,))
        instruction_topic = hits[0] if len(hits) == 1 else None

    wanted: dict[str, tuple[str, ...]] = {t: bags.IMAGE_TYPES for t in images.values()}
    for topic, allowed in (
        (action_topic, bags.ACTION_TYPES),
        (proprio_topic, bags.ARRAY_TYPES),
        (pose, (state.POSE_STAMPED,)),
        (joints, (state.JOINT_STATE,)),
        (gripper_topic, bags.FLOAT_TYPES),
        (instruction_topic, (bags.STRING,)),
    ):
        if topic is not None:
            wanted[topic] = allowed
    bags.check_topics(str(path), types, wanted)
    if types[action_topic] == bags.TWIST_STAMPED and gripper_topic is None:
        notes.append(
            f"the recorded action topic {action_topic} is a TwistStamped, which has no "
            "gripper: the gripper is not scored (pass --gripper-topic, the std_msgs/Float64 "
            "gripper command)"
        )
    sel = Selection(
        images=images,
        action=action_topic,
        action_type=types[action_topic],
        proprio=proprio_topic,
        gripper=gripper_topic,
        instruction=instruction_topic,
        pose=pose,
        joint_states=joints,
    )
    return sel, notes


def _steps(
    path: Path,
    sel: Selection,
    streams: Mapping[str, bags.Stream],
    layout: tuple[str, ...] | None,
    step_hz: float | None,
) -> np.ndarray:
    """int64 (N,) the steps' times. Without ``step_hz``: the frame clock's stamps. With it,
    the training loader's rule: a grid at ``step_hz`` from the first frame-clock message at
    which every input the model needs (its cameras, its robot state) and the recorded action
    have a message, to the last time they all still have one."""
    clock = streams[sel.clock].stamps
    if step_hz is None:
        return clock
    required = {t: streams[t].stamps for t in [*sel.images.values(), sel.action]}
    if sel.proprio is not None and layout:
        required[sel.proprio] = streams[sel.proprio].stamps
    if layout and (sel.pose or sel.joint_states):
        required.update(state.required_stamps(layout, str(path), *_state_streams(sel, streams)))
    empty = [t for t, st in required.items() if not len(st)]
    if empty:
        raise ReplayError(f"{path}: no messages on {empty}")
    start = max(int(st.min()) for st in required.values())
    end = min(int(st.max()) for st in required.values())
    frames = np.sort(clock[(clock >= start) & (clock <= end)])
    if not frames.size:
        raise ReplayError(
            f"{path}: no frame of {sel.clock} comes while every needed topic has a message "
            f"({sorted(required)}: from {start} ns to {end} ns)"
        )
    return bags.step_grid(int(frames[0]), end, step_hz)


def _state_streams(
    sel: Selection, streams: Mapping[str, bags.Stream]
) -> tuple[tuple[str, bags.Stream] | None, tuple[str, bags.Stream] | None]:
    """(pose topic, stream) and (joint-states topic, stream), None where not selected."""
    pose = (sel.pose, streams[sel.pose]) if sel.pose else None
    joints = (sel.joint_states, streams[sel.joint_states]) if sel.joint_states else None
    return pose, joints


def _scan(
    reader: Any,
    path: Path,
    types: Mapping[str, str],
    sel: Selection,
    layout: tuple[str, ...] | None,
    step_hz: float | None,
) -> BagIndex:
    roles = [*sel.images.values(), sel.action, sel.proprio, sel.gripper, sel.instruction]
    roles += [sel.pose, sel.joint_states]
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
    if sel.proprio is not None and not len(streams[sel.proprio]):
        raise ReplayError(f"{path}: the proprio topic {sel.proprio} has no messages")

    frame_stamps = _steps(path, sel, streams, layout, step_hz)
    n = frame_stamps.size

    def aligned(topic: str, dim: int, what: str) -> np.ndarray:
        """float64 (N, dim): the topic's latest values at or before each step, NaN rows
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
    if layout and sel.proprio is not None:  # the model's layout, as recorded
        proprio = aligned(sel.proprio, len(layout), "proprio").astype(np.float32)
    elif layout and (sel.pose or sel.joint_states):
        proprio = state.assemble(layout, frame_stamps, str(path), *_state_streams(sel, streams))

    image_stamps, image_frame, frame_images = {}, {}, {}
    for cam, topic in sel.images.items():
        stamps = streams[topic].stamps
        image_stamps[topic] = stamps
        if topic == sel.clock and step_hz is None:
            image_frame[topic] = np.arange(n, dtype=np.int64)
            frame_images[cam] = np.arange(n, dtype=np.int64)
        else:
            image_frame[topic] = bags.nearest(frame_stamps, stamps)
            frame_images[cam] = bags.latest_at_or_before(stamps, frame_stamps)
    return BagIndex(
        path=path,
        storage=bags.storage_of(path),
        topics=dict(types),
        counts=counts,
        selection=sel,
        frame_stamps=frame_stamps,
        recorded=recorded,
        proprio=proprio,
        image_stamps=image_stamps,
        image_frame=image_frame,
        frame_images=frame_images,
        instruction=streams[sel.instruction].text if sel.instruction else None,
        proprio_layout=layout if proprio is not None else None,
        step_hz=step_hz,
        stale_ns=None if step_hz is None else int(STALE_S * 1e9),
        topic_hz={t: rate_hz(st.stamps) for t, st in streams.items() if t != sel.instruction},
    )
