"""The action contract in physical units: policy.json declares what a raw (denormalised) action
is (lawm_core.sidecar.ActionSpace), and lawm_core.command.ActionMapper turns it into a twist in
those units. Real exports of the debug policy run on onnxruntime; no mocks."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lawm.checkpoint import save_policy
from lawm.config import preset
from lawm.export import ExportError, export_policy
from lawm.models.policy import Policy
from lawm_core import contract
from lawm_core.command import ActionMapper
from lawm_core.errors import ModelLoadError
from lawm_core.model import PolicyModel
from lawm_core.runner import PolicyRunner
from lawm_core.sidecar import ActionSpace, PolicySidecar

OSC = contract.ACTION_OSC_POSE_DELTA
TWIST = contract.ACTION_TWIST
# Asymmetric statistics, each axis with raw 0 at one end of its range: a raw 0 is a normalised
# -1 or +1, which the old mapping (normalised action x scale) sent as full speed.
ACTION_MIN = np.array([0.0, -3.0, 0.0, -0.5, 0.0, -1.0, -1.0])
ACTION_MAX = np.array([1.0, 0.0, 2.0, 0.0, 0.7, 0.0, 1.0])


def _export(root: Path, policy: Policy, kind: str | None, info: dict | None = None) -> Path:
    cfg = preset("debug")
    save_policy(root / "policy", policy, cfg, info or {"stage": "test"})
    with warnings.catch_warnings():  # the tracer's deprecation chatter is not ours
        warnings.simplefilter("ignore")
        export_policy(root / "policy", root / "export", text_encoder=False, action_space=kind)
    return root / "export"


@pytest.fixture(scope="module")
def still_models(tmp_path_factory) -> dict[str, Path]:
    """kind -> an export of a policy whose raw action is exactly 0 whatever it sees.

    The head's last layer is zeroed and its bias saturates tanh at the end of each axis's range
    where raw 0 lies (the gripper's range [-1, 1] is centred on 0: bias 0).
    """
    cfg = preset("debug")
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    policy.set_stats({"action_min": ACTION_MIN, "action_max": ACTION_MAX})
    bias = np.where(ACTION_MIN == 0, -20.0, np.where(ACTION_MAX == 0, 20.0, 0.0))
    last = policy.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(np.tile(bias, cfg.policy.chunk_size), dtype=torch.float32))
    root = tmp_path_factory.mktemp("still")
    return {kind: _export(root / kind, policy, kind) for kind in contract.ACTION_KINDS}


def _inputs(model: PolicyModel, seed: int):
    rng = np.random.default_rng(seed)
    s = model.image_size
    images = {c: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for c in model.cameras}
    lang = rng.normal(size=model.lang_dim).astype(np.float32)
    return images, lang / np.linalg.norm(lang)


@pytest.mark.parametrize("kind", contract.ACTION_KINDS)
def test_a_raw_zero_is_exactly_a_zero_twist_whatever_the_statistics(still_models, kind):
    model = PolicyModel(still_models[kind], providers="cpu", threads=1)
    assert model.spec.action_space.kind == kind
    np.testing.assert_array_equal(model.action_min, ACTION_MIN)
    runner = PolicyRunner(model)
    mapper = ActionMapper(model.spec.action_space, model.control_rate_hz)
    for t in range(3):
        images, lang = _inputs(model, t)
        r = runner.step(images, None, lang, t / model.control_rate_hz)
        assert r.acted, r.reason
        # The normalised action is at the ends of the range, the raw one is "hold still".
        np.testing.assert_array_equal(np.abs(r.action[:6]), np.ones(6))
        np.testing.assert_array_equal(r.raw, np.zeros(7))
        cmd = mapper.to_command(r.raw)
        assert cmd.linear.tolist() == [0.0] * 3 and cmd.angular.tolist() == [0.0] * 3
        assert cmd.gripper == contract.GRIPPER_OPEN  # raw 0: halfway, not beyond it


def test_a_raw_action_gives_the_twist_its_units_imply(still_models):
    spec = PolicySidecar.read(still_models[OSC])
    assert spec.control_rate_hz == 20.0
    raw = np.array([0.4, -0.2, 0.0, 0.1, 0.0, -0.3, 0.9])
    # OSC_POSE: 0.05 m and 0.5 rad per unit per 50 ms step -> 1 m/s and 10 rad/s per unit.
    mapper = ActionMapper(spec.action_space, spec.control_rate_hz)
    cmd = mapper.to_command(raw)
    np.testing.assert_allclose(cmd.linear, [0.4, -0.2, 0.0], rtol=1e-12)
    np.testing.assert_allclose(cmd.angular, [1.0, 0.0, -3.0], rtol=1e-12)
    assert cmd.gripper == contract.GRIPPER_CLOSE
    gained = ActionMapper(spec.action_space, 20.0, [0.5, 1.0, 0.0], [1.0, 0.25, 0.1])
    cmd = gained.to_command(raw)
    np.testing.assert_allclose(cmd.linear, [0.2, -0.2, 0.0], rtol=1e-12)
    np.testing.assert_allclose(cmd.angular, [1.0, 0.0, -0.3], rtol=1e-12)
    # The same displacement per step at 10 Hz is half the speed.
    slow = ActionMapper(spec.action_space, 10.0).to_command(raw)
    np.testing.assert_allclose(slow.linear, [0.2, -0.1, 0.0], rtol=1e-12)

    # A recorded twist is already m/s and rad/s.
    twist = PolicySidecar.read(still_models[TWIST]).action_space
    cmd = ActionMapper(twist, 20.0, [0.5] * 3, [1.0] * 3).to_command(raw)
    np.testing.assert_allclose(cmd.linear, [0.2, -0.1, 0.0], rtol=1e-12)
    np.testing.assert_allclose(cmd.angular, [0.1, 0.0, -0.3], rtol=1e-12)


def test_the_gripper_follows_the_declared_convention():
    sign = ActionSpace.for_kind(TWIST)
    mapper = ActionMapper(sign, 20.0, gripper_threshold=0.6)
    # Sign: -1 open, +1 closed; 0.3 is 65 % of the way to closed, 0.2 exactly 60 %.
    assert mapper.to_command(np.r_[np.zeros(6), 0.3]).gripper == contract.GRIPPER_CLOSE
    assert mapper.to_command(np.r_[np.zeros(6), 0.2]).gripper == contract.GRIPPER_OPEN
    # Width: a finger opening in m, 0.08 open and 0.0 closed (closing is a smaller value).
    width = dataclasses.replace(
        sign, gripper=contract.GRIPPER_WIDTH, gripper_open=0.08, gripper_closed=0.0
    )
    mapper = ActionMapper(width, 20.0)
    assert mapper.to_command(np.r_[np.zeros(6), 0.01]).gripper == contract.GRIPPER_CLOSE
    assert mapper.to_command(np.r_[np.zeros(6), 0.07]).gripper == contract.GRIPPER_OPEN


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(linear_scale=[1.5, 1.0, 1.0]),
            r"linear_scale must be 3 gains in \[0, 1\], got \[1.5",
        ),
        (dict(angular_scale=[1.0, -0.1, 1.0]), r"angular_scale .* got \[1.0, -0.1, 1.0\]"),
        (dict(linear_scale=[1.0, 1.0]), r"linear_scale .* got \[1.0, 1.0\]"),
        (dict(angular_scale=[float("nan")] * 3), r"angular_scale .* got \[nan"),
        (dict(gripper_threshold=1.0), r"gripper_threshold must be in \(0, 1\), got 1.0"),
        (dict(gripper_threshold=0), r"gripper_threshold .* got 0"),
        (dict(control_rate_hz=0.0), "control_rate_hz must be finite and > 0, got 0.0"),
    ],
)
def test_gains_outside_0_1_and_bad_settings_are_refused_with_the_value(change, match):
    args = {"space": ActionSpace.for_kind(OSC), "control_rate_hz": 20.0, **change}
    with pytest.raises(ValueError, match=match):
        ActionMapper(**args)


def test_the_action_space_round_trips_through_policy_json(still_models, tmp_path):
    spec = PolicySidecar.read(still_models[TWIST])
    data = json.loads((still_models[TWIST] / "policy.json").read_text())
    assert data["format_version"] == 2 and "action_layout" not in data
    assert data["action_space"]["kind"] == TWIST
    assert data["action_space"]["names"] == list(contract.ACTION_LAYOUT)
    assert data["action_space"]["units"] == ["m/s"] * 3 + ["rad/s"] * 3 + ["sign"]
    assert data["action_space"]["frame"] == contract.ACTION_FRAME
    assert PolicySidecar.read(still_models[OSC]).action_space.units[:4] == (
        "m/step",
        "m/step",
        "m/step",
        "rad/step",
    )
    width = dataclasses.replace(
        spec.action_space, gripper=contract.GRIPPER_WIDTH, gripper_open=0.085, gripper_closed=0.0
    )
    changed = dataclasses.replace(spec, action_space=width)
    changed.write(tmp_path)
    assert PolicySidecar.read(tmp_path) == changed
    written = json.loads((tmp_path / "policy.json").read_text())["action_space"]
    assert written["gripper"] == {"convention": "width", "open": 0.085, "closed": 0.0}
    assert written["units"][-1] == "m"


def _refused(data: dict, needle: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        PolicySidecar.from_dict(data, "/models/policy.json")
    msg = str(info.value)
    assert msg.startswith("/models/policy.json: ") and needle in msg, msg


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("kind", "velocity", "action_space.kind is 'velocity', this runtime knows"),
        ("names", ["x", "y", "z", "r", "p", "w", "g"], "action_space.names are ['x'"),
        ("names", ["dx"], "action_space.names has 1 names, expected 7"),
        ("units", ["m/s"] * 7, "action_space.units are ['m/s'"),
        ("frame", "", "action_space.frame must be a non-empty string"),
        ("linear_per_unit", 0, "action_space.linear_per_unit must be > 0, got 0"),
        ("angular_per_unit", "0.5", "action_space.angular_per_unit must be a number"),
        ("gripper", "sign", "action_space.gripper must be an object"),
        ("values", "normalised", "action_space.values is 'normalised'"),
        ("extra", 1, "action_space has unknown keys ['extra']"),
    ],
)
def test_a_malformed_action_space_is_refused_naming_the_field(still_models, key, value, needle):
    data = json.loads((still_models[OSC] / "policy.json").read_text())
    data["action_space"][key] = value
    _refused(data, needle)


def test_a_malformed_gripper_convention_is_refused(still_models):
    data = json.loads((still_models[OSC] / "policy.json").read_text())
    for change, needle in (
        ({"convention": "angle"}, "action_space.gripper.convention is 'angle'"),
        ({"open": 0.0}, "the sign convention is -1.0 open, 1.0 closed"),
        ({"convention": "width", "open": 0.04, "closed": 0.04}, "closed equals open (0.04)"),
        ({"closed": float("inf")}, "action_space.gripper.closed must be finite"),
    ):
        bad = copy.deepcopy(data)
        bad["action_space"]["gripper"].update(change)
        _refused(bad, needle)
    bad = copy.deepcopy(data)
    del bad["action_space"]["kind"]
    _refused(bad, "action_space lacks required keys ['kind']")


def test_a_version_1_sidecar_is_refused_with_export_again(still_models):
    v2 = json.loads((still_models[OSC] / "policy.json").read_text())
    v1 = {k: v for k, v in v2.items() if k != "action_space"}
    v1.update(
        format_version=1,
        action_layout=list(contract.ACTION_LAYOUT),
        action_space="normalized [-1, 1]; raw = (a + 1) / 2 * (max - min) + min",
    )
    _refused(v1, "format_version 1, this runtime reads 2: export the model again")


def test_an_export_without_a_known_action_space_is_refused(tmp_path):
    cfg = preset("debug")
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    with pytest.raises(ExportError, match=r"pass --action-space osc_pose_delta\|twist"):
        _export(tmp_path / "a", policy, None)
    assert not (tmp_path / "a" / "export").exists()  # refused before writing anything
    with pytest.raises(ExportError, match="unknown action space 'velocity'"):
        _export(tmp_path / "b", policy, "velocity")
    # What the training run recorded is used; a given kind overrides it.
    recorded = _export(tmp_path / "c", policy, None, {"stage": "finetune", "action_space": OSC})
    assert PolicySidecar.read(recorded).action_space == ActionSpace.for_kind(OSC)
    given = _export(tmp_path / "d", policy, TWIST, {"stage": "finetune", "action_space": OSC})
    assert PolicySidecar.read(given).action_space == ActionSpace.for_kind(TWIST)
