#!/usr/bin/env python3
"""Reliability, measured (a benchmark, not a test). Usage:

    python bench/robustness.py [--quick] [--parts fuzz,kill,disk] [--messages N] [--rate HZ]

Parts:
- fuzz: two policy node processes (an exported debug policy with its text encoder): one fed raw
  and compressed cameras and a flat proprio array, one compressed and raw cameras, a PoseStamped
  end-effector pose and JointState fingers, as a real arm's drivers would. Valid inputs stream at
  30 Hz throughout (so the policy acts and every limit is exercised) while hostile messages
  (``fuzz_messages``: every image encoding with wrong sizes, steps and truncated data, garbage
  and oversized jpeg/png, non-finite and wrongly sized robot state, broken JointState and poses,
  instructions up to 1 MB, stamps zero / future / past / jumping backwards) go to every topic
  the nodes subscribe to at up to ``--rate`` messages per second. Every command is checked:
  finite, within the node's per-axis and norm speed limits; node crashes counted; missed control
  ticks during the storm from /diagnostics; the command rate afterwards, with valid inputs only,
  against the nominal 20 Hz.
- kill: fine-tuning (debug preset, a checkpoint every 2 steps) is SIGKILLed at random moments
  and resumed until it finishes; its final weights are compared with an uninterrupted run's, bit
  for bit, and after every kill every checkpoint left in place must load.
- disk: a checkpoint write, an export and a dataset write each run out of space on a small
  tmpfs: each must fail with a clear one-line error and leave the previous files intact and
  loadable.

The last line printed is one JSON object with at least messages_sent, node_crashes,
nonfinite_commands, commands_outside_limits, kills, resume_mismatches and corrupt_files_left.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

INSTRUCTION = "push the block to the top left corner and lift it"
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
BASE_FRAME = "base_link"
LIMITS = {  # the node's defaults (policy_params), which the fuzz run leaves in place
    "max_linear_axis": 0.25,
    "max_angular_axis": 0.8,
    "max_linear_speed": 0.3,
    "max_angular_speed": 1.0,
}
TOLERANCE = 1e-6
NOMINAL_HZ = 20.0
QUICK_MESSAGES = 3000
STORM_LIMIT_S = 30.0  # plus ten times the storm's nominal length
RECOVERY_LIMIT_S = 90.0  # longest wait for both nodes to command again after the storm
FULL_MESSAGES = 12000


def say(text: str) -> None:
    print(f"[robustness] {text}", file=sys.stderr, flush=True)


# -- the model ------------------------------------------------------------------------------
def export_debug_model(out: Path) -> Path:
    """An exported debug-preset policy (untrained weights, actions in +-2) with its text
    encoder: the same kind of folder the robot loads."""
    import torch

    from lawm.checkpoint import save_policy
    from lawm.config import preset
    from lawm.export import export_policy
    from lawm.models.policy import Policy

    if (out / "export" / "policy.json").is_file():
        return out / "export"
    cfg = preset("debug")
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    policy.set_stats({"action_min": np.full(7, -2.0), "action_max": np.full(7, 2.0)})
    save_policy(out / "policy", policy, cfg, {"stage": "robustness"})
    export_policy(out / "policy", out / "export", action_space="osc_pose_delta")
    return out / "export"


# -- the bench's side of the ROS graph ------------------------------------------------------
def ros_env() -> None:
    """Localhost discovery in a domain of its own (unless the caller chose one)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 50))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


def bench_node(name: str):
    """A node of this process on its own executor: (node, executor)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(name)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    return node, ex


def close_node(node) -> None:
    import rclpy

    node.destroy_node()
    rclpy.shutdown()


# -- fuzz -----------------------------------------------------------------------------------
def twist_violation(lin: np.ndarray, ang: np.ndarray) -> str | None:
    """Why a commanded twist breaks the limits (None if it does not)."""
    if not (np.isfinite(lin).all() and np.isfinite(ang).all()):
        return "non-finite"
    if np.abs(lin).max() > LIMITS["max_linear_axis"] + TOLERANCE:
        return f"linear axis {np.abs(lin).max():.4f}"
    if np.abs(ang).max() > LIMITS["max_angular_axis"] + TOLERANCE:
        return f"angular axis {np.abs(ang).max():.4f}"
    if np.linalg.norm(lin) > LIMITS["max_linear_speed"] + TOLERANCE:
        return f"linear speed {np.linalg.norm(lin):.4f}"
    if np.linalg.norm(ang) > LIMITS["max_angular_speed"] + TOLERANCE:
        return f"angular speed {np.linalg.norm(ang):.4f}"
    return None


class Outputs:
    """Every command of one node, checked as it arrives."""

    def __init__(self, node, name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from std_msgs.msg import Float32MultiArray, Float64

        from lawm_policy.qos import COMMAND, LATCHED

        self.name = name
        self.twists = 0
        self.nonfinite = 0
        self.outside = 0
        self.examples: list[str] = []
        self.twist_times: list[float] = []
        self.missed_ticks: int | None = None
        self.subs = [
            node.create_subscription(TwistStamped, f"/{name}/cmd_twist", self._twist, COMMAND),
            node.create_subscription(Float32MultiArray, f"/{name}/action", self._action, COMMAND),
            node.create_subscription(PoseStamped, f"/{name}/cmd_pose", self._pose, COMMAND),
            node.create_subscription(Float64, f"/{name}/cmd_gripper", self._gripper, LATCHED),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 50),
        ]

    def _bad(self, what: str, nonfinite: bool) -> None:
        if nonfinite:
            self.nonfinite += 1
        else:
            self.outside += 1
        if len(self.examples) < 5:
            self.examples.append(f"{self.name}: {what}")

    def _twist(self, msg) -> None:
        self.twists += 1
        self.twist_times.append(time.monotonic())
        lin = np.array([msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z])
        ang = np.array([msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z])
        why = twist_violation(lin, ang)
        if why is not None:
            self._bad(f"cmd_twist {why}", why == "non-finite")

    def _action(self, msg) -> None:
        a = np.asarray(msg.data, np.float64)
        if not np.isfinite(a).all():
            self._bad("action non-finite", True)
        elif a.size != 7 or np.abs(a).max() > 2.0 + TOLERANCE:  # the model's action range
            self._bad(f"action {a.tolist()}", False)

    def _pose(self, msg) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        if not np.isfinite([p.x, p.y, p.z, q.x, q.y, q.z, q.w]).all():
            self._bad("cmd_pose non-finite", True)

    def _gripper(self, msg) -> None:
        if not math.isfinite(msg.data):
            self._bad("cmd_gripper non-finite", True)
        elif msg.data not in (-1.0, 1.0):
            self._bad(f"cmd_gripper {msg.data}", False)

    def _diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.name}:"):
                for kv in status.values:
                    if kv.key == "missed_ticks":
                        self.missed_ticks = int(kv.value)

    def rate_since(self, t0: float) -> float:
        times = [t for t in self.twist_times if t >= t0]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


def bench_fuzz(model: Path, messages: int, rate_hz: float, seed: int, log_dir: Path) -> dict:
    """Storm both nodes' topics with ``messages`` hostile messages at up to ``rate_hz``."""
    import fuzz_messages as fm
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import Float32MultiArray, String

    from lawm_apps.harness import NodeProcess, wait_for_subscribers, wait_until
    from lawm_core.model import PolicyModel
    from lawm_policy.qos import LATCHED, SENSOR_LATEST

    ros_env()
    proprio_dim = PolicyModel(model, providers="cpu").proprio_dim
    common = {
        "model_dir": str(model),
        "instruction": INSTRUCTION,
        "threads": 1,
        "stale_timeout_s": 0.5,
        "control_rate_hz": NOMINAL_HZ,
    }
    specs = {
        "fuzz_flat": {
            "camera_topics": ["/fz/flat/cam0", "/fz/flat/cam1/compressed"],
            "proprio_topic": "/fz/flat/proprio",
        },
        "fuzz_arm": {
            "camera_topics": ["/fz/arm/cam0/compressed", "/fz/arm/cam1"],
            "pose_topic": "/fz/arm/pose",
            "joint_states_topic": "/fz/arm/joints",
            "gripper_joints": FINGERS,
            "gripper_joint_scale": [1.0, -1.0],
            "pose_target": True,
        },
    }
    procs = {
        name: NodeProcess(
            "lawm_policy",
            "policy_node",
            log_dir=log_dir / name,
            params={**common, **extra},
            remaps={"__node": name},
        ).start()
        for name, extra in specs.items()
    }
    node, ex = bench_node("lawm_robustness")
    rng = np.random.default_rng(seed)

    def now() -> float:
        return node.get_clock().now().nanoseconds / 1e9

    stamps = fm.Stamps(now, rng)
    outputs = {name: Outputs(node, name) for name in specs}
    pub = {}
    for name, extra in specs.items():
        for topic in extra["camera_topics"]:
            kind = CompressedImage if topic.endswith("/compressed") else Image
            pub[topic] = node.create_publisher(kind, topic, SENSOR_LATEST)
        pub[f"/{name}/instruction"] = node.create_publisher(
            String, f"/{name}/instruction", LATCHED
        )
    pub["/fz/flat/proprio"] = node.create_publisher(
        Float32MultiArray, "/fz/flat/proprio", SENSOR_LATEST
    )
    pub["/fz/arm/pose"] = node.create_publisher(PoseStamped, "/fz/arm/pose", SENSOR_LATEST)
    pub["/fz/arm/joints"] = node.create_publisher(JointState, "/fz/arm/joints", SENSOR_LATEST)

    # Hostile streams, one per topic, sent round-robin.
    streams = []
    for topic, p in pub.items():
        if topic.endswith("/compressed"):
            gen = fm.compressed_images(rng, stamps)
        elif "/cam" in topic:
            gen = fm.raw_images(rng, stamps)
        elif topic.endswith("/instruction"):
            gen = fm.instructions(rng)
        elif topic.endswith("/proprio"):
            gen = fm.flat_proprio(rng, proprio_dim)
        elif topic.endswith("/pose"):
            gen = fm.poses(rng, stamps, BASE_FRAME)
        else:
            gen = fm.joint_states(rng, stamps, ["fr3_joint1", *FINGERS])
        streams.append((topic, p, gen))

    good_rng = np.random.default_rng(seed + 1)
    good_frames = [good_rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(8)]
    import cv2

    good_jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in good_frames]
    tick = [0]

    def publish_valid() -> None:
        i = tick[0]
        tick[0] += 1
        stamp = node.get_clock().now().to_msg()
        for topic, p in pub.items():
            if topic.endswith("/compressed"):
                msg = CompressedImage(format="jpeg", data=good_jpegs[i % len(good_jpegs)])
            elif "/cam" in topic:
                f = good_frames[i % len(good_frames)]
                msg = Image(height=48, width=48, encoding="rgb8", step=144, data=f.tobytes())
            elif topic.endswith("/proprio"):
                msg = Float32MultiArray(data=[0.1, 0.0, 0.3, 0.02, -0.02][:proprio_dim])
            elif topic.endswith("/pose"):
                msg = PoseStamped()
                msg.header.frame_id = BASE_FRAME
                msg.pose.position.x, msg.pose.position.z = 0.45, 0.3
                msg.pose.orientation.x = 1.0
            elif topic.endswith("/joints"):
                msg = JointState(name=["fr3_joint1", *FINGERS], position=[0.3, 0.03, 0.03])
            else:
                continue
            if hasattr(msg, "header"):
                msg.header.stamp = stamp
                if not msg.header.frame_id:
                    msg.header.frame_id = "cam"
            p.publish(msg)

    def alive() -> list[str]:
        return [n for n, p in procs.items() if not p.alive()]

    def run(seconds: float, hostile: int = 0) -> int:
        """Valid inputs at 30 Hz for ``seconds`` (and, with ``hostile``, that many hostile
        messages spread over it at up to rate_hz); returns the hostile messages sent."""
        sent = 0
        t0 = time.monotonic()
        end = t0 + seconds
        # A storm that the transport slows down (large samples queue up) is cut off rather
        # than waited for; the figures say how many messages went out.
        cutoff = t0 + max(seconds, STORM_LIMIT_S + 10.0 * hostile / rate_hz)
        next_valid = t0
        next_bad = t0
        while (time.monotonic() < end or sent < hostile) and time.monotonic() < cutoff:
            t = time.monotonic()
            if t >= next_valid:
                publish_valid()
                next_valid += 1.0 / 30.0
            if sent < hostile and t >= next_bad:
                topic, p, gen = streams[sent % len(streams)]
                p.publish(next(gen))
                sent += 1
                next_bad += 1.0 / rate_hz
            wait = min(next_valid, next_bad if sent < hostile else next_valid) - time.monotonic()
            ex.spin_once(timeout_sec=max(0.0, min(0.001, wait)))
        return sent

    result: dict = {}
    try:
        for topic, p, _ in streams:
            if "instruction" not in topic:
                wait_for_subscribers(node, p, timeout=60, procs=list(procs.values()))
        for name, out in outputs.items():
            wait_until(
                node,
                lambda o=out: o.twists > 5 and o.missed_ticks is not None,
                60,
                f"{name} commanding",
                list(procs.values()),
            )
            run(0.05)
        run(2.0)  # both acting on valid inputs
        before = {n: o.missed_ticks or 0 for n, o in outputs.items()}
        say(f"storm: {messages} hostile messages at up to {rate_hz:.0f}/s")
        t0 = time.monotonic()
        sent = run(0.0, hostile=messages)
        storm_s = time.monotonic() - t0
        for name in specs:  # valid instructions again (the storm's last may be junk)
            pub[f"/{name}/instruction"].publish(String(data=INSTRUCTION))
        run(2.5)  # the next /diagnostics carries the storm's missed ticks
        missed = {
            n: (o.missed_ticks or 0) - before[n] if o.missed_ticks is not None else None
            for n, o in outputs.items()
        }
        # Commanding resumes: a transport that queued the storm's large samples can hold the
        # nodes' inputs back for a while on a loaded machine; wait (bounded) until every node
        # has commanded again in the last second, and say how long that took.
        t_end = time.monotonic()
        while time.monotonic() < t_end + RECOVERY_LIMIT_S and any(
            len([t for t in o.twist_times if t >= time.monotonic() - 1.0]) < 2
            for o in outputs.values()
        ):
            run(0.25)
        recovery_s = time.monotonic() - t_end
        t_after = time.monotonic()
        run(5.0)
        rates = {n: o.rate_since(t_after + 0.5) for n, o in outputs.items()}
        dead = alive()
        result = {
            "messages_sent": sent,
            "storm_cut_short": sent < messages,
            "storm_seconds": round(storm_s, 2),
            "messages_per_s": round(sent / storm_s, 1) if storm_s > 0 else None,
            "node_crashes": len(dead),
            "nonfinite_commands": sum(o.nonfinite for o in outputs.values()),
            "commands_outside_limits": sum(o.outside for o in outputs.values()),
            "commands_checked": sum(o.twists for o in outputs.values()),
            "missed_ticks_during_storm": sum(v for v in missed.values() if v is not None),
            "recovery_seconds": round(recovery_s, 2),
            "command_rate_after_hz": {n: round(r, 1) for n, r in rates.items()},
            "command_rate_after_ratio": round(min(rates.values()) / NOMINAL_HZ, 3),
            "violations": [e for o in outputs.values() for e in o.examples],
        }
        if dead:
            result["crash_logs"] = {n: procs[n].tail() for n in dead}
    finally:
        for p in procs.values():
            p.stop()
        close_node(node)
    return result


def bench_fuzz_bridge(messages: int, rate_hz: float, seed: int, log_dir: Path) -> dict:
    """Storm the LIBERO bridge's command topics (one bridge taking raw actions, one taking
    twist + gripper commands, both stepping the real simulator at 20 Hz with the newest
    command) while valid commands stream; every action the bridges hand the simulator
    (``applied_topic``) is checked finite and within [-1, 1]."""
    import fuzz_messages as fm
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import Float32MultiArray, Float64

    from lawm_apps.harness import NodeProcess, wait_for_subscribers
    from lawm_policy.qos import COMMAND

    ros_env()
    specs = {
        "fz_bridge_action": {"command_mode": "action", "action_topic": "/fzb/a/action"},
        "fz_bridge_twist": {
            "command_mode": "twist",
            "twist_topic": "/fzb/t/twist",
            "gripper_topic": "/fzb/t/gripper",
            "twist_frame_id": BASE_FRAME,
        },
    }
    procs = {}
    for name, extra in specs.items():
        tag = name.rsplit("_", 1)[1]
        params = {
            "image_size": 32, "episodes": 0, "max_steps": 1_000_000, "lockstep": False,
            "exit_when_done": False, "reset_service": "", "applied_topic": f"/fzb/{tag}/applied",
            "agentview_topic": f"/fzb/{tag}/agentview", "eye_in_hand_topic": f"/fzb/{tag}/eye",
            "proprio_topic": f"/fzb/{tag}/proprio", "instruction_topic": f"/fzb/{tag}/text",
            "result_topic": f"/fzb/{tag}/result", **extra,
        }  # fmt: skip
        procs[name] = NodeProcess(
            "lawm_policy", "libero_bridge", log_dir=log_dir / name, params=params,
            remaps={"__node": name},
        ).start()  # fmt: skip
    node, ex = bench_node("lawm_robustness_bridge")
    rng = np.random.default_rng(seed)
    stamps = fm.Stamps(lambda: node.get_clock().now().nanoseconds / 1e9, rng)
    applied = {"action": [], "twist": []}
    bad: list[str] = []

    def on_applied(tag: str, msg) -> None:
        a = np.asarray(msg.data, np.float64)
        applied[tag].append(time.monotonic())
        if a.size != 7 or not np.isfinite(a).all() or np.abs(a).max() > 1.0 + TOLERANCE:
            bad.append(f"{tag}: applied {a.tolist()}")

    for tag in applied:
        node.create_subscription(
            Float32MultiArray, f"/fzb/{tag}/applied", lambda m, t=tag: on_applied(t, m), 50
        )
    action = node.create_publisher(Float32MultiArray, "/fzb/a/action", COMMAND)
    twist = node.create_publisher(TwistStamped, "/fzb/t/twist", COMMAND)
    gripper = node.create_publisher(Float64, "/fzb/t/gripper", COMMAND)
    streams = [
        (action, fm.flat_proprio(rng, 7)),
        (twist, fm.twists(rng, stamps, BASE_FRAME)),
        (gripper, fm.gripper_commands(rng)),
    ]

    def publish_valid() -> None:
        action.publish(Float32MultiArray(data=rng.uniform(-0.3, 0.3, 7).tolist()))
        msg = TwistStamped()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = BASE_FRAME
        msg.twist.linear.x = 0.02
        twist.publish(msg)
        gripper.publish(Float64(data=-1.0))

    def run(seconds: float, hostile: int = 0) -> int:
        sent, t0 = 0, time.monotonic()
        next_valid = next_bad = t0
        while time.monotonic() < t0 + seconds or sent < hostile:
            t = time.monotonic()
            if t >= next_valid:
                publish_valid()
                next_valid += 0.05
            if sent < hostile and t >= next_bad:
                pub, gen = streams[sent % len(streams)]
                pub.publish(next(gen))
                sent += 1
                next_bad += 1.0 / rate_hz
            ex.spin_once(timeout_sec=0.0005)
        return sent

    def stepping() -> bool:
        return all(len(v) > 3 for v in applied.values())

    try:
        for pub, _ in streams:
            wait_for_subscribers(node, pub, timeout=180, procs=list(procs.values()))
        t0 = time.monotonic()
        while not stepping() and time.monotonic() - t0 < 120:
            run(0.5)
        if not stepping():
            raise RuntimeError("the bridges never stepped:\n" + "\n".join(
                p.tail() for p in procs.values()))  # fmt: skip
        say(f"bridge storm: {messages} hostile commands at up to {rate_hz:.0f}/s")
        sent = run(0.0, hostile=messages)
        t_after = time.monotonic()
        run(3.0)
        rates = {
            tag: sum(1 for t in times if t >= t_after + 0.5) / 2.5
            for tag, times in applied.items()
        }
        dead = [n for n, p in procs.items() if not p.alive()]
        result = {
            "bridge_messages_sent": sent,
            "bridge_crashes": len(dead),
            "bridge_applied_checked": sum(len(v) for v in applied.values()),
            "bridge_applied_outside_limits": len(bad),
            "bridge_step_rate_after_hz": {k: round(v, 1) for k, v in rates.items()},
            "bridge_violations": bad[:5],
        }
        if dead:
            result["bridge_crash_logs"] = {n: procs[n].tail() for n in dead}
    finally:
        for p in procs.values():
            p.stop()
        close_node(node)
    return result


# -- faults ---------------------------------------------------------------------------------
FAULT_STALE_S, FAULT_FROZEN_S = 0.3, 1.0  # the robot configs' stale/frozen timeouts


def bench_faults(model_src: Path, work: Path, log_dir: Path) -> dict:
    """One policy node (two raw cameras, flat proprio, the robot configs' timeouts) and the
    faults an arm meets: a camera that stops, one that freezes (re-sends its last frame with
    new stamps), a camera driver restarted (a new publisher), the instruction publisher going
    silent, and the model folder changed on disk while the node runs. Each is measured from the
    fault to the first zero command (stop_s) and from the repair to the first command computed
    again (resume_s)."""
    from geometry_msgs.msg import TwistStamped
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray, String

    from lawm_apps.harness import (
        NodeProcess,
        call_service,
        wait_for_publishers,
        wait_for_subscribers,
        wait_until,
    )
    from lawm_policy.qos import COMMAND, LATCHED, SENSOR_LATEST

    ros_env()
    model = work / "fault_model"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(model_src, model)
    name = "fault_node"
    cams = ["/ft/cam0", "/ft/cam1"]
    proc = NodeProcess(
        "lawm_policy",
        "policy_node",
        log_dir=log_dir / name,
        params={
            "model_dir": str(model),
            "camera_topics": cams,
            "proprio_topic": "/ft/proprio",
            "threads": 1,
            "control_rate_hz": NOMINAL_HZ,
            "stale_timeout_s": FAULT_STALE_S,
            "frozen_timeout_s": FAULT_FROZEN_S,
        },
        remaps={"__node": name},
    ).start()
    node, ex = bench_node("lawm_faults")
    twists: list[tuple[float, bool]] = []  # (arrival, moving)

    def on_twist(msg) -> None:
        v = [msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z,
             msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z]  # fmt: skip
        twists.append((time.monotonic(), any(x != 0.0 for x in v)))

    sub = node.create_subscription(TwistStamped, f"/{name}/cmd_twist", on_twist, COMMAND)
    pubs = {c: node.create_publisher(Image, c, SENSOR_LATEST) for c in cams}
    proprio = node.create_publisher(Float32MultiArray, "/ft/proprio", SENSOR_LATEST)
    instruction = node.create_publisher(String, f"/{name}/instruction", LATCHED)
    rng = np.random.default_rng(0)
    state = {"live": set(cams), "frozen": set(), "i": 0}
    frozen_frame = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8).tobytes()

    def publish() -> None:
        stamp = node.get_clock().now().to_msg()
        state["i"] += 1
        for cam in state["live"]:
            data = frozen_frame if cam in state["frozen"] else rng.bytes(48 * 48 * 3)
            msg = Image(height=48, width=48, encoding="rgb8", step=144, data=data)
            msg.header.stamp = stamp
            pubs[cam].publish(msg)
        proprio.publish(Float32MultiArray(data=[0.1, 0.0, 0.3, 0.02, -0.02]))

    def run(seconds: float, until=None) -> float | None:
        """Stream at 30 Hz; with ``until`` (a test on the twists), return the seconds until
        it held (None if it never did)."""
        t0 = time.monotonic()
        nxt = t0
        while time.monotonic() - t0 < seconds:
            if time.monotonic() >= nxt:
                publish()
                nxt += 1 / 30
            ex.spin_once(timeout_sec=0.002)
            if until is not None and until():
                return time.monotonic() - t0
        return None

    def first_after(t0: float, moving: bool) -> bool:
        return any(t >= t0 and m == moving for t, m in twists)

    def episode(fault, repair, limit_stop: float, limit_resume: float = 3.0) -> dict:
        run(1.0)  # acting normally
        t0 = time.monotonic()
        fault()
        stop = run(limit_stop + 2.0, until=lambda: first_after(t0, False))
        moving_after = [m for t, m in twists if stop is not None and t > t0 + stop + 0.1]
        t1 = time.monotonic()
        repair()
        resume = run(limit_resume + 2.0, until=lambda: first_after(t1, True))
        return {
            "stop_s": None if stop is None else round(stop, 3),
            "stop_limit_s": round(limit_stop, 3),
            "moved_while_faulty": int(any(moving_after)),
            "resume_s": None if resume is None else round(resume, 3),
            "ok": stop is not None and stop <= limit_stop and resume is not None
            and not any(moving_after),
        }  # fmt: skip

    period = 1 / NOMINAL_HZ
    out: dict[str, dict] = {}
    try:
        for p in pubs.values():
            wait_for_subscribers(node, p, timeout=60, procs=[proc])
        wait_for_publishers(node, sub, timeout=60, procs=[proc])
        instruction.publish(String(data=INSTRUCTION))
        moving = run(30.0, until=lambda: any(m for _, m in twists))
        if moving is None:
            raise RuntimeError(f"the node never moved:\n{proc.tail()}")

        def stop_cam() -> None:
            state["live"].discard(cams[1])

        def start_cam() -> None:
            state["live"].add(cams[1])

        # A frame is late after stale_timeout_s; the next tick (one period) sends zero.
        out["camera_stops"] = episode(stop_cam, start_cam, FAULT_STALE_S + 2 * period)
        out["camera_freezes"] = episode(
            lambda: state["frozen"].add(cams[1]),
            lambda: state["frozen"].discard(cams[1]),
            FAULT_FROZEN_S + FAULT_STALE_S + 2 * period,
        )

        def restart_driver() -> None:
            node.destroy_publisher(pubs[cams[1]])
            pubs[cams[1]] = node.create_publisher(Image, cams[1], SENSOR_LATEST)
            state["live"].add(cams[1])

        out["camera_restarts"] = episode(
            stop_cam, restart_driver, FAULT_STALE_S + 2 * period, limit_resume=5.0
        )
        # The instruction publisher goes away: the latched instruction stays the task.
        node.destroy_publisher(instruction)
        n0 = len(twists)
        run(3.0)
        quiet = [m for _, m in twists[n0:]]
        out["instruction_silent"] = {
            "commands": len(quiet),
            "moving_share": round(sum(quiet) / max(len(quiet), 1), 3),
            "ok": len(quiet) > 0.5 * 3.0 * NOMINAL_HZ and sum(quiet) > 0.9 * len(quiet),
        }
        # The model folder changes under the running node: it keeps its loaded model; a
        # reconfigure refuses the changed file by its sha256 and the node stays unconfigured.
        onnx = model / "policy.onnx"
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
        n0 = len(twists)
        run(2.0)
        kept = [m for _, m in twists[n0:]]
        change = node.create_client(ChangeState, f"/{name}/change_state")
        get = node.create_client(GetState, f"/{name}/get_state")
        assert change.wait_for_service(timeout_sec=10) and get.wait_for_service(timeout_sec=10)
        results = []
        for tid in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                    Transition.TRANSITION_CONFIGURE):  # fmt: skip
            fut = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
            wait_until(node, fut.done, 30, f"transition {tid}", [proc])
            results.append(fut.result().success)
        label = call_service(node, get, GetState.Request(), 10, "state", [proc])
        log = proc.log_path.read_text()
        n1 = len(twists)
        run(1.5)
        out["model_changed_on_disk"] = {
            "kept_commanding": round(sum(kept) / max(len(kept), 1), 3),
            "reconfigure_refused": (not results[2]) and "sha256 mismatch" in log,
            "state_after": label.current_state.label,
            "moving_after_refusal": int(any(m for _, m in twists[n1:])),
        }
        out["model_changed_on_disk"]["ok"] = bool(
            out["model_changed_on_disk"]["kept_commanding"] > 0.9
            and out["model_changed_on_disk"]["reconfigure_refused"]
            and label.current_state.label == "unconfigured"
            and not out["model_changed_on_disk"]["moving_after_refusal"]
        )
        crashed = not proc.alive()
    finally:
        proc.stop()
        close_node(node)
    return {
        "faults": out,
        "faults_ok": sum(bool(v.get("ok")) for v in out.values()),
        "faults_total": len(out),
        "fault_node_crashes": int(crashed),
    }


def bench_clock_jump(model: Path, log_dir: Path) -> dict:
    """A policy node on sim time (``use_sim_time``) whose clock jumps back, as when the
    simulator restarts under it: time from the jump to the first command computed again,
    and whether any command moved the arm on frames from before the jump."""
    from builtin_interfaces.msg import Time as TimeMsg
    from geometry_msgs.msg import TwistStamped
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

    from lawm_apps.harness import NodeProcess, wait_for_publishers, wait_for_subscribers
    from lawm_policy.qos import COMMAND, SENSOR_LATEST

    ros_env()
    name = "clock_node"
    cams = ["/cj/cam0", "/cj/cam1"]
    proc = NodeProcess(
        "lawm_policy",
        "policy_node",
        log_dir=log_dir / name,
        params={
            "model_dir": str(model), "camera_topics": cams, "proprio_topic": "/cj/proprio",
            "instruction": INSTRUCTION, "threads": 1, "control_rate_hz": NOMINAL_HZ,
            "stale_timeout_s": 0.5, "use_sim_time": True,
        },
        remaps={"__node": name},
    ).start()  # fmt: skip
    node, ex = bench_node("lawm_clock_jump")
    twists: list[tuple[float, float, bool]] = []  # (arrival, image stamp of the command, moving)

    def on_twist(msg) -> None:
        v = [msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z]
        twists.append((time.monotonic(), 0.0, any(x != 0.0 for x in v)))

    def on_image_time(msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        twists.append((time.monotonic(), stamp, True))

    sub = node.create_subscription(TwistStamped, f"/{name}/cmd_twist", on_twist, COMMAND)
    node.create_subscription(TwistStamped, f"/{name}/cmd_twist_image_time", on_image_time, COMMAND)
    clock = node.create_publisher(Clock, "/clock", 10)
    pubs = [node.create_publisher(Image, c, SENSOR_LATEST) for c in cams]
    proprio = node.create_publisher(Float32MultiArray, "/cj/proprio", SENSOR_LATEST)
    rng = np.random.default_rng(0)
    sim = [100.0]

    def step() -> None:
        sim[0] += 1 / NOMINAL_HZ
        t = TimeMsg(sec=int(sim[0]), nanosec=int(round((sim[0] % 1) * 1e9)) % 10**9)
        clock.publish(Clock(clock=t))
        for p in pubs:
            msg = Image(height=48, width=48, encoding="rgb8", step=144,
                        data=rng.bytes(48 * 48 * 3))  # fmt: skip
            msg.header.stamp = t
            p.publish(msg)
        proprio.publish(Float32MultiArray(data=[0.1, 0.0, 0.3, 0.02, -0.02]))

    def run(seconds: float, until=None) -> float | None:
        t0 = time.monotonic()
        nxt = t0
        while time.monotonic() - t0 < seconds:
            if time.monotonic() >= nxt:
                step()
                nxt += 1 / NOMINAL_HZ
            ex.spin_once(timeout_sec=0.002)
            if until is not None and until():
                return time.monotonic() - t0
        return None

    try:
        for p in pubs:
            wait_for_subscribers(node, p, timeout=60, procs=[proc])
        wait_for_publishers(node, sub, timeout=60, procs=[proc])
        if run(30.0, until=lambda: any(s > 0 for _, s, _ in twists)) is None:
            raise RuntimeError(f"the node never acted on sim time:\n{proc.tail()}")
        run(1.0)
        t_jump = time.monotonic()
        sim[0] = 1.0  # the simulator restarts
        resume = run(10.0, until=lambda: any(s and s < 50 and t > t_jump for t, s, _ in twists))
        run(1.0)
        old_after = [s for t, s, _ in twists if t > t_jump + 0.2 and s > 50]
        alive = proc.alive()
    finally:
        proc.stop()
        close_node(node)
    return {
        "resume_s": None if resume is None else round(resume, 3),
        "commands_from_before_the_jump": len(old_after),
        "ok": resume is not None and not old_after and alive,
        "crashed": not alive,
    }


# -- soak -----------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_soak(model: Path, minutes: float, window_min: float, log_dir: Path) -> dict:
    """The policy node with two 30 Hz cameras (640x480 jpeg, as a robot's drivers send them)
    for ``minutes``: resident memory after the first window vs at the end, e2e latency p99
    (image stamp to command) in the first window (after a warm-up of up to 10 s) and the last,
    missed control ticks."""
    import cv2
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from sensor_msgs.msg import CompressedImage

    from lawm_apps.harness import NodeProcess, wait_for_publishers, wait_for_subscribers
    from lawm_policy.qos import COMMAND, SENSOR_LATEST

    ros_env()
    name = "soak_node"
    topics = ["/sk/cam0/compressed", "/sk/cam1/compressed"]
    proc = NodeProcess(
        "lawm_policy",
        "policy_node",
        log_dir=log_dir / name,
        params={
            "model_dir": str(model),
            "camera_topics": topics,
            "instruction": INSTRUCTION,
            "proprio_topic": "/sk/proprio",
            "threads": 1,
            "control_rate_hz": NOMINAL_HZ,
            "stale_timeout_s": 0.5,
        },
        remaps={"__node": name},
    ).start()
    node, ex = bench_node("lawm_soak")
    from std_msgs.msg import Float32MultiArray

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(16):  # camera-like: smooth gradients and noise, compressed once
        img = np.linspace(0, 255, 640)[None, :, None] + rng.normal(0, 20, (480, 640, 3))
        frames.append(cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8))[1].tobytes())
    pubs = [node.create_publisher(CompressedImage, t, SENSOR_LATEST) for t in topics]
    proprio = node.create_publisher(Float32MultiArray, "/sk/proprio", SENSOR_LATEST)
    sent: set[int] = set()
    latencies: list[tuple[float, float]] = []  # (when, ms)
    missed = [0]

    def on_image_time(msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        if stamp in sent:
            ms = (node.get_clock().now().nanoseconds - stamp) / 1e6
            latencies.append((time.monotonic(), ms))

    def on_diag(msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{name}:"):
                for kv in status.values:
                    if kv.key == "missed_ticks":
                        missed[0] = int(kv.value)

    image_time = node.create_subscription(
        TwistStamped, f"/{name}/cmd_twist_image_time", on_image_time, COMMAND
    )
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    rss: list[tuple[float, float]] = []
    try:
        for p in pubs:
            wait_for_subscribers(node, p, timeout=60, procs=[proc])
        wait_for_publishers(node, image_time, timeout=60, procs=[proc])
        t0 = time.monotonic()
        end = t0 + minutes * 60
        nxt, next_rss, i = t0, t0, 0
        missed_start = None
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= nxt:
                stamp = node.get_clock().now().to_msg()
                sent.add(stamp.sec * 10**9 + stamp.nanosec)
                for k, p in enumerate(pubs):
                    msg = CompressedImage(format="jpeg", data=frames[(i + 5 * k) % len(frames)])
                    msg.header.stamp = stamp
                    p.publish(msg)
                proprio.publish(Float32MultiArray(data=[0.1, 0.0, 0.3, 0.02, -0.02]))
                i += 1
                nxt += 1 / 30
            if now >= next_rss:
                value = _rss_mb(proc.proc.pid)
                if value is not None:
                    rss.append((now - t0, value))
                next_rss += 5.0
                if missed_start is None and now - t0 >= window_min * 60:
                    missed_start = missed[0]
            ex.spin_once(timeout_sec=max(0.0, min(0.002, nxt - time.monotonic())))
        alive = proc.alive()
    finally:
        proc.stop()
        close_node(node)
    w = window_min * 60
    warm = min(10.0, w / 3)  # start-up (first inferences, discovery) is not the soak's figure

    def p99(lo: float, hi: float) -> float | None:
        xs = [ms for t, ms in latencies if t0 + lo <= t < t0 + hi]
        return round(float(np.percentile(xs, 99)), 2) if xs else None

    first, last = p99(warm, warm + w), p99(minutes * 60 - w, minutes * 60 + 1)
    after_warmup = [v for t, v in rss if t >= w]
    growth = round(rss[-1][1] - after_warmup[0], 1) if after_warmup else None
    return {
        "soak_minutes": minutes,
        "soak_window_minutes": window_min,
        "soak_commands": len(latencies),
        "soak_rss_mb_start": round(after_warmup[0], 1) if after_warmup else None,
        "soak_rss_mb_end": round(rss[-1][1], 1) if rss else None,
        "soak_rss_growth_mb": growth,
        "soak_p99_ms_first": first,
        "soak_p99_ms_last": last,
        "soak_p99_ratio": round(last / first, 3) if first and last else None,
        "soak_missed_ticks": missed[0],
        "soak_missed_ticks_after_first_window": missed[0] - (missed_start or 0),
        "soak_node_crashes": int(not alive),
        "soak_target_met": bool(
            growth is not None and growth < 20 and first and last and last <= 1.2 * first
            and missed[0] == 0 and alive
        ),
    }  # fmt: skip


# -- kill -----------------------------------------------------------------------------------
TRAIN = [sys.executable, str(ROOT / "training" / "train.py")]
KILL_STEPS = 80  # fine-tuning steps of the killed run (debug preset), a checkpoint every 2


def training_data(work: Path) -> Path:
    from lawm.data.synthetic import write_synthetic_hdf5

    path = work / "demos.hdf5"
    if not path.is_file():
        write_synthetic_hdf5(path, episodes=8, length=20, image_size=32, seed=1)
    return path


def finetune_cmd(data: Path, out: Path, lang: Path, steps: int = KILL_STEPS) -> list[str]:
    return TRAIN + [
        "finetune", "--data", str(data), "--preset", "debug", "--steps", str(steps),
        "--checkpoint-every", "2", "--log-every", "1", "--seed", "0", "--workers", "0",
        "--lang-cache", str(lang), "--quiet", "--out", str(out),
    ]  # fmt: skip


def corrupt_files(run_dir: Path) -> list[str]:
    """Files of a training run that are in place but do not load: every checkpoint (weights,
    optimizer, state), the ``latest`` pointer, the finished policy, every line of
    metrics.jsonl."""
    from lawm.checkpoint import (
        CheckpointError,
        latest_checkpoint,
        load_policy,
        load_tensors,
        read_checkpoint_state,
    )

    bad = []
    ckpts = run_dir / "checkpoints"
    for step in sorted(ckpts.glob("step_*")) if ckpts.is_dir() else []:
        try:
            load_tensors(step / "model.safetensors")
            load_tensors(step / "optimizer.safetensors")
            read_checkpoint_state(step)
        except (CheckpointError, OSError, ValueError) as err:
            bad.append(f"{step}: {err}")
    try:
        latest_checkpoint(run_dir)
    except CheckpointError as err:
        bad.append(str(err))
    if (run_dir / "policy" / "config.json").is_file():
        try:
            load_policy(run_dir / "policy")
        except (CheckpointError, OSError, ValueError) as err:
            bad.append(f"{run_dir / 'policy'}: {err}")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        steps = []
        for i, line in enumerate(metrics.read_text().splitlines()):
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                bad.append(f"{metrics}: line {i + 1} is not a complete record")
        if steps != sorted(set(steps)):
            bad.append(f"{metrics}: steps repeat or go backwards")
    return bad


def bench_kill(work: Path, kills: int, seed: int) -> dict:
    """SIGKILL fine-tuning ``kills`` times (half at random moments, half while a checkpoint is
    being written), resume each time, and compare the result with an uninterrupted run."""
    import signal
    import subprocess

    from lawm.checkpoint import load_tensors

    rng = np.random.default_rng(seed)
    data, lang = training_data(work), work / "lang.safetensors"
    ref_dir, run_dir = work / "reference", work / "killed"
    t0 = time.monotonic()
    subprocess.run(finetune_cmd(data, ref_dir, lang), check=True, capture_output=True)
    t_ref = time.monotonic() - t0
    ref = load_tensors(ref_dir / "policy" / "model.safetensors")
    ref_lines = (ref_dir / "metrics.jsonl").read_text().splitlines()
    ref_loss = [json.loads(x)["loss"] for x in ref_lines]

    def mismatches() -> int:
        """The finished run against the uninterrupted one: weights bit for bit, and the
        metrics (every step's loss, once)."""
        got = load_tensors(run_dir / "policy" / "model.safetensors")
        same = set(got) == set(ref) and all(bool((got[k] == ref[k]).all()) for k in ref)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return int(not same) + int([json.loads(x)["loss"] for x in lines] != ref_loss)

    ckpts = run_dir / "checkpoints"

    def writing() -> bool:
        try:
            return any(e.name.startswith(".step_") for e in os.scandir(ckpts))
        except FileNotFoundError:
            return False

    done, corrupt, attempts, during_write, chain, resumed, bad_resumes = 0, [], 0, 0, 0, 0, 0
    leftovers: list[str] = []
    while done < kills and attempts < 6 * kills:
        attempts += 1
        proc = subprocess.Popen(
            finetune_cmd(data, run_dir, lang), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        at_write = done % 2 == 1  # every other kill waits for a checkpoint being written
        wait = t_ref * 1.5 if at_write else rng.uniform(0.4, 1.0) * t_ref
        deadline = time.monotonic() + wait
        hit = False
        while proc.poll() is None and time.monotonic() < deadline:
            if not at_write:
                time.sleep(0.01)
            elif writing():  # busy polling: a small checkpoint is written in milliseconds
                hit = True
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done += 1
            chain += 1
            during_write += hit
            corrupt += corrupt_files(run_dir)
            continue
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"the resumed run failed: {err[-2000:]}")
        if chain:  # it finished after kills: compare, then start a fresh run
            resumed += 1
            bad_resumes += mismatches()
            corrupt += corrupt_files(run_dir)
            leftovers += [str(p) for p in run_dir.rglob(".*")]
        shutil.rmtree(run_dir)
        chain = 0
    if chain or not resumed:
        final = subprocess.run(finetune_cmd(data, run_dir, lang), capture_output=True, text=True)
        if final.returncode != 0:
            raise RuntimeError(f"the last resume failed: {final.stderr[-2000:]}")
        corrupt += corrupt_files(run_dir)
        resumed += 1
        bad_resumes += mismatches()
        leftovers += [str(p) for p in run_dir.rglob(".*")]
    return {
        "kills": done,
        "kills_during_checkpoint_write": during_write,
        "resumed_runs_compared": resumed,
        "resume_mismatches": bad_resumes,
        "corrupt_files_left": len(corrupt),
        "corrupt_examples": corrupt[:5],
        "temporaries_left": len(leftovers),
        "uninterrupted_run_s": round(t_ref, 1),
    }


def _kill_at_random(cmd: list[str], rng, t_full: float) -> bool:
    """Start ``cmd`` and SIGKILL it at a random moment of its expected duration; True if it
    was still running then (a kill), False if it finished first."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + rng.uniform(0.15, 1.0) * t_full
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def export_problems(folder: Path) -> list[str]:
    """An export folder in place must load as a whole (absent is fine)."""
    from lawm_core.model import PolicyModel
    from lawm_core.text_encoder import TextEncoderRuntime

    if not folder.exists():
        return []
    try:
        PolicyModel(folder, providers="cpu")
        if (folder / "text_encoder.json").exists():
            TextEncoderRuntime(folder)
    except Exception as err:  # noqa: BLE001 - any failure to load is the finding
        return [f"{folder}: {err}"]
    return []


def generated_problems(root: Path) -> list[str]:
    """What generate left in place must open: the HDF5, every clip (with its instruction),
    every bag, the LeRobot dataset; a clip without its text would be trained on its file
    name as the instruction."""
    from lawm.data import open_sources

    bad = []
    targets = [root / "demos.hdf5", *sorted((root / "bags").glob("*")), root / "lerobot"]
    for path in targets:
        if path.exists():
            try:
                for s in open_sources(path, labelled=True):
                    s.read(0, s.length, cameras=s.cameras, actions=True, proprio=s.has_proprio)
            except Exception as err:  # noqa: BLE001
                bad.append(f"{path}: {first_line_of(err)}")
    for clip in sorted((root / "mp4").glob("*.mp4")) if (root / "mp4").exists() else []:
        if not clip.with_suffix(".txt").is_file():
            bad.append(f"{clip}: no instruction beside it")
        try:
            for s in open_sources(clip, labelled=False):
                s.read(0, s.length, cameras=s.cameras, actions=False, proprio=False)
        except Exception as err:  # noqa: BLE001
            bad.append(f"{clip}: {first_line_of(err)}")
    return bad


def first_line_of(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def bench_kill_writers(work: Path, kills: int, seed: int, generate: bool = True) -> dict:
    """SIGKILL ``export`` and (``generate``) ``generate`` (real LIBERO, every output format) at
    random moments; after each kill whatever is in place must load, and a rerun must finish."""
    import subprocess

    rng = np.random.default_rng(seed + 7)
    data, lang = training_data(work), work / "lang.safetensors"
    ref = work / "disk_reference"
    if not (ref / "policy" / "config.json").is_file():
        subprocess.run(finetune_cmd(data, ref, lang, steps=8), check=True, capture_output=True)
    out: dict[str, Any] = {}
    export = work / "export_killed"
    shutil.rmtree(export, ignore_errors=True)
    cmd = TRAIN + ["export", "--policy", str(ref / "policy"), "--out", str(export),
                   "--action-space", "osc_pose_delta"]  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    t_export = time.monotonic() - t0
    problems, done = [], 0
    for _ in range(2 * kills):
        if done >= kills:
            break
        done += _kill_at_random(cmd, rng, t_export)
        problems += export_problems(export)
    subprocess.run(cmd, check=True, capture_output=True)
    problems += export_problems(export)
    out["export_kills"], out["export_corrupt_left"] = done, len(problems)
    out["writer_problems"] = problems[:5]
    if not generate:
        return out
    gen = work / "generate_killed"
    shutil.rmtree(gen, ignore_errors=True)
    cmd = TRAIN + ["generate", "--suite", "libero_object", "--tasks", "0", "--init-states",
                   "0-1", "--image-size", "32", "--out", str(gen / "demos.hdf5"), "--mp4-dir",
                   str(gen / "mp4"), "--rosbag", str(gen / "bags"), "--lerobot",
                   str(gen / "lerobot"), "--quiet"]  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    t_gen = time.monotonic() - t0
    shutil.rmtree(gen)
    gen_problems, done = [], 0
    for _ in range(2 * kills):
        if done >= kills:
            break
        done += _kill_at_random(cmd, rng, t_gen)
        gen_problems += generated_problems(gen)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        gen_problems.append(f"the rerun failed: {r.stderr.strip().splitlines()[-1:]}")
    gen_problems += generated_problems(gen)
    out["generate_kills"], out["generate_corrupt_left"] = done, len(gen_problems)
    out["writer_problems"] = (problems + gen_problems)[:5]
    return out


# -- disk -----------------------------------------------------------------------------------
class Tmpfs:
    """A small tmpfs mounted at ``path`` (needs root, as in the CI container); None-like when
    it cannot be mounted, with the reason in ``why``."""

    def __init__(self, path: Path, size_kb: int) -> None:
        import subprocess

        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        self.mounted = r.returncode == 0
        self.why = r.stderr.strip() or f"mount exited {r.returncode}"

    def close(self) -> None:
        import subprocess

        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


def _fill(folder: Path, leave_kb: int) -> None:
    """Fill the filesystem of ``folder`` until about ``leave_kb`` are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    n = max(free - leave_kb * 1024, 0)
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * n)


def bench_disk(work: Path) -> dict:
    """Checkpoint, export and dataset writes that run out of space on a tmpfs: each must fail
    with a one-line error, the previous files intact and loadable, and no temporary left."""
    import shutil
    import subprocess

    from lawm.data import open_sources
    from lawm_core.model import PolicyModel

    data, lang = training_data(work), work / "lang.safetensors"
    ref = work / "disk_reference"
    if not (ref / "policy" / "config.json").is_file():
        subprocess.run(finetune_cmd(data, ref, lang, steps=8), check=True, capture_output=True)
    ckpt_kb = sum(p.stat().st_size for p in (ref / "checkpoints" / "step_000002").iterdir())
    ckpt_kb = ckpt_kb // 1024 + 1
    cases: dict[str, dict] = {}
    fs = Tmpfs(work / "tmpfs", size_kb=64 * 1024)
    if not fs.mounted:
        return {"disk_full_cases": 0, "disk_skipped": f"cannot mount a tmpfs: {fs.why}"}
    try:
        # 1. A checkpoint write: the first checkpoint fits, the space runs out during a later one.
        # The run as a kill at step 5 would leave it; resuming it, checkpoint 6 has no room.
        out = fs.path / "run"
        shutil.copytree(ref / "checkpoints", out / "checkpoints")
        for late in ("step_000006", "step_000008"):
            shutil.rmtree(out / "checkpoints" / late)
        (out / "checkpoints" / "latest").write_text("step_000004\n")
        shutil.copy(ref / "metrics.jsonl", out / "metrics.jsonl")
        _fill(fs.path, leave_kb=ckpt_kb // 2)
        r = subprocess.run(finetune_cmd(data, out, lang, steps=8), capture_output=True, text=True)
        cases["checkpoint"] = _disk_case(r, [out], lambda: corrupt_files(out))
        (fs.path / "filler").unlink()
        # 2. An export: one fits; with the space gone, exporting again fails and the first stays.
        export = fs.path / "export"
        cmd = TRAIN + ["export", "--policy", str(ref / "policy"), "--out", str(export),
                       "--action-space", "osc_pose_delta", "--no-text-encoder"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        _fill(fs.path, leave_kb=8)

        def export_loads() -> list[str]:
            try:
                PolicyModel(export, providers="cpu")
                return []
            except Exception as err:  # noqa: BLE001 - any failure to load is the finding
                return [f"{export}: {err}"]

        r = subprocess.run(cmd, capture_output=True, text=True)
        cases["export"] = _disk_case(r, [export], export_loads)
        (fs.path / "filler").unlink()
        # 3. A dataset write: a LeRobot copy of the demonstrations is written, then replaced
        # (--force) with no room for the new one: the first must still open and read.
        lerobot = fs.path / "lerobot"
        cmd = TRAIN + ["convert", "--data", str(data), "--to", "lerobot", "--out", str(lerobot),
                       "--quiet", "--force"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        _fill(fs.path, leave_kb=16)

        def dataset_reads() -> list[str]:
            try:
                sources = open_sources(lerobot, labelled=True)
                for s in sources:
                    s.read(0, s.length, cameras=s.cameras, actions=True, proprio=s.has_proprio)
                return [] if len(sources) == 8 else [f"{lerobot}: {len(sources)} episodes"]
            except Exception as err:  # noqa: BLE001 - any failure to read is the finding
                return [f"{lerobot}: {err}"]

        r = subprocess.run(cmd, capture_output=True, text=True)
        cases["dataset"] = _disk_case(r, [fs.path], dataset_reads)
    finally:
        fs.close()
    return {
        "disk_full_cases": len(cases),
        "disk_full_clear_errors": sum(c["clear_error"] for c in cases.values()),
        "disk_full_previous_intact": sum(c["intact"] for c in cases.values()),
        "disk_full": cases,
    }


def _disk_case(r, folders: list[Path], check) -> dict:
    """One out-of-space case: the command failed with a one-line error that says so, what
    was there before still loads, and no temporary was left behind."""
    err = [line for line in r.stderr.splitlines() if line.strip()]
    last = err[-1] if err else ""
    clear = (
        r.returncode != 0
        and last.startswith("error:")
        and "No space left" in last
        and "Traceback" not in r.stderr
    )
    problems = check()
    leftovers = [str(p) for f in folders for p in f.rglob(".*")]
    return {
        "returncode": r.returncode,
        "error": last[:300],
        "clear_error": bool(clear),
        "intact": not problems,
        "problems": problems[:3],
        "temporaries_left": leftovers[:3],
    }


# -- main -----------------------------------------------------------------------------------
PARTS = ("fuzz", "faults", "kill", "disk", "soak")
QUICK_KILLS, FULL_KILLS, FULL_WRITER_KILLS = 2, 20, 5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages; shorter")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"of {list(PARTS)}")
    ap.add_argument("--messages", type=int, help="hostile messages (default: quick 3000, full "
                    f"{FULL_MESSAGES})")  # fmt: skip
    ap.add_argument("--rate", type=float, default=1000.0, help="hostile messages per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--soak-minutes", type=float, help="default: quick 2, full 30")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "robustness")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    line: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "quick": args.quick,
        "seed": args.seed,
    }
    with tempfile.TemporaryDirectory(prefix="lawm-robust-") as tmp:
        tmp = Path(tmp)
        if "fuzz" in parts:
            say("exporting a debug policy")
            model = export_debug_model(args.out / "model")
            n = args.messages or (QUICK_MESSAGES if args.quick else FULL_MESSAGES)
            line.update(bench_fuzz(model, n, args.rate, args.seed, tmp / "logs"))
            say("fuzzing the LIBERO bridge's command topics")
            bridge = bench_fuzz_bridge(n // 2, args.rate, args.seed, tmp / "logs")
            line.update(bridge)
            line["messages_sent"] += bridge["bridge_messages_sent"]
            line["node_crashes"] += bridge["bridge_crashes"]
            line["commands_outside_limits"] += bridge["bridge_applied_outside_limits"]
        if "faults" in parts:
            say("faults: cameras stopping, freezing, restarting; silence; a changed model")
            model = export_debug_model(args.out / "model")
            line.update(bench_faults(model, tmp, tmp / "logs"))
            jump = bench_clock_jump(model, tmp / "logs")
            line["faults"]["clock_jumps_back"] = jump
            line["faults_ok"] += int(jump["ok"])
            line["faults_total"] += 1
            line["fault_node_crashes"] += int(jump["crashed"])
        if "soak" in parts:
            minutes, window = (2.0, 0.5) if args.quick else (30.0, 5.0)
            minutes = args.soak_minutes or minutes
            say(f"soak: two 30 Hz cameras for {minutes:g} min")
            model = export_debug_model(args.out / "model")
            line.update(bench_soak(model, minutes, min(window, minutes / 4), tmp / "logs"))
        work = args.out / "training"
        work.mkdir(parents=True, exist_ok=True)
        if "kill" in parts:
            kills = QUICK_KILLS if args.quick else FULL_KILLS
            say(f"killing fine-tuning {kills} times")
            for d in ("reference", "killed"):
                shutil.rmtree(work / d, ignore_errors=True)
            line.update(bench_kill(work, kills, args.seed))
            n = QUICK_KILLS if args.quick else FULL_WRITER_KILLS
            say(f"killing export and generate {n} times each")
            line.update(bench_kill_writers(work, n, args.seed))
            line["kills"] += line["export_kills"] + line["generate_kills"]
            line["corrupt_files_left"] += (
                line["export_corrupt_left"] + line["generate_corrupt_left"]
            )
        if "disk" in parts:
            say("running out of disk space")
            line.update(bench_disk(work))
    line["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(line)
    (args.out / "results.json").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
