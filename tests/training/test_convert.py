"""``convert``: rosbag2 <-> LeRobotDataset v3.0 and HDF5 -> LeRobot, round trips through the
real loaders and writers; the written LeRobot folder read back by plain pyarrow and PyAV too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from lerobot_files import make_episodes

from lawm.convert import convert
from lawm.data import WindowDataset, collate, open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm_core import contract
from lawm_sim.recording import write_bag

ROOT = Path(__file__).resolve().parents[2]
RATE = 20.0
LIBERO_PROPRIO = [0, 1, 2, 6, 7]


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Within AV1's error (mean absolute grey levels), frame by frame."""
    assert got.shape == want.shape and got.dtype == np.uint8
    err = np.abs(got.astype(np.int16) - want.astype(np.int16)).mean(axis=(1, 2, 3))
    assert err.mean() < 4.0 and err.max() < 12.0, err


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Three rosbag2 episodes at 20 Hz with the bridge's topics."""
    root = tmp_path_factory.mktemp("bags") / "in"
    episodes = make_episodes(3)
    for e in episodes:
        stamps = 5_000_000_000 + np.arange(e.length) * 50_000_000
        images = {c: e.images[k] for c, k in
                  (("agentview", "observation.images.image"),
                   ("eye_in_hand", "observation.images.wrist_image"))}  # fmt: skip
        write_bag(root / f"ep{e.index}", images, e.task, stamps, e.action,
                  e.state[:, LIBERO_PROPRIO])  # fmt: skip
    return root, episodes


def _bag_sources(path):
    from lawm.data import RosbagOptions

    return open_sources(path, "rosbag", options=RosbagOptions(control_rate_hz=RATE))


def test_rosbag_to_lerobot_to_rosbag(bags, tmp_path):
    root, episodes = bags
    summary = convert(_bag_sources(root), tmp_path / "lr", "lerobot", progress=False)
    assert summary["episodes"] == 3 and summary["control_rate_hz"] == RATE
    lr = open_sources(tmp_path / "lr")
    for src, e in zip(lr, episodes, strict=True):
        out = src.read(0, src.length)
        assert src.length == e.length and src.instruction == e.task
        assert src.control_rate_hz == RATE
        np.testing.assert_array_equal(out["actions"], e.action)
        np.testing.assert_array_equal(out["proprio"], e.state[:, LIBERO_PROPRIO])
        _close(out["images"]["agentview"], e.images["observation.images.image"])
        _close(out["images"]["eye_in_hand"], e.images["observation.images.wrist_image"])

    convert(lr, tmp_path / "back", "rosbag", progress=False, storage="mcap")
    back = sorted((tmp_path / "back").iterdir())
    assert len(back) == 3 and all((b / "metadata.yaml").is_file() for b in back)
    assert any(p.suffix == ".mcap" for p in back[0].iterdir())
    from rosbags.highlevel import AnyReader

    with AnyReader([back[1]]) as reader:
        conns = [c for c in reader.connections if c.topic == "/libero/agentview/image_raw"]
        stamps = [t for _, t, _ in reader.messages(connections=conns)]
    assert np.all(np.diff(stamps) == 50_000_000)  # 20 Hz, exactly
    again = _bag_sources(tmp_path / "back")
    for src, e in zip(again, episodes, strict=True):
        out = src.read(0, src.length)
        assert src.length == e.length and src.instruction == e.task
        np.testing.assert_array_equal(out["actions"], e.action)
        np.testing.assert_array_equal(out["proprio"], e.state[:, LIBERO_PROPRIO])
        _close(out["images"]["agentview"], e.images["observation.images.image"])


def test_written_lerobot_reads_with_plain_pyarrow_and_pyav(bags, tmp_path):
    root, episodes = bags
    out = tmp_path / "lr"
    convert(_bag_sources(root), out, "lerobot", progress=False)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(e.length for e in episodes)
    assert info["features"]["observation.state"]["names"] == list(contract.PROPRIO_LAYOUT)
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    tasks = pq.read_table(out / "meta/tasks.parquet").to_pydict()
    assert [r["tasks"] for r in eps] == [[e.task] for e in episodes]
    assert tasks["task"] == list(dict.fromkeys(e.task for e in episodes))
    data = pq.read_table(out / info["data_path"].format(chunk_index=0, file_index=0))
    assert data.column("episode_index").to_pylist() == sum(
        ([e.index] * e.length for e in episodes), []
    )
    np.testing.assert_array_equal(
        np.stack(data.column("action").to_pylist()), np.concatenate([e.action for e in episodes])
    )
    # The second episode's frames at from_timestamp + k / fps in the shared mp4.
    key = "observation.images.image"
    video = out / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)
    start = eps[1][f"videos/{key}/from_timestamp"]
    assert start == pytest.approx(episodes[0].length / 20)
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name in ("libdav1d", "av1", "libaom-av1")
        frames = {
            round(float(f.pts * s.time_base), 4): f.to_ndarray(format="rgb24") for f in c.decode(s)
        }
    got = np.stack([frames[round(start + k / 20, 4)] for k in range(episodes[1].length)])
    _close(got, episodes[1].images[key])
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.array(stats[key]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [info["total_frames"]]


def test_hdf5_to_lerobot_gives_the_same_training_batches(tmp_path):
    h5 = write_synthetic_hdf5(tmp_path / "d.hdf5", episodes=4, length=16, image_size=32)
    src = open_sources(h5)
    convert(src, tmp_path / "lr", "lerobot", progress=False)
    lr = open_sources(tmp_path / "lr")
    assert [s.instruction for s in lr] == [s.instruction for s in src]
    a = WindowDataset(src, contract.CAMERAS, 32, 4, mode="finetune")
    b = WindowDataset(lr, contract.CAMERAS, 32, 4, mode="finetune")
    assert len(a) == len(b)
    idx = list(range(0, len(a), 5))
    ba, bb = collate([a[i] for i in idx]), collate([b[i] for i in idx])
    np.testing.assert_array_equal(ba["actions"].numpy(), bb["actions"].numpy())
    np.testing.assert_array_equal(ba["proprio"].numpy(), bb["proprio"].numpy())
    for cam in contract.CAMERAS:
        diff = (ba["images"][cam].float() - bb["images"][cam].float()).abs().mean()
        assert float(diff) < 6.0


def test_convert_command_and_its_refusals(bags, tmp_path):
    root, episodes = bags

    def cli(*args):
        return subprocess.run(
            [sys.executable, str(ROOT / "training/train.py"), "convert", *map(str, args)],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )  # fmt: skip

    out = tmp_path / "lr"
    r = cli("--data", root, "--to", "lerobot", "--out", out, "--control-rate-hz", 20, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Svt[info]" not in r.stderr  # the encoder's banner stays quiet
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 3 and summary["frames"] == sum(e.length for e in episodes)
    r = cli("--data", root, "--to", "lerobot", "--out", out, "--control-rate-hz", 20)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert len(open_sources(out)) == 3  # untouched
