"""Video clips and Something-Something v2 folders (lawm.data.video) on clips written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datafiles import AV, decoded_close, frames_with_index

from lawm.data import DataError, detect_format, open_sources
from lawm.data import video as video_mod
from lawm_sim.recording import write_video


def test_video_folder_mp4_avi_with_sidecar_instructions(tmp_path):
    clips = tmp_path / "clips"
    a = frames_with_index(12)
    b = frames_with_index(9, 32, 48)[::-1].copy()  # not square: centre-cropped later
    write_video(clips / "wave_hello.mp4", a)
    write_video(clips / "sub" / "take_7.avi", b)
    (clips / "sub" / "take_7.txt").write_text("\n  pick up the cup \nignored\n")
    assert detect_format(clips) == "video"
    sources = open_sources(clips)
    assert [Path(s.name).name for s in sources] == ["take_7.avi", "wave_hello.mp4"]
    avi, mp4 = sources
    assert (mp4.instruction, avi.instruction) == ("wave hello", "pick up the cup")
    assert (mp4.length, avi.length) == (12, 9)
    assert mp4.cameras == (AV,) and not mp4.has_actions and not mp4.has_proprio
    decoded_close(mp4.read(0, 12)["images"][AV], a)
    decoded_close(mp4.read(5, 8)["images"][AV], a[5:8])
    decoded_close(avi.read(3, 9)["images"][AV], b[3:9], tol=8.0)
    assert mp4.read(0, 2)["actions"] is None
    # OpenCV is the fallback decoder; it must agree with PyAV.
    cv = video_mod.VideoEpisode.open(clips / "wave_hello.mp4", "x", backend="cv2")
    assert cv.length == 12
    decoded_close(cv.read(4, 7)["images"][AV], a[4:7])


def test_long_video_reads_by_seeking(tmp_path, monkeypatch):
    monkeypatch.setattr(video_mod, "SEEK_MIN_FRAMES", 8)
    frames = frames_with_index(24)
    path = write_video(tmp_path / "long.webm", frames)
    src = open_sources(path)[0]
    assert src.length == 24 and src._pts is not None
    whole = src.read(0, 24)["images"][AV]
    for start, stop in [(9, 14), (20, 24), (23, 24)]:
        np.testing.assert_array_equal(src.read(start, stop)["images"][AV], whole[start:stop])
    decoded_close(whole, frames)


def test_ssv2_folder_labels_and_templates(tmp_path):
    root = tmp_path / "ssv2"
    videos = root / "20bn-something-something-v2"
    a, b, c = frames_with_index(6), frames_with_index(5), frames_with_index(4)
    write_video(videos / "101.webm", a)
    write_video(videos / "7.webm", b)
    write_video(videos / "55.webm", c)
    (root / "labels").mkdir()
    (root / "labels" / "train.json").write_text(
        json.dumps(
            [
                {"id": "101", "label": "putting a pen into a cup", "template": "x"},
                {"id": "7", "template": "Pushing [something] from left to right"},
            ]
        )
    )
    (root / "labels" / "labels.json").write_text(json.dumps({"Pushing [something]": "0"}))
    assert detect_format(videos) == "ssv2"
    sources = open_sources(videos)
    by_id = {Path(s.name).stem: s for s in sources}
    # 55 is in no train.json entry: another split's clip, left out.
    assert [Path(s.name).stem for s in sources] == ["7", "101"]
    assert by_id["101"].instruction == "putting a pen into a cup"
    assert by_id["7"].instruction == "Pushing something from left to right"
    assert by_id["101"].length == 6
    decoded_close(by_id["101"].read(1, 6)["images"][AV], a[1:6])
    decoded_close(by_id["7"].read(0, 5)["images"][AV], b)


def test_empty_and_corrupt_video_raise_naming_the_file(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("no clips")
    with pytest.raises(DataError, match="empty video folder") as err:
        open_sources(tmp_path / "nothing", format="video")
    assert "nothing" in str(err.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"broken\.mp4"):
        open_sources(bad)
    with pytest.raises(DataError, match="no .*labels JSON"):
        open_sources(bad, format="ssv2")
