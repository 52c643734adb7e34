"""The LAWM policy as a ROS 2 lifecycle node: camera images in, end-effector commands out.

A thin shell around the runtime core: it owns parameters, QoS, timers and messages, and
converts them; ``lawm_core.runner.PolicyRunner`` (onnxruntime + numpy) decides each step:
image fitting, inference, temporal aggregation, denormalisation, and when to restart the
aggregation (inputs missing or stale, a stalled loop, the clock going back).

- configure: read parameters, load and verify the exported model (sha256), the text encoder.
- activate: subscribe to cameras / proprio / instruction, start the control timer.
- deactivate: stop the timer and subscriptions, send one zero twist.

Inference runs on the control timer from the newest frames (image callbacks validate,
convert and store them). When a camera's next frame is due within ``frame_wait_s``, the tick
waits for it, and for every other camera's frame due within that time (``core.frame_phase``):
the command then reflects images a few ms old instead of up to a camera period old (0-33 ms at
30 Hz), which is most of the end-to-end latency of a timer-driven loop, and cameras triggered
together are used together. Not on sim time (there frames follow actions).

Outputs: ``~/action`` (raw 7-D action in the training data's units),
``~/cmd_twist`` (stamped with the newest image used), ``~/cmd_gripper`` and ``/diagnostics``.
Stale or missing inputs give a zero twist each tick and a diagnostic warning; the node resumes
by itself when they return.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.time import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, Float64, String
from std_srvs.srv import Trigger

from lawm_core.command import ActionMapper, Command
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.frame_phase import FrameWait
from lawm_core.model import PolicyModel
from lawm_core.preprocess import image_from_msg_fields
from lawm_core.runner import INSTRUCTION, PROPRIO, PolicyRunner
from lawm_core.safety import SafetyFilter, SafetyLimits
from lawm_core.text_encoder import TextEncoderRuntime
from lawm_core.watchdog import StalenessWatchdog
from lawm_policy.qos import COMMAND, LATCHED, SENSOR_LATEST


@dataclass(frozen=True)
class PolicyParams:
    model_dir: str
    camera_topics: tuple[str, ...]
    proprio_topic: str
    instruction: str
    control_rate_hz: float
    stale_timeout_s: float
    providers: str
    threads: int
    frame_id: str
    linear_scale: tuple[float, ...]
    angular_scale: tuple[float, ...]
    gripper_threshold: float
    max_linear_axis: tuple[float, ...]
    max_angular_axis: tuple[float, ...]
    max_linear_speed: float
    max_angular_speed: float
    max_linear_accel: float
    max_angular_accel: float
    workspace_min: tuple[float, ...]
    workspace_max: tuple[float, ...]
    diagnostics_period_s: float
    frame_wait_s: float


# name -> (default, description). Declared once, read into PolicyParams.
PARAMETERS: dict[str, tuple[object, str]] = {
    "model_dir": ("", "Exported model directory (policy.onnx + policy.json [+ text encoder])."),
    "camera_topics": (
        ["/camera/agentview/image_raw", "/camera/eye_in_hand/image_raw"],
        "One image topic per camera, in the order of the model's 'cameras'.",
    ),
    "proprio_topic": (
        "",
        "std_msgs/Float32MultiArray [ee_x, ee_y, ee_z, gripper_l, gripper_r]; empty: the "
        "model gets the training mean (no robot state).",
    ),
    "instruction": ("", "Task instruction until one arrives on ~/instruction."),
    "control_rate_hz": (0.0, "Inference and command rate; 0 takes the model's own rate."),
    "stale_timeout_s": (0.5, "Inputs older than this give a zero twist."),
    "providers": ("auto", "onnxruntime providers: auto, tensorrt, cuda or cpu."),
    "threads": (0, "onnxruntime intra-op threads (0: onnxruntime's default)."),
    "frame_id": ("base_link", "Frame of the published twist."),
    "linear_scale": ([0.5, 0.5, 0.5], "m/s per unit of normalised action (x, y, z)."),
    "angular_scale": ([1.0, 1.0, 1.0], "rad/s per unit of normalised action (rx, ry, rz)."),
    "gripper_threshold": (0.0, "Normalised gripper action above this closes the gripper."),
    "max_linear_axis": ([0.25, 0.25, 0.25], "Per-axis linear speed limit, m/s."),
    "max_angular_axis": ([0.8, 0.8, 0.8], "Per-axis angular speed limit, rad/s."),
    "max_linear_speed": (0.3, "Linear speed norm limit, m/s."),
    "max_angular_speed": (1.0, "Angular speed norm limit, rad/s."),
    "max_linear_accel": (2.0, "Linear rate limit, m/s^2."),
    "max_angular_accel": (6.0, "Angular rate limit, rad/s^2."),
    "workspace_min": ([0.0], "Workspace box minimum [x, y, z] in the proprio frame; [0.0]: off."),
    "workspace_max": ([0.0], "Workspace box maximum [x, y, z]; [0.0]: off."),
    "diagnostics_period_s": (1.0, "Period of /diagnostics messages."),
    "frame_wait_s": (
        0.012,
        "Longest a control tick waits for the cameras' frames that are about to arrive (the "
        "command then reflects fresh images instead of ones up to a camera period old); "
        "0: never wait. Not used on sim time.",
    ),
}


def _tuple(value) -> tuple:
    return tuple(float(v) for v in value)


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
        self._pubs_ready = False

    # -- parameters -----------------------------------------------------------------------
    def _read_params(self) -> PolicyParams:
        values = {}
        for f in fields(PolicyParams):
            v = self.get_parameter(f.name).value
            values[f.name] = (
                _tuple(v)
                if isinstance(v, (list, tuple)) and f.name not in ("camera_topics",)
                else v
            )
        values["camera_topics"] = tuple(str(t) for t in values["camera_topics"])
        if values["workspace_min"] == (0.0,):
            values["workspace_min"] = ()
        if values["workspace_max"] == (0.0,):
            values["workspace_max"] = ()
        return PolicyParams(**values)

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            p = self._read_params()
            if not p.model_dir:
                raise ModelLoadError("parameter 'model_dir' is empty: set it to an export dir")
            model = PolicyModel(p.model_dir, providers=p.providers, threads=p.threads)
            if len(p.camera_topics) != len(model.cameras):
                raise ModelLoadError(
                    f"camera_topics has {len(p.camera_topics)} topics {list(p.camera_topics)} "
                    f"but the model expects {len(model.cameras)} cameras {list(model.cameras)}"
                )
            ws = (p.workspace_min, p.workspace_max)
            limits = SafetyLimits(
                max_linear_axis=p.max_linear_axis,
                max_angular_axis=p.max_angular_axis,
                max_linear_speed=p.max_linear_speed,
                max_angular_speed=p.max_angular_speed,
                max_linear_accel=p.max_linear_accel,
                max_angular_accel=p.max_angular_accel,
                workspace_min=ws[0] or None,
                workspace_max=ws[1] or None,
            )
            self.safety = SafetyFilter(limits)
            self.mapper = ActionMapper(p.linear_scale, p.angular_scale, p.gripper_threshold)
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
        self.text_encoder = self._load_text_encoder(Path(p.model_dir))
        self.rate_hz = rate_hz
        # A step more than two control periods after the previous one (a stalled loop) or
        # before it (a restarted simulation's clock) restarts the aggregation.
        self.runner = PolicyRunner(model, max_gap_s=2.0 / rate_hz)
        required = [*model.cameras] + ([PROPRIO] if p.proprio_topic else [])
        self.watchdog = StalenessWatchdog(p.stale_timeout_s, required)
        self.latest: dict[str, tuple[np.ndarray, object]] = {}  # camera -> (RGB, stamp)
        self.proprio: np.ndarray | None = None  # None: the model gets the training mean
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
        self.pub_gripper = self.create_lifecycle_publisher(Float64, "~/cmd_gripper", COMMAND)
        self.pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset)
        self.model.warmup()
        if p.instruction.strip():
            self._set_instruction(p.instruction)
        self.get_logger().info(
            f"configured: model {p.model_dir} (sha256 {model.spec.onnx_sha256[:12]}), "
            f"provider {model.provider}, {self.rate_hz:g} Hz, cameras "
            + ", ".join(f"{c}<-{t}" for c, t in zip(model.cameras, p.camera_topics))
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
            self._subs.append(
                self.create_subscription(
                    Image, topic, lambda msg, c=cam: self._on_image(c, msg), SENSOR_LATEST
                )
            )
        if p.proprio_topic:
            self._subs.append(
                self.create_subscription(
                    Float32MultiArray, p.proprio_topic, self._on_proprio, SENSOR_LATEST
                )
            )
        self._subs.append(
            self.create_subscription(String, "~/instruction", self._on_instruction, LATCHED)
        )
        self.runner.reset()
        self.safety.reset()
        self.frame_wait.reset()  # new subscriptions: learn the cameras' phases afresh
        self._timer = self.create_timer(1.0 / self.rate_hz, self._tick)
        self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        if self.frame_wait.max_wait_s > 0:
            self._wait_timer = self.create_timer(self.frame_wait.max_wait_s, self._on_wait_timeout)
            self._wait_timer.cancel()
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        self._publish_command(
            Command.zero(), self.get_clock().now(), gripper=False
        )  # still active here
        self.get_logger().info("inactive: commands stopped")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        self.model = None
        self.runner = None
        self.text_encoder = None
        for pub in (self.pub_action, self.pub_twist, self.pub_gripper, self.pub_diag):
            self.destroy_lifecycle_publisher(pub)
        self.destroy_service(self._reset_srv)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        return TransitionCallbackReturn.SUCCESS

    def _stop_io(self) -> None:
        self._awaited.clear()
        for timer in (self._timer, self._diag_timer, self._wait_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._timer = self._diag_timer = self._wait_timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    # -- inputs ---------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def _stamp_s(stamp) -> float:
        return stamp.sec + stamp.nanosec * 1e-9

    def _on_image(self, camera: str, msg: Image) -> None:
        # Validate at the edge (a malformed frame never replaces a good one) and keep only the
        # newest; resizing and inference happen on the timer.
        try:
            image = image_from_msg_fields(msg.data, msg.encoding, msg.height, msg.width, msg.step)
        except InputError as err:
            self._warn(camera, f"bad image on {camera} ({msg.encoding!r}): {err}")
            return
        if self.watchdog.update(camera, self._stamp_s(msg.header.stamp), self._now_s()):
            self.latest[camera] = (image, msg.header.stamp)
            self.warnings.pop(camera, None)
            self.frame_wait.arrived(camera, time.monotonic())
            if camera in self._awaited:
                self._awaited.discard(camera)
                if not self._awaited:  # the last frame a waiting tick needed
                    self._end_wait()
                    self._act()
        else:
            stamp = self._stamp_s(msg.header.stamp)
            self._warn(
                camera,
                f"rejected {camera} image: stamp {stamp:.3f} s vs now "
                f"{self._now_s():.3f} s (from the future or far in the past)",
            )

    def _on_proprio(self, msg: Float32MultiArray) -> None:
        values = np.asarray(msg.data, dtype=np.float32)
        if values.shape != (self.model.proprio_dim,) or not np.isfinite(values).all():
            self._warn(
                PROPRIO,
                f"ignored proprio {values.tolist()[:8]}: need {self.model.proprio_dim} finite "
                "values",
            )
            return
        self.proprio = values
        self.watchdog.update(PROPRIO, self._now_s(), self._now_s())

    def _on_instruction(self, msg: String) -> None:
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
        response.success = True
        response.message = "aggregation buffer and rate limiter cleared"
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
            return
        self._act()

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
        """One runner step on the newest inputs and the command out (a zero twist if it did
        not act: inputs stale or missing, or refused)."""
        now = self.get_clock().now()
        now_s = now.nanoseconds * 1e-9
        images = {cam: img for cam, (img, _) in self.latest.items()}
        result = self.runner.step(
            images, self.proprio, self.lang, now_s, stale=self.watchdog.stale(now_s)
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
            self._publish_command(Command.zero(), now, gripper=False)
            return
        if result.was_missing:
            self.get_logger().info("inputs back: acting")
            self.warnings.pop("inputs", None)
        self.warnings.pop("inference", None)  # a refused input is over once the policy acts
        self.infer_ms.append(result.seconds * 1e3)
        self.pub_action.publish(Float32MultiArray(data=[float(v) for v in result.raw]))
        cmd = self.mapper.to_command(result.action)
        ee = self.proprio[:3] if self.proprio is not None else None
        cmd, reasons = self.safety.filter(cmd, 1.0 / self.rate_hz, ee_pos=ee)
        if reasons:
            self.warnings["safety"] = ", ".join(reasons)
        else:
            self.warnings.pop("safety", None)
        # Stamped with the newest image used.
        newest = max(
            Time.from_msg(self.latest[cam][1], clock_type=now.clock_type)
            for cam in self.model.cameras
        )
        self._publish_command(cmd, newest)

    def _publish_command(self, cmd: Command, stamp: Time, gripper: bool = True) -> None:
        """Publish the twist; the gripper command only when the policy acted (a stale or
        stopped policy holds the gripper as it is rather than opening or closing it)."""
        msg = TwistStamped()
        msg.header.stamp = stamp.to_msg()
        msg.header.frame_id = self.params.frame_id
        lin = np.nan_to_num(cmd.linear, nan=0.0, posinf=0.0, neginf=0.0)
        ang = np.nan_to_num(cmd.angular, nan=0.0, posinf=0.0, neginf=0.0)
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in lin)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in ang)
        self.pub_twist.publish(msg)
        if gripper:
            self.pub_gripper.publish(Float64(data=float(np.clip(cmd.gripper, -1.0, 1.0))))

    def _publish_diagnostics(self) -> None:
        now_s = self._now_s()
        status = DiagnosticStatus(name=f"{self.get_name()}: policy", hardware_id="lawm_policy")
        stale = self._missing(now_s)
        problems = dict(self.warnings)
        if stale:
            problems["inputs"] = f"stale or missing: {sorted(stale)}"
        status.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        status.message = "; ".join(f"{k}: {v}" for k, v in problems.items()) or "acting"
        ms = np.asarray(self.infer_ms) if self.infer_ms else np.zeros(1)
        ticks = np.diff(np.asarray(self.tick_times)) if len(self.tick_times) > 1 else None
        values = {
            "provider": self.model.provider,
            "inference_ms_p50": f"{np.percentile(ms, 50):.2f}",
            "inference_ms_p99": f"{np.percentile(ms, 99):.2f}",
            "loop_rate_hz": f"{1.0 / ticks.mean():.2f}" if ticks is not None else "0",
            "ticks": str(self.ticks),
            "missed_ticks": str(self.missed_ticks),
            "frame_waits": str(self.frame_waits),
            "frame_wait_timeouts": str(self.frame_wait_timeouts),
            "instruction": self.instruction_text,
        }
        for name, age in self.watchdog.ages(now_s).items():
            values[f"age_{name}_s"] = f"{age:.3f}"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = PolicyNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
