"""realsense_camera as a sensor driver: QoS, stamps, /diagnostics, and recovery of a lost stream.

Recordings are written with pyrealsense2's software device and recorder (see
test_realsense_camera.py) and played by the installed node in its own process. A stream that
is lost is played for real: a recording that pauses longer than the node's frame timeout, whose
file is then removed (the device is gone) and later replaced by another recording (the device
is back).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from test_realsense_camera import frame_index, write_recording

from lawm_apps.harness import wait_for_publishers, wait_until

rs = pytest.importorskip("pyrealsense2")


def _subscribe(node, namespace: str, qos=None):
    """Images (message, ROS time at reception) and the node's /diagnostics statuses."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    images: list = []
    diagnostics: list[dict] = []  # one dict per status: level, message, and its values

    def on_diag(msg) -> None:
        for status in msg.status:
            if status.name.startswith("realsense_camera"):
                values = {kv.key: kv.value for kv in status.values}
                diagnostics.append({"level": status.level, "message": status.message, **values})

    image_sub = node.create_subscription(
        Image,
        f"{namespace}/color/image_raw",
        lambda msg: images.append((msg, node.get_clock().now().nanoseconds)),
        qos or qos_profile_sensor_data,  # as the policy node subscribes (best effort)
    )
    diag_sub = node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    return image_sub, diag_sub, images, diagnostics


def _index(msg) -> int:
    return frame_index(np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3))


def _ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.ros
def test_a_lost_stream_is_restarted_and_resumes_when_the_device_returns(
    ros_node, start_node, tmp_path
):
    from diagnostic_msgs.msg import DiagnosticStatus

    path = tmp_path / "camera.db3"
    # Five frames, then the stream stops for 4 s: longer than the node's frame timeout.
    write_recording(path, 6, 48, 64, pause_before=5, pause_s=4.0)
    proc = start_node(
        "lawm_policy",
        "realsense_camera",
        params={
            "recording": str(path),
            "frame_timeout_s": 1.0,
            "retry_max_s": 0.5,
            "diagnostics_period_s": 0.2,
        },
        remaps={"__ns": "/rs_lost"},
    )
    image_sub, diag_sub, images, diagnostics = _subscribe(ros_node, "/rs_lost")
    wait_for_publishers(ros_node, image_sub, procs=[proc])
    wait_until(ros_node, lambda: any(_index(m) >= 2 for m, _ in images), 30, "frame 2", [proc])
    path.unlink()  # the device is gone before the node notices the silence

    def waiting() -> bool:
        return any(
            d["state"] == "waiting for device" and "does not exist" in d["last_error"]
            for d in diagnostics
        )

    wait_until(ros_node, waiting, 15, "/diagnostics: waiting for device", [proc])
    away_until = time.monotonic() + 2.0  # several restart attempts fail meanwhile
    wait_until(ros_node, lambda: time.monotonic() > away_until, 5, "2 s away", [proc])
    away = [d for d in diagnostics if d["state"] == "waiting for device"]
    assert all(d["level"] == DiagnosticStatus.ERROR for d in away), away
    assert int(away[-1]["timeouts"]) >= 1 and away[-1]["fps"] == "0.00", away[-1]
    before = len(images)

    # The device returns: another recording (frames 20-24) at the same path.
    back = write_recording(tmp_path / "back.db3", 5, 48, 64, first=20)
    os.replace(back.path, path)
    wait_until(ros_node, lambda: any(_index(m) >= 20 for m, _ in images), 15, "frame 20", [proc])
    wait_until(
        ros_node,
        lambda: diagnostics[-1]["state"] == "streaming" and diagnostics[-1]["fps"] != "0.00",
        10,
        "/diagnostics: streaming again",
        [proc],
    )
    final = diagnostics[-1]
    assert final["level"] == DiagnosticStatus.OK and final["last_error"], final
    assert proc.stop() == 0, proc.tail()

    log = proc.log_path.read_text()
    # Each loss said once however many attempts it took; usually one loss (frames 0-4 and the
    # pause), two if discovery was slow and frame 2 came from a restart of the first recording.
    losses = int(final["timeouts"])
    assert losses == int(final["restarts"]) and losses in (1, 2), final
    assert log.count("no frame for") == losses and log.count("restarting it") == losses, log
    assert log.count("does not exist") == 1 and log.count("streaming again after") == losses
    assert "Traceback" not in log
    resumed = [_index(m) for m, _ in images[before:]]
    assert resumed and all(i >= 20 for i in resumed), resumed  # only the returned device
    for msg, _ in images[before:]:
        np.testing.assert_array_equal(
            np.frombuffer(msg.data, np.uint8).reshape(48, 64, 3), back.frames[_index(msg) - 20]
        )


@pytest.mark.ros
@pytest.mark.parametrize("clock_source", ["auto", "host"])
def test_stamps_come_from_the_device_global_clock_when_it_has_one(
    ros_node, start_node, tmp_path, clock_source
):
    # Recorded in librealsense's global time domain (device clock mapped to host time), an
    # hour ago, so device stamps cannot be mistaken for arrival times.
    rec = write_recording(
        tmp_path / "global.db3",
        5,
        48,
        64,
        domain=rs.timestamp_domain.global_time,
        start_ms=time.time() * 1000.0 - 3600e3,
        serial="123456789012",
        number_step=2,  # every other frame missing, as if the device had dropped them
    )
    proc = start_node(
        "lawm_policy",
        "realsense_camera",
        params={"recording": str(rec.path), "clock_source": clock_source},
        remaps={"__ns": f"/rs_{clock_source}"},
    )
    image_sub, _, images, diagnostics = _subscribe(ros_node, f"/rs_{clock_source}")
    wait_for_publishers(ros_node, image_sub, procs=[proc])
    wait_until(ros_node, lambda: len(images) >= 3, 30, "3 images", [proc])
    wait_until(ros_node, lambda: len(diagnostics) >= 2, 10, "/diagnostics", [proc])
    assert proc.stop() == 0, proc.tail()

    expected = "device global time" if clock_source == "auto" else "host arrival time"
    assert diagnostics[-1]["clock_source"] == expected, diagnostics[-1]
    last = diagnostics[-1]
    assert last["serial"] == "123456789012" and last["state"] == "streaming", last
    assert 10 < float(last["fps"]) < 50, last  # a 30 Hz recording, measured
    # Four frame-number gaps per pass through the five frames (the loop restarts at 0).
    assert int(last["frames_dropped"]) >= 4 and int(last["frames_published"]) >= 3, last
    assert f"stamps: {expected}" in proc.log_path.read_text()
    for msg, received_ns in images:
        if clock_source == "auto":
            assert _ns(msg) == round(rec.stamps[_index(msg)] * 1e6)
        else:
            assert 0 <= received_ns - _ns(msg) < 10**9


@pytest.mark.ros
@pytest.mark.parametrize("reliability", ["reliable", "best_effort"])
def test_publishes_with_sensor_driver_qos(ros_node, start_node, tmp_path, reliability):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    rec = write_recording(tmp_path / "qos.db3", 4, 48, 64)
    ns = f"/rs_{reliability}"
    proc = start_node(
        "lawm_policy",
        "realsense_camera",
        params={"recording": str(rec.path), "reliability": reliability},
        remaps={"__ns": ns},
    )
    # A reliable subscriber (the default of rviz, rosbag2 and most tools) and the policy's
    # best-effort one.
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    _, _, reliable_images, _ = _subscribe(ros_node, ns, qos=reliable)
    image_sub, _, sensor_images, _ = _subscribe(ros_node, ns)
    wait_for_publishers(ros_node, image_sub, procs=[proc])  # matched endpoints only
    wait_until(ros_node, lambda: len(sensor_images) >= 4, 30, "4 images", [proc])
    expected = (
        ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    )
    for topic in (f"{ns}/color/image_raw", f"{ns}/color/camera_info"):
        (info,) = ros_node.get_publishers_info_by_topic(topic)
        assert info.qos_profile.reliability == expected, topic
        assert info.qos_profile.durability == DurabilityPolicy.VOLATILE, topic
    if reliability == "reliable":
        wait_until(ros_node, lambda: len(reliable_images) >= 4, 10, "reliable images", [proc])
    else:  # incompatible: a best-effort publisher never reaches a reliable subscriber
        assert not reliable_images
    assert proc.stop() == 0, proc.tail()
