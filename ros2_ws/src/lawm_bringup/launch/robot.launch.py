"""Real arm: RealSense camera(s) + the LAWM policy node, twist remapped to the arm's servo input.

    ros2 launch lawm_bringup robot.launch.py model_dir:=/models \
        instruction:="put the bowl on the plate" servo_topic:=/servo_node/delta_twist_cmds
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

SHARE = Path(get_package_share_directory("lawm_bringup"))

# name -> (default, description): one table, so every argument is described.
ARGUMENTS = {
    "params_file": (str(SHARE / "config" / "robot.yaml"), "Parameters of all nodes."),
    "model_dir": ("/models", "Exported model directory (policy.onnx + policy.json)."),
    "instruction": ("", "Task instruction (also settable on /lawm_policy/instruction)."),
    "agentview_serial": ("", "Serial of the scene camera ('' = first device)."),
    "eye_in_hand_serial": ("", "Serial of the wrist camera."),
    "servo_topic": (
        "/servo_node/delta_twist_cmds",
        "Twist input of the arm (e.g. MoveIt Servo's delta_twist_cmds).",
    ),
    "gripper_topic": ("/gripper/command", "Where the gripper command (Float64 +-1) goes."),
}


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGUMENTS.items()
    ]
    params = LaunchConfiguration("params_file")
    cameras = [
        Node(
            package="lawm_policy",
            executable="realsense_camera",
            name=f"{cam}_camera",
            namespace=f"/camera/{cam}",
            # As a string: a digits-only serial must not become an integer (leading zeros).
            parameters=[
                params,
                {"serial": ParameterValue(LaunchConfiguration(f"{cam}_serial"), value_type=str)},
            ],
            output="screen",
        )
        for cam in ("agentview", "eye_in_hand")
    ]
    policy = Node(
        package="lawm_policy",
        executable="policy_node",
        name="lawm_policy",
        parameters=[
            params,
            {
                "model_dir": LaunchConfiguration("model_dir"),
                "instruction": LaunchConfiguration("instruction"),
            },
        ],
        remappings=[
            ("~/cmd_twist", LaunchConfiguration("servo_topic")),
            ("~/cmd_gripper", LaunchConfiguration("gripper_topic")),
        ],
        output="screen",
    )
    # Camera-sized DDS buffers unless the user already chose a profile.
    dds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        EnvironmentVariable(
            "FASTRTPS_DEFAULT_PROFILES_FILE", default_value=str(SHARE / "config" / "fastdds.xml")
        ),
    )
    return LaunchDescription([*args, dds, *cameras, policy])
