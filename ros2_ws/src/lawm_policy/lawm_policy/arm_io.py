"""The policy node's interfaces to a real arm: robot state in, gripper, pose targets and MoveIt
Servo out. Each is a small object the node creates at configure and releases at cleanup; the
checks and the arithmetic live in the core (``lawm_core.robot_state``, ``lawm_core.command``).

Robot state (the model's proprio and the workspace fence's position), one of:
    ``proprio_topic``: std_msgs/Float32MultiArray in the model's own layout, or the standard
    messages: the end-effector pose from ``pose_topic`` (geometry_msgs/PoseStamped, in
    ``frame_id``) or from TF (``pose_tf_frame`` looked up from ``frame_id``; needs tf2_ros),
    and the finger joints from ``joint_states_topic`` (sensor_msgs/JointState). The model gets
    its proprio assembled name by name in the order of its ``proprio_layout``
    (``lawm_core.robot_state.ProprioLayout``: ee_x/y/z from the pose, gripper_left/right from the
    finger joints through ``gripper_joints``/scale/offset, ``joint:<name>`` from JointState); a
    source the layout needs but the parameters do not give is refused at configure; with no
    source at all the model gets its training mean (said at configure). A malformed message, a
    pose in another frame or a JointState without the needed joints is dropped and named in
    ``/diagnostics``.
Gripper (on change, with hysteresis: ``lawm_core.command.GripperSwitch``):
    ``~/cmd_gripper`` (std_msgs/Float64 +1 close, -1 open; latched, so a consumer started later
    still gets the current state) always; and per ``gripper_interface``:
    ``joint_trajectory``: trajectory_msgs/JointTrajectory on ``~/cmd_gripper_trajectory`` (one
    point, ``gripper_open_position``/``gripper_closed_position`` for ``gripper_command_joints``,
    reached after ``gripper_move_time_s``), for joint_trajectory_controller grippers (e.g.
    xArm's simulated ``xarm_gripper_traj_controller``; the real xArm gripper is an action);
    ``gripper_action``: a control_msgs/action/GripperCommand goal to ``gripper_action_name``
    (ros2_controllers' gripper_action_controller, Robotiq, franka ``gripper_action``);
    ``parallel_gripper_action``: a control_msgs/action/ParallelGripperCommand goal (Jazzy's
    parallel_gripper_action_controller: a JointState with ``gripper_command_joints``, the
    position and, when ``gripper_max_effort`` > 0, the effort).
Pose targets (``pose_target``): ``~/cmd_pose`` (geometry_msgs/PoseStamped in ``frame_id``), the
    measured end-effector pose moved by the commanded (filtered) twist over one control period;
    for Cartesian pose / impedance controllers.
MoveIt Servo (``servo_node``): switched to TWIST commands (``switch_command_type``, needs
    moveit_msgs) and unpaused (``pause_servo`` false) when commands start; paused when they stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.duration import Duration
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, Float64
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from lawm_core import contract
from lawm_core.errors import InputError
from lawm_core.robot_state import (
    EE_NAMES,
    JOINT_PREFIX,
    EePose,
    GripperJoints,
    ProprioLayout,
    integrate_pose,
)
from lawm_core.runner import PROPRIO
from lawm_policy.qos import COMMAND, LATCHED, SENSOR_LATEST

try:  # ROS image only (not on PyPI)
    from control_msgs.action import GripperCommand, ParallelGripperCommand
except ImportError:
    GripperCommand = ParallelGripperCommand = None
try:
    from moveit_msgs.srv import ServoCommandType
except ImportError:
    ServoCommandType = None
try:
    import tf2_ros
except ImportError:
    tf2_ros = None

# Watchdog names of the robot-state inputs (PROPRIO: the model-layout topic).
EE_POSE = "ee_pose"
GRIPPER_JOINTS = "joint_states"  # the diagnostics key of JointState problems


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class RobotState:
    """Subscribes to the configured robot-state sources; ``proprio()``, ``position()``,
    ``pose()``.

    ``layout``: the model's proprio layout (empty: the model takes no proprio; the pose may
    still serve the workspace fence and pose targets). ``report(name, stamp_s)`` is the node's
    watchdog update (False: the stamp was refused); ``warn(key, text)`` / ``clear(key)`` its
    diagnostics. ValueError at construction for sources that cannot give the layout.
    """

    def __init__(self, node, p, layout, report, warn, clear) -> None:
        self.node, self.p = node, p
        self.layout = tuple(layout)
        self._report, self._warn, self._clear = report, warn, clear
        self.flat: np.ndarray | None = None  # proprio_topic's latest value
        self.ee: EePose | None = None
        self.joint_values: dict[str, float] = {}  # the needed joints' latest positions
        self._joint_at: dict[str, float] = {}  # joint -> monotonic time of its latest position
        gripper = (
            GripperJoints(p.gripper_joints, p.gripper_joint_scale, p.gripper_joint_offset)
            if p.joint_states_topic and p.gripper_joints
            else None
        )
        if p.pose_tf_frame and tf2_ros is None:
            raise ValueError(
                f"pose_tf_frame {p.pose_tf_frame!r} needs tf2_ros, which is not installed here "
                "(it is in the ROS image); publish the pose on pose_topic instead"
            )
        self.assembler = ProprioLayout(self.layout, gripper)
        standard = bool(p.pose_topic or p.pose_tf_frame or p.joint_states_topic)
        if self.layout and standard:
            self.assembler.check_sources(
                bool(p.pose_topic or p.pose_tf_frame), bool(p.joint_states_topic)
            )
        self._subs: list = []
        self._tf_buffer = self._tf_listener = None

    @property
    def required(self) -> list[str]:
        """Watchdog names that must be fresh to act."""
        p = self.p
        return (
            ([PROPRIO] if p.proprio_topic and self.layout else [])
            + ([EE_POSE] if p.pose_topic or p.pose_tf_frame else [])
            + (
                [JOINT_PREFIX + j for j in self.assembler.joint_names]
                if p.joint_states_topic
                else []
            )
        )

    @property
    def gives_proprio(self) -> bool:
        """Whether the configured sources give the model its proprio (else: training mean)."""
        p = self.p
        if not self.layout:
            return True  # nothing to give
        return bool(p.proprio_topic or p.pose_topic or p.pose_tf_frame or p.joint_states_topic)

    def start(self) -> None:
        node, p = self.node, self.p
        if p.proprio_topic and self.layout:
            self._subs.append(
                node.create_subscription(
                    Float32MultiArray, p.proprio_topic, self._on_flat, SENSOR_LATEST
                )
            )
        if p.pose_topic:
            self._subs.append(
                node.create_subscription(PoseStamped, p.pose_topic, self._on_pose, SENSOR_LATEST)
            )
        if p.joint_states_topic and self.assembler.uses_joint_states:
            # JointState publishers (joint_state_broadcaster, drivers) are reliable or best
            # effort; a best-effort subscription matches both.
            self._subs.append(
                node.create_subscription(
                    JointState, p.joint_states_topic, self._on_joints, SENSOR_LATEST
                )
            )
        if p.pose_tf_frame and self._tf_buffer is None:
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, node)

    def stop(self) -> None:
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        self.flat = self.ee = None
        self.joint_values, self._joint_at = {}, {}

    def release(self) -> None:
        self.stop()
        self._tf_listener = self._tf_buffer = None

    # -- callbacks ----------------------------------------------------------------------------
    def _on_flat(self, msg: Float32MultiArray) -> None:
        values = np.asarray(msg.data, dtype=np.float32)
        if values.shape != (len(self.layout),) or not np.isfinite(values).all():
            self._warn(
                PROPRIO,
                f"ignored proprio {values.tolist()[:8]}: need {len(self.layout)} finite values "
                f"{list(self.layout)}",
            )
            return
        self.flat = values
        self._report(PROPRIO, None)
        self._clear(PROPRIO)

    def _on_pose(self, msg: PoseStamped) -> None:
        pos, q = msg.pose.position, msg.pose.orientation
        try:
            pose = EePose.from_fields(
                (pos.x, pos.y, pos.z), (q.x, q.y, q.z, q.w), msg.header.frame_id, self.p.frame_id
            )
        except InputError as err:
            self._warn(EE_POSE, f"ignored end-effector pose on {self.p.pose_topic}: {err}")
            return
        if self._report(EE_POSE, _stamp_s(msg.header.stamp)):
            self.ee = pose
            self._clear(EE_POSE)

    def _on_joints(self, msg: JointState) -> None:
        # Several publishers often share one joint_states topic (arm driver, gripper driver):
        # each joint's latest position is kept, from whichever message carries it.
        try:
            values = self.assembler.read_joints(msg.name, msg.position)
        except InputError as err:
            self._warn(GRIPPER_JOINTS, f"ignored {self.p.joint_states_topic}: {err}")
            return
        now = time.monotonic()
        overdue = [
            j
            for j in self.assembler.joint_names
            if j not in values and now - self._joint_at.get(j, -1e9) > self.p.stale_timeout_s
        ]
        if overdue:  # named once they are overdue, not for every other publisher's message
            shown = list(msg.name)[:12] + (["..."] if len(msg.name) > 12 else [])
            self._warn(
                GRIPPER_JOINTS,
                f"{self.p.joint_states_topic}: JointState lacks joint(s) {overdue} (it has "
                f"{shown})",
            )
        if not values:
            return
        stamp = msg.header.stamp
        # Some drivers leave the JointState stamp at zero: arrival time then.
        stamp_s = _stamp_s(stamp) if stamp.sec or stamp.nanosec else None
        accepted = [j for j in values if self._report(JOINT_PREFIX + j, stamp_s)]
        for j in accepted:
            self.joint_values[j] = values[j]
            self._joint_at[j] = now
        if accepted and not overdue:
            self._clear(GRIPPER_JOINTS)

    def poll_tf(self) -> None:
        """Look the end effector up in TF (each tick; the newest transform available)."""
        if self._tf_buffer is None:
            return
        try:
            tf = self._tf_buffer.lookup_transform(self.p.frame_id, self.p.pose_tf_frame, Time())
        except Exception as err:  # noqa: BLE001 - tf2's lookup errors share no useful base
            self._warn(EE_POSE, f"no transform {self.p.frame_id} -> {self.p.pose_tf_frame}: {err}")
            return
        t, q = tf.transform.translation, tf.transform.rotation
        try:
            pose = EePose.from_fields((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
        except InputError as err:
            self._warn(EE_POSE, f"ignored transform to {self.p.pose_tf_frame}: {err}")
            return
        if self._report(EE_POSE, _stamp_s(tf.header.stamp)):
            self.ee = pose
            self._clear(EE_POSE)

    # -- what the policy gets -----------------------------------------------------------------
    def proprio(self) -> np.ndarray | None:
        """The model's proprio, or None (the training mean, or no proprio input)."""
        if not self.layout:
            return None
        if self.p.proprio_topic:
            return self.flat
        if not (self.p.pose_topic or self.p.pose_tf_frame or self.p.joint_states_topic):
            return None
        return self.assembler.assemble(self.ee, self.joint_values)

    def position(self) -> np.ndarray | None:
        """The end effector's position in the base frame (the workspace fence), or None."""
        if self.p.proprio_topic:
            if self.flat is None or tuple(self.layout[:3]) != EE_NAMES:
                return None
            return self.flat[: contract.EE_POS_DIM]
        return None if self.ee is None else self.ee.position

    def pose(self) -> EePose | None:
        return self.ee


class GripperOutput:
    """Sends gripper changes: Float64 always, plus a JointTrajectory or a GripperCommand goal."""

    def __init__(self, node, p, warn: Callable[[str, str], None]) -> None:
        self.node, self.p, self._warn = node, p, warn
        self.pub = node.create_lifecycle_publisher(Float64, "~/cmd_gripper", LATCHED)
        self.pub_trajectory = None
        self.action = None
        self.sent = 0
        if p.gripper_interface == "joint_trajectory":
            self.pub_trajectory = node.create_lifecycle_publisher(
                JointTrajectory, "~/cmd_gripper_trajectory", COMMAND
            )
        elif p.gripper_interface in ("gripper_action", "parallel_gripper_action"):
            if GripperCommand is None:
                raise ValueError(
                    f"gripper_interface {p.gripper_interface!r} needs control_msgs, which is "
                    "not installed here (it is in the ROS image: ros-jazzy-control-msgs); use "
                    "'float64' or 'joint_trajectory'"
                )
            from rclpy.action import ActionClient

            self.action_type = (
                GripperCommand
                if p.gripper_interface == "gripper_action"
                else ParallelGripperCommand
            )
            self.action = ActionClient(node, self.action_type, p.gripper_action_name)

    def send(self, command: float) -> None:
        """``command``: +1 close, -1 open."""
        p = self.p
        self.pub.publish(Float64(data=float(command)))
        self.sent += 1
        closed = command > 0
        position = p.gripper_closed_position if closed else p.gripper_open_position
        if self.pub_trajectory is not None:
            msg = JointTrajectory()
            msg.joint_names = list(p.gripper_command_joints)
            point = JointTrajectoryPoint()
            point.positions = [float(position)] * len(msg.joint_names)
            point.time_from_start = Duration(seconds=p.gripper_move_time_s).to_msg()
            msg.points = [point]
            # An empty stamp means "start now" to joint_trajectory_controller.
            self.pub_trajectory.publish(msg)
        if self.action is not None:
            if not self.action.server_is_ready():
                self._warn(
                    "gripper",
                    f"gripper action server {p.gripper_action_name!r} not available: "
                    f"{'close' if closed else 'open'} not sent",
                )
                return
            goal = self.action_type.Goal()
            if self.action_type is GripperCommand:
                goal.command.position = float(position)
                goal.command.max_effort = float(p.gripper_max_effort)
            else:  # ParallelGripperCommand: a JointState
                goal.command.name = list(p.gripper_command_joints)
                goal.command.position = [float(position)]
                if p.gripper_max_effort > 0:
                    goal.command.effort = [float(p.gripper_max_effort)]
            self.action.send_goal_async(goal)  # a new goal preempts the previous one

    def release(self) -> None:
        self.node.destroy_lifecycle_publisher(self.pub)
        if self.pub_trajectory is not None:
            self.node.destroy_lifecycle_publisher(self.pub_trajectory)
        if self.action is not None:
            self.action.destroy()
        self.pub = self.pub_trajectory = self.action = None


class PoseTarget:
    """``~/cmd_pose``: the measured pose moved by the commanded twist over ``dt``."""

    def __init__(self, node, frame_id: str, dt: float) -> None:
        self.node, self.frame_id, self.dt = node, frame_id, dt
        self.pub = node.create_lifecycle_publisher(PoseStamped, "~/cmd_pose", COMMAND)

    def send(self, pose: EePose, linear: np.ndarray, angular: np.ndarray) -> None:
        target = integrate_pose(pose, linear, angular, self.dt)
        msg = PoseStamped()
        msg.header.frame_id = self.frame_id
        p, q = target.position, target.orientation
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)

    def release(self) -> None:
        self.node.destroy_lifecycle_publisher(self.pub)
        self.pub = None


class ServoControl:
    """Starts and stops MoveIt Servo (Jazzy) around our commands, without blocking.

    ``start()``: ``<servo>/switch_command_type`` to TWIST (when moveit_msgs is installed; else
    said once) then ``<servo>/pause_servo`` false; ``stop()``: ``pause_servo`` true. The
    outcome of each call is logged and kept in ``state`` for ``/diagnostics``.
    """

    def __init__(self, node, servo_node: str) -> None:
        self.node = node
        self.name = servo_node.rstrip("/")
        self.state = "not started"
        self._pause = node.create_client(SetBool, f"{self.name}/pause_servo")
        self._switch = (
            node.create_client(ServoCommandType, f"{self.name}/switch_command_type")
            if ServoCommandType is not None
            else None
        )
        if self._switch is None:
            node.get_logger().warning(
                "moveit_msgs is not installed: MoveIt Servo's command type is not switched to "
                f"TWIST (call {self.name}/switch_command_type yourself, or set Servo's "
                "default); pausing and unpausing still work"
            )

    def start(self) -> None:
        if self._switch is not None:
            request = ServoCommandType.Request()
            request.command_type = ServoCommandType.Request.TWIST
            self._call(self._switch, request, "switch to TWIST", then=lambda: self._set(False))
        else:
            self._set(False)

    def stop(self) -> None:
        self._set(True)

    def _set(self, paused: bool) -> None:
        self._call(self._pause, SetBool.Request(data=paused), "pause" if paused else "unpause")

    def _call(self, client, request, what: str, then=None) -> None:
        if not client.service_is_ready():
            self.state = f"{what}: {client.srv_name} not available"
            self.node.get_logger().warning(f"MoveIt Servo {self.state}")
            if then is not None:
                then()
            return
        future = client.call_async(request)

        def done(fut) -> None:
            try:
                response = fut.result()
                ok = bool(getattr(response, "success", True))
                message = getattr(response, "message", "")
            except Exception as err:  # noqa: BLE001 - report any failure of the call
                ok, message = False, str(err)
            self.state = f"{what}: {'ok' if ok else 'failed'}" + (
                f" ({message})" if message else ""
            )
            log = self.node.get_logger()
            (log.info if ok else log.error)(f"MoveIt Servo {self.state}")
            if then is not None and ok:
                then()

        future.add_done_callback(done)

    def release(self) -> None:
        self.node.destroy_client(self._pause)
        if self._switch is not None:
            self.node.destroy_client(self._switch)
