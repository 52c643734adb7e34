"""Live replay: play a bag into the running graph with rclpy and match the policy's answers.

``run_live`` publishes the recorded camera and proprio messages on their bag topic names (ROS
remapping of this node's publishers moves them), at the recorded pacing scaled by ``rate``,
each camera header restamped with the current time as it goes out: raw ``Image`` messages as
recorded, ``CompressedImage`` ones decoded (``lawm_core.bags``) and sent as rgb8 ``Image``
(the policy node takes raw images). ``match_live_outputs`` pairs the policy's
``cmd_twist_image_time`` and ``action`` messages with the frames they answer.
"""

from __future__ import annotations

import array
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import TwistStamped
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.subscription import Subscription
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, String

from lawm_core import bags, contract
from lawm_core.errors import InputError
from lawm_policy.eval_replay.index import BagIndex, ReplayError, Selection
from lawm_policy.eval_replay.report import Evaluation, finite_or_none
from lawm_policy.qos import COMMAND_RECORDER, LATCHED, REPLAY_STREAM

log = logging.getLogger("eval_replay")

NODE_NAME = "eval_replay"
DRAIN_TIMEOUT_S = 2.0  # after the last frame: wait this long at most for its answer
ACTION_SETTLE_S = 0.5  # then this long at most for the action of the last answering tick
POLL_S = 0.01


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

    action: str
    cmd_twist: str
    cmd_twist_image_time: str
    instruction: str

    @classmethod
    def under(cls, policy_ns: str) -> PolicyTopics:
        return cls(
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


@dataclass
class _Endpoints:
    """This node's publishers (on the bag's topic names, movable by remapping) and its
    subscriptions to the policy's outputs."""

    cameras: dict[str, Publisher]  # bag camera topic -> its publisher
    proprio: Publisher | None
    instruction: Publisher | None  # latched; None without an instruction
    action_sub: Subscription
    twist_sub: Subscription
    image_time_sub: Subscription

    @classmethod
    def open(
        cls,
        node: Node,
        sel: Selection,
        topics: PolicyTopics,
        instruction: str | None,
        recorder: _OutputRecorder,
    ) -> _Endpoints:
        """Create the endpoints on ``node`` and publish the instruction (latched), if any."""
        cameras = {t: node.create_publisher(Image, t, REPLAY_STREAM) for t in sel.images.values()}
        proprio = (
            node.create_publisher(Float32MultiArray, sel.proprio, REPLAY_STREAM)
            if sel.proprio
            else None
        )
        action_sub = node.create_subscription(
            Float32MultiArray, topics.action, recorder.on_action, COMMAND_RECORDER
        )
        twist_sub = node.create_subscription(
            TwistStamped, topics.cmd_twist, recorder.on_command, COMMAND_RECORDER
        )
        image_time_sub = node.create_subscription(
            TwistStamped, topics.cmd_twist_image_time, recorder.on_image_time, COMMAND_RECORDER
        )
        instruction_pub = None
        if instruction:
            instruction_pub = node.create_publisher(String, topics.instruction, LATCHED)
            instruction_pub.publish(String(data=instruction))
        return cls(cameras, proprio, instruction_pub, action_sub, twist_sub, image_time_sub)

    def published_topics(self, proprio_topic: str | None) -> dict[str, str]:
        """Bag topic -> the topic its messages go out on, after ROS remapping."""
        return {
            t: pub.topic_name
            for t, pub in [*self.cameras.items(), (proprio_topic, self.proprio)]
            if pub is not None
        }


@dataclass
class _Playback:
    """What playing the bag did."""

    published_frames: int = 0  # messages sent on the frame-clock camera
    undecodable: int = 0  # compressed camera messages not sent
    lags_ms: list[float] = field(default_factory=list)  # per message: late by, vs the pacing
    duration_s: float = 0.0


def _check_proprio_type(index: BagIndex) -> None:
    """ReplayError (exit code 2) when the proprio topic is not a Float32MultiArray."""
    sel = index.selection
    if sel.proprio and index.topics[sel.proprio] != "std_msgs/msg/Float32MultiArray":
        raise ReplayError(
            f"the policy node takes proprio as std_msgs/Float32MultiArray; {sel.proprio} "
            f"is {index.topics[sel.proprio]} (use --proprio-topic none)"
        )


def _wait_for_policy(
    endpoints: _Endpoints,
    recorder: _OutputRecorder,
    topics: PolicyTopics,
    *,
    policy_ns: str,
    wait_timeout: float,
) -> None:
    """Wait, up to ``wait_timeout`` s in all, for the policy node: subscribers on our camera
    topics, publishers of ``action``, ``cmd_twist`` and ``cmd_twist_image_time``, the
    instruction acknowledged, then a first ``cmd_twist`` (the node is active). ReplayError
    (exit code 1) when one never comes."""
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

    for pub in endpoints.cameras.values():  # topic_name: after remapping
        wait(lambda p=pub: p.get_subscription_count() > 0, f"a subscriber on {pub.topic_name}")
    wait(lambda: endpoints.action_sub.get_publisher_count() > 0, f"a publisher on {topics.action}")
    wait(
        lambda: endpoints.twist_sub.get_publisher_count() > 0,
        f"a publisher on {topics.cmd_twist}",
    )
    wait(
        lambda: endpoints.image_time_sub.get_publisher_count() > 0,
        f"a publisher on {topics.cmd_twist_image_time}",
    )
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
    """Send the selected camera and proprio messages at the recorded pacing (log times)
    scaled by ``rate``. Proprio goes out as recorded; each camera message gets a unique
    header stamp of the current time (``recorder.stamp_image``), raw Images as recorded,
    CompressedImages decoded to rgb8 Images (undecodable ones skipped with a warning)."""
    sel = index.selection
    topics = [*sel.images.values()] + ([sel.proprio] if sel.proprio else [])
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
        if topic == sel.proprio:
            endpoints.proprio.publish(bytes(raw))
            continue
        rgb = None
        if index.topics[topic] == bags.COMPRESSED_IMAGE:
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
    proprio_topic: str | None,
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
        "published_topics": endpoints.published_topics(proprio_topic),
    }


def run_live(
    index: BagIndex,
    *,
    instruction: str | None,
    policy_ns: str,
    rate: float,
    wait_timeout: float,
    ros_args: Sequence[str] = (),
) -> Evaluation:
    """Play the bag to the policy node under ``policy_ns`` and match its outputs.

    Before playing, wait (up to ``wait_timeout`` s) for the policy's camera subscriptions, its
    ``action``, ``cmd_twist`` and ``cmd_twist_image_time`` publishers, the instruction's
    acknowledgement and a first
    ``cmd_twist`` (the node is active); ReplayError (exit code 1) when one never comes.
    """
    sel = index.selection
    _check_proprio_type(index)
    topics = PolicyTopics.under(policy_ns)
    with _RosSession(ros_args) as ros:
        recorder = _OutputRecorder(ros.now_ns)
        endpoints = _Endpoints.open(ros.node, sel, topics, instruction, recorder)
        ros.spinner.start()
        _wait_for_policy(
            endpoints, recorder, topics, policy_ns=policy_ns, wait_timeout=wait_timeout
        )
        if endpoints.proprio is not None and endpoints.proprio.get_subscription_count() == 0:
            log.warning("nobody subscribes to %s: the policy runs without proprio", sel.proprio)
        since = recorder.counts()
        log.info("policy found; playing %d frames at %gx (%s)", index.n_frames, rate, index.path)
        played = _play(index, endpoints, recorder, rate=rate, now_ns=ros.now_ns)
        _drain(index, recorder, since)
        ev = match_live_outputs(index, recorder.outputs(since, played.published_frames))
        if played.undecodable:
            ev.warnings.append(
                f"{played.undecodable} compressed camera message(s) could not be decoded"
            )
        ev.extra["replay"] = _replay_summary(
            played, topics, endpoints, proprio_topic=sel.proprio, instruction=instruction
        )
        return ev
