"""libero_bridge in twist mode: the simulator driven through the arm interface a real robot gets
(``~/cmd_twist`` + ``~/cmd_gripper``) instead of the raw ``~/action``.

The conversion and its refusals are tested in-process against the scripted stand-in simulator of
``test_libero_bridge``; the closed loop runs a real bridge (real LIBERO) and a real policy node.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, Float64, String
from test_libero_bridge import (
    PARAMS_FILE,
    RESULT_SUB,
    TOPICS,
    ScriptedEnv,
    _in_process_bridge,
    _start_bridge,
    _wait_exit,
)

from lawm_apps.harness import wait_for_subscribers, wait_until
from lawm_core.command import ActionMapper, GripperSwitch
from lawm_core.sidecar import PolicySidecar
from lawm_policy.policy_params import PARAMETERS
from lawm_policy.qos import COMMAND

TWIST = "/lawm_policy/cmd_twist"
GRIPPER = "/lawm_policy/cmd_gripper"
APPLIED = "/libero/applied_action"
DEEP = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def _twist(linear, angular, frame="base_link") -> TwistStamped:
    msg = TwistStamped()
    msg.header.frame_id = frame
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in angular)
    return msg


class Recorder:
    def __init__(self, node) -> None:
        self.applied: list[list[float]] = []
        self.actions: list[list[float]] = []
        self.results: list[dict] = []
        self.subs = [
            node.create_subscription(
                Float32MultiArray, APPLIED, lambda m: self.applied.append(list(m.data)), DEEP
            ),
            node.create_subscription(
                Float32MultiArray,
                TOPICS["action"],
                lambda m: self.actions.append(list(m.data)),
                DEEP,
            ),
            node.create_subscription(
                String,
                TOPICS["result"],
                lambda m: self.results.append(json.loads(m.data)),
                RESULT_SUB,
            ),
        ]


# ------------------------------------------------------------------------------ in-process


def test_twists_become_osc_deltas_and_bad_ones_are_refused(ros_node):
    env = ScriptedEnv()
    seen = Recorder(ros_node)
    twist = ros_node.create_publisher(TwistStamped, TWIST, COMMAND)
    gripper = ros_node.create_publisher(Float64, GRIPPER, COMMAND)
    bridge = _in_process_bridge(
        ros_node, env, command_mode="twist", action_timeout_s=60.0, reset_service=""
    )

    def send(msg, grip=None):
        before = len(env.actions)
        twist.publish(msg)
        if grip is not None:  # right after the twist, as the policy node sends them
            gripper.publish(Float64(data=grip))
        wait_until(ros_node, lambda: len(env.actions) > before, 10, "a step")
        return env.actions[-1]

    try:
        wait_for_subscribers(ros_node, twist)
        wait_for_subscribers(ros_node, gripper)
        # 0.5 m/s over 0.05 s = 0.025 m = 0.5 units of 0.05 m; 2 rad/s -> 0.1 rad = 0.2 units.
        a = send(_twist([0.5, -0.2, 0.0], [2.0, 0.0, -1.0]), grip=1.0)
        np.testing.assert_allclose(a, [0.5, -0.2, 0.0, 0.2, 0.0, -0.1, 1.0], atol=1e-12)
        # The gripper holds its last command; a zero twist is a zero delta.
        a = send(_twist([0, 0, 0], [0, 0, 0]))
        np.testing.assert_allclose(a, [0, 0, 0, 0, 0, 0, 1.0])
        # Beyond the controller's input range: clipped to [-1, 1] as OSC_POSE itself would.
        a = send(_twist([3.0, 0, 0], [0, 0, -40.0]), grip=-1.0)
        np.testing.assert_allclose(a, [1.0, 0, 0, 0, 0, -1.0, -1.0])
        steps = len(env.actions)
        bad = [
            (twist, _twist([float("nan"), 0, 0], [0, 0, 0])),
            (twist, _twist([0, 0, 0], [0, float("inf"), 0])),
            (twist, _twist([0.1, 0, 0], [0, 0, 0], frame="tool0")),
            (gripper, Float64(data=float("nan"))),
        ]
        for n, (pub, msg) in enumerate(bad, 1):  # one at a time: the queues keep one message
            pub.publish(msg)
            wait_until(ros_node, lambda n=n: bridge.invalid_actions == n, 10, "a refusal")
        assert len(env.actions) == steps  # nothing applied
        a = send(_twist([0, 0, 0.1], [0, 0, 0]))
        np.testing.assert_allclose(a, [0, 0, 0.1, 0, 0, 0, -1.0])  # NaN gripper not taken
        wait_until(ros_node, lambda: len(seen.applied) == len(env.actions), 10, "applied")
        np.testing.assert_allclose(seen.applied, np.array(env.actions), atol=1e-6)
    finally:
        bridge.close()
        ros_node.executor.remove_node(bridge)
        bridge.destroy_node()


def test_bad_command_mode_is_refused_quoting_the_value(ros_node):
    from lawm_policy.libero_bridge import BridgeConfigError

    with pytest.raises(BridgeConfigError, match=r"command_mode .*'velocity'"):
        _in_process_bridge(ros_node, ScriptedEnv(), command_mode="velocity")
    with pytest.raises(BridgeConfigError, match="gripper_topic"):
        _in_process_bridge(ros_node, ScriptedEnv(), command_mode="twist", gripper_topic="")


# ------------------------------------------------------------------------------ processes

# The policy node's safety filter would clamp and ramp the twist (libero_sim.yaml's limits are
# for a real arm); opened up here, twist mode must apply exactly what raw mode applies.
OPEN_LIMITS = {
    "max_linear_axis": [100.0] * 3,
    "max_angular_axis": [100.0] * 3,
    "max_linear_speed": 1000.0,
    "max_angular_speed": 1000.0,
    "max_linear_accel": 1e9,
    "max_angular_accel": 1e9,
}


@pytest.mark.ros
@pytest.mark.slow
def test_twist_mode_applies_what_raw_mode_would(ros_node, start_node, exported_debug_model):
    seen = Recorder(ros_node)
    max_steps = 15
    bridge = _start_bridge(start_node, max_steps=max_steps, command_mode="twist")
    wait_until(
        ros_node, lambda: "episode 1/1 started" in bridge.tail(), 120, "the bridge", [bridge]
    )
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params_file=PARAMS_FILE,
        params={"model_dir": str(exported_debug_model), "threads": 1, **OPEN_LIMITS},
    )
    wait_until(
        ros_node, lambda: seen.results or not bridge.alive(), 150, "an episode result", [policy]
    )
    wait_until(ros_node, lambda: seen.results, 10, "the result", [])
    result = seen.results[0]
    assert result["invalid_actions"] == 0 and result["steps"] == max_steps, result
    assert _wait_exit(bridge, 30) == 0, bridge.tail()
    wait_until(ros_node, lambda: len(seen.applied) >= max_steps, 10, "every applied action")
    assert "driven by twist" in bridge.tail(200)

    # What raw mode would give the simulator for each of the policy's actions: the action
    # itself, which OSC_POSE clips to [-1, 1]; the gripper is the node's +-1 decision for it
    # (sent on change with the default hysteresis; the bridge holds the last one).
    mapper = ActionMapper(PolicySidecar.read(exported_debug_model).action_space, 20.0)
    switch = GripperSwitch(PARAMETERS["gripper_threshold"][0], PARAMETERS["gripper_hysteresis"][0])
    assert len(seen.actions) >= 3, f"too few of the policy's ~/action seen: {seen.actions}"
    applied = [np.asarray(a) for a in seen.applied]
    i = 0
    for raw in seen.actions:  # in order: a subsequence of the applied actions
        switch.update(mapper.closing(raw))
        want = np.append(np.clip(raw[:6], -1.0, 1.0), switch.state)
        while i < len(applied) and not np.allclose(applied[i], want, atol=1e-5):
            i += 1
        assert i < len(applied), f"raw action {raw} was not applied as {want}: {seen.applied}"
        i += 1
    assert any(np.abs(a[:6]).max() > 0.01 for a in applied)
    assert "Traceback" not in bridge.tail(80) + policy.tail(80)


@pytest.mark.ros
@pytest.mark.slow
def test_a_policy_holding_still_is_a_zero_delta(ros_node, start_node, exported_debug_model):
    """A disabled policy node sends zero twists and no gripper command: the arm holds still."""
    seen = Recorder(ros_node)
    max_steps = 3
    bridge = _start_bridge(start_node, max_steps=max_steps, command_mode="twist")
    start_node(
        "lawm_policy",
        "policy_node",
        params_file=PARAMS_FILE,
        params={"model_dir": str(exported_debug_model), "threads": 1, "start_enabled": False},
    )
    wait_until(
        ros_node, lambda: seen.results or not bridge.alive(), 150, "an episode result", [bridge]
    )
    wait_until(ros_node, lambda: seen.results, 10, "the result", [])
    assert seen.results[0]["steps"] == max_steps and seen.results[0]["invalid_actions"] == 0
    assert _wait_exit(bridge, 30) == 0, bridge.tail()
    wait_until(ros_node, lambda: len(seen.applied) >= max_steps, 10, "every applied action")
    assert np.array(seen.applied).tolist() == [[0.0] * 7] * max_steps
