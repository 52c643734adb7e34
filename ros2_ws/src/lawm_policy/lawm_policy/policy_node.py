"""The LAWM policy as a ROS 2 lifecycle node: camera images in, end-effector commands out.

A thin shell around the runtime core: it owns parameters, QoS, timers and messages, and
converts them; ``lawm_core.runner.PolicyRunner`` (onnxruntime + numpy) decides each step:
image fitting, inference, temporal aggregation, denormalisation, and when to restart the
aggregation (inputs missing or stale, a stalled loop, the clock going back).

- configure: read parameters, load and verify the exported model (sha256), the text encoder;
  any failure is logged with its reason and leaves nothing behind. Loading runs inside the
  transition, so the executor is busy for its duration (logged as "loaded in ... ms"): rclpy
  runs lifecycle transitions synchronously, and nothing of this node is subscribed or timed
  before activate, so no input is missed; only service calls to the node wait.
- activate: subscribe to cameras / robot state / instruction, start the control timer (and
  unpause MoveIt Servo when enabled).
- deactivate, shutdown, Ctrl-C / SIGTERM: one zero twist, then stop (Servo paused).

Operator controls: ``~/enable`` (std_srvs/SetBool) switches between sending commands and a
dry run (the policy runs, ``~/action`` and ``/diagnostics`` are published, the twist is held
at zero and no gripper command is sent); ``start_enabled`` picks the state at configure.
Enabling restarts the aggregation and the rate limiter, so the arm ramps up from rest. The
safety limits and gains can be changed while active (``ros2 param set``): the new set is
validated as a whole and applied at once, or refused with the reason. A control step that
raises sends a zero twist, reports ERROR in ``/diagnostics`` and the next tick tries again.

Inference runs on the control timer from the newest frames (image callbacks validate,
convert and store them). When a camera's next frame is due within ``frame_wait_s``, the tick
waits for it, and for every other camera's frame due within that time (``core.frame_phase``):
the command then reflects images a few ms old instead of up to a camera period old (0-33 ms at
30 Hz), which is most of the end-to-end latency of a timer-driven loop, and cameras triggered
together are used together. Not on sim time (there frames follow actions).

Inputs: cameras (``sensor_msgs/Image``, or ``CompressedImage`` on a topic ending in
``/compressed``), the robot state and ``~/instruction``; the arm-side interfaces (robot state
from PoseStamped / TF / JointState, gripper outputs, pose targets, MoveIt Servo) are
``lawm_policy.arm_io``.

Outputs: ``~/action`` (raw 7-D action in the training data's units), ``~/cmd_twist``,
``~/cmd_twist_image_time``, ``~/cmd_gripper`` (+ the configured gripper interface; on change
only), ``~/cmd_pose`` (with ``pose_target``) and ``/diagnostics``. Every ``~/cmd_twist`` is
stamped with the node's clock when it is published (sim time on sim time): an arm servo drops
commands older than its timeout (MoveIt Servo: ``incoming_command_timeout``, 0.1 s), and the
images a command acts on may be up to ``stale_timeout_s`` old. What a command was computed
from goes to ``~/cmd_twist_image_time``: right after each ``~/cmd_twist`` computed from images,
the same twist stamped with the newest image used (zero twists for stale or missing inputs,
stops and failed steps have no image and none). In a tick the order is ``~/action``,
``~/cmd_twist``, ``~/cmd_twist_image_time``: tools pair an image stamp with its command and raw
action by that order (the publishers' source timestamps), latency = receipt - image stamp.
Stale or missing inputs give a zero twist each tick and a diagnostic warning; the node resumes
by itself when they return.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
import zlib
from collections import deque
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import SetBool, Trigger

from lawm_core.command import Command
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.frame_phase import FrameWait
from lawm_core.model import PolicyModel
from lawm_core.preprocess import image_from_compressed, image_from_msg_fields
from lawm_core.runner import INSTRUCTION, PolicyRunner
from lawm_core.safety import SafetyFilter
from lawm_core.text_encoder import TextEncoderRuntime
from lawm_core.watchdog import StalenessWatchdog
from lawm_policy.arm_io import EE_POSE, GripperOutput, PoseTarget, RobotState, ServoControl
from lawm_policy.policy_params import (
    ANY_TIME_PARAMETERS,
    GAIN_PARAMETERS,
    PARAMETERS,
    SAFETY_PARAMETERS,
    PolicyParams,
    action_mapper,
    check_robot_io,
    gripper_switch,
    read_params,
    safety_limits,
)
from lawm_policy.qos import COMMAND, LATCHED, SENSOR_LATEST

# Fault injection for tests of the failure path (never set on a robot): while the file this
# variable names exists, every control step raises, as an onnxruntime or driver error would.
FAULT_ENV = "LAWM_POLICY_FAULT_FILE"
FAULT_FILE = os.environ.get(FAULT_ENV, "")

# ~/instruction is received from a latched publisher (transient local, what
# instruction_publisher offers; a late-started node still gets the task) and from a plain one
# (volatile, e.g. `ros2 topic pub`), which a transient-local subscription cannot match.
INSTRUCTION_VOLATILE = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "lawm_policy", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self.declare_parameter(
            "autostart", True, ParameterDescriptor(description="Configure and activate at start.")
        )
        self.params: PolicyParams | None = None
        self.model: PolicyModel | None = None
        self.text_encoder: TextEncoderRuntime | None = None
        self.runner: PolicyRunner | None = None
        self._subs: list = []
        self._timer = None
        self._diag_timer = None
        self._wait_timer = None  # a wait's timeout: reset when a tick waits, cancelled at its end
        self._awaited: set[str] = set()  # cameras the current wait still needs (empty: none)
        self.pub_action = self.pub_twist = self.pub_diag = None
        self.pub_image_time = None
        self.robot: RobotState | None = None
        self.gripper_out: GripperOutput | None = None
        self.pose_out: PoseTarget | None = None
        self.servo: ServoControl | None = None
        self._reset_srv = self._enable_srv = None
        self.enabled = False  # False: dry run (zero twists, no gripper); set at configure
        self.tick_error: str | None = None  # the failing control step's error (None: fine)
        self.tick_failures = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- parameters -----------------------------------------------------------------------
    def _read_params(self, changes: dict[str, object] | None = None) -> PolicyParams:
        """The parameters as they are, or as they would be with ``changes`` (name -> value)."""
        return read_params(lambda name: self.get_parameter(name).value, changes)

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        """Validate a run-time change as a whole; apply safety limits at once when configured.

        Unconfigured, anything goes (configure validates). Configured, a change of the safety
        limits or gains builds a new filter and mapper first and is refused as a whole, with the
        reason, if that fails; the other parameters of this node only take effect at configure
        and are refused (``start_enabled`` excepted: it only matters at the next configure).
        """
        changes = {q.name: q.value for q in params if q.name in PARAMETERS}
        if self.params is None or not changes:
            return SetParametersResult(successful=True)
        live = set(SAFETY_PARAMETERS) | set(GAIN_PARAMETERS)
        fixed = sorted(set(changes) - live - set(ANY_TIME_PARAMETERS))
        if fixed:
            return SetParametersResult(
                successful=False,
                reason=f"{fixed} cannot change while configured: deactivate, clean up, set "
                "and configure again",
            )
        applied = [n for n in changes if n in live]
        if not applied:
            return SetParametersResult(successful=True)
        # Both built before anything changes: all of the change, or none of it.
        try:
            p = self._read_params(changes)
            safety = SafetyFilter(safety_limits(p))
            mapper = action_mapper(self.model, p)
            switch = gripper_switch(p)
        except (TypeError, ValueError) as err:
            return SetParametersResult(successful=False, reason=f"refused {applied}: {err}")
        safety.previous = self.safety.previous  # the rate limit continues from the last command
        switch.state = self.gripper_switch.state  # the gripper stays as it is
        self.params, self.safety, self.mapper = p, safety, mapper
        self.gripper_switch = switch
        self.get_logger().info(
            "changed at run time: " + ", ".join(f"{n}={getattr(p, n)}" for n in applied)
        )
        return SetParametersResult(successful=True)

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Every failure is logged with its reason (rclpy would turn an exception into an error
        # transition without a word) and leaves nothing behind, so a configure after fixing
        # the parameter starts clean.
        try:
            result = self._configure()
        except Exception as err:  # noqa: BLE001 - any failure must be reported, not swallowed
            self.get_logger().error(
                f"cannot configure: {type(err).__name__}: {err}\n{traceback.format_exc()}"
            )
            result = TransitionCallbackReturn.FAILURE
        if result != TransitionCallbackReturn.SUCCESS:
            self._release()
        return result

    def _configure(self) -> TransitionCallbackReturn:
        try:
            p = self._read_params()
            if not p.model_dir:
                raise ModelLoadError("parameter 'model_dir' is empty: set it to an export dir")
            t_load = time.perf_counter()
            model = PolicyModel(
                p.model_dir, providers=p.providers, threads=p.threads, backend=p.backend
            )
            if len(p.camera_topics) != len(model.cameras):
                raise ModelLoadError(
                    f"camera_topics has {len(p.camera_topics)} topics {list(p.camera_topics)} "
                    f"but the model expects {len(model.cameras)} cameras {list(model.cameras)}"
                )
            check_robot_io(p)
            self.safety = SafetyFilter(safety_limits(p))
            self.mapper = action_mapper(model, p)
            self.gripper_switch = gripper_switch(p)
            rate_hz = p.control_rate_hz or model.control_rate_hz
            period = 1.0 / rate_hz
            if not 0 <= p.frame_wait_s < period:
                raise ValueError(
                    f"frame_wait_s must be in [0, one control period {period:.3f} s), "
                    f"got {p.frame_wait_s!r}"
                )
        except (ModelLoadError, ValueError) as err:
            self.get_logger().error(f"cannot configure: {err}")
            return TransitionCallbackReturn.FAILURE
        self.params, self.model = p, model
        self.enabled = bool(self.get_parameter("start_enabled").value)
        self.tick_error, self.tick_failures = None, 0
        self.text_encoder = self._load_text_encoder(Path(p.model_dir))
        self.rate_hz = rate_hz
        # A step more than two control periods after the previous one (a stalled loop) or
        # before it (a restarted simulation's clock) restarts the aggregation.
        self.runner = PolicyRunner(model, max_gap_s=2.0 / rate_hz)
        self.robot = RobotState(
            self, p, model.spec.proprio_layout, self._report_input, self._warn, self._clear
        )
        self.watchdog = StalenessWatchdog(
            p.stale_timeout_s,
            [*model.cameras, *self.robot.required],
            frozen_timeout_s=p.frozen_timeout_s,
        )
        self.latest: dict[str, tuple[np.ndarray, object]] = {}  # camera -> (RGB, stamp)
        self.lang: np.ndarray | None = None
        self.instruction_text = ""
        self.warnings: dict[str, str] = {}
        self.infer_ms: deque[float] = deque(maxlen=200)
        self.tick_times: deque[float] = deque(maxlen=200)
        self.missed_ticks = 0
        self.ticks = 0
        sim_time = bool(self.get_parameter("use_sim_time").value)
        # In lock-step simulation frames follow actions: there is no camera phase to lock to.
        self.frame_wait = FrameWait(self.model.cameras, 0.0 if sim_time else p.frame_wait_s)
        self.frame_waits = 0
        self.frame_wait_timeouts = 0  # waits that ended without every awaited frame
        self.pub_action = self.create_lifecycle_publisher(Float32MultiArray, "~/action", COMMAND)
        self.pub_twist = self.create_lifecycle_publisher(TwistStamped, "~/cmd_twist", COMMAND)
        self.pub_image_time = self.create_lifecycle_publisher(
            TwistStamped, "~/cmd_twist_image_time", COMMAND
        )
        self.gripper_out = GripperOutput(self, p, self._warn)
        if p.pose_target:
            self.pose_out = PoseTarget(self, p.frame_id, 1.0 / rate_hz)
        if p.servo_node:
            self.servo = ServoControl(self, p.servo_node)
        self.pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset)
        self._enable_srv = self.create_service(SetBool, "~/enable", self._on_enable)
        self.model.warmup()
        load_ms = (time.perf_counter() - t_load) * 1e3
        if not self.robot.gives_proprio:
            self.get_logger().warning(
                "no robot state source (proprio_topic, pose_topic / pose_tf_frame, "
                "joint_states_topic): the model gets its training mean as proprio "
                f"{list(model.spec.proprio_layout)}"
            )
        if p.instruction.strip():
            self._set_instruction(p.instruction)
        self.get_logger().info(
            f"configured: model {p.model_dir} (sha256 {model.spec.onnx_sha256[:12]}), "
            f"provider {model.provider}, {model.selection.summary()}, loaded in {load_ms:.0f} "
            f"ms, {self.rate_hz:g} Hz, cameras "
            + ", ".join(f"{c}<-{t}" for c, t in zip(model.cameras, p.camera_topics))
            + ("" if self.enabled else "; DISABLED (dry run): call ~/enable to send commands")
        )
        return TransitionCallbackReturn.SUCCESS

    def _load_text_encoder(self, model_dir: Path) -> TextEncoderRuntime | None:
        if not (model_dir / "text_encoder.json").is_file():
            self.get_logger().warning(
                f"{model_dir} has no text encoder: instructions cannot be embedded, so the "
                "policy will not act until the model is exported with one"
            )
            return None
        return TextEncoderRuntime(model_dir)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, model = self.params, self.model
        for cam, topic in zip(model.cameras, p.camera_topics):
            # image_transport's naming: <camera>/compressed carries CompressedImage.
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self._subs.append(
                self.create_subscription(
                    kind, topic, lambda msg, c=cam: self._on_image(c, msg), SENSOR_LATEST
                )
            )
        self.robot.start()
        for qos in (LATCHED, INSTRUCTION_VOLATILE):
            self._subs.append(
                self.create_subscription(String, "~/instruction", self._on_instruction, qos)
            )
        self.runner.reset()
        self.safety.reset()
        self.frame_wait.reset()  # new subscriptions: learn the cameras' phases afresh
        self.gripper_switch.reset()
        if self.enabled and self.servo is not None:
            self.servo.start()
        self._timer = self.create_timer(1.0 / self.rate_hz, self._tick)
        self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        if self.frame_wait.max_wait_s > 0:
            self._wait_timer = self.create_timer(self.frame_wait.max_wait_s, self._on_wait_timeout)
            self._wait_timer.cancel()
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        self.send_zero()  # still active here
        if self.servo is not None:
            self.servo.stop()
        self.get_logger().info("inactive: commands stopped")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.send_zero()  # inactive: a no-op, the zero went out at deactivate
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.send_zero()  # from active: the arm must not keep the last command
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def send_zero(self) -> None:
        """Publish one zero twist now (no gripper command; a pose target holds the measured
        pose) if the command publisher is active."""
        if self.pub_twist is not None and self.pub_twist.is_activated:
            self._publish_command(Command.zero())

    def _release(self) -> None:
        """Stop the loop and destroy what configure created (all of it, or the part a failed
        configure got to)."""
        self._stop_io()
        pubs = (self.pub_action, self.pub_twist, self.pub_image_time, self.pub_diag)
        for pub in pubs:
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        for srv in (self._reset_srv, self._enable_srv):
            if srv is not None:
                self.destroy_service(srv)
        for part in (self.robot, self.gripper_out, self.pose_out, self.servo):
            if part is not None:
                part.release()
        self.robot = self.gripper_out = self.pose_out = self.servo = None
        self.pub_action = self.pub_twist = self.pub_diag = None
        self.pub_image_time = None
        self._reset_srv = self._enable_srv = None
        self.params = self.model = self.runner = self.text_encoder = None
        self.enabled = False

    def _stop_io(self) -> None:
        self._awaited.clear()
        for timer in (self._timer, self._diag_timer, self._wait_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._timer = self._diag_timer = self._wait_timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self.robot is not None:
            self.robot.stop()

    # -- inputs ---------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def _stamp_s(stamp) -> float:
        return stamp.sec + stamp.nanosec * 1e-9

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        # Validate at the edge (a malformed frame never replaces a good one) and keep only the
        # newest; resizing and inference happen on the timer.
        try:
            if isinstance(msg, CompressedImage):
                kind = msg.format
                image = image_from_compressed(msg.data, msg.format)
            else:
                kind = msg.encoding
                image = image_from_msg_fields(
                    msg.data, msg.encoding, msg.height, msg.width, msg.step
                )
        except InputError as err:
            self._warn(camera, f"bad image on {camera} ({kind!r}): {err}")
            return
        digest = zlib.crc32(msg.data) if self.watchdog.frozen_timeout_s else None
        stamp_s = self._stamp_s(msg.header.stamp)
        if self.watchdog.update(camera, stamp_s, self._now_s(), content=digest):
            self.latest[camera] = (image, msg.header.stamp)
            self.warnings.pop(camera, None)
            self.frame_wait.arrived(camera, time.monotonic())
            if camera in self._awaited:
                self._awaited.discard(camera)
                if not self._awaited:  # the last frame a waiting tick needed
                    self._end_wait()
                    self._act()
        else:
            self._warn(camera, f"rejected {camera} image: {self.watchdog.rejections[camera]}")

    def _report_input(self, name: str, stamp_s: float | None) -> bool:
        """A robot-state message's stamp (None: its arrival) for the watchdog; False (and a
        warning) when the stamp is refused."""
        now = self._now_s()
        if self.watchdog.update(name, now if stamp_s is None else stamp_s, now):
            return True
        self._warn(name, f"rejected {name}: {self.watchdog.rejections[name]}")
        return False

    def _clear(self, key: str) -> None:
        self.warnings.pop(key, None)

    def _on_instruction(self, msg: String) -> None:
        # A latched publisher reaches both subscriptions: the second copy changes nothing.
        if self.lang is not None and " ".join(msg.data.split()) == self.instruction_text:
            return
        self._set_instruction(msg.data)

    def _set_instruction(self, text: str) -> None:
        if self.text_encoder is None:
            self._warn(INSTRUCTION, "no text encoder in the model directory")
            return
        try:
            lang = self.text_encoder.embed(text)
        except ValueError as err:
            self._warn(INSTRUCTION, f"refused instruction {text[:60]!r}: {err}")
            return
        self.lang = lang.astype(np.float32)
        self.instruction_text = " ".join(text.split())
        self.runner.reset()
        self.get_logger().info(f"instruction: {self.instruction_text!r}")

    def _on_reset(self, request, response):
        self.runner.reset()
        self.safety.reset()
        self.gripper_switch.reset()  # the next decision is sent, whatever was sent before
        response.success = True
        response.message = "aggregation buffer and rate limiter cleared"
        return response

    def _on_enable(self, request, response):
        if request.data and not self.enabled:
            # From a standstill: the first command ramps up from zero on fresh chunks, and the
            # gripper gets the policy's current decision.
            self.runner.reset()
            self.safety.reset()
            self.gripper_switch.reset()
            if self.servo is not None and self._timer is not None:  # active
                self.servo.start()
        elif not request.data and self.enabled:
            self.enabled = False
            self.send_zero()
            if self.servo is not None:
                self.servo.stop()
        self.enabled = bool(request.data)
        response.success = True
        response.message = (
            "enabled: commands go to the arm"
            if self.enabled
            else "disabled (dry run): zero twists, no gripper or pose commands"
        )
        self.get_logger().info(response.message)
        return response

    def _warn(self, key: str, text: str) -> None:
        if self.warnings.get(key) != text:
            self.get_logger().warning(text)
        self.warnings[key] = text

    # -- control loop ---------------------------------------------------------------------
    def _missing(self, now_s: float) -> list[str]:
        """Inputs that are stale or absent (an instruction never goes stale once set)."""
        missing = list(self.watchdog.stale(now_s))
        missing += [c for c in self.model.cameras if c not in self.latest and c not in missing]
        if self.lang is None:
            missing.append(INSTRUCTION)
        return missing

    def _tick(self) -> None:
        self._guarded(self._tick_once)

    def _guarded(self, step) -> None:
        """Run one control step; any exception stops the arm (a zero twist) and is reported
        (traceback logged once per kind of failure, ERROR in /diagnostics), and the node
        carries on: the next tick tries again."""
        try:
            stepped = step()
        except Exception as err:  # noqa: BLE001 - a dead loop would leave the arm moving
            self._on_step_error(err)
            return
        # A tick that only started a frame wait proves nothing: recovery is a step that ran.
        if stepped and self.tick_error is not None:
            self.get_logger().info(
                f"control step works again after {self.tick_failures} failed step(s)"
            )
            self.tick_error, self.tick_failures = None, 0

    def _on_step_error(self, err: Exception) -> None:
        text = f"{type(err).__name__}: {err}"
        if text != self.tick_error:
            self.get_logger().error(
                f"control step failed (zero twist; retrying every tick): {text}\n"
                + traceback.format_exc()
            )
        self.tick_error = text
        self.tick_failures += 1
        try:
            if self._wait_timer is not None:
                self._end_wait()
            self.runner.reset()
            self.safety.reset()
            self.send_zero()
        except Exception as stop_err:  # noqa: BLE001 - report, the next tick tries again
            self.get_logger().error(f"zero twist after a failed step failed too: {stop_err}")

    def _tick_once(self) -> bool:
        t0 = time.perf_counter()
        self.ticks += 1
        if self.tick_times and t0 - self.tick_times[-1] > 1.5 / self.rate_hz:
            self.missed_ticks += int((t0 - self.tick_times[-1]) * self.rate_hz - 0.5)
        self.tick_times.append(t0)
        if self._awaited:  # a stalled wait outlived its period: this tick decides
            self._end_wait()
        cameras = self.frame_wait.due(time.monotonic())
        if cameras:
            # Frames due within frame_wait_s: act when the last of them arrives, or when
            # frame_wait_s runs out (a late or dropped frame).
            self._awaited = set(cameras)
            self._wait_timer.reset()
            self.frame_waits += 1
            return False
        return self._act_once()

    def _end_wait(self) -> None:
        self._awaited.clear()
        self._wait_timer.cancel()

    def _on_wait_timeout(self) -> None:
        if not self._awaited:  # ended by the last frame while this call was already due
            self._wait_timer.cancel()
            return
        self.frame_wait_timeouts += 1
        self._end_wait()
        self._act()

    def _act(self) -> None:
        self._guarded(self._act_once)

    def _act_once(self) -> bool:
        """One runner step on the newest inputs and the command out (a zero twist if it did
        not act: inputs stale or missing, or refused); True once done."""
        if FAULT_FILE and os.path.exists(FAULT_FILE):
            raise RuntimeError(f"fault injected: {FAULT_FILE} exists ({FAULT_ENV})")
        now = self.get_clock().now()
        now_s = now.nanoseconds * 1e-9
        images = {cam: img for cam, (img, _) in self.latest.items()}
        self.robot.poll_tf()
        result = self.runner.step(
            images, self.robot.proprio(), self.lang, now_s, stale=self.watchdog.stale(now_s)
        )
        if not result.acted:
            if result.missing:
                if not result.was_missing:
                    self._warn(
                        "inputs",
                        f"stale or missing inputs: {sorted(result.missing)}; zero twist",
                    )
                self.safety.reset()
            else:
                self._warn("inference", f"inference skipped: {result.error}")
            self._publish_command(Command.zero())
            return True
        if result.was_missing:
            self.get_logger().info("inputs back: acting")
            self.warnings.pop("inputs", None)
        self.warnings.pop("inference", None)  # a refused input is over once the policy acts
        self.infer_ms.append(result.seconds * 1e3)
        self.pub_action.publish(Float32MultiArray(data=[float(v) for v in result.raw]))
        cmd = self.mapper.to_command(result.raw)
        cmd, reasons = self.safety.filter(cmd, 1.0 / self.rate_hz, ee_pos=self.robot.position())
        if reasons:
            self.warnings["safety"] = ", ".join(reasons)
        else:
            self.warnings.pop("safety", None)
        # Validated before anything goes out (a stamp a ROS Time cannot hold raises here).
        newest = max(
            Time.from_msg(self.latest[cam][1], clock_type=now.clock_type)
            for cam in self.model.cameras
        )
        self._publish_command(cmd, image_time=newest)
        if self.enabled:
            # Only when the policy acted (a stale or stopped policy holds the gripper as it is
            # rather than opening or closing it), and only when the decision changes.
            change = self.gripper_switch.update(self.mapper.closing(result.raw))
            if change is not None:
                self.gripper_out.send(change)
        return True

    def _publish_command(self, cmd: Command, image_time: Time | None = None) -> None:
        """Publish the twist stamped now; then, for a command computed from images
        (``image_time``: the newest image used), the same twist stamped ``image_time`` on
        ``~/cmd_twist_image_time``; with ``pose_target``, the pose target the twist leads to
        (a zero twist: hold the measured pose; none without a fresh measured pose).
        Disabled (dry run): a zero twist and no pose target, whatever ``cmd`` is."""
        if not self.enabled:
            cmd = Command.zero()
        msg = TwistStamped()
        msg.header.frame_id = self.params.frame_id
        lin = np.nan_to_num(cmd.linear, nan=0.0, posinf=0.0, neginf=0.0)
        ang = np.nan_to_num(cmd.angular, nan=0.0, posinf=0.0, neginf=0.0)
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in lin)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in ang)
        msg.header.stamp = self.get_clock().now().to_msg()  # last: as close to sending as can be
        self.pub_twist.publish(msg)
        if image_time is not None:
            msg.header.stamp = image_time.to_msg()
            self.pub_image_time.publish(msg)
        if self.pose_out is not None and self.enabled and self.pose_out.pub.is_activated:
            pose = self.robot.pose()
            if pose is not None and EE_POSE not in self.watchdog.stale(self._now_s()):
                self.pose_out.send(pose, lin, ang)

    def _publish_diagnostics(self) -> None:
        now_s = self._now_s()
        status = DiagnosticStatus(name=f"{self.get_name()}: policy", hardware_id="lawm_policy")
        stale = self._missing(now_s)
        problems = dict(self.warnings)
        if stale:
            problems["inputs"] = f"stale or missing: {sorted(stale)}"
        if self.tick_error is not None:
            problems["control step failed"] = (
                f"{self.tick_error} ({self.tick_failures} in a row; zero twist)"
            )
        if not self.enabled:
            problems["disabled"] = "dry run: zero twist, no gripper command; call ~/enable"
        status.level = (
            DiagnosticStatus.ERROR
            if self.tick_error is not None
            else DiagnosticStatus.WARN
            if problems
            else DiagnosticStatus.OK
        )
        status.message = "; ".join(f"{k}: {v}" for k, v in problems.items()) or "acting"
        ms = np.asarray(self.infer_ms) if self.infer_ms else np.zeros(1)
        ticks = np.diff(np.asarray(self.tick_times)) if len(self.tick_times) > 1 else None
        chosen = self.model.selection.chosen
        values = {
            "provider": self.model.provider,
            "backend": self.model.backend,
            "precision": self.model.precision,
            "backend_reason": self.model.selection.reason,
            "backend_check_ms_p50": "" if chosen.ms_p50 is None else f"{chosen.ms_p50:.2f}",
            "backend_max_abs_error": (
                "" if chosen.max_abs_error is None else f"{chosen.max_abs_error:.5f}"
            ),
            "inference_ms_p50": f"{np.percentile(ms, 50):.2f}",
            "inference_ms_p99": f"{np.percentile(ms, 99):.2f}",
            "loop_rate_hz": f"{1.0 / ticks.mean():.2f}" if ticks is not None else "0",
            "ticks": str(self.ticks),
            "missed_ticks": str(self.missed_ticks),
            "frame_waits": str(self.frame_waits),
            "frame_wait_timeouts": str(self.frame_wait_timeouts),
            "instruction": self.instruction_text,
            "enabled": str(self.enabled).lower(),
            "failed_steps": str(self.tick_failures),
            "gripper": {None: "none sent", 1.0: "closed", -1.0: "open"}[self.gripper_switch.state],
            "gripper_commands": str(self.gripper_out.sent),
        }
        if self.servo is not None:
            values["servo"] = self.servo.state
        for name, age in self.watchdog.ages(now_s).items():
            values[f"age_{name}_s"] = f"{age:.3f}"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


class _StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM (what launch sends when SIGINT was not enough) set a flag the
    spin loop reads. A raised KeyboardInterrupt would be lost when the signal lands inside a
    finalizer (Python prints "Exception ignored" and carries on), and the node would keep
    running; a flag cannot be lost."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum


def _stop_arm(node: PolicyNode) -> None:
    """A zero twist on the way out, delivered before the context goes down (at most 1 s)."""
    if not rclpy.ok():  # shut down from outside: nothing can be published any more
        return
    try:
        node.send_zero()
        if node.pub_twist is not None:
            node.pub_twist.wait_for_all_acked(Duration(seconds=1.0))
    except Exception as err:  # noqa: BLE001 - exiting anyway; say why the zero did not go out
        node.get_logger().error(f"could not send the zero twist on exit: {err}")


def main(args: list[str] | None = None) -> None:
    # Ctrl-C and SIGTERM end the spin loop instead of shutting the context down at once, so
    # the last command can still be a zero twist.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    node = None
    try:
        node = PolicyNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and stop.signum is None:
            executor.spin_once(timeout_sec=0.1)  # wakes often enough to see a signal
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            _stop_arm(node)
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
