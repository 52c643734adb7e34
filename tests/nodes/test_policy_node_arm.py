"""The policy node on a real arm's interfaces, as a real process: compressed cameras, the robot
state from JointState + PoseStamped, gripper commands on change (Float64 and JointTrajectory),
pose targets, MoveIt Servo paused and unpaused, and the configurations it refuses."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Float32MultiArray, Float64, String
from std_srvs.srv import SetBool
from test_policy_node import CAM_TOPICS, INSTRUCTION, _start
from trajectory_msgs.msg import JointTrajectory

from lawm_apps.harness import (
    call_service,
    wait_for_publishers,
    wait_for_subscribers,
    wait_until,
)
from lawm_core.aggregation import TemporalAggregator
from lawm_core.model import PolicyModel
from lawm_core.preprocess import fit_image, image_from_compressed
from lawm_core.robot_state import EePose, integrate_pose
from lawm_core.text_encoder import TextEncoderRuntime
from lawm_policy.qos import COMMAND, LATCHED, SENSOR_LATEST

pytestmark = pytest.mark.ros

COMPRESSED = [t + "/compressed" for t in CAM_TOPICS]
POSE_TOPIC, JOINTS_TOPIC = "/test/ee_pose", "/test/joint_states"
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
JOINT_NAMES = ["fr3_joint1", *FINGERS]
JOINT_POSITIONS = [0.3, 0.031, 0.029]
EE_POSITION, EE_QUAT = [0.45, -0.1, 0.32], [1.0, 0.0, 0.0, 0.0]  # gripper pointing down
LATCHED_READER = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def _png(size: int, value: int) -> bytes:
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2] = (value * 20 % 256, 40, 200)
    img[:, size // 2 :] = (10, value * 30 % 256, 90)
    ok, data = cv2.imencode(".png", img)
    assert ok
    return data.tobytes()


class ArmRig:
    """Compressed cameras, an end-effector pose and joint states in; every output recorded."""

    def __init__(self, node, proc, size=48):
        self.node, self.proc, self.size = node, proc, size
        self.cams = [node.create_publisher(CompressedImage, t, SENSOR_LATEST) for t in COMPRESSED]
        self.pose = node.create_publisher(PoseStamped, POSE_TOPIC, SENSOR_LATEST)
        self.joints = node.create_publisher(JointState, JOINTS_TOPIC, SENSOR_LATEST)
        self.instruction = node.create_publisher(String, "/lawm_policy/instruction", LATCHED)
        self.actions, self.twists, self.poses, self.grippers, self.trajectories = (
            [],
            [],
            [],
            [],
            [],
        )
        self.diags: list[DiagnosticArray] = []
        self.subs = [
            node.create_subscription(
                Float32MultiArray, "/lawm_policy/action", lambda m: self.actions.append(m.data), 10
            ),
            node.create_subscription(
                TwistStamped, "/lawm_policy/cmd_twist", self.twists.append, COMMAND
            ),
            node.create_subscription(
                PoseStamped, "/lawm_policy/cmd_pose", self.poses.append, COMMAND
            ),
            node.create_subscription(
                Float64, "/lawm_policy/cmd_gripper", lambda m: self.grippers.append(m.data), 10
            ),
            node.create_subscription(
                JointTrajectory,
                "/lawm_policy/cmd_gripper_trajectory",
                self.trajectories.append,
                10,
            ),
            node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10),
        ]

    def connect(self, robot_state=True):
        for pub in self.cams + ([self.pose, self.joints] if robot_state else []):
            wait_for_subscribers(self.node, pub, procs=[self.proc])
        wait_for_publishers(self.node, self.subs[1], procs=[self.proc])

    def publish(self, value=1, pose_frame="base_link", joints=True, pose=True, data=None):
        stamp = self.node.get_clock().now().to_msg()
        for i, pub in enumerate(self.cams):
            msg = CompressedImage(format="png", data=data or _png(self.size, value + i))
            msg.header.stamp = stamp
            pub.publish(msg)
        if pose:
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, pose_frame
            p, q = msg.pose.position, msg.pose.orientation
            p.x, p.y, p.z = EE_POSITION
            q.x, q.y, q.z, q.w = EE_QUAT
            self.pose.publish(msg)
        if joints:
            msg = JointState(name=JOINT_NAMES, position=JOINT_POSITIONS)
            if joints == "arm only":
                msg = JointState(name=JOINT_NAMES[:1], position=JOINT_POSITIONS[:1])
            msg.header.stamp = stamp
            self.joints.publish(msg)

    def stream(self, seconds, until=None, **kwargs):
        end, next_t = time.monotonic() + seconds, time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_t:
                self.publish(**kwargs)
                next_t += 1 / 30
            self.node.executor.spin_once(timeout_sec=0.005)
            if until is not None and until():
                return
            assert self.proc.alive(), self.proc.tail()

    def says(self, text):
        return any(d.status and text in d.status[0].message for d in self.diags)


def _set(node, proc, **values):
    client = node.create_client(SetParameters, "/lawm_policy/set_parameters")
    assert client.wait_for_service(timeout_sec=30), proc.tail()
    req = SetParameters.Request()
    req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
    reply = call_service(node, client, req, 15, "set_parameters", [proc])
    return [(r.successful, r.reason) for r in reply.results]


def _twist(t):
    lin, ang = t.twist.linear, t.twist.angular
    return np.array([lin.x, lin.y, lin.z]), np.array([ang.x, ang.y, ang.z])


def test_compressed_cameras_and_standard_robot_state_drive_the_policy(
    ros_node, start_node, exported_debug_model
):
    proc = _start(
        start_node,
        exported_debug_model,
        instruction=INSTRUCTION,
        camera_topics=COMPRESSED,
        pose_topic=POSE_TOPIC,
        joint_states_topic=JOINTS_TOPIC,
        gripper_joints=FINGERS,
        gripper_joint_scale=[1.0, -1.0],
        pose_target=True,
    )
    rig = ArmRig(ros_node, proc)
    rig.connect()
    # Cameras alone: the robot state is missing, so no action, zero twists, and both named.
    rig.stream(1.5, pose=False, joints=False, until=lambda: rig.says("joint:fr3_finger_joint2"))
    assert not rig.actions and rig.twists and not any(_twist(t)[0].any() for t in rig.twists)
    assert rig.says("ee_pose") and rig.says("joint:fr3_finger_joint1")

    rig.stream(5.0, until=lambda: len(rig.actions) >= 8)
    assert len(rig.actions) >= 8, proc.tail()
    # The model got the decoded frames and the proprio [ee xyz, finger1, -finger2].
    model = PolicyModel(exported_debug_model, providers="cpu")
    images = {
        cam: fit_image(image_from_compressed(_png(rig.size, 1 + i), "png"), model.image_size)
        for i, cam in enumerate(model.cameras)
    }
    proprio = np.array([*EE_POSITION, 0.031, -0.029], np.float32)
    lang = TextEncoderRuntime(exported_debug_model).embed(INSTRUCTION)
    chunk = model.predict(images, proprio, lang)
    agg = TemporalAggregator(model.chunk_size, model.action_dim)
    expected = [model.denormalize(agg.step(chunk)) for _ in range(model.chunk_size)]
    got = np.asarray(rig.actions[-1])
    assert min(np.abs(got - e).max() for e in expected) < 1e-4
    mean = np.asarray(model.spec.normalization.proprio_mean, np.float32)
    agg_mean = TemporalAggregator(model.chunk_size, model.action_dim)
    with_mean = model.denormalize(agg_mean.step(model.predict(images, mean, lang)))
    assert np.abs(got - with_mean).max() > 1e-4, "the proprio made no difference"

    # Pose targets: the measured pose moved by a published twist over one period (20 Hz).
    measured = EePose.from_fields(EE_POSITION, EE_QUAT)
    assert rig.poses and all(p.header.frame_id == "base_link" for p in rig.poses)
    moves = [integrate_pose(measured, *_twist(t), 0.05) for t in rig.twists]
    for p in rig.poses[-5:]:
        pos = [p.pose.position.x, p.pose.position.y, p.pose.position.z]
        q = p.pose.orientation
        assert any(
            np.allclose(pos, m.position, atol=1e-9)
            and np.allclose([q.x, q.y, q.z, q.w], m.orientation, atol=1e-9)
            for m in moves
        ), pos

    # Bad input is named in /diagnostics and dropped; the node carries on.
    rig.stream(3.0, pose_frame="tool0", until=lambda: rig.says("frame 'tool0'"))
    assert rig.says("expected 'base_link'")
    # A joint_states stream without the gripper joints (only the arm's): named once they are
    # overdue (other publishers' messages on the same topic are normal while they come).
    rig.stream(2.0, joints="arm only", until=lambda: rig.says("lacks joint(s)"))
    assert rig.says("['fr3_finger_joint1', 'fr3_finger_joint2'] (it has ['fr3_joint1'])")
    rig.stream(3.0, data=b"\x89PNG garbage", until=lambda: rig.says("cannot decode"))
    assert rig.says("cannot decode CompressedImage")
    n = len(rig.actions)
    rig.stream(3.0, until=lambda: len(rig.actions) > n + 3)
    assert len(rig.actions) > n + 3 and proc.alive()


def test_gripper_commands_go_out_on_change_only(ros_node, start_node, exported_debug_model):
    # An untrained model's gripper sits near halfway: thresholds near 0 and 1 force a decision.
    proc = _start(
        start_node,
        exported_debug_model,
        instruction=INSTRUCTION,
        camera_topics=COMPRESSED,
        gripper_threshold=0.02,
        gripper_hysteresis=0.0,
        gripper_interface="joint_trajectory",
        gripper_command_joints=["drive_joint"],
        gripper_open_position=0.0,
        gripper_closed_position=0.85,
        gripper_move_time_s=0.4,
    )
    rig = ArmRig(ros_node, proc)
    rig.connect(robot_state=False)
    rig.stream(4.0, pose=False, joints=False, until=lambda: len(rig.actions) > 30)
    assert len(rig.actions) > 30
    # One decision, one command on each output, not one per tick.
    assert rig.grippers == [1.0] and len(rig.trajectories) == 1
    traj = rig.trajectories[0]
    assert traj.joint_names == ["drive_joint"] and list(traj.points[0].positions) == [0.85]
    assert traj.points[0].time_from_start.nanosec == 400_000_000

    # A consumer that starts later still gets the current state (latched).
    late: list[float] = []
    ros_node.create_subscription(
        Float64, "/lawm_policy/cmd_gripper", lambda m: late.append(m.data), LATCHED_READER
    )
    wait_until(ros_node, lambda: late, 10, "the latched gripper command", [proc])
    assert late == [1.0]

    assert _set(ros_node, proc, gripper_threshold=0.98) == [(True, "")]
    n = len(rig.actions)
    rig.stream(3.0, pose=False, joints=False, until=lambda: len(rig.actions) > n + 20)
    assert rig.grippers == [1.0, -1.0] and len(rig.trajectories) == 2
    assert list(rig.trajectories[1].points[0].positions) == [0.0]


def test_servo_is_unpaused_when_enabled_and_paused_when_disabled(
    ros_node, start_node, exported_debug_model
):
    calls: list[bool] = []

    def pause(request, response):
        calls.append(request.data)
        response.success, response.message = True, ""
        return response

    ros_node.create_service(SetBool, "/test_servo/pause_servo", pause)
    proc = _start(
        start_node,
        exported_debug_model,
        instruction=INSTRUCTION,
        camera_topics=COMPRESSED,
        servo_node="/test_servo",
        start_enabled=False,
    )
    enable = ros_node.create_client(SetBool, "/lawm_policy/enable")
    assert enable.wait_for_service(timeout_sec=30), proc.tail()
    wait_until(ros_node, lambda: "active" in proc.tail(), 30, "active", [proc])
    assert calls == []  # disabled: Servo is left alone
    for data, want in ((True, [False]), (False, [False, True])):
        fut = enable.call_async(SetBool.Request(data=data))
        done = lambda f=fut, w=want: f.done() and calls == w  # noqa: E731
        wait_until(ros_node, done, 15, f"pause calls {want}", [proc])
    wait_until(
        ros_node,
        lambda: "MoveIt Servo pause: ok" in proc.log_path.read_text(),
        10,
        "the pause logged",
        [proc],
    )
    log = proc.log_path.read_text()
    assert "moveit_msgs is not installed" in log and "MoveIt Servo unpause: ok" in log


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"gripper_interface": "gripper_action"}, "needs control_msgs"),
        ({"gripper_interface": "parallel_gripper_action"}, "needs control_msgs"),
        ({"pose_target": True}, "pose_target needs the measured end-effector pose"),
        ({"pose_tf_frame": "tool0"}, "needs tf2_ros"),
        ({"joint_states_topic": "/j", "gripper_joints": ["a", "b", "c"]}, "1 or 2 joint names"),
        ({"gripper_interface": "robotiq"}, "gripper_interface 'robotiq' is not one of"),
    ],
)
def test_arm_configurations_that_cannot_work_are_refused(
    ros_node, start_node, exported_debug_model, params, needle
):
    proc = _start(start_node, exported_debug_model, **params)
    wait_until(
        ros_node,
        lambda: "cannot configure" in proc.log_path.read_text(),
        30,
        "the configure error",
        [proc],
    )
    assert needle in proc.log_path.read_text().split("cannot configure", 1)[1]
