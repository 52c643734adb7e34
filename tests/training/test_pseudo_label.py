"""Clips labelled by the pretrained "kinematic" world model (lawm.pseudo_label): the labeller
inverts pose-code motion, reads only images, and its labels fine-tune a policy.

Real pretraining (debug preset, a few steps) on the synthetic block data, whose frames are
caused by its actions; real HDF5 files in the LIBERO layout."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from lawm import pseudo_label as pl
from lawm.config import preset
from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm.trainer import train


def _trajectory(rng, w: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions and the pose codes they cause: pose_{t+1} = pose_t + W a_t."""
    actions = np.clip(rng.normal(0, 0.5, (length, 7)), -1, 1)
    actions[:, pl.GRIPPER] = np.where(rng.random(length) < 0.5, -1.0, 1.0)
    pose = np.zeros((length, w.shape[0]))
    pose[0] = rng.normal(size=w.shape[0])
    for t in range(length - 1):
        pose[t + 1] = pose[t] + w @ actions[t]
    return actions, pose


def test_the_labeller_inverts_linear_pose_motion_on_unseen_episodes():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 7))
    fit = [_trajectory(rng, w, 80) for _ in range(6)]
    lab = pl.fit_labeller([p for _, p in fit], [a for a, _ in fit])
    test = [_trajectory(rng, w, 60) for _ in range(4)]
    pred = [lab.label(p) for _, p in test]
    acc = pl.label_accuracy([q[:-1] for q in pred], [a[:-1] for a, _ in test])
    assert acc["r2_arm_mean"] > 0.95 and acc["gripper_agreement"] > 0.95, acc
    for q in pred:
        assert np.all(np.abs(q) <= 1.0) and set(np.unique(q[:, pl.GRIPPER])) <= {-1.0, 1.0}
    # Pose codes unrelated to the actions give labels no better than their mean.
    noise = [rng.normal(size=p.shape) for _, p in fit]
    blind = pl.fit_labeller(noise, [a for a, _ in fit])
    guess = [blind.label(rng.normal(size=p.shape)) for _, p in test]
    assert pl.label_accuracy(guess, [a for a, _ in test])["r2_arm_mean"] < 0.2


def test_steps_near_a_clips_end_are_labelled_from_the_changes_that_exist():
    """Each action shows in the pose-code change at its own step and again three steps later,
    so the steps just before a clip's end lack one of the two; they are labelled from the one
    they have, as well as the steps in the middle (stand-ins for the missing change would
    mislabel them)."""
    rng = np.random.default_rng(1)
    w_now, w_late = rng.normal(size=(12, 7)), rng.normal(size=(12, 7))

    def episode(length):
        actions = np.clip(rng.normal(0, 0.5, (length, 7)), -1, 1)
        actions[:, pl.GRIPPER] = np.where(rng.random(length) < 0.5, -1.0, 1.0)
        pose = np.zeros((length, 12))
        for t in range(length - 1):
            late = actions[t - 3] if t >= 3 else np.zeros(7)
            pose[t + 1] = pose[t] + w_now @ actions[t] + w_late @ late
        return actions, pose

    fit = [episode(80) for _ in range(6)]
    lab = pl.fit_labeller([p for _, p in fit], [a for a, _ in fit])
    test = [episode(60) for _ in range(6)]
    near_end = [lab.label(p)[-4:-1] for _, p in test]  # the last step's change is never seen
    acc = pl.label_accuracy(near_end, [a[-4:-1] for a, _ in test])
    assert acc["r2_arm_mean"] > 0.95 and acc["gripper_agreement"] > 0.95, acc
    # A window no demonstration fully sees is refused with the length it needs.
    with pytest.raises(ValueError, match="too short"):
        pl.fit_labeller([p[:8] for _, p in fit], [a[:8] for a, _ in fit])


def test_label_accuracy_and_refusals():
    a = np.tile(np.linspace(-1, 1, 7), (5, 1))
    a[:, pl.GRIPPER] = [1, -1, 1, 1, -1]
    acc = pl.label_accuracy([a], [a])
    assert acc["mse"] == 0 and acc["gripper_agreement"] == 1 and acc["steps"] == 5
    with pytest.raises(ValueError, match="same number"):
        pl.fit_labeller([np.zeros((3, 4))], [])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    cfg = preset("debug")
    assert cfg.world_model.variant == "kinematic"
    cfg = cfg.replace(pretrain=dataclasses.replace(cfg.pretrain, steps=6))
    size = cfg.policy.image_size
    write_synthetic_hdf5(d / "clips.hdf5", episodes=4, length=20, image_size=size, seed=1)
    write_synthetic_hdf5(d / "demos.hdf5", episodes=4, length=20, image_size=size, seed=2)
    cache = d / "lang.safetensors"
    clips = open_sources(d / "clips.hdf5", labelled=False)
    train("pretrain", cfg, clips, d / "pre", lang_cache=cache, progress=False)
    return d, cfg


def test_clips_labelled_from_images_alone_fine_tune_a_policy(pretrained):
    d, cfg = pretrained
    demos = open_sources(d / "demos.hdf5", labelled=True)
    clips = open_sources(d / "clips.hdf5", labelled=False)
    assert not any(c.has_actions for c in clips)  # the labeller cannot read a clip's actions
    labelled, info = pl.label_clips(d / "pre", demos, clips)
    assert info["fit_episodes"] == 4 and info["fit_steps"] == 80
    assert info["alpha"] in pl.RIDGE_ALPHAS and np.isfinite(info["cv_mse"])
    assert [s.length for s in labelled] == [c.length for c in clips]
    for s, c in zip(labelled, clips):
        got = s.read(0, s.length)
        assert s.has_actions and s.instruction == c.instruction
        assert got["actions"].dtype == np.float32 and np.isfinite(got["actions"]).all()
        assert np.all(np.abs(got["actions"]) <= 1.0)
        assert set(np.unique(got["actions"][:, pl.GRIPPER])) <= {-1.0, 1.0}
        assert np.array_equal(got["images"][cfg.policy.cameras[0]],
                              c.read(0, c.length)["images"][cfg.policy.cameras[0]])  # fmt: skip
    cfg = cfg.replace(finetune=dataclasses.replace(cfg.finetune, steps=4))
    out = train("finetune", cfg, demos + labelled, d / "ft", init=d / "pre" / "policy",
                lang_cache=d / "lang.safetensors", progress=False)  # fmt: skip
    assert (d / "ft" / "policy" / "model.safetensors").is_file(), out


def test_a_world_model_without_a_pose_code_is_refused(tmp_path, pretrained):
    d, cfg = pretrained
    paper = cfg.replace(
        world_model=dataclasses.replace(cfg.world_model, variant="paper"),
        pretrain=dataclasses.replace(cfg.pretrain, steps=2),
    )
    clips = open_sources(d / "clips.hdf5", labelled=False)
    train("pretrain", paper, clips, tmp_path / "pre", lang_cache=d / "lang.safetensors",
          progress=False)  # fmt: skip
    demos = open_sources(d / "demos.hdf5", labelled=True)
    with pytest.raises(ValueError, match="variant 'kinematic'"):
        pl.label_clips(tmp_path / "pre", demos, clips)


def test_finetune_command_labels_clips_with_the_init_runs_world_model(pretrained, capsys):
    from lawm.cli import main

    d, _ = pretrained
    common = ["finetune", "--data", str(d / "demos.hdf5"), "--preset", "debug", "--steps", "2",
              "--quiet", "--lang-cache", str(d / "lang.safetensors")]  # fmt: skip
    # No world model to label with: one clear line, nothing trained.
    code = main([*common, "--label-clips", str(d / "clips.hdf5"), "--out", str(d / "no")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "--labeller RUN" in err
    assert not (d / "no" / "policy").exists()
    code = main([*common, "--label-clips", str(d / "clips.hdf5"), "--init",
                 str(d / "pre" / "policy"), "--out", str(d / "cli")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 clips labelled by" in out
    info = json.loads((d / "cli" / "labels.json").read_text())
    assert info["labeller"] == str((d / "pre").resolve()) and info["clips"] == 4
    assert (d / "cli" / "policy" / "model.safetensors").is_file()
    # The labels-first recipe's first stage: a fresh network on the labelled clips alone.
    code = main([*common, "--label-clips", str(d / "clips.hdf5"), "--labeller", str(d / "pre"),
                 "--labels-only", "--out", str(d / "first")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "[finetune] 4 episodes" in out, out
    info = json.loads((d / "first" / "policy" / "config.json").read_text())["info"]
    assert not info.get("init_from"), info  # a fresh network
    code = main([*common, "--labels-only", "--out", str(d / "none")])
    assert code != 0 and "--labels-only" in capsys.readouterr().err


def test_labels_first_in_one_command(pretrained, capsys):
    """finetune --labels-first: the world model labels the clips, a fresh policy clones them
    (OUT/labels_bc), then the demonstrations fine-tune it with its head (OUT/policy)."""
    from lawm.cli import main

    d, _ = pretrained
    out = d / "recipe"
    common = ["finetune", "--data", str(d / "demos.hdf5"), "--preset", "debug", "--steps", "2",
              "--quiet", "--lang-cache", str(d / "lang.safetensors"), "--label-clips",
              str(d / "clips.hdf5"), "--labels-first", "--out", str(out)]  # fmt: skip
    # Refused before anything is trained: no labeller, or an --init the recipe would ignore.
    assert main(common) != 0 and "--labeller RUN" in capsys.readouterr().err
    code = main([*common, "--labeller", str(d / "pre"), "--init", str(d / "pre" / "policy")])
    assert code != 0 and "drop --init" in capsys.readouterr().err
    assert not out.exists()
    code = main([*common, "--labeller", str(d / "pre"), "--label-steps", "3"])
    text = capsys.readouterr().out
    assert code == 0, text
    line = json.loads(text.strip().splitlines()[-1])
    assert line["recipe"] == "labels_first" and line["steps"] == 2
    assert line["labels"]["window"] and line["labels"]["alpha"] in pl.RIDGE_ALPHAS
    stage = json.loads((out / "labels_bc" / "policy" / "config.json").read_text())["info"]
    assert not stage.get("init_from") and stage["steps"] == 3  # a fresh network, 3 steps
    assert json.loads((out / "labels_bc" / "labels.json").read_text())["clips"] == 4
    final = json.loads((out / "policy" / "config.json").read_text())["info"]
    assert final["steps"] == 2 and "labels_bc" in final["init_from"]
    # Rerun: the finished cloning stage is neither relabelled nor retrained.
    stamp = (out / "labels_bc" / "labels.json").stat().st_mtime_ns
    code = main([*common, "--labeller", str(d / "pre"), "--label-steps", "3"])
    assert code == 0 and "already done" in capsys.readouterr().out
    assert (out / "labels_bc" / "labels.json").stat().st_mtime_ns == stamp
    # --rehearse: the labelled clips stay in the fine-tuning data (from a finished cloning
    # stage they are labelled again); the flag alone is refused.
    plain = [a for a in common if a != "--labels-first"]
    assert main([*plain, "--rehearse"]) != 0
    assert "add --labels-first" in capsys.readouterr().err
    again = d / "recipe_rehearse"
    shutil.copytree(out / "labels_bc", again / "labels_bc")
    code = main([*common[:-1], str(again), "--labeller", str(d / "pre"), "--rehearse"])
    assert code == 0 and "and the 4 labelled clips" in capsys.readouterr().out
    for run, episodes in ((out, 4), (again, 4 + 4)):
        state = next((run / "checkpoints").glob("step_*/state.json"))
        assert json.loads(state.read_text())["n_episodes"] == episodes


def test_labels_first_labels_clips_written_as_lerobot_writes_them(pretrained, tmp_path, capsys):
    """Clips from another tool: a LeRobotDataset v3.0 folder (AV1 video, pyarrow parquet) that
    records no actions at all, beside demonstrations in HDF5; a LeRobot-only flag given for the
    clips is not refused because the demonstrations are HDF5."""
    from lerobot_files import IMAGE, make_episodes, write_v3

    from lawm.cli import main

    d, _ = pretrained
    episodes = make_episodes(3, lengths=(18, 14, 21), seed=5)
    root = tmp_path / "video_only"
    written = write_v3(root, episodes, fps=20)  # the demonstrations' rate (LIBERO's)
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["features"]["action"]  # a video dataset: frames, state and task text only
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    out = tmp_path / "recipe"
    code = main(["finetune", "--data", str(d / "demos.hdf5"), "--preset", "debug", "--steps",
                 "2", "--quiet", "--lang-cache", str(d / "lang.safetensors"), "--label-clips",
                 str(written.root), "--lerobot-camera", f"agentview={IMAGE}", "--labels-first",
                 "--labeller", str(d / "pre"), "--label-steps", "2",
                 "--out", str(out)])  # fmt: skip
    text = capsys.readouterr()
    assert code == 0, text.err[-2000:]
    labels = json.loads((out / "labels_bc" / "labels.json").read_text())
    assert labels["clips"] == 3 and labels["fit_episodes"] == 4, labels
    assert "3 clips labelled by" in text.out, text.out
    stage = json.loads((out / "labels_bc" / "policy" / "config.json").read_text())["info"]
    assert not stage.get("init_from") and stage["steps"] == 2, stage
    final = json.loads((out / "policy" / "config.json").read_text())["info"]
    assert "labels_bc" in final["init_from"], final
