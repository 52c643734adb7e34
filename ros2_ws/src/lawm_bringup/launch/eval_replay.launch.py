"""Rosbag replay evaluation: the LAWM policy node fed from a recorded bag by eval_replay.

    ros2 launch lawm_bringup eval_replay.launch.py bag:=/data/run1 out:=/tmp/eval \
        model_dir:=/models instruction:="put the bowl on the plate"

eval_replay publishes the bag's camera (and proprio) messages on their bag topic names,
restamped with the current time at the recorded pacing, so the policy node listens on those
names (``agentview_topic``, ``eye_in_hand_topic``, ``proprio_topic``). It writes
``<out>/report.json``, ``predictions.csv`` and ``actions.png``, and the launch ends when it
exits. Offline evaluation needs no launch: ``eval_replay --offline --model-dir DIR ...``.
With ``namespace:=arm1`` both nodes and the policy's own topics move under ``/arm1`` (the bag's
topics keep their names).

Text arguments reach the policy node as strings (``ParameterValue(..., value_type=str)``), not
parsed as YAML; eval_replay gets them as command-line arguments, which are never parsed.
"""

from pathlib import Path
from typing import List  # noqa: UP035 (launch accepts typing.List[str], not list[str])

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    GroupAction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue

SHARE = Path(get_package_share_directory("lawm_bringup"))

# name -> (default, description): one table, so every argument is described.
ARGUMENTS = {
    "bag": ("", "rosbag2 to replay: a folder with metadata.yaml, or a .mcap/.db3 file."),
    "out": ("/tmp/lawm_eval_replay", "Output folder: report.json, predictions.csv, actions.png."),
    "model_dir": ("/models", "Exported model directory (policy.onnx + policy.json)."),
    "params_file": (str(SHARE / "config" / "robot.yaml"), "Parameters of the policy node."),
    "instruction": ("", "Task instruction; empty: the bag's *instruction* topic."),
    "agentview_topic": (
        "/camera/agentview/color/image_raw",
        "Bag Image topic of the scene camera (the frame clock).",
    ),
    "eye_in_hand_topic": (
        "/camera/eye_in_hand/color/image_raw",
        "Bag Image topic of the wrist camera.",
    ),
    "action_topic": ("auto", "Recorded action topic; auto: the bag's one *action* topic."),
    "proprio_topic": ("", "Bag proprio topic (Float32MultiArray of 5); empty: none."),
    "rate": ("1.0", "Playback speed factor."),
    "wait_timeout": ("30.0", "Seconds eval_replay waits for the policy node."),
    "namespace": ("", "ROS namespace of both nodes and the policy's own topics ('' = none)."),
    "use_sim_time": (
        "false",
        "true: the policy node runs on the /clock topic's time (eval_replay restamps the camera "
        "messages with wall time).",
    ),
    "log_level": ("info", "Log level of both nodes: debug, info, warn, error or fatal."),
}


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGUMENTS.items()
    ]
    cfg = {k: LaunchConfiguration(k) for k in ARGUMENTS}
    log_level = ["--log-level", cfg["log_level"]]
    policy = Node(
        package="lawm_policy",
        executable="policy_node",
        name="lawm_policy",
        parameters=[
            cfg["params_file"],
            {
                "model_dir": ParameterValue(cfg["model_dir"], value_type=str),
                # Camera order = the model's (agentview, eye_in_hand). Each item a list of
                # substitutions: a list of two strings, not one concatenated string.
                "camera_topics": ParameterValue(
                    [[cfg["agentview_topic"]], [cfg["eye_in_hand_topic"]]],
                    value_type=List[str],  # noqa: UP006 (see the import)
                ),
                "proprio_topic": ParameterValue(cfg["proprio_topic"], value_type=str),
                "use_sim_time": ParameterValue(cfg["use_sim_time"], value_type=bool),
            },
        ],
        ros_arguments=log_level,
        output="screen",
    )
    eval_replay = Node(
        package="lawm_policy",
        executable="eval_replay",
        name="eval_replay",
        # "--flag=value" as one argv element each, so that an empty value stays an argument.
        arguments=[
            ["--bag=", cfg["bag"]],
            ["--out=", cfg["out"]],
            ["--image-topic=agentview=", cfg["agentview_topic"]],
            ["--image-topic=eye_in_hand=", cfg["eye_in_hand_topic"]],
            ["--action-topic=", cfg["action_topic"]],
            ["--proprio-topic=", cfg["proprio_topic"]],
            ["--instruction=", cfg["instruction"]],
            # The policy node's namespace: "/lawm_policy" under `namespace`.
            ["--policy-ns=", cfg["namespace"], "/lawm_policy"],
            ["--rate=", cfg["rate"]],
            ["--wait-timeout=", cfg["wait_timeout"]],
        ],
        ros_arguments=log_level,
        output="screen",
    )
    # The evaluation is over when eval_replay exits: stop the policy node with it.
    stop = RegisterEventHandler(
        OnProcessExit(
            target_action=eval_replay,
            on_exit=[EmitEvent(event=Shutdown(reason="eval_replay finished"))],
        )
    )
    nodes = GroupAction([PushRosNamespace(cfg["namespace"]), policy, eval_replay])
    # Camera-sized DDS buffers unless the user already chose a profile.
    dds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        EnvironmentVariable(
            "FASTRTPS_DEFAULT_PROFILES_FILE", default_value=str(SHARE / "config" / "fastdds.xml")
        ),
    )
    return LaunchDescription([*args, dds, nodes, stop])
