"""lawm_bringup: params files and launch descriptions.

`launch` is not installable here, so the launch files' node sets are started as processes with
the same params files, and the launch files are checked from their source (ast); where `launch`
is importable (the Docker image) the launch descriptions themselves are loaded.
"""

from __future__ import annotations

import ast
import importlib.util
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from geometry_msgs.msg import TwistStamped

from lawm_apps.harness import WS_INSTALL, wait_for_publishers, wait_until
from lawm_policy.qos import COMMAND

SHARE = WS_INSTALL / "lawm_bringup" / "share" / "lawm_bringup"
SRC = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "lawm_bringup"
INSTRUCTION = "push the block to the top left corner and lift it"


def test_config_files_are_installed_and_name_only_declared_parameters():
    from lawm_policy.policy_params import PARAMETERS

    # Everything under config/, the Fast DDS profile the launch files point at included.
    for path in (SRC / "config").iterdir():
        assert (SHARE / "config" / path.name).is_file(), f"{path.name} not installed"
    assert ET.parse(SHARE / "config" / "fastdds.xml").getroot().tag.endswith("profiles")
    configs = sorted((SRC / "config").glob("*.yaml"))
    assert configs
    for path in configs:
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
    image_times: list[TwistStamped] = []  # one per command computed from camera frames
    subs = [
        ros_node.create_subscription(
            TwistStamped, "/servo_node/delta_twist_cmds", got.append, COMMAND
        ),
        ros_node.create_subscription(
            TwistStamped, "/lawm_policy/cmd_twist_image_time", image_times.append, COMMAND
        ),
    ]
    for sub in subs:
        wait_for_publishers(ros_node, sub, procs=[policy])

    def acting():
        return any(
            t.header.frame_id == "base_link" and abs(t.header.stamp.sec - time.time()) < 5
            for t in image_times
        ) and any(t.header.frame_id == "base_link" for t in got)

    wait_until(ros_node, acting, 60, "commands computed from camera frames", [policy])


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


# -- the launch files, from their source ---------------------------------------------------
# Arguments every launch file takes, whatever it starts.
COMMON_ARGUMENTS = {"namespace", "use_sim_time", "log_level"}
# A value built from these is a substitution: launch_ros parses its text as YAML unless it is
# wrapped in ParameterValue(..., value_type=...).
SUBSTITUTIONS = {"LaunchConfiguration", "EnvironmentVariable", "PathJoinSubstitution"}


def _callee(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        return getattr(node.func, "id", None) or getattr(node.func, "attr", None)
    return None


class _LaunchSource:
    """A launch file's syntax tree, with its simple ``name = value`` assignments (module level and
    inside functions) so that names can be followed to what they stand for."""

    def __init__(self, name: str):
        self.tree = ast.parse((SRC / "launch" / name).read_text(), name)
        self.assigned = {
            n.targets[0].id: n.value
            for n in ast.walk(self.tree)
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
        }

    def calls(self, callee: str) -> list[ast.Call]:
        return [n for n in ast.walk(self.tree) if _callee(n) == callee]

    def resolve(self, node: ast.AST) -> ast.AST:
        seen = set()
        while isinstance(node, ast.Name) and node.id in self.assigned and node.id not in seen:
            seen.add(node.id)
            node = self.assigned[node.id]
        return node

    def is_substitution(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
        for sub in ast.walk(node):
            if _callee(sub) in SUBSTITUTIONS:
                return True
            if isinstance(sub, ast.Name) and sub.id in self.assigned and sub.id not in seen:
                if self.is_substitution(self.assigned[sub.id], seen | {sub.id}):
                    return True
        return False


def _parameter_types() -> dict[str, set[str]]:
    """Parameter name -> its types as a launch ``value_type`` is written, from the params files
    (``str``, ``int``, ``List[str]``...)."""
    types: dict[str, set[str]] = {"use_sim_time": {"bool"}}
    for path in (SRC / "config").glob("*.yaml"):
        for section in yaml.safe_load(path.read_text()).values():
            for name, value in section["ros__parameters"].items():
                if isinstance(value, list):
                    kinds = {f"List[{type(v).__name__}]" for v in value}
                else:
                    kinds = {type(value).__name__}
                types.setdefault(name, set()).update(kinds)
    return types


def _node_parameters(src: _LaunchSource, node: ast.Call):
    """(parameter name, value expression) of every dict in a Node's ``parameters``."""
    params = next((k.value for k in node.keywords if k.arg == "parameters"), None)
    if params is None:
        return
    for item in src.resolve(params).elts:
        stack = [src.resolve(item)]
        while stack:
            entry = stack.pop()
            if not isinstance(entry, ast.Dict):
                continue  # the params file
            for key, value in zip(entry.keys, entry.values):
                if key is None:  # **mapping
                    stack.append(src.resolve(value))
                else:
                    yield ast.literal_eval(key), src.resolve(value)


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_arguments_are_described(name):
    src = _LaunchSource(name)
    declared = src.calls("DeclareLaunchArgument")
    assert declared
    for call in declared:
        assert "description" in {k.arg for k in call.keywords}, ast.unparse(call)
    table = src.resolve(ast.Name("ARGUMENTS"))
    assert isinstance(table, ast.Dict), "ARGUMENTS: the table of (default, description)"
    arguments = {}
    for key, value in zip(table.keys, table.values):
        default, description = value.elts
        description = ast.literal_eval(description)
        assert isinstance(description, str) and description.strip(), ast.literal_eval(key)
        arguments[ast.literal_eval(key)] = description
    assert COMMON_ARGUMENTS <= set(arguments)
    # Every argument read by name is one of the table's: a typo fails here, not at launch.
    read = {
        c.args[0].value
        for c in src.calls("LaunchConfiguration")
        if c.args and isinstance(c.args[0], ast.Constant)
    }
    read |= {
        s.slice.value
        for s in ast.walk(src.tree)
        if isinstance(s, ast.Subscript) and getattr(s.value, "id", None) == "cfg"
    }
    assert read <= set(arguments), read - set(arguments)


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_parameters_from_arguments_keep_their_type(name):
    """A text argument must reach the node as text: ``instruction:="pick up cup #2"`` parsed as
    YAML loses ``#2``, and a digits-only serial or topic turns into a number."""
    types = _parameter_types()
    src = _LaunchSource(name)
    nodes = src.calls("Node")
    assert nodes
    checked = 0
    for node in nodes:
        # log_level and namespace reach every node.
        assert "ros_arguments" in {k.arg for k in node.keywords}, ast.unparse(node)[:80]
        for param, value in _node_parameters(src, node):
            if _callee(value) == "ParameterValue":
                value_type = next((k.value for k in value.keywords if k.arg == "value_type"), None)
                assert value_type is not None, f"{param}: ParameterValue without value_type"
                assert param in types, f"{param}: not in any params file, type unknown"
                assert ast.unparse(value_type) in types[param], (param, ast.unparse(value_type))
                checked += 1
            else:
                assert not src.is_substitution(value), (
                    f"{name}: parameter {param} = {ast.unparse(value)} is parsed as YAML; "
                    f"wrap it: ParameterValue(..., value_type={min(types.get(param, ['...']))})"
                )
    assert checked
    pushes = src.calls("PushRosNamespace")
    assert pushes and src.is_substitution(pushes[0]), "the namespace argument is never used"
