"""rosbag2 episodes (lawm.data.rosbag), sqlite3 and mcap, written here with rosbags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from datafiles import (
    ACTION,
    AV,
    EYE,
    FRONT,
    MS,
    PROPRIO,
    T0,
    TEXT,
    TOPICS,
    WRIST,
    front_image,
    wrist_image,
    write_bag,
)
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from lawm.data import DataError, RosbagOptions, detect_format, open_sources


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag_alignment_and_round_trip(tmp_path, storage):
    bag = tmp_path / f"episode_{storage}"
    write_bag(bag, storage)
    assert detect_format(bag) == "rosbag"
    (src,) = open_sources(bag, options=TOPICS)
    # Frames 0 and 1 come before the first action (150 ms) and are dropped.
    assert src.length == 8 and src.cameras == (AV, EYE)
    assert src.instruction == "stack the cups" and src.has_actions and src.has_proprio
    assert src.action_space is None  # a bare array: its units are unknown
    out = src.read(0, 8)
    for f in range(8):
        i = f + 2  # camera frame; stamped i * 100 ms (its header, not its later log time)
        np.testing.assert_array_equal(out["images"][AV][f], front_image(i))
        np.testing.assert_array_equal(out["images"][EYE][f], wrist_image(i // 2))
        np.testing.assert_array_equal(
            out["actions"][f], (4 * i + 0.1 * np.arange(7)).astype(np.float32)
        )
        np.testing.assert_array_equal(
            out["proprio"][f], (2 * i + 0.01 * np.arange(5)).astype(np.float32)
        )
    part = src.read(3, 5, cameras=(EYE,))
    assert list(part["images"]) == [EYE]
    np.testing.assert_array_equal(part["images"][EYE], np.stack([wrist_image(2), wrist_image(3)]))
    # The same bag as unlabeled video never reads an action; a given instruction wins.
    (video,) = open_sources(
        bag, labelled=False, options=dataclasses.replace(TOPICS, instruction="stack them")
    )
    assert not video.has_actions and video.read(0, 2)["actions"] is None
    assert video.instruction == "stack them"
    if storage == "mcap":  # a bare storage file opens too
        (bare,) = open_sources(next(bag.glob("*.mcap")), options=TOPICS)
        np.testing.assert_array_equal(bare.read(7, 8)["images"][AV][0], front_image(9))


def test_rosbag_twist_actions_with_gripper_and_bgr_images(tmp_path):
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    zero = T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
    )
    bag = tmp_path / "twist"
    rgb = [np.full((4, 6, 3), (10 * i, 100, 250 - i), np.uint8) for i in range(4)]
    with Writer(bag, version=9) as w:
        cam = w.add_connection("/camera/image", "sensor_msgs/msg/Image", typestore=ts)
        cmd = w.add_connection("/cmd_twist", "geometry_msgs/msg/TwistStamped", typestore=ts)
        grip = w.add_connection("/gripper", "std_msgs/msg/Float64", typestore=ts)
        for i in range(4):
            t = T0 + i * 100 * MS
            v = T["geometry_msgs/msg/Vector3"]
            twist = T["geometry_msgs/msg/Twist"](
                linear=v(x=i, y=2.0, z=3.0), angular=v(x=4.0, y=5.0, z=6.0 + i)
            )
            ts_msg = T["geometry_msgs/msg/TwistStamped"](header=zero, twist=twist)
            w.write(cmd, t, ts.serialize_cdr(ts_msg, "geometry_msgs/msg/TwistStamped"))
            w.write(
                grip,
                t,
                ts.serialize_cdr(T["std_msgs/msg/Float64"](data=-1.0 + i), "std_msgs/msg/Float64"),
            )
            bgr = np.ascontiguousarray(rgb[i][:, :, ::-1])
            img = T["sensor_msgs/msg/Image"](
                header=zero,
                height=4,
                width=6,
                encoding="bgr8",
                is_bigendian=0,
                step=18,
                data=bgr.reshape(-1),
            )
            w.write(cam, t + MS, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
    # Zero header stamps fall back to log times; the single image topic is the agentview.
    (src,) = open_sources(
        bag, options=RosbagOptions(action_topic="/cmd_twist", gripper_topic="/gripper")
    )
    assert src.length == 4 and src.cameras == (AV,) and not src.has_proprio
    out = src.read(0, 4)
    np.testing.assert_array_equal(out["images"][AV], np.stack(rgb))
    want = np.array([[i, 2, 3, 4, 5, 6 + i, -1 + i] for i in range(4)], np.float32)
    np.testing.assert_array_equal(out["actions"], want)
    assert src.action_space == "twist"  # what export declares in policy.json


def test_rosbag_missing_topics_and_truncated_files(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, "mcap")
    with pytest.raises(DataError, match=r"missing topics \['/arm/cmd'\]") as err:
        open_sources(bag, options=RosbagOptions(image_topics={AV: FRONT}, action_topic="/arm/cmd"))
    assert str(bag) in str(err.value) and FRONT in str(err.value) and ACTION in str(err.value)
    # Without topic arguments: the camera named like a wrist camera is eye_in_hand, and the
    # topics named *action* / *proprio* / *instruction* are used.
    (auto,) = open_sources(bag)
    assert auto.topics == {
        "images": {AV: FRONT, EYE: WRIST},
        "actions": ACTION,
        "proprio": PROPRIO,
        "gripper": None,
        "instruction": TEXT,
    }
    with pytest.raises(DataError, match="has type sensor_msgs/msg/Image, expected"):
        open_sources(bag, options=RosbagOptions(image_topics={AV: FRONT}, action_topic=FRONT))
    for storage in ("mcap", "sqlite3"):
        cut = tmp_path / f"cut_{storage}"
        write_bag(cut, storage)
        (file,) = [p for p in cut.iterdir() if p.suffix in (".mcap", ".db3")]
        blob = file.read_bytes()
        file.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(DataError, match="corrupt or truncated") as err:
            open_sources(cut, options=TOPICS)[0].read(0, 1)
        assert str(cut) in str(err.value)
