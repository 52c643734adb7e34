"""libero_bridge: the LIBERO simulator as a ROS 2 node, alone and in a loop with the policy node.

Process tests run the installed executables with the installed ``libero_sim.yaml`` (real
LIBERO, real rclpy); rendering is kept at 64 px and episodes short, since a step renders both
cameras (about 10 steps/s on this CPU). The episode bookkeeping (simulator errors, resets,
free-running) is tested in-process against a scripted stand-in simulator.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger

from lawm_apps.harness import WS_INSTALL, wait_for_subscribers, wait_until
from lawm_policy.qos import COMMAND, SENSOR_LATEST

PARAMS_FILE = WS_INSTALL / "lawm_bringup" / "share" / "lawm_bringup" / "config" / "libero_sim.yaml"
PERIOD = 0.05
# Deep reader queues: the test's executor may fall behind the loop; nothing may be dropped.
CLOCK_SUB = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)
ACTION_SUB = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
RESULT_SUB = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
TOPICS = {
    "action": "/lawm_policy/action",
    "agentview": "/libero/agentview/image_raw",
    "eye_in_hand": "/libero/eye_in_hand/image_raw",
    "proprio": "/libero/proprio",
    "instruction": "/lawm_policy/instruction",
    "result": "/libero/episode_result",
}


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Observer:
    """The test's view of the bridge's outputs."""

    def __init__(self, node) -> None:
        self.node = node
        self.clock: list[float] = []
        self.images: dict[str, list[Image]] = {"agentview": [], "eye_in_hand": []}
        self.proprio: list[list[float]] = []
        self.instructions: list[str] = []
        self.results: list[dict] = []
        self.actions: list[list[float]] = []
        self.subs = [
            node.create_subscription(
                Clock, "/clock", lambda m: self.clock.append(_seconds(m.clock)), CLOCK_SUB
            ),
            node.create_subscription(
                String,
                TOPICS["result"],
                lambda m: self.results.append(json.loads(m.data)),
                RESULT_SUB,
            ),
            node.create_subscription(
                String,
                TOPICS["instruction"],
                lambda m: self.instructions.append(m.data),
                RESULT_SUB,
            ),
            node.create_subscription(
                Float32MultiArray,
                TOPICS["proprio"],
                lambda m: self.proprio.append(list(m.data)),
                SENSOR_LATEST,
            ),
            node.create_subscription(
                Float32MultiArray,
                TOPICS["action"],
                lambda m: self.actions.append(list(m.data)),
                ACTION_SUB,
            ),
        ]
        for cam, frames in self.images.items():
            self.subs.append(
                node.create_subscription(Image, TOPICS[cam], frames.append, SENSOR_LATEST)
            )

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.node.executor.spin_once(timeout_sec=0.02)


def _start_bridge(start_node, **params):
    base = {"image_size": 64, "episodes": 1}
    base.update(params)
    return start_node("lawm_policy", "libero_bridge", params_file=PARAMS_FILE, params=base)


def _wait_exit(proc, timeout: float) -> int:
    try:
        return proc.proc.wait(timeout=timeout)
    except Exception as err:
        raise AssertionError(f"bridge still running after {timeout} s:\n{proc.tail()}") from err


# ------------------------------------------------------------------------------ processes


@pytest.mark.ros
def test_bad_suite_exits_2_listing_the_valid_suites(start_node):
    proc = _start_bridge(start_node, suite="libero_nonsense")
    assert _wait_exit(proc, 60) == 2, proc.tail()
    log = proc.tail()
    assert "libero_nonsense" in log
    for suite in ("libero_object", "libero_spatial", "libero_goal", "libero_10", "libero_90"):
        assert suite in log
    assert "Traceback" not in log


@pytest.mark.ros
@pytest.mark.slow
def test_invalid_actions_hold_still_and_valid_ones_step(ros_node, start_node):
    """Stand-in policy: the test publishes actions itself."""
    seen = Observer(ros_node)
    actions = ros_node.create_publisher(Float32MultiArray, TOPICS["action"], COMMAND)
    # No timeouts during the test (they would advance the clock on their own).
    bridge = _start_bridge(start_node, max_steps=2, action_timeout_s=120.0)
    wait_for_subscribers(ros_node, actions, timeout=120, procs=[bridge])
    wait_until(ros_node, lambda: seen.instructions, 30, "the instruction", [bridge])
    from lawm_sim.libero_env import task_instruction

    assert seen.instructions[-1] == task_instruction("libero_object", 0)
    assert "alphabet soup" in seen.instructions[-1]
    # Spinning (and so taking actions) once the first observation is out.
    wait_until(ros_node, lambda: "episode 1/1 started" in bridge.tail(), 30, "the episode start")
    # The first observation is at one period of sim time; we may or may not see it.
    actions.publish(Float32MultiArray(data=[0.0, 0.0, float("nan"), 0.0, 0.0, 0.0, -1.0]))
    seen.spin(1.0)
    actions.publish(Float32MultiArray(data=[0.0] * 6))
    seen.spin(1.0)
    assert bridge.alive(), bridge.tail()
    assert all(c == pytest.approx(PERIOD) for c in seen.clock), f"clock moved: {seen.clock}"
    assert not seen.results

    actions.publish(Float32MultiArray(data=[0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
    wait_until(ros_node, lambda: max(seen.clock, default=0) > 1.5 * PERIOD, 30, "a step", [bridge])
    assert max(seen.clock) == pytest.approx(2 * PERIOD)  # first observation + one step

    def stepped_image():
        return [m for m in seen.images["agentview"] if _seconds(m.header.stamp) > 1.5 * PERIOD]

    wait_until(ros_node, lambda: stepped_image() and seen.proprio, 10, "the new observation")
    image = stepped_image()[-1]
    assert (image.encoding, image.height, image.width) == ("rgb8", 64, 64)
    assert _seconds(image.header.stamp) == pytest.approx(2 * PERIOD)
    assert image.header.frame_id == "agentview"
    assert len(seen.proprio[-1]) == 5 and np.isfinite(seen.proprio[-1]).all()
    assert not seen.results

    actions.publish(Float32MultiArray(data=[0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
    wait_until(ros_node, lambda: seen.results, 30, "the episode result", [])
    result = seen.results[0]
    assert result["steps"] == 2 and result["reason"] == "timeout" and not result["success"]
    assert result["invalid_actions"] == 2 and result["action_timeouts"] == 0
    assert (result["suite"], result["task_id"], result["init_state"]) == ("libero_object", 0, 0)
    assert _wait_exit(bridge, 30) == 0, bridge.tail()
    assert "ignored action" in bridge.tail(80)


@pytest.mark.ros
@pytest.mark.slow
def test_bridge_and_policy_close_the_loop(ros_node, start_node, exported_debug_model, tmp_path):
    seen = Observer(ros_node)
    max_steps = 20
    bridge = _start_bridge(start_node, max_steps=max_steps, record_dir=str(tmp_path / "rec"))
    # The policy comes up while the bridge already waits for actions: the bridge's action
    # timeout moves the clock on so the policy, which ticks on sim time, can start acting.
    wait_until(
        ros_node, lambda: "episode 1/1 started" in bridge.tail(), 120, "the bridge", [bridge]
    )
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params_file=PARAMS_FILE,
        params={"model_dir": str(exported_debug_model), "threads": 1},
    )
    # The bridge exits right after its result is acknowledged: wait for either, then look.
    wait_until(
        ros_node, lambda: seen.results or not bridge.alive(), 150, "an episode result", [policy]
    )
    seen.spin(0.5)
    assert seen.results, bridge.tail()
    result = seen.results[0]
    assert result["success"] or result["steps"] == max_steps, result
    assert result["reason"] in ("success", "timeout")
    assert _wait_exit(bridge, 30) == 0, bridge.tail()
    assert policy.alive(), policy.tail()

    # Lockstep: every step was driven by a policy action. The test sees them on the wire too,
    # though not necessarily all (the policy's writer keeps one sample; a slow reader here
    # can miss one while the bridge, which the next action waits for, does not).
    # (On a loaded machine the test's subscriber may match the new policy node only after the
    # 20 steps are done; the bridge's step count already proves the actions arrived.)
    seen.spin(0.2)
    assert result["steps"] > 0 and result["invalid_actions"] == 0
    assert all(len(a) == 7 and np.isfinite(a).all() for a in seen.actions)
    # The clock is sim time: it starts at one period and only moves forward, in periods.
    assert seen.clock and seen.clock == sorted(seen.clock)
    # First observation + one per step but the last (an episode's end is not published) + one
    # per action timeout.
    assert seen.clock[-1] == pytest.approx(result["sim_time_s"])
    assert seen.clock[-1] == pytest.approx((result["steps"] + result["action_timeouts"]) * PERIOD)
    assert seen.clock[-1] < 60.0
    assert all(abs(c / PERIOD - round(c / PERIOD)) < 1e-6 for c in seen.clock)
    # Images carry the same sim-time stamps (not wall time).
    for cam in ("agentview", "eye_in_hand"):
        stamps = [_seconds(m.header.stamp) for m in seen.images[cam]]
        assert stamps, f"no {cam} images"
        assert max(stamps) <= seen.clock[-1] + 1e-6
        assert all(abs(s / PERIOD - round(s / PERIOD)) < 1e-6 for s in stamps)
    assert result["action_timeouts"] >= 1
    log = bridge.tail(80)
    assert "no action for" in log and "steps/s" in log and "Traceback" not in log
    assert "Traceback" not in policy.tail(80)

    # The episode recorded for Foxglove: one row per step, the actions the simulator applied.
    from mcap.reader import make_reader

    (path,) = (tmp_path / "rec").iterdir()
    assert path.name == f"libero_object_task0_init0_ep0_{result['reason']}.mcap"
    topics: dict[str, list] = {}
    with open(path, "rb") as f:
        for _, channel, msg in make_reader(f).iter_messages():
            topics.setdefault(channel.topic, []).append(json.loads(msg.data))
    assert len(topics["/action"]) == result["steps"] == len(topics["/camera/eye_in_hand"])
    assert topics["/outcome"][0]["steps"] == result["steps"]
    assert "alphabet soup" in topics["/instruction"][0]["text"]


# ------------------------------------------------------------------------------ in-process


class ScriptedEnv:
    """Stand-in simulator: fails where told to, records what it was asked to do."""

    instruction = "do the thing"
    task_name = "the_thing"
    max_steps = 300
    n_init_states = 3

    def __init__(self, fail_step=None, fail_reset=()) -> None:
        self.fail_step = fail_step  # (init state, step) whose env.step raises
        self.fail_reset = set(fail_reset)  # init states whose reset raises
        self.init = 0
        self.steps = 0
        self.actions: list[np.ndarray] = []
        self.resets: list[int] = []
        self.closed = False

    def _obs(self):
        img = np.full((8, 8, 3), self.steps, np.uint8)
        return {
            "images": {"agentview": img, "eye_in_hand": img},
            "ee_pos": np.array([0.1, 0.2, 0.3 + self.steps]),
            "gripper_states": np.array([0.04, -0.04]),
        }

    def set_init_state(self, i):
        self.init = i

    def reset(self):
        self.resets.append(self.init)
        if self.init in self.fail_reset:
            raise RuntimeError("MuJoCo exploded on reset")
        self.steps = 0
        return self._obs()

    def step(self, action):
        if self.fail_step == (self.init, self.steps + 1):
            self.fail_step = None  # once
            raise RuntimeError("MuJoCo exploded")
        self.actions.append(np.asarray(action))
        self.steps += 1
        return self._obs(), False, {"steps": self.steps}

    def close(self):
        self.closed = True


def _in_process_bridge(ros_node, env, **params):
    from lawm_policy.libero_bridge import LiberoBridge

    overrides = [Parameter(k, value=v) for k, v in params.items()]
    bridge = LiberoBridge(
        make_env=lambda p: env, context=ros_node.context, parameter_overrides=overrides
    )
    ros_node.executor.add_node(bridge)
    return bridge


def test_simulator_errors_fail_the_episode_and_the_bridge_carries_on(ros_node):
    env = ScriptedEnv(fail_step=(0, 2), fail_reset={2})
    seen = Observer(ros_node)
    resets = []
    ros_node.create_service(
        Trigger, "/lawm_policy/reset", lambda req, res: resets.append(1) or res
    )
    actions = ros_node.create_publisher(Float32MultiArray, TOPICS["action"], COMMAND)
    bridge = _in_process_bridge(
        ros_node, env, episodes=4, max_steps=3, init_state=0, action_timeout_s=60.0
    )
    try:
        wait_for_subscribers(ros_node, actions)
        wait_until(ros_node, lambda: seen.instructions, 10, "the instruction")
        go = Float32MultiArray(data=[0.1] * 7)
        for _ in range(50):
            if bridge.done:
                break
            before = bridge.ticks
            actions.publish(go)
            wait_until(ros_node, lambda b=before: bridge.ticks > b or bridge.done, 10, "a step")
        assert bridge.done and bridge.failure is None
        wait_until(ros_node, lambda: len(seen.results) == 4, 10, "four results")
    finally:
        bridge.close()
        ros_node.executor.remove_node(bridge)
        bridge.destroy_node()
    summary = [(r["init_state"], r["reason"], r["steps"]) for r in seen.results]
    # init 0: step 2 raises; init 1: runs out of steps; init 2: reset raises; wraps to init 0.
    assert summary == [
        (0, "sim_error", 1),
        (1, "timeout", 3),
        (2, "sim_error", 0),
        (0, "timeout", 3),
    ]
    assert [r["episode"] for r in seen.results] == [0, 1, 2, 3]
    assert env.resets == [0, 1, 2, 0] and env.closed
    assert len(resets) >= 1  # the policy reset service was called at episode starts
    # Sim time never goes back across episodes.
    assert seen.clock == sorted(seen.clock) and len(set(seen.clock)) == len(seen.clock)


def test_free_running_holds_still_without_actions(ros_node):
    env = ScriptedEnv()
    seen = Observer(ros_node)
    bridge = _in_process_bridge(
        ros_node, env, lockstep=False, max_steps=6, episodes=1, reset_service=""
    )
    try:
        wait_until(ros_node, lambda: bridge.done, 10, "the episode to run out")
        wait_until(ros_node, lambda: seen.results, 10, "the result")
    finally:
        bridge.close()
        ros_node.executor.remove_node(bridge)
        bridge.destroy_node()
    assert seen.results[0]["steps"] == 6 and seen.results[0]["reason"] == "timeout"
    assert len(env.actions) == 6 and all(not a.any() for a in env.actions)


def test_action_timeout_advances_the_clock_without_stepping(ros_node):
    env = ScriptedEnv()
    seen = Observer(ros_node)
    bridge = _in_process_bridge(ros_node, env, action_timeout_s=0.1, reset_service="")
    try:
        wait_until(ros_node, lambda: bridge.ticks >= 4, 10, "three action timeouts")
    finally:
        bridge.close()
        ros_node.executor.remove_node(bridge)
        bridge.destroy_node()
    assert not env.actions and env.resets == [0]
    assert bridge.action_timeouts == bridge.ticks - 1 >= 3
    seen.spin(0.1)  # our own executor: the last messages
    assert seen.clock == sorted(seen.clock) and seen.clock[-1] <= bridge.sim_time_s


def test_use_sim_time_is_refused(ros_node):
    from lawm_policy.libero_bridge import BridgeConfigError

    with pytest.raises(BridgeConfigError, match="use_sim_time"):
        _in_process_bridge(ros_node, ScriptedEnv(), use_sim_time=True)
