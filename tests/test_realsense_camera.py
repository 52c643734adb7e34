"""The realsense_camera node on synthetic RealSense recordings (no camera needed).

A recording is written here with pyrealsense2's software device and recorder (librealsense's own
recording format), then the installed node plays it in its own process; the test subscribes over
Fast DDS like the policy node would. The Docker image files, which cannot be
built on this machine, get static checks at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lawm_apps.harness import ROOT, wait_for_publishers, wait_until

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
) -> Recording:
    """Write ``count`` pattern frames as a RealSense recording (``path`` must end in .db3)."""
    intr = rs.intrinsics()
    intr.width, intr.height = width, height
    intr.fx, intr.fy, intr.ppx, intr.ppy = FX, FY, PPX, PPY
    intr.model = model
    intr.coeffs = list(coeffs) + [0.0] * (5 - len(coeffs))

    device = rs.software_device()
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
    frames = []
    for i in range(count):
        pixels = pattern(i, height, width)
        frames.append(pixels)
        frame = rs.software_video_frame()
        frame.pixels = pixels.tobytes()
        frame.stride, frame.bpp = width * 3, 3
        frame.timestamp = i * 1000.0 / FPS
        frame.domain = rs.timestamp_domain.hardware_clock
        frame.frame_number = i
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
    return Recording(path, frames, intr)


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

    # Stamps are ROS time at frame arrival (not the recording's device time, which starts at
    # zero), so the policy's staleness check can compare them with its own clock.
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
def test_bad_parameter_exits_with_a_clear_error(start_node, recording):
    proc = start_node(
        "lawm_policy", "realsense_camera", params={"recording": str(recording.path), "fps": 0}
    )
    code, log = _wait_exit(proc)
    assert code != 0 and "fps must be positive, got 0" in log and "Traceback" not in log


# ------------------------------------------------------------------------------------------
# Docker images. No Docker engine here, so the images are never built on this machine: these
# checks keep the files consistent with the repository and with what `make setup` proves.

DOCKER = ROOT / "docker"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _shell_commands(script: str) -> list[list[str]]:
    """A RUN line split into simple commands (at &&, ||, ;, |), each a list of words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", ">", ">>"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pip_requirements(dockerfile: Path) -> list[str]:
    """Every requirement named on a `pip install` command of the Dockerfile's RUN lines."""
    found = []
    for keyword, args in _instructions(dockerfile):
        if keyword != "RUN":
            continue
        for words in _shell_commands(args):
            pip = next((i for i, w in enumerate(words[:3]) if w.split("/")[-1] == "pip"), None)
            if pip is None or words[pip + 1 : pip + 2] != ["install"]:
                continue
            options_with_value = {"-r", "-c", "--requirement", "--constraint", "-t", "--target"}
            after = words[pip + 2 :]
            for i, word in enumerate(after):
                if word.startswith("-") or (i and after[i - 1] in options_with_value):
                    continue
                if word != ".":
                    found.append(word)
    return found


@pytest.mark.parametrize("name", ["ros.Dockerfile", "train.Dockerfile"])
def test_dockerfile_copy_sources_exist(name):
    for keyword, args in _instructions(DOCKER / name):
        if keyword == "COPY":
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            assert sources, args
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"


def test_ros_image_installs_gpu_onnxruntime_and_lock_pins():
    dockerfile = DOCKER / "ros.Dockerfile"
    instructions = _instructions(dockerfile)
    assert instructions[0] == ("FROM", "ros:jazzy-ros-base")
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "ros-jazzy-cv-bridge" in runs and "libusb-1.0-0" in runs
    assert "colcon build" in runs and "--symlink-install" not in runs

    names = {re.split(r"[\[<>=!~]", req)[0].lower(): req for req in _pip_requirements(dockerfile)}
    assert "onnxruntime-gpu" in names
    assert "onnxruntime" not in names  # the CPU build would clobber the GPU one
    locked = dict(
        line.lower().replace("_", "-").split("==", 1)
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pinned = [req.split("==") for req in names.values() if "==" in req]
    assert {"pyrealsense2", "tokenizers"} <= {name for name, _ in pinned}
    for name, version in pinned:  # the same pins `make setup` installs, where they overlap
        assert locked.get(re.sub(r"\[.*\]", "", name), version) == version, name

    entrypoint = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint and "entrypoint.sh" in entrypoint[-1]


def test_train_image_keeps_the_base_cuda_torch():
    dockerfile = DOCKER / "train.Dockerfile"
    instructions = _instructions(dockerfile)
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("pytorch/pytorch:2.13.0")
    names = [re.split(r"[\[<>=!~]", r)[0].lower() for r in _pip_requirements(dockerfile)]
    assert "torch" not in names and "onnxruntime-gpu" not in names
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "-e ." in runs


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "ros2 launch lawm_bringup robot.launch.py"),
        (["model_dir:=/models"], "ros2 launch lawm_bringup robot.launch.py model_dir:=/models"),
        (["--show-args"], "ros2 launch lawm_bringup robot.launch.py --show-args"),
        (["ros2", "topic", "list"], "ros2 topic list"),
    ],
)
def test_entrypoint_launches_or_runs_a_command(tmp_path, args, expected):
    # Stand-ins for the image's ROS setup files and `ros2`, to exercise the dispatch logic.
    setup = tmp_path / "setup.bash"
    setup.write_text(f'export PATH="{tmp_path}:$PATH"\n')
    fake = tmp_path / "ros2"
    fake.write_text('#!/bin/sh\necho "ros2 $*"\n')
    fake.chmod(0o755)
    env = dict(os.environ, ROS_SETUP=str(setup), LAWM_WS_SETUP=str(setup))
    env.pop("LAUNCH_FILE", None)
    out = subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
