"""replay_eval: rosbag replay evaluation, offline (runtime core) and live (policy node process).

Bags are written here with rosbags (sqlite3 and mcap): two rgb8 cameras at 20 Hz, a proprio
topic, a recorded 7-D action topic and an instruction. replay_eval runs as a real process.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lawm_apps.harness import executable, node_env

pytestmark = pytest.mark.ros

CAMS = {"agentview": "/bag/agentview/image_raw", "eye_in_hand": "/bag/eye_in_hand/image_raw"}
PROPRIO = "/bag/robot/proprio"
ACTION = "/recorded/action"
INSTRUCTION_TOPIC = "/bag/instruction"
INSTRUCTION = "pick up the black bowl and place it on the plate"
N_FRAMES = 40
HZ = 20.0
SIZE = 48
T0_NS = 1_700_000_000 * 1_000_000_000
LAYOUT = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lawm.checkpoint import save_policy
    from lawm.config import preset
    from lawm.export import export_policy
    from lawm.models.policy import Policy

    root = tmp_path_factory.mktemp("model")
    cfg = preset("debug")
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    policy.set_stats({"action_min": np.full(7, -2.0), "action_max": np.full(7, 2.0)})
    save_policy(root / "policy", policy, cfg, {"stage": "test"})
    export_policy(root / "policy", root / "export")  # with the text encoder
    return root / "export"


def frame_image(camera: int, frame: int) -> np.ndarray:
    """A moving gradient plus noise, different per camera: predictions vary over frames."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = (x * 4 + y * 2 + frame * 9 + camera * 70) % 256
    rng = np.random.default_rng(1000 * camera + frame)
    noise = rng.integers(0, 40, (SIZE, SIZE, 3))
    img = np.stack([base, (base + 85) % 256, (255 - base)], axis=-1) + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def recorded_action(frame: int) -> np.ndarray:
    t = frame / HZ
    a = [0.5 * math.sin(2 * math.pi * 0.5 * t + d) for d in range(6)]
    return np.asarray([*a, 1.0 if (frame // 10) % 2 else -1.0], np.float32)


def proprio_value(frame: int) -> np.ndarray:
    return np.asarray([0.1 + 0.01 * frame, -0.2, 0.9, 0.03, -0.03], np.float32)


def write_bag(
    path: Path,
    storage: str = "sqlite3",
    n: int = N_FRAMES,
    action: bool = True,
    instruction: bool = True,
) -> Path:
    """A rosbag2 as a recorder would write it: log time = header stamp = frame time."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, String = T["sensor_msgs/msg/Image"], T["std_msgs/msg/String"]
    Array, Layout = T["std_msgs/msg/Float32MultiArray"], T["std_msgs/msg/MultiArrayLayout"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3

    def ser(msg, msgtype):
        return ts.serialize_cdr(msg, msgtype)

    def array(values):
        return Array(layout=Layout(dim=[], data_offset=0), data=np.asarray(values, np.float32))

    with Writer(path, version=9, storage_plugin=plugin) as w:
        cams = {
            cam: w.add_connection(topic, Image.__msgtype__, typestore=ts)
            for cam, topic in CAMS.items()
        }
        prop = w.add_connection(PROPRIO, Array.__msgtype__, typestore=ts)
        act = w.add_connection(ACTION, Array.__msgtype__, typestore=ts) if action else None
        if instruction:
            conn = w.add_connection(INSTRUCTION_TOPIC, String.__msgtype__, typestore=ts)
            w.write(conn, T0_NS, ser(String(data=INSTRUCTION), String.__msgtype__))
        for i in range(n):
            t = T0_NS + int(i * 1e9 / HZ)
            w.write(prop, t, ser(array(proprio_value(i)), Array.__msgtype__))
            if act is not None:
                w.write(act, t, ser(array(recorded_action(i)), Array.__msgtype__))
            for c, conn in enumerate(cams.values()):
                header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam")
                msg = Image(
                    header=header,
                    height=SIZE,
                    width=SIZE,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=SIZE * 3,
                    data=frame_image(c, i).reshape(-1),
                )
                w.write(conn, t, ser(msg, Image.__msgtype__))
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    return {s: write_bag(root / f"bag_{s}", s) for s in ("sqlite3", "mcap")}


def replay_eval(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(executable("lawm_policy", "replay_eval")), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=node_env(),
    )


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(path.open()))

    def col(name):
        return np.asarray([float(r[name]) if r[name] else np.nan for r in rows])

    pred = np.stack([col(f"pred_{n}") for n in LAYOUT], axis=1)
    rec = np.stack([col(f"rec_{n}") for n in LAYOUT], axis=1)
    return pred, rec, col("latency_ms")


def expected_offline(model_dir: Path, n: int = N_FRAMES) -> np.ndarray:
    """What the runtime core gives for the bag's frames, computed here directly."""
    from lawm_core.aggregation import TemporalAggregator
    from lawm_core.model import PolicyModel
    from lawm_core.preprocess import fit_image, image_from_msg_fields
    from lawm_core.text_encoder import TextEncoderRuntime

    model = PolicyModel(model_dir, providers="cpu")
    lang = TextEncoderRuntime(model_dir).embed(INSTRUCTION)
    agg = TemporalAggregator(model.chunk_size, model.action_dim)
    out = []
    for i in range(n):
        images = {}
        for c, cam in enumerate(model.cameras):
            raw = frame_image(c, i).tobytes()
            rgb = image_from_msg_fields(raw, "rgb8", SIZE, SIZE, SIZE * 3)
            images[cam] = fit_image(rgb, model.image_size)
        chunk = model.predict(images, proprio_value(i), lang)
        out.append(model.denormalize(agg.step(chunk)))
    return np.asarray(out)


def image_args() -> list[str]:
    return [a for cam, topic in CAMS.items() for a in ("--image-topic", f"{cam}={topic}")]


# ------------------------------------------------------------------------------ offline
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_offline_matches_runtime_core(bags, model_dir, tmp_path, storage):
    out = tmp_path / "out"
    res = replay_eval(
        "--bag", bags[storage], "--out", out, "--offline", "--model-dir", model_dir,
        *image_args(), "--action-topic", ACTION, "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    report = json.loads((out / "report.json").read_text())
    assert json.loads(res.stdout.strip().splitlines()[-1]) == report  # one JSON line at the end
    assert report["mode"] == "offline"
    assert report["storage"] == storage
    assert report["bag"] == str(bags[storage].resolve())
    assert report["topics"]["images"] == CAMS
    assert report["topics"]["action"] == ACTION
    assert report["topics"]["proprio"] == PROPRIO  # found by name
    assert report["instruction"] == INSTRUCTION  # read from the bag's instruction topic
    assert report["frames"] == {
        "in_bag": N_FRAMES,
        "published": N_FRAMES,
        "answered": N_FRAMES,
        "dropped": 0,
        "compared": N_FRAMES,
    }

    pred, rec, latency = read_csv(out / "predictions.csv")
    expected = expected_offline(model_dir)
    np.testing.assert_allclose(pred, expected, atol=1e-5)
    np.testing.assert_allclose(rec, [recorded_action(i) for i in range(N_FRAMES)], atol=1e-7)
    assert np.all(latency > 0)

    m = report["metrics"]
    assert list(m["per_dim"]) == LAYOUT
    for d, name in enumerate(LAYOUT):
        err = pred[:, d] - rec[:, d]
        got = m["per_dim"][name]
        assert got["n"] == N_FRAMES
        assert got["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-9)
        assert got["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-9)
        assert got["pearson"] == pytest.approx(np.corrcoef(pred[:, d], rec[:, d])[0, 1], abs=1e-9)
    agree = np.mean((pred[:, 6] > 0) == (rec[:, 6] > 0))
    assert m["gripper_sign_agreement"] == pytest.approx(agree)
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] < 1000
    assert report["model"]["provider"] == "CPUExecutionProvider"
    assert (out / "actions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_offline_guesses_topics_and_takes_the_instruction_argument(bags, model_dir, tmp_path):
    # No --image-topic / --action-topic: the wrist-named topic is eye_in_hand, the *action*
    # topic is the action; --instruction wins over the bag's; proprio can be switched off.
    out = tmp_path / "out"
    res = replay_eval(
        "--bag", bags["mcap"] / "bag_mcap.mcap", "--out", out, "--offline",  # a bare file
        "--model-dir", model_dir, "--instruction", "  open   the drawer ",
        "--proprio-topic", "none",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["topics"]["images"] == CAMS
    assert report["topics"]["action"] == ACTION
    assert report["topics"]["proprio"] is None
    assert report["instruction"] == "open the drawer"
    assert report["instruction_source"] == "argument"
    assert report["frames"]["answered"] == N_FRAMES


def test_twist_stamped_action_topic_with_a_gripper_topic(tmp_path):
    """A recorded TwistStamped command: six values from the twist, the gripper from its own
    Float64 topic, each aligned to the frames (latest at or before)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from lawm_policy import replay

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
    index = replay.open_bag(path, action_topic="/servo/cmd", gripper_topic="/gripper/command")
    assert index.selection.images == {"agentview": "/cam/image_raw"}  # the only Image topic
    assert index.selection.action_type == "geometry_msgs/msg/TwistStamped"
    np.testing.assert_allclose(index.recorded[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(index.recorded[:, 1:6], [[0.1, 0.2, 0.3, 0.4, 0.5]] * 4)
    np.testing.assert_allclose(index.recorded[:, 6], [-1, -1, 1, 1])
    # Without a gripper topic the gripper is not scored (NaN), the rest is.
    index = replay.open_bag(path, action_topic="/servo/cmd")
    assert np.isnan(index.recorded[:, 6]).all()
    m = replay.compute_metrics(index.recorded + 0.5, index.recorded)
    assert m["per_dim"]["dx"]["mae"] == pytest.approx(0.5)
    assert m["per_dim"]["gripper"] == {"n": 0, "mae": None, "rmse": None, "pearson": None}
    assert m["gripper_sign_agreement"] is None


# ------------------------------------------------------------------------------ live
def test_live_outputs_are_matched_to_their_frames_and_ticks(bags):
    """Pairing logic on hand-made outputs: stamp -> frame, first answer counts, an action
    belongs to the twist of its own tick only."""
    from lawm_policy import replay

    index = replay.open_bag(bags["sqlite3"], image_topics=CAMS, action_topic=ACTION)
    clock, wrist = CAMS["agentview"], CAMS["eye_in_hand"]
    stamp = {i: 5_000_000_000 + i * 50_000_000 for i in range(N_FRAMES)}  # restamped clock
    image_stamps = {stamp[i]: (clock, i) for i in range(N_FRAMES)}
    image_stamps.update({stamp[i] + 1000: (wrist, i) for i in range(N_FRAMES)})
    ms = 1_000_000

    def action(v):
        return [float(v)] * 7

    twists = [
        (123, stamp[0] - 10 * ms, stamp[0] - 9 * ms),  # stale zero twist: stamp = "now"
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
    ev = replay.match_live_outputs(
        index, replay.LiveOutputs(image_stamps, twists, actions, published_frames=N_FRAMES)
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


def test_live_replay_through_the_policy_node(bags, model_dir, start_node, tmp_path):
    live_agentview = "/live/agentview/image_raw"
    policy = start_node(
        "lawm_policy",
        "policy_node",
        params={
            # The wrist camera listens on the bag's topic name; the scene camera elsewhere,
            # reached by remapping replay_eval's publisher.
            "model_dir": str(model_dir),
            "camera_topics": [live_agentview, CAMS["eye_in_hand"]],
            "proprio_topic": PROPRIO,
            "control_rate_hz": 40.0,
            "threads": 1,
        },
    )
    out = tmp_path / "live"
    res = replay_eval(
        "--bag", bags["sqlite3"], "--out", out, *image_args(), "--action-topic", ACTION,
        "--policy-ns", "/lawm_policy", "--rate", "1.0", "--wait-timeout", "60",
        "--ros-args", "-r", f"{CAMS['agentview']}:={live_agentview}",
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
    assert report["metrics"]["gripper_sign_agreement"] is not None
    assert report["replay"]["published_topics"] == {
        CAMS["agentview"]: live_agentview,
        CAMS["eye_in_hand"]: CAMS["eye_in_hand"],
        PROPRIO: PROPRIO,
    }
    print(
        f"\nlive: {frames}, latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms, "
        f"outputs {report['outputs']}"
    )


def test_live_without_a_policy_node_times_out_clearly(bags, tmp_path):
    res = replay_eval(
        "--bag", bags["mcap"], "--out", tmp_path / "o", "--wait-timeout", "2",
        "--policy-ns", "/nobody_here",
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "timed out after 2 s waiting for a subscriber on /bag/" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "report.json").exists()


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
def test_bad_input_exits_2_with_a_clear_message(bags, model_dir, tmp_path, case, mode):
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
    elif case == "missing_model_dir":
        if mode == "live":
            pytest.skip("live mode takes no model directory")
        extra, needle = ["--model-dir", str(tmp_path / "no_model")], "model directory missing"
    else:
        if mode == "live":
            pytest.skip("offline only")
        needle = "--offline needs --model-dir"
    if mode == "offline" and case not in ("missing_model_dir", "offline_without_model_dir"):
        extra += ["--model-dir", str(model_dir)]
    args = ["--bag", bag, "--out", tmp_path / "out", *extra]
    if mode == "offline":
        args.append("--offline")
    res = replay_eval(*args, "--wait-timeout", "5", timeout=60)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "report.json").exists()
    if case in ("missing_topic", "no_action_topic"):
        assert CAMS["agentview"] in res.stderr  # it lists the topics the bag has
        assert "sensor_msgs/msg/Image" in res.stderr


def test_launch_file_describes_both_nodes():
    launch = pytest.importorskip("launch")  # only where ROS launch exists (the Docker image)
    import importlib.util

    path = (
        Path(__file__).resolve().parents[1]
        / "ros2_ws/src/lawm_bringup/launch/replay_eval.launch.py"
    )
    spec = importlib.util.spec_from_file_location("replay_eval_launch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    desc = mod.generate_launch_description()
    assert isinstance(desc, launch.LaunchDescription)
    names = {a.name for a in desc.entities if hasattr(a, "default_value")}
    assert set(mod.ARGUMENTS) <= names
