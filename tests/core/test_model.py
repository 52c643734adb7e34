"""PolicyModel (lawm_core.model): loading a model directory and refusing broken ones,
execution provider choice, inference against plain onnxruntime, denormalisation.

Real onnxruntime on a really exported debug policy; no mocks. torch is used here only to make
that model: the runtime itself must not import it (tests/test_architecture.py checks).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lawm.checkpoint import save_policy
from lawm.config import preset
from lawm.export import export_policy
from lawm.models.policy import Policy
from lawm_core import contract, files
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.model import CPU, CUDA, TENSORRT, PolicyModel, resolve_providers


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("policy")
    cfg = preset("debug")
    torch.manual_seed(0)
    save_policy(tmp / "p", Policy(cfg.policy), cfg, {})
    with warnings.catch_warnings():  # the tracer's deprecation chatter is not ours
        warnings.simplefilter("ignore")
        export_policy(tmp / "p", tmp / "export", text_encoder=False, action_space="osc_pose_delta")
    return tmp / "export"


@pytest.fixture(scope="module")
def model(export_dir) -> PolicyModel:
    return PolicyModel(export_dir, providers="cpu", threads=1)


def _observation(model: PolicyModel, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = model.image_size
    images = {c: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for c in model.cameras}
    proprio = rng.normal(size=model.proprio_dim).astype(np.float32)
    lang = rng.normal(size=model.lang_dim).astype(np.float32)
    return images, proprio, lang / np.linalg.norm(lang)


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "model"))


def _edit_sidecar(model_dir: Path, edit) -> None:
    path = model_dir / "policy.json"
    sidecar = json.loads(path.read_text())
    edit(sidecar)
    path.write_text(json.dumps(sidecar))


def test_load_cpu(model, export_dir):
    sidecar = json.loads((export_dir / "policy.json").read_text())
    assert model.provider == "CPUExecutionProvider"
    assert model.providers == ("CPUExecutionProvider",)
    assert model.spec.to_dict() == sidecar
    assert model.cameras == tuple(sidecar["cameras"]) == ("agentview", "eye_in_hand")
    assert (model.image_size, model.chunk_size, model.action_dim) == (32, 4, 7)
    assert (model.proprio_dim, model.lang_dim) == (5, 384)
    assert model.control_rate_hz == 20.0
    assert not model.has_text_encoder
    times = model.warmup(2)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_load_auto(export_dir):
    m = PolicyModel(str(export_dir), providers="auto", threads=2)
    assert m.provider == m.requested_providers[0]
    assert m.provider in ort.get_available_providers()
    images, proprio, lang = _observation(m)
    assert m.predict(images, proprio, lang).shape == (m.chunk_size, m.action_dim)


def test_resolve_providers():
    everything = [TENSORRT, CUDA, "AzureExecutionProvider", CPU]
    assert resolve_providers("auto", everything) == [TENSORRT, CUDA, CPU]
    assert resolve_providers("AUTO", [CPU]) == [CPU]
    assert resolve_providers("cuda", everything) == [CUDA, CPU]
    assert resolve_providers("tensorrt", everything) == [TENSORRT, CUDA, CPU]
    assert resolve_providers("tensorrt", [TENSORRT, CPU]) == [TENSORRT, CPU]
    assert resolve_providers("cpu", everything) == [CPU]
    assert resolve_providers("cuda, cpu", everything) == [CUDA, CPU]
    assert resolve_providers([CUDA, CPU], everything) == [CUDA, CPU]
    assert resolve_providers(["cudaexecutionprovider"], everything) == [CUDA]
    with pytest.raises(ModelLoadError, match="not available") as info:
        resolve_providers("cuda", [CPU])
    assert CUDA in str(info.value)
    for bad in ("gpu0", ["CPUExecutionProvider", "Nope"], "", []):
        with pytest.raises(ModelLoadError) as info:
            resolve_providers(bad, everything)
        assert "'cuda'" in str(info.value) and "'cpu'" in str(info.value), str(info.value)


def test_unknown_provider_and_bad_threads(export_dir):
    with pytest.raises(ModelLoadError, match="unknown execution provider 'npu'.*'tensorrt'"):
        PolicyModel(export_dir, providers="npu")
    with pytest.raises(ModelLoadError, match="threads"):
        PolicyModel(export_dir, providers="cpu", threads=-1)


def test_missing_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory missing") as info:
        PolicyModel(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_missing_sidecar(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    (d / "policy.json").unlink()
    with pytest.raises(ModelLoadError, match=r"policy\.json: file missing"):
        PolicyModel(d)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "JSON list, not an object"),
        ('{"format_version": 2}', r"lacks required keys \['onnx_sha256'"),
    ],
)
def test_corrupt_sidecar(export_dir, tmp_path, text, match):
    d = _copy(export_dir, tmp_path)
    (d / "policy.json").write_text(text)
    with pytest.raises(ModelLoadError, match=match) as info:
        PolicyModel(d)
    assert "policy.json" in str(info.value)


def test_unsupported_format_version(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    _edit_sidecar(d, lambda s: s.update(format_version=1))
    with pytest.raises(
        ModelLoadError,
        match=r"policy\.json: format_version 1, this runtime reads 2: export the model again",
    ):
        PolicyModel(d)


def test_missing_onnx(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    (d / "policy.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"policy\.onnx: file missing"):
        PolicyModel(d)


def test_flipped_byte(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    path = d / "policy.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    expected = json.loads((d / "policy.json").read_text())["onnx_sha256"]
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as info:
        PolicyModel(d)
    msg = str(info.value)
    assert "policy.onnx" in msg
    assert f"expected {expected}" in msg
    assert f"actual {files.sha256_file(path)}" in msg


def _rename_camera(sidecar: dict, old: str, new: str) -> None:
    sidecar["cameras"] = [new if c == old else c for c in sidecar["cameras"]]
    for item in sidecar["inputs"]:
        if item["name"] == f"image_{old}":
            item["name"] = f"image_{new}"


def test_sidecar_cameras_differ_from_graph(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    _edit_sidecar(d, lambda s: _rename_camera(s, "eye_in_hand", "wrist"))
    with pytest.raises(ModelLoadError) as info:
        PolicyModel(d, providers="cpu")
    msg = str(info.value)
    assert "policy.onnx: graph inputs" in msg and "image_eye_in_hand" in msg
    assert "image_wrist" in msg and "policy.json" in msg


def test_sidecar_cameras_differ_from_its_inputs(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    _edit_sidecar(d, lambda s: s.update(cameras=["agentview"]))
    with pytest.raises(ModelLoadError, match=r"policy\.json: inputs .* do not match cameras"):
        PolicyModel(d, providers="cpu")


def test_sidecar_shapes_differ_from_graph(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)

    def edit(s):
        s["chunk_size"] = 5
        s["outputs"][0]["shape"] = ["batch", 5, 7]

    _edit_sidecar(d, edit)
    with pytest.raises(ModelLoadError, match=r"graph output actions .* says float32 \['batch', 5"):
        PolicyModel(d, providers="cpu")

    d2 = _copy(export_dir, tmp_path / "b")

    def edit_size(s):
        s["image_size"] = 64
        for item in s["inputs"]:
            if item["name"].startswith("image_"):
                item["shape"] = ["batch", 64, 64, 3]

    _edit_sidecar(d2, edit_size)
    with pytest.raises(ModelLoadError, match=r"graph input image_agentview .* 64, 64, 3"):
        PolicyModel(d2, providers="cpu")


def test_bad_normalization(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path)
    _edit_sidecar(d, lambda s: s["normalization"].update(action_min=[0.0] * 6))
    with pytest.raises(ModelLoadError, match="normalization.action_min must be 7"):
        PolicyModel(d, providers="cpu")


def test_predict_matches_onnxruntime(model, export_dir):
    sess = ort.InferenceSession(
        str(export_dir / "policy.onnx"), providers=["CPUExecutionProvider"]
    )
    for seed in range(3):
        images, proprio, lang = _observation(model, seed)
        feed = {f"image_{c}": images[c][None] for c in model.cameras}
        feed.update(proprio=proprio[None], lang=lang[None])
        want = sess.run(["actions"], feed)[0][0]
        got = model.predict(images, proprio, lang)
        assert got.shape == (model.chunk_size, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert np.all(np.abs(got) <= 1.0)
    # float64 and list inputs are converted, not refused
    got64 = model.predict(images, proprio.astype(np.float64), lang.tolist())
    np.testing.assert_allclose(got64, got, atol=1e-6)


def test_predict_rejects_bad_inputs(model):
    images, proprio, lang = _observation(model)
    s = model.image_size
    cases = {
        "missing camera": ({"agentview": images["agentview"]}, proprio, lang),
        "unknown camera": ({**images, "top": images["agentview"]}, proprio, lang),
        "has shape": ({**images, "agentview": np.zeros((s, s + 1, 3), np.uint8)}, proprio, lang),
        "must be uint8": ({**images, "agentview": np.zeros((s, s, 3), np.float32)}, proprio, lang),
        "numpy array": ({**images, "agentview": [[0]]}, proprio, lang),
        r"proprio has shape \(4,\)": (images, proprio[:4], lang),
        "proprio has non-finite": (images, np.array([0, np.nan, 0, 0, 0]), lang),
        "lang has non-finite": (images, proprio, np.full(384, np.inf)),
        r"lang has shape \(1, 384\)": (images, proprio, lang[None]),
        "lang must be numbers": (images, proprio, np.array(["a"] * 384)),
        "dict camera": ([images["agentview"]], proprio, lang),
    }
    for match, args in cases.items():
        with pytest.raises(InputError, match=match):
            model.predict(*args)
    assert issubclass(InputError, ValueError)


def test_denormalize(model):
    lo, hi = model.action_min, model.action_max
    np.testing.assert_allclose(model.denormalize(-np.ones(7)), lo)
    np.testing.assert_allclose(
        model.denormalize(np.ones((2, 3, 7))), np.broadcast_to(hi, (2, 3, 7))
    )
    a = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(model.denormalize(a), (a + 1) / 2 * (hi - lo) + lo)
    with pytest.raises(InputError, match="expected"):
        model.denormalize(np.zeros(6))


# ------------------------------------------------ a model trained on one camera, no robot state
@pytest.fixture(scope="module")
def camera_only_dir(tmp_path_factory) -> Path:
    """The debug policy exported as its training run records front-camera-only data without
    robot state."""
    tmp = tmp_path_factory.mktemp("camera_only")
    cfg = preset("debug")
    torch.manual_seed(1)
    info = {"inputs": {"cameras": ["agentview"], "proprio": False}, "action_space": "twist"}
    save_policy(tmp / "p", Policy(cfg.policy), cfg, info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(tmp / "p", tmp / "export", text_encoder=False)
    return tmp / "export"


def test_a_model_without_robot_state_takes_only_its_camera_and_language(camera_only_dir):
    model = PolicyModel(camera_only_dir, providers="cpu", threads=1)
    assert model.cameras == ("agentview",)
    assert not model.has_proprio and model.proprio_dim == 0 and model.proprio_layout == ()
    assert [i.name for i in model._session.get_inputs()] == ["image_agentview", "lang"]
    images, _, lang = _observation(model)
    got = model.predict(images, None, lang)
    assert got.shape == (model.chunk_size, 7)
    np.testing.assert_allclose(model.predict(images, np.zeros(0), lang), got, atol=0)
    assert len(model.warmup(1)) == 1
    with pytest.raises(InputError, match="takes no robot state .*pass proprio=None"):
        model.predict(images, np.zeros(5, np.float32), lang)
    with pytest.raises(InputError, match="unknown camera"):
        model.predict({**images, "eye_in_hand": images["agentview"]}, None, lang)


def test_a_model_with_robot_state_needs_it(model):
    images, _, lang = _observation(model)
    assert model.has_proprio and model.proprio_layout == contract.PROPRIO_LAYOUT
    with pytest.raises(InputError, match=r"proprio missing: the model takes robot state \['ee_x'"):
        model.predict(images, None, lang)


def test_a_sidecar_that_claims_a_proprio_input_the_graph_lacks_is_refused(
    camera_only_dir, tmp_path
):
    d = _copy(camera_only_dir, tmp_path)

    def claim_proprio(s):
        s.update(proprio_dim=5, proprio_layout=list(contract.PROPRIO_LAYOUT))
        s["normalization"].update(proprio_mean=[0.0] * 5, proprio_std=[1.0] * 5)
        s["inputs"].insert(1, {"name": "proprio", "shape": ["batch", 5], "dtype": "float32"})

    _edit_sidecar(d, claim_proprio)
    with pytest.raises(ModelLoadError, match=r"graph inputs \['image_agentview', 'lang'\]"):
        PolicyModel(d, providers="cpu")


# -- a model folder is untrusted input ---------------------------------------------------------
def _rewrite_graph(model_dir: Path, edit) -> None:
    """Edit policy.onnx with the onnx package and record its new sha256 in the sidecar, as a
    hostile folder would (the sha256 only proves the files belong together)."""
    import onnx

    path = model_dir / "policy.onnx"
    proto = onnx.load(str(path))
    edit(proto, onnx)
    onnx.save(proto, str(path))
    _edit_sidecar(model_dir, lambda s: s.update(onnx_sha256=files.sha256_file(path)))


def _extra_input(proto, onnx):
    proto.graph.input.append(
        onnx.helper.make_tensor_value_info("debug_override", onnx.TensorProto.FLOAT, [1])
    )


def _float_image(proto, onnx):
    for i in proto.graph.input:
        if i.name == "image_agentview":
            i.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _custom_op(proto, onnx):
    out = proto.graph.output[0].name
    proto.graph.node.append(onnx.helper.make_node("Exfiltrate", [out], ["x"], domain="evil.ops"))
    proto.opset_import.append(onnx.helper.make_opsetid("evil.ops", 1))


def _external_weight(proto, onnx):
    t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../../etc/passwd")


@pytest.mark.parametrize(
    "damage, says",
    [
        ("onnx_symlink", r"policy\.onnx: is a symbolic link \(to /"),
        ("sidecar_symlink", r"policy\.json: is a symbolic link"),
        ("onnx_folder", r"policy\.onnx: not a regular file"),
        ("huge_image", r"image_size is 1000000, more than this runtime accepts \(1024\)"),
        ("huge_chunk", r"chunk_size is 100000, more than this runtime accepts"),
        ("many_cameras", r"cameras lists 9, more than this runtime accepts"),
        ("string_size", r"image_size must be a positive integer, got '32'"),
        ("extra_input", r"graph inputs .*debug_override.* differ from"),
        ("float_image", r"graph input image_agentview is float32 .* says uint8"),
        ("custom_op", r"domain\(s\) \['evil\.ops'\], which need a custom-operator library"),
        ("external_weight", r"keeps 1 weight\(s\) in external files"),
        ("not_onnx", r"policy\.onnx: not an ONNX model"),
        ("oversized", r"policy\.onnx: \d+ bytes, more than the \d+ this runtime reads"),
    ],
)
def test_a_hostile_model_folder_is_refused_in_one_line(export_dir, tmp_path, damage, says):
    d = _copy(export_dir, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if damage in ("onnx_symlink", "sidecar_symlink"):
        name = "policy.onnx" if damage == "onnx_symlink" else "policy.json"
        (d / name).rename(outside / name)  # the same bytes, the sha256 still right
        (d / name).symlink_to(outside / name)
    elif damage == "onnx_folder":
        (d / "policy.onnx").unlink()
        (d / "policy.onnx").mkdir()
    elif damage == "huge_image":
        _edit_sidecar(d, lambda s: s.update(image_size=10**6))
    elif damage == "huge_chunk":
        _edit_sidecar(d, lambda s: s.update(chunk_size=10**5))
    elif damage == "many_cameras":
        _edit_sidecar(d, lambda s: s.update(cameras=[f"cam{i}" for i in range(9)]))
    elif damage == "string_size":
        _edit_sidecar(d, lambda s: s.update(image_size="32"))
    elif damage == "not_onnx":
        path = d / "policy.onnx"
        path.write_bytes(b"\xff" * 64)
        _edit_sidecar(d, lambda s: s.update(onnx_sha256=files.sha256_file(path)))
    elif damage == "oversized":
        with open(d / "policy.onnx", "r+b") as f:  # sparse: nothing is written or read
            f.truncate(2 * 1024**3 + 1)
    else:
        edit = {
            "extra_input": _extra_input,
            "float_image": _float_image,
            "custom_op": _custom_op,
            "external_weight": _external_weight,
        }[damage]
        _rewrite_graph(d, edit)
    with pytest.raises(ModelLoadError, match=says) as info:
        PolicyModel(d, providers="cpu")
    assert "\n" not in str(info.value)
