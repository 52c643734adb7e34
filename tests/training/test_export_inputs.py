"""Export = training: the exported graph takes the inputs the training data provided and
computes, for them, what training optimised (the masked forward), on the training batches'
own inputs; the runtime core feeds exactly those inputs.

Real LIBERO-layout HDF5 files (h5py), real training steps, real ONNX export and onnxruntime;
no mocks. The run record keys the trainer writes (``info["inputs"]``, ``proprio_layout``,
``control_rate_hz``, ``gripper``) are set from the data here; where the trainer already wrote
them, they must agree.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pytest
import torch
from datafiles import AV, EYE, write_libero

from lawm import keys
from lawm.checkpoint import load_policy, save_policy
from lawm.config import preset
from lawm.data import WindowDataset, collate, open_sources
from lawm.export import ExportError, export_policy
from lawm.models.policy import Policy, policy_inputs
from lawm.trainer import LangTable, train
from lawm_core import contract
from lawm_core.model import PolicyModel
from lawm_core.runner import PROPRIO, PolicyRunner
from lawm_core.sidecar import PolicySidecar

TOLERANCE = 1e-4
WIDTH_GRIPPER = {"convention": "width", "open": 0.08, "closed": 0.0}
JOINT_LAYOUT = ["ee_x", "ee_y", "ee_z", "joint:finger_left", "joint:finger_right"]


def _libero(path: Path, cameras, proprio: bool, seed: int) -> Path:
    """A LIBERO-layout file with ``cameras`` only; without ``proprio`` it has no end-effector
    and finger observations (as a camera-only recording)."""
    write_libero(path, lengths=(9, 7), cameras=cameras, size=(40, 48), seed=seed)
    if not proprio:
        with h5py.File(path, "a") as f:
            for demo in f["data"].values():
                del demo["obs/ee_pos"], demo["obs/gripper_states"]
    return path


def _record(policy_dir: Path, cameras, proprio: bool, **extra) -> dict:
    """Set the run record's data keys in ``policy_dir/config.json``; where the trainer already
    recorded the inputs, they must be these."""
    path = policy_dir / "config.json"
    data = json.loads(path.read_text())
    inputs = {"cameras": list(cameras), "proprio": proprio}
    if "inputs" in data["info"]:
        assert data["info"]["inputs"] == inputs
    data["info"].update(inputs=inputs, **extra)
    path.write_text(json.dumps(data))
    return data["info"]


def _cfg():
    cfg = preset("debug")
    finetune = cfg.finetune.__class__(**{**cfg.finetune.__dict__, "steps": 3})
    return cfg.replace(finetune=finetune)


def _export(policy_dir: Path, out: Path) -> PolicySidecar:
    with warnings.catch_warnings():  # the tracer's deprecation chatter is not ours
        warnings.simplefilter("ignore")
        return export_policy(policy_dir, out, text_encoder=False)


def _batch(cfg, sources, lang_cache: Path, n: int = 8) -> dict:
    """A training batch as the trainer builds it: dataset windows, collated, with language."""
    pc = cfg.policy
    ds = WindowDataset(sources, pc.cameras, pc.image_size, pc.chunk_size, mode="finetune")
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)
    batch = collate([ds[int(i)] for i in idx])
    table = LangTable([s.instruction for s in sources], lang_cache, pc.lang_dim)
    batch[keys.LANG] = table(batch[keys.INSTRUCTION])
    return batch


def _training_forward(policy: Policy, batch: dict) -> np.ndarray:
    """What the training loss sees: the forward on the batch's inputs with its masks."""
    with torch.no_grad():
        return policy(**policy_inputs(batch)).clamp(-1, 1).numpy()


def _graph_feed(batch: dict, sidecar: PolicySidecar) -> dict[str, np.ndarray]:
    """The batch's inputs as graph inputs (HWC images of the exported cameras, proprio when
    exported, language)."""
    feed = {
        contract.onnx_image_input(c): batch[keys.IMAGES][c][:, 0].permute(0, 2, 3, 1).numpy()
        for c in sidecar.cameras
    }
    if sidecar.has_proprio:
        feed[contract.ONNX_PROPRIO_INPUT] = batch[keys.PROPRIO][:, 0].numpy()
    feed[contract.ONNX_LANG_INPUT] = batch[keys.LANG].numpy()
    return feed


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    (d / "full").mkdir()
    (d / "mixed").mkdir()
    (d / "front").mkdir()
    _libero(d / "full" / "both.hdf5", (AV, EYE), proprio=True, seed=1)
    _libero(d / "mixed" / "both.hdf5", (AV, EYE), proprio=True, seed=2)
    _libero(d / "mixed" / "front_only.hdf5", (AV,), proprio=False, seed=3)
    _libero(d / "front" / "front_only.hdf5", (AV,), proprio=False, seed=4)
    return {k: d / k for k in ("full", "mixed", "front")}


@pytest.fixture(scope="module")
def two_camera_policy(data, lang_cache, tmp_path_factory) -> Path:
    """A policy fine-tuned on two-camera data with robot state (what a user starts from)."""
    run = tmp_path_factory.mktemp("two_camera")
    train(
        "finetune", _cfg(), open_sources(data["full"]), run, lang_cache=lang_cache, progress=False
    )
    _record(run / "policy", (AV, EYE), True)
    return run / "policy"


@pytest.fixture(scope="module")
def one_camera(data, lang_cache, two_camera_policy, tmp_path_factory):
    """That policy fine-tuned on front-camera-only bags without robot state, exported."""
    run = tmp_path_factory.mktemp("one_camera")
    cfg = _cfg()
    sources = open_sources(data["front"])
    assert all(s.cameras == (AV,) and not s.has_proprio for s in sources)
    train(
        "finetune",
        cfg,
        sources,
        run,
        init=two_camera_policy,
        lang_cache=lang_cache,
        progress=False,
    )
    _record(run / "policy", (AV,), False, proprio_layout=[], control_rate_hz=20.0)
    sidecar = _export(run / "policy", run / "export")
    return cfg, sources, run / "policy", run / "export", sidecar


def test_a_model_fine_tuned_on_one_camera_exports_as_a_one_camera_model(one_camera):
    _, _, _, export, sidecar = one_camera
    assert sidecar.cameras == (AV,)
    assert (sidecar.proprio_dim, sidecar.proprio_layout, sidecar.has_proprio) == (0, (), False)
    assert sidecar.normalization.proprio_mean == sidecar.normalization.proprio_std == ()
    names = [contract.onnx_image_input(AV), contract.ONNX_LANG_INPUT]
    assert [t.name for t in sidecar.inputs] == names == contract.onnx_input_names((AV,), False)
    sess = ort.InferenceSession(str(export / "policy.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == names
    assert PolicySidecar.read(export) == sidecar
    assert sidecar.parity_max_abs_error <= TOLERANCE


def test_the_graph_computes_the_masked_training_forward_on_the_training_batches(
    one_camera, lang_cache
):
    cfg, sources, policy_dir, export, sidecar = one_camera
    policy, _, _ = load_policy(policy_dir)
    policy.eval()
    batch = _batch(cfg, sources, lang_cache)
    # The training batch masks the camera and the proprio the data lack.
    assert not batch["camera_mask"][:, 1].any() and batch["camera_mask"][:, 0].all()
    assert not batch[keys.HAS_PROPRIO].any()
    want = _training_forward(policy, batch)

    sess = ort.InferenceSession(str(export / "policy.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run([contract.ONNX_ACTION_OUTPUT], _graph_feed(batch, sidecar))[0]
    assert got.shape == want.shape == (8, cfg.policy.chunk_size, 7)
    assert np.abs(got - want).max() < TOLERANCE

    # The runtime core feeds the graph only its inputs: no proprio, only the front camera.
    model = PolicyModel(export, providers="cpu", threads=1)
    assert model.cameras == (AV,) and not model.has_proprio and model.proprio_layout == ()
    runner = PolicyRunner(model)
    for i in range(3):
        image = batch[keys.IMAGES][AV][i, 0].permute(1, 2, 0).numpy()
        lang = batch[keys.LANG][i].numpy()
        chunk = model.predict({AV: image}, None, lang)
        assert np.abs(chunk - want[i]).max() < TOLERANCE
        # The runner ignores a robot state and a wrist image it is given, and their staleness.
        runner.reset()
        wrist = np.full_like(image, 200)
        step = runner.step(
            {AV: image, EYE: wrist}, np.ones(5, np.float32), lang, 0.0, stale=[PROPRIO, EYE]
        )
        assert step.acted, step.reason
        assert np.abs(step.chunk - want[i]).max() < TOLERANCE


def test_the_graph_the_old_export_made_computed_something_else(one_camera, lang_cache):
    """The defect this replaces: the unmasked forward, fed the proprio mean and a real second
    camera image, is not what training optimised."""
    cfg, sources, policy_dir, _, _ = one_camera
    policy, _, _ = load_policy(policy_dir)
    policy.eval()
    batch = _batch(cfg, sources, lang_cache)
    want = _training_forward(policy, batch)
    images = {c: v[:, 0] for c, v in batch[keys.IMAGES].items()}
    images[EYE] = images[AV].flip(-1)  # a real image where training saw none
    mean = policy.proprio_mean.expand(len(want), -1)
    with torch.no_grad():
        old = policy(images, mean, batch[keys.LANG]).clamp(-1, 1).numpy()
    assert np.abs(old - want).max() > 1e-3


def test_inputs_present_in_some_episodes_are_kept_with_the_data_layout(data, lang_cache, tmp_path):
    cfg = _cfg()
    sources = open_sources(data["mixed"])
    assert {s.cameras for s in sources} == {(AV, EYE), (AV,)}
    train("finetune", cfg, sources, tmp_path / "run", lang_cache=lang_cache, progress=False)
    policy_dir = tmp_path / "run" / "policy"
    _record(
        policy_dir,
        (AV, EYE),
        True,
        proprio_layout=JOINT_LAYOUT,
        control_rate_hz=15.0,
        gripper=WIDTH_GRIPPER,
    )
    sidecar = _export(policy_dir, tmp_path / "export")
    assert sidecar.cameras == (AV, EYE)
    assert sidecar.proprio_dim == 5 and sidecar.proprio_layout == tuple(JOINT_LAYOUT)
    assert sidecar.control_rate_hz == 15.0
    space = sidecar.action_space
    assert (space.gripper, space.gripper_open, space.gripper_closed) == ("width", 0.08, 0.0)
    assert space.kind == contract.ACTION_OSC_POSE_DELTA  # recorded by the HDF5 data
    assert PolicySidecar.read(tmp_path / "export") == sidecar

    # On the batch samples that have every exported input, the graph is the training forward.
    policy, _, _ = load_policy(policy_dir)
    policy.eval()
    batch = _batch(cfg, sources, lang_cache, n=12)
    full = batch["camera_mask"].all(1) & batch[keys.HAS_PROPRIO]
    assert 0 < int(full.sum()) < 12
    want = _training_forward(policy, batch)[full.numpy()]
    sess = ort.InferenceSession(
        str(tmp_path / "export" / "policy.onnx"), providers=["CPUExecutionProvider"]
    )
    feed = {k: v[full.numpy()] for k, v in _graph_feed(batch, sidecar).items()}
    got = sess.run([contract.ONNX_ACTION_OUTPUT], feed)[0]
    assert np.abs(got - want).max() < TOLERANCE
    model = PolicyModel(tmp_path / "export", providers="cpu", threads=1)
    assert model.has_proprio and model.proprio_layout == tuple(JOINT_LAYOUT)


# -------------------------------------------------------------------- a malformed run record
@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("untrained") / "policy"
    cfg = preset("debug")
    save_policy(d, Policy(cfg.policy), cfg, {"action_space": contract.ACTION_TWIST})
    return d


@pytest.mark.parametrize(
    "info, needle",
    [
        ({"inputs": {"cameras": ["left"], "proprio": True}}, "info.inputs: cameras ['left']"),
        ({"inputs": {"cameras": [], "proprio": False}}, "info.inputs: cameras []"),
        ({"inputs": {"cameras": [AV]}}, "info.inputs: must be"),
        ({"proprio_layout": ["ee_x", "wrist"]}, "info.proprio_layout: must list the model's 5"),
        (
            {"proprio_layout": ["ee_x", "ee_y", "ee_z", "joint:a", "wrist"]},
            "info.proprio_layout: 'wrist' is not a proprio name",
        ),
        ({"control_rate_hz": 0}, "info.control_rate_hz: must be a finite number of Hz > 0"),
        ({"gripper": {"convention": "width", "open": 0.04, "closed": 0.04}}, "equals open"),
        ({"gripper": {"convention": "width", "open": 0.08}}, "info.gripper: must be an object"),
        ({"gripper": {"convention": "sign", "open": 0.0, "closed": 1.0}}, "sign convention"),
    ],
)
def test_a_malformed_run_record_is_refused_naming_the_key(untrained, tmp_path, info, needle):
    path = untrained / "config.json"
    saved = path.read_text()
    data = json.loads(saved)
    data["info"].update(info)
    try:
        path.write_text(json.dumps(data))
        with pytest.raises(ExportError) as err:
            export_policy(untrained, tmp_path / "export", text_encoder=False)
    finally:
        path.write_text(saved)
    assert f"{untrained}/config.json" in str(err.value) and needle in str(err.value)
    assert not (tmp_path / "export" / "policy.onnx").exists()


def test_a_rate_other_than_the_datas_is_refused(untrained, tmp_path):
    path = untrained / "config.json"
    saved = path.read_text()
    data = json.loads(saved)
    data["info"]["control_rate_hz"] = 30.0
    try:
        path.write_text(json.dumps(data))
        with pytest.raises(ExportError, match="sampled at 30.0 Hz"):
            export_policy(untrained, tmp_path / "export", text_encoder=False, control_rate_hz=20)
    finally:
        path.write_text(saved)
