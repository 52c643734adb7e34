"""eval_replay offline (the runtime core, no ROS) and the bag reading it shares with training.

Bags are written here with rosbags (sqlite3 and mcap, raw and compressed cameras, see
``replay_bags``); eval_replay runs as a real process, the model is really exported.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from replay_bags import (
    ACTION,
    CAMS,
    COMPRESSED_CAMS,
    INSTRUCTION,
    LAYOUT,
    N_FRAMES,
    PROPRIO,
    T0_NS,
    eval_replay,
    expected_offline,
    frame_image,
    image_args,
    proprio_value,
    read_csv,
    recorded_action,
    write_bag,
)
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from lawm.data import DataError
from lawm.data.rosbag import RosbagEpisode
from lawm_core import contract
from lawm_core.bags import COMPRESSED_IMAGE, IMAGE, guess_cameras
from lawm_policy.eval_replay import offline, report
from lawm_policy.eval_replay.index import ProprioRequest, open_bag


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    return {s: write_bag(root / f"bag_{s}", s) for s in ("sqlite3", "mcap")}


@pytest.mark.ros  # eval_replay runs from the colcon workspace
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_offline_matches_runtime_core(bags, exported_debug_model, tmp_path, storage):
    out = tmp_path / "out"
    res = eval_replay(
        "--bag", bags[storage], "--out", out, "--offline", "--model-dir", exported_debug_model,
        *image_args(), "--action-topic", ACTION, "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    result = json.loads((out / "report.json").read_text())
    assert json.loads(res.stdout.strip().splitlines()[-1]) == result  # one JSON line at the end
    assert result["mode"] == "offline"
    assert result["storage"] == storage
    assert result["bag"] == str(bags[storage].resolve())
    assert result["topics"]["images"] == CAMS
    assert result["topics"]["action"] == ACTION
    assert result["topics"]["proprio"] == PROPRIO  # found by name
    assert result["instruction"] == INSTRUCTION  # read from the bag's instruction topic
    assert result["frames"] == {
        "in_bag": N_FRAMES,
        "published": N_FRAMES,
        "answered": N_FRAMES,
        "dropped": 0,
        "compared": N_FRAMES,
    }

    pred, rec, latency = read_csv(out / "predictions.csv")
    np.testing.assert_allclose(pred, expected_offline(exported_debug_model), atol=1e-5)
    np.testing.assert_allclose(rec, [recorded_action(i) for i in range(N_FRAMES)], atol=1e-7)
    assert np.all(latency > 0)

    m = result["metrics"]
    assert list(m["per_dim"]) == LAYOUT
    for d, name in enumerate(LAYOUT):
        err = pred[:, d] - rec[:, d]
        got = m["per_dim"][name]
        assert got["n"] == N_FRAMES
        assert got["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-9)
        assert got["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-9)
        assert got["pearson"] == pytest.approx(np.corrcoef(pred[:, d], rec[:, d])[0, 1], abs=1e-9)
    agree = np.mean((pred[:, 6] > 0) == (rec[:, 6] > 0))  # the sign convention: > 0 closed
    assert m["gripper_agreement"] == pytest.approx(agree)
    assert m["gripper_scoring"]["convention"] == "sign"
    assert m["gripper_scoring"]["source"].startswith("model sidecar ")
    # The model's control rate (20 Hz) is the bag's camera rate: one step per frame.
    assert result["rates"]["steps_hz"] == result["rates"]["model_control_rate_hz"] == 20.0
    assert result["rates"]["cameras_hz"] == {"agentview": 20.0, "eye_in_hand": 20.0}
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] < 1000
    assert result["model"]["provider"] == "CPUExecutionProvider"
    assert (out / "actions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Written atomically: no temporary file is left beside the outputs.
    assert sorted(p.name for p in out.iterdir()) == [
        "actions.png",
        "predictions.csv",
        "report.json",
    ]


@pytest.mark.ros
def test_offline_guesses_topics_and_takes_the_instruction_argument(
    bags, exported_debug_model, tmp_path
):
    # No --image-topic / --action-topic: the wrist-named topic is eye_in_hand, the *action*
    # topic is the action; --instruction wins over the bag's; proprio can be switched off.
    out = tmp_path / "out"
    res = eval_replay(
        "--bag", bags["mcap"] / "bag_mcap.mcap", "--out", out, "--offline",  # a bare file
        "--model-dir", exported_debug_model, "--instruction", "  open   the drawer ",
        "--proprio-topic", "none",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())
    assert result["topics"]["images"] == CAMS
    assert result["topics"]["action"] == ACTION
    assert result["topics"]["proprio"] is None
    assert result["instruction"] == "open the drawer"
    assert result["instruction_source"] == "argument"
    assert result["frames"]["answered"] == N_FRAMES
    # The model takes robot state: without it, it gets the training mean, and the report says.
    assert any("--proprio-topic none" in w and "training mean" in w for w in result["warnings"])


def test_twist_stamped_action_topic_with_a_gripper_topic(tmp_path):
    """A recorded TwistStamped command: six values from the twist, the gripper from its own
    Float64 topic, each aligned to the frames (latest at or before)."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Twist, Vec = T["geometry_msgs/msg/Twist"], T["geometry_msgs/msg/Vector3"]
    TwistStamped, F64, Image = (
        T["geometry_msgs/msg/TwistStamped"],
        T["std_msgs/msg/Float64"],
        T["sensor_msgs/msg/Image"],
    )
    path = tmp_path / "twist_bag"
    with Writer(path, version=9) as w:
        cam = w.add_connection("/cam/image_raw", Image.__msgtype__, typestore=ts)
        cmd = w.add_connection("/servo/cmd", TwistStamped.__msgtype__, typestore=ts)
        grip = w.add_connection("/gripper/command", F64.__msgtype__, typestore=ts)
        for i in range(4):
            t = T0_NS + i * 50_000_000
            stamp = Time(sec=t // 10**9, nanosec=t % 10**9)
            twist = Twist(linear=Vec(x=i, y=0.1, z=0.2), angular=Vec(x=0.3, y=0.4, z=0.5))
            msg = TwistStamped(header=Header(stamp=stamp, frame_id="b"), twist=twist)
            w.write(cmd, t, ts.serialize_cdr(msg, msg.__msgtype__))
            if i % 2 == 0:
                gmsg = F64(data=1.0 if i else -1.0)
                w.write(grip, t, ts.serialize_cdr(gmsg, gmsg.__msgtype__))
            img = Image(
                header=Header(stamp=stamp, frame_id="c"),
                height=2, width=2, encoding="rgb8", is_bigendian=0, step=6,
                data=np.zeros(12, np.uint8),
            )  # fmt: skip
            w.write(cam, t + 1, ts.serialize_cdr(img, img.__msgtype__))
    index = open_bag(path, action_topic="/servo/cmd", gripper_topic="/gripper/command")
    assert index.selection.images == {"agentview": "/cam/image_raw"}  # the only Image topic
    assert index.selection.action_type == "geometry_msgs/msg/TwistStamped"
    np.testing.assert_allclose(index.recorded[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(index.recorded[:, 1:6], [[0.1, 0.2, 0.3, 0.4, 0.5]] * 4)
    np.testing.assert_allclose(index.recorded[:, 6], [-1, -1, 1, 1])
    # Without a gripper topic the gripper is not scored (NaN), the rest is, and it says so.
    index = open_bag(path, action_topic="/servo/cmd")
    assert np.isnan(index.recorded[:, 6]).all()
    assert "/servo/cmd is a TwistStamped, which has no gripper" in index.notes[0]
    assert "--gripper-topic" in index.notes[0]
    m = report.compute_metrics(index.recorded + 0.5, index.recorded)
    assert m["per_dim"]["dx"]["mae"] == pytest.approx(0.5)
    assert m["per_dim"]["gripper"] == {"n": 0, "mae": None, "rmse": None, "pearson": None}
    assert m["gripper_agreement"] is None


# ------------------------------------------------------------------------------ compressed
@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_compressed_cameras_give_training_and_replay_the_same_frames(tmp_path, codec):
    """CompressedImage cameras, as image_transport records them: the training loader and
    replay pick the same topics and decode the same frames (PNG: the recorded pixels)."""
    bag = write_bag(tmp_path / f"bag_{codec}", "mcap", n=12, codec=codec)
    train = RosbagEpisode(bag)  # every topic guessed
    index = open_bag(bag, proprio=ProprioRequest(layout=contract.PROPRIO_LAYOUT))
    assert train.topics["images"] == index.selection.images == COMPRESSED_CAMS
    assert train.topics["actions"] == index.selection.action == ACTION
    assert train.topics["proprio"] == index.selection.proprio == PROPRIO
    assert train.instruction == index.instruction == INSTRUCTION
    assert train.length == index.n_frames == 12
    np.testing.assert_array_equal(train.frame_times, index.frame_stamps)

    train_images = train.read(0, 12)["images"]
    replay_frames = list(offline.frame_inputs(index, tuple(CAMS)))
    assert [f.frame for f in replay_frames] == list(range(12))
    for c, cam in enumerate(CAMS):
        replayed = np.stack([f.images[cam] for f in replay_frames])
        assert replayed.shape == (12, 48, 48, 3) and replayed.dtype == np.uint8
        np.testing.assert_array_equal(replayed, train_images[cam])
        recorded = np.stack([frame_image(c, i) for i in range(12)])
        if codec == "png":
            np.testing.assert_array_equal(replayed, recorded)
        else:  # lossy, but the right picture in the right colour order
            assert np.abs(replayed.astype(int) - recorded).mean() < 12
    for f in replay_frames:
        assert f.problem is None
        np.testing.assert_array_equal(f.proprio, proprio_value(f.frame))


@pytest.mark.ros
def test_offline_on_png_compressed_cameras_matches_the_raw_bag(exported_debug_model, tmp_path):
    bag = write_bag(tmp_path / "png", "sqlite3", codec="png")
    out = tmp_path / "out"
    res = eval_replay(
        "--bag", bag, "--out", out, "--offline", "--model-dir", exported_debug_model,
        "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())
    assert result["topics"]["images"] == COMPRESSED_CAMS
    assert result["frames"]["answered"] == N_FRAMES and not result["warnings"]
    pred, _, _ = read_csv(out / "predictions.csv")
    np.testing.assert_allclose(pred, expected_offline(exported_debug_model), atol=1e-5)


def test_an_undecodable_compressed_frame_is_skipped_with_a_warning(tmp_path):
    """A damaged CompressedImage: training refuses the read naming the bag and topic; replay
    skips that frame, saying why."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Compressed, Header, Time = (
        T["sensor_msgs/msg/CompressedImage"],
        T["std_msgs/msg/Header"],
        T["builtin_interfaces/msg/Time"],
    )
    bag = tmp_path / "bad"
    with Writer(bag, version=9) as w:
        cam = w.add_connection("/cam/compressed", Compressed.__msgtype__, typestore=ts)
        act = w.add_connection("/action", "std_msgs/msg/Float64MultiArray", typestore=ts)
        for i in range(3):
            t = T0_NS + i * 50_000_000
            png = cv2.imencode(".png", frame_image(0, i))[1].reshape(-1)
            if i == 1:
                png = png[: png.size // 3]  # cut short
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="c")
            msg = Compressed(header=header, format="png", data=png)
            w.write(cam, t, ts.serialize_cdr(msg, msg.__msgtype__))
            arr = T["std_msgs/msg/Float64MultiArray"](
                layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                data=np.zeros(7),
            )
            w.write(act, t, ts.serialize_cdr(arr, arr.__msgtype__))
    with pytest.raises(DataError, match="cannot decode CompressedImage") as err:
        RosbagEpisode(bag).read(0, 3)
    assert str(bag) in str(err.value) and "/cam/compressed" in str(err.value)
    frames = list(offline.frame_inputs(open_bag(bag), ("agentview",)))
    assert [f.problem is None for f in frames] == [True, False, True]
    assert "cannot decode CompressedImage" in frames[1].problem


def test_camera_guess_ignores_the_compressed_twin_of_a_raw_topic():
    """image_transport records a camera twice (raw and ``/compressed``): one camera, the raw
    topic; a compressed topic alone is a camera of its own."""
    raw, twin, wrist = "/cam/image_raw", "/cam/image_raw/compressed", "/wrist/image/compressed"
    types = {raw: IMAGE, twin: COMPRESSED_IMAGE, wrist: COMPRESSED_IMAGE}
    assert guess_cameras(types) == {"agentview": raw, "eye_in_hand": wrist}
    assert guess_cameras({twin: COMPRESSED_IMAGE}) == {"agentview": twin}
    assert guess_cameras({"/a/image": IMAGE, "/b/image": IMAGE}) is None
