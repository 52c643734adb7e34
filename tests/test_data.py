"""The streaming data layer on real files written here in every supported format."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from lawm import keys
from lawm.cli import open_data
from lawm.data import (
    CAMERA_MASK,
    FRAME_MASK,
    DataError,
    Hdf5Options,
    RosbagOptions,
    WindowDataset,
    collate,
    compute_stats,
    detect_format,
    open_sources,
)
from lawm.data import video as video_mod
from lawm.data.formats import FORMATS, REGISTRY
from lawm.data.synthetic import write_synthetic_hdf5, write_synthetic_videos
from lawm_core import contract
from lawm_core.cliargs import UsageError
from lawm_sim.recording import write_video

AV, EYE = contract.AGENTVIEW, contract.EYE_IN_HAND


# -- writers for the fixtures ------------------------------------------------------------------
def write_libero(
    path: Path,
    lengths=(6,),
    *,
    demo_names=None,
    convention: str | None = "opencv",
    problem_info: bool = True,
    cameras=(AV, EYE),
    with_actions: bool = True,
    ee_key: str = "ee_pos",
    success=None,
    size=(12, 16),
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """A LIBERO-layout file with random content; returns what was stored, per demo."""
    rng = np.random.default_rng(seed)
    stored = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if problem_info:
            data.attrs["problem_info"] = json.dumps({"language_instruction": "open the drawer"})
        if convention is not None:
            data.attrs["macros_image_convention"] = convention
        names = demo_names or [f"demo_{i}" for i in range(len(lengths))]
        for i, (name, n) in enumerate(zip(names, lengths)):
            g = data.create_group(name)
            if success is not None:
                g.attrs["success"] = success[i]
            obs = g.create_group("obs")
            rec = {}
            for cam in cameras:
                rec[cam] = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
                obs.create_dataset(contract.HDF5_IMAGE_KEYS[cam], data=rec[cam])
            if with_actions:
                rec["actions"] = rng.uniform(-1, 1, (n, 7))
                g.create_dataset("actions", data=rec["actions"])
            pos = rng.normal(size=(n, 6 if ee_key == "ee_states" else 3))
            grip = rng.normal(size=(n, 2))
            obs.create_dataset(ee_key, data=pos)
            obs.create_dataset("gripper_states", data=grip)
            rec["proprio"] = np.concatenate([pos[:, :3], grip], 1).astype(np.float32)
            stored[name] = rec
    return stored


def frames_with_index(n: int, h: int = 32, w: int = 32) -> np.ndarray:
    """Smooth frames whose colour encodes the frame index (survive lossy codecs); neighbours
    differ by ~15 grey levels on average, well above the codec error."""
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = 20 + 9 * i
        out[i, ..., 1] = (200 + 37 * i) % 256
        out[i, : h // 2, :, 2] = 60
        out[i, h // 2 :, :, 2] = 180
    return out


def decoded_close(got: np.ndarray, want: np.ndarray, tol: float = 6.0) -> None:
    assert got.shape == want.shape
    err = np.abs(got.astype(float) - want.astype(float)).mean(axis=(1, 2, 3))
    assert err.max() < tol, err


# -- HDF5 -------------------------------------------------------------------------------------
def test_hdf5_reads_back_exactly_in_natural_demo_order(tmp_path):
    path = tmp_path / "libero.hdf5"
    stored = write_libero(
        path, lengths=(5, 7, 4), demo_names=["demo_10", "demo_2", "demo_1"], success=[1, 1, 1]
    )
    assert detect_format(path) == "hdf5"
    sources = open_sources(path)
    assert [s.name.rsplit(":", 1)[1] for s in sources] == ["demo_1", "demo_2", "demo_10"]
    src = sources[1]
    rec = stored["demo_2"]
    assert (src.length, src.cameras, src.instruction) == (7, (AV, EYE), "open the drawer")
    assert src.has_actions and src.has_proprio and src.success is True
    out = src.read(2, 6)
    np.testing.assert_array_equal(out["images"][AV], rec[AV][2:6])
    np.testing.assert_array_equal(out["images"][EYE], rec[EYE][2:6])
    np.testing.assert_array_equal(out["actions"], rec["actions"][2:6].astype(np.float32))
    np.testing.assert_array_equal(out["proprio"], rec["proprio"][2:6])
    assert out["actions"].dtype == np.float32 and out["proprio"].shape == (4, 5)
    only = src.read(0, 1, cameras=(EYE,), actions=False, proprio=False)
    assert list(only["images"]) == [EYE] and only["actions"] is None and only["proprio"] is None
    with pytest.raises(IndexError):
        src.read(5, 9)


@pytest.mark.parametrize("convention", ["opengl", None])
def test_hdf5_upside_down_images_are_flipped(tmp_path, convention):
    # Official LIBERO files carry no convention attribute and are rendered upside down.
    path = tmp_path / "official.hdf5"
    stored = write_libero(path, lengths=(3,), convention=convention)
    out = open_sources(path)[0].read(0, 3)
    for cam in (AV, EYE):
        np.testing.assert_array_equal(out["images"][cam], stored["demo_0"][cam][:, ::-1])


def test_hdf5_instruction_from_file_name_and_ee_states(tmp_path):
    path = tmp_path / "KITCHEN_SCENE3_put_the_black_bowl_on_the_plate_demo.hdf5"
    stored = write_libero(path, lengths=(4,), problem_info=False, ee_key="ee_states")
    src = open_sources(path)[0]
    assert src.instruction == "put the black bowl on the plate"
    np.testing.assert_array_equal(src.read(0, 4)["proprio"], stored["demo_0"]["proprio"])


def test_hdf5_success_filter_folder_and_unlabelled(tmp_path):
    write_libero(tmp_path / "a.hdf5", lengths=(3, 3, 3), success=[1, 0, 1])
    write_libero(tmp_path / "b.hdf5", lengths=(2,), with_actions=False)
    with pytest.raises(DataError, match=r"b\.hdf5.*missing key 'actions'"):
        open_sources(tmp_path)  # labelled by default: the unlabeled file is refused
    videos = open_sources(tmp_path, labelled=False)
    assert len(videos) == 3 and not any(s.has_actions for s in videos)
    assert all(s.read(0, 2)["actions"] is None for s in videos)
    assert (
        len(open_sources(tmp_path, labelled=False, options=Hdf5Options(successful_only=False)))
        == 4
    )
    assert [s.success for s in open_sources(tmp_path / "a.hdf5")] == [True, True]


def _drop(path: Path, key: str) -> None:
    with h5py.File(path, "a") as f:
        del f[key]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _drop(p, "data/demo_0/actions"), "missing key 'actions'"),
        (lambda p: _drop(p, "data/demo_1/obs/eye_in_hand_rgb"), "missing camera key"),
        (
            lambda p: [
                _drop(p, f"data/demo_0/obs/{k}") for k in contract.HDF5_IMAGE_KEYS.values()
            ],
            "missing camera key",
        ),
        (lambda p: _drop(p, "data"), "missing key 'data'"),
    ],
)
def test_hdf5_missing_keys_raise_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "broken.hdf5"
    write_libero(path, lengths=(3, 3))
    damage(path)
    with pytest.raises(DataError, match=message) as err:
        open_sources(path)
    assert str(path) in str(err.value)


def test_hdf5_zero_length_shape_mismatch_and_truncation(tmp_path):
    empty = tmp_path / "empty.hdf5"
    write_libero(empty, lengths=(3, 0))
    with pytest.raises(DataError, match="zero-length") as err:
        open_sources(empty)
    assert "empty.hdf5" in str(err.value) and "demo_1" in str(err.value)

    wide = tmp_path / "wide.hdf5"
    write_libero(wide, lengths=(3,))
    with h5py.File(wide, "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros((3, 6))
    with pytest.raises(DataError, match=r"wide\.hdf5.*actions: shape \(3, 6\)"):
        open_sources(wide)

    short = tmp_path / "short.hdf5"
    write_libero(short, lengths=(3,))
    with h5py.File(short, "a") as f:
        del f["data/demo_0/obs/gripper_states"]
        f["data/demo_0/obs/gripper_states"] = np.zeros((2, 2))
    with pytest.raises(DataError, match=r"short\.hdf5.*gripper_states: 2 rows"):
        open_sources(short)

    cut = tmp_path / "cut.hdf5"
    write_libero(cut, lengths=(20, 20), size=(32, 32))
    blob = cut.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as err:
        open_sources(cut)
    assert "cut.hdf5" in str(err.value)


# -- formats and detection --------------------------------------------------------------------
def test_unknown_format_lists_the_valid_ones(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not data")
    with pytest.raises(DataError, match="unknown data format") as err:
        open_sources(notes)
    msg = str(err.value)
    assert "notes.txt" in msg and all(f in msg for f in ("hdf5", "ssv2", "bridgedata", "rosbag"))
    with pytest.raises(
        DataError, match="valid formats: auto, hdf5, ssv2, video, rosbag, bridgedata$"
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
        _bridgedata_traj(root / "raw" / "traj0", 3, "wipe the table", 0)
        return root / "raw"
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


# -- video ------------------------------------------------------------------------------------
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
    assert [Path(s.name).stem for s in sources] == ["7", "55", "101"]
    assert by_id["101"].instruction == "putting a pen into a cup"
    assert by_id["7"].instruction == "Pushing something from left to right"
    assert by_id["55"].instruction == ""
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


# -- BridgeData v2 ----------------------------------------------------------------------------
def _bridgedata_traj(folder: Path, n: int, lang: str | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, 24, 32, 3), np.uint8)
    (folder / "images0").mkdir(parents=True)
    (folder / "images1").mkdir()
    for i in range(n):
        frames[i] = (rng.integers(30, 220, 3) + np.zeros((24, 32, 3))).astype(np.uint8)
        frames[i, 8:16, 8:24] = 255 - frames[i, 8:16, 8:24]
        bgr = cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / "images0" / f"im_{i}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
        cv2.imwrite(str(folder / "images1" / f"im_{i}.jpg"), bgr)
    # Actions/state pickles: garbage here, and opening them would fail the test.
    (folder / "policy_out.pkl").write_bytes(b"\x80\x04garbage that is not a pickle")
    (folder / "obs_dict.pkl").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    if lang is not None:
        (folder / "lang.txt").write_text(lang)
    return frames


def test_bridgedata_frames_and_language_without_touching_pickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a .pkl file was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    group = tmp_path / "bridge" / "toykitchen1" / "put_pot_in_sink" / "2023-01-01" / "raw"
    a = _bridgedata_traj(
        group / "traj_group0" / "traj0", 12, "put the pot in the sink\nconfidence: 1\n", 0
    )
    b = _bridgedata_traj(group / "traj_group0" / "traj1", 3, None, 1)
    c = _bridgedata_traj(group / "traj_group1" / "traj0", 2, None, 2)
    (group / "traj_group1" / "lang.txt").write_text("\n\nwipe the table\n")
    root = tmp_path / "bridge"
    assert detect_format(root) == "bridgedata"
    with pytest.warns(UserWarning, match="1 of 3 trajectories have no lang.txt"):
        sources = open_sources(root)
    assert [s.length for s in sources] == [12, 3, 2]
    assert [s.instruction for s in sources] == ["put the pot in the sink", "", "wipe the table"]
    assert sources[0].cameras == (AV,) and not sources[0].has_actions
    # im_10 and im_11 come after im_9 (numeric order), within JPEG tolerance.
    decoded_close(sources[0].read(0, 12)["images"][AV], a, tol=6.0)
    decoded_close(sources[1].read(1, 3)["images"][AV], b[1:3], tol=6.0)
    decoded_close(sources[2].read(0, 2)["images"][AV], c, tol=6.0)


# -- rosbag2 ----------------------------------------------------------------------------------
T0 = 1_700_000_000 * 10**9
MS = 10**6
FRONT, WRIST = "/cam/front/image_raw", "/cam/wrist/compressed"
ACTION, PROPRIO, TEXT = "/robot/action", "/robot/proprio", "/task/instruction"


def _front_image(i: int) -> np.ndarray:
    img = np.zeros((12, 16, 3), np.uint8)
    img[..., 0] = 10 * i
    img[..., 1] = np.arange(16, dtype=np.uint8)[None, :] * 3
    img[..., 2] = 7
    return img


def _wrist_image(k: int) -> np.ndarray:
    img = np.zeros((8, 10, 3), np.uint8)
    img[...] = (50 + 30 * k, 10, 200)
    return img


def write_bag(path: Path, storage: str) -> None:
    """Front camera 10 Hz (stamps i*100 ms, logged 30 ms late), wrist PNG 5 Hz, actions 40 Hz
    from 150 ms (value j), proprio 20 Hz (value m), and an instruction."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types

    def header(ns: int):
        stamp = T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id="f")

    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    msgs = []  # (log time, topic, type, message)
    for i in range(10):
        img = _front_image(i)
        msg = T["sensor_msgs/msg/Image"](
            header=header(T0 + i * 100 * MS),
            height=12,
            width=16,
            encoding="rgb8",
            is_bigendian=0,
            step=48,
            data=img.reshape(-1),
        )
        msgs.append((T0 + i * 100 * MS + 30 * MS, FRONT, "sensor_msgs/msg/Image", msg))
    for k in range(5):
        ok, png = cv2.imencode(".png", cv2.cvtColor(_wrist_image(k), cv2.COLOR_RGB2BGR))
        msg = T["sensor_msgs/msg/CompressedImage"](
            header=header(T0 + k * 200 * MS), format="png", data=png.reshape(-1)
        )
        msgs.append((T0 + k * 200 * MS + 5 * MS, WRIST, "sensor_msgs/msg/CompressedImage", msg))
    for j in range(6, 40):
        data = (j + 0.1 * np.arange(7)).astype(np.float32)
        msg = T["std_msgs/msg/Float32MultiArray"](layout=layout, data=data)
        msgs.append((T0 + j * 25 * MS, ACTION, "std_msgs/msg/Float32MultiArray", msg))
    for m in range(20):
        data = (m + 0.01 * np.arange(5)).astype(np.float32)
        msg = T["std_msgs/msg/Float32MultiArray"](layout=layout, data=data)
        msgs.append((T0 + m * 50 * MS, PROPRIO, "std_msgs/msg/Float32MultiArray", msg))
    msgs.append((T0, TEXT, "std_msgs/msg/String", T["std_msgs/msg/String"](data="stack the cups")))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for _, topic, msgtype, _ in msgs:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        for logtime, topic, msgtype, msg in sorted(msgs, key=lambda m: m[0]):
            writer.write(conns[topic], logtime, ts.serialize_cdr(msg, msgtype))


TOPICS = RosbagOptions(
    image_topics={AV: FRONT, EYE: WRIST}, action_topic=ACTION, proprio_topic=PROPRIO
)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag_alignment_and_round_trip(tmp_path, storage):
    bag = tmp_path / f"episode_{storage}"
    write_bag(bag, storage)
    assert detect_format(bag) == "rosbag"
    (src,) = open_sources(bag, options=TOPICS)
    # Frames 0 and 1 come before the first action (150 ms) and are dropped.
    assert src.length == 8 and src.cameras == (AV, EYE)
    assert src.instruction == "stack the cups" and src.has_actions and src.has_proprio
    out = src.read(0, 8)
    for f in range(8):
        i = f + 2  # camera frame; stamped i * 100 ms (its header, not its later log time)
        np.testing.assert_array_equal(out["images"][AV][f], _front_image(i))
        np.testing.assert_array_equal(out["images"][EYE][f], _wrist_image(i // 2))
        np.testing.assert_array_equal(
            out["actions"][f], (4 * i + 0.1 * np.arange(7)).astype(np.float32)
        )
        np.testing.assert_array_equal(
            out["proprio"][f], (2 * i + 0.01 * np.arange(5)).astype(np.float32)
        )
    part = src.read(3, 5, cameras=(EYE,))
    assert list(part["images"]) == [EYE]
    np.testing.assert_array_equal(
        part["images"][EYE], np.stack([_wrist_image(2), _wrist_image(3)])
    )
    # The same bag as unlabeled video never reads an action; a given instruction wins.
    (video,) = open_sources(
        bag, labelled=False, options=dataclasses.replace(TOPICS, instruction="stack them")
    )
    assert not video.has_actions and video.read(0, 2)["actions"] is None
    assert video.instruction == "stack them"
    if storage == "mcap":  # a bare storage file opens too
        (bare,) = open_sources(next(bag.glob("*.mcap")), options=TOPICS)
        np.testing.assert_array_equal(bare.read(7, 8)["images"][AV][0], _front_image(9))


def test_rosbag_twist_actions_with_gripper_and_bgr_images(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    zero = T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
    )
    bag = tmp_path / "twist"
    rgb = [np.full((4, 6, 3), (10 * i, 100, 250 - i), np.uint8) for i in range(4)]
    with Writer(bag, version=9) as w:
        cam = w.add_connection("/camera/image", "sensor_msgs/msg/Image", typestore=ts)
        cmd = w.add_connection("/cmd_twist", "geometry_msgs/msg/TwistStamped", typestore=ts)
        grip = w.add_connection("/gripper", "std_msgs/msg/Float64", typestore=ts)
        for i in range(4):
            t = T0 + i * 100 * MS
            v = T["geometry_msgs/msg/Vector3"]
            twist = T["geometry_msgs/msg/Twist"](
                linear=v(x=i, y=2.0, z=3.0), angular=v(x=4.0, y=5.0, z=6.0 + i)
            )
            ts_msg = T["geometry_msgs/msg/TwistStamped"](header=zero, twist=twist)
            w.write(cmd, t, ts.serialize_cdr(ts_msg, "geometry_msgs/msg/TwistStamped"))
            w.write(
                grip,
                t,
                ts.serialize_cdr(T["std_msgs/msg/Float64"](data=-1.0 + i), "std_msgs/msg/Float64"),
            )
            bgr = np.ascontiguousarray(rgb[i][:, :, ::-1])
            img = T["sensor_msgs/msg/Image"](
                header=zero,
                height=4,
                width=6,
                encoding="bgr8",
                is_bigendian=0,
                step=18,
                data=bgr.reshape(-1),
            )
            w.write(cam, t + MS, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
    # Zero header stamps fall back to log times; the single image topic is the agentview.
    (src,) = open_sources(
        bag, options=RosbagOptions(action_topic="/cmd_twist", gripper_topic="/gripper")
    )
    assert src.length == 4 and src.cameras == (AV,) and not src.has_proprio
    out = src.read(0, 4)
    np.testing.assert_array_equal(out["images"][AV], np.stack(rgb))
    want = np.array([[i, 2, 3, 4, 5, 6 + i, -1 + i] for i in range(4)], np.float32)
    np.testing.assert_array_equal(out["actions"], want)


def test_rosbag_missing_topics_and_truncated_files(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, "mcap")
    with pytest.raises(DataError, match=r"missing topics \['/arm/cmd'\]") as err:
        open_sources(bag, options=RosbagOptions(image_topics={AV: FRONT}, action_topic="/arm/cmd"))
    assert str(bag) in str(err.value) and FRONT in str(err.value) and ACTION in str(err.value)
    # Without topic arguments: the camera named like a wrist camera is eye_in_hand, and the
    # topics named *action* / *proprio* / *instruction* are used.
    (auto,) = open_sources(bag)
    assert auto.topics == {
        "images": {AV: FRONT, EYE: WRIST},
        "actions": ACTION,
        "proprio": PROPRIO,
        "gripper": None,
        "instruction": TEXT,
    }
    with pytest.raises(DataError, match="has type sensor_msgs/msg/Image, expected"):
        open_sources(bag, options=RosbagOptions(image_topics={AV: FRONT}, action_topic=FRONT))
    for storage in ("mcap", "sqlite3"):
        cut = tmp_path / f"cut_{storage}"
        write_bag(cut, storage)
        (file,) = [p for p in cut.iterdir() if p.suffix in (".mcap", ".db3")]
        blob = file.read_bytes()
        file.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(DataError, match="corrupt or truncated") as err:
            open_sources(cut, options=TOPICS)[0].read(0, 1)
        assert str(cut) in str(err.value)


# -- windows ----------------------------------------------------------------------------------
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


# -- statistics -------------------------------------------------------------------------------
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


# -- synthetic data ---------------------------------------------------------------------------
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
