"""Live replay: play a bag into the running graph with rclpy and match the policy's answers.

``run_live`` publishes the recorded camera and proprio messages on their bag topic names (ROS
remapping of this node's publishers moves them), at the recorded pacing scaled by ``rate``,
each camera header restamped with the current time as it goes out: raw ``Image`` messages as
recorded, ``CompressedImage`` ones decoded (``lawm_core.bags``) and sent as rgb8 ``Image``
(the policy node takes raw images). ``match_live_outputs`` pairs the policy's ``cmd_twist``
and ``action`` messages with the frames they answer.
"""

from __future__ import annotations

import array
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rclpy
from geometry_msgs.msg import TwistStamped
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, String

from lawm_core import bags, contract
from lawm_core.errors import InputError
from lawm_policy.eval_replay.index import BagIndex, ReplayError
from lawm_policy.eval_replay.report import Evaluation, finite_or_none
from lawm_policy.qos import COMMAND, LATCHED

log = logging.getLogger("eval_replay")

NODE_NAME = "eval_replay"
DRAIN_TIMEOUT_S = 2.0  # after the last frame: wait this long at most for its answer
ACTION_SETTLE_S = 0.5  # then this long at most for the action of the last answering tick
POLL_S = 0.01


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
    ``action`` and ``cmd_twist`` publishers, the instruction's acknowledgement and a first
    ``cmd_twist`` (the node is active); ReplayError (exit code 1) when one never comes.
    """
    sel = index.selection
    if sel.proprio and index.topics[sel.proprio] != "std_msgs/msg/Float32MultiArray":
        raise ReplayError(
            f"the policy node takes proprio as std_msgs/Float32MultiArray; {sel.proprio} "
            f"is {index.topics[sel.proprio]} (use --proprio-topic none)"
        )
    # Reliable + keep-last: reaches both best-effort (the policy) and reliable subscribers.
    stream_qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=5,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
    # Our side of the command topics may queue deeper than the node's depth 1.
    outputs_qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=COMMAND.reliability,
        durability=COMMAND.durability,
    )
    context = rclpy.Context()
    rclpy.init(args=[NODE_NAME, *ros_args], context=context)
    node = rclpy.create_node(NODE_NAME, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="eval_replay_spin", daemon=True)
    lock = threading.Lock()
    twists: list[tuple[int, int, int]] = []
    actions: list[tuple[int, int, list[float]]] = []
    image_stamps: dict[int, tuple[str, int]] = {}
    clock = node.get_clock()

    def now_ns() -> int:
        return clock.now().nanoseconds

    def on_twist(msg: TwistStamped, info) -> None:
        received = int(info.get("received_timestamp") or 0) or now_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            twists.append((stamp, int(info.get("source_timestamp") or 0), received))

    def on_action(msg: Float32MultiArray, info) -> None:
        received = int(info.get("received_timestamp") or 0) or now_ns()
        with lock:
            actions.append((int(info.get("source_timestamp") or 0), received, list(msg.data)))

    action_topic = ns_topic(policy_ns, "action")
    twist_topic = ns_topic(policy_ns, "cmd_twist")
    instruction_topic = ns_topic(policy_ns, "instruction")
    topic_cam = {t: c for c, t in sel.images.items()}
    try:
        cam_pubs = {t: node.create_publisher(Image, t, stream_qos) for t in sel.images.values()}
        proprio_pub = (
            node.create_publisher(Float32MultiArray, sel.proprio, stream_qos)
            if sel.proprio
            else None
        )
        sub_action = node.create_subscription(
            Float32MultiArray, action_topic, on_action, outputs_qos
        )
        sub_twist = node.create_subscription(TwistStamped, twist_topic, on_twist, outputs_qos)
        instr_pub = None
        if instruction:
            instr_pub = node.create_publisher(String, instruction_topic, LATCHED)
            instr_pub.publish(String(data=instruction))
        spinner.start()

        # -- wait for the policy node: matched endpoints, then a first command (it is active).
        deadline = time.monotonic() + wait_timeout

        def wait(cond, what: str) -> None:
            while not cond():
                if time.monotonic() > deadline:
                    raise ReplayError(
                        f"timed out after {wait_timeout:g} s waiting for {what}; is the "
                        f"policy node running (namespace {policy_ns}) and listening on "
                        f"{[p.topic_name for p in cam_pubs.values()]}?",
                        exit_code=1,
                    )
                time.sleep(POLL_S)

        for pub in cam_pubs.values():  # topic_name: after remapping
            wait(lambda p=pub: p.get_subscription_count() > 0, f"a subscriber on {pub.topic_name}")
        wait(lambda: sub_action.get_publisher_count() > 0, f"a publisher on {action_topic}")
        wait(lambda: sub_twist.get_publisher_count() > 0, f"a publisher on {twist_topic}")
        if instr_pub is not None:
            wait(
                lambda: instr_pub.get_subscription_count() > 0,
                f"a subscriber on {instr_pub.topic_name}",
            )
            remaining = max(0.1, deadline - time.monotonic())
            if not instr_pub.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9))):
                raise ReplayError(
                    f"the instruction on {instruction_topic} was never acknowledged",
                    exit_code=1,
                )
        wait(lambda: len(twists) > 0, f"a first command on {twist_topic} (node not active?)")
        if proprio_pub is not None and proprio_pub.get_subscription_count() == 0:
            log.warning("nobody subscribes to %s: the policy runs without proprio", sel.proprio)
        with lock:
            n_before = len(twists)
            actions_before = len(actions)
        log.info("policy found; playing %d frames at %gx (%s)", index.n_frames, rate, index.path)

        # -- play: recorded pacing (log times), headers restamped with the current time.
        topics = [*sel.images.values()] + ([sel.proprio] if sel.proprio else [])
        per_topic = dict.fromkeys(topics, 0)
        published_frames = 0
        undecodable = 0
        lags: list[float] = []
        t_start = time.monotonic()
        first_log = None
        last_stamp = 0
        for topic, logtime, raw in index.messages(topics):
            first_log = logtime if first_log is None else first_log
            target = t_start + (logtime - first_log) * 1e-9 / rate
            while True:
                left = target - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.05))
            lags.append((time.monotonic() - target) * 1e3)
            k = per_topic[topic]
            per_topic[topic] += 1
            if topic == sel.proprio:
                proprio_pub.publish(bytes(raw))
                continue
            rgb = None
            if index.topics[topic] == bags.COMPRESSED_IMAGE:
                try:
                    rgb = bags.decode_image(raw, bags.COMPRESSED_IMAGE)
                except InputError as err:
                    undecodable += 1
                    log.warning("%s message %d not sent: %s", topic, k, err)
                    continue
            stamp = max(now_ns(), last_stamp + 1)  # unique: it identifies the message
            last_stamp = stamp
            with lock:
                image_stamps[stamp] = (topic, k)
            if rgb is None:
                cam_pubs[topic].publish(bags.restamp(raw, stamp))
            else:
                cam_pubs[topic].publish(rgb_image(rgb, stamp, topic_cam[topic]))
            if topic == sel.clock:
                published_frames += 1
        play_s = time.monotonic() - t_start

        # -- drain: until the last frame is answered, or DRAIN_TIMEOUT_S.
        last_frame = index.n_frames - 1
        last_stamps = {
            s for s, (t, k) in image_stamps.items() if int(index.image_frame[t][k]) == last_frame
        }
        drain_end = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < drain_end:
            with lock:
                if any(t[0] in last_stamps for t in twists[n_before:]):
                    break
            time.sleep(POLL_S)

        # The action of a tick may be taken after its twist (two topics, no order between
        # them): wait, briefly, until every answering twist can have its action.
        def actions_caught_up() -> bool:
            with lock:
                acting = sum(1 for t in twists[n_before:] if t[0] in image_stamps)
                return len(actions) - actions_before >= acting

        settle_end = time.monotonic() + ACTION_SETTLE_S
        while not actions_caught_up() and time.monotonic() < settle_end:
            time.sleep(POLL_S)
        with lock:
            outputs = LiveOutputs(
                image_stamps=dict(image_stamps),
                twists=list(twists[n_before:]),
                actions=list(actions),
                published_frames=published_frames,
            )
        ev = match_live_outputs(index, outputs)
        if undecodable:
            ev.warnings.append(f"{undecodable} compressed camera message(s) could not be decoded")
        ev.extra["replay"] = {
            "duration_s": round(play_s, 3),
            "publish_lag_ms_p50": finite_or_none(np.percentile(lags, 50) if lags else None),
            "publish_lag_ms_max": finite_or_none(max(lags) if lags else None),
            "policy_topics": {
                "action": action_topic,
                "cmd_twist": twist_topic,
                "instruction": instruction_topic if instruction else None,
            },
            # After ROS remapping (--ros-args -r bag_topic:=live_topic).
            "published_topics": {
                t: pub.topic_name
                for t, pub in [*cam_pubs.items(), (sel.proprio, proprio_pub)]
                if pub is not None
            },
        }
        return ev
    finally:
        executor.shutdown(timeout_sec=1.0)
        if spinner.is_alive():
            spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
