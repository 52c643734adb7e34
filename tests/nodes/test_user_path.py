"""The path a user with a real arm takes, end to end, with real files and real processes:
teleoperation recorded as a ROS 2 robot records it (``replay_bags.write_teleop_bag``: two
unsynchronised 30 Hz CompressedImage cameras, JointState at 100 Hz with the gripper's finger
joints in messages of their own, an end-effector PoseStamped, TwistStamped commands at 20 Hz, a
width-valued gripper command sent on change) -> ``finetune`` -> ``export`` -> ``eval_replay``
offline and live -> the policy node."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from replay_bags import (
    EE_POSE,
    GRIPPER_CMD,
    INSTRUCTION,
    JOINT_STATES,
    TELEOP_CAMS,
    TELEOP_LAYOUT,
    TWIST,
    WIDTH_CLOSED,
    WIDTH_OPEN,
    eval_replay,
    read_csv,
    write_teleop_bag,
)

from lawm_apps.harness import ROOT, node_env

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CAMERAS = [a for cam, topic in TELEOP_CAMS.items() for a in ("--image-topic", f"{cam}={topic}")]
FINGERS = [name.split(":", 1)[1] for name in TELEOP_LAYOUT if name.startswith("joint:")]


def _train(*args: str) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=node_env(),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_path")
    bags = root / "bags"
    for i in range(2):
        write_teleop_bag(bags / f"episode_{i}", fingers_apart=True, codec="jpeg" if i else "png")
    _train(
        "finetune", "--data", bags, "--out", root / "run", "--preset", "debug", "--steps", 30,
        "--batch-size", 8, "--quiet", *CAMERAS, "--action-topic", TWIST,
        "--gripper-topic", GRIPPER_CMD, "--gripper-convention", "width",
        "--gripper-open", WIDTH_OPEN, "--gripper-closed", WIDTH_CLOSED,
        "--proprio-pose-topic", EE_POSE, "--proprio-joints", ",".join(FINGERS),
    )  # fmt: skip
    _train("export", "--policy", root / "run" / "policy", "--out", root / "export")
    return bags, root / "export"


def test_the_export_declares_what_the_bags_hold(exported):
    _, export = exported
    spec = json.loads((export / "policy.json").read_text())
    assert spec["cameras"] == list(TELEOP_CAMS)
    assert spec["proprio_layout"] == list(TELEOP_LAYOUT) and spec["proprio_dim"] == 5
    assert spec["control_rate_hz"] == 20.0  # 30 Hz cameras resampled to the model's rate
    space = spec["action_space"]
    assert space["kind"] == "twist"
    assert space["gripper"] == {"convention": "width", "open": WIDTH_OPEN, "closed": WIDTH_CLOSED}
    # The gripper was learnt from its topic (open, then closed), not a constant.
    norm = spec["normalization"]
    assert norm["action_min"][6] == pytest.approx(WIDTH_CLOSED)
    assert norm["action_max"][6] == pytest.approx(WIDTH_OPEN)


def test_replay_offline_and_live_through_the_node_agree(exported, start_node, tmp_path):
    bags, export = exported
    common = [
        "--bag", bags / "episode_0", *CAMERAS, "--action-topic", TWIST,
        "--gripper-topic", GRIPPER_CMD, "--proprio-pose-topic", EE_POSE,
        "--proprio-joint-states-topic", JOINT_STATES,
    ]  # fmt: skip
    off = tmp_path / "offline"
    res = eval_replay(*common, "--out", off, "--offline", "--model-dir", export)
    assert res.returncode == 0, res.stderr
    report = json.loads((off / "report.json").read_text())
    assert report["rates"]["model_control_rate_hz"] == 20.0
    assert report["metrics"]["gripper_scoring"]["convention"] == "width"
    assert report["frames"]["compared"] >= 30, report["frames"]
    pred_off, rec, _ = read_csv(off / "predictions.csv")
    ok = np.isfinite(rec[:, 6])
    assert set(np.unique(rec[ok, 6])) == {WIDTH_CLOSED, WIDTH_OPEN}  # both states scored
    assert np.std(pred_off[np.isfinite(pred_off[:, 6]), 6]) > 0  # follows the inputs

    # The node as on the robot: compressed cameras, the pose, the joint states.
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params={
            "model_dir": str(export),
            "camera_topics": list(TELEOP_CAMS.values()),
            "pose_topic": EE_POSE,
            "joint_states_topic": JOINT_STATES,
            "frame_id": "fr3_link0",
            "instruction": INSTRUCTION,
            "threads": 1,
        },
    )
    live = tmp_path / "live"
    res = eval_replay(
        *common, "--out", live, "--policy-ns", "/lawm_policy", "--rate", "0.5",
        "--wait-timeout", "60",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + "\n--- policy node\n" + policy.tail()
    assert policy.alive() and "Traceback" not in policy.tail(200)
    report = json.loads((live / "report.json").read_text())
    assert sorted(report["replay"]["compressed_as_recorded"]) == sorted(TELEOP_CAMS.values())
    frames = report["frames"]
    assert frames["answered"] > frames["published"] // 2, (frames, policy.tail())
    pred_live, _, latency = read_csv(live / "predictions.csv")
    # Pair each answered frame with the offline step it falls in (the latest grid step at or
    # before the frame's time): the same images and robot state, up to the frame clock.
    t_off, t_live = _times(off / "predictions.csv"), _times(live / "predictions.csv")
    pairs = [
        (i, j)
        for i, t in enumerate(t_live)
        if np.isfinite(latency[i])
        and np.isfinite(pred_live[i]).all()
        and (j := int(np.searchsorted(t_off, t + 1e-9)) - 1) >= 0
        and np.isfinite(pred_off[j]).all()
    ]
    assert len(pairs) >= 20, (len(pairs), frames)
    live_i, off_j = map(list, zip(*pairs))
    diff = np.abs(pred_live[live_i] - pred_off[off_j]).max(axis=1)
    # The control: the same replay with the training mean instead of the robot state shows
    # how much the robot state moves the output; the node's difference must be far smaller.
    mean = tmp_path / "mean"
    res = eval_replay(
        *common[:-4], "--proprio-topic", "none", "--out", mean, "--offline", "--model-dir", export
    )
    assert res.returncode == 0, res.stderr
    pred_mean, _, _ = read_csv(mean / "predictions.csv")
    control = np.abs(pred_mean[off_j] - pred_off[off_j]).max(axis=1)
    print(
        f"live vs offline: median {np.median(diff):.2e}, first {diff[0]:.2e}; "
        f"offline with the proprio mean: median {np.median(control):.2e}"
    )
    assert diff[0] < 1e-3  # the first command after the reset: one chunk, the same inputs
    assert np.median(diff) < 0.25 * np.median(control), (np.median(diff), np.median(control))


def _times(path) -> np.ndarray:
    import csv

    return np.asarray([float(r["time_s"]) for r in csv.DictReader(path.open())])
