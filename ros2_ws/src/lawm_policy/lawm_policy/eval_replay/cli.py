"""Rosbag replay evaluation of the LAWM policy: live (through a running policy node) or offline.

    eval_replay --bag BAG --out DIR [--image-topic CAMERA=TOPIC ...] [--action-topic T]
                [--proprio-topic T|auto|none] [--proprio-pose-topic T]
                [--proprio-joint-states-topic T] [--gripper-topic T] [--instruction TEXT]
                [--policy-ns /lawm_policy] [--rate 1.0] [--wait-timeout 30] [--model-dir DIR]
                [--offline --model-dir DIR [--providers auto] [--threads 0]]
                [--ros-args ...]

Topics. ``--image-topic CAMERA=TOPIC`` (repeatable, or comma-separated) names the bag's
camera topic (``sensor_msgs/Image`` or ``CompressedImage``) for each model camera; the first
camera is the frame clock. Without it: one camera topic -> agentview; two, one named like a
wrist camera -> eye_in_hand (as training guesses). When the model is known (``--model-dir``)
only its cameras are needed; the bag's other cameras are left out. ``--action-topic``
(default: the one ``*action*`` topic) is the recorded action, with ``--gripper-topic`` (a
``std_msgs/Float64`` gripper command) for a TwistStamped one. Robot state: ``--proprio-topic``
(default: the one ``*proprio*`` topic, if any; ``none`` to ignore it), an array in the model's
``proprio_layout``; or ``--proprio-pose-topic`` (``geometry_msgs/PoseStamped``: ee_x/ee_y/ee_z)
and ``--proprio-joint-states-topic`` (``sensor_msgs/JointState``: ``joint:<name>`` entries by
joint name), assembled into the model's layout. A model without robot state (``proprio_dim``
0) needs none. The instruction: ``--instruction``, else the bag's ``*instruction*`` String
topic.

Scoring. The gripper dimension reads as closed past halfway from the model's declared open
value to its closed one (``policy.json`` ``action_space.gripper``: sign -1/+1, or a width with
its open and closed values), for the predictions and for the recorded actions alike; without
a known model, the sign convention, stated in the report.

Live mode (default) publishes the recorded camera and robot-state messages on **their bag
topic names**: configure the policy node's ``camera_topics`` (model camera order) and
``proprio_topic`` / ``pose_topic`` / ``joint_states_topic`` with those names, or move them with
ROS remapping of this node's publishers (``--ros-args -r /bag/topic:=/live/topic``). Camera
headers are restamped with the current time as each message goes out, at the recorded pacing
(log times) scaled by ``--rate``; a ``CompressedImage`` camera goes out as recorded where the
topic it is published on ends in ``/compressed`` (image_transport's name, which the node
subscribes as CompressedImage), else decoded as an rgb8 Image. The instruction goes latched to
``<policy-ns>/instruction``. Before playing it waits (up to ``--wait-timeout`` s) for the
policy's ``action``, ``cmd_twist`` and ``cmd_twist_image_time`` publishers, reads the node's
``model_dir``, ``camera_topics`` and ``control_rate_hz`` parameters (``--model-dir`` names the
model where the node's folder is not readable here), waits for its camera subscriptions and a
first ``cmd_twist`` (the node is active). A ``cmd_twist_image_time`` twist (sent right after
each command computed from images, stamped with the newest image used; the ``cmd_twist``
itself carries its publish time) whose header stamp is one of our image stamps answers that
image's frame: latency = receipt - stamp; the raw 7-D prediction is the ``action`` of the same
tick. Frames published but never answered are "dropped". The report states the cameras' rates
beside the model's and the node's control rates.

Offline mode (``--offline --model-dir DIR``) runs the runtime core (preprocess,
``PolicyModel.predict``, ``TemporalAggregator.step``, ``denormalize``) without ROS, at the
model's control rate (``policy.json`` ``control_rate_hz``), stepped as training resamples
bags: a regular grid from the first frame at which the model's inputs and the recorded action
all have a message, each topic's latest message at or before each step (a step whose image is
over 0.5 s old is skipped, as the node would); the report lists the rates found and used.
Latency is the inference time.

Outputs in ``--out``: ``report.json`` (also printed as one JSON line on stdout at the end),
``predictions.csv`` (per step: predicted and recorded action, gripper closed or not, latency)
and ``actions.png``. Exit codes: 0 done; 2 bad input (bag, topics, model, arguments), the
reason on stderr; 1 the policy never showed up or answered no frame (the report is still
written when frames were played).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lawm_core.backends import CHOICES
from lawm_core.errors import ModelLoadError
from lawm_core.sidecar import PolicySidecar
from lawm_policy.eval_replay import offline, report
from lawm_policy.eval_replay.index import AUTO, BagIndex, ProprioRequest, ReplayError, open_bag

log = logging.getLogger("eval_replay")

NONE_VALUES = ("", "none")


# ------------------------------------------------------------------------------ arguments
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


def parse_image_topics(items: Iterable[str] | None) -> dict[str, str] | None:
    """``["agentview=/cam/a", "eye_in_hand=/cam/b"]`` (or one comma-separated item) ->
    ``{camera: topic}`` in the given order; None (auto) when nothing or only "" is given."""
    mapping: dict[str, str] = {}
    for item in items or ():
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            camera, sep, topic = part.partition("=")
            camera, topic = camera.strip(), topic.strip()
            if not sep or not camera or not topic:
                raise ReplayError(f"--image-topic {part!r}: expected CAMERA=TOPIC")
            if camera in mapping:
                raise ReplayError(f"--image-topic: camera {camera!r} given twice")
            mapping[camera] = topic if topic.startswith("/") else "/" + topic
    return mapping or None


def optional_topic(value: str | None) -> str | None:
    """CLI topic value: None or "auto" -> "auto"; "" or "none" -> None; else the topic."""
    if value is None or value.strip().lower() == AUTO:
        return AUTO
    if value.strip().lower() in NONE_VALUES:
        return None
    value = value.strip()
    return value if value.startswith("/") else "/" + value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is 2 as well; keep its format
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="eval_replay",
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
        help="bag Image or CompressedImage topic of a model camera (repeat per camera; the "
        "first is the frame clock); default: guessed from the bag",
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
        "--proprio-pose-topic",
        default="",
        help="geometry_msgs/PoseStamped end-effector pose: the ee_x/ee_y/ee_z of the model's "
        "proprio_layout",
    )
    p.add_argument(
        "--proprio-joint-states-topic",
        default="",
        help="sensor_msgs/JointState: the joint:<name> entries of the model's proprio_layout",
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
    p.add_argument(
        "--model-dir",
        help="exported model directory: the model to run (offline); live: the model the node "
        "runs, for its cameras and gripper convention (default: the node's model_dir)",
    )
    p.add_argument("--providers", default="auto", help="onnxruntime providers (offline)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (offline)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=CHOICES,
        help="inference backend (offline): auto (the fastest whose actions match fp32 on the "
        "export's reference frames), onnxruntime (fp32), onnxruntime-int8, openvino, "
        "openvino-bf16, openvino-int8 (default auto)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.rate > 0 or args.rate != args.rate or args.rate == float("inf"):
        p.error(f"--rate must be a positive number, got {args.rate}")
    if not args.wait_timeout > 0:
        p.error(f"--wait-timeout must be > 0, got {args.wait_timeout}")
    if args.offline and not args.model_dir:
        p.error("--offline needs --model-dir")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.model_dir and not Path(args.model_dir).is_dir():
        raise ReplayError(f"{args.model_dir}: model directory missing (--model-dir)")


def read_sidecar(model_dir: str | Path) -> PolicySidecar:
    """The model's ``policy.json`` (its graph is checked when it is loaded); ReplayError."""
    try:
        return PolicySidecar.read(Path(model_dir))
    except ModelLoadError as err:
        raise ReplayError(f"cannot load the model: {err}") from err


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------------------ steps
@dataclass(frozen=True)
class Instruction:
    """The task instruction sent to the policy (None: none) and where it came from."""

    text: str | None
    source: str  # "argument", "bag topic <topic>" or "none"


def configure_logging(verbose: bool) -> None:
    """Log to stderr, prefixed with the program name; debug with ``--verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="[eval_replay] %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def open_selection(args: argparse.Namespace) -> BagIndex:
    """Open the bag and select its topics from the arguments: with ``--model-dir``, for the
    model's cameras; offline also at the model's control rate and with its robot state in its
    ``proprio_layout``. ReplayError (exit code 2) on bad input."""
    spec = read_sidecar(args.model_dir) if args.model_dir else None
    layout = None
    if args.offline:
        layout = tuple(spec.proprio_layout) if spec.proprio_dim > 0 else ()
    proprio = ProprioRequest(
        layout=layout,
        topic=optional_topic(args.proprio_topic),
        pose=optional_topic(args.proprio_pose_topic or "none"),
        joint_states=optional_topic(args.proprio_joint_states_topic or "none"),
    )
    return open_bag(
        args.bag,
        image_topics=parse_image_topics(args.image_topic),
        action_topic=optional_topic(args.action_topic),
        gripper_topic=optional_topic(args.gripper_topic or "none"),
        cameras=list(spec.cameras) if spec is not None else None,
        step_hz=spec.control_rate_hz if args.offline else None,
        proprio=proprio,
    )


def choose_instruction(args: argparse.Namespace, index: BagIndex) -> Instruction:
    """``--instruction`` (whitespace collapsed), else the bag's instruction, else none."""
    if args.instruction.strip():
        return Instruction(" ".join(args.instruction.split()), "argument")
    if index.instruction:
        return Instruction(index.instruction, f"bag topic {index.selection.instruction}")
    return Instruction(None, "none")


def evaluate(
    args: argparse.Namespace, index: BagIndex, instruction: Instruction, ros_args: list[str]
) -> report.Evaluation:
    """Run the replay: offline through the runtime core, or live through the policy node."""
    if args.offline:
        return offline.run_offline(
            index,
            args.model_dir,
            instruction.text,
            providers=args.providers,
            threads=args.threads,
            backend=args.backend,
        )
    if instruction.text is None:
        log.warning(
            "no instruction (no --instruction, none in the bag): the policy node must have its own"
        )
    # rclpy only in live mode: --offline runs where ROS is not installed.
    from lawm_policy.eval_replay import live

    return live.run_live(
        index,
        instruction=instruction.text,
        policy_ns=args.policy_ns,
        rate=args.rate,
        wait_timeout=args.wait_timeout,
        ros_args=ros_args,
        model_dir=args.model_dir,
    )


def write_report(
    args: argparse.Namespace, index: BagIndex, ev: report.Evaluation, instruction: Instruction
) -> dict[str, Any]:
    """Write the report files into ``--out``, print the report as one JSON line on stdout and
    log a summary; return the report. ReplayError (exit code 2) when it cannot be written."""
    out_dir = args.out.expanduser().resolve()
    settings = {
        "rate": args.rate if not args.offline else None,
        "policy_ns": args.policy_ns if not args.offline else None,
        "model_dir": str(Path(args.model_dir).resolve()) if args.model_dir else None,
    }
    result = report.build_report(
        index,
        ev,
        instruction=instruction.text,
        instruction_source=instruction.source,
        settings=settings,
        out_dir=out_dir,
    )
    try:
        report.write_outputs(out_dir, result, index, ev)
    except OSError as err:
        raise ReplayError(f"cannot write to {out_dir}: {err}") from err
    print(json.dumps(result, allow_nan=False), flush=True)
    f = result["frames"]
    lat = result["latency_ms"]
    log.info(
        "%s: %d/%d frames answered (%d dropped), MAE %s, latency p50 %s ms p99 %s ms -> %s",
        ev.mode,
        f["answered"],
        f["published"],
        f["dropped"],
        _fmt(result["metrics"]["mae_mean"]),
        _fmt(lat["p50"]),
        _fmt(lat["p99"]),
        out_dir / report.REPORT_FILE,
    )
    return result


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Run ``eval_replay``; the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, ros_args = split_ros_args(argv)
    parser = build_parser()
    args = parser.parse_args(ours)
    configure_logging(args.verbose)
    try:
        _check_args(parser, args)
        index = open_selection(args)
        instruction = choose_instruction(args, index)
        sel = index.selection
        log.info(
            "%s: %d %s, cameras %s, action %s, proprio %s, instruction %r (%s)",
            index.path,
            index.n_frames,
            f"steps at {index.step_hz:g} Hz" if index.step_hz else "frames",
            sel.images,
            sel.action,
            [t for t in (sel.proprio, sel.pose, sel.joint_states) if t] or None,
            instruction.text,
            instruction.source,
        )
        for note in index.notes:
            log.warning("%s", note)
        ev = evaluate(args, index, instruction, ros_args)
        result = write_report(args, index, ev, instruction)
        if result["frames"]["answered"] == 0:
            print(
                "eval_replay: error: the policy answered none of the frames (check its log: "
                "instruction, camera topics, stale_timeout_s)",
                file=sys.stderr,
            )
            return 1
        return 0
    except ReplayError as err:
        print(f"eval_replay: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("eval_replay: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
