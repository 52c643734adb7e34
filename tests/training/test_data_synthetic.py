"""The synthetic datasets (lawm.data.synthetic) load through the data layer and behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datafiles import AV, EYE

from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5, write_synthetic_videos


def test_synthetic_hdf5_images_follow_the_actions(tmp_path):
    path = write_synthetic_hdf5(tmp_path / "syn.hdf5", episodes=4, length=30, image_size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["syn.hdf5"]  # no temporary left behind
    sources = open_sources(path)
    assert len(sources) == 4 and all(s.success for s in sources)
    assert len({s.instruction for s in sources}) == 4
    moved = still = 0
    for src in sources:
        out = src.read(0, src.length)
        acts = out["actions"]
        assert np.abs(acts).max() <= 1.0 and np.isin(acts[:, 6], (-1.0, 1.0)).all()
        assert (acts[:, 3:6] == 0).all()
        for cam in (AV, EYE):
            frames = out["images"][cam].astype(int)
            changed = np.abs(np.diff(frames, axis=0)).reshape(len(frames) - 1, -1).max(1) > 0
            # Action t acts when it moves, lifts, or switches the gripper (initially open).
            grip_switch = np.diff(np.r_[-1.0, acts[:, 6]])[:-1] != 0
            acting = (acts[:-1, :3] != 0).any(1) | grip_switch
            clear = (np.abs(acts[:-1, :3]) > 0.25).any(1) | grip_switch  # >= 1 px at 4x
            assert not (changed & ~acting).any()  # nothing changes without an action
            assert changed[clear].all()
            moved += int(changed.sum())
            still += int((~changed).sum())
        # ee_pos tracks the block: dx moves x by STEP per unit (clipped at the table edge).
        dpos = np.diff(out["proprio"][:, :2], axis=0)
        inside = (out["proprio"][1:, :2] > 0.05 + 1e-6).all(1) & (
            out["proprio"][1:, :2] < 0.95 - 1e-6
        ).all(1)
        np.testing.assert_allclose(dpos[inside], 0.035 * acts[:-1, :2][inside], atol=1e-5)
    assert moved > 0 and still > 0


def test_synthetic_videos_load_as_unlabeled_clips(tmp_path):
    paths = write_synthetic_videos(
        tmp_path / "clips", clips=2, length=10, image_size=32, fmt="webm"
    )
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [
        "clip_000.txt",
        "clip_000.webm",
        "clip_001.txt",
        "clip_001.webm",
    ]
    sources = open_sources(tmp_path / "clips")
    assert [s.length for s in sources] == [10, 10]
    assert sources[0].instruction.startswith("push the block") and not sources[0].has_actions
    frames = sources[1].read(0, 10)["images"][AV]
    assert frames.shape == (10, 32, 32, 3) and Path(sources[1].name) == paths[1]
    assert np.abs(np.diff(frames.astype(int), axis=0)).max() > 20  # the block moves
