"""Real arm: RealSense camera(s) + the LAWM policy node, its outputs remapped to the arm's inputs.

    ros2 launch lawm_bringup robot.launch.py arm:=ur5e model_dir:=/models \
        instruction:="put the bowl on the plate"

``arm`` (``generic``, ``ur5e``, ``fr3`` or ``xarm``; docs/real_arms.md says what to start on
each arm first) picks the parameters, ``config/<arm>.yaml`` (``generic``: ``config/robot.yaml``)
unless ``params_file`` is given, and the topics the policy's outputs are remapped to: the twist
(``servo_topic``, e.g. MoveIt Servo's ``delta_twist_cmds``), the Float64 gripper command
(``gripper_topic``), the pose target (``pose_target_topic``) and the gripper JointTrajectory
(``gripper_trajectory_topic``).

Per-arm topics: a remapping is an argument of the node's process, not a parameter, so it cannot
come from the params file. Each arm's default topics sit in ``ARMS`` below, next to its params
file, and are resolved when the launch runs (an ``OpaqueFunction``): a topic argument left empty
takes the arm's default, a non-empty one wins. An empty default leaves that output on the
policy's own topic (``/lawm_policy/cmd_pose`` ...), as does passing the policy's private name
(``servo_topic:=~/cmd_twist``). An ``arm`` not in ``ARMS`` stops the launch with an error that
lists the choices.

``cameras:=false`` starts the policy alone, for cameras from another driver (Intel's
``realsense2_camera``, README) publishing the topics the policy subscribes.

With ``namespace:=arm1`` every node and topic of this launch moves under ``/arm1`` (cameras on
``/arm1/camera/<camera>/color/image_raw``, the policy on ``/arm1/lawm_policy/...``, and the
relative default topics under ``/arm1`` too), so two arms can share a network.

Text arguments reach the nodes as strings (``ParameterValue(..., value_type=str)``): without it
launch_ros parses them as YAML, so ``instruction:="pick up cup #2"`` would lose ``#2`` (a YAML
comment) and a digits-only serial would become an integer.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    GroupAction,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue

SHARE = Path(get_package_share_directory("lawm_bringup"))
CAMERAS = ("agentview", "eye_in_hand")  # the model's camera order

# Launch argument -> the policy's output topic it remaps.
OUTPUTS = {
    "servo_topic": "~/cmd_twist",
    "gripper_topic": "~/cmd_gripper",
    "pose_target_topic": "~/cmd_pose",
    "gripper_trajectory_topic": "~/cmd_gripper_trajectory",
}

# arm -> its params file in config/ and the default of each OUTPUTS argument ("": the policy's
# own topic). Relative names resolve in `namespace`, as the vendor stacks' own do.
ARMS = {
    "generic": {
        "params_file": "robot.yaml",
        "servo_topic": "servo_node/delta_twist_cmds",
        "gripper_topic": "gripper/command",
        "pose_target_topic": "",
        "gripper_trajectory_topic": "",
    },
    # ur_moveit_config's Servo (launch_servo:=true) runs as servo_node.
    "ur5e": {
        "params_file": "ur5e.yaml",
        "servo_topic": "servo_node/delta_twist_cmds",
        "gripper_topic": "gripper/command",
        "pose_target_topic": "",
        "gripper_trajectory_topic": "",
    },
    # No Servo in franka_ros2: pose targets for a Cartesian impedance controller named
    # cartesian_impedance_controller subscribing PoseStamped on ~/equilibrium_pose (the
    # convention of franka_ros2's example controller, whose own demo motion overrides them).
    "fr3": {
        "params_file": "fr3.yaml",
        "servo_topic": "",
        "gripper_topic": "gripper/command",
        "pose_target_topic": "cartesian_impedance_controller/equilibrium_pose",
        "gripper_trajectory_topic": "",
    },
    # xarm_moveit_servo's Servo component is servo_server; the trajectory topic is the fake or
    # Gazebo gripper's controller (xarm.yaml uses the real gripper's action instead).
    "xarm": {
        "params_file": "xarm.yaml",
        "servo_topic": "servo_server/delta_twist_cmds",
        "gripper_topic": "gripper/command",
        "pose_target_topic": "",
        "gripper_trajectory_topic": "xarm_gripper_traj_controller/joint_trajectory",
    },
}

# name -> (default, description): one table, so every argument is described.
ARGUMENTS = {
    "arm": (
        "generic",
        "The arm: generic, ur5e, fr3 or xarm; picks config/<arm>.yaml and the default topics.",
    ),
    "params_file": ("", "Parameters of all nodes ('' = config/<arm>.yaml; generic: robot.yaml)."),
    "model_dir": ("/models", "Exported model directory (policy.onnx + policy.json)."),
    "instruction": ("", "Task instruction (also settable on the policy's ~/instruction topic)."),
    "cameras": (
        "true",
        "false: start only the policy, the cameras coming from another driver (e.g. Intel's "
        "realsense2_camera) on the camera_topics the policy subscribes.",
    ),
    "agentview_serial": ("", "Serial of the scene camera ('' = first device)."),
    "eye_in_hand_serial": ("", "Serial of the wrist camera."),
    "servo_topic": (
        "",
        "Twist input of the arm (e.g. MoveIt Servo's delta_twist_cmds; '' = the arm's default, "
        "generic: servo_node/delta_twist_cmds); a relative name resolves in `namespace`.",
    ),
    "gripper_topic": (
        "",
        "Where the gripper command (Float64 +-1) goes ('' = the arm's default, "
        "gripper/command); a relative name resolves in `namespace`.",
    ),
    "pose_target_topic": (
        "",
        "Where the pose target (PoseStamped, with pose_target true) goes ('' = the arm's "
        "default, fr3: cartesian_impedance_controller/equilibrium_pose).",
    ),
    "gripper_trajectory_topic": (
        "",
        "Where the gripper JointTrajectory (gripper_interface joint_trajectory) goes ('' = the "
        "arm's default, xarm: xarm_gripper_traj_controller/joint_trajectory).",
    ),
    "namespace": ("", "ROS namespace of every node and topic of this launch ('' = none)."),
    "use_sim_time": ("false", "true: every node runs on the /clock topic's time."),
    "log_level": ("info", "Log level of every node: debug, info, warn, error or fatal."),
}


def arm_settings(arm: str, given: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """``arm``'s params file and the policy's remappings, with ``given`` (launch arguments by
    name, '' = the arm's default) taking precedence. ValueError listing the arms for an
    unknown one."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm:={arm!r}; choose one of: {', '.join(ARMS)}")
    table = ARMS[arm]
    params_file = given.get("params_file") or str(SHARE / "config" / table["params_file"])
    remappings = []
    for name, own in OUTPUTS.items():
        topic = given.get(name) or table[name]
        if topic and topic != own:
            remappings.append((own, topic))
    return params_file, remappings


def _nodes(context) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    params_file, remappings = arm_settings(
        arg("arm"), {name: arg(name) for name in ("params_file", *OUTPUTS)}
    )
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    log_level = ["--log-level", LaunchConfiguration("log_level")]
    cameras = [
        Node(
            package="lawm_policy",
            executable="realsense_camera",
            name=f"{cam}_camera",
            namespace=f"camera/{cam}",  # relative: under `namespace`
            parameters=[
                params_file,
                {
                    "serial": ParameterValue(LaunchConfiguration(f"{cam}_serial"), value_type=str),
                    "use_sim_time": use_sim_time,
                },
            ],
            ros_arguments=log_level,
            output="screen",
            condition=IfCondition(LaunchConfiguration("cameras")),
        )
        for cam in CAMERAS
    ]
    policy = Node(
        package="lawm_policy",
        executable="policy_node",
        name="lawm_policy",
        parameters=[
            params_file,
            {
                "model_dir": ParameterValue(LaunchConfiguration("model_dir"), value_type=str),
                "instruction": ParameterValue(LaunchConfiguration("instruction"), value_type=str),
                # The cameras this launch starts, by relative name so they follow `namespace`.
                "camera_topics": [f"camera/{cam}/color/image_raw" for cam in CAMERAS],
                "use_sim_time": use_sim_time,
            },
        ],
        remappings=remappings,
        ros_arguments=log_level,
        output="screen",
    )
    return [GroupAction([PushRosNamespace(LaunchConfiguration("namespace")), *cameras, policy])]


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGUMENTS.items()
    ]
    # Camera-sized DDS buffers unless the user already chose a profile.
    dds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        EnvironmentVariable(
            "FASTRTPS_DEFAULT_PROFILES_FILE", default_value=str(SHARE / "config" / "fastdds.xml")
        ),
    )
    return LaunchDescription([*args, dds, OpaqueFunction(function=_nodes)])
