"""LeRobotDataset v3.0 and v2.1 read through the loader: datasets written with plain pyarrow and
PyAV as the specification lays them out (tests/training/lerobot_files.py), AV1 and h264 video
holding several episodes per file, a second chunk folder, PNG images in parquet."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot_files import IMAGE, KEYS, WRIST, encode_video, make_episodes, write_v3, write_v21

from lawm.data import DataError, LerobotOptions, WindowDataset, collate, detect_format
from lawm.data import open_sources as _open_sources
from lawm_core import contract

ROOT = Path(__file__).resolve().parents[2]
LIBERO_PROPRIO = [0, 1, 2, 6, 7]  # eef position and the two fingers of LIBERO's 8-D state
# Mean absolute error of a decoded frame against the frame encoded (0-255), AV1 at crf 30 on
# 64 px synthetic scenes: about 2.5 on average, up to 8 for a frame between keyframes.
CODEC_MAE = 4.0
CODEC_MAE_FRAME = 12.0


def assert_same_frames(got: np.ndarray, want: np.ndarray, what) -> None:
    """Within the codec's error, and each decoded frame nearest its own source frame (not a
    neighbour's: a tie within 1 grey level allowed where the scene did not move)."""
    assert got.shape == want.shape and got.dtype == np.uint8, what
    d = np.abs(got[:, None].astype(np.int16) - want[None].astype(np.int16)).mean(axis=(2, 3, 4))
    own = np.diag(d)
    assert own.mean() < CODEC_MAE and own.max() < CODEC_MAE_FRAME, (what, own)
    assert np.all(own[:, None] <= d + 1.0), (what, d)


def open_sources(path, *args, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*read as LIBERO's")
        return _open_sources(path, *args, **kw)


@pytest.fixture(scope="module")
def episodes():
    return make_episodes(5)


@pytest.fixture(scope="module")
def v3(tmp_path_factory, episodes):
    return write_v3(tmp_path_factory.mktemp("lerobot") / "v3", episodes)


def _check_read(sources, episodes, cameras=tuple(contract.CAMERAS)):
    assert [s.length for s in sources] == [e.length for e in episodes]
    for src, ep in zip(sources, episodes, strict=True):
        assert src.instruction == ep.task
        assert src.cameras == cameras
        out = src.read(0, src.length)
        np.testing.assert_array_equal(out["actions"], ep.action)
        np.testing.assert_array_equal(out["proprio"], ep.state[:, LIBERO_PROPRIO])
        for cam in cameras:
            assert_same_frames(out["images"][cam], ep.images[KEYS[cam]], (src.name, cam))
        # A window decodes the same frames as the whole episode.
        a, b = 2, min(src.length, 6)
        part = src.read(a, b)
        for cam in cameras:
            np.testing.assert_array_equal(part["images"][cam], out["images"][cam][a:b])
        np.testing.assert_array_equal(part["actions"], ep.action[a:b])


def test_v3_av1_many_episodes_per_file_and_a_second_chunk(v3, episodes):
    files = [str(f.relative_to(v3.root)) for f in v3.files]
    assert "data/chunk-001/file-000.parquet" in files  # 5 episodes, 2 per file, 2 files a chunk
    assert f"videos/{IMAGE}/chunk-000/file-001.mp4" in files
    assert detect_format(v3.root) == "lerobot"
    with pytest.warns(UserWarning, match="8 values, read as LIBERO's"):
        sources = _open_sources(v3.root)
    _check_read(sources, episodes)
    assert all(s.control_rate_hz == 10.0 for s in sources)
    assert sources[0].proprio_layout == contract.PROPRIO_LAYOUT
    assert sources[3].name.endswith(":episode_3")


def test_v3_as_written_after_a_v21_conversion_and_by_older_lerobot(tmp_path, episodes):
    # Variable-length list columns, the task text as pandas' unnamed index, h264 video.
    w = write_v3(
        tmp_path / "conv", episodes[:3], fixed_lists=False, tasks_index_name="__index_level_0__",
        codec="h264", episodes_per_file=3,
    )  # fmt: skip
    _check_read(open_sources(w.root), episodes[:3])
    # Without tasks in the episode table, the instruction comes from meta/tasks.parquet.
    table = pq.read_table(w.root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(
        table.drop_columns(["tasks"]), w.root / "meta/episodes/chunk-000/file-000.parquet"
    )
    assert [s.instruction for s in open_sources(w.root)] == [e.task for e in episodes[:3]]


def test_v3_images_in_parquet(tmp_path, episodes):
    w = write_v3(tmp_path / "png", episodes[:3], image_dtype="image")
    assert not (w.root / "videos").exists()
    sources = open_sources(w.root)
    for src, ep in zip(sources, episodes[:3], strict=True):
        out = src.read(1, src.length)
        for cam in contract.CAMERAS:  # PNG: lossless
            np.testing.assert_array_equal(out["images"][cam], ep.images[KEYS[cam]][1:])
        np.testing.assert_array_equal(out["actions"], ep.action[1:])


def test_v21_one_file_per_episode(tmp_path, episodes):
    w = write_v21(tmp_path / "v21", episodes[:3], chunks_size=2)
    assert (w.root / "data/chunk-001/episode_000002.parquet").is_file()
    assert detect_format(w.root) == "lerobot"
    _check_read(open_sources(w.root), episodes[:3])


def test_key_map_layout_and_unlabelled_video(v3, episodes):
    only = LerobotOptions(
        cameras={"agentview": WRIST},
        state_layout=("-", "-", "ee_z", "-", "-", "-", "gripper_left", "-"),
    )
    sources = open_sources(v3.root, options=only)
    out = sources[1].read(0, 4)
    assert sources[1].cameras == ("agentview",)
    assert sources[1].proprio_layout == ("ee_z", "gripper_left")
    np.testing.assert_array_equal(out["proprio"], episodes[1].state[:4, [2, 6]])
    assert (
        np.abs(out["images"]["agentview"].astype(int) - episodes[1].images[WRIST][:4]).mean() < 6
    )
    # Unlabelled (pretraining): no action is read, even though the dataset has them.
    video = open_sources(v3.root, labelled=False)
    assert not any(s.has_actions for s in video)
    assert video[0].read(0, 3)["actions"] is None


def test_training_windows_from_lerobot(v3, episodes):
    sources = open_sources(v3.root)
    ds = WindowDataset(sources, contract.CAMERAS, 32, 4, mode="finetune")
    batch = collate([ds[i] for i in range(0, len(ds), 7)])
    assert batch["actions"].shape[1:] == (4, contract.ACTION_DIM)
    images = batch["images"][contract.AGENTVIEW]
    assert images.shape[-2:] == (32, 32) or images.shape[2:4] == (32, 32)
    assert float(images.float().std()) > 1.0  # real frames, not zeros


def test_a_frame_off_its_timestamp_is_an_error_not_a_neighbour(tmp_path, episodes):
    w = write_v3(tmp_path / "shifted", episodes[:2])
    path = w.root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    col = f"videos/{IMAGE}/from_timestamp"
    shifted = pa.array([v + 0.03 for v in table.column(col).to_pylist()], pa.float64())
    table = table.set_column(table.schema.get_field_index(col), col, shifted)
    pq.write_table(table, path)
    src = open_sources(w.root)[1]
    with pytest.raises(DataError, match=r"no frame within 0.0001 s of 1.2300 s.*episode_1") as err:
        src.read(0, 3, cameras=[contract.AGENTVIEW])
    assert "mp4" in str(err.value) and "\n" not in str(err.value)
    # A tolerance wider than the shift (and narrower than a frame, 0.1 s) takes it.
    loose = open_sources(w.root, options=LerobotOptions(tolerance_s=0.04))[1]
    got = loose.read(0, 3, cameras=[contract.AGENTVIEW])["images"][contract.AGENTVIEW]
    assert_same_frames(got, episodes[1].images[IMAGE][:3], "shifted")


def _cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def _one_line(err: DataError | str, *needles: str) -> None:
    text = str(err)
    assert "\n" not in text.strip(), text
    for needle in needles:
        assert needle in text, (needle, text)


def test_bad_datasets_say_what_is_wrong_in_one_line(tmp_path, episodes):
    root = write_v3(tmp_path / "bad", episodes[:3]).root
    # A key map naming a feature the dataset lacks: the error lists the dataset's features.
    with pytest.raises(DataError) as err:
        open_sources(root, options=LerobotOptions(cameras={"agentview": "observation.images.top"}))
    _one_line(err.value, "observation.images.top", IMAGE, "observation.state (float32)")
    with pytest.raises(DataError) as err:
        open_sources(root, options=LerobotOptions(action_key="actions"))
    _one_line(err.value, "'actions'", "action (float32)")
    # An unknown codebase version.
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v9.0"}))
    with pytest.raises(DataError) as err:
        open_sources(root)
    _one_line(err.value, "info.json", "v9.0", "v3.0")
    (root / "meta/info.json").write_text(json.dumps(info))
    # A corrupt data file.
    data = root / "data/chunk-000/file-001.parquet"
    good = data.read_bytes()
    data.write_bytes(good[: len(good) // 3])
    with pytest.raises(DataError) as err:
        open_sources(root)
    _one_line(err.value, str(data))
    data.write_bytes(good)
    # A video shorter than its episodes' timestamps: file-000 loses its second episode.
    video = root / f"videos/{IMAGE}/chunk-000/file-000.mp4"
    encode_video(video, [episodes[0].images[IMAGE]], 10)
    src = open_sources(root)[1]
    with pytest.raises(DataError) as err:
        src.read(0, 2, cameras=[contract.AGENTVIEW])
    _one_line(err.value, str(video), "episode_1", "shorter")
    # No meta/info.json, named as LeRobot: the CLI prints one line, no traceback.
    (root / "meta/info.json").unlink()
    r = _cli("finetune", "--data", root, "--format", "lerobot", "--out", tmp_path / "run")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "meta/info.json" in r.stderr


def test_cli_flags_reach_the_reader(tmp_path, episodes):
    root = write_v3(tmp_path / "cli", episodes[:2]).root
    r = _cli(
        "finetune", "--data", root, "--lerobot-camera", "agentview=nothing.here",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert r.returncode == 2 and "nothing.here" in r.stderr and "Traceback" not in r.stderr
    r = _cli("finetune", "--data", root, "--lerobot-state-layout", "ee_x,ee_y",
             "--out", tmp_path / "run")  # fmt: skip
    assert r.returncode == 2 and "names 2 values" in r.stderr, r.stderr[-2000:]
