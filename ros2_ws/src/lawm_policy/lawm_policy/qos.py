"""QoS profiles shared by the LAWM nodes, so publishers and subscribers always agree."""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

# Latched: a late subscriber (e.g. a policy node restarted mid-task) still gets the last value.
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

# Camera streams: best effort, newest frame only; a slow consumer never builds a backlog.
SENSOR_LATEST = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)

# Commands to a robot: reliable, shallow queue.
COMMAND = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# A replayed recording: reliable + keep-last reaches both best-effort (the policy's cameras) and
# reliable subscribers.
REPLAY_STREAM = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# Recording a node's commands: compatible with COMMAND, but a deeper queue than its depth 1.
COMMAND_RECORDER = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=COMMAND.reliability,
    durability=COMMAND.durability,
)
