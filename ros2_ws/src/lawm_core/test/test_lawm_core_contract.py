"""lawm_core as installed: a policy.json written and read back through the sidecar, a damaged one
refused by field, and raw actions mapped to commands in the declared units. numpy only (no
onnxruntime, torch or rclpy), so it runs wherever the package's exec_depends are installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lawm_core import contract
from lawm_core.command import ActionMapper, GripperSwitch
from lawm_core.errors import ModelLoadError
from lawm_core.sidecar import ActionSpace, Normalization, PolicySidecar

RATE_HZ = 20.0


def _sidecar(kind: str = contract.ACTION_OSC_POSE_DELTA) -> PolicySidecar:
    return PolicySidecar(
        onnx_sha256="0" * 64,
        opset=17,
        cameras=contract.CAMERAS,
        image_size=32,
        chunk_size=4,
        action_dim=contract.ACTION_DIM,
        action_space=ActionSpace.for_kind(kind),
        control_rate_hz=RATE_HZ,
        proprio_dim=contract.PROPRIO_DIM,
        proprio_layout=contract.PROPRIO_LAYOUT,
        lang_dim=8,
        normalization=Normalization(
            action_min=(-1.0,) * contract.ACTION_DIM,
            action_max=(1.0,) * contract.ACTION_DIM,
            proprio_mean=(0.0,) * contract.PROPRIO_DIM,
            proprio_std=(1.0,) * contract.PROPRIO_DIM,
        ),
        text_encoder=None,
        parity_max_abs_error=0.0,
        preset="debug",
        run={"stage": "package-test"},
        exported_at="2025-01-01T00:00:00+00:00",
        torch_version="none",
    )


def test_policy_sidecar_round_trip(tmp_path):
    written = _sidecar()
    path = written.write(tmp_path)
    assert path == tmp_path / contract.SIDECAR_FILE
    read = PolicySidecar.read(tmp_path)
    assert read == written
    assert [t.name for t in read.inputs] == contract.onnx_input_names(contract.CAMERAS)
    assert json.loads(path.read_text())["action_space"]["units"][0] == "m/step"


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: d.pop("control_rate_hz"), "lacks required keys ['control_rate_hz']"),
        (lambda d: d.update(format_version=1), "format_version 1"),
        (lambda d: d["action_space"].update(units=["m/s"] * 7), "action_space.units"),
        (lambda d: d["normalization"].update(action_min=[0.0]), "normalization.action_min"),
    ],
    ids=["missing_key", "old_format", "wrong_units", "short_vector"],
)
def test_a_damaged_policy_json_is_refused_by_field(tmp_path, damage, needle):
    path = _sidecar().write(tmp_path)
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=needle.replace("[", r"\[")) as info:
        PolicySidecar.read(path)
    assert str(info.value).startswith(str(path))


def test_raw_actions_become_commands_in_the_declared_units():
    osc = ActionMapper(ActionSpace.for_kind(contract.ACTION_OSC_POSE_DELTA), RATE_HZ)
    still = osc.to_command(np.zeros(contract.ACTION_DIM))
    assert not still.linear.any() and not still.angular.any()
    assert still.gripper == contract.GRIPPER_OPEN
    raw = np.array([1.0, -0.5, 0.0, 0.0, 0.0, 0.2, 1.0])
    cmd = osc.to_command(raw)
    # A displacement per control step, as a velocity: units * metres per unit * steps per second.
    step = contract.OSC_POSE_LINEAR_M * RATE_HZ
    np.testing.assert_allclose(cmd.linear, [step, -0.5 * step, 0.0])
    np.testing.assert_allclose(
        cmd.angular, [0.0, 0.0, 0.2 * contract.OSC_POSE_ANGULAR_RAD * RATE_HZ]
    )
    assert cmd.gripper == contract.GRIPPER_CLOSE

    twist = ActionMapper(ActionSpace.for_kind(contract.ACTION_TWIST), RATE_HZ, [0.5] * 3)
    np.testing.assert_allclose(twist.to_command(raw).linear, [0.5, -0.25, 0.0])
    with pytest.raises(ValueError, match="linear_scale"):
        ActionMapper(ActionSpace.for_kind(contract.ACTION_TWIST), RATE_HZ, [2.0] * 3)


def test_the_gripper_switch_sends_changes_only():
    switch = GripperSwitch(threshold=0.5, hysteresis=0.2)
    assert switch.update(0.9) == contract.GRIPPER_CLOSE
    assert switch.update(0.45) is None  # inside the band: no chatter
    assert switch.update(0.3) == contract.GRIPPER_OPEN
    assert switch.update(float("nan")) is None
