"""Publish a RealSense colour stream (rgb8 images + CameraInfo), live or from a recording.

    realsense_camera --ros-args -r __ns:=/camera -p serial:="'123456789012'"
    realsense_camera --ros-args -p recording:=/data/session.db3      # no camera needed

Parameters:
    serial (str): device serial number; empty means the first device found.
    width, height, fps (int): colour stream requested from a live device (640x480 @ 30).
        A recording is played at the resolution and rate it was recorded with.
    recording (str): path to a RealSense recording (``.db3``, librealsense's recorder format,
        e.g. from ``rs.recorder``); when set, it is played instead of opening a device.
    loop (bool): replay the recording from the start when it ends (default true); with false
        the node stays up but publishes nothing more after the last frame.
    frame_id (str): ``header.frame_id`` of both messages.
    reliability (str): ``reliable`` (default) or ``best_effort`` for the two topics.
    clock_source (str): ``auto`` (default) or ``host``, see Stamps.
    frame_timeout_s (float): no frame for this long means the stream is lost (2.0).
    retry_max_s (float): longest wait between two attempts to restart a lost stream (4.0).
    diagnostics_period_s (float): period of the ``/diagnostics`` messages (1.0).
Publishes (relative to the node namespace, so ``-r __ns:=/camera`` gives ``/camera/color/...``):
    ``color/image_raw`` (sensor_msgs/Image, rgb8) and ``color/camera_info``
    (sensor_msgs/CameraInfo), keep-last 1, volatile, reliable: REP-2003 has sensor drivers
    publish reliable and their consumers subscribe best effort (the policy node's
    ``qos.SENSOR_LATEST``); a reliable publisher reaches both kinds of subscriber, a best-effort
    one (``reliability:=best_effort``) reaches best-effort subscribers only. Each image is
    followed by the CameraInfo of the stream it came from, with the same stamp and frame_id.
    ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): state (streaming, waiting for device,
    recording finished), measured fps, frames published and dropped (gaps in the device's
    frame numbers), timeouts, restarts, device serial, clock source, last error.

Stamps: both messages of a frame carry the same ``header.stamp``. With ``clock_source:=auto`` it
is the frame's own timestamp when librealsense gives it in the global time domain (the device
clock translated to the host's system clock; enabled on live devices that support it), else
the node's ROS clock read when the frame reached this process (devices without global time,
recordings made without it, or a node on simulated time). ``host`` always uses the arrival
time. Both are comparable with the policy's clock; ``clock_source`` in ``/diagnostics`` says
which one is in use. A recording keeps the timestamps it was made with, so a looping recording
stamped in global time repeats its stamps; use ``clock_source:=host`` to replay it as live.

Recovery: startup problems (no device, unknown serial, missing or unreadable recording, no
usable colour format, bad parameter) are logged as one clear error and the process exits with
code 1, without a traceback. Once streaming, a stream that stops (no frame for
``frame_timeout_s``, a device unplugged, a pipeline error) is logged once, reported as ERROR in
``/diagnostics`` and restarted: the source is opened again (the device found again by serial,
or the recording file read again) with a backoff from 0.25 s doubling up to ``retry_max_s``,
and publishing resumes on its first frame, in the same process. Playback of a recording is
paced in real time by librealsense, so a recorded stream arrives at its recorded rate (and a
pause in the recording is a pause in the stream).

Frames are grabbed on a background thread (``pipeline.try_wait_for_frames``) and published from
it; the executor only services ROS (parameters, the diagnostics timer), so nothing blocks it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyrealsense2 as rs
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image

NO_DEVICE = "no RealSense device found; connect one or set the 'recording' parameter"
# Formats asked of librealsense in this order: rgb8 is published as is, the others converted.
COLOR_FORMATS = (rs.format.rgb8, rs.format.bgr8, rs.format.rgba8, rs.format.bgra8)
WAIT_MS = 200  # one try_wait_for_frames; bounds how long shutdown waits for the grab thread
RETRY_FIRST_S = 0.25  # first wait between restart attempts; doubles up to retry_max_s

STREAMING = "streaming"
WAITING = "waiting for device"
FINISHED = "recording finished"
DEVICE_CLOCK = "device global time"
HOST_CLOCK = "host arrival time"
RELIABILITY = {
    "reliable": ReliabilityPolicy.RELIABLE,
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
}

# name: (default, description). Declared once, read into CameraConfig.
PARAMETERS: dict[str, tuple[object, str]] = {
    "serial": ("", "Serial number of the device to open; empty: the first device found."),
    "width": (640, "Colour stream width requested from a live device (pixels)."),
    "height": (480, "Colour stream height requested from a live device (pixels)."),
    "fps": (30, "Colour stream frame rate requested from a live device (Hz)."),
    "recording": ("", "RealSense recording (.db3) to play instead of a live device."),
    "loop": (True, "Replay the recording from the start when it ends."),
    "frame_id": ("camera_color_optical_frame", "header.frame_id of the image and camera info."),
    "reliability": ("reliable", "QoS reliability of the topics: reliable or best_effort."),
    "clock_source": ("auto", "auto: device global time when available, else arrival; host."),
    "frame_timeout_s": (2.0, "No frame for this long: the stream is lost and restarted (s)."),
    "retry_max_s": (4.0, "Longest wait between two attempts to restart a lost stream (s)."),
    "diagnostics_period_s": (1.0, "Period of /diagnostics messages (s)."),
}


class CameraError(RuntimeError):
    """A problem opening the camera an operator can fix; the message says what and how."""


@dataclass(frozen=True)
class CameraConfig:
    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    recording: str = ""
    loop: bool = True
    frame_id: str = "camera_color_optical_frame"
    reliability: str = "reliable"
    clock_source: str = "auto"
    frame_timeout_s: float = 2.0
    retry_max_s: float = 4.0
    diagnostics_period_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("width", "height", "fps", "frame_timeout_s", "retry_max_s"):
            value = getattr(self, name)
            if value <= 0:
                raise CameraError(f"parameter {name} must be positive, got {value}")
        if self.diagnostics_period_s <= 0:
            raise CameraError(
                f"parameter diagnostics_period_s must be positive, got {self.diagnostics_period_s}"
            )
        if not self.frame_id:
            raise CameraError("parameter frame_id must not be empty")
        if self.reliability not in RELIABILITY:
            raise CameraError(
                f"parameter reliability must be reliable or best_effort, got {self.reliability!r}"
            )
        if self.clock_source not in ("auto", "host"):
            raise CameraError(
                f"parameter clock_source must be auto or host, got {self.clock_source!r}"
            )

    @property
    def qos(self) -> QoSProfile:
        """Keep-last 1, volatile; reliable by default as REP-2003 asks of sensor drivers."""
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=RELIABILITY[self.reliability],
            durability=DurabilityPolicy.VOLATILE,
        )


# ---------------------------------------------------------------- librealsense side (no ROS)


class ColorSource:
    """A resolved, not yet started colour stream (live device or recording).

    ``stream`` (format, size, intrinsics) is known before ``start()``, so the node can set up
    its publishers first and start grabbing right after the stream starts: a recording's first
    frames are not lost to the pipeline's one-frame queue.
    """

    def __init__(
        self,
        pipeline: rs.pipeline,
        config: rs.config,
        profile: rs.pipeline_profile,
        description: str,
        playback: bool,
    ) -> None:
        self.pipeline = pipeline
        self.description = description
        self.stream = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self.serial = _info(profile.get_device(), rs.camera_info.serial_number)
        self._config = config
        self._playback: rs.playback | None = None
        self._is_playback = playback

    @classmethod
    def open(cls, cfg: CameraConfig) -> ColorSource:
        """Resolve the configured source; CameraError with an operator-facing message if not."""
        pipeline = rs.pipeline()
        return _recording_source(cfg, pipeline) if cfg.recording else _live_source(cfg, pipeline)

    def start(self) -> None:
        try:
            profile = self.pipeline.start(self._config)
        except RuntimeError as err:
            raise CameraError(f"cannot start {self.description}: {err}") from None
        if self._is_playback:
            # Paced: a recording plays at its recorded rate, like the camera it came from.
            self._playback = profile.get_device().as_playback()
            self._playback.set_real_time(True)

    def ended(self) -> bool:
        """True once a recording has stopped playing (reached its end without looping)."""
        return (
            self._playback is not None
            and self._playback.current_status() == rs.playback_status.stopped
        )

    def stop(self) -> None:
        try:
            self.pipeline.stop()
        except RuntimeError:
            pass  # never started, or already stopped (e.g. the device was unplugged)


def _info(device: rs.device, key: rs.camera_info) -> str:
    return device.get_info(key) if device.supports(key) else ""


def _first_resolvable(
    pipeline: rs.pipeline, make_config
) -> tuple[rs.config, rs.pipeline_profile] | None:
    """The first colour format in COLOR_FORMATS that ``make_config(fmt)`` resolves to."""
    for fmt in COLOR_FORMATS:
        config = make_config(fmt)
        if config.can_resolve(rs.pipeline_wrapper(pipeline)):
            return config, config.resolve(rs.pipeline_wrapper(pipeline))
    return None


def _color_profiles(device: rs.device) -> list[str]:
    """Colour stream profiles a device offers, as 'WxH@fps format' strings."""
    found = set()
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() == rs.stream.color and profile.is_video_stream_profile():
                video = profile.as_video_stream_profile()
                found.add(f"{video.width()}x{video.height()}@{video.fps()} {video.format().name}")
    return sorted(found)


def _enable_global_time(device: rs.device) -> None:
    """Ask every sensor that can for timestamps in the global (host-synchronised) domain."""
    for sensor in device.query_sensors():
        if sensor.supports(rs.option.global_time_enabled):
            try:
                sensor.set_option(rs.option.global_time_enabled, 1.0)
            except RuntimeError:
                pass  # read-only on this sensor: its frames say which domain they are in


def _live_source(cfg: CameraConfig, pipeline: rs.pipeline) -> ColorSource:
    devices = list(rs.context().query_devices())
    if not devices:
        raise CameraError(NO_DEVICE)
    serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
    if cfg.serial and cfg.serial not in serials:
        raise CameraError(
            f"no RealSense device with serial {cfg.serial!r}; connected: {', '.join(serials)}"
        )
    serial = cfg.serial or serials[0]
    device = devices[serials.index(serial)]
    name = device.get_info(rs.camera_info.name)
    if cfg.clock_source == "auto":
        _enable_global_time(device)

    def make(fmt: rs.format) -> rs.config:
        config = rs.config()
        config.enable_device(serial)
        config.enable_stream(rs.stream.color, cfg.width, cfg.height, fmt, cfg.fps)
        return config

    chosen = _first_resolvable(pipeline, make)
    if chosen is None:
        offered = ", ".join(_color_profiles(device)) or "none"
        raise CameraError(
            f"{name} ({serial}) has no colour stream at {cfg.width}x{cfg.height}@{cfg.fps} "
            f"in rgb8/bgr8/rgba8/bgra8; it offers: {offered}"
        )
    return ColorSource(pipeline, *chosen, f"{name} serial {serial}", playback=False)


def _recording_source(cfg: CameraConfig, pipeline: rs.pipeline) -> ColorSource:
    path = Path(cfg.recording).expanduser()
    if not path.is_file():
        raise CameraError(f"recording {str(path)!r} does not exist (parameter 'recording')")

    def make(fmt: rs.format | None) -> rs.config:
        config = rs.config()
        config.enable_device_from_file(str(path), repeat_playback=cfg.loop)
        if fmt is not None:
            config.enable_stream(rs.stream.color, fmt, 0)  # the recorded size and rate
        return config

    try:
        chosen = _first_resolvable(pipeline, make)
        if chosen is None:
            # Either the file is unreadable (resolving it alone says why) or it holds no
            # usable colour stream.
            make(None).resolve(rs.pipeline_wrapper(pipeline))
    except RuntimeError as err:  # not a RealSense recording, truncated, unreadable
        raise CameraError(f"cannot play recording {str(path)!r}: {err}") from None
    if chosen is None:
        raise CameraError(f"recording {str(path)!r} has no colour stream in rgb8/bgr8/rgba8/bgra8")
    return ColorSource(pipeline, *chosen, f"recording {path}", playback=True)


def to_rgb(pixels: np.ndarray, fmt: rs.format) -> np.ndarray:
    """(H, W, C) uint8 frame in one of COLOR_FORMATS -> contiguous (H, W, 3) rgb8."""
    if fmt == rs.format.rgb8:
        return pixels
    if fmt == rs.format.bgr8:
        return np.ascontiguousarray(pixels[..., ::-1])
    if fmt == rs.format.rgba8:
        return np.ascontiguousarray(pixels[..., :3])
    if fmt == rs.format.bgra8:
        return np.ascontiguousarray(pixels[..., 2::-1])
    raise ValueError(f"unsupported colour format {fmt}")


def camera_info(intrinsics: rs.intrinsics, frame_id: str) -> CameraInfo:
    """CameraInfo (no stamp) from a stream's intrinsics.

    Brown-Conrady coefficients are ordered k1, k2, p1, p2, k3 in librealsense, as ROS's
    plumb_bob expects; the modified and inverse variants (close to zero on D400 colour
    sensors) are published as plumb_bob too, as realsense-ros does. Kannala-Brandt is ROS's
    equidistant model.
    """
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.ppx, intrinsics.ppy
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = intrinsics.width, intrinsics.height
    if intrinsics.model == rs.distortion.kannala_brandt4:
        info.distortion_model = "equidistant"
        info.d = [float(c) for c in intrinsics.coeffs[:4]]
    else:
        info.distortion_model = "plumb_bob"
        info.d = [float(c) for c in intrinsics.coeffs[:5]]
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _stream_text(stream: rs.video_stream_profile) -> str:
    return f"{stream.width()}x{stream.height()} {stream.format().name} @ {stream.fps()} Hz"


@dataclass
class StreamStats:
    """What /diagnostics reports; written by the grab thread, read under ``lock``."""

    state: str = STREAMING
    clock_source: str = "none yet (no frame)"
    published: int = 0
    dropped: int = 0  # gaps in the device's frame numbers
    timeouts: int = 0
    restarts: int = 0
    last_error: str = ""
    last_frame_number: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_frame(self, frame_number: int) -> None:
        with self.lock:
            previous = self.last_frame_number
            # A smaller number: a looping recording or a restarted device began again.
            if previous is not None and frame_number > previous + 1:
                self.dropped += frame_number - previous - 1
            self.last_frame_number = frame_number
            self.published += 1


# ---------------------------------------------------------------- the node


class RealSenseCamera(Node):
    def __init__(self) -> None:
        super().__init__("realsense_camera")
        values = {
            name: self.declare_parameter(
                name,
                default,
                # serial: launch files turn a digits-only string into an integer; accept it.
                ParameterDescriptor(description=description, dynamic_typing=name == "serial"),
            ).value
            for name, (default, description) in PARAMETERS.items()
        }
        if not isinstance(values["serial"], str):
            self.get_logger().warning(
                f"serial {values['serial']!r} arrived as a number; pass it as a string "
                "(ParameterValue(..., value_type=str) in a launch file) to keep leading zeros"
            )
            values["serial"] = str(values["serial"])
        self.cfg = CameraConfig(**values)
        self.failure: str | None = None  # set when the grab thread dies; main() exits 1
        self.stats = StreamStats()

        self._source: ColorSource | None = None
        source = ColorSource.open(self.cfg)
        self._image_pub = self.create_publisher(Image, "color/image_raw", self.cfg.qos)
        self._info_pub = self.create_publisher(CameraInfo, "color/camera_info", self.cfg.qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._description = source.description
        self._serial = source.serial
        self._stream_text = ""
        self._diag_last = (time.monotonic(), 0)  # (time, frames published) at the last report
        self._lost_at = 0.0  # when the stream was lost (monotonic)
        self._attempts = 0  # restart attempts since then
        self._retry_s = 0.0  # wait before the next one
        self._diag_timer = self.create_timer(
            self.cfg.diagnostics_period_s, self._publish_diagnostics
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab_loop, name="realsense_grab", daemon=True)
        self.get_logger().info(
            f"{self._description}: {_stream_text(source.stream)} -> {self._image_pub.topic_name}"
            f" (rgb8), {self._info_pub.topic_name}, {self.cfg.reliability}"
            + (" (width/height/fps apply to live devices only)" if self.cfg.recording else "")
        )
        self._use(source)  # CameraError here is a startup error: main() exits 1
        self._thread.start()  # right away: the pipeline keeps only the newest frame

    @property
    def published(self) -> int:
        return self.stats.published

    def _use(self, source: ColorSource) -> None:
        """Start ``source`` and publish from it (its format and intrinsics may be new)."""
        stream = source.stream
        self._format = stream.format()
        self._info = camera_info(stream.get_intrinsics(), self.cfg.frame_id)
        self._stream_text = _stream_text(stream)
        self._last_frame = time.monotonic()
        source.start()
        self._source = source
        self._description, self._serial = source.description, source.serial

    # ------------------------------------------------------------ grab thread

    def _grab_loop(self) -> None:
        try:
            self._grab_frames()
        except Exception as err:  # a bug, not a device problem: reported, then exit 1
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: a publish on a closed context fails, as it should
            self.failure = f"frame grabbing failed: {err}"
            self.get_logger().error(self.failure)
            rclpy.try_shutdown(context=self.context)  # wakes main(), which exits non-zero

    def _grab_frames(self) -> None:
        while not self._stop.is_set():
            source = self._source
            if source is None:
                self._restart()
                continue
            try:
                ok, frames = source.pipeline.try_wait_for_frames(WAIT_MS)
                color = frames.get_color_frame() if ok else None
            except RuntimeError as err:  # e.g. the device was unplugged
                self._lost(f"the pipeline failed: {err}", timeout=False)
                continue
            if color:
                self._publish(color)
                continue
            if not self.cfg.loop and source.ended():
                self.get_logger().info(
                    f"recording finished after {self.stats.published} frames; "
                    "loop is false, so no more images are published"
                )
                with self.stats.lock:
                    self.stats.state = FINISHED
                self._stop.wait()
                return
            silent = time.monotonic() - self._last_frame
            if silent > self.cfg.frame_timeout_s:
                self._lost(f"no frame for {silent:.1f} s", timeout=True)

    def _lost(self, reason: str, timeout: bool) -> None:
        """The stream stopped: say so once, release the source; ``_restart`` takes over."""
        self.get_logger().error(
            f"{self._description}: {reason}; restarting it "
            f"(retrying with a backoff up to {self.cfg.retry_max_s:g} s)"
        )
        with self.stats.lock:
            self.stats.state = WAITING
            self.stats.last_error = reason
            self.stats.timeouts += timeout
        if self._source is not None:
            self._source.stop()
            self._source = None
        self._lost_at = time.monotonic()
        self._attempts = 0
        self._retry_s = 0.0  # the first attempt right away

    def _restart(self) -> None:
        """One attempt to open and start the source again, after the current backoff."""
        if self._stop.wait(self._retry_s):
            return
        self._retry_s = min(max(2 * self._retry_s, RETRY_FIRST_S), self.cfg.retry_max_s)
        self._attempts += 1
        # The device that was lost, by serial, not whichever device comes first now.
        cfg = self.cfg if self.cfg.recording else replace(self.cfg, serial=self._serial)
        try:
            source = ColorSource.open(cfg)
            self._use(source)
        except (CameraError, RuntimeError) as err:  # RuntimeError: e.g. USB re-enumeration
            with self.stats.lock:
                repeated = self.stats.last_error == str(err)
                self.stats.last_error = str(err)
            if not repeated:  # logged once per distinct reason, not once per attempt
                self.get_logger().warning(f"{err}; still retrying")
            return
        self.get_logger().info(
            f"{self._description}: streaming again after {time.monotonic() - self._lost_at:.1f} s"
            f" ({self._attempts} attempts): {self._stream_text}"
        )
        with self.stats.lock:
            self.stats.state = STREAMING
            self.stats.restarts += 1

    def _stamp(self, color: rs.video_frame, arrival: Time) -> tuple[Time, str]:
        """The frame's stamp and which clock it comes from (see the module docstring)."""
        if (
            self.cfg.clock_source == "auto"
            and color.get_frame_timestamp_domain() == rs.timestamp_domain.global_time
            and not self.get_clock().ros_time_is_active  # on sim time, the arrival time
        ):
            return Time(nanoseconds=round(color.get_timestamp() * 1e6)), DEVICE_CLOCK
        return arrival, HOST_CLOCK

    def _publish(self, color: rs.video_frame) -> None:
        arrival = self.get_clock().now()
        self._last_frame = time.monotonic()
        stamp, clock = self._stamp(color, arrival)
        if clock != self.stats.clock_source:
            self.get_logger().info(f"stamps: {clock}")
            with self.stats.lock:
                self.stats.clock_source = clock
        pixels = to_rgb(np.asanyarray(color.get_data()), self._format)
        height, width = pixels.shape[:2]
        image = Image()
        image.header.stamp = stamp.to_msg()
        image.header.frame_id = self.cfg.frame_id
        image.height, image.width = height, width
        image.encoding = "rgb8"
        image.is_bigendian = 0
        image.step = width * 3
        image.data = pixels.tobytes()
        self._info.header.stamp = image.header.stamp  # only this thread touches self._info
        self._image_pub.publish(image)
        self._info_pub.publish(self._info)
        self.stats.count_frame(color.get_frame_number())

    # ------------------------------------------------------------ executor thread

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self.stats.lock:
            s = {k: v for k, v in vars(self.stats).items() if k != "lock"}
        then, published_then = self._diag_last
        self._diag_last = (now, s["published"])
        fps = (s["published"] - published_then) / max(now - then, 1e-6)
        status = DiagnosticStatus(
            name=f"{self.get_name()}: RealSense colour stream",
            hardware_id=self._serial or self.cfg.recording or self.cfg.serial,
        )
        if s["state"] == WAITING:
            status.level = DiagnosticStatus.ERROR
            status.message = f"{WAITING}: {s['last_error']}"
        elif s["state"] == STREAMING and fps == 0:
            status.level = DiagnosticStatus.WARN
            status.message = "streaming, but no frame in the last period"
        else:
            status.level = DiagnosticStatus.OK
            status.message = s["state"]
        values = {
            "state": s["state"],
            "source": self._description,
            "serial": self._serial,
            "stream": self._stream_text,
            "clock_source": s["clock_source"],
            "fps": f"{fps:.2f}",
            "frames_published": str(s["published"]),
            "frames_dropped": str(s["dropped"]),
            "timeouts": str(s["timeouts"]),
            "restarts": str(s["restarts"]),
            "last_error": s["last_error"],
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def close(self) -> None:
        """Stop grabbing (joins the thread), then release the device or recording."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * WAIT_MS / 1000)
        if self._source is not None:
            self._source.stop()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = RealSenseCamera()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except CameraError as err:
        get_logger("realsense_camera").error(str(err))
        code = 1
    except InvalidParameterTypeException as err:  # e.g. frame_id:=1
        get_logger("realsense_camera").error(str(err))
        code = 1
    finally:
        if node is not None:
            node.close()
            if node.failure is not None:
                code = 1
            logger_name = node.get_logger().name
            node.destroy_node()
            # After destroy_node: this logger no longer forwards to /rosout, whose context a
            # SIGINT has already closed.
            get_logger(logger_name).info(f"stopped after publishing {node.published} frames")
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
