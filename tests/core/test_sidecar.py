"""The exported model's sidecars (lawm_core.sidecar): what export writes is what the runtime reads
back, and a sidecar with a missing, unknown or malformed field is refused naming the file and
the field. Real exports of the debug policy (and its text encoder); no mocks."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

from lawm.checkpoint import save_policy
from lawm.config import preset
from lawm.export import export_policy
from lawm.models.policy import Policy
from lawm_core import contract
from lawm_core.errors import ModelLoadError
from lawm_core.sidecar import ActionSpace, PolicySidecar, TextEncoderSidecar


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, PolicySidecar]:
    """The debug policy exported without a text encoder, and the sidecar export returned."""
    tmp = tmp_path_factory.mktemp("sidecar")
    cfg = preset("debug")
    torch.manual_seed(0)
    save_policy(tmp / "p", Policy(cfg.policy), cfg, {"stage": "test", "steps": 3})
    with warnings.catch_warnings():  # the tracer's deprecation chatter is not ours
        warnings.simplefilter("ignore")
        sidecar = export_policy(
            tmp / "p", tmp / "export", text_encoder=False, action_space="osc_pose_delta"
        )
    return tmp / "export", sidecar


@pytest.fixture()
def raw(exported) -> dict[str, Any]:
    return json.loads((exported[0] / "policy.json").read_text())


def _text_encoder() -> TextEncoderSidecar:
    return TextEncoderSidecar(
        onnx_sha256="a" * 64,
        tokenizer_sha256="b" * 64,
        weights_sha256="c" * 64,
        model="sentence-transformers/all-MiniLM-L6-v2",
        embedding_dim=384,
        max_length=128,
        opset=17,
        parity_max_abs_error=1e-6,
        export_seconds=1.5,
        exported_at="2025-01-01T00:00:00+00:00",
        torch_version="2.5.1",
    )


def _refused(data: Any, *needles: str, source: str = "/models/policy.json") -> str:
    with pytest.raises(ModelLoadError) as info:
        PolicySidecar.from_dict(data, source)
    msg = str(info.value)
    assert msg.startswith(f"{source}: "), msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ----------------------------------------------------------------------------- round trip
def test_what_export_writes_is_what_the_runtime_reads(exported, raw):
    folder, written = exported
    read = PolicySidecar.read(folder)
    assert read == written
    assert PolicySidecar.read(folder / "policy.json") == written
    assert read.to_dict() == raw
    assert read.run == {"stage": "test", "steps": 3} and read.text_encoder is None
    assert read.cameras == contract.CAMERAS
    assert read.action_space == ActionSpace.for_kind(contract.ACTION_OSC_POSE_DELTA)
    assert read.action_space.names == contract.ACTION_LAYOUT
    assert (read.image_size, read.chunk_size, read.action_dim) == (32, 4, 7)
    # Readable by the robot's service user, not only by whoever exported it.
    assert (folder / "policy.json").stat().st_mode & 0o044 == 0o044


def test_tensor_specs_are_the_contract_names_and_the_graphs(exported, raw):
    folder, sidecar = exported
    assert [t.name for t in sidecar.inputs] == contract.onnx_input_names(contract.CAMERAS)
    assert [t.name for t in sidecar.outputs] == [contract.ONNX_ACTION_OUTPUT]
    assert raw["inputs"] == [t.to_dict() for t in sidecar.inputs]
    sess = ort.InferenceSession(str(folder / "policy.onnx"), providers=["CPUExecutionProvider"])
    graph = {i.name: i.shape[1:] for i in [*sess.get_inputs(), *sess.get_outputs()]}
    assert graph == {t.name: list(t.shape[1:]) for t in [*sidecar.inputs, *sidecar.outputs]}


def test_write_then_read_with_a_text_encoder(exported, tmp_path):
    sidecar = PolicySidecar.read(exported[0])
    with_text = dataclasses.replace(sidecar, text_encoder=_text_encoder())
    path = with_text.write(tmp_path)
    assert path == tmp_path / "policy.json"
    assert PolicySidecar.read(tmp_path) == with_text
    assert _text_encoder().write(tmp_path) == tmp_path / "text_encoder.json"
    assert TextEncoderSidecar.read(tmp_path) == _text_encoder()


def test_the_exported_text_encoder_is_the_one_policy_json_records(exported_debug_model):
    policy = PolicySidecar.read(exported_debug_model)
    assert policy.text_encoder is not None
    assert policy.text_encoder == TextEncoderSidecar.read(exported_debug_model)
    assert policy.text_encoder.embedding_dim == policy.lang_dim


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("key", PolicySidecar.KEYS)
def test_a_missing_field_is_refused_by_name(raw, key):
    del raw[key]
    _refused(raw, "lacks required keys", repr(key))


def test_an_unknown_field_is_refused_by_name(raw):
    raw["camera_names"] = ["agentview"]
    _refused(raw, "unknown keys ['camera_names']")


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("format_version", 1, "format_version 1, this runtime reads 2: export the model again"),
        ("format_version", True, "format_version True"),
        ("onnx_sha256", "d28e77f8", "onnx_sha256 must be a hex string"),
        ("onnx_file", "../../etc/model.onnx", "onnx_file is '../../etc/model.onnx'"),
        ("image_size", "32", "image_size must be a positive integer, got '32'"),
        ("chunk_size", True, "chunk_size must be a positive integer, got True"),
        ("chunk_size", 0, "chunk_size must be a positive integer, got 0"),
        ("opset", 17.0, "opset must be a positive integer"),
        ("control_rate_hz", "20", "control_rate_hz must be a number, got '20'"),
        ("control_rate_hz", 0, "control_rate_hz must be > 0"),
        ("control_rate_hz", float("inf"), "control_rate_hz must be finite"),
        ("cameras", "agentview", "cameras must be a non-empty list of distinct names"),
        ("cameras", ["agentview", "agentview"], "cameras must be a non-empty list of distinct"),
        ("cameras", [], "cameras must be a non-empty list"),
        ("action_space", "normalized [-1, 1]", "action_space must be an object"),
        ("proprio_layout", [1, 2, 3, 4, 5], "proprio_layout must be a non-empty list"),
        ("parity_max_abs_error", -1.0, "parity_max_abs_error must be >= 0"),
        ("parity_max_abs_error", float("nan"), "parity_max_abs_error must be finite"),
        ("preset", None, "preset must be a non-empty string"),
        ("run", ["stage"], "run must be an object"),
        ("exported_at", "yesterday", "exported_at must be an ISO 8601 time"),
        ("torch_version", 2, "torch_version must be a non-empty string"),
        ("normalization", [], "normalization must be an object"),
        ("text_encoder", None, "text_encoder is a JSON NoneType, not an object"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_by_name(raw, key, value, needle):
    raw[key] = value
    _refused(raw, needle)


def test_normalization_is_checked_entry_by_entry(raw):
    bad = copy.deepcopy(raw)
    bad["normalization"]["proprio_std"] = [1.0, 1.0, float("nan"), 1.0, 1.0]
    _refused(bad, "normalization.proprio_std must be 5 finite numbers")
    bad = copy.deepcopy(raw)
    bad["normalization"]["action_min"] = [0.0] * 6
    _refused(bad, "normalization.action_min must be 7 finite numbers")
    bad = copy.deepcopy(raw)
    bad["normalization"]["action_max"] = [-2.0] * 7
    _refused(bad, "normalization.action_max < action_min")
    bad = copy.deepcopy(raw)
    del bad["normalization"]["proprio_mean"]
    _refused(bad, "normalization lacks required keys ['proprio_mean']")


def test_tensor_lists_must_follow_from_the_sizes(raw):
    bad = copy.deepcopy(raw)
    bad["inputs"][2]["dtype"] = "float64"
    _refused(bad, "input proprio is float64 ['batch', 5], expected float32 ['batch', 5]")
    bad = copy.deepcopy(raw)
    bad["chunk_size"] = 8  # outputs still say 4
    _refused(bad, "output actions is float32 ['batch', 4, 7], expected float32 ['batch', 8, 7]")
    bad = copy.deepcopy(raw)
    bad["inputs"].pop(0)
    _refused(bad, "inputs ['image_eye_in_hand', 'lang', 'proprio'] do not match cameras")
    bad = copy.deepcopy(raw)
    bad["inputs"][0]["layout"] = "NHWC"
    _refused(bad, "inputs items need exactly name, shape (list) and dtype")


def test_a_nested_text_encoder_is_checked_too(raw):
    text = _text_encoder().to_dict()
    ok = {**raw, "text_encoder": text}
    assert PolicySidecar.from_dict(ok).text_encoder == _text_encoder()
    bad = {**raw, "text_encoder": {k: v for k, v in text.items() if k != "tokenizer_sha256"}}
    _refused(bad, "text_encoder lacks required keys ['tokenizer_sha256']")
    bad = {**raw, "text_encoder": {**text, "max_length": "128"}}
    _refused(bad, "text_encoder.max_length must be a positive integer")
    bad = copy.deepcopy({**raw, "lang_dim": 512})  # the policy and the encoder disagree
    bad["inputs"][-1]["shape"] = ["batch", 512]
    _refused({**bad, "text_encoder": text}, "text_encoder.embedding_dim is 384", "lang_dim 512")


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("embedding_dim", 0, "embedding_dim must be a positive integer"),
        ("tokenizer_sha256", None, "tokenizer_sha256 must be a hex string"),
        ("tokenizer_file", "/tmp/tokenizer.json", "tokenizer_file is '/tmp/tokenizer.json'"),
        ("input_names", ["input_ids"], "input_names are ['input_ids']"),
        ("format_version", 3, "format_version 3, this runtime reads 2"),
    ],
)
def test_text_encoder_sidecar_fields_are_checked(tmp_path, key, value, needle):
    data = {**_text_encoder().to_dict(), key: value}
    (tmp_path / "text_encoder.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"text_encoder\.json: ") as info:
        TextEncoderSidecar.read(tmp_path)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        (None, "policy.json: file missing"),
        ("{not json", "policy.json: not a readable JSON sidecar"),
        ("[1, 2]", "policy.json: sidecar is a JSON list, not an object"),
    ],
)
def test_an_unreadable_file_is_refused_naming_it(tmp_path, text, needle):
    if text is not None:
        (tmp_path / "policy.json").write_text(text)
    with pytest.raises(ModelLoadError) as info:
        PolicySidecar.read(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'policy.json'}: ")
    assert needle in str(info.value)


# ------------------------------------------ inputs, proprio layout and gripper from the data
def _camera_only(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` as export writes it for a front-camera model trained without robot state."""
    data = copy.deepcopy(raw)
    data.update(cameras=[contract.AGENTVIEW], proprio_dim=0, proprio_layout=[])
    data["normalization"].update(proprio_mean=[], proprio_std=[])
    keep = {contract.onnx_image_input(contract.AGENTVIEW), contract.ONNX_LANG_INPUT}
    data["inputs"] = [t for t in data["inputs"] if t["name"] in keep]
    return data


def test_a_model_without_robot_state_has_no_proprio_input(raw, tmp_path):
    data = _camera_only(raw)
    read = PolicySidecar.from_dict(data)
    assert not read.has_proprio and read.proprio_layout == () and read.proprio_dim == 0
    assert [t.name for t in read.inputs] == ["image_agentview", "lang"]
    assert [t.name for t in read.inputs] == contract.onnx_input_names(read.cameras, False)
    assert read.to_dict() == data
    read.write(tmp_path)
    assert PolicySidecar.read(tmp_path) == read
    assert PolicySidecar.from_dict(raw).has_proprio


def test_proprio_inputs_must_follow_proprio_dim(raw):
    data = _camera_only(raw)
    data["proprio_dim"] = -1
    _refused(data, "proprio_dim must be an integer >= 0, got -1")
    data = _camera_only(raw)
    data["inputs"] = raw["inputs"][0:1] + raw["inputs"][2:]  # still lists proprio
    _refused(data, "inputs ['image_agentview', 'lang', 'proprio'] do not match")
    data = _camera_only(raw)
    data["proprio_layout"] = ["ee_x"]
    _refused(data, "proprio_layout has 1 names, expected 0")
    data = _camera_only(raw)
    data["normalization"]["proprio_mean"] = [0.0]
    _refused(data, "normalization.proprio_mean must be 0 finite numbers")


def test_the_proprio_layout_is_the_datas_in_the_contracts_vocabulary(raw):
    layout = ["ee_x", "ee_y", "ee_z", "joint:panda_finger_joint1", "joint:panda_finger_joint2"]
    read = PolicySidecar.from_dict({**raw, "proprio_layout": layout})
    assert read.proprio_layout == tuple(layout)
    for name in ("wrist", "joint:", "joint: j1", "EE_X"):
        bad = {**raw, "proprio_layout": [*layout[:4], name]}
        _refused(bad, f"proprio_layout entry {name!r} is not a proprio name", "joint:<joint name>")
    _refused({**raw, "proprio_layout": [*layout[:4], layout[0]]}, "list of distinct names")


def test_the_gripper_convention_of_the_data_is_declared(raw):
    width = ActionSpace.for_kind(contract.ACTION_TWIST, "width", 0.08, 0.0)
    assert (width.gripper, width.gripper_open, width.gripper_closed) == ("width", 0.08, 0.0)
    assert width.units[-1] == "m"
    data = {**raw, "action_space": width.to_dict()}
    assert PolicySidecar.from_dict(data).action_space == width
    sign = ActionSpace.for_kind(contract.ACTION_TWIST)
    assert ActionSpace.for_kind(contract.ACTION_TWIST, "sign", -1.0, 1.0) == sign
    assert (sign.gripper_open, sign.gripper_closed) == (-1.0, 1.0)
    for args, needle in (
        (("width",), "gripper convention 'width' needs its open and closed values"),
        (("width", 0.08, None), "needs its open and closed values"),
        (("width", 0.04, 0.04), "gripper closed equals open (0.04)"),
        (("width", float("nan"), 0.0), "gripper open must be finite, got nan"),
        (("width", "0.08", 0.0), "gripper open must be a number, got '0.08'"),
        (("sign", 1.0, -1.0), "the sign convention is -1.0 open, 1.0 closed"),
        (("angle", 0.0, 1.0), "gripper convention is 'angle', this runtime knows"),
    ):
        with pytest.raises(ValueError) as info:
            ActionSpace.for_kind(contract.ACTION_TWIST, *args)
        assert needle in str(info.value), (args, str(info.value))
