"""Hostile data files never crash a training run with a traceback: truncated or corrupt HDF5,
video, LeRobot and rosbag2 files, written the way their tools write them and then damaged.
Without --skip-bad the run stops with one line naming the file (and episode); with it the run
goes on without them and counts them in its summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datafiles import write_bag
from lerobot_files import make_episodes, write_v21

from lawm.cli import main
from lawm.data.synthetic import write_synthetic_hdf5, write_synthetic_videos


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _scramble(path: Path, start: float = 0.4, stop: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    for i in range(int(len(data) * start), int(len(data) * stop), 7):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def _hdf5(root: Path) -> tuple[Path, list[str]]:
    root.mkdir()
    for i in range(3):
        write_synthetic_hdf5(root / f"part{i}.hdf5", episodes=3, length=12, image_size=32, seed=i)
    _truncate(root / "part1.hdf5")
    _scramble(root / "part2.hdf5", 0.05, 0.2)  # the metadata near the start
    return root, ["--preset", "debug"]


def _video(root: Path) -> tuple[Path, list[str]]:
    write_synthetic_videos(root, clips=4, length=12, image_size=32, fmt="mp4")
    bad = sorted(root.glob("*.mp4"))[1]
    _truncate(bad, 0.3)
    return root, ["--preset", "debug", "--control-rate-hz", "10"]


def _lerobot(root: Path) -> tuple[Path, list[str]]:
    write_v21(root, make_episodes(4, size=64), fps=10)
    for mp4 in root.rglob("episode_000002.mp4"):  # read only when training meets it
        _truncate(mp4)
    return root, ["--preset", "debug", "--control-rate-hz", "10", "--workers", "2"]


def _lerobot_parquet(root: Path) -> tuple[Path, list[str]]:
    write_v21(root, make_episodes(4, size=64), fps=10)
    _truncate(next(root.rglob("episode_000001.parquet")), 0.6)  # its data rows
    return root, ["--preset", "debug", "--control-rate-hz", "10"]


def _rosbag(root: Path) -> tuple[Path, list[str]]:
    root.mkdir()
    for i in range(3):
        write_bag(root / f"ep{i}", "mcap")
    (bad,) = (root / "ep1").glob("*.mcap")
    _scramble(bad, 0.3, 0.9)  # chunks of serialized (CDR) messages
    topics = ["--image-topic", "agentview=/cam/front/image_raw",
              "--image-topic", "eye_in_hand=/cam/wrist/compressed"]  # fmt: skip
    return root, ["--preset", "debug", *topics]


MAKERS = {
    "hdf5": _hdf5,
    "video": _video,
    "lerobot": _lerobot,
    "lerobot_parquet": _lerobot_parquet,
    "rosbag": _rosbag,
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_a_damaged_file_stops_the_run_in_one_line_or_is_skipped(kind, tmp_path, capsys):
    data, flags = MAKERS[kind](tmp_path / kind)
    common = ["pretrain", "--data", str(data), "--steps", "6", "--quiet", *flags]

    code = main([*common, "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: pretrain: ") and str(data) in lines[0]

    code = main([*common, "--out", str(tmp_path / "lenient"), "--skip-bad"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 6
    want = 2 if kind == "hdf5" else 1
    assert summary["skipped"] == want, err[-2000:]
    assert err.count("skipping an unreadable") == want, err[-2000:]
    assert "Traceback" not in err
    shutil.rmtree(tmp_path / "lenient")


def test_when_nothing_can_be_read_skip_bad_still_stops_with_one_line(tmp_path, capsys):
    root = tmp_path / "all_bad"
    root.mkdir()
    write_synthetic_hdf5(root / "a.hdf5", episodes=2, length=12, image_size=32, seed=0)
    _truncate(root / "a.hdf5")
    code = main(["pretrain", "--data", str(root), "--steps", "2", "--preset", "debug",
                 "--quiet", "--skip-bad", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: pretrain: ")
