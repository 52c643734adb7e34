"""Format detection, the format registry and per-format options (lawm.data.formats),
and how the command line hands each --data path its options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from datafiles import (
    ACTION,
    AV,
    FRONT,
    bridgedata_traj,
    frames_with_index,
    write_bag,
    write_libero,
)

from lawm.cli import open_data
from lawm.data import DataError, Hdf5Options, RosbagOptions, detect_format, open_sources
from lawm.data.formats import FORMATS, REGISTRY
from lawm_core.cliargs import UsageError
from lawm_sim.recording import write_video


def test_unknown_format_lists_the_valid_ones(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not data")
    with pytest.raises(DataError, match="unknown data format") as err:
        open_sources(notes)
    msg = str(err.value)
    assert "notes.txt" in msg
    assert all(f in msg for f in ("hdf5", "ssv2", "bridgedata", "rosbag", "lerobot"))
    with pytest.raises(
        DataError, match="valid formats: auto, lerobot, hdf5, ssv2, video, rosbag, bridgedata$"
    ):
        open_sources(notes, format="parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*unknown data format"):
        open_sources(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        open_sources(tmp_path / "missing.hdf5")


def _sample(name: str, root: Path) -> Path:
    """A small dataset of the registered format ``name`` under ``root``."""
    if name == "hdf5":
        write_libero(root / "demos.hdf5", lengths=(3,))
        return root / "demos.hdf5"
    if name == "video":
        return write_video(root / "clips" / "wave.mp4", frames_with_index(3)).parent
    if name == "ssv2":
        videos = root / "ssv2" / "videos"
        write_video(videos / "7.webm", frames_with_index(3))
        (root / "ssv2" / "labels").mkdir()
        (root / "ssv2" / "labels" / "train.json").write_text(
            json.dumps([{"id": "7", "template": "Pushing [something]"}])
        )
        return videos
    if name == "rosbag":
        write_bag(root / "bag", "mcap")
        return root / "bag"
    if name == "bridgedata":
        bridgedata_traj(root / "raw" / "traj0", 3, "wipe the table", 0)
        return root / "raw"
    if name == "lerobot":
        from lerobot_files import make_episodes, write_v3

        return write_v3(root / "lerobot", make_episodes(1, lengths=(4,)), image_dtype="image").root
    raise AssertionError(f"no sample data for the registered format {name!r}")


@pytest.mark.parametrize("name", FORMATS)
def test_every_registered_format_is_detected_and_opens_with_its_options(tmp_path, name):
    path = _sample(name, tmp_path)
    assert detect_format(path) == name
    (fmt,) = [f for f in REGISTRY if f.name == name]
    options = fmt.options() if fmt.options is not None else None
    sources = open_sources(path, options=options)
    assert len(sources) == 1 and sources[0].read(0, 3)["images"][AV].shape[0] == 3
    assert len(open_sources(path, format=name, options=options)) == 1


def test_a_format_given_another_formats_options_names_both(tmp_path):
    demos = _sample("hdf5", tmp_path)
    bag = _sample("rosbag", tmp_path)
    clips = _sample("video", tmp_path)
    with pytest.raises(
        DataError,
        match=r"demos\.hdf5: detected as format 'hdf5', which takes Hdf5Options; "
        r"got RosbagOptions \(options of format 'rosbag'\)",
    ):
        open_sources(demos, options=RosbagOptions(action_topic=ACTION))
    with pytest.raises(
        DataError,
        match=r"opened as format 'rosbag', which takes RosbagOptions; "
        r"got Hdf5Options \(options of format 'hdf5'\)",
    ):
        open_sources(bag, format="rosbag", options=Hdf5Options(successful_only=False))
    with pytest.raises(DataError, match="format 'video', which takes no options; got Hdf5"):
        open_sources(clips, options=Hdf5Options())
    with pytest.raises(DataError, match="takes Hdf5Options; got dict"):
        open_sources(demos, options={"successful_only": False})
    # The command line hands each path its own format's options, and refuses rosbag2 topics
    # when no --data is a rosbag2 (they would otherwise be ignored without a word).
    args = argparse.Namespace(
        data=[demos, bag],
        format="auto",
        image_topic=[f"{AV}={FRONT}"],
        action_topic=ACTION,
        proprio_topic=None,
        instruction=None,
        include_failed=True,
    )
    sources = open_data(args, labelled=True)
    assert len(sources) == 2 and sources[1].topics["images"] == {AV: FRONT}
    with pytest.raises(UsageError, match="apply to rosbag2 data.*hdf5"):
        open_data(argparse.Namespace(**{**vars(args), "data": [demos]}), labelled=True)
