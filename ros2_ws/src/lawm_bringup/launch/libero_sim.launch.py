"""LIBERO in simulation: libero_bridge (simulator + /clock) and the LAWM policy on sim time.

    ros2 launch lawm_bringup libero_sim.launch.py model_dir:=/models \
        suite:=libero_object task_id:=3 episodes:=10

The bridge publishes the task instruction, both cameras and proprio; the policy's ~/action
drives the simulator one step per action (lockstep). Episode results (JSON) arrive on
/libero/episode_result; the bridge exits once the episodes are done.
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
    "params_file": (str(SHARE / "config" / "libero_sim.yaml"), "Parameters of both nodes."),
    "model_dir": ("/models", "Exported model directory (policy.onnx + policy.json)."),
    "suite": ("libero_object", "LIBERO suite (libero_object, libero_spatial, libero_goal, ...)."),
    "task_id": ("0", "Task index within the suite."),
    "episodes": ("1", "Episodes to run, from the params file's init state on (0: unlimited)."),
}


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGUMENTS.items()
    ]
    params = LaunchConfiguration("params_file")
    bridge = Node(
        package="lawm_policy",
        executable="libero_bridge",
        name="libero_bridge",
        parameters=[
            params,
            {
                "suite": LaunchConfiguration("suite"),
                "task_id": ParameterValue(LaunchConfiguration("task_id"), value_type=int),
                "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
            },
        ],
        output="screen",
    )
    policy = Node(
        package="lawm_policy",
        executable="policy_node",
        name="lawm_policy",
        parameters=[params, {"model_dir": LaunchConfiguration("model_dir")}],
        output="screen",
    )
    # Camera-sized DDS buffers unless the user already chose a profile.
    dds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        EnvironmentVariable(
            "FASTRTPS_DEFAULT_PROFILES_FILE", default_value=str(SHARE / "config" / "fastdds.xml")
        ),
    )
    return LaunchDescription([*args, dds, bridge, policy])
