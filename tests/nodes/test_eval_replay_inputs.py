"""eval_replay offline on what a real arm records: the model's control rate, its gripper
convention, its own cameras and robot state from standard messages.

Bags are written with rosbags (``replay_bags.write_teleop_bag``: two unsynchronised 30 Hz
CompressedImage cameras, JointState and PoseStamped at 100 Hz, TwistStamped at 20 Hz, a sparse
gripper width topic); models are real exports, with the sidecar declaring what an export of
such data declares (``model_variant``). eval_replay runs as a real process.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from replay_bags import (
    CAMS,
    EE_POSE,
    FINGERS,
    GRIPPER_CMD,
    INSTRUCTION,
    JOINT_STATES,
    N_FRAMES,
    PROPRIO,
    T0_NS,
    TELEOP_CAMS,
    TELEOP_LAYOUT,
    TWIST,
    WIDTH_CLOSED,
    WIDTH_OPEN,
    ee_position,
    eval_replay,
    expected_offline,
    frame_image,
    gripper_command,
    joint_position,
    model_variant,
    read_csv,
    teleop_camera_stamps,
    twist_command,
    write_bag,
    write_teleop_bag,
)

from lawm_core import contract
from lawm_core.aggregation import TemporalAggregator
from lawm_core.model import PolicyModel
from lawm_core.preprocess import fit_image
from lawm_core.sidecar import ActionSpace
from lawm_core.text_encoder import TextEncoderRuntime
from lawm_policy.eval_replay import report
from lawm_policy.eval_replay.index import ProprioRequest, open_bag

STEP_NS = 50_000_000  # the debug preset's 20 Hz control period


@pytest.fixture(scope="module")
def teleop_model(exported_debug_model, tmp_path_factory):
    """The debug export declaring what a model trained on teleop bags declares: proprio from
    the end-effector pose and the finger joints, a width gripper (0.08 m open, 0 closed)."""
    dst = tmp_path_factory.mktemp("teleop_model") / "export"
    return model_variant(
        exported_debug_model,
        dst,
        gripper=(WIDTH_OPEN, WIDTH_CLOSED),
        proprio_layout=TELEOP_LAYOUT,
    )


def _export(root, cameras=None, info=None):
    """A real export of the debug-preset policy (untrained weights, action stats +-2): with
    ``cameras`` configured, or with the training run's record of its data's ``info``."""
    import torch

    from lawm.checkpoint import save_policy
    from lawm.config import preset
    from lawm.export import export_policy
    from lawm.models.policy import Policy

    cfg = preset("debug")
    if cameras is not None:
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, cameras=cameras))
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    policy.set_stats({"action_min": np.full(7, -2.0), "action_max": np.full(7, 2.0)})
    save_policy(root / "policy", policy, cfg, {"stage": "test", **(info or {})})
    export_policy(root / "policy", root / "export", action_space="osc_pose_delta")
    return root / "export"


@pytest.fixture(scope="module")
def one_camera_model(tmp_path_factory):
    """A policy with the scene camera only (as configured for one-camera bags)."""
    return _export(tmp_path_factory.mktemp("one_camera"), cameras=("agentview",))


@pytest.fixture(scope="module")
def no_state_model(tmp_path_factory):
    """A two-camera policy trained on data with the scene camera only and no robot state: the
    export takes only what the data had (no proprio input, one camera)."""
    info = {"inputs": {"cameras": ["agentview"], "proprio": False}}
    return _export(tmp_path_factory.mktemp("no_state"), info=info)


def latest(stamps, t: int) -> int:
    """The index of the latest of ``stamps`` at or before ``t`` (-1: none)."""
    return max((i for i, s in enumerate(stamps) if s <= t), default=-1)


def teleop_steps() -> list[int]:
    """The 20 Hz step times (ns) of the teleop bag, by training's rule, worked out by hand:
    from the first scene frame at which every input has spoken (the wrist camera starts 7 ms
    after it, so scene frame 1), to the end of the shortest topic (commands, state, scene
    camera: 2 s)."""
    first = int(teleop_camera_stamps(0)[1])
    return [first + k * STEP_NS for k in range(int((T0_NS + 2 * 10**9 - first) // STEP_NS) + 1)]


def state_time_s(t: int) -> float:
    """The time (s from the start) of the latest 100 Hz robot-state message at or before t."""
    return (t - T0_NS) // 10_000_000 * 0.01


def expected_teleop(model_dir, steps: list[int]) -> np.ndarray:
    """(steps, 7): the runtime core on the teleop bag's steps, inputs computed here from what
    was written: each camera's latest frame at or before the step (PNG: exact), the pose and
    finger joints of the latest state message."""
    model = PolicyModel(model_dir, providers="cpu")
    lang = TextEncoderRuntime(model_dir).embed(INSTRUCTION)
    agg = TemporalAggregator(model.chunk_size, model.action_dim)
    stamps = [teleop_camera_stamps(c).tolist() for c in range(2)]
    out = []
    for t in steps:
        images = {
            cam: fit_image(frame_image(c, latest(stamps[c], t)), model.image_size)
            for c, cam in enumerate(contract.CAMERAS)
        }
        t_s = state_time_s(t)
        proprio = [*ee_position(t_s), *(joint_position(f, t_s) for f in FINGERS)]
        chunk = model.predict(images, np.asarray(proprio, np.float32), lang)
        out.append(model.denormalize(agg.step(chunk)))
    return np.asarray(out)


def teleop_args(bag, model_dir, out, *extra):
    return [
        "--bag", bag, "--out", out, "--offline", "--model-dir", model_dir,
        "--action-topic", TWIST, "--gripper-topic", GRIPPER_CMD, "--threads", "1", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------ teleop bag
@pytest.mark.ros
@pytest.mark.parametrize("fingers_apart", [False, True])
def test_teleop_bag_replays_at_the_model_rate_with_its_gripper_and_proprio(
    teleop_model, tmp_path, fingers_apart
):
    """30 Hz cameras, 100 Hz robot state, 20 Hz commands: the model (20 Hz) is run on a 20 Hz
    grid (training's rule), its proprio assembled from PoseStamped + JointState by name (the
    fingers in the arm's messages or in their own), its gripper scored by its width
    convention, for the recorded width commands too."""
    bag = write_teleop_bag(tmp_path / "teleop", fingers_apart=fingers_apart)
    out = tmp_path / "out"
    res = eval_replay(
        *teleop_args(bag, teleop_model, out),
        "--proprio-pose-topic", EE_POSE, "--proprio-joint-states-topic", JOINT_STATES,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())
    assert result["topics"]["images"] == TELEOP_CAMS  # compressed, guessed by name
    assert result["topics"]["proprio_pose"] == EE_POSE
    assert result["topics"]["proprio_joint_states"] == JOINT_STATES
    assert result["topics"]["proprio"] is None
    rates = result["rates"]
    assert rates["cameras_hz"] == {"agentview": 30.0, "eye_in_hand": 30.0}
    assert rates["topics_hz"][JOINT_STATES] == 100.0 and rates["topics_hz"][TWIST] == 20.0
    assert rates["steps_hz"] == rates["model_control_rate_hz"] == 20.0
    assert "20 Hz grid" in rates["stepping"]
    steps = teleop_steps()
    assert len(steps) == 40 and steps[0] == T0_NS + 33_333_333
    assert result["frames"]["in_bag"] == result["frames"]["answered"] == len(steps)
    assert result["warnings"] == []
    assert result["model"]["proprio_layout"] == list(TELEOP_LAYOUT)

    pred, rec, _ = read_csv(out / "predictions.csv")
    np.testing.assert_allclose(pred, expected_teleop(teleop_model, steps), atol=1e-5)
    times = [(t - T0_NS) * 1e-9 for t in steps]
    commands = [twist_command((t - T0_NS) // STEP_NS * 0.05) for t in steps]  # latest 20 Hz
    np.testing.assert_allclose(rec[:, :6], commands, atol=1e-12)
    np.testing.assert_allclose(rec[:, 6], [gripper_command(t) for t in times])

    m = result["metrics"]
    assert m["gripper_scoring"]["convention"] == "width"
    assert (m["gripper_scoring"]["open"], m["gripper_scoring"]["closed"]) == (0.08, 0.0)
    assert str(teleop_model.resolve()) in m["gripper_scoring"]["source"]
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    rec_closed = [r.split(",")[-1] for r in rows]
    assert rec_closed == ["1" if t >= 1.0 else "0" for t in times]  # width 0 = closed
    pred_closed = pred[:, 6] < (WIDTH_OPEN + WIDTH_CLOSED) / 2
    agree = np.mean(pred_closed == (np.asarray(times) >= 1.0))
    assert m["gripper_agreement"] == pytest.approx(agree)


def test_gripper_scoring_follows_the_declared_convention():
    """Width 0.08 open, 0 closed: a prediction of 0.005 is closed like the recorded 0 (the
    sign rule, closed = value > 0, read both the other way round)."""
    width = ActionSpace.for_kind("twist")
    width = dataclasses.replace(width, gripper="width", gripper_open=0.08, gripper_closed=0.0)
    scoring = report.GripperScoring(width, "test")
    pred = np.zeros((4, 7))
    rec = np.zeros((4, 7))
    pred[:, 6] = [0.075, 0.005, 0.03, np.nan]
    rec[:, 6] = [0.08, 0.0, 0.0, 0.0]
    m = report.compute_metrics(pred, rec, scoring)
    assert m["gripper_frames"] == 3
    assert m["gripper_agreement"] == pytest.approx(1.0)
    assert m["gripper_closed_share"] == {"predicted": pytest.approx(2 / 3), "recorded": 2 / 3}
    signs = report.compute_metrics(np.sign(pred - 0.04), np.sign(0.04 - rec))
    assert signs["gripper_scoring"]["convention"] == "sign"  # the default: -1 open, +1 closed
    assert signs["gripper_agreement"] == pytest.approx(0.0)  # inverted on purpose


# ------------------------------------------------------------------------------ robot state
@pytest.mark.ros
@pytest.mark.parametrize(
    ("case", "bag_kwargs", "extra", "needle"),
    [
        (
            "missing_joint",
            {"drop_joint": FINGERS[1]},
            ["--proprio-pose-topic", EE_POSE, "--proprio-joint-states-topic", JOINT_STATES],
            f"no message names joint(s) ['{FINGERS[1]}'] of the model's proprio_layout",
        ),
        (
            "no_joint_states_flag",
            {},
            ["--proprio-pose-topic", EE_POSE],
            f"joint:{FINGERS[0]} needs --proprio-joint-states-topic",
        ),
        ("no_robot_state", {}, [], "the model takes robot state"),
        (
            "array_and_messages",
            {},
            ["--proprio-topic", "/some/array", "--proprio-pose-topic", EE_POSE],
            "pass either the model-layout array or the standard messages",
        ),
    ],
)
def test_robot_state_the_bag_cannot_give_is_refused_clearly(
    teleop_model, tmp_path, case, bag_kwargs, extra, needle
):
    bag = write_teleop_bag(tmp_path / "teleop", seconds=0.3, **bag_kwargs)
    res = eval_replay(*teleop_args(bag, teleop_model, tmp_path / "out", *extra))
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr, res.stderr
    assert res.stderr.startswith("eval_replay: error:") and "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "report.json").exists()
    if case == "missing_joint":  # it names what the topic has
        assert FINGERS[0] in res.stderr and "fr3_joint1" in res.stderr
    if case == "no_robot_state":  # and what to pass
        assert "--proprio-joint-states-topic" in res.stderr
        assert "--proprio-topic none" in res.stderr


def test_a_model_without_robot_state_reads_no_proprio_topic(tmp_path):
    """proprio_dim 0: the bag's *proprio* topic is not read (nor required); naming one says it
    is not used."""
    bag = write_bag(tmp_path / "bag", n=5)
    index = open_bag(bag, proprio=ProprioRequest(layout=()))
    assert index.selection.proprio is None and index.proprio is None
    assert index.notes == []
    index = open_bag(bag, proprio=ProprioRequest(layout=(), topic=PROPRIO))
    assert index.selection.proprio is None and index.proprio is None
    assert index.notes == [f"the model takes no robot state: ['{PROPRIO}'] not used"]
    # A model with robot state gets the array in its layout.
    index = open_bag(bag, proprio=ProprioRequest(layout=contract.PROPRIO_LAYOUT))
    assert index.selection.proprio == PROPRIO and index.proprio.shape == (5, 5)


# ------------------------------------------------------------------------------ cameras
@pytest.mark.ros
def test_a_one_camera_model_replays_its_two_camera_training_bag(one_camera_model, tmp_path):
    bag = write_bag(tmp_path / "bag", "mcap")  # two cameras
    out = tmp_path / "out"
    res = eval_replay(
        "--bag", bag, "--out", out, "--offline", "--model-dir", one_camera_model,
        "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())
    assert result["model"]["cameras"] == ["agentview"]
    assert result["topics"]["images"] == {"agentview": CAMS["agentview"]}
    assert result["warnings"] == [
        f"camera topics {{'eye_in_hand': '{CAMS['eye_in_hand']}'}} not replayed: the model "
        "takes ['agentview']"
    ]
    assert result["frames"]["answered"] == N_FRAMES
    pred, _, _ = read_csv(out / "predictions.csv")
    np.testing.assert_allclose(pred, expected_offline(one_camera_model), atol=1e-5)
    # Naming only the model's camera is enough too; a model camera without a topic is not.
    res = eval_replay(
        "--bag", bag, "--out", tmp_path / "o2", "--offline", "--model-dir", one_camera_model,
        "--image-topic", f"eye_in_hand={CAMS['eye_in_hand']}",
    )  # fmt: skip
    assert res.returncode == 2
    assert "no image topic is given for ['agentview']" in res.stderr


@pytest.mark.ros
def test_a_model_without_robot_state_replays_a_bag_with_one(no_state_model, tmp_path):
    """Exported without proprio (its data had none) and with one camera: the bag's proprio
    and second camera are not needed, not read, and said so."""
    bag = write_bag(tmp_path / "bag", "sqlite3")
    out = tmp_path / "out"
    res = eval_replay(
        "--bag", bag, "--out", out, "--offline", "--model-dir", no_state_model,
        "--threads", "1", "--proprio-topic", PROPRIO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())
    assert result["model"]["proprio_layout"] == [] and result["model"]["cameras"] == ["agentview"]
    assert result["topics"]["proprio"] is None
    assert f"the model takes no robot state: ['{PROPRIO}'] not used" in result["warnings"]
    assert result["frames"]["answered"] == N_FRAMES
    pred, _, _ = read_csv(out / "predictions.csv")
    np.testing.assert_allclose(pred, expected_offline(no_state_model), atol=1e-5)
