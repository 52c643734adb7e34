"""A teleoperation rosbag2 as a real arm records it (written here with rosbags): unsynchronised
30 Hz CompressedImage cameras, JointState at 100 Hz, TwistStamped commands at 20 Hz, a sparse
gripper topic, a PoseStamped end effector. The loader resamples it to the model's control rate,
holds the sparse gripper, and reads proprio by joint name and from the pose."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from datafiles import (
    ARM_JOINTS,
    CAM_PERIOD,
    FINGER,
    FRONT_PHASE,
    GRIPPER_EVENTS,
    MS,
    T0,
    TELEOP_GRIPPER,
    TELEOP_JOINTS,
    TELEOP_POSE,
    TELEOP_TWIST,
    TWIST_PHASE,
    WRIST_PHASE,
    cam_time,
    joint_value,
    teleop_frame,
    twist_value,
    write_teleop_bag,
)

from lawm import keys
from lawm.data import DataError, RosbagOptions, WindowDataset, collate, open_sources
from lawm_core import contract

AV, EYE = contract.AGENTVIEW, contract.EYE_IN_HAND
JOINTS = ("joint2", FINGER)
OPTIONS = RosbagOptions(
    action_topic=TELEOP_TWIST, proprio_joints=JOINTS, control_rate_hz=20.0
)  # cameras, gripper and joint-state topics guessed


def _latest(stamps, t: int) -> int:
    """Index of the latest of the sorted ``stamps`` at or before t."""
    i = int(np.searchsorted(np.asarray(stamps), t, side="right")) - 1
    assert i >= 0
    return i


def _gripper_at(t: int) -> float:
    value = contract.GRIPPER_OPEN  # open before the first message
    for when, v in GRIPPER_EVENTS:
        if when <= t:
            value = v
    return value


@pytest.fixture(scope="module")
def teleop(tmp_path_factory):
    path = tmp_path_factory.mktemp("teleop") / "episode_0"
    write_teleop_bag(path, pose=True)
    return path


def test_steps_are_a_20hz_grid_from_the_first_frame_with_every_topic(teleop, caplog):
    with caplog.at_level(logging.INFO, logger="lawm"):
        (ep,) = open_sources(teleop, options=OPTIONS)
    # The wrist camera starts last (11 ms); the first front frame after it is frame 1.
    # The finger joint's last message (1905 ms) ends the episode.
    t = ep.frame_times - T0
    assert t[0] == cam_time(FRONT_PHASE, 1)
    assert np.all(np.abs(np.diff(t) - 50 * MS) <= 1) and t[-1] <= 1905 * MS < t[-1] + 50 * MS
    assert ep.length == 38 and ep.control_rate_hz == 20.0
    rates = ep.recorded_rates
    assert rates[TELEOP_JOINTS] == pytest.approx(100.0, rel=0.01)
    assert rates[TELEOP_TWIST] == pytest.approx(20.0, rel=0.01)
    for topic in ep.topics["images"].values():
        assert rates[topic] == pytest.approx(30.0, rel=0.02)
    line = [r.getMessage() for r in caplog.records if "resampled to 20 Hz" in r.getMessage()]
    assert len(line) == 1 and TELEOP_JOINTS in line[0] and "100.0 Hz" in line[0]
    assert "30.0 Hz" in line[0] and TELEOP_TWIST in line[0]


def test_each_step_takes_every_topics_latest_message(teleop):
    (ep,) = open_sources(teleop, options=OPTIONS)
    assert ep.cameras == (AV, EYE) and ep.topics["gripper"] == TELEOP_GRIPPER  # guessed
    assert ep.state_topics == {"pose": None, "joint_states": TELEOP_JOINTS, "joints": list(JOINTS)}
    assert ep.action_space == contract.ACTION_TWIST
    out = ep.read(0, ep.length)
    front = [cam_time(FRONT_PHASE, i) for i in range(61)]
    wrist = [cam_time(WRIST_PHASE, i) for i in range(61)]
    twists = [TWIST_PHASE + j * 50 * MS for j in range(41)]
    fingers = list(range(5 * MS, 2001 * MS, 100 * MS))
    for k, t in enumerate(ep.frame_times - T0):
        t = int(t)
        f, w = _latest(front, t), _latest(wrist, t)
        # Front is JPEG (lossy): the picked frame's colour, well apart from its neighbours'.
        err = np.abs(out["images"][AV][k].astype(int) - teleop_frame(0, f).astype(int)).mean()
        assert err < 2.5, (k, f, err)
        np.testing.assert_array_equal(out["images"][EYE][k], teleop_frame(1, w))  # PNG
        j = _latest(twists, t)
        want = np.append(twist_value(j), _gripper_at(t)).astype(np.float32)
        np.testing.assert_array_equal(out["actions"][k], want)
        np.testing.assert_allclose(
            out["proprio"][k],
            [
                joint_value("joint2", (t // (10 * MS)) * 10 * MS),
                joint_value(FINGER, fingers[_latest(fingers, t)]),
            ],
            atol=1e-6,
        )
    # 30 Hz cameras at 20 Hz steps: frames are skipped, none repeated.
    assert len({_latest(front, int(t)) for t in ep.frame_times - T0}) == ep.length


def test_training_batches_have_the_gripper_and_the_joint_proprio(teleop):
    (ep,) = open_sources(teleop, options=OPTIONS)
    assert ep.proprio_layout == ("joint:joint2", "joint:finger_joint")
    ds = WindowDataset([ep], (AV, EYE), 32, 4, mode="finetune")
    assert ds.proprio_dim == 2
    batch = collate([ds[i] for i in range(len(ds))])
    grip = batch[keys.ACTIONS][:, :, contract.GRIPPER_INDEX]
    assert set(torch.unique(grip).tolist()) == {-1.0, 1.0}  # learnt, not a constant 0
    assert batch[keys.PROPRIO].shape == (len(ds), 1, 2) and batch[keys.HAS_PROPRIO].all()
    assert batch["camera_mask"].all()


def test_pose_and_joints_make_one_layout_pose_first(teleop):
    opts = RosbagOptions(
        action_topic=TELEOP_TWIST,
        proprio_pose_topic=TELEOP_POSE,
        proprio_joint_states_topic=TELEOP_JOINTS,
        proprio_joints=("joint5",),
        control_rate_hz=20.0,
    )
    (ep,) = open_sources(teleop, options=opts)
    assert ep.proprio_layout == ("ee_x", "ee_y", "ee_z", "joint:joint5")
    prop = ep.read(0, ep.length)["proprio"]
    for k, t in enumerate(ep.frame_times - T0):
        p = (int(t) // (20 * MS)) * 20 * MS / 1e9  # 50 Hz pose
        q = (int(t) // (10 * MS)) * 10 * MS
        np.testing.assert_allclose(prop[k], [p, 2 * p, 3 * p, joint_value("joint5", q)], atol=1e-6)


def test_a_bag_with_only_a_pose_has_the_ee_layout(tmp_path):
    bag = tmp_path / "pose_only"
    write_teleop_bag(bag, seconds=1.0, joints=False, pose=True)
    opts = RosbagOptions(
        action_topic=TELEOP_TWIST,
        gripper_topic=TELEOP_GRIPPER,
        proprio_pose_topic=TELEOP_POSE,
        control_rate_hz=10.0,
    )
    (ep,) = open_sources(bag, options=opts)
    assert ep.proprio_layout == contract.PROPRIO_EE_NAMES and ep.has_proprio
    assert np.all(np.abs(np.diff(ep.frame_times) - 100 * MS) <= 1)
    prop = ep.read(0, ep.length)["proprio"]
    s = ((ep.frame_times - T0) // (20 * MS)) * 20 * MS / 1e9
    np.testing.assert_allclose(prop, np.stack([s, 2 * s, 3 * s], 1), atol=1e-6)


def test_a_missing_joint_is_an_error_naming_it_and_the_joints_there(teleop):
    opts = RosbagOptions(
        action_topic=TELEOP_TWIST,
        proprio_joint_states_topic=TELEOP_JOINTS,
        proprio_joints=("joint2", "shoulder_pan_joint"),
        control_rate_hz=20.0,
    )
    with pytest.raises(DataError, match="shoulder_pan_joint") as err:
        open_sources(teleop, options=opts)
    text = str(err.value)
    assert str(teleop) in text and TELEOP_JOINTS in text and "--proprio-joints" in text
    for name in (*ARM_JOINTS, FINGER):
        assert name in text
    # A joint-state topic without joints says which it has, too.
    opts = RosbagOptions(action_topic=TELEOP_TWIST, proprio_joint_states_topic=TELEOP_JOINTS)
    with pytest.raises(DataError, match="without the joints to read; its joints: finger_joint"):
        open_sources(teleop, options=opts)


def test_twist_commands_without_a_gripper_source_warn_naming_the_flag(tmp_path):
    bag = tmp_path / "no_gripper"
    write_teleop_bag(bag, seconds=0.6, gripper=False, joints=False)
    with pytest.warns(UserWarning, match="no gripper topic") as rec:
        (ep,) = open_sources(bag, options=RosbagOptions(action_topic=TELEOP_TWIST))
    text = str(rec[0].message)
    assert "--gripper-topic" in text and TELEOP_TWIST in text and "constant 0" in text
    assert not ep.read(0, ep.length)["actions"][:, contract.GRIPPER_INDEX].any()
    # A gripper topic that never changes is a warning too.
    bag = tmp_path / "still"
    write_teleop_bag(bag, seconds=0.5, joints=False)  # before the first gripper event
    opts = RosbagOptions(action_topic=TELEOP_TWIST, gripper_topic=TELEOP_GRIPPER)
    with pytest.warns(UserWarning, match="constant gripper"):
        open_sources(bag, options=opts)


def test_without_a_rate_the_first_camera_clocks_the_steps(teleop):
    opts = RosbagOptions(action_topic=TELEOP_TWIST, proprio_joints=JOINTS)
    (ep,) = open_sources(teleop, options=opts)
    assert ep.control_rate_hz == pytest.approx(30.0, rel=0.01)
    stamps = np.array([cam_time(FRONT_PHASE, i) for i in range(61)])
    np.testing.assert_array_equal(ep.frame_times - T0, stamps[stamps >= 11 * MS])
    assert np.diff(stamps).mean() == pytest.approx(CAM_PERIOD, abs=1)
