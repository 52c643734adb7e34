"""Runtime core (ros2_ws/src/lawm_policy/lawm_policy/core): model loading and checks, inference,
preprocessing, temporal aggregation, action mapping, safety filter, staleness watchdog.

Real onnxruntime on a really exported debug policy; no mocks. torch is used here only to make
that model: the runtime itself must not import it (checked in a subprocess).
"""

from __future__ import annotations

import array
import json
import math
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from lawm.checkpoint import save_policy
from lawm.config import preset
from lawm.data.dataset import square_resize
from lawm.export import export_policy
from lawm.models.policy import Policy
from lawm_core import files, safety
from lawm_core.aggregation import TemporalAggregator
from lawm_core.command import ActionMapper, Command
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.model import CPU, CUDA, TENSORRT, PolicyModel, resolve_providers
from lawm_core.preprocess import SUPPORTED_ENCODINGS, fit_image, image_from_msg_fields
from lawm_core.safety import SafetyFilter, SafetyLimits
from lawm_core.watchdog import StalenessWatchdog

REPO = Path(__file__).resolve().parents[1]
RUNTIME_SRC = REPO / "ros2_ws" / "src" / "lawm_policy"
CORE_MODULES = [p.stem for p in sorted((RUNTIME_SRC / "lawm_policy" / "core").glob("*.py"))]


# ------------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("policy")
    cfg = preset("debug")
    torch.manual_seed(0)
    save_policy(tmp / "p", Policy(cfg.policy), cfg, {})
    with warnings.catch_warnings():  # the tracer's deprecation chatter is not ours
        warnings.simplefilter("ignore")
        export_policy(tmp / "p", tmp / "export", text_encoder=False)
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
    assert model.sidecar == sidecar
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
        ('{"format_version": 1}', r"lacks required keys \['onnx_sha256'"),
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
    _edit_sidecar(d, lambda s: s.update(format_version=2))
    with pytest.raises(
        ModelLoadError, match=r"policy\.json: format_version 2, this runtime reads 1"
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


# ------------------------------------------------------------------------------- preprocess


def _known_image(h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(rgb: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) pixels as the encoding lays them out, and the RGB image we expect back."""
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    if encoding == "rgb8":
        return rgb, rgb
    if encoding == "bgr8":
        return rgb[..., ::-1], rgb
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2), rgb
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], alpha], axis=2), rgb
    assert encoding == "mono8"
    gray = rgb[..., 0]
    return gray[..., None], np.repeat(gray[..., None], 3, axis=2)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 3])
def test_image_from_msg_fields(encoding, pad):
    rgb = _known_image()
    h, w = rgb.shape[:2]
    pixels, want = _encode(rgb, encoding)
    c = pixels.shape[2]
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    rows[:, w * c :] = 99  # row padding must be ignored
    raw = rows.tobytes() + b"\x07" * 4  # and trailing bytes past step * height
    for data in (
        raw,
        bytearray(raw),
        memoryview(raw),
        array.array("B", raw),
        np.frombuffer(raw, np.uint8),
    ):
        got = image_from_msg_fields(data, encoding, h, w, w * c + pad)
        assert got.shape == (h, w, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    # The result owns its pixels: reusing the message buffer does not change it.
    buf = bytearray(raw)
    got = image_from_msg_fields(buf, encoding, h, w, w * c + pad)
    buf[:] = bytes(len(buf))
    np.testing.assert_array_equal(got, want)


def test_image_encoding_case_and_opencv_agree():
    rgb = _known_image(8, 6)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    got = image_from_msg_fields(bgr.tobytes(), "BGR8", 8, 6, 18)
    np.testing.assert_array_equal(got, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize(
    "args, match",
    [
        ((b"\0" * 60, "16UC1", 5, 6, 12), "unsupported image encoding '16UC1'.*rgb8"),
        ((b"\0" * 60, "yuv422", 5, 6, 12), "unsupported image encoding"),
        ((b"", "rgb8", 0, 6, 18), r"zero size \(6x0\)"),
        ((b"\0" * 60, "rgb8", 5, 0, 0), "zero size"),
        ((b"\0" * 89, "rgb8", 5, 6, 18), r"truncated: 89 bytes.*needs 90"),
        ((b"", "mono8", 5, 6, 6), "truncated: 0 bytes"),
        ((b"\0" * 90, "rgb8", 5, 6, 17), r"step 17 is shorter than a row"),
        ((b"\0" * 200, "bgra8", 5, 6, 18), r"step 18 is shorter than a row \(6 px x 4 B"),
        ((np.zeros(90, np.float32), "rgb8", 5, 6, 18), "uint8 bytes"),
        ((12345, "rgb8", 5, 6, 18), "not a byte buffer"),
    ],
)
def test_image_from_msg_fields_rejects(args, match):
    with pytest.raises(InputError, match=match):
        image_from_msg_fields(*args)


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (50, 50), (20, 30), (33, 32), (32, 32)])
def test_fit_image_matches_training(shape):
    img = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = fit_image(img, 32)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    want = square_resize(img[None], 32)[0].transpose(1, 2, 0)  # what training feeds the model
    np.testing.assert_array_equal(got, want)


def test_fit_image_noop_and_errors():
    img = _known_image(16, 16)
    assert fit_image(img, 16) is img
    np.testing.assert_array_equal(
        fit_image(_known_image(16, 20), 16), _known_image(16, 20)[:, 2:18]
    )
    for bad, match in [
        (img.astype(np.float32), "uint8"),
        (img[..., :2], r"\(H, W, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), "H, W > 0"),
    ]:
        with pytest.raises(InputError, match=match):
            fit_image(bad, 8)
    with pytest.raises(InputError, match="positive integer"):
        fit_image(img, 0)


# ------------------------------------------------------------------------------ aggregation


def test_aggregator_hand_computed():
    c0 = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    c1 = [[0.7, 0.8], [0.9, 1.0], [-0.1, -0.2]]
    c2 = [[-0.3, -0.4], [-0.5, -0.6], [0.2, 0.0]]
    c3 = [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    agg = TemporalAggregator(chunk_size=3, action_dim=2)
    assert len(agg) == 0
    np.testing.assert_allclose(agg.step(np.array(c0)), [0.1, 0.2])
    assert len(agg) == 1
    np.testing.assert_allclose(agg.step(np.array(c1)), [(0.7 + 0.3) / 2, (0.8 + 0.4) / 2])
    assert len(agg) == 2
    np.testing.assert_allclose(
        agg.step(np.array(c2)), [(-0.3 + 0.9 + 0.5) / 3, (-0.4 + 1.0 + 0.6) / 3]
    )
    assert len(agg) == 3
    # c0 has no row for this step any more
    np.testing.assert_allclose(
        agg.step(np.array(c3)), [(1.0 - 0.5 - 0.1) / 3, (1.0 - 0.6 - 0.2) / 3]
    )
    assert len(agg) == 3

    agg.reset()
    assert len(agg) == 0
    np.testing.assert_allclose(agg.step(np.array(c2)), [-0.3, -0.4])
    # clamped to [-1, 1]
    agg.reset()
    np.testing.assert_allclose(agg.step(np.array([[3.0, -3.0], [0, 0], [0, 0]])), [1.0, -1.0])


def test_aggregator_matches_brute_force_and_rejects_bad_chunks():
    k, a = 4, 7
    rng = np.random.default_rng(3)
    agg = TemporalAggregator(k, a)
    predictions: dict[int, list[np.ndarray]] = {}
    for t in range(12):
        chunk = rng.uniform(-1, 1, (k, a))
        for j in range(k):
            predictions.setdefault(t + j, []).append(chunk[j])
        if t == 5:  # a bad chunk in the middle changes nothing
            bad = chunk.copy()
            bad[2, 3] = np.nan
            with pytest.raises(InputError, match="non-finite"):
                agg.step(bad)
            with pytest.raises(InputError, match="shape"):
                agg.step(chunk[:3])
            with pytest.raises(InputError, match="not numeric"):
                agg.step([["x"] * a] * k)
        before = len(agg)
        got = agg.step(chunk)
        assert len(agg) == min(before + 1, k)
        np.testing.assert_allclose(got, np.mean(predictions[t], axis=0), atol=1e-12)
    with pytest.raises(ValueError, match="chunk_size"):
        TemporalAggregator(0, 7)


# ---------------------------------------------------------------------------------- command


def test_action_mapper():
    mapper = ActionMapper([0.1, 0.2, 0.3], [1.0, 0.5, 0.25], gripper_threshold=0.2)
    cmd = mapper.to_command(np.array([0.5, -1.0, 0.2, 1.0, 0.0, -0.5, 0.3]))
    np.testing.assert_allclose(cmd.linear, [0.05, -0.2, 0.06])
    np.testing.assert_allclose(cmd.angular, [1.0, 0.0, -0.125])
    assert cmd.gripper == 1.0
    assert mapper.to_command(np.r_[np.zeros(6), 0.2]).gripper == -1.0  # not above threshold
    assert ActionMapper([1] * 3, [1] * 3).to_command(np.r_[np.zeros(6), 1e-6]).gripper == 1.0
    assert ActionMapper([1] * 3, [1] * 3).to_command(np.r_[np.zeros(6), -1]).gripper == -1.0
    nan_cmd = mapper.to_command(np.full(7, np.nan))
    assert not nan_cmd.is_finite() and math.isnan(nan_cmd.gripper)
    with pytest.raises(InputError, match="expected"):
        mapper.to_command(np.zeros(6))
    with pytest.raises(ValueError, match="linear_scale"):
        ActionMapper([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="angular_scale"):
        ActionMapper([1, 1, 1], [1, -1, 1])
    zero = Command.zero()
    assert zero.linear.tolist() == [0, 0, 0] and zero.angular.tolist() == [0, 0, 0]
    assert zero.gripper == 0.0 and Command.zero(gripper=-1.0).gripper == -1.0
    with pytest.raises(InputError, match="3 values"):
        Command([0, 0], [0, 0, 0], 0.0)


# ----------------------------------------------------------------------------------- safety

LIMITS = SafetyLimits(
    max_linear_axis=(0.2, 0.2, 0.1),
    max_angular_axis=(0.5, 0.5, 1.0),
    max_linear_speed=0.25,
    max_angular_speed=0.8,
    max_linear_accel=1.0,
    max_angular_accel=4.0,
    workspace_min=(-0.5, -0.5, 0.0),
    workspace_max=(0.5, 0.5, 0.8),
)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(max_linear_axis=(0.2, -0.1, 0.1)), r"max_linear_axis .*\(0.2, -0.1, 0.1\)"),
        (dict(max_angular_axis=(1, 1)), r"max_angular_axis .*\(1, 1\)"),
        (dict(max_linear_speed=0.0), "max_linear_speed .* got 0.0"),
        (dict(max_angular_speed=float("nan")), "max_angular_speed .* got nan"),
        (dict(max_linear_accel=float("inf")), "max_linear_accel .* got inf"),
        (dict(max_angular_accel="fast"), "max_angular_accel .* got 'fast'"),
        (dict(workspace_min=None), "go together"),
        (dict(workspace_max=(0.5, -0.6, 0.8)), r"workspace_min must be < .*axis \[1\]"),
        (dict(workspace_min=(0, 0, math.nan)), "workspace_min must be 3 finite"),
    ],
)
def test_safety_limits_validation(change, match):
    fields = {k: getattr(LIMITS, k) for k in LIMITS.__dataclass_fields__}
    with pytest.raises(ValueError, match=match):
        SafetyLimits(**{**fields, **change})


def test_safety_limits_normalised():
    lim = SafetyLimits([1, 2, 3], np.array([1.0, 1.0, 1.0]), 1, 1, 2, 2)
    assert lim.max_linear_axis == (1.0, 2.0, 3.0) and isinstance(lim.max_angular_axis, tuple)
    assert not lim.has_workspace and LIMITS.has_workspace
    with pytest.raises(AttributeError):
        lim.max_linear_speed = 5.0  # frozen


def _cmd(lin, ang=(0, 0, 0), grip=1.0) -> Command:
    return Command(np.array(lin, float), np.array(ang, float), grip)


def test_safety_clamps_and_speed():
    f = SafetyFilter(LIMITS)
    out, why = f.filter(_cmd([0.05, 0.0, 0.05], [0.1, 0, 0]), dt=10.0)
    assert why == [] and out.linear.tolist() == [0.05, 0.0, 0.05]
    f.reset()
    out, why = f.filter(_cmd([1.0, 0.0, -1.0], [0, 0, 3.0], 2.0), dt=10.0)
    assert out.linear.tolist() == [0.2, 0.0, -0.1] and out.angular.tolist() == [0, 0, 0.8]
    assert out.gripper == 1.0
    assert why == [
        safety.GRIPPER_CLAMP,
        safety.LINEAR_AXIS_CLAMP,
        safety.ANGULAR_AXIS_CLAMP,
        safety.ANGULAR_SPEED,
    ]
    f.reset()
    out, why = f.filter(
        _cmd([0.2, 0.2, 0.0]), dt=10.0
    )  # norm 0.283 > 0.25: scaled, same direction
    np.testing.assert_allclose(out.linear, [0.25 / math.sqrt(2)] * 2 + [0.0])
    assert why == [safety.LINEAR_SPEED]


def test_safety_rate_limit_ramps():
    f = SafetyFilter(LIMITS)
    dt = 0.05  # 20 Hz: the linear speed may change by 0.05 m/s per tick
    speeds = []
    for _ in range(6):
        out, why = f.filter(_cmd([0.2, 0, 0]), dt)
        speeds.append(out.linear[0])
    np.testing.assert_allclose(speeds, [0.05, 0.1, 0.15, 0.2, 0.2, 0.2], atol=1e-12)
    out, why = f.filter(_cmd([-0.2, 0, 0]), dt)
    assert out.linear[0] == pytest.approx(0.15) and why == [safety.LINEAR_RATE]
    out, _ = f.filter(_cmd([0, 0, 0]), dt=0.0)  # no time passed: no change
    assert out.linear[0] == pytest.approx(0.15)
    f.reset()
    out, _ = f.filter(_cmd([0.2, 0, 0]), dt)
    assert out.linear[0] == pytest.approx(0.05)


def test_safety_non_finite_and_bad_dt_stop_at_once():
    f = SafetyFilter(LIMITS)
    for _ in range(10):
        f.filter(_cmd([0.2, 0, 0], [0.5, 0, 0], grip=1.0), 0.05)
    for bad in (
        _cmd([np.nan, 0, 0]),
        _cmd([0, 0, 0], [0, np.inf, 0]),
        _cmd([0, 0, 0], grip=np.nan),
    ):
        out, why = f.filter(bad, 0.05)
        assert why == [safety.NON_FINITE]
        assert out.linear.tolist() == [0, 0, 0] and out.angular.tolist() == [0, 0, 0]
        assert out.gripper == 1.0  # held, neither dropped nor squeezed
    for dt in (math.nan, -0.01, math.inf, "x"):
        out, why = f.filter(_cmd([0.1, 0, 0]), dt)
        assert why == [safety.INVALID_DT] and not np.any(out.linear)
    out, _ = f.filter(_cmd([0.2, 0, 0]), 0.05)  # ramps again from zero
    assert out.linear[0] == pytest.approx(0.05)


def test_safety_workspace():
    f = SafetyFilter(LIMITS)
    big_dt = 0.5  # the rate limit allows 0.5 m/s of change: not in play
    # at the +x face: +x is cut, -x and other axes pass
    out, why = f.filter(_cmd([0.1, 0.1, 0.05]), big_dt, ee_pos=[0.5, 0.0, 0.4])
    assert out.linear.tolist() == [0.0, pytest.approx(0.1), pytest.approx(0.05)]
    assert safety.WORKSPACE in why
    f.reset()
    out, why = f.filter(_cmd([-0.1, 0, 0]), big_dt, ee_pos=[0.7, 0.0, 0.4])  # outside: back in
    assert out.linear[0] == pytest.approx(-0.1) and why == []
    f.reset()
    out, why = f.filter(_cmd([0, 0, -0.1]), big_dt, ee_pos=[0.0, 0.0, -0.2])  # below the floor
    assert out.linear[2] == 0.0 and why == [safety.WORKSPACE]
    # inside, close to a face: cut so that one step lands on the face at most
    f.reset()
    out, why = f.filter(_cmd([0.0, 0.0, 0.1]), 0.1, ee_pos=[0.0, 0.0, 0.795])
    assert out.linear[2] == pytest.approx(0.05) and safety.WORKSPACE in why
    # the previous output pushing outwards is stopped by the wall, not ramped down
    f.reset()
    for _ in range(10):
        f.filter(_cmd([0.2, 0, 0]), 0.05, ee_pos=[0.0, 0.0, 0.4])
    out, why = f.filter(_cmd([0.2, 0, 0]), 0.05, ee_pos=[0.5, 0.0, 0.4])
    assert out.linear[0] == 0.0 and safety.WORKSPACE in why
    # unknown position with a fence configured: no linear motion
    out, why = f.filter(_cmd([0.1, 0.1, 0.05], [0.1, 0, 0]), big_dt, ee_pos=[np.nan, 0, 0])
    assert not np.any(out.linear) and out.angular[0] == pytest.approx(0.1)
    # no ee_pos, or no box: no fence
    f.reset()
    out, _ = f.filter(_cmd([0.1, 0, 0]), big_dt)
    assert out.linear[0] == pytest.approx(0.1)
    with pytest.raises(InputError, match="ee_pos"):
        f.filter(_cmd([0.1, 0, 0]), big_dt, ee_pos=[0, 0])


def _adversarial_command(rng: np.random.Generator) -> Command:
    """Mostly finite values of every scale (huge, tiny, zero, ordinary); some commands carry
    one NaN or infinity in a random slot."""
    scale = rng.choice([0.02, 0.2, 2.0, 1e6, 1e300])
    vals = rng.normal(scale=scale, size=7)
    special = rng.random(7) < 0.1
    vals[special] = rng.choice([0.0, -0.0, 1e-300, np.finfo(float).max, -np.finfo(float).max])
    if rng.random() < 0.15:
        vals[rng.integers(0, 7)] = rng.choice([np.nan, np.inf, -np.inf])
    return Command(vals[:3], vals[3:6], vals[6])


@pytest.mark.parametrize("with_box", [True, False])
def test_safety_property_random_and_adversarial(with_box):
    limits = LIMITS
    if not with_box:
        fields = {k: getattr(LIMITS, k) for k in LIMITS.__dataclass_fields__}
        limits = SafetyLimits(**{**fields, "workspace_min": None, "workspace_max": None})
    f = SafetyFilter(limits)
    rng = np.random.default_rng(4)
    lin_ax, ang_ax = np.array(limits.max_linear_axis), np.array(limits.max_angular_axis)
    lo, hi = np.array(LIMITS.workspace_min), np.array(LIMITS.workspace_max)
    eps = 1e-9
    prev = Command.zero()
    for _ in range(3000):
        cmd = _adversarial_command(rng)
        dt = float(rng.choice([0.05, 0.0, 1e-9, 3.0, rng.uniform(0, 0.2)]))
        r = rng.random()
        if r < 0.2:
            ee = None
        elif r < 0.25:
            ee = np.array([np.nan, 0.0, 0.0])
        else:
            ee = rng.uniform(lo - 0.3, hi + 0.3)
            if rng.random() < 0.3:  # exactly on faces
                axis = rng.integers(0, 3)
                ee[axis] = (lo if rng.random() < 0.5 else hi)[axis]
        out, why = f.filter(cmd, dt, ee)
        assert out.is_finite(), (cmd, out)
        assert np.all(np.abs(out.linear) <= lin_ax + eps)
        assert np.all(np.abs(out.angular) <= ang_ax + eps)
        assert np.linalg.norm(out.linear) <= limits.max_linear_speed + eps
        assert np.linalg.norm(out.angular) <= limits.max_angular_speed + eps
        assert -1.0 <= out.gripper <= 1.0
        if not cmd.is_finite():
            assert (
                why == [safety.NON_FINITE] and not np.any(out.linear) and not np.any(out.angular)
            )
            assert out.gripper == prev.gripper
        else:
            assert safety.NON_FINITE not in why
            if safety.WORKSPACE not in why:  # a wall may stop harder than the accel limit
                assert (
                    np.linalg.norm(out.linear - prev.linear) <= limits.max_linear_accel * dt + eps
                )
            assert (
                np.linalg.norm(out.angular - prev.angular) <= limits.max_angular_accel * dt + eps
            )
        if with_box and ee is not None and np.all(np.isfinite(ee)):
            assert np.all(out.linear[ee >= hi] <= 0) and np.all(out.linear[ee <= lo] >= 0)
            inside = (ee > lo) & (ee < hi)
            nxt = ee + out.linear * dt
            assert np.all(nxt[inside] <= hi[inside] + eps) and np.all(
                nxt[inside] >= lo[inside] - eps
            )
        elif with_box and ee is not None:
            assert not np.any(out.linear)
        prev = out


# --------------------------------------------------------------------------------- watchdog


def test_watchdog():
    wd = StalenessWatchdog(0.5, ["cam", "proprio", "cam"])
    assert wd.required == ("cam", "proprio")
    assert wd.stale(100.0) == ["cam", "proprio"]
    assert wd.ages(100.0) == {"cam": math.inf, "proprio": math.inf}
    assert wd.update("cam", 99.9, 100.0) and wd.update("proprio", 100.2, 100.0)  # 0.2 s skew ok
    assert wd.stale(100.0) == []
    assert wd.ages(100.1) == {"cam": pytest.approx(0.2), "proprio": pytest.approx(-0.1)}
    assert wd.stale(100.45) == ["cam"]
    assert "old (timeout 0.5 s)" in wd.stale_reasons(100.45)["cam"]
    assert wd.update("extra", 100.0, 100.0) and "extra" in wd.ages(100.0)
    assert "extra" not in wd.stale(200.0)

    # from the future, from the far past, non-finite: rejected, not refreshing the input
    assert not wd.update("cam", 101.0, 100.0)
    assert "in the future" in wd.rejections["cam"]
    assert not wd.update("cam", 0.0, 100000.0)
    assert "old (max 3600 s)" in wd.rejections["cam"]
    assert not wd.update("cam", math.nan, 100.0)
    assert wd.rejected_count["cam"] == 3
    assert wd.ages(100.0)["cam"] == pytest.approx(0.1)
    assert wd.stale(101.0) == ["cam", "proprio"]

    # a clock that went back makes the stored stamps look like the future: stale, then recovers
    assert "ahead of the clock" in wd.stale_reasons(5.0)["cam"]
    assert wd.update("cam", 5.0, 5.0) and wd.update("proprio", 5.0, 5.0)
    assert wd.stale(5.1) == []
    wd.reset()
    assert wd.stale(5.1) == ["cam", "proprio"] and wd.rejections == {}

    never = StalenessWatchdog(1.0, ["cam"])
    never.update("cam", 50.0, 0.0)
    assert "never received (last stamp rejected" in never.stale_reasons(0.0)["cam"]
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match="timeout_s"):
            StalenessWatchdog(bad, ["cam"])


# -------------------------------------------------------------------------------- frame phase


def test_frame_phase_waits_only_for_a_frame_that_is_about_to_arrive():
    from lawm_core.frame_phase import FramePhase

    phase = FramePhase(max_wait_s=0.012)
    assert phase.wait_s(0.0) == 0.0  # nothing seen yet
    for i in range(10):  # 30 Hz with a little jitter
        phase.arrived(i / 30 + (0.001 if i % 2 else -0.001))
    assert phase.period_s == pytest.approx(1 / 30, abs=0.002)
    last = phase.last_s
    # Just after a frame: the next one is 33 ms away, act now on this fresh one.
    assert phase.wait_s(last + 0.002) == 0.0
    # 25 ms after: the next frame is due in about 8 ms, wait for it.
    assert phase.wait_s(last + 0.025) == pytest.approx(1 / 30 - 0.025, abs=0.003)
    # Overdue (the camera is late): never wait for it.
    assert phase.wait_s(last + 0.05) == 0.0
    # A long pause does not stretch the period estimate.
    phase.arrived(last + 5.0)
    assert phase.period_s == pytest.approx(1 / 30, abs=0.002)
    # Disabled, or too few frames to know the period: never wait.
    off = FramePhase(max_wait_s=0.0)
    for i in range(10):
        off.arrived(i / 30)
    assert off.wait_s(9 / 30 + 0.03) == 0.0
    few = FramePhase(max_wait_s=0.012)
    for i in range(3):
        few.arrived(i / 30)
    assert few.wait_s(2 / 30 + 0.03) == 0.0
    with pytest.raises(ValueError, match="max_wait_s"):
        FramePhase(max_wait_s=float("nan"))


def test_frame_wait_waits_for_every_camera_about_to_deliver():
    from lawm_core.frame_phase import FrameWait

    wait = FrameWait(["agentview", "wrist"], max_wait_s=0.012)
    assert wait.due(0.0) == frozenset()  # nothing seen yet
    for i in range(10):  # both at 30 Hz; the wrist camera 5 ms behind the agentview one
        wait.arrived("agentview", i / 30)
        wait.arrived("wrist", i / 30 + 0.005)
    last = 9 / 30
    # Just after both frames: act now on them.
    assert wait.due(last + 0.006) == frozenset()
    # 25 ms after the agentview frame: it is due in ~8 ms, the wrist one in ~13 ms (beyond
    # the 12 ms limit): wait for the agentview frame only.
    assert wait.due(last + 0.025) == {"agentview"}
    # 27 ms after: both due within the limit (in ~6 and ~11 ms).
    assert wait.due(last + 0.027) == {"agentview", "wrist"}
    # 36 ms after: the agentview frame is overdue (never waited for), the wrist one due.
    assert wait.due(last + 0.036) == {"wrist"}
    wait.reset()
    assert wait.due(last + 0.027) == frozenset()
    off = FrameWait(["agentview"], max_wait_s=0.0)
    for i in range(10):
        off.arrived("agentview", i / 30)
    assert off.due(9 / 30 + 0.03) == frozenset()
    with pytest.raises(ValueError, match="camera"):
        FrameWait([], max_wait_s=0.012)


# -------------------------------------------------------------------------------- isolation
