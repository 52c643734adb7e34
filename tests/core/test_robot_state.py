"""Robot state from standard messages' fields, gripper hysteresis, compressed camera frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lawm_core import contract
from lawm_core.command import GripperSwitch
from lawm_core.errors import InputError
from lawm_core.preprocess import image_from_compressed
from lawm_core.robot_state import EePose, GripperJoints, integrate_pose

FR3 = ["fr3_joint1", "fr3_joint2", "fr3_finger_joint1", "fr3_finger_joint2"]


def test_two_finger_joints_map_to_the_models_convention():
    # FR3 fingers are both 0..0.04 m; the model's proprio is LIBERO's (+q, -q).
    g = GripperJoints(["fr3_finger_joint1", "fr3_finger_joint2"], [1.0, -1.0], [0.0, 0.0])
    out = g.fingers(FR3, [0.1, 0.2, 0.04, 0.039])
    np.testing.assert_allclose(out, [0.04, -0.039], atol=1e-7)
    assert out.dtype == np.float32


def test_one_drive_joint_gives_both_fingers_affinely():
    # xArm-style drive_joint 0 (open) .. 0.85 (closed) -> 0.04 .. 0 per finger.
    g = GripperJoints(["drive_joint"], [-0.04 / 0.85, 0.04 / 0.85], [0.04, -0.04])
    np.testing.assert_allclose(g.fingers(["drive_joint"], [0.0]), [0.04, -0.04], atol=1e-7)
    np.testing.assert_allclose(g.fingers(["x", "drive_joint"], [9, 0.85]), [0, 0], atol=1e-7)


@pytest.mark.parametrize(
    "names, positions, words",
    [
        (FR3[:3], [0.0, 0.0, 0.0], "lacks gripper joint(s) ['fr3_finger_joint2']"),
        (FR3, [0.0, 0.0, 0.0], "4 names but 3 positions"),
        (FR3, [0.0, 0.0, np.nan, 0.0], "not finite"),
    ],
)
def test_bad_joint_states_are_named(names, positions, words):
    g = GripperJoints(["fr3_finger_joint1", "fr3_finger_joint2"], [1.0, -1.0], [0.0, 0.0])
    with pytest.raises(InputError) as err:
        g.fingers(names, positions)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "joints, scale, offset",
    [
        ([], [1, 1], [0, 0]),
        (["a", "b", "c"], [1, 1], [0, 0]),
        ([""], [1, 1], [0, 0]),
        (["a"], [1], [0, 0]),
        (["a"], [1, float("inf")], [0, 0]),
    ],
)
def test_bad_gripper_joint_parameters_are_refused(joints, scale, offset):
    with pytest.raises(ValueError):
        GripperJoints(joints, scale, offset)


def test_pose_checks_frame_finiteness_and_quaternion():
    pose = EePose.from_fields([0.4, 0, 0.3], [0, 0, 0, 1.004], "base_link", "base_link")
    np.testing.assert_allclose(np.linalg.norm(pose.orientation), 1.0)
    assert EePose.from_fields([0, 0, 0], [0, 0, 0, 1], "/base_link", "base_link")
    with pytest.raises(InputError, match="frame 'tool0', expected 'base_link'"):
        EePose.from_fields([0, 0, 0], [0, 0, 0, 1], "tool0", "base_link")
    with pytest.raises(InputError, match="not finite"):
        EePose.from_fields([0, np.inf, 0], [0, 0, 0, 1])
    with pytest.raises(InputError, match="norm"):
        EePose.from_fields([0, 0, 0], [0, 0, 0, 0])


def test_integrated_pose_follows_the_twist_in_the_base_frame():
    # Start turned 90 deg about z; a base-frame rotation about x must turn about base x.
    start = EePose.from_fields([0.5, 0.0, 0.2], [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    out = integrate_pose(start, [0.1, -0.2, 0.0], [np.pi, 0, 0], 0.5)
    np.testing.assert_allclose(out.position, [0.55, -0.1, 0.2])
    # R_x(90) * R_z(90): the end effector's x axis (base y after the first turn) -> base z.
    x, y, z, w = out.orientation
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    np.testing.assert_allclose(rot @ [1, 0, 0], [0, 0, 1], atol=1e-9)
    still = integrate_pose(start, np.zeros(3), np.zeros(3), 0.05)
    np.testing.assert_allclose(still.position, start.position)
    np.testing.assert_allclose(still.orientation, start.orientation)
    with pytest.raises(InputError):
        integrate_pose(start, [np.nan, 0, 0], np.zeros(3), 0.05)


def test_gripper_switch_sends_changes_only_with_hysteresis():
    s = GripperSwitch(0.5, 0.2)
    # Hovering around the threshold: one command, not one per step.
    sent = [s.update(c) for c in [0.45, 0.55, 0.49, 0.58, 0.52, 0.61, 0.59, 0.41, 0.39, 0.45]]
    assert sent == [
        contract.GRIPPER_OPEN,
        None,
        None,
        None,
        None,
        contract.GRIPPER_CLOSE,
        None,
        None,
        contract.GRIPPER_OPEN,
        None,
    ]
    assert s.update(float("nan")) is None and s.state == contract.GRIPPER_OPEN
    s.reset()
    assert s.update(0.45) == contract.GRIPPER_OPEN  # after a reset the state is sent again
    no_band = GripperSwitch(0.5, 0.0)
    assert [no_band.update(c) for c in (0.6, 0.4, 0.6)] == [1.0, -1.0, 1.0]
    for bad in ((0.5, -0.1), (0.5, 1.0), (0.95, 0.2), (1.0, 0.1), (0.5, float("nan"))):
        with pytest.raises(ValueError):
            GripperSwitch(*bad)


def _frame() -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (255, 0, 0)  # red on the left (RGB)
    img[:, 32:] = (0, 0, 255)
    return img


@pytest.mark.parametrize("ext, fmt", [(".jpg", "rgb8; jpeg compressed bgr8"), (".png", "png")])
def test_compressed_frames_decode_to_rgb(ext, fmt):
    ok, data = cv2.imencode(ext, cv2.cvtColor(_frame(), cv2.COLOR_RGB2BGR))
    out = image_from_compressed(data.tobytes(), fmt)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert out[24, 10, 0] > 200 and out[24, 10, 2] < 50  # still red where red was
    assert out[24, 54, 2] > 200 and out[24, 54, 0] < 50


def test_bad_compressed_frames_are_refused():
    ok, data = cv2.imencode(".jpg", _frame())
    for bad, words in [
        (b"", "no data"),
        (b"\xff\xd8garbage", "cannot decode"),
        (data.tobytes()[:20], "cannot decode"),
    ]:
        with pytest.raises(InputError, match=words):
            image_from_compressed(bad, "jpeg")
    with pytest.raises(InputError, match="depth"):
        image_from_compressed(data.tobytes(), "16UC1; compressedDepth png")


def test_proprio_layout_assembles_pose_fingers_and_named_joints():
    from lawm_core.robot_state import ProprioLayout

    fingers = GripperJoints(["fr3_finger_joint1", "fr3_finger_joint2"], [1.0, -1.0], [0.0, 0.0])
    libero = ProprioLayout(contract.PROPRIO_LAYOUT, fingers)
    pose = EePose.from_fields([0.4, -0.1, 0.3], [0, 0, 0, 1])
    joints = libero.read_joints(FR3, [0.1, 0.2, 0.03, 0.02])
    np.testing.assert_allclose(libero.assemble(pose, joints), [0.4, -0.1, 0.3, 0.03, -0.02])
    assert libero.assemble(None, joints) is None and libero.assemble(pose, None) is None

    # A layout learnt from a bag's JointState: joints by name, in the layout's order, merged
    # from messages of different publishers (the arm's, the gripper's).
    named = ProprioLayout(["joint:fr3_joint2", "ee_z", "joint:fr3_finger_joint1"])
    arm = named.read_joints(["fr3_joint1", "fr3_joint2"], [0.1, 0.2])
    assert arm == {"fr3_joint2": 0.2} and named.assemble(pose, arm) is None
    hand = named.read_joints(["fr3_finger_joint1"], [0.03])
    np.testing.assert_allclose(named.assemble(pose, {**arm, **hand}), [0.2, 0.3, 0.03])
    assert named.read_joints(["other"], [1.0]) == {}
    with pytest.raises(InputError, match="2 names but 1 positions"):
        named.read_joints(["fr3_joint2", "x"], [0.1])
    with pytest.raises(InputError, match="not finite"):
        named.read_joints(["fr3_joint2"], [np.nan])
    named.check_sources(has_pose=True, has_joint_states=True)
    with pytest.raises(ValueError, match="need pose_topic or pose_tf_frame"):
        named.check_sources(has_pose=False, has_joint_states=True)
    with pytest.raises(ValueError, match="need joint_states_topic"):
        named.check_sources(has_pose=True, has_joint_states=False)
    with pytest.raises(ValueError, match="need gripper_joints"):
        ProprioLayout(contract.PROPRIO_LAYOUT).check_sources(True, True)
    with pytest.raises(ValueError, match="not a proprio name"):
        ProprioLayout(["ee_x", "wrist_temperature"])
    assert ProprioLayout([]).assemble(None, None).shape == (0,)
