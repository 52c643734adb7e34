"""Training curves in TensorBoard: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lawm.board import BOARD_DIR, prediction_strip
from lawm.config import preset
from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def _board(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run / BOARD_DIR), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def test_prediction_strip_puts_each_window_above_its_prediction():
    target = np.zeros((2, 3, 4, 5, 3), np.uint8)
    guess = np.full((2, 3, 4, 5, 3), 200, np.uint8)
    target[1, 2] = 99
    strip = prediction_strip(target, guess)
    assert strip.shape == (2 * 2 * 4, 3 * 5, 3)
    assert (strip[:4] == 0).all() and (strip[4:8] == 200).all()
    assert (strip[8:12, 10:15] == 99).all() and (strip[8:12, :10] == 0).all()


def test_pretraining_and_fine_tuning_write_curves_and_predictions(tmp_path, lang_cache):
    cfg = preset("debug")
    size = cfg.policy.image_size
    opt = {"steps": 8, "checkpoint_every": 4, "log_every": 2}
    cfg = cfg.replace(
        pretrain=dataclasses.replace(cfg.pretrain, **opt),
        finetune=dataclasses.replace(cfg.finetune, **opt),
    )
    path = write_synthetic_hdf5(tmp_path / "d.hdf5", episodes=4, length=16, image_size=size)
    run = tmp_path / "pre"
    # Interrupted at step 5, then resumed: one curve, each step once.
    video = open_sources(path, labelled=False)
    train("pretrain", cfg, video, run, lang_cache=lang_cache, progress=False, stop_at=5)
    train("pretrain", cfg, video, run, lang_cache=lang_cache, progress=False)
    ea = _board(run)
    scalars = set(ea.Tags()["scalars"])
    for name in ("loss", "lr", "grad_norm", "samples_per_s", "z_std", "z_abs"):
        assert f"pretrain/{name}" in scalars, scalars
    steps = [e.step for e in ea.Scalars("pretrain/loss")]
    assert steps == [2, 4, 6, 8], steps
    assert all(np.isfinite(e.value) for e in ea.Scalars("pretrain/loss"))
    images = ea.Images("pretrain/world_model")
    assert sorted({e.step for e in images}) == [4, 5, 8]  # each checkpoint (5: the stop)
    k = cfg.policy.chunk_size
    wm = cfg.world_model.image_size
    assert (images[-1].width, images[-1].height) == ((k + 1) * wm, 2 * 4 * wm)

    ft = tmp_path / "ft"
    demos = open_sources(path, labelled=True)
    train("finetune", cfg, demos, ft, init=run / "policy", lang_cache=lang_cache, progress=False)
    ea = _board(ft)
    assert "finetune/loss" in ea.Tags()["scalars"] and not ea.Tags()["images"]
    assert [e.step for e in ea.Scalars("finetune/lr")] == [2, 4, 6, 8]


def test_wandb_flag_without_wandb_is_one_clear_line(tmp_path):
    pytest.importorskip("tensorboard")
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    path = write_synthetic_hdf5(tmp_path / "d.hdf5", episodes=2, length=12, image_size=32)
    r = subprocess.run(
        [sys.executable, str(ROOT / "training/train.py"), "pretrain", "--data", str(path),
         "--preset", "debug", "--steps", "2", "--out", str(tmp_path / "run"), "--wandb",
         "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "wandb" in r.stderr and "Traceback" not in r.stderr
