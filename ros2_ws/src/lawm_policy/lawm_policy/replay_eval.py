"""Rosbag replay evaluation of the LAWM policy: live (through a running policy node) or offline.

    replay_eval --bag BAG --out DIR [--image-topic CAMERA=TOPIC ...] [--action-topic T]
                [--proprio-topic T|auto|none] [--gripper-topic T] [--instruction TEXT]
                [--policy-ns /lawm_policy] [--rate 1.0] [--wait-timeout 30]
                [--offline --model-dir DIR [--providers auto] [--threads 0]]
                [--ros-args ...]

Topics. ``--image-topic CAMERA=TOPIC`` (repeatable, or comma-separated) names the bag's Image
topic for each model camera; the first camera is the frame clock (one frame per message on
it). Without it: one Image topic -> agentview; two, one named like a wrist camera ->
eye_in_hand. ``--action-topic`` (default: the one ``*action*`` topic) is the recorded action,
``--proprio-topic`` (default: the one ``*proprio*`` topic, if any; ``none`` to ignore it) the
robot state. The instruction: ``--instruction``, else the bag's ``*instruction*`` String topic.

Live mode (default) publishes the recorded camera and proprio messages on **their bag topic
names**: configure the policy node's ``camera_topics`` (model camera order) and
``proprio_topic`` with those names, or move them with ROS remapping of this node's publishers
(``--ros-args -r /bag/topic:=/live/topic``). Camera headers are restamped with the current
time as each message goes out, at the recorded pacing (log times) scaled by ``--rate``. The
instruction goes latched to ``<policy-ns>/instruction``. Before playing it waits (up to
``--wait-timeout`` s) for the policy's camera subscriptions, its ``action`` and ``cmd_twist``
publishers and a first ``cmd_twist`` (the node is active). A ``cmd_twist`` whose header stamp
is one of our image stamps answers that image's frame: latency = receipt - stamp; the raw 7-D
prediction is the ``action`` of the same tick. Frames published but never answered are
"dropped".

Offline mode (``--offline --model-dir DIR``) runs the runtime core per frame (preprocess,
``PolicyModel.predict``, ``TemporalAggregator.step``, ``denormalize``); latency is the
inference time.

Outputs in ``--out``: ``report.json`` (also printed as one JSON line on stdout at the end),
``predictions.csv`` (per frame: predicted and recorded action, latency) and ``actions.png``.
Exit codes: 0 done; 2 bad input (bag, topics, model, arguments), the reason on stderr;
1 the policy never showed up or answered no frame (the report is still written when frames
were played).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

from lawm_policy import replay
from lawm_policy.replay import ReplayError

log = logging.getLogger("replay_eval")

NODE_NAME = "replay_eval"
DRAIN_TIMEOUT_S = 2.0  # after the last frame: wait this long at most for its answer
ACTION_SETTLE_S = 0.5  # then this long at most for the action of the last answering tick
POLL_S = 0.01


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` (without the program name) into our arguments and the ROS ones:
    everything from ``--ros-args`` up to a ``--`` (or the end) goes to rclpy."""
    ours: list[str] = []
    ros: list[str] = []
    inside = False
    for arg in argv:
        if arg == "--ros-args":
            inside = True
            ros.append(arg)
        elif inside and arg == "--":
            inside = False
            ros.append(arg)
        elif inside:
            ros.append(arg)
        else:
            ours.append(arg)
    return ours, ros


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is 2 as well; keep its format
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="replay_eval",
        description="Replay a rosbag2 through the LAWM policy (live or offline) and compare "
        "its actions with the recorded ones.",
        epilog="Anything after --ros-args goes to rclpy (e.g. -r /bag/topic:=/live/topic).",
    )
    p.add_argument("--bag", required=True, help="rosbag2 folder (metadata.yaml) or .mcap/.db3")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--image-topic",
        action="append",
        metavar="CAMERA=TOPIC",
        help="bag Image topic of a model camera (repeat per camera; the first is the frame "
        "clock); default: guessed from the bag",
    )
    p.add_argument(
        "--action-topic", default="auto", help="recorded action topic (default: the *action*)"
    )
    p.add_argument(
        "--proprio-topic",
        default="auto",
        help="proprio topic (default: the *proprio* topic if any; 'none': do not use)",
    )
    p.add_argument(
        "--gripper-topic",
        default="",
        help="std_msgs/Float64 gripper command, for a TwistStamped action topic",
    )
    p.add_argument(
        "--instruction",
        default="",
        help="task instruction (default: the bag's *instruction* String topic)",
    )
    p.add_argument("--policy-ns", default="/lawm_policy", help="the policy node's namespace")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (live)")
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the policy node to show up (live)",
    )
    p.add_argument("--offline", action="store_true", help="run the runtime core, no ROS")
    p.add_argument("--model-dir", help="exported model directory (offline)")
    p.add_argument("--providers", default="auto", help="onnxruntime providers (offline)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (offline)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.rate > 0 or args.rate != args.rate or args.rate == float("inf"):
        p.error(f"--rate must be a positive number, got {args.rate}")
    if not args.wait_timeout > 0:
        p.error(f"--wait-timeout must be > 0, got {args.wait_timeout}")
    if args.offline and not args.model_dir:
        p.error("--offline needs --model-dir")
    if args.model_dir and not args.offline:
        p.error("--model-dir is for --offline (in live mode the policy node loads the model)")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.offline and not Path(args.model_dir).is_dir():
        raise ReplayError(f"{args.model_dir}: model directory missing (--model-dir)")


# ------------------------------------------------------------------------------ live mode
def _ns_topic(ns: str, name: str) -> str:
    ns = "/" + ns.strip("/") if ns.strip("/") else ""
    return f"{ns}/{name}"


def run_live(index: replay.BagIndex, args, ros_args: list[str], instruction: str | None):
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray, String

    from lawm_policy.qos import COMMAND, LATCHED

    sel = index.selection
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
    spinner = threading.Thread(target=executor.spin, name="replay_eval_spin", daemon=True)
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

    action_topic = _ns_topic(args.policy_ns, "action")
    twist_topic = _ns_topic(args.policy_ns, "cmd_twist")
    instruction_topic = _ns_topic(args.policy_ns, "instruction")
    try:
        cam_pubs = {t: node.create_publisher(Image, t, stream_qos) for t in sel.images.values()}
        proprio_pub = (
            node.create_publisher(Float32MultiArray, sel.proprio, stream_qos)
            if sel.proprio
            else None
        )
        if sel.proprio and index.topics[sel.proprio] != "std_msgs/msg/Float32MultiArray":
            raise ReplayError(
                f"the policy node takes proprio as std_msgs/Float32MultiArray; {sel.proprio} "
                f"is {index.topics[sel.proprio]} (use --proprio-topic none)"
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
        deadline = time.monotonic() + args.wait_timeout

        def wait(cond, what: str) -> None:
            while not cond():
                if time.monotonic() > deadline:
                    raise ReplayError(
                        f"timed out after {args.wait_timeout:g} s waiting for {what}; is the "
                        f"policy node running (namespace {args.policy_ns}) and listening on "
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
            if not instr_pub.wait_for_all_acked(_duration(remaining)):
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
        log.info(
            "policy found; playing %d frames at %gx (%s)", index.n_frames, args.rate, index.path
        )

        # -- play: recorded pacing (log times), headers restamped with the current time.
        topics = [*sel.images.values()] + ([sel.proprio] if sel.proprio else [])
        per_topic = dict.fromkeys(topics, 0)
        published_frames = 0
        lags: list[float] = []
        t_start = time.monotonic()
        first_log = None
        last_stamp = 0
        for topic, logtime, raw in index.messages(topics):
            first_log = logtime if first_log is None else first_log
            target = t_start + (logtime - first_log) * 1e-9 / args.rate
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
            stamp = max(now_ns(), last_stamp + 1)  # unique: it identifies the message
            last_stamp = stamp
            with lock:
                image_stamps[stamp] = (topic, k)
            cam_pubs[topic].publish(replay.restamp(raw, stamp))
            if topic == sel.clock:
                published_frames += 1
        play_s = time.monotonic() - t_start

        # -- drain: until the last frame is answered, or DRAIN_TIMEOUT_S.
        last_frame = index.n_frames - 1
        last_stamps = {
            s for s, (t, k) in image_stamps.items() if _frame(index, t, k) == last_frame
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
            outputs = replay.LiveOutputs(
                image_stamps=dict(image_stamps),
                twists=list(twists[n_before:]),
                actions=list(actions),
                published_frames=published_frames,
            )
        ev = replay.match_live_outputs(index, outputs)
        ev.extra["replay"] = {
            "duration_s": round(play_s, 3),
            "publish_lag_ms_p50": replay.finite_or_none(_pct(lags, 50)),
            "publish_lag_ms_max": replay.finite_or_none(max(lags) if lags else None),
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


def _frame(index: replay.BagIndex, topic: str, k: int) -> int:
    return int(index.image_frame[topic][k])


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def _duration(seconds: float):
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, ros_args = split_ros_args(argv)
    parser = build_parser()
    args = parser.parse_args(ours)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[replay_eval] %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        _check_args(parser, args)
        image_topics = replay.parse_image_topics(args.image_topic)
        cameras = None
        if args.offline:
            cameras = _model_cameras(Path(args.model_dir))
        index = replay.open_bag(
            args.bag,
            image_topics=image_topics,
            action_topic=replay.optional_topic(args.action_topic),
            proprio_topic=replay.optional_topic(args.proprio_topic),
            gripper_topic=replay.optional_topic(args.gripper_topic or "none"),
            cameras=cameras,
        )
        if args.instruction.strip():
            instruction, source = " ".join(args.instruction.split()), "argument"
        elif index.instruction:
            instruction, source = index.instruction, f"bag topic {index.selection.instruction}"
        else:
            instruction, source = None, "none"
        log.info(
            "%s: %d frames, cameras %s, action %s, proprio %s, instruction %r (%s)",
            index.path,
            index.n_frames,
            index.selection.images,
            index.selection.action,
            index.selection.proprio,
            instruction,
            source,
        )
        if args.offline:
            ev = replay.run_offline(
                index, args.model_dir, instruction, providers=args.providers, threads=args.threads
            )
        else:
            if instruction is None:
                log.warning(
                    "no instruction (no --instruction, none in the bag): the policy node must "
                    "have its own"
                )
            ev = run_live(index, args, ros_args, instruction)
        out_dir = args.out.expanduser().resolve()
        settings = {
            "rate": args.rate if not args.offline else None,
            "policy_ns": args.policy_ns if not args.offline else None,
            "model_dir": str(Path(args.model_dir).resolve()) if args.offline else None,
        }
        report = replay.build_report(
            index,
            ev,
            instruction=instruction,
            instruction_source=source,
            settings=settings,
            out_dir=out_dir,
        )
        try:
            replay.write_outputs(out_dir, report, index, ev)
        except OSError as err:
            raise ReplayError(f"cannot write to {out_dir}: {err}") from err
        print(json.dumps(report, allow_nan=False), flush=True)
        f = report["frames"]
        lat = report["latency_ms"]
        log.info(
            "%s: %d/%d frames answered (%d dropped), MAE %s, latency p50 %s ms p99 %s ms -> %s",
            ev.mode,
            f["answered"],
            f["published"],
            f["dropped"],
            _fmt(report["metrics"]["mae_mean"]),
            _fmt(lat["p50"]),
            _fmt(lat["p99"]),
            out_dir / replay.REPORT_FILE,
        )
        if f["answered"] == 0:
            print(
                "replay_eval: error: the policy answered none of the frames (check its log: "
                "instruction, camera topics, stale_timeout_s)",
                file=sys.stderr,
            )
            return 1
        return 0
    except ReplayError as err:
        print(f"replay_eval: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("replay_eval: interrupted", file=sys.stderr)
        return 130


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _model_cameras(model_dir: Path) -> list[str] | None:
    """The model's cameras from its sidecar (full checks happen when it is loaded)."""
    try:
        cams = json.loads((model_dir / "policy.json").read_text()).get("cameras")
    except (OSError, ValueError, AttributeError):
        return None
    return list(cams) if isinstance(cams, list) else None


if __name__ == "__main__":
    sys.exit(main())
