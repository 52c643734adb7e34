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
Publishes (relative to the node namespace, so ``-r __ns:=/camera`` gives ``/camera/color/...``):
    ``color/image_raw`` (sensor_msgs/Image, rgb8) and ``color/camera_info``
    (sensor_msgs/CameraInfo), both best effort, keep-last 1 (``qos.SENSOR_LATEST``).

Stamps: both messages of a frame carry the same ``header.stamp``, the node's ROS clock read when
the frame reached this process. Device timestamps use the camera's own clock (and a recording's
start at zero), which the policy could not compare with its own clock; ROS time at arrival is
what its staleness watchdog needs. Playback of a recording is paced in real time by librealsense,
so a recorded stream arrives at its recorded rate.

Frames are grabbed on a background thread (``pipeline.try_wait_for_frames``) and published from
it; the executor only services ROS, so nothing blocks it. Startup problems (no device, unknown
serial, missing or unreadable recording, no usable colour format) are logged as one clear error
and the process exits with code 1, without a traceback.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyrealsense2 as rs
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from lawm_policy.qos import SENSOR_LATEST

NO_DEVICE = "no RealSense device found; connect one or set the 'recording' parameter"
# Formats asked of librealsense in this order: rgb8 is published as is, the others converted.
COLOR_FORMATS = (rs.format.rgb8, rs.format.bgr8, rs.format.rgba8, rs.format.bgra8)
WAIT_MS = 200  # one try_wait_for_frames; bounds how long shutdown waits for the grab thread
SILENCE_WARN_S = 3.0  # warn (then every this often) when no frame arrives for this long

# name: (default, description). Declared once, read into CameraConfig.
PARAMETERS: dict[str, tuple[object, str]] = {
    "serial": ("", "Serial number of the device to open; empty: the first device found."),
    "width": (640, "Colour stream width requested from a live device (pixels)."),
    "height": (480, "Colour stream height requested from a live device (pixels)."),
    "fps": (30, "Colour stream frame rate requested from a live device (Hz)."),
    "recording": ("", "RealSense recording (.db3) to play instead of a live device."),
    "loop": (True, "Replay the recording from the start when it ends."),
    "frame_id": ("camera_color_optical_frame", "header.frame_id of the image and camera info."),
}


class CameraError(RuntimeError):
    """A startup problem an operator can fix; the message says what and how."""


@dataclass(frozen=True)
class CameraConfig:
    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    recording: str = ""
    loop: bool = True
    frame_id: str = "camera_color_optical_frame"

    def __post_init__(self) -> None:
        for name in ("width", "height", "fps"):
            value = getattr(self, name)
            if value <= 0:
                raise CameraError(f"parameter {name} must be positive, got {value}")
        if not self.frame_id:
            raise CameraError("parameter frame_id must not be empty")


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
        self.published = 0

        self._source = ColorSource.open(self.cfg)
        stream = self._source.stream
        self._format = stream.format()
        self._info = camera_info(stream.get_intrinsics(), self.cfg.frame_id)
        self._image_pub = self.create_publisher(Image, "color/image_raw", SENSOR_LATEST)
        self._info_pub = self.create_publisher(CameraInfo, "color/camera_info", SENSOR_LATEST)
        self.get_logger().info(
            f"{self._source.description}: {stream.width()}x{stream.height()} "
            f"{self._format.name} @ {stream.fps()} Hz -> {self._image_pub.topic_name} (rgb8), "
            f"{self._info_pub.topic_name}"
            + (" (width/height/fps apply to live devices only)" if self.cfg.recording else "")
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab_loop, name="realsense_grab", daemon=True)
        self._source.start()
        self._thread.start()

    def _grab_loop(self) -> None:
        try:
            self._grab_frames()
        except Exception as err:  # reported, then the process exits 1
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: a publish on a closed context fails, as it should
            self.failure = f"frame grabbing failed: {err}"
            self.get_logger().error(self.failure)
            rclpy.try_shutdown(context=self.context)  # wakes main(), which exits non-zero

    def _grab_frames(self) -> None:
        last_frame = time.monotonic()
        last_warning = last_frame
        while not self._stop.is_set():
            ok, frames = self._source.pipeline.try_wait_for_frames(WAIT_MS)
            color = frames.get_color_frame() if ok else None
            if not color:
                if not self.cfg.loop and self._source.ended():
                    self.get_logger().info(
                        f"recording finished after {self.published} frames; "
                        "loop is false, so no more images are published"
                    )
                    return
                now = time.monotonic()
                if now - last_frame > SILENCE_WARN_S and now - last_warning > SILENCE_WARN_S:
                    self.get_logger().warning(f"no frame for {now - last_frame:.1f} s")
                    last_warning = now
                continue
            stamp = self.get_clock().now().to_msg()  # arrival time, see the module docstring
            last_frame = time.monotonic()
            self._publish(color, stamp)

    def _publish(self, color: rs.video_frame, stamp) -> None:
        pixels = to_rgb(np.asanyarray(color.get_data()), self._format)
        height, width = pixels.shape[:2]
        image = Image()
        image.header.stamp = stamp
        image.header.frame_id = self.cfg.frame_id
        image.height, image.width = height, width
        image.encoding = "rgb8"
        image.is_bigendian = 0
        image.step = width * 3
        image.data = pixels.tobytes()
        self._info.header.stamp = stamp  # only this thread touches self._info
        self._image_pub.publish(image)
        self._info_pub.publish(self._info)
        self.published += 1

    def close(self) -> None:
        """Stop grabbing (joins the thread), then release the device or recording."""
        self._stop.set()
        self._thread.join(timeout=5 * WAIT_MS / 1000)
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
