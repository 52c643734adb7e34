"""The Docker images' files, checked statically. No Docker engine here, so the images are never
built on this machine: these checks keep the files consistent with the repository and with what
`make setup` proves.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lawm_apps.harness import ROOT, WS_INSTALL

DOCKER = ROOT / "docker"
# Where the ROS image builds the workspace (COPY ros2_ws/src to <ws>/src, colcon build in <ws>).
IMAGE_WS_INSTALL = "/opt/lawm/ws/install/"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _shell_commands(script: str) -> list[list[str]]:
    """A RUN line split into simple commands (at &&, ||, ;, |), each a list of words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", ">", ">>"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pip_requirements(dockerfile: Path) -> list[str]:
    """Every requirement named on a `pip install` command of the Dockerfile's RUN lines."""
    found = []
    for keyword, args in _instructions(dockerfile):
        if keyword != "RUN":
            continue
        for words in _shell_commands(args):
            pip = next((i for i, w in enumerate(words[:3]) if w.split("/")[-1] == "pip"), None)
            if pip is None or words[pip + 1 : pip + 2] != ["install"]:
                continue
            options_with_value = {"-r", "-c", "--requirement", "--constraint", "-t", "--target"}
            after = words[pip + 2 :]
            for i, word in enumerate(after):
                if word.startswith("-") or (i and after[i - 1] in options_with_value):
                    continue
                if word != ".":
                    found.append(word)
    return found


@pytest.mark.parametrize("name", ["ros.Dockerfile", "train.Dockerfile"])
def test_dockerfile_copy_sources_exist(name):
    for keyword, args in _instructions(DOCKER / name):
        if keyword == "COPY":
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            assert sources, args
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"


def test_ros_image_installs_gpu_onnxruntime_and_lock_pins():
    dockerfile = DOCKER / "ros.Dockerfile"
    instructions = _instructions(dockerfile)
    assert instructions[0] == ("FROM", "ros:jazzy-ros-base")
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "ros-jazzy-cv-bridge" in runs and "libusb-1.0-0" in runs
    assert "colcon build" in runs and "--symlink-install" not in runs
    # The packages' own tests run on the built workspace, and a failure fails the build.
    assert (
        runs.index("colcon build") < runs.index("colcon test ") < runs.index("colcon test-result")
    )

    names = {re.split(r"[\[<>=!~]", req)[0].lower(): req for req in _pip_requirements(dockerfile)}
    assert "onnxruntime-gpu" in names
    assert "onnxruntime" not in names  # the CPU build would clobber the GPU one
    locked = dict(
        line.lower().replace("_", "-").split("==", 1)
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pinned = [req.split("==") for req in names.values() if "==" in req]
    assert {"pyrealsense2", "tokenizers"} <= {name for name, _ in pinned}
    for name, version in pinned:  # the same pins `make setup` installs, where they overlap
        assert locked.get(re.sub(r"\[.*\]", "", name), version) == version, name

    entrypoint = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint and "entrypoint.sh" in entrypoint[-1]


def _apt_packages(dockerfile: Path) -> set[str]:
    """Every package named on an `apt-get install` command of the Dockerfile's RUN lines."""
    found = set()
    for keyword, args in _instructions(dockerfile):
        if keyword == "RUN":
            for words in _shell_commands(args):
                if words[:2] == ["apt-get", "install"]:
                    found |= {w for w in words[2:] if not w.startswith("-")}
    return found


@pytest.mark.parametrize("package", ["lawm_core", "lawm_policy", "lawm_bringup"])
def test_ros_image_installs_the_rosdep_keys_of_the_runtime_packages(package):
    # The Ubuntu package of each rosdep key, as rosdep resolves it on Ubuntu 24.04 for Jazzy:
    # what the nodes import, and what their tests need (the image runs `colcon test`).
    # (lawm_sim's are left out: the image runs no simulator.)
    apt = _apt_packages(DOCKER / "ros.Dockerfile")
    root = ET.parse(ROOT / "ros2_ws" / "src" / package / "package.xml").getroot()
    deps = [*root.iter("depend"), *root.iter("exec_depend"), *root.iter("test_depend")]
    assert deps, f"{package}/package.xml names no dependencies"
    for dep in deps:
        key = dep.text.strip()
        if key.startswith("lawm_"):
            continue  # built from ros2_ws/src
        name = key if key.startswith("python3-") else "ros-jazzy-" + key.replace("_", "-")
        assert name in apt, f"{package} needs {key}: apt-get install {name}"


def test_ros_image_installs_the_arm_and_camera_interfaces():
    # The arm interfaces are also lawm_policy exec_depends (checked above); the RealSense ROS
    # driver and image_transport's plugins are imported by no node of ours, but the image
    # carries them so a launch can start the standard driver and use compressed transports.
    apt = _apt_packages(DOCKER / "ros.Dockerfile")
    wanted = {
        "ros-jazzy-moveit-msgs",  # MoveIt Servo's ServoCommandType
        "ros-jazzy-control-msgs",  # GripperCommand
        "ros-jazzy-trajectory-msgs",
        "ros-jazzy-tf2-ros",
        "ros-jazzy-realsense2-camera",
        "ros-jazzy-image-transport",
        "ros-jazzy-image-transport-plugins",  # compressed images
        "ros-jazzy-ros2cli",
        "ros-jazzy-ros2launch",
    }
    assert wanted <= apt, wanted - apt


def test_ros_image_points_fastdds_at_the_installed_profile():
    env = [args for keyword, args in _instructions(DOCKER / "ros.Dockerfile") if keyword == "ENV"]
    values = dict(word.split("=", 1) for args in env for word in shlex.split(args) if "=" in word)
    path = values["FASTRTPS_DEFAULT_PROFILES_FILE"]
    assert path.startswith(IMAGE_WS_INSTALL), path
    # The same relative path in the workspace `make setup` builds with the same setup.py.
    installed = WS_INSTALL / path.removeprefix(IMAGE_WS_INSTALL)
    assert installed.is_file(), f"{installed} is not installed by colcon"
    assert ET.parse(installed).getroot().tag.endswith("profiles")


def test_ros_image_runs_as_a_user_that_is_not_root():
    instructions = _instructions(DOCKER / "ros.Dockerfile")
    users = [i for i, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    assert users, "no USER: the nodes would run as root"
    user = instructions[users[-1]][1].split(":")[0]
    assert user not in ("root", "0"), user
    # Created by useradd before it is switched to; the entrypoint runs after the switch.
    created = [
        words
        for keyword, args in instructions[: users[-1]]
        if keyword == "RUN"
        for words in _shell_commands(args)
        if words[0] == "useradd"
    ]
    assert any(words[-1] == user for words in created), created
    entrypoint = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert instructions.index(("ENTRYPOINT", entrypoint[-1])) > users[-1]


def test_train_image_keeps_the_base_cuda_torch():
    dockerfile = DOCKER / "train.Dockerfile"
    instructions = _instructions(dockerfile)
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("pytorch/pytorch:2.13.0")
    names = [re.split(r"[\[<>=!~]", r)[0].lower() for r in _pip_requirements(dockerfile)]
    assert "torch" not in names and "onnxruntime-gpu" not in names
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    # The same editable distributions `make setup` installs: training imports the core and sim.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for dist in ("ros2_ws/src/lawm_core", "ros2_ws/src/lawm_sim"):
        assert dist in setup and f"-e {dist}" in runs, dist
    assert "-e ." in runs


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "ros2 launch lawm_bringup robot.launch.py"),
        (["model_dir:=/models"], "ros2 launch lawm_bringup robot.launch.py model_dir:=/models"),
        (["--show-args"], "ros2 launch lawm_bringup robot.launch.py --show-args"),
        (["ros2", "topic", "list"], "ros2 topic list"),
    ],
)
def test_entrypoint_launches_or_runs_a_command(tmp_path, args, expected):
    # Stand-ins for the image's ROS setup files and `ros2`, to exercise the dispatch logic.
    setup = tmp_path / "setup.bash"
    setup.write_text(f'export PATH="{tmp_path}:$PATH"\n')
    fake = tmp_path / "ros2"
    fake.write_text('#!/bin/sh\necho "ros2 $*"\n')
    fake.chmod(0o755)
    env = dict(os.environ, ROS_SETUP=str(setup), LAWM_WS_SETUP=str(setup))
    env.pop("LAUNCH_FILE", None)
    out = subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
