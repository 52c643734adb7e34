"""The policy node's operator controls as a real process: dry run and enable, a zero twist on
every way out, run-time safety parameters, refused configurations, instruction QoS."""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from std_msgs.msg import String
from std_srvs.srv import SetBool
from test_policy_node import CAM_TOPICS, INSTRUCTION, Rig, _image, _start

from lawm_apps.harness import (
    call_service,
    wait_for_publishers,
    wait_for_subscribers,
    wait_until,
)
from lawm_policy.policy_node import FAULT_ENV
from lawm_policy.qos import COMMAND, LATCHED

pytestmark = pytest.mark.ros


def _call(node, proc, srv_type, name, request):
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=30), proc.tail()
    if srv_type is ChangeState:  # not idempotent: one request
        fut = client.call_async(request)
        wait_until(node, fut.done, 15, name, [proc])
        return fut.result()
    return call_service(node, client, request, 15, name, [proc])


def _set(node, proc, **values):
    """Set parameters one call at a time; -> [(successful, reason)]."""
    params = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
    res = _call(node, proc, SetParameters, "/lawm_policy/set_parameters", _req(params))
    return [(r.successful, r.reason) for r in res.results]


def _req(params):
    req = SetParameters.Request()
    req.parameters = params
    return req


def _transition(node, proc, transition_id):
    req = ChangeState.Request(transition=Transition(id=transition_id))
    return _call(node, proc, ChangeState, "/lawm_policy/change_state", req).success


def _state(node, proc):
    return _call(node, proc, GetState, "/lawm_policy/get_state", GetState.Request()).current_state


def _lin(t):
    return np.array([t.twist.linear.x, t.twist.linear.y, t.twist.linear.z])


def _vec(t):
    a = t.twist.angular
    return np.concatenate([_lin(t), [a.x, a.y, a.z]])


def _diag_says(rig, text, level=None):
    return any(
        d.status and text in d.status[0].message and (level is None or d.status[0].level == level)
        for d in rig.diags
    )


def test_dry_run_until_enabled_then_commands_ramp_up_from_rest(
    ros_node, start_node, exported_debug_model
):
    # A low acceleration limit makes the ramp visible: 0.2 m/s^2 at 20 Hz is 0.01 m/s a tick.
    proc = _start(
        start_node,
        exported_debug_model,
        instruction=INSTRUCTION,
        start_enabled=False,
        max_linear_accel=0.2,
    )
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(3.0, until=lambda: len(rig.actions) > 20)
    wait_until(ros_node, lambda: _diag_says(rig, "disabled"), 5, "'disabled' diagnostics", [proc])
    # Dry run: the policy acts (~/action), but the arm gets only exact zeros, no gripper.
    assert len(rig.actions) > 20 and rig.twists
    assert all(not _vec(t).any() for t in rig.twists), "a nonzero twist while disabled"
    assert not rig.grippers

    res = _call(ros_node, proc, SetBool, "/lawm_policy/enable", SetBool.Request(data=True))
    assert res.success and "enabled" in res.message
    n = len(rig.twists)
    rig.stream(3.0, until=lambda: sum(_vec(t).any() for t in rig.twists[n:]) > 10)
    moving = [t for t in rig.twists[n:] if _vec(t).any()]
    assert len(moving) > 10 and rig.grippers
    # From rest: the first command after enabling is one acceleration step from zero, not the
    # policy's full velocity (which the dry run's filter had already ramped up to).
    assert np.linalg.norm(_lin(moving[0])) <= 0.01 + 1e-9, _lin(moving[0])
    assert max(np.linalg.norm(_lin(t)) for t in moving) > 0.01

    res = _call(ros_node, proc, SetBool, "/lawm_policy/enable", SetBool.Request(data=False))
    assert res.success and "disabled" in res.message
    n, g = len(rig.twists), len(rig.grippers)
    rig.stream(1.0)
    assert len(rig.twists) > n + 5
    assert all(not _vec(t).any() for t in rig.twists[n + 1 :]) and len(rig.grippers) <= g + 1


def test_deactivate_and_ctrl_c_leave_a_zero_twist_as_the_last_command(
    ros_node, start_node, exported_debug_model
):
    proc = _start(start_node, exported_debug_model, instruction=INSTRUCTION)
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(10.0, until=lambda: rig.twists and _vec(rig.twists[-1]).any())
    assert _vec(rig.twists[-1]).any(), "the policy never moved"
    assert _transition(ros_node, proc, Transition.TRANSITION_DEACTIVATE)
    rig.stream(0.5)
    assert not _vec(rig.twists[-1]).any()

    assert _transition(ros_node, proc, Transition.TRANSITION_ACTIVATE)
    rig.stream(10.0, until=lambda: len(rig.twists) > 3 and _vec(rig.twists[-1]).any())
    assert _vec(rig.twists[-1]).any()
    os.killpg(proc.proc.pid, signal.SIGINT)  # what Ctrl-C sends
    end = time.monotonic() + 10.0
    while proc.alive() and time.monotonic() < end:
        ros_node.executor.spin_once(timeout_sec=0.02)
    for _ in range(20):  # whatever is still in flight
        ros_node.executor.spin_once(timeout_sec=0.02)
    assert proc.proc.returncode == 0, proc.tail()
    assert not _vec(rig.twists[-1]).any(), rig.twists[-1]
    assert "Traceback" not in proc.log_path.read_text()


def test_a_failing_control_step_stops_the_arm_and_the_node_carries_on(
    ros_node, start_node, exported_debug_model, tmp_path
):
    # While the fault file exists every control step raises, as an onnxruntime or driver
    # error inside a tick would.
    fault = tmp_path / "fault"
    proc = start_node(
        "lawm_policy",
        "policy_node",
        params={
            "model_dir": str(exported_debug_model),
            "camera_topics": CAM_TOPICS,
            "threads": 1,
            "instruction": INSTRUCTION,
            "diagnostics_period_s": 0.2,
        },
        env={FAULT_ENV: str(fault)},
    )
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(10.0, until=lambda: rig.twists and _vec(rig.twists[-1]).any())
    assert _vec(rig.twists[-1]).any(), "the policy never moved"

    def failing():
        return any(
            d.status and d.status[0].level == DiagnosticStatus.ERROR for d in rig.diags[-2:]
        )

    fault.touch()
    rig.stream(10.0, until=failing)
    assert failing(), "no ERROR diagnostic"
    error = next(
        d.status[0] for d in reversed(rig.diags) if d.status[0].level == DiagnosticStatus.ERROR
    )
    assert "control step failed" in error.message and "fault injected" in error.message
    n = len(rig.twists)
    rig.stream(1.0)
    assert len(rig.twists) > n + 5  # still ticking, every tick a zero twist
    assert all(not _vec(t).any() for t in rig.twists[n:])
    log = proc.log_path.read_text()
    assert log.count("control step failed") == 1 and log.count("Traceback") == 1, log[-3000:]

    fault.unlink()
    rig.stream(10.0, until=lambda: _vec(rig.twists[-1]).any())  # it acts again
    assert _vec(rig.twists[-1]).any()
    wait_until(
        ros_node, lambda: "works again" in proc.log_path.read_text(), 10, "'works again'", [proc]
    )


def test_a_negative_image_stamp_is_refused_at_the_edge(ros_node, start_node, exported_debug_model):
    # On sim time shortly after t = 0 an image stamped -0.1 s is only a fraction of a second
    # old, but no ROS time is negative: refused and named, never taken as an image time.
    proc = _start(
        start_node,
        exported_debug_model,
        instruction=INSTRUCTION,
        use_sim_time=True,
        stale_timeout_s=60.0,
        diagnostics_period_s=0.2,
    )
    clock = ros_node.create_publisher(Clock, "/clock", 10)
    rig = Rig(ros_node, proc)
    rig.connect()
    wait_for_subscribers(ros_node, clock, procs=[proc])
    end = time.monotonic() + 10.0
    sim = 0.05
    while time.monotonic() < end and not _diag_says(rig, "negative stamp"):
        sim += 0.05
        clock.publish(Clock(clock=TimeMsg(sec=0, nanosec=int(sim * 1e9) % 10**9)))
        for i, pub in enumerate(rig.cams):
            pub.publish(_image(rig.size, 1 + i, TimeMsg(sec=-1, nanosec=900_000_000)))
        t_next = time.monotonic() + 0.05
        while time.monotonic() < t_next:
            ros_node.executor.spin_once(timeout_sec=0.01)
    assert _diag_says(rig, "negative stamp"), [d.status[0].message for d in rig.diags[-3:]]
    assert proc.alive() and not any(_vec(t).any() for t in rig.twists)
    assert "control step failed" not in proc.log_path.read_text()


def test_safety_parameters_apply_at_run_time_or_are_refused_with_the_reason(
    ros_node, start_node, exported_debug_model
):
    proc = _start(start_node, exported_debug_model, instruction=INSTRUCTION)
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(10.0, until=lambda: any(np.abs(_lin(t)).max() > 0.01 for t in rig.twists))
    assert any(np.abs(_lin(t)).max() > 0.01 for t in rig.twists), "the policy never moved"

    [(ok, reason)] = _set(ros_node, proc, max_linear_speed=-1.0)
    assert not ok and "max_linear_speed" in reason and "> 0" in reason, reason
    [(ok, reason)] = _set(ros_node, proc, workspace_min=[0.0, 0.0, 0.0])
    assert not ok and "workspace_max" in reason, reason  # a box needs both corners
    [(ok, reason)] = _set(ros_node, proc, model_dir="/elsewhere")
    assert not ok and "model_dir" in reason and "while configured" in reason, reason
    rig.stream(1.0)
    assert any(np.abs(_lin(t)).max() > 0.01 for t in rig.twists[-10:])  # refused: unchanged

    [(ok, reason)] = _set(ros_node, proc, max_linear_axis=[0.01, 0.01, 0.01])
    assert ok, reason
    n = len(rig.twists)
    rig.stream(2.0)
    after = rig.twists[n + 2 :]
    assert len(after) > 20
    assert all(np.abs(_lin(t)).max() <= 0.01 + 1e-9 for t in after)
    assert any(np.abs(_lin(t)).max() > 0.009 for t in after)

    # Gains too: refused out of range, applied within (no rotation at a zero angular gain).
    [(ok, reason)] = _set(ros_node, proc, angular_scale=[2.0, 2.0, 2.0])
    assert not ok and "angular_scale" in reason, reason
    assert any(np.abs(_vec(t)[3:]).max() > 0 for t in rig.twists[-10:])
    [(ok, reason)] = _set(ros_node, proc, angular_scale=[0.0, 0.0, 0.0])
    assert ok, reason
    n = len(rig.twists)
    rig.stream(2.0)
    after = rig.twists[n + 2 :]
    assert len(after) > 20 and not any(_vec(t)[3:].any() for t in after[10:])


def test_a_workspace_fence_without_a_pose_source_is_refused_until_fixed(
    ros_node, start_node, exported_debug_model
):
    proc = _start(
        start_node,
        exported_debug_model,
        instruction=INSTRUCTION,
        workspace_min=[-1.0, -1.0, 0.0],
        workspace_max=[1.0, 1.0, 1.0],
    )
    wait_until(
        ros_node,
        lambda: "cannot configure" in proc.log_path.read_text(),
        30,
        "the refusal",
        [proc],
    )
    assert "proprio_topic" in proc.log_path.read_text().split("cannot configure", 1)[1]
    assert _state(ros_node, proc).label == "unconfigured"

    [(ok, reason)] = _set(ros_node, proc, proprio_topic="/test/proprio")
    assert ok, reason
    assert _transition(ros_node, proc, Transition.TRANSITION_CONFIGURE), proc.tail()
    assert _transition(ros_node, proc, Transition.TRANSITION_ACTIVATE), proc.tail()
    assert _state(ros_node, proc).label == "active"
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(1.0, until=lambda: len(rig.twists) > 3)  # no proprio yet: zero twists
    assert rig.twists and not _vec(rig.twists[-1]).any()


def test_a_late_configure_failure_is_logged_and_a_second_configure_works(
    ros_node, start_node, exported_debug_model, tmp_path
):
    # The text encoder is loaded after the model and the safety limits: a failure there used
    # to leave the node in an error transition without a word in the log.
    export = tmp_path / "export"
    shutil.copytree(exported_debug_model, export)
    tokenizer = export / "tokenizer.json"
    good = tokenizer.read_bytes()
    tokenizer.write_bytes(good + b" ")
    proc = _start(start_node, export, instruction=INSTRUCTION)
    wait_until(
        ros_node,
        lambda: "cannot configure" in proc.log_path.read_text(),
        30,
        "the refusal",
        [proc],
    )
    assert "tokenizer.json" in proc.log_path.read_text().split("cannot configure", 1)[1]
    assert _state(ros_node, proc).label == "unconfigured"

    tokenizer.write_bytes(good)
    assert _transition(ros_node, proc, Transition.TRANSITION_CONFIGURE), proc.tail()
    assert _transition(ros_node, proc, Transition.TRANSITION_ACTIVATE), proc.tail()
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(10.0, until=lambda: rig.actions)
    assert rig.actions, proc.tail()


def test_instructions_from_latched_and_plain_publishers_are_received(
    ros_node, start_node, exported_debug_model
):
    latched = ros_node.create_publisher(String, "/lawm_policy/instruction", LATCHED)
    latched.publish(String(data=INSTRUCTION))  # before the node exists: delivered on matching
    proc = _start(start_node, exported_debug_model)
    rig = Rig(ros_node, proc)
    rig.connect()
    rig.stream(10.0, until=lambda: rig.actions)
    assert rig.actions, "the latched instruction never arrived"

    plain = ros_node.create_publisher(String, "/lawm_policy/instruction", 10)  # topic pub's QoS
    wait_for_subscribers(ros_node, plain, procs=[proc])
    plain.publish(String(data="pick up the black bowl"))
    rig.stream(5.0, until=lambda: "black bowl" in proc.log_path.read_text())
    log = proc.log_path.read_text()
    assert "instruction: 'pick up the black bowl'" in log
    # Both subscriptions get a latched message: it is applied once.
    assert log.count(f"instruction: {INSTRUCTION!r}") == 1, log


def test_commands_are_stamped_when_sent_and_paired_with_their_image_time(
    ros_node, start_node, exported_debug_model
):
    # Images 0.2 s old (within stale_timeout_s, 0.5 s) are acted on. A servo drops a command
    # stamped more than 0.1 s before it arrives (MoveIt Servo's incoming_command_timeout), so
    # the command carries the time it was sent; the image time goes to ~/cmd_twist_image_time,
    # right after the command it belongs to.
    proc = _start(start_node, exported_debug_model, instruction=INSTRUCTION)
    rig = Rig(ros_node, proc)
    rig.connect()
    commands, image_times = [], []  # (source timestamp ns, receipt s, message)

    def into(got):
        def on(msg, info):
            received = info.get("received_timestamp") or ros_node.get_clock().now().nanoseconds
            got.append((info["source_timestamp"], received * 1e-9, msg))

        return on

    subs = [
        ros_node.create_subscription(TwistStamped, f"/lawm_policy/{topic}", into(got), COMMAND)
        for topic, got in (("cmd_twist", commands), ("cmd_twist_image_time", image_times))
    ]
    for sub in subs:
        wait_for_publishers(ros_node, sub, procs=[proc])
    end, next_t = time.monotonic() + 10.0, time.monotonic()
    while time.monotonic() < end and len(image_times) < 40:
        if time.monotonic() >= next_t:
            now_ns = ros_node.get_clock().now().nanoseconds
            rig.publish(stamp=Time(nanoseconds=now_ns - 200_000_000).to_msg())
            next_t += 1.0 / 30.0
        ros_node.executor.spin_once(timeout_sec=0.005)
    assert proc.alive(), proc.tail()
    assert len(image_times) >= 40, (len(image_times), len(commands))

    ages = []
    for source, received, msg in image_times:
        image_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert image_ns in rig.sent[1]  # the newest image used
        assert received - image_ns * 1e-9 >= 0.2
        # Its command: the one published just before it, with the same twist.
        command = max((c for c in commands if c[0] < source), key=lambda c: c[0])
        np.testing.assert_array_equal(_vec(command[2]), _vec(msg))
        stamp = command[2].header.stamp
        ages.append(command[1] - (stamp.sec + stamp.nanosec * 1e-9))
    assert _vec(image_times[-1][2]).any(), "the policy never moved"
    # Margins for a loaded machine; stamped with the image, every age would be >= 0.2 s.
    assert np.percentile(ages, 90) < 0.1 and np.median(ages) < 0.03, np.round(ages, 3)
    assert min(ages) > -0.01, np.round(ages, 3)  # stamped before it was received
