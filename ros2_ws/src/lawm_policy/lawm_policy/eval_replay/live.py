"""Live replay: play a bag into the running graph with rclpy and match the policy's answers.

``run_live`` publishes the recorded camera and robot-state messages on their bag topic names
(ROS remapping of this node's publishers moves them), at the recorded pacing scaled by
``rate``, each camera header (and each PoseStamped / JointState header) restamped with the
current time as it goes out: raw ``Image`` messages as recorded; ``CompressedImage`` ones as
recorded where the topic they go out on ends in ``/compressed`` (the image_transport name the
policy node subscribes as CompressedImage), else decoded (``lawm_core.bags``) and sent as rgb8
``Image``. Before playing it reads the node's parameters (``model_dir``, ``camera_topics``,
``control_rate_hz``): the model's sidecar gives the gripper convention the answers are scored
by and the control rate stated beside the cameras' rates. ``match_live_outputs`` pairs the
policy's ``cmd_twist_image_time`` and ``action`` messages with the frames they answer (the
gripper is scored from the raw ``action``, not from ``cmd_gripper``, which the node sends on
change only).
"""

from __future__ import annotations

import array
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from rclpy.publisher import Publisher
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, String

from lawm_core import bags, contract
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.sidecar import PolicySidecar
from lawm_policy.eval_replay.index import BagIndex, ReplayError
from lawm_policy.eval_replay.proprio import JOINT_STATE, POSE_STAMPED
from lawm_policy.eval_replay.report import Evaluation, GripperScoring, finite_or_none
from lawm_policy.qos import COMMAND_RECORDER, LATCHED, REPLAY_STREAM

log = logging.getLogger("eval_replay")

NODE_NAME = "eval_replay"
DRAIN_TIMEOUT_S = 2.0  # after the last frame: wait this long at most for its answer
ACTION_SETTLE_S = 0.5  # then this long at most for the action of the last answering tick
POLL_S = 0.01
PARAMETERS_TIMEOUT_S = 5.0  # at most this long for the node's parameters
# The policy node's parameters read before playing.
NODE_PARAMETERS = ("model_dir", "camera_topics", "control_rate_hz")
COMPRESSED_SUFFIX = "/compressed"  # image_transport's topic: the node takes CompressedImage
# Robot-state messages by type: their class, and whether their header is restamped.
STATE_TYPES = {
    "std_msgs/msg/Float32MultiArray": (Float32MultiArray, False),
    POSE_STAMPED: (PoseStamped, True),
    JOINT_STATE: (JointState, True),
}


@dataclass
class LiveOutputs:
    """What a live replay saw. Times are ns on the system clock (ROS time, no sim time).

    ``image_stamps``: restamped header stamp -> (topic, k-th message on that topic).
    ``twists``: (header stamp, source timestamp, receipt time) per ``cmd_twist_image_time``
    message (the twist of a command computed from images, stamped with the newest image used).
    ``actions``: (source timestamp, receipt time, values) per ``action`` message.
    """

    image_stamps: dict[int, tuple[str, int]]
    twists: list[tuple[int, int, int]]
    actions: list[tuple[int, int, Sequence[float]]]
    published_frames: int


def match_live_outputs(index: BagIndex, outputs: LiveOutputs) -> Evaluation:
    """Match the policy's outputs to the frames they came from.

    A ``cmd_twist_image_time`` twist whose header stamp is a stamp we gave an image answers
    that image's frame (the policy publishes it right after each ``cmd_twist`` computed from
    images, stamped with the newest image used; ``cmd_twist`` itself carries its publish time);
    the first such twist per frame counts, its latency is receipt - stamp. Its raw action is the
    ``~/action`` the node published in the same tick, just before the twist: in source-time
    order, the action seen since the previous twist. A twist with a stamp we never gave (another
    publisher's images) matches no frame and closes no action.
    """
    n = index.n_frames
    predicted = np.full((n, contract.ACTION_DIM), np.nan)
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
            if values.shape == (contract.ACTION_DIM,):
                predicted[frame] = values
    return Evaluation(
        mode="live",
        predicted=predicted,
        latency_ms=latency,
        answered=answered,
        published=outputs.published_frames,
        latency_what="restamped image header stamp -> receipt of its command (the "
        "cmd_twist_image_time twist sent right after the cmd_twist; includes waiting for the "
        "policy's next control tick)",
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


def ns_topic(ns: str, name: str) -> str:
    """``name`` in the namespace ``ns`` ("" or "/" for none)."""
    ns = "/" + ns.strip("/") if ns.strip("/") else ""
    return f"{ns}/{name}"


def rgb_image(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    """An rgb8 ``sensor_msgs/Image`` of ``rgb`` (H, W, 3) uint8, stamped ``stamp_ns``."""
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = array.array("B", np.ascontiguousarray(rgb).tobytes())
    return msg


# ------------------------------------------------------------------------------ live replay
@dataclass(frozen=True)
class PolicyTopics:
    """The policy node's topics under its namespace."""

    node: str  # the node's fully qualified name (its parameter services)
    action: str
    cmd_twist: str
    cmd_twist_image_time: str
    instruction: str

    @classmethod
    def under(cls, policy_ns: str) -> PolicyTopics:
        return cls(
            node=ns_topic(policy_ns, "").rstrip("/") or "/",
            action=ns_topic(policy_ns, "action"),
            cmd_twist=ns_topic(policy_ns, "cmd_twist"),
            cmd_twist_image_time=ns_topic(policy_ns, "cmd_twist_image_time"),
            instruction=ns_topic(policy_ns, "instruction"),
        )


class _RosSession:
    """A private rclpy context holding this process's node, spun by a daemon executor thread
    (started with ``spinner.start()`` once the endpoints exist). A context manager: leaving it
    stops the executor, destroys the node and shuts the context down."""

    def __init__(self, ros_args: Sequence[str]) -> None:
        self.context = rclpy.Context()
        rclpy.init(args=[NODE_NAME, *ros_args], context=self.context)
        self.node = rclpy.create_node(NODE_NAME, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(
            target=self.executor.spin, name="eval_replay_spin", daemon=True
        )
        self._clock = self.node.get_clock()

    def now_ns(self) -> int:
        """The node's current time, ns."""
        return self._clock.now().nanoseconds

    def __enter__(self) -> _RosSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        if self.spinner.is_alive():
            self.spinner.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@dataclass(frozen=True)
class _Counts:
    """How many twists and actions had arrived at some moment."""

    twists: int
    actions: int


class _OutputRecorder:
    """The policy's outputs as they arrive (executor thread) and the stamps given to the
    images sent (playing thread), behind one lock. Same layouts as ``LiveOutputs``:
    ``twists`` (header stamp, source timestamp, receipt time) ns of ``cmd_twist_image_time``,
    ``actions`` (source timestamp, receipt time, values (ACTION_DIM,)), ``image_stamps``
    stamp -> (topic, k); ``commands``: how many ``cmd_twist`` arrived (any: the node acts)."""

    def __init__(self, now_ns: Callable[[], int]) -> None:
        self._now_ns = now_ns
        self.lock = threading.Lock()
        self.commands = 0
        self.twists: list[tuple[int, int, int]] = []
        self.actions: list[tuple[int, int, list[float]]] = []
        self.image_stamps: dict[int, tuple[str, int]] = {}

    def on_command(self, msg: TwistStamped) -> None:
        with self.lock:
            self.commands += 1

    def on_image_time(self, msg: TwistStamped, info) -> None:
        received = int(info.get("received_timestamp") or 0) or self._now_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.twists.append((stamp, int(info.get("source_timestamp") or 0), received))

    def on_action(self, msg: Float32MultiArray, info) -> None:
        received = int(info.get("received_timestamp") or 0) or self._now_ns()
        with self.lock:
            self.actions.append((int(info.get("source_timestamp") or 0), received, list(msg.data)))

    def has_command(self) -> bool:
        with self.lock:
            return self.commands > 0

    def counts(self) -> _Counts:
        with self.lock:
            return _Counts(twists=len(self.twists), actions=len(self.actions))

    def stamp_image(self, stamp: int, topic: str, k: int) -> None:
        """Remember that the ``k``-th message on ``topic`` went out stamped ``stamp`` (ns)."""
        with self.lock:
            self.image_stamps[stamp] = (topic, k)

    def stamps_of_frame(self, index: BagIndex, frame: int) -> set[int]:
        """The stamps given to the images of ``frame``."""
        with self.lock:
            items = list(self.image_stamps.items())
        return {s for s, (t, k) in items if int(index.image_frame[t][k]) == frame}

    def answered_any(self, stamps: set[int], since: _Counts) -> bool:
        """Whether a twist since ``since`` answers one of ``stamps``."""
        with self.lock:
            return any(t[0] in stamps for t in self.twists[since.twists :])

    def actions_caught_up(self, since: _Counts) -> bool:
        """Whether, since ``since``, as many actions came as twists answering our images."""
        with self.lock:
            acting = sum(1 for t in self.twists[since.twists :] if t[0] in self.image_stamps)
            return len(self.actions) - since.actions >= acting

    def outputs(self, since: _Counts, published_frames: int) -> LiveOutputs:
        """A copy of what was seen: the twists since ``since``, every action."""
        with self.lock:
            return LiveOutputs(
                image_stamps=dict(self.image_stamps),
                twists=list(self.twists[since.twists :]),
                actions=list(self.actions),
                published_frames=published_frames,
            )


def _resolve_in(policy_ns: str, topic: str) -> str:
    """A topic name of the node ``policy_ns`` (its fully qualified name) as the graph sees it:
    ``~/x`` under the node's name, relative names in its namespace."""
    topic = topic.strip()
    if topic.startswith("/"):
        return topic
    if topic.startswith("~/"):
        return ns_topic(policy_ns, topic[2:])
    return ns_topic(policy_ns.rstrip("/").rpartition("/")[0], topic)


@dataclass
class _Endpoints:
    """This node's publishers (on the bag's topic names, movable by remapping) and its
    subscriptions to the policy's outputs."""

    cameras: dict[str, Publisher]  # bag camera topic -> its publisher
    compressed: set[str]  # bag camera topics that go out as recorded CompressedImages
    states: dict[str, Publisher]  # bag robot-state topic -> its publisher
    instruction: Publisher | None  # latched; None without an instruction
    action_sub: Subscription
    twist_sub: Subscription
    image_time_sub: Subscription
    parameters: AsyncParameterClient

    @classmethod
    def open(
        cls,
        node: Node,
        index: BagIndex,
        topics: PolicyTopics,
        instruction: str | None,
        recorder: _OutputRecorder,
    ) -> _Endpoints:
        """Create the endpoints on ``node`` and publish the instruction (latched), if any.
        A camera topic that goes out (after remapping) on a ``/compressed`` name is published
        as CompressedImage, which the bag must then have recorded."""
        sel = index.selection
        cameras: dict[str, Publisher] = {}
        compressed: set[str] = set()
        for topic in sel.images.values():
            live = node.resolve_topic_name(topic)
            if live.endswith(COMPRESSED_SUFFIX):
                if index.topics[topic] != bags.COMPRESSED_IMAGE:
                    raise ReplayError(
                        f"{topic} goes out on {live}, a {COMPRESSED_SUFFIX} topic the policy "
                        f"node subscribes as CompressedImage, but the bag's {topic} is "
                        f"{index.topics[topic]}; remap it to a raw image topic"
                    )
                compressed.add(topic)
            msg_type = CompressedImage if topic in compressed else Image
            cameras[topic] = node.create_publisher(msg_type, topic, REPLAY_STREAM)
        states = {
            t: node.create_publisher(STATE_TYPES[index.topics[t]][0], t, REPLAY_STREAM)
            for t in (sel.proprio, sel.pose, sel.joint_states)
            if t is not None
        }
        action_sub = node.create_subscription(
            Float32MultiArray, topics.action, recorder.on_action, COMMAND_RECORDER
        )
        twist_sub = node.create_subscription(
            TwistStamped, topics.cmd_twist, recorder.on_command, COMMAND_RECORDER
        )
        image_time_sub = node.create_subscription(
            TwistStamped, topics.cmd_twist_image_time, recorder.on_image_time, COMMAND_RECORDER
        )
        parameters = AsyncParameterClient(node, topics.node)
        instruction_pub = None
        if instruction:
            instruction_pub = node.create_publisher(String, topics.instruction, LATCHED)
            instruction_pub.publish(String(data=instruction))
        return cls(
            cameras,
            compressed,
            states,
            instruction_pub,
            action_sub,
            twist_sub,
            image_time_sub,
            parameters,
        )

    def published_topics(self) -> dict[str, str]:
        """Bag topic -> the topic its messages go out on, after ROS remapping."""
        return {t: pub.topic_name for t, pub in [*self.cameras.items(), *self.states.items()]}


@dataclass
class _Playback:
    """What playing the bag did."""

    published_frames: int = 0  # messages sent on the frame-clock camera
    undecodable: int = 0  # compressed camera messages not sent
    lags_ms: list[float] = field(default_factory=list)  # per message: late by, vs the pacing
    duration_s: float = 0.0


@dataclass
class _NodeSetup:
    """What the policy node said about itself (its parameters; empty where unanswered) and
    the model sidecar its ``model_dir`` (or ``--model-dir``) holds."""

    parameters: dict[str, Any]
    spec: PolicySidecar | None
    spec_source: str  # where the sidecar came from, or why there is none
    warnings: list[str] = field(default_factory=list)


def _check_proprio_type(index: BagIndex) -> None:
    """ReplayError (exit code 2) when the proprio topic is not a Float32MultiArray."""
    sel = index.selection
    if sel.proprio and index.topics[sel.proprio] != "std_msgs/msg/Float32MultiArray":
        raise ReplayError(
            f"the policy node takes proprio as std_msgs/Float32MultiArray; {sel.proprio} "
            f"is {index.topics[sel.proprio]} (use --proprio-topic none)"
        )


def _read_parameters(client: AsyncParameterClient, timeout_s: float) -> dict[str, Any]:
    """The node's ``NODE_PARAMETERS`` (name -> value; unset ones left out), or {} when its
    parameter services do not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    if not client.wait_for_services(timeout_sec=timeout_s):
        return {}
    future = client.get_parameters(list(NODE_PARAMETERS))
    while not future.done():
        if time.monotonic() > deadline:
            future.cancel()
            return {}
        time.sleep(POLL_S)
    response = future.result()
    if response is None:
        return {}
    out = {}
    for name, value in zip(NODE_PARAMETERS, response.values):
        python = parameter_value_to_python(value)
        if python is not None:
            out[name] = list(python) if isinstance(python, (list, tuple)) else python
    return out


def _node_setup(
    params: dict[str, Any],
    model_dir: str | None,
    policy_ns: str,
    index: BagIndex,
    published: dict[str, str],
) -> _NodeSetup:
    """The sidecar of the model the node runs (``model_dir`` given here, else the node's
    parameter) and warnings about cameras that reach another camera's topic, or none."""
    where = model_dir or params.get("model_dir") or ""
    source = "--model-dir" if model_dir else f"the policy node's model_dir {where!r}"
    spec, warnings = None, []
    if where:
        try:
            spec = PolicySidecar.read(Path(where))
            spec_source = f"model sidecar {Path(where).resolve()} ({source})"
        except ModelLoadError as err:
            spec_source = f"{source} unreadable here ({err}); pass --model-dir"
    else:
        spec_source = "the policy node's model_dir is unknown (no answer); pass --model-dir"
    if spec is None:
        warnings.append(f"model sidecar not read: {spec_source}")
    node_topics = params.get("camera_topics")
    if spec is not None and node_topics:
        node_cams = {
            _resolve_in(policy_ns, t): spec.cameras[i]
            for i, t in enumerate(node_topics)
            if i < len(spec.cameras)
        }
        for cam, topic in index.selection.images.items():
            got = node_cams.get(published[topic])
            if got is not None and got != cam:
                warnings.append(
                    f"bag camera {cam} ({topic}) goes to {published[topic]}, the node's "
                    f"{got} camera topic"
                )
        fed = set(published.values())
        starved = {c: t for t, c in node_cams.items() if t not in fed}
        if starved:
            warnings.append(
                f"the node's camera topics {starved} get no images from this replay (it "
                "acts only with every camera): pass --image-topic / remap with --ros-args -r"
            )
    return _NodeSetup(params, spec, spec_source, warnings)


def _listened_cameras(
    endpoints: _Endpoints, params: dict[str, Any], policy_ns: str
) -> dict[str, Publisher]:
    """Our camera publishers the node subscribes to by its ``camera_topics`` (all of them
    when that parameter is unknown). ReplayError when it takes none of them."""
    node_topics = params.get("camera_topics")
    if not node_topics:
        return dict(endpoints.cameras)
    wanted = {_resolve_in(policy_ns, t) for t in node_topics}
    listened = {t: p for t, p in endpoints.cameras.items() if p.topic_name in wanted}
    if not listened:
        raise ReplayError(
            f"the policy node's camera_topics are {sorted(wanted)}, this replay publishes the "
            f"cameras on {sorted(p.topic_name for p in endpoints.cameras.values())}; pass "
            "--image-topic CAMERA=TOPIC or remap with --ros-args -r BAG_TOPIC:=NODE_TOPIC"
        )
    return listened


def _wait_for_policy(
    endpoints: _Endpoints,
    recorder: _OutputRecorder,
    topics: PolicyTopics,
    *,
    policy_ns: str,
    wait_timeout: float,
) -> dict[str, Any]:
    """Wait, up to ``wait_timeout`` s in all, for the policy node: publishers of ``action``,
    ``cmd_twist`` and ``cmd_twist_image_time``; its parameters (``NODE_PARAMETERS``,
    returned; {} when unanswered); subscribers on those of our camera topics it listens to;
    the instruction acknowledged; then a first ``cmd_twist`` (the node is active). ReplayError
    (exit code 1) when one never comes, (exit code 2) when it listens to none of our
    cameras."""
    deadline = time.monotonic() + wait_timeout

    def wait(cond: Callable[[], bool], what: str) -> None:
        while not cond():
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"timed out after {wait_timeout:g} s waiting for {what}; is the "
                    f"policy node running (namespace {policy_ns}) and listening on "
                    f"{[p.topic_name for p in endpoints.cameras.values()]}?",
                    exit_code=1,
                )
            time.sleep(POLL_S)

    wait(lambda: endpoints.action_sub.get_publisher_count() > 0, f"a publisher on {topics.action}")
    wait(
        lambda: endpoints.twist_sub.get_publisher_count() > 0,
        f"a publisher on {topics.cmd_twist}",
    )
    wait(
        lambda: endpoints.image_time_sub.get_publisher_count() > 0,
        f"a publisher on {topics.cmd_twist_image_time}",
    )
    left = max(0.1, min(PARAMETERS_TIMEOUT_S, deadline - time.monotonic()))
    params = _read_parameters(endpoints.parameters, left)
    for pub in _listened_cameras(endpoints, params, policy_ns).values():
        wait(lambda p=pub: p.get_subscription_count() > 0, f"a subscriber on {pub.topic_name}")
    instr_pub = endpoints.instruction
    if instr_pub is not None:
        wait(
            lambda: instr_pub.get_subscription_count() > 0,
            f"a subscriber on {instr_pub.topic_name}",
        )
        remaining = max(0.1, deadline - time.monotonic())
        if not instr_pub.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9))):
            raise ReplayError(
                f"the instruction on {topics.instruction} was never acknowledged",
                exit_code=1,
            )
    wait(recorder.has_command, f"a first command on {topics.cmd_twist} (node not active?)")
    return params


def _sleep_until(target: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``target``."""
    while True:
        left = target - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def _play(
    index: BagIndex,
    endpoints: _Endpoints,
    recorder: _OutputRecorder,
    *,
    rate: float,
    now_ns: Callable[[], int],
) -> _Playback:
    """Send the selected camera and robot-state messages at the recorded pacing (log times)
    scaled by ``rate``. The proprio array goes out as recorded, PoseStamped and JointState
    restamped with the current time; each camera message gets a unique header stamp of the
    current time (``recorder.stamp_image``): raw Images and the CompressedImages of
    ``endpoints.compressed`` as recorded, other CompressedImages decoded to rgb8 Images
    (undecodable ones skipped with a warning)."""
    sel = index.selection
    topics = [*sel.images.values(), *endpoints.states]
    topic_cam = {t: c for c, t in sel.images.items()}
    per_topic = dict.fromkeys(topics, 0)
    played = _Playback()
    t_start = time.monotonic()
    first_log = None
    last_stamp = 0
    for topic, logtime, raw in index.messages(topics):
        first_log = logtime if first_log is None else first_log
        target = t_start + (logtime - first_log) * 1e-9 / rate
        _sleep_until(target)
        played.lags_ms.append((time.monotonic() - target) * 1e3)
        k = per_topic[topic]
        per_topic[topic] += 1
        if topic in endpoints.states:
            restamped = STATE_TYPES[index.topics[topic]][1]
            data = bags.restamp(raw, now_ns()) if restamped else bytes(raw)
            endpoints.states[topic].publish(data)
            continue
        rgb = None
        if index.topics[topic] == bags.COMPRESSED_IMAGE and topic not in endpoints.compressed:
            try:
                rgb = bags.decode_image(raw, bags.COMPRESSED_IMAGE)
            except InputError as err:
                played.undecodable += 1
                log.warning("%s message %d not sent: %s", topic, k, err)
                continue
        stamp = max(now_ns(), last_stamp + 1)  # unique: it identifies the message
        last_stamp = stamp
        recorder.stamp_image(stamp, topic, k)
        if rgb is None:
            endpoints.cameras[topic].publish(bags.restamp(raw, stamp))
        else:
            endpoints.cameras[topic].publish(rgb_image(rgb, stamp, topic_cam[topic]))
        if topic == sel.clock:
            played.published_frames += 1
    played.duration_s = time.monotonic() - t_start
    return played


def _drain(index: BagIndex, recorder: _OutputRecorder, since: _Counts) -> None:
    """Wait until the last frame is answered (DRAIN_TIMEOUT_S at most), then, as the action
    of a tick may arrive after its twist (two topics, no order between them), until every
    answering twist can have its action (ACTION_SETTLE_S at most)."""
    last_stamps = recorder.stamps_of_frame(index, index.n_frames - 1)
    drain_end = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < drain_end:
        if recorder.answered_any(last_stamps, since):
            break
        time.sleep(POLL_S)
    settle_end = time.monotonic() + ACTION_SETTLE_S
    while not recorder.actions_caught_up(since) and time.monotonic() < settle_end:
        time.sleep(POLL_S)


def _replay_summary(
    played: _Playback,
    topics: PolicyTopics,
    endpoints: _Endpoints,
    *,
    instruction: str | None,
) -> dict[str, Any]:
    """The report's ``replay`` section: pacing, the policy's topics, where we published."""
    lags = played.lags_ms
    return {
        "duration_s": round(played.duration_s, 3),
        "publish_lag_ms_p50": finite_or_none(np.percentile(lags, 50) if lags else None),
        "publish_lag_ms_max": finite_or_none(max(lags) if lags else None),
        "policy_topics": {
            "action": topics.action,
            "cmd_twist": topics.cmd_twist,
            "cmd_twist_image_time": topics.cmd_twist_image_time,
            "instruction": topics.instruction if instruction else None,
        },
        # After ROS remapping (--ros-args -r bag_topic:=live_topic).
        "published_topics": endpoints.published_topics(),
        # Camera topics that went out as the recorded CompressedImages (the others: Image).
        "compressed_as_recorded": sorted(endpoints.compressed),
    }


def _live_rates(index: BagIndex, setup: _NodeSetup, rate: float) -> dict[str, Any]:
    """The report's ``rates``: the cameras' recorded rates beside the model's and the node's
    control rates (the node decides at its own rate, on the newest images it has)."""
    model_hz = setup.spec.control_rate_hz if setup.spec is not None else None
    node_hz = setup.parameters.get("control_rate_hz")
    running_hz = model_hz if node_hz in (None, 0, 0.0) else float(node_hz)
    out = {
        **index.rates(),
        "played_at": f"the recorded pacing x {rate:g}",
        "model_control_rate_hz": model_hz,
        "node_control_rate_hz": running_hz,
    }
    clock_hz = index.topic_hz.get(index.selection.clock)
    if clock_hz and running_hz:
        out["note"] = (
            f"frame clock {index.selection.clock} at {clock_hz * rate:g} Hz as played; the node "
            f"decides at {running_hz:g} Hz"
            + ("; it reuses images between frames" if clock_hz * rate < running_hz else "")
        )
    return out


def run_live(
    index: BagIndex,
    *,
    instruction: str | None,
    policy_ns: str,
    rate: float,
    wait_timeout: float,
    ros_args: Sequence[str] = (),
    model_dir: str | None = None,
) -> Evaluation:
    """Play the bag to the policy node under ``policy_ns`` and match its outputs.

    Before playing, wait (up to ``wait_timeout`` s) for the policy's ``action``,
    ``cmd_twist`` and ``cmd_twist_image_time`` publishers, read its parameters, wait for its
    subscriptions to our camera topics, the instruction's acknowledgement and a first
    ``cmd_twist`` (the node is active); ReplayError (exit code 1) when one never comes. The
    gripper is scored by the convention of the node's model (``model_dir``, else the node's
    ``model_dir`` parameter; the sign convention, stated, when neither is readable).
    """
    _check_proprio_type(index)
    topics = PolicyTopics.under(policy_ns)
    with _RosSession(ros_args) as ros:
        recorder = _OutputRecorder(ros.now_ns)
        endpoints = _Endpoints.open(ros.node, index, topics, instruction, recorder)
        ros.spinner.start()
        params = _wait_for_policy(
            endpoints, recorder, topics, policy_ns=policy_ns, wait_timeout=wait_timeout
        )
        setup = _node_setup(params, model_dir, policy_ns, index, endpoints.published_topics())
        for topic, pub in endpoints.states.items():
            if pub.get_subscription_count() == 0:
                log.warning("nobody subscribes to %s: the policy does not get it", topic)
        for warning in setup.warnings:
            log.warning("%s", warning)
        since = recorder.counts()
        log.info("policy found; playing %d frames at %gx (%s)", index.n_frames, rate, index.path)
        played = _play(index, endpoints, recorder, rate=rate, now_ns=ros.now_ns)
        _drain(index, recorder, since)
        ev = match_live_outputs(index, recorder.outputs(since, played.published_frames))
        ev.warnings[:0] = setup.warnings
        if played.undecodable:
            ev.warnings.append(
                f"{played.undecodable} compressed camera message(s) could not be decoded"
            )
        if setup.spec is not None:
            ev.gripper = GripperScoring.of_model(setup.spec, setup.spec_source)
        else:
            ev.gripper = GripperScoring.assumed(f"the sign convention ({setup.spec_source})")
        ev.extra["rates"] = _live_rates(index, setup, rate)
        ev.extra["policy_node"] = {
            "parameters": params,
            "model_sidecar": setup.spec_source,
        }
        ev.extra["replay"] = _replay_summary(played, topics, endpoints, instruction=instruction)
        return ev
