"""The realsense_camera node on synthetic RealSense recordings (no camera needed).

A recording is written here with pyrealsense2's software device and recorder (librealsense's own
recording format), then the installed node plays it in its own process; the test subscribes over
Fast DDS like the policy node would.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lawm_apps.harness import wait_for_publishers, wait_until

rs = pytest.importorskip("pyrealsense2")

FPS = 30
# Exactly representable in float32 (librealsense stores intrinsics as float32), so the
# CameraInfo can be compared for equality.
FX, FY, PPX, PPY = 615.25, 614.5, 319.75, 241.125
BROWN_CONRADY = [0.125, -0.25, 0.0078125, -0.00390625, 0.0625]


@dataclass(frozen=True)
class Recording:
    path: Path
    frames: list[np.ndarray]  # (H, W, 3) uint8 in the recorded channel order
    intrinsics: rs.intrinsics
    stamps: list[float]  # frame timestamps (ms) as recorded


def pattern(index: int, height: int, width: int) -> np.ndarray:
    """Frame ``index`` of the synthetic stream; channel 2 is constant and names the frame."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x * 3 + 11 * index) % 256
    frame[..., 1] = (y * 5 + x // 7 + 29 * index) % 256
    frame[..., 2] = 10 * index + 5
    return frame


def frame_index(pixels: np.ndarray, channel: int = 2) -> int:
    return (int(pixels[0, 0, channel]) - 5) // 10


def write_recording(
    path: Path,
    count: int,
    height: int,
    width: int,
    fmt: rs.format = rs.format.rgb8,
    model: rs.distortion = rs.distortion.brown_conrady,
    coeffs: list[float] = BROWN_CONRADY,
    *,
    first: int = 0,
    domain: rs.timestamp_domain = rs.timestamp_domain.hardware_clock,
    start_ms: float = 0.0,
    pause_before: int | None = None,
    pause_s: float = 0.0,
    serial: str | None = None,
    number_step: int = 1,
) -> Recording:
    """Write ``count`` pattern frames as a RealSense recording (``path`` must end in .db3).

    Frame i shows ``pattern(first + i)`` and is stamped ``start_ms + i / FPS`` in ``domain``;
    before frame ``pause_before`` the stream pauses for ``pause_s`` (in time and stamps).
    Frame numbers go up by ``number_step`` (above 1: frames the device dropped).
    """
    intr = rs.intrinsics()
    intr.width, intr.height = width, height
    intr.fx, intr.fy, intr.ppx, intr.ppy = FX, FY, PPX, PPY
    intr.model = model
    intr.coeffs = list(coeffs) + [0.0] * (5 - len(coeffs))

    device = rs.software_device()
    if serial is not None:
        device.register_info(rs.camera_info.serial_number, serial)
    sensor = device.add_sensor("Color")
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp = width, height, FPS, 3
    stream.fmt = fmt
    stream.intrinsics = intr
    profile = sensor.add_video_stream(stream).as_video_stream_profile()

    recorder = rs.recorder(str(path), device)
    sensor.open(profile)
    queue = rs.frame_queue(count)
    sensor.start(queue)
    frames, stamps = [], []
    for i in range(count):
        if i == pause_before:
            time.sleep(pause_s)
            start_ms += pause_s * 1000.0
        pixels = pattern(first + i, height, width)
        frames.append(pixels)
        frame = rs.software_video_frame()
        frame.pixels = pixels.tobytes()
        frame.stride, frame.bpp = width * 3, 3
        frame.timestamp = start_ms + i * 1000.0 / FPS
        stamps.append(frame.timestamp)
        frame.domain = domain
        frame.frame_number = i * number_step
        frame.profile = profile
        sensor.on_video_frame(frame)
        queue.wait_for_frame(1000)
        # The recorder keeps arrival times; pacing them like a camera makes playback (which
        # is real time) deliver every frame instead of a burst the pipeline collapses.
        time.sleep(1.0 / FPS)
    sensor.stop()
    sensor.close()
    del recorder  # closes the file
    assert path.stat().st_size > 0
    return Recording(path, frames, intr, stamps)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    """Ten 640x480 rgb8 frames (one third of a second) with Brown-Conrady intrinsics."""
    return write_recording(tmp_path_factory.mktemp("rs") / "pattern.db3", 10, 480, 640)


def _subscribe(node, namespace: str):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    images: list[tuple[Image, float]] = []  # (message, ROS time at reception)
    infos: dict[tuple[int, int], CameraInfo] = {}

    def on_image(msg: Image) -> None:
        images.append((msg, node.get_clock().now().nanoseconds * 1e-9))

    def on_info(msg: CameraInfo) -> None:
        infos[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    # Sensor-data QoS, as the policy node subscribes (best effort).
    subs = (
        node.create_subscription(
            Image, f"{namespace}/color/image_raw", on_image, qos_profile_sensor_data
        ),
        node.create_subscription(
            CameraInfo, f"{namespace}/color/camera_info", on_info, qos_profile_sensor_data
        ),
    )
    return subs, images, infos


def _pixels(msg) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)


def _stamp(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def _unmatched(images, infos) -> int:
    return sum(_stamp(msg) not in infos for msg, _ in images)


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _published(proc) -> int:
    match = re.search(r"stopped after publishing (\d+) frames", proc.log_path.read_text())
    assert match, proc.tail()
    return int(match.group(1))


def _wait_exit(proc, timeout: float = 20.0) -> tuple[int, str]:
    code = proc.proc.wait(timeout=timeout)
    return code, proc.log_path.read_text()


@pytest.mark.ros
def test_plays_a_recording_as_rgb8_images_with_camera_info(ros_node, start_node, recording):
    proc = start_node(
        "lawm_policy",
        "realsense_camera",
        params={"recording": str(recording.path), "frame_id": "test_optical_frame"},
        remaps={"__ns": "/rs_test"},
    )
    subs, images, infos = _subscribe(ros_node, "/rs_test")
    for sub in subs:
        wait_for_publishers(ros_node, sub, procs=[proc])
    n = len(recording.frames)
    # Two passes through the recording: the default loop:=true replays it.
    wait_until(ros_node, lambda: len(images) >= 2 * n + 1, 30, f"{2 * n + 1} images", [proc])
    # Best effort: a (small) camera_info may be lost like an image; nearly all must match.
    wait_until(
        ros_node,
        lambda: _unmatched(images, infos) <= len(images) // 10,
        10,
        "a camera_info with each image's stamp",
        [proc],
    )
    assert proc.stop() == 0, proc.tail()  # SIGINT: clean exit

    seen = []
    for msg, _ in images:
        assert msg.encoding == "rgb8"
        assert (msg.height, msg.width, msg.step) == (480, 640, 640 * 3)
        assert msg.is_bigendian == 0
        assert msg.header.frame_id == "test_optical_frame"
        pixels = _pixels(msg)
        index = frame_index(pixels)
        assert 0 <= index < n, index
        np.testing.assert_array_equal(pixels, recording.frames[index])  # pixel-exact
        seen.append(index)
    assert len(set(seen)) >= 3, seen  # the stream advances through the recording

    matched = [(msg, infos[_stamp(msg)]) for msg, _ in images if _stamp(msg) in infos]
    assert len(matched) >= len(images) - len(images) // 10
    for _, info in matched:
        assert info.header.frame_id == "test_optical_frame"
        assert (info.width, info.height) == (640, 480)
        assert info.distortion_model == "plumb_bob"
        assert list(info.k) == [FX, 0.0, PPX, 0.0, FY, PPY, 0.0, 0.0, 1.0]
        assert list(info.d) == BROWN_CONRADY
        assert list(info.p) == [FX, 0.0, PPX, 0.0, 0.0, FY, PPY, 0.0, 0.0, 0.0, 1.0, 0.0]
        assert list(info.r) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]

    # Stamps are ROS time at frame arrival: the recording is stamped in the device's hardware
    # clock (starting at zero), which the policy's staleness check could not compare with its
    # own clock (global-time stamps: test_realsense_recovery.py).
    latencies = [received - _seconds(m.header.stamp) for m, received in images]
    assert 0 <= min(latencies) and max(latencies) < 1.0, latencies
    stamps = [_stamp(m) for m, _ in images]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    # Frames lost between the first and last received image: gaps in the looping sequence
    # (best effort, 900 kB per image; how many depends on the load of this machine).
    dropped = sum((b - a) % n - 1 for a, b in zip(seen, seen[1:]))
    print(
        f"\nrealsense_camera 640x480 rgb8: received {len(images)} of {len(images) + dropped} "
        f"frames in the window ({dropped} dropped), node published {_published(proc)} in all; "
        f"publish->receive latency mean {1e3 * np.mean(latencies):.2f} ms, "
        f"max {1e3 * max(latencies):.2f} ms"
    )


@pytest.mark.ros
def test_bgr8_recording_is_published_as_rgb8_with_the_equidistant_model(
    ros_node, start_node, tmp_path
):
    rec = write_recording(
        tmp_path / "bgr.db3",
        4,
        48,
        64,
        fmt=rs.format.bgr8,
        model=rs.distortion.kannala_brandt4,
        coeffs=[0.5, -0.125, 0.25, 0.0625],
    )
    proc = start_node(
        "lawm_policy",
        "realsense_camera",
        params={"recording": str(rec.path)},
        remaps={"__ns": "/rs_bgr"},
    )
    subs, images, infos = _subscribe(ros_node, "/rs_bgr")
    for sub in subs:
        wait_for_publishers(ros_node, sub, procs=[proc])
    wait_until(ros_node, lambda: len(images) >= 8 and infos, 30, "8 images", [proc])
    assert proc.stop() == 0, proc.tail()

    for msg, _ in images:
        assert msg.encoding == "rgb8" and (msg.height, msg.width) == (48, 64)
        pixels = _pixels(msg)
        recorded_bgr = rec.frames[frame_index(pixels, channel=0)]
        np.testing.assert_array_equal(pixels, recorded_bgr[..., ::-1])
    for info in infos.values():
        assert info.distortion_model == "equidistant"
        assert list(info.d) == [0.5, -0.125, 0.25, 0.0625]
        assert info.header.frame_id == "camera_color_optical_frame"  # the default


@pytest.mark.ros
def test_without_loop_it_plays_once_stays_up_and_stops_on_sigint(start_node, tmp_path):
    rec = write_recording(tmp_path / "once.db3", 5, 48, 64)
    proc = start_node(
        "lawm_policy", "realsense_camera", params={"recording": str(rec.path), "loop": False}
    )
    deadline = time.monotonic() + 30
    while "recording finished after" not in proc.log_path.read_text():
        assert proc.alive() and time.monotonic() < deadline, proc.tail()
        time.sleep(0.05)
    assert "recording finished after 5 frames" in proc.log_path.read_text()
    time.sleep(0.3)  # it stays up after the end (a launch file would otherwise tear down)
    assert proc.alive(), proc.tail()
    assert proc.stop() == 0, proc.tail()  # SIGINT
    assert _published(proc) == 5
    assert "Traceback" not in proc.log_path.read_text()


@pytest.mark.ros
def test_no_device_and_no_recording_exits_with_a_clear_error(start_node):
    if len(rs.context().query_devices()):
        pytest.skip("a RealSense device is connected")
    started = time.monotonic()
    proc = start_node("lawm_policy", "realsense_camera")
    code, log = _wait_exit(proc)
    assert code != 0, log
    assert "no RealSense device found; connect one or set the 'recording' parameter" in log
    assert "Traceback" not in log
    assert time.monotonic() - started < 15


@pytest.mark.ros
@pytest.mark.parametrize("case", ["missing", "corrupt", "not_a_recording"])
def test_unusable_recording_exits_with_a_clear_error(start_node, tmp_path, case):
    path = tmp_path / "session.db3"
    if case == "corrupt":
        path.write_bytes(os.urandom(4096))
    elif case == "not_a_recording":
        path = Path(__file__)  # exists, readable, not a RealSense file
    proc = start_node("lawm_policy", "realsense_camera", params={"recording": str(path)})
    code, log = _wait_exit(proc)
    assert code != 0, log
    assert "Traceback" not in log
    expected = "does not exist" if case == "missing" else "cannot play recording"
    assert expected in log and str(path) in log, log


@pytest.mark.ros
@pytest.mark.parametrize(
    "name, value, message",
    [
        ("fps", 0, "fps must be positive, got 0"),
        ("reliability", "sometimes", "reliability must be reliable or best_effort"),
        ("clock_source", "gps", "clock_source must be auto or host, got 'gps'"),
    ],
)
def test_bad_parameter_exits_with_a_clear_error(start_node, recording, name, value, message):
    proc = start_node(
        "lawm_policy", "realsense_camera", params={"recording": str(recording.path), name: value}
    )
    code, log = _wait_exit(proc)
    assert code != 0 and message in log and "Traceback" not in log, log
