"""lawm_bringup: params files and launch descriptions.

`launch` is not installable here, so the launch files' node sets are started as processes with
the same params files, and the launch files are checked from their source (ast); where `launch`
is importable (the Docker image) the launch descriptions themselves are loaded, and
robot.launch.py is run for each arm to see the policy's outputs reach the arm's topics. The real
arms' params files (config/ur5e.yaml, fr3.yaml, xarm.yaml) are checked against the policy's
declared parameters, the vendor stacks' names (docs/real_arms.md) and the node's own validation.
"""

from __future__ import annotations

import ast
import importlib.util
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import TwistStamped

from lawm_apps.harness import WS_INSTALL, wait_for_publishers, wait_until
from lawm_policy.policy_params import SAFETY_PARAMETERS
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


# -- the real arms' params files and robot.launch.py's arm table -----------------------------
ARM_FILES = {"ur5e": "ur5e.yaml", "fr3": "fr3.yaml", "xarm": "xarm.yaml"}
GENERIC = "robot.yaml"
LIMITS = tuple(n for n in SAFETY_PARAMETERS if n.startswith("max_"))
# What each arm's vendor stack names (docs/real_arms.md lists the sources).
ARM_FACTS = {
    "ur5e": {
        "frame_id": "base_link",
        "pose_tf_frame": "tool0",
        "servo_node": "servo_node",
        "pose_target": False,
        "joint_states_topic": "joint_states",
        "gripper_joints": ["robotiq_85_left_knuckle_joint"],
        "gripper_interface": "gripper_action",
        "gripper_action_name": "robotiq_gripper_controller/gripper_cmd",
    },
    "fr3": {
        "frame_id": "fr3_link0",
        "pose_tf_frame": "fr3_hand_tcp",
        "servo_node": "",
        "pose_target": True,
        "joint_states_topic": "franka_gripper/joint_states",
        "gripper_joints": ["fr3_finger_joint1", "fr3_finger_joint2"],
        "gripper_interface": "gripper_action",
        "gripper_action_name": "franka_gripper/gripper_action",
    },
    "xarm": {
        "frame_id": "link_base",
        "pose_tf_frame": "link_eef",
        "servo_node": "servo_server",
        "pose_target": False,
        "joint_states_topic": "joint_states",
        "gripper_joints": ["drive_joint"],
        "gripper_interface": "gripper_action",
        "gripper_action_name": "xarm_gripper/gripper_action",
        "gripper_command_joints": ["drive_joint"],
    },
}
# LIBERO's Panda finger qpos, the model's proprio convention.
PANDA_OPEN = (0.04, -0.04)
PANDA_CLOSED = (0.0, 0.0)


def _policy_section(name: str) -> dict:
    return yaml.safe_load((SRC / "config" / name).read_text())["lawm_policy"]["ros__parameters"]


def _same_type(value, default) -> bool:
    """Would a ROS parameter declared with ``default`` accept ``value`` from a params file
    (no int for a double, no number for a string, list elements of the declared kind)?"""
    if isinstance(default, list):
        kind = type(default[0])
        return isinstance(value, list) and bool(value) and all(type(v) is kind for v in value)
    return type(value) is type(default)


@pytest.mark.parametrize("arm", sorted(ARM_FILES))
def test_arm_params_are_declared_typed_and_as_the_vendor_stack_names_them(arm):
    from lawm_policy.policy_params import PARAMETERS

    data = yaml.safe_load((SRC / "config" / ARM_FILES[arm]).read_text())
    generic = yaml.safe_load((SRC / "config" / GENERIC).read_text())
    # The same nodes as the generic file, the cameras configured alike.
    assert set(data) == set(generic)
    for node, section in generic.items():
        if node != "lawm_policy":
            assert set(data[node]["ros__parameters"]) == set(section["ros__parameters"]), node
    params = data["lawm_policy"]["ros__parameters"]
    unknown = set(params) - set(PARAMETERS)
    assert not unknown, f"{arm}: not policy parameters (yet?): {sorted(unknown)}"
    for name, value in params.items():
        default = PARAMETERS[name][0]
        assert _same_type(value, default), f"{arm}: {name}={value!r}, declared as {default!r}"
    assert params["start_enabled"] is False, "an arm starts as a dry run"
    for name, value in ARM_FACTS[arm].items():
        assert params.get(name, PARAMETERS[name][0]) == value, f"{arm}: {name}"
    assert params["proprio_topic"] == "", "standard messages, not the model-layout topic"


@pytest.mark.parametrize("arm", sorted(ARM_FILES))
def test_arm_limits_are_positive_and_within_the_generic_ones(arm):
    params, generic = _policy_section(ARM_FILES[arm]), _policy_section(GENERIC)
    for name in LIMITS:
        mine, theirs = np.atleast_1d(params[name]), np.atleast_1d(generic[name])
        assert mine.shape == theirs.shape, name
        assert np.all(mine > 0) and np.all(mine <= theirs), f"{arm}: {name} {mine} vs {theirs}"
    for name in ("linear_scale", "angular_scale"):
        gains = np.asarray(params[name])
        assert np.all(gains > 0) and np.all(gains <= np.asarray(generic[name])), name


@pytest.mark.parametrize("arm", sorted(ARM_FILES))
def test_arm_gripper_maps_open_and_closed_onto_the_model_convention(arm):
    """The arm's own open/closed joint positions, read back through the finger mapping, are
    LIBERO's Panda open and closed finger values; the output interface has what it needs."""
    from lawm_core.robot_state import GripperJoints

    p = _policy_section(ARM_FILES[arm])
    joints = GripperJoints(
        p["gripper_joints"], p["gripper_joint_scale"], p["gripper_joint_offset"]
    )
    names = p["gripper_joints"]
    for position, expected in (
        (p["gripper_open_position"], PANDA_OPEN),
        (p["gripper_closed_position"], PANDA_CLOSED),
    ):
        fingers = joints.fingers(names, [position] * len(names))
        np.testing.assert_allclose(fingers, expected, atol=0.0015, err_msg=f"{arm} at {position}")
    if p["gripper_interface"] == "gripper_action":
        assert p["gripper_action_name"].strip()
    if p["gripper_interface"] == "joint_trajectory" or "gripper_command_joints" in p:
        assert p["gripper_command_joints"] and all(j.strip() for j in p["gripper_command_joints"])
    assert p["gripper_max_effort"] >= 0


@pytest.mark.parametrize("arm", sorted(ARM_FILES))
def test_arm_params_validate_as_the_node_reads_them(arm):
    """Each arm's policy section, read the node's way (undeclared names at their defaults),
    passes the node's own checks at configure: limits, gripper switch, robot I/O."""
    from lawm_policy import policy_params

    section = _policy_section(ARM_FILES[arm])
    p = policy_params.read_params(
        lambda name: section.get(name, policy_params.PARAMETERS[name][0])
    )
    policy_params.safety_limits(p)
    policy_params.gripper_switch(p)
    policy_params.check_robot_io(p)
    if p.pose_target:
        assert p.pose_topic or p.pose_tf_frame


def _launch_table(name: str):
    """A literal module-level table of robot.launch.py (ARMS, OUTPUTS, ARGUMENTS keys)."""
    src = _LaunchSource("robot.launch.py")
    node = src.assigned[name]
    if name == "ARGUMENTS":
        return [ast.literal_eval(k) for k in node.keys]
    return ast.literal_eval(node)


def test_arm_table_names_exactly_the_robot_params_files():
    arms, outputs = _launch_table("ARMS"), _launch_table("OUTPUTS")
    assert set(arms) == {"generic", *ARM_FILES}
    # The params files for robot.launch.py: every one with the cameras it starts.
    robot_files = {
        p.name
        for p in (SRC / "config").glob("*.yaml")
        if "agentview_camera" in yaml.safe_load(p.read_text())
    }
    assert {a["params_file"] for a in arms.values()} == robot_files
    assert arms["generic"]["params_file"] == GENERIC
    assert all(arms[arm]["params_file"] == f for arm, f in ARM_FILES.items())
    for arm, entry in arms.items():
        assert set(entry) == {"params_file", *outputs}, arm
    assert set(outputs) | {"arm", "params_file", "cameras"} <= set(_launch_table("ARGUMENTS"))
    table = _LaunchSource("robot.launch.py").assigned["ARGUMENTS"]
    described = dict(zip(map(ast.literal_eval, table.keys), map(ast.literal_eval, table.values)))
    assert all(arm in described["arm"][1] for arm in arms), "the arm argument lists every arm"


@pytest.mark.parametrize("arm", sorted(ARM_FILES))
def test_arm_default_topics_match_its_params(arm):
    """Where an arm's params produce an output, its launch entry routes it to the arm."""
    entry, p = _launch_table("ARMS")[arm], _policy_section(ARM_FILES[arm])
    if p["servo_node"]:
        assert entry["servo_topic"] == f"{p['servo_node']}/delta_twist_cmds"
    else:
        assert entry["servo_topic"] == "", "no Servo: the twist is left on the policy's topic"
    assert bool(entry["pose_target_topic"]) == p["pose_target"]
    if p["gripper_interface"] == "joint_trajectory":
        assert entry["gripper_trajectory_topic"]


def _arm_settings():
    """robot.launch.py's ``arm_settings`` with its tables, taken from the source: the module
    itself imports `launch`, which is not installable here."""
    src = _LaunchSource("robot.launch.py")
    wanted = {"ARMS", "OUTPUTS", "arm_settings"}
    body = [
        n
        for n in src.tree.body
        if (isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) in wanted)
        or (isinstance(n, ast.FunctionDef) and n.name in wanted)
    ]
    assert len(body) == len(wanted)
    namespace = {"SHARE": SHARE}
    exec(compile(ast.Module(body=body, type_ignores=[]), "robot.launch.py", "exec"), namespace)
    return namespace["arm_settings"]


def test_arm_settings_resolve_params_file_and_remappings():
    arm_settings = _arm_settings()
    none = dict.fromkeys(("params_file", *_launch_table("OUTPUTS")), "")
    params_file, remaps = arm_settings("generic", none)
    assert params_file == str(SHARE / "config" / GENERIC)
    assert dict(remaps) == {
        "~/cmd_twist": "servo_node/delta_twist_cmds",
        "~/cmd_gripper": "gripper/command",
    }
    params_file, remaps = arm_settings("fr3", none)
    assert Path(params_file).name == "fr3.yaml" and Path(params_file).is_file()
    assert dict(remaps) == {
        "~/cmd_gripper": "gripper/command",
        "~/cmd_pose": "cartesian_impedance_controller/equilibrium_pose",
    }, "no Servo on the FR3: the twist stays on ~/cmd_twist"
    _, remaps = arm_settings("xarm", none)
    assert dict(remaps)["~/cmd_twist"] == "servo_server/delta_twist_cmds"
    assert dict(remaps)["~/cmd_gripper_trajectory"] == (
        "xarm_gripper_traj_controller/joint_trajectory"
    )
    # Explicit arguments win; the policy's own name keeps an output where it is.
    given = {**none, "params_file": "/tmp/mine.yaml", "servo_topic": "/other/twist"}
    given["gripper_topic"] = "~/cmd_gripper"
    params_file, remaps = arm_settings("ur5e", given)
    assert params_file == "/tmp/mine.yaml"
    assert dict(remaps) == {"~/cmd_twist": "/other/twist"}
    with pytest.raises(ValueError) as err:
        arm_settings("ur10", none)
    assert all(arm in str(err.value) for arm in ("generic", *ARM_FILES)), err.value


# -- robot.launch.py run for real, where `launch` is installed (the ROS image) ----------------
LAUNCH_RUNNER = """
import sys
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

path, *args = sys.argv[1:]
service = LaunchService()
service.include_launch_description(
    IncludeLaunchDescription(
        PythonLaunchDescriptionSource(path),
        launch_arguments=[tuple(a.split(":=", 1)) for a in args],
    )
)
sys.exit(service.run())
"""


class _Launch:
    """``ros2 launch`` of an installed launch file (through LaunchService, so no ros2cli is
    needed), in its own process group; the harness waits watch it like a node process."""

    def __init__(self, name: str, args: dict[str, str], log_dir: Path) -> None:
        import subprocess
        import sys

        from lawm_apps.harness import node_env

        self.cmd = [sys.executable, "-c", LAUNCH_RUNNER, str(SHARE / "launch" / name)]
        self.cmd += [f"{k}:={v}" for k, v in args.items()]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=node_env(),
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def _runnable_here(arm: str, tmp_path: Path) -> dict[str, str]:
    """Launch arguments that keep ``arm``'s params runnable on this machine: where tf2_ros or
    control_msgs are missing (not on PyPI), a copy of the arm's file takes the pose from a
    topic and drives the gripper through the Float64 command only; in the ROS image, none."""
    overrides = {}
    if arm not in ARM_FILES:
        return {}  # robot.yaml needs neither
    if importlib.util.find_spec("tf2_ros") is None:
        overrides.update(pose_tf_frame="", pose_topic="ee_pose")
    if importlib.util.find_spec("control_msgs") is None:
        overrides.update(gripper_interface="float64")
    if not overrides:
        return {}
    data = yaml.safe_load((SHARE / "config" / ARM_FILES[arm]).read_text())
    data["lawm_policy"]["ros__parameters"].update(overrides)
    path = tmp_path / f"{arm}_here.yaml"
    path.write_text(yaml.safe_dump(data))
    return {"params_file": str(path)}


@pytest.mark.ros
@pytest.mark.parametrize(
    ("arm", "namespace", "topics"),
    [
        ("generic", "", ["/servo_node/delta_twist_cmds", "/gripper/command"]),
        ("ur5e", "", ["/servo_node/delta_twist_cmds", "/gripper/command"]),
        (
            "fr3",
            "",
            [
                "/cartesian_impedance_controller/equilibrium_pose",
                "/lawm_policy/cmd_twist",
                "/gripper/command",
            ],
        ),
        ("xarm", "arm1", ["/arm1/servo_server/delta_twist_cmds", "/arm1/gripper/command"]),
    ],
)
def test_robot_launch_routes_the_policy_outputs_to_the_arm(
    ros_node, exported_debug_model, tmp_path, arm, namespace, topics
):
    pytest.importorskip("launch", reason="`launch` is not on PyPI; runs in the ROS image")
    pytest.importorskip("launch_ros")
    args = {
        "arm": arm,
        "cameras": "false",  # no camera here; the policy configures without frames
        "model_dir": str(exported_debug_model),
        "instruction": INSTRUCTION,
        "namespace": namespace,
        **_runnable_here(arm, tmp_path),
    }
    launch = _Launch("robot.launch.py", args, tmp_path / "logs")
    try:

        def routed():
            return all(
                any(i.node_name == "lawm_policy" for i in ros_node.get_publishers_info_by_topic(t))
                for t in topics
            )

        wait_until(ros_node, routed, 90, f"lawm_policy publishing on {topics}", [launch])
    finally:
        launch.stop()


def test_robot_launch_refuses_an_unknown_arm(tmp_path):
    pytest.importorskip("launch", reason="`launch` is not on PyPI; runs in the ROS image")
    pytest.importorskip("launch_ros")
    import subprocess
    import sys

    from lawm_apps.harness import node_env

    path = SHARE / "launch" / "robot.launch.py"
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH_RUNNER, str(path), "arm:=ur10"],
        capture_output=True,
        text=True,
        env=node_env(),
        timeout=60,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "ur10" in out and all(arm in out for arm in ("generic", *ARM_FILES)), out
