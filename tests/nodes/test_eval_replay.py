"""eval_replay: rosbag replay evaluation live (policy node process) and its bad-input errors.

Bags are written here with rosbags (``replay_bags``: sqlite3 and mcap, two rgb8 cameras at
20 Hz, a proprio topic, a recorded 7-D action topic and an instruction). eval_replay and the
policy node run as real processes. Offline mode: ``test_eval_replay_offline.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from replay_bags import (
    ACTION,
    CAMS,
    COMPRESSED_CAMS,
    N_FRAMES,
    PROPRIO,
    eval_replay,
    image_args,
    read_csv,
    write_bag,
)

from lawm_policy.eval_replay.index import open_bag
from lawm_policy.eval_replay.live import LiveOutputs, match_live_outputs

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    return {s: write_bag(root / f"bag_{s}", s) for s in ("sqlite3", "mcap")}


# ------------------------------------------------------------------------------ live
def test_live_outputs_are_matched_to_their_frames_and_ticks(bags):
    """Pairing logic on hand-made outputs: stamp -> frame, first answer counts, an action
    belongs to the twist of its own tick only."""
    index = open_bag(bags["sqlite3"], image_topics=CAMS, action_topic=ACTION)
    clock, wrist = CAMS["agentview"], CAMS["eye_in_hand"]
    stamp = {i: 5_000_000_000 + i * 50_000_000 for i in range(N_FRAMES)}  # restamped clock
    image_stamps = {stamp[i]: (clock, i) for i in range(N_FRAMES)}
    image_stamps.update({stamp[i] + 1000: (wrist, i) for i in range(N_FRAMES)})
    ms = 1_000_000

    def action(v):
        return [float(v)] * 7

    twists = [
        (123, stamp[0] - 10 * ms, stamp[0] - 9 * ms),  # a stamp we never gave an image
        (stamp[0] + 1000, stamp[0] + 6 * ms, stamp[0] + 7 * ms),  # frame 0 via the wrist image
        (stamp[0] + 1000, stamp[0] + 30 * ms, stamp[0] + 31 * ms),  # frame 0 again: a repeat
        (stamp[1], stamp[1] + 5 * ms, stamp[1] + 9 * ms),  # frame 1; its action was lost
        (stamp[3], stamp[3] + 8 * ms, stamp[3] + 12 * ms),  # frame 3 (tick before: twist lost)
    ]
    actions = [
        (stamp[0] + 5 * ms, stamp[0] + 6 * ms, action(0.5)),
        (stamp[0] + 29 * ms, stamp[0] + 30 * ms, action(0.6)),
        (stamp[2] + 5 * ms, stamp[2] + 6 * ms, action(0.7)),  # its twist was lost
        (stamp[3] + 7 * ms, stamp[3] + 8 * ms, action(0.8)),
    ]
    ev = match_live_outputs(
        index, LiveOutputs(image_stamps, twists, actions, published_frames=N_FRAMES)
    )
    assert ev.answered[:5].tolist() == [True, True, False, True, False]
    assert ev.answered.sum() == 3
    np.testing.assert_allclose(ev.predicted[0], 0.5)
    assert np.isnan(ev.predicted[1]).all()  # never borrows another tick's action
    np.testing.assert_allclose(ev.predicted[3], 0.8)
    np.testing.assert_allclose(ev.latency_ms[[0, 1, 3]], [7 - 0.001, 9, 12])
    assert ev.extra["outputs"]["twists_for_an_already_answered_frame"] == 1
    assert ev.extra["outputs"]["twists_matching_no_frame"] == 1
    assert ev.extra["outputs"]["paired_by"] == "source timestamp"


@pytest.mark.parametrize("codec", [None, "jpeg"])
def test_live_replay_through_the_policy_node(
    bags, exported_debug_model, start_node, tmp_path, codec
):
    """Raw cameras go out as recorded. JPEG CompressedImage cameras: where the node listens on
    the ``/compressed`` topic (image_transport's name) as recorded, elsewhere decoded as rgb8
    Images. The gripper is scored by the convention of the node's model (its model_dir
    parameter); the report puts the cameras' rate beside the model's and the node's."""
    bag, topics = bags["sqlite3"], CAMS
    if codec is not None:
        bag, topics = write_bag(tmp_path / "jpeg", "sqlite3", codec=codec), COMPRESSED_CAMS
    live_agentview = "/live/agentview/image_raw"
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params={
            # The wrist camera listens on the bag's topic name; the scene camera elsewhere,
            # reached by remapping eval_replay's publisher.
            "model_dir": str(exported_debug_model),
            "camera_topics": [live_agentview, topics["eye_in_hand"]],
            "proprio_topic": PROPRIO,
            "control_rate_hz": 40.0,
            "threads": 1,
        },
    )
    out = tmp_path / "live"
    res = eval_replay(
        "--bag", bag, "--out", out, *image_args(topics), "--action-topic", ACTION,
        "--policy-ns", "/lawm_policy", "--rate", "1.0", "--wait-timeout", "60",
        "--ros-args", "-r", f"{topics['agentview']}:={live_agentview}",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + "\n--- policy node\n" + policy.tail()
    assert policy.alive()
    report = json.loads((out / "report.json").read_text())
    frames = report["frames"]
    assert report["mode"] == "live"
    assert frames["in_bag"] == N_FRAMES
    assert frames["published"] == N_FRAMES
    assert frames["answered"] > N_FRAMES // 2, (frames, policy.tail())
    assert frames["dropped"] == N_FRAMES - frames["answered"]
    lat = report["latency_ms"]
    assert lat["n"] == frames["answered"]
    assert math.isfinite(lat["p50"]) and 0 < lat["p50"] < 1000
    assert lat["p50"] <= lat["p99"]
    assert (out / "actions.png").stat().st_size > 1000
    # Every answered frame got its raw action (paired with the twist of the same tick), in
    # the model's action range [-2, 2], and metrics are computed over them.
    pred, rec, latency = read_csv(out / "predictions.csv")
    answered = np.isfinite(latency)
    assert answered.sum() == frames["answered"]
    assert frames["compared"] >= frames["answered"] - 2
    ok = np.isfinite(pred).all(axis=1)
    assert np.all(np.abs(pred[ok]) <= 2.0 + 1e-6)
    assert report["metrics"]["per_dim"]["dx"]["n"] == frames["compared"]
    assert report["metrics"]["gripper_agreement"] is not None
    scoring = report["metrics"]["gripper_scoring"]
    assert scoring["convention"] == "sign"
    assert f"model sidecar {exported_debug_model.resolve()}" in scoring["source"]
    assert "the policy node's model_dir" in scoring["source"]
    rates = report["rates"]
    assert rates["cameras_hz"] == {"agentview": 20.0, "eye_in_hand": 20.0}
    assert rates["model_control_rate_hz"] == 20.0
    assert rates["node_control_rate_hz"] == 40.0  # its control_rate_hz parameter
    assert "reuses images between frames" in rates["note"]
    # The wrist camera's node topic is the bag's .../compressed: sent as recorded.
    as_recorded = [] if codec is None else [COMPRESSED_CAMS["eye_in_hand"]]
    assert report["replay"]["compressed_as_recorded"] == as_recorded
    assert report["replay"]["published_topics"] == {
        topics["agentview"]: live_agentview,
        topics["eye_in_hand"]: topics["eye_in_hand"],
        PROPRIO: PROPRIO,
    }
    assert report["warnings"] == []
    print(
        f"\nlive: {frames}, latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms, "
        f"outputs {report['outputs']}"
    )


def test_live_without_a_policy_node_times_out_clearly(bags, tmp_path):
    res = eval_replay(
        "--bag", bags["mcap"], "--out", tmp_path / "o", "--wait-timeout", "2",
        "--policy-ns", "/nobody_here",
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "timed out after 2 s waiting for a publisher on /nobody_here/action" in res.stderr
    assert "listening on ['/bag/" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "report.json").exists()


def test_live_refuses_a_node_listening_to_none_of_the_cameras(
    bags, exported_debug_model, start_node, tmp_path
):
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params={
            "model_dir": str(exported_debug_model),
            "camera_topics": ["/elsewhere/a", "/elsewhere/b"],
            "threads": 1,
        },
    )
    res = eval_replay(
        "--bag", bags["sqlite3"], "--out", tmp_path / "o", "--wait-timeout", "60",
        "--proprio-topic", "none",
    )  # fmt: skip
    assert res.returncode == 2, res.stderr + policy.tail()
    assert "the policy node's camera_topics are ['/elsewhere/a', '/elsewhere/b']" in res.stderr
    assert "--ros-args -r" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------ bad input
def _truncated(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        data = f.read_bytes()
        (dst / f.name).write_bytes(data if f.name == "metadata.yaml" else data[: len(data) // 2])
    return dst


@pytest.mark.parametrize(
    "case",
    [
        "missing_path",
        "not_a_bag",
        "truncated_sqlite3",
        "truncated_mcap",
        "missing_topic",
        "no_action_topic",
        "empty_bag",
        "missing_model_dir",
        "offline_without_model_dir",
    ],
)
@pytest.mark.parametrize("mode", ["offline", "live"])
def test_bad_input_exits_2_with_a_clear_message(bags, exported_debug_model, tmp_path, case, mode):
    bag = bags["sqlite3"]
    extra: list[str] = []
    if case == "missing_path":
        bag, needle = tmp_path / "no_such_bag", "no such bag"
    elif case == "not_a_bag":
        bag = tmp_path / "folder"
        bag.mkdir()
        (bag / "notes.txt").write_text("hi")
        needle = "no metadata.yaml"
    elif case.startswith("truncated"):
        bag = _truncated(bags[case.split("_")[1]], tmp_path / "cut")
        needle = "corrupt or truncated"
    elif case == "missing_topic":
        extra, needle = ["--action-topic", "/no/such/action"], "missing topics ['/no/such/action']"
    elif case == "no_action_topic":
        bag = write_bag(tmp_path / "noact", "mcap", n=3, action=False)
        needle = "no recorded action topics"
    elif case == "empty_bag":
        bag = write_bag(tmp_path / "empty", "sqlite3", n=0, instruction=False)
        needle = "no messages on the camera topic"
    elif case == "missing_model_dir":  # live: the model the node runs, for its sidecar
        extra, needle = ["--model-dir", str(tmp_path / "no_model")], "model directory missing"
    else:
        if mode == "live":
            pytest.skip("offline only")
        needle = "--offline needs --model-dir"
    if mode == "offline" and case not in ("missing_model_dir", "offline_without_model_dir"):
        extra += ["--model-dir", str(exported_debug_model)]
    args = ["--bag", bag, "--out", tmp_path / "out", *extra]
    if mode == "offline":
        args.append("--offline")
    res = eval_replay(*args, "--wait-timeout", "5", timeout=60)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "report.json").exists()
    if case in ("missing_topic", "no_action_topic"):
        assert CAMS["agentview"] in res.stderr  # it lists the topics the bag has
        assert "sensor_msgs/msg/Image" in res.stderr


def test_launch_file_describes_both_nodes():
    launch = pytest.importorskip("launch")  # only where ROS launch exists (the Docker image)
    if not hasattr(launch, "LaunchDescription"):  # a launch/ folder on sys.path, not the package
        pytest.skip(f"ROS launch is not installed (only {list(launch.__path__)})")
    path = (
        Path(__file__).resolve().parents[2]
        / "ros2_ws/src/lawm_bringup/launch/eval_replay.launch.py"
    )
    spec = importlib.util.spec_from_file_location("eval_replay_launch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    desc = mod.generate_launch_description()
    assert isinstance(desc, launch.LaunchDescription)
    names = {a.name for a in desc.entities if hasattr(a, "default_value")}
    assert set(mod.ARGUMENTS) <= names
