"""The ROS test harness itself, exercised on a real node process of the package."""

from __future__ import annotations

import pytest
from std_msgs.msg import String

from lawm_apps.harness import wait_for_publishers, wait_for_subscribers, wait_until

pytestmark = pytest.mark.ros


def _latched_subscriber(node, topic, received):
    from lawm_policy.qos import LATCHED

    return node.create_subscription(String, topic, lambda m: received.append(m.data), LATCHED)


def test_instruction_publisher_latches_and_takes_live_updates(ros_node, start_node):
    from lawm_policy.qos import COMMAND

    proc = start_node(
        "lawm_policy",
        "instruction_publisher",
        params={"instruction": "  put the  bowl on the plate ", "topic": "/harness/instruction"},
    )
    received: list[str] = []
    # Subscribing after the node has started: transient-local delivers the latched value anyway.
    sub = _latched_subscriber(ros_node, "/harness/instruction", received)
    wait_for_publishers(ros_node, sub, procs=[proc])
    wait_until(ros_node, lambda: received, 30, "the latched instruction", [proc])
    assert received == ["put the bowl on the plate"]  # whitespace normalised

    setter = ros_node.create_publisher(String, "/instruction_publisher/set", COMMAND)
    wait_for_subscribers(ros_node, setter, procs=[proc])
    setter.publish(String(data="   "))  # blank: refused with a warning, nothing republished
    wait_until(
        ros_node,
        lambda: "instruction is empty" in proc.log_path.read_text(),
        30,
        "the refusal",
        [proc],
    )
    setter.publish(String(data="open the top drawer"))
    wait_until(ros_node, lambda: len(received) >= 2, 30, "the updated instruction", [proc])
    assert received == ["put the bowl on the plate", "open the top drawer"]

    assert proc.stop() == 0, proc.tail()  # SIGINT ends it cleanly


def test_late_subscriber_gets_only_the_latest_instruction(ros_node, start_node):
    from lawm_policy.qos import COMMAND

    proc = start_node("lawm_policy", "instruction_publisher", params={"topic": "/harness/late"})
    setter = ros_node.create_publisher(String, "/instruction_publisher/set", COMMAND)
    wait_for_subscribers(ros_node, setter, procs=[proc])
    first: list[str] = []
    sub = _latched_subscriber(ros_node, "/harness/late", first)
    wait_for_publishers(ros_node, sub, procs=[proc])
    setter.publish(String(data="pick up the ketchup"))
    wait_until(ros_node, lambda: first, 30, "first instruction", [proc])
    setter.publish(String(data="pick up the milk"))
    wait_until(ros_node, lambda: len(first) >= 2, 30, "second instruction", [proc])

    late: list[str] = []
    late_sub = _latched_subscriber(ros_node, "/harness/late", late)
    wait_for_publishers(ros_node, late_sub, procs=[proc])
    wait_until(ros_node, lambda: late, 30, "latched value for a late subscriber", [proc])
    assert late == ["pick up the milk"]


def test_missing_executable_names_the_fix(tmp_path):
    from lawm_apps.harness import NodeProcess

    with pytest.raises(FileNotFoundError, match="make setup"):
        NodeProcess("lawm_policy", "no_such_node", log_dir=tmp_path)
