"""Publish the task instruction for the policy, latched, and let operators change it live.

There is no ``ros2 topic pub`` on machines that run ROS 2 from PyPI wheels, and the policy node
needs its instruction on a reliable, transient-local topic. This node holds the current
instruction and republishes it (latched) whenever it changes:

    instruction_publisher --ros-args -p instruction:="put the bowl on the plate"

Parameters:
    instruction (str): initial instruction; empty means "publish nothing until one is set".
    topic (str): where to publish, default ``/lawm_policy/instruction``.
Subscribes:
    ``~/set`` (std_msgs/String): a new instruction; blank text is refused with a warning.
Publishes:
    ``<topic>`` (std_msgs/String, reliable + transient-local, depth 1).
"""

from __future__ import annotations

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from std_msgs.msg import String

from lawm_policy.qos import COMMAND, LATCHED

DEFAULT_TOPIC = "/lawm_policy/instruction"
MAX_LENGTH = 1000  # characters; longer text is almost certainly a mistake (a pasted file)


def clean_instruction(text: str) -> str:
    """Normalise whitespace; raise ValueError with the reason when the text is unusable."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("instruction is empty")
    if len(cleaned) > MAX_LENGTH:
        raise ValueError(f"instruction has {len(cleaned)} characters (limit {MAX_LENGTH})")
    return cleaned


class InstructionPublisher(Node):
    def __init__(self) -> None:
        super().__init__("instruction_publisher")
        initial = self.declare_parameter(
            "instruction",
            "",
            ParameterDescriptor(description="Initial task instruction (empty: none yet)."),
        ).value
        topic = self.declare_parameter(
            "topic",
            DEFAULT_TOPIC,
            ParameterDescriptor(description="Topic the instruction is latched on."),
        ).value
        self._pub = self.create_publisher(String, topic, LATCHED)
        self._sub = self.create_subscription(String, "~/set", self._on_set, COMMAND)
        self.current: str | None = None
        if initial.strip():
            self.publish(initial)
        else:
            self.get_logger().info(f"no initial instruction; waiting on {self._sub.topic_name}")

    def publish(self, text: str) -> bool:
        try:
            cleaned = clean_instruction(text)
        except ValueError as err:
            self.get_logger().warning(f"refused instruction {text[:80]!r}: {err}")
            return False
        self.current = cleaned
        self._pub.publish(String(data=cleaned))
        self.get_logger().info(f"instruction on {self._pub.topic_name}: {cleaned!r}")
        return True

    def _on_set(self, msg: String) -> None:
        self.publish(msg.data)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = InstructionPublisher()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
