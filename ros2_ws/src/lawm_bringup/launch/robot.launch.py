"""Real arm: RealSense camera(s) + the LAWM policy node, twist remapped to the arm's servo input.

    ros2 launch lawm_bringup robot.launch.py model_dir:=/models \
        instruction:="put the bowl on the plate" servo_topic:=/servo_node/delta_twist_cmds

With ``namespace:=arm1`` every node and topic of this launch moves under ``/arm1`` (cameras on
``/arm1/camera/<camera>/color/image_raw``, the policy on ``/arm1/lawm_policy/...``, and the
relative default servo and gripper topics under ``/arm1`` too), so two arms can share a network.

Text arguments reach the nodes as strings (``ParameterValue(..., value_type=str)``): without it
launch_ros parses them as YAML, so ``instruction:="pick up cup #2"`` would lose ``#2`` (a YAML
comment) and a digits-only serial would become an integer.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue

SHARE = Path(get_package_share_directory("lawm_bringup"))
CAMERAS = ("agentview", "eye_in_hand")  # the model's camera order

# name -> (default, description): one table, so every argument is described.
ARGUMENTS = {
    "params_file": (str(SHARE / "config" / "robot.yaml"), "Parameters of all nodes."),
    "model_dir": ("/models", "Exported model directory (policy.onnx + policy.json)."),
    "instruction": ("", "Task instruction (also settable on the policy's ~/instruction topic)."),
    "agentview_serial": ("", "Serial of the scene camera ('' = first device)."),
    "eye_in_hand_serial": ("", "Serial of the wrist camera."),
    "servo_topic": (
        "servo_node/delta_twist_cmds",
        "Twist input of the arm (e.g. MoveIt Servo's delta_twist_cmds); a relative name "
        "resolves in `namespace`.",
    ),
    "gripper_topic": (
        "gripper/command",
        "Where the gripper command (Float64 +-1) goes; a relative name resolves in `namespace`.",
    ),
    "namespace": ("", "ROS namespace of every node and topic of this launch ('' = none)."),
    "use_sim_time": ("false", "true: every node runs on the /clock topic's time."),
    "log_level": ("info", "Log level of every node: debug, info, warn, error or fatal."),
}


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGUMENTS.items()
    ]
    params = LaunchConfiguration("params_file")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    log_level = ["--log-level", LaunchConfiguration("log_level")]
    cameras = [
        Node(
            package="lawm_policy",
            executable="realsense_camera",
            name=f"{cam}_camera",
            namespace=f"camera/{cam}",  # relative: under `namespace`
            parameters=[
                params,
                {
                    "serial": ParameterValue(LaunchConfiguration(f"{cam}_serial"), value_type=str),
                    "use_sim_time": use_sim_time,
                },
            ],
            ros_arguments=log_level,
            output="screen",
        )
        for cam in CAMERAS
    ]
    policy = Node(
        package="lawm_policy",
        executable="policy_node",
        name="lawm_policy",
        parameters=[
            params,
            {
                "model_dir": ParameterValue(LaunchConfiguration("model_dir"), value_type=str),
                "instruction": ParameterValue(LaunchConfiguration("instruction"), value_type=str),
                # The cameras this launch starts, by relative name so they follow `namespace`.
                "camera_topics": [f"camera/{cam}/color/image_raw" for cam in CAMERAS],
                "use_sim_time": use_sim_time,
            },
        ],
        remappings=[
            ("~/cmd_twist", LaunchConfiguration("servo_topic")),
            ("~/cmd_gripper", LaunchConfiguration("gripper_topic")),
        ],
        ros_arguments=log_level,
        output="screen",
    )
    nodes = GroupAction([PushRosNamespace(LaunchConfiguration("namespace")), *cameras, policy])
    # Camera-sized DDS buffers unless the user already chose a profile.
    dds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        EnvironmentVariable(
            "FASTRTPS_DEFAULT_PROFILES_FILE", default_value=str(SHARE / "config" / "fastdds.xml")
        ),
    )
    return LaunchDescription([*args, dds, nodes])
