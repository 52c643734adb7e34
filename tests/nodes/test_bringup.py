"""lawm_bringup: params files and launch descriptions.

`launch` is not installable here, so the launch files' node sets are started as processes with
the same params files; where `launch` is importable (the Docker image) the launch descriptions
themselves are loaded.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import yaml
from geometry_msgs.msg import TwistStamped

from lawm_apps.harness import WS_INSTALL, wait_for_publishers, wait_until
from lawm_policy.qos import COMMAND

SHARE = WS_INSTALL / "lawm_bringup" / "share" / "lawm_bringup"
SRC = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "lawm_bringup"
INSTRUCTION = "push the block to the top left corner and lift it"


def test_params_files_are_installed_and_name_only_declared_parameters():
    from lawm_policy.policy_node import PARAMETERS

    configs = sorted((SRC / "config").glob("*.yaml"))
    assert configs
    for path in configs:
        assert (SHARE / "config" / path.name).is_file(), f"{path.name} not installed"
        data = yaml.safe_load(path.read_text())
        for node, section in data.items():
            assert "ros__parameters" in section, f"{path.name}: {node}"
            if node == "lawm_policy":
                builtin = {"autostart", "use_sim_time"}
                unknown = set(section["ros__parameters"]) - set(PARAMETERS) - builtin
                assert not unknown, f"{path.name}: unknown policy parameters {unknown}"


@pytest.mark.ros
def test_robot_params_bring_up_cameras_and_policy_on_the_servo_topic(
    ros_node, start_node, exported_debug_model, tmp_path
):
    from test_realsense_camera import write_recording

    recording = write_recording(tmp_path / "scene.db3", 20, 48, 64).path
    params_file = SHARE / "config" / "robot.yaml"
    for cam in ("agentview", "eye_in_hand"):
        start_node(
            "lawm_policy",
            "realsense_camera",
            params_file=params_file,
            params={"recording": str(recording)},
            remaps={"__node": f"{cam}_camera", "__ns": f"/camera/{cam}"},
        )
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params_file=params_file,
        params={"model_dir": str(exported_debug_model), "instruction": INSTRUCTION},
        remaps={"~/cmd_twist": "/servo_node/delta_twist_cmds"},
    )
    got: list[TwistStamped] = []
    sub = ros_node.create_subscription(
        TwistStamped, "/servo_node/delta_twist_cmds", got.append, COMMAND
    )
    wait_for_publishers(ros_node, sub, procs=[policy])

    def acting():
        return any(
            t.header.stamp.sec
            for t in got
            if t.header.frame_id == "base_link" and abs(t.header.stamp.sec - time.time()) < 5
        )

    wait_until(ros_node, acting, 60, "commands stamped with camera frames", [policy])


LAUNCH_FILES = sorted(p.name for p in (SRC / "launch").glob("*.launch.py"))


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_description_loads(name):
    pytest.importorskip("launch", reason="`launch` is not on PyPI; runs in the ROS image")
    pytest.importorskip("launch_ros")
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), SHARE / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert description.entities
