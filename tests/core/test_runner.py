"""PolicyRunner: the decisions of one control step, on a really exported model, without ROS."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from lawm_core.model import PolicyModel
from lawm_core.preprocess import fit_image
from lawm_core.runner import INSTRUCTION, PROPRIO, PolicyRunner


@pytest.fixture(scope="module")
def model(exported_debug_model) -> PolicyModel:
    return PolicyModel(exported_debug_model, providers="cpu", threads=1)


@pytest.fixture
def runner(model) -> PolicyRunner:
    return PolicyRunner(model)


def _images(model: PolicyModel, seed: int, shape: tuple[int, int] | None = None):
    """camera -> uint8 (H, W, 3) random RGB; (S, S, 3) at the model's size by default."""
    rng = np.random.default_rng(seed)
    h, w = shape or (model.image_size, model.image_size)
    return {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in model.cameras}


def _lang(model: PolicyModel) -> np.ndarray:
    v = np.random.default_rng(123).normal(size=model.lang_dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _period(model: PolicyModel) -> float:
    return 1.0 / model.control_rate_hz


def test_each_step_executes_the_mean_of_the_chunks_predicted_for_it(model, runner):
    k, lang, period = model.chunk_size, _lang(model), _period(model)
    assert k > 1
    chunks, actions = [], []
    for t in range(k + 3):
        r = runner.step(_images(model, t), None, lang, 10.0 + t * period)
        assert r.acted and r.reason is None and r.reset is None
        assert r.n_chunks == min(t + 1, k)
        # This step's chunk is the model's prediction for these inputs (training-mean proprio).
        want = model.predict(_images(model, t), runner.proprio_mean, lang)
        np.testing.assert_allclose(r.chunk, want, rtol=0, atol=1e-6)
        chunks.append(r.chunk)
        actions.append(r.action)
    for t, action in enumerate(actions):
        # Row j of the chunk predicted j steps ago, for every chunk that covers step t.
        rows = [chunks[t - j][j] for j in range(min(t + 1, k))]
        np.testing.assert_allclose(action, np.clip(np.mean(rows, axis=0), -1, 1), atol=1e-6)
    # Aggregation is visible: the executed action is not just the newest chunk's first row.
    assert np.abs(actions[-1] - chunks[-1][0]).max() > 1e-4


def test_a_gap_or_the_clock_going_back_restarts_the_aggregation(model, runner):
    lang, period = _lang(model), _period(model)
    assert runner.max_gap_s == pytest.approx(2 * period)
    t = 100.0
    for i in range(3):
        r = runner.step(_images(model, i), None, lang, t + i * period)
    assert r.n_chunks == 3
    t += 2 * period + 1.9 * period  # a late step within the allowed gap: aggregated
    r = runner.step(_images(model, 3), None, lang, t)
    assert r.reset is None and r.n_chunks == min(4, model.chunk_size)

    t += 2.5 * period  # a stalled loop: the stored chunks were meant for other times
    r = runner.step(_images(model, 4), None, lang, t)
    assert r.acted and r.n_chunks == 1 and "gap" in r.reset, r.reset
    np.testing.assert_allclose(r.action, np.clip(r.chunk[0], -1, 1), atol=1e-7)

    r = runner.step(_images(model, 5), None, lang, t + period)
    assert r.reset is None and r.n_chunks == 2
    r = runner.step(_images(model, 6), None, lang, 5.0)  # a restarted simulation's clock
    assert r.acted and r.n_chunks == 1 and "back" in r.reset, r.reset

    # The allowed gap is configurable, and must be a positive number of seconds.
    patient = PolicyRunner(model, max_gap_s=10.0)
    patient.step(_images(model, 0), None, lang, 0.0)
    assert patient.step(_images(model, 1), None, lang, 5.0).n_chunks == 2
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="max_gap_s"):
            PolicyRunner(model, max_gap_s=bad)
    with pytest.raises(ValueError, match="now_s"):
        runner.step(_images(model, 0), None, lang, float("inf"))


def test_an_explicit_reset_restarts_the_aggregation(model, runner):
    lang, period = _lang(model), _period(model)
    runner.step(_images(model, 0), None, lang, 0.0)
    assert runner.step(_images(model, 1), None, lang, period).n_chunks == 2
    runner.reset()
    r = runner.step(_images(model, 2), None, lang, 2 * period)
    assert r.acted and r.n_chunks == 1


def test_a_missing_camera_gives_no_action_and_names_the_camera(model, runner):
    lang, period = _lang(model), _period(model)
    first = runner.step(_images(model, 0), None, lang, 0.0)
    assert first.acted and first.was_missing  # nothing had arrived before the first step
    cam = model.cameras[-1]
    images = _images(model, 1)
    del images[cam]
    r = runner.step(images, None, lang, period)
    assert not r.acted and r.action is None and r.raw is None and r.chunk is None
    assert r.missing == (cam,) and cam in r.reason and r.error is None
    assert r.reset is not None and not r.was_missing  # inputs just went missing

    back = runner.step(_images(model, 2), None, lang, 2 * period)
    assert back.acted and back.was_missing and back.n_chunks == 1  # restarted

    # Inputs the caller found stale count as missing, even a camera whose image is given;
    # no instruction embedding yet is missing too.
    r = runner.step(_images(model, 3), None, None, 3 * period, stale=[model.cameras[0], PROPRIO])
    assert not r.acted and r.missing == (model.cameras[0], PROPRIO, INSTRUCTION)
    assert all(name in r.reason for name in r.missing)


def test_malformed_proprio_is_refused_and_reported(model, runner):
    lang, period = _lang(model), _period(model)
    runner.step(_images(model, 0), None, lang, 0.0)
    proprio = runner.proprio_mean.copy()
    proprio[1] = np.nan
    r = runner.step(_images(model, 1), proprio, lang, period)
    assert not r.acted and r.missing == ()
    assert "proprio" in r.error and "non-finite" in r.error, r.error
    assert r.reset is not None  # the aggregation restarts after a refused step

    r = runner.step(_images(model, 2), proprio[:3], lang, 2 * period)
    assert not r.acted and "proprio" in r.error and "shape" in r.error, r.error

    good = np.arange(model.proprio_dim, dtype=np.float32) / 10
    r = runner.step(_images(model, 3), good, lang, 3 * period)
    assert r.acted and r.n_chunks == 1
    want = model.predict(_images(model, 3), good, lang)
    np.testing.assert_allclose(r.chunk, want, rtol=0, atol=1e-6)
    # The robot state reaches the model: the training mean gives another chunk.
    mean = model.predict(_images(model, 3), runner.proprio_mean, lang)
    assert np.abs(r.chunk - mean).max() > 1e-6


def test_the_raw_action_is_denormalised_with_the_exported_statistics(
    exported_debug_model, tmp_path
):
    # Asymmetric statistics, so that a normalised 0 is not a raw 0.
    lo = np.array([0.0, 1.0, 2.0, -3.0, -4.0, 5.0, -1.0])
    hi = lo + np.array([2.0, 4.0, 6.0, 1.0, 8.0, 0.5, 2.0])
    d = Path(shutil.copytree(exported_debug_model, tmp_path / "model"))
    sidecar = json.loads((d / "policy.json").read_text())
    sidecar["normalization"].update(action_min=lo.tolist(), action_max=hi.tolist())
    (d / "policy.json").write_text(json.dumps(sidecar))
    model = PolicyModel(d, providers="cpu", threads=1)
    runner = PolicyRunner(model)

    np.testing.assert_allclose(model.denormalize(np.zeros(7)), (lo + hi) / 2)
    r = runner.step(_images(model, 0), None, _lang(model), 0.0)
    assert r.acted and r.raw.shape == r.action.shape == (7,)
    np.testing.assert_allclose(r.raw, (r.action + 1) / 2 * (hi - lo) + lo, atol=1e-9)


def test_an_image_of_another_size_is_fitted_as_in_training(model, runner):
    lang = _lang(model)
    images = _images(model, 0, shape=(3 * model.image_size, 4 * model.image_size))
    r = runner.step({**images, "unused_camera": images[model.cameras[0]]}, None, lang, 0.0)
    assert r.acted, r.reason
    fitted = {c: fit_image(img, model.image_size) for c, img in images.items()}
    want = model.predict(fitted, runner.proprio_mean, lang)
    np.testing.assert_allclose(r.chunk, want, rtol=0, atol=1e-6)

    # A malformed image is refused, not raised.
    bad = {**images, model.cameras[0]: images[model.cameras[0]].astype(np.float32)}
    r = runner.step(bad, None, lang, _period(model))
    assert not r.acted and "uint8" in r.error, r.error


# ------------------------------------------------ a model trained on one camera, no robot state
@pytest.fixture(scope="module")
def camera_only(tmp_path_factory) -> PolicyModel:
    import torch

    from lawm.checkpoint import save_policy
    from lawm.config import preset
    from lawm.export import export_policy
    from lawm.models.policy import Policy

    tmp = tmp_path_factory.mktemp("camera_only")
    cfg = preset("debug")
    torch.manual_seed(2)
    info = {"inputs": {"cameras": ["eye_in_hand"], "proprio": False}, "action_space": "twist"}
    save_policy(tmp / "p", Policy(cfg.policy), cfg, info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(tmp / "p", tmp / "export", text_encoder=False)
    return PolicyModel(tmp / "export", providers="cpu", threads=1)


def test_a_model_without_robot_state_needs_only_its_camera_and_instruction(camera_only):
    model, lang, period = camera_only, _lang(camera_only), _period(camera_only)
    assert model.cameras == ("eye_in_hand",) and not model.has_proprio
    runner = PolicyRunner(model)
    assert runner.proprio_mean.shape == (0,)
    images = _images(model, 0)
    want = model.predict(images, None, lang)
    # Any robot state is ignored; so are the staleness of proprio and of a camera it lacks.
    for i, proprio in enumerate((None, np.ones(5, np.float32), np.zeros(3))):
        r = runner.step(images, proprio, lang, i * period, stale=[PROPRIO, "agentview"])
        assert r.acted, r.reason
        np.testing.assert_allclose(r.chunk, want, rtol=0, atol=1e-6)
    # Its own camera and the instruction still count.
    r = runner.step({}, None, None, 3 * period, stale=[PROPRIO])
    assert not r.acted and r.missing == ("eye_in_hand", INSTRUCTION)
    r = runner.step(images, None, lang, 4 * period, stale=["eye_in_hand", "gripper"])
    assert not r.acted and r.missing == ("eye_in_hand", "gripper")
