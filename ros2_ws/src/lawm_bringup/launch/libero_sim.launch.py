"""LIBERO in simulation: libero_bridge (simulator + /clock) and the LAWM policy on sim time.

    ros2 launch lawm_bringup libero_sim.launch.py model_dir:=/models \
        suite:=libero_object task_id:=3 episodes:=10

The bridge publishes the task instruction, both cameras and proprio; the policy's ~/action
drives the simulator one step per action (lockstep). Episode results (JSON) arrive on
libero/episode_result; the bridge exits once the episodes are done. With ``namespace:=sim1``
both nodes and every topic joining them move under ``/sim1`` (the bridge's /clock stays global,
as ROS time is).

Text arguments reach the nodes as strings (``ParameterValue(..., value_type=str)``), not parsed
as YAML.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue

SHARE = Path(get_package_share_directory("lawm_bringup"))

# name -> (default, description): one table, so every argument is described.
ARGUMENTS = {
    "params_file": (str(SHARE / "config" / "libero_sim.yaml"), "Parameters of both nodes."),
    "model_dir": ("/models", "Exported model directory (policy.onnx + policy.json)."),
    "suite": ("libero_object", "LIBERO suite (libero_object, libero_spatial, libero_goal, ...)."),
    "task_id": ("0", "Task index within the suite."),
    "episodes": ("1", "Episodes to run, from the params file's init state on (0: unlimited)."),
    "namespace": ("", "ROS namespace of both nodes and the topics between them ('' = none)."),
    "use_sim_time": (
        "true",
        "true: the policy runs on the bridge's /clock (the bridge, the clock's source, always "
        "runs on wall time).",
    ),
    "log_level": ("info", "Log level of both nodes: debug, info, warn, error or fatal."),
    "record_dir": ("", "Write each episode here as an episode file ('' = no recording)."),
    "record_format": ("mcap", "Episode files: mcap (Foxglove) or rrd (Rerun, needs rerun-sdk)."),
}

# The topics and service joining the two nodes, by relative name so that `namespace` moves them
# together; they take the place of the params file's names for them.
CAMERA_TOPICS = ["libero/agentview/image_raw", "libero/eye_in_hand/image_raw"]
PROPRIO_TOPIC = "libero/proprio"
BRIDGE_TOPICS = {
    "action_topic": "lawm_policy/action",
    "agentview_topic": CAMERA_TOPICS[0],
    "eye_in_hand_topic": CAMERA_TOPICS[1],
    "proprio_topic": PROPRIO_TOPIC,
    "instruction_topic": "lawm_policy/instruction",
    "result_topic": "libero/episode_result",
    "reset_service": "lawm_policy/reset",
}


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGUMENTS.items()
    ]
    params = LaunchConfiguration("params_file")
    log_level = ["--log-level", LaunchConfiguration("log_level")]
    bridge = Node(
        package="lawm_policy",
        executable="libero_bridge",
        name="libero_bridge",
        parameters=[
            params,
            {
                **BRIDGE_TOPICS,
                "suite": ParameterValue(LaunchConfiguration("suite"), value_type=str),
                "task_id": ParameterValue(LaunchConfiguration("task_id"), value_type=int),
                "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
                "record_dir": ParameterValue(LaunchConfiguration("record_dir"), value_type=str),
                "record_format": ParameterValue(
                    LaunchConfiguration("record_format"), value_type=str
                ),
            },
        ],
        ros_arguments=log_level,
        output="screen",
    )
    policy = Node(
        package="lawm_policy",
        executable="policy_node",
        name="lawm_policy",
        parameters=[
            params,
            {
                "model_dir": ParameterValue(LaunchConfiguration("model_dir"), value_type=str),
                "camera_topics": CAMERA_TOPICS,
                "proprio_topic": PROPRIO_TOPIC,
                "use_sim_time": ParameterValue(
                    LaunchConfiguration("use_sim_time"), value_type=bool
                ),
            },
        ],
        ros_arguments=log_level,
        output="screen",
    )
    nodes = GroupAction([PushRosNamespace(LaunchConfiguration("namespace")), bridge, policy])
    # Camera-sized DDS buffers unless the user already chose a profile.
    dds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        EnvironmentVariable(
            "FASTRTPS_DEFAULT_PROFILES_FILE", default_value=str(SHARE / "config" / "fastdds.xml")
        ),
    )
    return LaunchDescription([*args, dds, nodes])
