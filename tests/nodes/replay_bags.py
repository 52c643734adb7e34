"""Bags for the eval_replay tests, written with rosbags as a recorder writes them, and helpers
to run eval_replay as a process and to compute what the runtime core gives for those bags.

``write_bag``: two cameras at 20 Hz (raw rgb8 Images, or CompressedImages as image_transport's
``compressed`` plugin writes them), a proprio topic, a recorded 7-D action topic and an
instruction. ``write_teleop_bag``: a teleoperation recording of a real arm: two unsynchronised
30 Hz CompressedImage cameras, JointState and the end-effector PoseStamped at 100 Hz,
TwistStamped commands at 20 Hz and a sparse gripper width command (0.08 m open, 0 closed).
``model_variant``: a copy of an export with sidecar fields changed (what an export of other
data declares: its gripper convention, proprio layout).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from lawm_apps.harness import executable, node_env
from lawm_core.aggregation import TemporalAggregator
from lawm_core.model import PolicyModel
from lawm_core.preprocess import fit_image
from lawm_core.sidecar import PolicySidecar
from lawm_core.text_encoder import TextEncoderRuntime

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
# The camera topics of a bag whose cameras are compressed (image_transport's names).
COMPRESSED_CAMS = {cam: f"{topic}/compressed" for cam, topic in CAMS.items()}


def frame_image(camera: int, frame: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 RGB: a moving gradient plus noise, different per camera, so that
    predictions vary over frames."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = (x * 4 + y * 2 + frame * 9 + camera * 70) % 256
    rng = np.random.default_rng(1000 * camera + frame)
    noise = rng.integers(0, 40, (SIZE, SIZE, 3))
    img = np.stack([base, (base + 85) % 256, (255 - base)], axis=-1) + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def recorded_action(frame: int, gripper: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """The recorded 7-D action of a frame; the gripper alternates every 10 frames between
    ``gripper`` (open, closed)."""
    t = frame / HZ
    a = [0.5 * math.sin(2 * math.pi * 0.5 * t + d) for d in range(6)]
    return np.asarray([*a, gripper[1] if (frame // 10) % 2 else gripper[0]], np.float32)


def proprio_value(frame: int) -> np.ndarray:
    return np.asarray([0.1 + 0.01 * frame, -0.2, 0.9, 0.03, -0.03], np.float32)


def write_bag(
    path: Path,
    storage: str = "sqlite3",
    n: int = N_FRAMES,
    action: bool = True,
    instruction: bool = True,
    codec: str | None = None,
    gripper: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """A rosbag2 as a recorder would write it: log time = header stamp = frame time.

    ``codec``: None for raw rgb8 Images on ``CAMS``; "png" or "jpeg" for CompressedImages on
    ``COMPRESSED_CAMS``, encoded as image_transport does (a bgr8 image, ``format``
    "rgb8; <codec> compressed bgr8"). ``gripper``: the recorded (open, closed) values."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, Compressed = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CompressedImage"]
    String = T["std_msgs/msg/String"]
    Array, Layout = T["std_msgs/msg/Float32MultiArray"], T["std_msgs/msg/MultiArrayLayout"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    topics = CAMS if codec is None else COMPRESSED_CAMS
    cam_type = (Image if codec is None else Compressed).__msgtype__

    def ser(msg):
        return ts.serialize_cdr(msg, msg.__msgtype__)

    def array(values):
        return Array(layout=Layout(dim=[], data_offset=0), data=np.asarray(values, np.float32))

    def camera_msg(header, rgb: np.ndarray):
        if codec is None:
            return Image(
                header=header,
                height=SIZE,
                width=SIZE,
                encoding="rgb8",
                is_bigendian=0,
                step=SIZE * 3,
                data=rgb.reshape(-1),
            )
        return compressed_msg(Compressed, header, rgb, codec)

    with Writer(path, version=9, storage_plugin=plugin) as w:
        cams = [w.add_connection(topic, cam_type, typestore=ts) for topic in topics.values()]
        prop = w.add_connection(PROPRIO, Array.__msgtype__, typestore=ts)
        act = w.add_connection(ACTION, Array.__msgtype__, typestore=ts) if action else None
        if instruction:
            conn = w.add_connection(INSTRUCTION_TOPIC, String.__msgtype__, typestore=ts)
            w.write(conn, T0_NS, ser(String(data=INSTRUCTION)))
        for i in range(n):
            t = T0_NS + int(i * 1e9 / HZ)
            w.write(prop, t, ser(array(proprio_value(i))))
            if act is not None:
                w.write(act, t, ser(array(recorded_action(i, gripper))))
            for c, conn in enumerate(cams):
                header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam")
                w.write(conn, t, ser(camera_msg(header, frame_image(c, i))))
    return path


def compressed_msg(cls, header, rgb: np.ndarray, codec: str):
    """A CompressedImage as image_transport's compressed plugin writes it (bgr8 encoded)."""
    ok, data = cv2.imencode(f".{codec}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return cls(header=header, format=f"rgb8; {codec} compressed bgr8", data=data.reshape(-1))


# ------------------------------------------------------------------------------ teleop bag
TELEOP_CAMS = {
    "agentview": "/scene_camera/color/image_raw/compressed",
    "eye_in_hand": "/wrist_camera/color/image_raw/compressed",
}
TELEOP_CAM_HZ = 30.0
TELEOP_CAM_OFFSET_NS = (0, 7_000_000)  # the wrist camera runs 7 ms behind the scene camera
JOINT_STATES = "/joint_states"
EE_POSE = "/ee_pose"
TWIST = "/servo_node/delta_twist_cmds"
GRIPPER_CMD = "/gripper/width_cmd"
ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGERS = ("fr3_finger_joint1", "fr3_finger_joint2")
STATE_HZ = 100.0
CMD_HZ = 20.0
WIDTH_OPEN, WIDTH_CLOSED = 0.08, 0.0
GRIPPER_CLOSES_AT_S = 1.0
TELEOP_SECONDS = 2.0
# The proprio layout of a model trained on such bags (end-effector position + finger joints).
TELEOP_LAYOUT = ("ee_x", "ee_y", "ee_z", *(f"joint:{j}" for j in FINGERS))


def ee_position(t_s: float) -> np.ndarray:
    return np.array([0.4 + 0.05 * t_s, -0.1 * t_s, 0.3 + 0.02 * math.sin(3 * t_s)])


def joint_position(name: str, t_s: float) -> float:
    if name in FINGERS:  # each finger: half the opening
        closing = min(max((t_s - GRIPPER_CLOSES_AT_S) / 0.3, 0.0), 1.0)
        return 0.04 * (1.0 - closing)
    k = ARM_JOINTS.index(name)
    return 0.3 * math.sin(t_s + k)


def twist_command(t_s: float) -> np.ndarray:
    return np.array([0.1 * math.cos(t_s + d) for d in range(6)])


def gripper_command(t_s: float) -> float:
    return WIDTH_CLOSED if t_s >= GRIPPER_CLOSES_AT_S else WIDTH_OPEN


def teleop_camera_stamps(camera: int, seconds: float = TELEOP_SECONDS) -> np.ndarray:
    """int64 ns: the header stamps (= log times) of a camera's messages."""
    n = int(seconds * TELEOP_CAM_HZ) + 1
    steps = np.round(np.arange(n) * 1e9 / TELEOP_CAM_HZ).astype(np.int64)
    return T0_NS + TELEOP_CAM_OFFSET_NS[camera] + steps


def write_teleop_bag(
    path: Path,
    storage: str = "mcap",
    codec: str = "png",
    seconds: float = TELEOP_SECONDS,
    fingers_apart: bool = False,
    drop_joint: str | None = None,
) -> Path:
    """A teleoperation recording (see the module docstring). ``fingers_apart``: the finger
    joints come in JointState messages of their own (a separate gripper driver), not with the
    arm's; ``drop_joint``: a joint never published."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Compressed, String = T["sensor_msgs/msg/CompressedImage"], T["std_msgs/msg/String"]
    JointState, F64 = T["sensor_msgs/msg/JointState"], T["std_msgs/msg/Float64"]
    Pose, PoseStamped = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/PoseStamped"]
    Point, Quat = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    Twist, TwistStamped, Vec = (
        T["geometry_msgs/msg/Twist"],
        T["geometry_msgs/msg/TwistStamped"],
        T["geometry_msgs/msg/Vector3"],
    )
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    events: list[tuple[int, str, object]] = []  # (time ns, topic, message)

    def header(t: int, frame: str):
        return Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame)

    for c, topic in enumerate(TELEOP_CAMS.values()):
        for i, t in enumerate(teleop_camera_stamps(c, seconds).tolist()):
            msg = compressed_msg(Compressed, header(t, f"cam{c}"), frame_image(c, i), codec)
            events.append((t, topic, msg))
    for i in range(int(seconds * STATE_HZ) + 1):
        t = T0_NS + int(round(i * 1e9 / STATE_HZ))
        t_s = (t - T0_NS) * 1e-9
        groups = [ARM_JOINTS, FINGERS] if fingers_apart else [ARM_JOINTS + FINGERS]
        for names in groups:
            names = [n for n in names if n != drop_joint]
            q = np.array([joint_position(n, t_s) for n in names])
            msg = JointState(
                header=header(t, ""), name=names, position=q, velocity=np.zeros(0),
                effort=np.zeros(0),
            )  # fmt: skip
            events.append((t, JOINT_STATES, msg))
        x, y, z = ee_position(t_s)
        pose = Pose(position=Point(x=x, y=y, z=z), orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0))
        events.append((t, EE_POSE, PoseStamped(header=header(t, "fr3_link0"), pose=pose)))
    for i in range(int(seconds * CMD_HZ) + 1):
        t = T0_NS + int(round(i * 1e9 / CMD_HZ))
        v = twist_command((t - T0_NS) * 1e-9)
        twist = Twist(linear=Vec(x=v[0], y=v[1], z=v[2]), angular=Vec(x=v[3], y=v[4], z=v[5]))
        events.append((t, TWIST, TwistStamped(header=header(t, "fr3_link0"), twist=twist)))
    for t_s in (0.0, GRIPPER_CLOSES_AT_S):  # sent on change only
        events.append((T0_NS + int(t_s * 1e9), GRIPPER_CMD, F64(data=gripper_command(t_s))))
    events.append((T0_NS, "/task/instruction", String(data=INSTRUCTION)))
    events.sort(key=lambda e: e[0])
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for _, topic, msg in events:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=ts)
        for t, topic, msg in events:
            w.write(conns[topic], t, ts.serialize_cdr(msg, msg.__msgtype__))
    return path


def model_variant(src: Path, dst: Path, gripper: tuple[float, float] | None = None, **fields):
    """A copy of the export ``src`` whose policy.json declares other ``fields`` (e.g.
    ``proprio_layout``) and, with ``gripper`` (open, closed), the width gripper convention."""
    shutil.copytree(src, dst)
    spec = PolicySidecar.read(dst)
    if gripper is not None:
        fields["action_space"] = dataclasses.replace(
            spec.action_space, gripper="width", gripper_open=gripper[0], gripper_closed=gripper[1]
        )
    dataclasses.replace(spec, **fields).write(dst)
    return dst


def eval_replay(*args, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """The installed ``eval_replay`` command, run as a process."""
    return subprocess.run(
        [str(executable("lawm_policy", "eval_replay")), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=node_env(),
    )


def image_args(topics: dict[str, str] = CAMS) -> list[str]:
    return [a for cam, topic in topics.items() for a in ("--image-topic", f"{cam}={topic}")]


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """predictions.csv -> predicted (N, 7), recorded (N, 7), latency_ms (N,); NaN if empty."""
    rows = list(csv.DictReader(path.open()))

    def col(name):
        return np.asarray([float(r[name]) if r[name] else np.nan for r in rows])

    pred = np.stack([col(f"pred_{n}") for n in LAYOUT], axis=1)
    rec = np.stack([col(f"rec_{n}") for n in LAYOUT], axis=1)
    return pred, rec, col("latency_ms")


def expected_offline(model_dir: Path, n: int = N_FRAMES) -> np.ndarray:
    """(n, 7): what the runtime core gives for the bag's frames, computed here directly (the
    bag's proprio for a model with robot state)."""
    model = PolicyModel(model_dir, providers="cpu")
    lang = TextEncoderRuntime(model_dir).embed(INSTRUCTION)
    agg = TemporalAggregator(model.chunk_size, model.action_dim)
    out = []
    for i in range(n):
        images = {
            cam: fit_image(frame_image(c, i), model.image_size)
            for c, cam in enumerate(model.cameras)
        }
        proprio = proprio_value(i) if model.spec.proprio_dim > 0 else None
        chunk = model.predict(images, proprio, lang)
        out.append(model.denormalize(agg.step(chunk)))
    return np.asarray(out)
