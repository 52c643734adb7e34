"""Bags for the eval_replay tests, written with rosbags as a recorder writes them, and helpers
to run eval_replay as a process and to compute what the runtime core gives for those bags.

Two cameras at 20 Hz (raw rgb8 Images, or CompressedImages as image_transport's ``compressed``
plugin writes them), a proprio topic, a recorded 7-D action topic and an instruction.
"""

from __future__ import annotations

import csv
import math
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
    codec: str | None = None,
) -> Path:
    """A rosbag2 as a recorder would write it: log time = header stamp = frame time.

    ``codec``: None for raw rgb8 Images on ``CAMS``; "png" or "jpeg" for CompressedImages on
    ``COMPRESSED_CAMS``, encoded as image_transport does (a bgr8 image, ``format``
    "rgb8; <codec> compressed bgr8")."""
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
        ok, data = cv2.imencode(f".{codec}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        fmt = f"rgb8; {codec} compressed bgr8"
        return Compressed(header=header, format=fmt, data=data.reshape(-1))

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
                w.write(act, t, ser(array(recorded_action(i))))
            for c, conn in enumerate(cams):
                header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam")
                w.write(conn, t, ser(camera_msg(header, frame_image(c, i))))
    return path


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
    """(n, 7): what the runtime core gives for the bag's frames, computed here directly."""
    model = PolicyModel(model_dir, providers="cpu")
    lang = TextEncoderRuntime(model_dir).embed(INSTRUCTION)
    agg = TemporalAggregator(model.chunk_size, model.action_dim)
    out = []
    for i in range(n):
        images = {
            cam: fit_image(frame_image(c, i), model.image_size)
            for c, cam in enumerate(model.cameras)
        }
        chunk = model.predict(images, proprio_value(i), lang)
        out.append(model.denormalize(agg.step(chunk)))
    return np.asarray(out)
