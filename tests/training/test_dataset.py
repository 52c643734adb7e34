"""Training windows over any source (lawm.data.dataset: WindowDataset, collate, worker
processes) and the streaming normalisation statistics (lawm.data.stats)."""

from __future__ import annotations

import copy
import pickle

import cv2
import numpy as np
import pytest
import torch
from datafiles import AV, EYE, TOPICS, frames_with_index, write_bag, write_libero

from lawm import keys
from lawm.data import (
    CAMERA_MASK,
    FRAME_MASK,
    DataError,
    WindowDataset,
    collate,
    compute_stats,
    open_sources,
)
from lawm_sim.recording import write_video


def test_pretrain_windows_pad_the_episode_end_and_carry_no_actions(tmp_path):
    path = tmp_path / "d.hdf5"
    stored = write_libero(path, lengths=(5, 3), size=(16, 16))
    sources = open_sources(path)
    ds = WindowDataset(sources, (AV, EYE), 16, 3, "pretrain")
    assert len(ds) == 4 + 2  # t in [0, length - 1)
    s = ds[2]  # demo_0, t = 2: frames 2, 3, 4, then repeats of 4
    assert keys.ACTIONS not in s and keys.ACTION_MASK not in s
    assert s[keys.IMAGES][AV].shape == (4, 3, 16, 16) and s[keys.IMAGES][AV].dtype == torch.uint8
    want = stored["demo_0"][AV][[2, 3, 4, 4]].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(s[keys.IMAGES][AV].numpy(), want)
    assert s[FRAME_MASK].tolist() == [True, True, True, False]
    assert s[CAMERA_MASK].tolist() == [True, True]
    np.testing.assert_array_equal(
        s[keys.PROPRIO].numpy(), stored["demo_0"]["proprio"][[2, 3, 4, 4]]
    )
    assert s[keys.HAS_PROPRIO].item() is True and s[keys.INSTRUCTION] == "open the drawer"
    last = ds[-1]  # demo_1, t = 1
    assert last[FRAME_MASK].tolist() == [True, True, False, False]

    labelled = WindowDataset(sources, (AV,), 16, 3, "pretrain", with_actions=True)
    s = labelled[3]  # demo_0, t = 3: actions 3, 4, then a repeat of 4
    np.testing.assert_allclose(
        s[keys.ACTIONS].numpy(), stored["demo_0"]["actions"][[3, 4, 4]], rtol=1e-6
    )
    assert s[keys.ACTION_MASK].tolist() == [True, True, False]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_finetune_windows_resize_and_mask_missing_cameras(tmp_path):
    path = tmp_path / "d.hdf5"
    stored = write_libero(path, lengths=(4,), cameras=(AV,), size=(24, 32))
    clip = write_video(tmp_path / "v" / "wave.mp4", frames_with_index(4))
    demos = open_sources(path)
    ds = WindowDataset(demos, (AV, EYE), 8, 3, "finetune")
    assert len(ds) == 4
    s = ds[2]
    assert s[keys.IMAGES][AV].shape == (1, 3, 8, 8) and s[keys.IMAGES][EYE].shape == (1, 3, 8, 8)
    want = cv2.resize(stored["demo_0"][AV][2][:, 4:28], (8, 8), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(s[keys.IMAGES][AV][0].numpy(), want.transpose(2, 0, 1))
    assert not s[keys.IMAGES][EYE].any() and s[CAMERA_MASK].tolist() == [True, False]
    assert s[keys.ACTIONS].shape == (3, 7) and s[keys.ACTION_MASK].tolist() == [
        True,
        True,
        False,
    ]
    np.testing.assert_allclose(
        s[keys.ACTIONS][2].numpy(), stored["demo_0"]["actions"][3], rtol=1e-6
    )
    assert s[FRAME_MASK].tolist() == [True]

    video = open_sources(clip)
    with pytest.raises(DataError, match="no actions"):
        WindowDataset(video, (AV,), 8, 3, "finetune")
    v = WindowDataset(video, (AV, EYE), 8, 3, "pretrain")[0]
    assert v[keys.HAS_PROPRIO].item() is False and not v[keys.PROPRIO].any()
    assert v[CAMERA_MASK].tolist() == [True, False]
    with pytest.raises(DataError, match="none of the cameras"):
        WindowDataset(video, (EYE,), 8, 3, "pretrain")
    one_frame = tmp_path / "one.hdf5"
    write_libero(one_frame, lengths=(1, 1))
    with pytest.raises(DataError, match="no pretrain windows"):
        WindowDataset(open_sources(one_frame), (AV,), 8, 3, "pretrain")


def test_dataloader_workers_match_in_process_reads(tmp_path):
    path = tmp_path / "d.hdf5"
    write_libero(path, lengths=(5, 4), size=(16, 16))
    bag = tmp_path / "bag"
    write_bag(bag, "sqlite3")
    sources = open_sources(path) + open_sources(bag, options=TOPICS)
    # Spawned workers receive the sources pickled: they must hold no open handle.
    assert len(pickle.dumps(sources)) < 100_000
    assert copy.deepcopy(sources)[2].read(0, 1)["images"][AV].shape == (1, 12, 16, 3)
    ds = WindowDataset(sources, (AV, EYE), 16, 2, "finetune")
    # In-process first, so the parent holds open handles when the workers fork.
    expected = collate([ds[i] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b[keys.INSTRUCTION]) for b in batches) == len(ds)
    got = {
        CAMERA_MASK: torch.cat([b[CAMERA_MASK] for b in batches]),
        keys.ACTIONS: torch.cat([b[keys.ACTIONS] for b in batches]),
        keys.PROPRIO: torch.cat([b[keys.PROPRIO] for b in batches]),
    }
    for cam in (AV, EYE):
        assert torch.equal(
            torch.cat([b[keys.IMAGES][cam] for b in batches]), expected[keys.IMAGES][cam]
        )
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key
    assert sum((b[keys.INSTRUCTION] for b in batches), []) == expected[keys.INSTRUCTION]
    assert expected[keys.IMAGES][AV].shape == (len(ds), 1, 3, 16, 16)
    assert expected[keys.ACTION_MASK].dtype == torch.bool and expected[keys.HAS_PROPRIO].shape == (
        len(ds),
    )


def test_stats_stream_over_labelled_sources_only(tmp_path):
    stored = write_libero(tmp_path / "d.hdf5", lengths=(5, 7), size=(4, 4))
    clip = write_video(tmp_path / "v.mp4", frames_with_index(3))
    sources = open_sources(tmp_path / "d.hdf5") + open_sources(clip)
    stats = compute_stats(sources)
    acts = np.concatenate([r["actions"] for r in stored.values()]).astype(np.float32)
    prop = np.concatenate([r["proprio"] for r in stored.values()])
    np.testing.assert_array_equal(stats["action_min"], acts.min(0))
    np.testing.assert_array_equal(stats["action_max"], acts.max(0))
    np.testing.assert_allclose(stats["proprio_mean"], prop.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["proprio_std"], prop.std(0), rtol=1e-5)
    assert bool(stats["has_action_stats"]) and stats["action_min"].dtype == np.float32
    capped = compute_stats(sources, max_frames=6)
    np.testing.assert_array_equal(capped["action_max"], acts[:6].max(0))
    np.testing.assert_allclose(capped["proprio_mean"], prop[:6].mean(0), rtol=1e-5)
    none = compute_stats(open_sources(clip))
    assert not bool(none["has_action_stats"]) and not bool(none["has_proprio_stats"])
    assert (none["action_min"] == -1).all() and (none["action_max"] == 1).all()
    assert (none["proprio_mean"] == 0).all() and (none["proprio_std"] == 1).all()
