"""Data files for the data-layer tests, written here in every supported format: LIBERO-layout
HDF5, video clips, BridgeData v2 trajectory folders and rosbag2 episodes (sqlite3 and mcap,
written with rosbags as the ROS tools write them)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from lawm.data import RosbagOptions
from lawm_core import contract

AV, EYE = contract.AGENTVIEW, contract.EYE_IN_HAND


# -- HDF5 and video ----------------------------------------------------------------------------
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


# -- BridgeData v2 ----------------------------------------------------------------------------
def bridgedata_traj(folder: Path, n: int, lang: str | None, seed: int) -> np.ndarray:
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


# -- rosbag2 ----------------------------------------------------------------------------------
T0 = 1_700_000_000 * 10**9
MS = 10**6
FRONT, WRIST = "/cam/front/image_raw", "/cam/wrist/compressed"
ACTION, PROPRIO, TEXT = "/robot/action", "/robot/proprio", "/task/instruction"


def front_image(i: int) -> np.ndarray:
    img = np.zeros((12, 16, 3), np.uint8)
    img[..., 0] = 10 * i
    img[..., 1] = np.arange(16, dtype=np.uint8)[None, :] * 3
    img[..., 2] = 7
    return img


def wrist_image(k: int) -> np.ndarray:
    img = np.zeros((8, 10, 3), np.uint8)
    img[...] = (50 + 30 * k, 10, 200)
    return img


def write_bag(path: Path, storage: str) -> None:
    """Front camera 10 Hz (stamps i*100 ms, logged 30 ms late), wrist PNG 5 Hz, actions 40 Hz
    from 150 ms (value j), proprio 20 Hz (value m), and an instruction."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types

    def header(ns: int):
        stamp = T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id="f")

    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    msgs = []  # (log time, topic, type, message)
    for i in range(10):
        img = front_image(i)
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
        ok, png = cv2.imencode(".png", cv2.cvtColor(wrist_image(k), cv2.COLOR_RGB2BGR))
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
