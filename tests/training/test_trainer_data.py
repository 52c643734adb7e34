"""What the training data is, recorded and enforced by the trainer and the training CLI: the
control rate, the proprio layout (fine-tuning from another layout re-initialises the proprio
input layer), the inputs present, the gripper convention. Data written here as third-party
tools write it (rosbags; h5py in LIBERO's layout)."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from datafiles import (
    TELEOP_FRONT,
    TELEOP_GRIPPER,
    TELEOP_POSE,
    TELEOP_TWIST,
    write_libero,
    write_teleop_bag,
)

from lawm.checkpoint import load_tensors, save_policy
from lawm.cli import main
from lawm.config import preset
from lawm.data import DataError, RosbagOptions, open_sources
from lawm.models.policy import Policy
from lawm.trainer import (
    build_objective,
    check_gripper_values,
    init_policy_from,
    train,
    with_proprio_layout,
)
from lawm_core import contract

LAYOUT = ("ee_x", "ee_y", "ee_z", "joint:joint2", "joint:finger_joint")  # 5 values, not LIBERO's
BAG_FLAGS = ["--action-topic", TELEOP_TWIST, "--gripper-topic", TELEOP_GRIPPER]
PROPRIO_FLAGS = ["--proprio-pose-topic", TELEOP_POSE, "--proprio-joints", "joint2,finger_joint"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    write_teleop_bag(root / "episode_0", seconds=1.2, pose=True)
    write_teleop_bag(root / "episode_1", seconds=1.0, pose=True, storage="sqlite3")
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A policy as pretraining leaves it (trained on data in the default layout, recorded
    the way runs before layouts were recorded: no proprio_layout in its info)."""
    d = tmp_path_factory.mktemp("pre") / "policy"
    cfg = preset("debug")
    torch.manual_seed(7)
    save_policy(d, Policy(cfg.policy), cfg, {"stage": "pretrain"})
    return d


def _finetune(tmp_path, *args):
    argv = ["finetune", "--preset", "debug", "--steps", "2", "--device", "cpu", "--quiet"]
    argv += ["--lang-cache", str(tmp_path / "lang.safetensors"), "--out", str(tmp_path / "run")]
    return main([*argv, *args])


def test_finetune_on_teleop_bags_records_rate_layout_inputs_and_gripper(
    bags, pretrained, tmp_path, capsys
):
    code = _finetune(
        tmp_path, "--data", str(bags), *BAG_FLAGS, *PROPRIO_FLAGS, "--init", str(pretrained)
    )
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    # Stated, not silent: the resampling (with the recorded rates) and the re-initialisation.
    assert "resampled to 20 Hz steps" in err and "30.0 Hz" in err and "100.0 Hz" in err
    assert "the proprio input layer is re-initialised" in err and str(pretrained) in err
    saved = json.loads((tmp_path / "run" / "policy" / "config.json").read_text())
    info = saved["info"]
    assert info["control_rate_hz"] == 20.0 and saved["config"]["policy"]["control_rate_hz"] == 20
    assert info["proprio_layout"] == list(LAYOUT)
    assert saved["config"]["policy"]["proprio_dim"] == 5
    assert info["inputs"] == {"cameras": ["agentview", "eye_in_hand"], "proprio": True}
    assert info["gripper"] == {"convention": "sign", "open": -1.0, "closed": 1.0}
    assert info["action_space"] == "twist"
    assert "(proprio input layer re-initialised)" in info["init_from"]


def test_inputs_name_only_what_the_data_had(bags, tmp_path, capsys):
    """One camera and no robot state: the record says so (export leaves the rest out)."""
    args = ["--data", str(bags), *BAG_FLAGS, "--image-topic", f"agentview={TELEOP_FRONT}"]
    code = _finetune(tmp_path, *args, "--control-rate-hz", "10")
    assert code == 0, capsys.readouterr().err[-3000:]
    info = json.loads((tmp_path / "run" / "policy" / "config.json").read_text())["info"]
    assert info["inputs"] == {"cameras": ["agentview"], "proprio": False}
    assert info["proprio_layout"] == list(contract.PROPRIO_LAYOUT)
    assert info["control_rate_hz"] == 10.0


def test_init_from_another_layout_reinitialises_only_the_proprio_input_layer(pretrained, caplog):
    pre = load_tensors(pretrained / "model.safetensors")
    first = {"proprio_mlp.0.weight", "proprio_mlp.0.bias", "proprio_mean", "proprio_std"}
    for layout in (contract.PROPRIO_LAYOUT, LAYOUT, ("joint:a", "joint:b")):
        cfg = with_proprio_layout(preset("debug"), layout)
        torch.manual_seed(0)
        obj = build_objective("finetune", cfg)
        fresh = {k: v.clone() for k, v in obj.policy.state_dict().items()}
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lawm"):
            note = init_policy_from(obj, pretrained, proprio_layout=layout)
        got = obj.policy.state_dict()
        same = tuple(layout) == contract.PROPRIO_LAYOUT
        for k, v in got.items():
            want = fresh[k] if (k in first and not same) else pre[k]
            assert torch.equal(v, want), (layout, k)
        assert got["proprio_mlp.0.weight"].shape[1] == len(layout)
        assert ("re-initialised" in note) != same
        said = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
        assert len(said) == (0 if same else 1)
        if not same:
            assert str(list(layout)) in said[0] and str(list(contract.PROPRIO_LAYOUT)) in said[0]


def test_episodes_at_another_rate_are_refused_naming_the_flag(bags, tmp_path):
    # Opened without a rate, the 30 Hz front camera clocks the steps: not the model's 20 Hz.
    sources = open_sources(bags, options=RosbagOptions(action_topic=TELEOP_TWIST))
    with pytest.raises(
        DataError, match=r"step at 30\.0 Hz .* model runs at 20 Hz .*control_rate_hz=20\)"
    ):
        train("finetune", preset("debug"), sources, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_mixed_proprio_layouts_are_refused(bags, tmp_path):
    write_libero(tmp_path / "demos.hdf5", lengths=(6,))
    libero = open_sources(tmp_path / "demos.hdf5")
    opts = RosbagOptions(action_topic=TELEOP_TWIST, proprio_pose_topic=TELEOP_POSE)
    teleop = open_sources(bags, options=RosbagOptions(**{**opts.__dict__, "control_rate_hz": 20}))
    with pytest.raises(DataError, match="differ in their robot state") as err:
        train("finetune", preset("debug"), libero + teleop, tmp_path / "r", progress=False)
    assert "['ee_x', 'ee_y', 'ee_z']" in str(err.value) and "--proprio-pose-topic" in str(
        err.value
    )


def test_gripper_flags_are_checked_against_each_other_and_the_data(bags, tmp_path, capsys):
    code = _finetune(tmp_path, "--data", str(bags), *BAG_FLAGS, "--gripper-convention", "width")
    err = capsys.readouterr().err
    assert code == 2 and "error: finetune: --gripper-convention width needs --gripper-open" in err
    code = _finetune(tmp_path, "--data", str(bags), *BAG_FLAGS, "--gripper-open", "0.08")
    assert code == 2 and "need --gripper-convention width" in capsys.readouterr().err
    # LIBERO data writes the gripper as a sign: a width declaration contradicts it.
    write_libero(tmp_path / "demos.hdf5", lengths=(6,))
    width = ["--gripper-convention", "width", "--gripper-open", "0.08", "--gripper-closed", "0"]
    code = _finetune(tmp_path, "--data", str(tmp_path / "demos.hdf5"), *width)
    err = capsys.readouterr().err
    assert (
        code == 2 and "writes the gripper as 'sign'" in err and "drop --gripper-convention" in err
    )
    assert "Traceback" not in err


def test_gripper_values_unlike_the_convention_warn():
    stats = {
        "action_min": np.array([0, 0, 0, 0, 0, 0, 0.0]),
        "action_max": np.array([1, 1, 1, 1, 1, 1, 0.08]),
        "has_action_stats": np.array(True),
    }
    sign = {"convention": "sign", "open": -1.0, "closed": 1.0}
    with pytest.warns(UserWarning, match="looks like a width .* --gripper-convention width"):
        check_gripper_values(sign, stats)
    width = {"convention": "width", "open": 0.08, "closed": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_gripper_values(width, stats)  # in range: no warning
    stats["action_min"][6], stats["action_max"][6] = -1.0, 1.0
    with pytest.warns(UserWarning, match="outside the declared width gripper"):
        check_gripper_values(width, stats)
