"""The ``probe`` diagnostics: its statistics on data with known answers, and the command end to
end on a real (short) pretraining run over tiny synthetic data."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lawm.cli import main
from lawm.config import preset
from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5, write_synthetic_videos
from lawm.probe import CHUNKS, FEATURES, LABELS, PROBE_KEYS, run_probe
from lawm.probe_stats import episode_halves, ridge_r2, select_windows, variance_split
from lawm.trainer import train

ROOT = Path(__file__).resolve().parents[2]


# -- the statistics ---------------------------------------------------------------------------
def _episodes(n_episodes=20, per_episode=20, n_tasks=4):
    episode = np.repeat(np.arange(n_episodes), per_episode)
    return episode, episode % n_tasks


def test_a_probe_on_the_action_itself_scores_one_and_on_noise_at_most_zero():
    rng = np.random.default_rng(0)
    episode, task = _episodes()
    y = rng.normal(size=(len(episode), 6)) + rng.normal(size=(20, 6))[episode]
    fit = episode_halves(episode, task)
    groups = episode[fit]

    def held_out(x, target=y):
        return ridge_r2(x[fit], target[fit], x[~fit], target[~fit], groups=groups)

    assert held_out(y) > 0.99
    assert held_out(2.0 * y + 3.0) > 0.99  # scale and offset do not matter
    noise = rng.normal(size=(len(episode), 40))
    assert held_out(noise) <= 0.02
    # The shuffled baseline: the features carry every target, but fitted to shuffled ones.
    y = rng.normal(size=(len(episode), 6))
    shuffled = y.copy()
    shuffled[fit] = y[fit][rng.permutation(int(fit.sum()))]
    assert -0.05 < held_out(y, shuffled) < 0.02


def test_episode_halves_split_whole_episodes_within_every_task():
    episode, task = _episodes(n_episodes=8, per_episode=5, n_tasks=2)
    fit = episode_halves(episode, task)
    for e in np.unique(episode):
        assert len(set(fit[episode == e])) == 1  # an episode is never split
    for t in (0, 1):
        assert fit[task == t].any() and (~fit[task == t]).any()
    assert fit.sum() == (~fit).sum()


def test_variance_split_puts_each_kind_of_variation_where_it_belongs():
    rng = np.random.default_rng(1)
    episode, task = _episodes()
    by_task = np.eye(4)[task] * 3.0
    split = variance_split(by_task, task, episode)
    assert split["between_tasks"] == pytest.approx(1.0)
    by_episode = rng.normal(size=(20, 3))[episode]
    split = variance_split(by_episode - by_episode.mean(0), task, episode)
    assert split["between_episodes"] > 0.5 and split["within_episode"] < 1e-12
    within = rng.normal(size=(len(episode), 3))
    assert variance_split(within, task, episode)["within_episode"] > 0.8
    shares = [split[k] for k in ("between_tasks", "between_episodes", "within_episode")]
    assert sum(shares) == pytest.approx(1.0)
    assert variance_split(np.ones((len(episode), 2)), task, episode)["between_tasks"] is None


def test_windows_are_capped_and_every_episode_keeps_two():
    episode, start = select_windows([40, 40, 3, 2, 100], max_windows=20)
    assert len(episode) <= 20
    assert sorted(set(episode.tolist())) == [0, 1, 2, 4]  # length 2 has a single window
    for e in (0, 1, 2, 4):
        assert (episode == e).sum() >= 2
    episode, _ = select_windows([30] * 50, max_windows=16)
    assert len(episode) <= 16 and len(set(episode.tolist())) == 8


# -- the command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A real pretraining run (a few steps, debug preset) and labelled held-out episodes."""
    d = tmp_path_factory.mktemp("probe")
    cfg = preset("debug")
    cfg = cfg.replace(pretrain=dataclasses.replace(cfg.pretrain, steps=6))
    size = cfg.policy.image_size
    write_synthetic_hdf5(d / "video.hdf5", episodes=4, length=20, image_size=size, seed=1)
    write_synthetic_hdf5(d / "demos.hdf5", episodes=8, length=20, image_size=size, seed=2)
    video = open_sources(d / "video.hdf5", labelled=False)
    cache = d / "lang.safetensors"
    train("pretrain", cfg, video, d / "pre", lang_cache=cache, progress=False)
    return d


def test_probe_command_prints_every_figure_and_the_documented_json(pretrained):
    d = pretrained
    r = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "probe"]
        + ["--policy", str(d / "pre" / "policy"), "--data", str(d / "demos.hdf5")]
        + ["--lang-cache", str(d / "lang.safetensors"), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    *table, last = r.stdout.strip().splitlines()
    text = "\n".join(table)
    for label in LABELS.values():
        assert label in text, label
    assert "n/a" not in text, text
    result = json.loads(last)
    assert set(result) == set(PROBE_KEYS)
    assert result["world_model"] == str(d / "pre" / "world_model.safetensors")  # found beside
    assert result["n_episodes"] == 8 and result["n_tasks"] == 4
    assert set(result["wm_loss"]) == set(CHUNKS) and set(result["probe_r2"]) == set(FEATURES)
    assert all(np.isfinite(v) for v in result["wm_loss"].values())
    assert set(result["open_loop_mse"]) == {"policy", "zeros", "copy_first"}
    assert all(np.isfinite(v) and v <= 1.0 for v in result["probe_r2"].values())
    assert -0.3 < result["probe_r2"]["shuffled"] < 0.1
    for name in ("latent", "untrained", "proprio", "shuffled"):
        cca = result["cca"][name]
        assert len(cca["first_per_task"]) == 4
        assert all(0.0 <= c <= 1.0 for c in cca["first_per_task"])
    assert 0.0 <= result["saturation"]["latent"] <= 1.0


def test_probe_without_a_world_model_leaves_its_figures_out(pretrained, tmp_path):
    shutil.copytree(pretrained / "pre" / "policy", tmp_path / "policy")
    demos = open_sources(pretrained / "demos.hdf5", labelled=True)
    result = run_probe(
        tmp_path / "policy", demos, lang_cache=pretrained / "lang.safetensors", max_windows=40
    )
    assert result["n_windows"] <= 40
    assert result["wm_loss"] is None and result["open_loop_mse"] is None
    assert result["probe_r2"]["latent"] is not None


def test_probe_refuses_video_and_names_the_fix(tmp_path, capsys):
    write_synthetic_videos(tmp_path / "clips", clips=2, length=6, image_size=32)
    policy = tmp_path / "policy"
    (policy).mkdir()
    code = main(["probe", "--policy", str(policy), "--data", str(tmp_path / "clips")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: probe") and "labelled" in err and "--data" in err


def test_probe_reads_the_motion_world_model_too(pretrained, tmp_path):
    cfg = preset("debug")
    cfg = cfg.replace(
        world_model=dataclasses.replace(cfg.world_model, variant="motion"),
        pretrain=dataclasses.replace(cfg.pretrain, steps=3),
    )
    video = open_sources(pretrained / "video.hdf5", labelled=False)
    cache = pretrained / "lang.safetensors"
    train("pretrain", cfg, video, tmp_path / "pre", lang_cache=cache, progress=False)
    demos = open_sources(pretrained / "demos.hdf5", labelled=True)
    result = run_probe(
        tmp_path / "pre" / "policy",
        demos,
        world_model=tmp_path / "pre" / "world_model.safetensors",
        lang_cache=cache,
        max_windows=40,
    )
    assert all(np.isfinite(v) for v in result["wm_loss"].values())
    assert all(np.isfinite(v) for v in result["open_loop_mse"].values())
