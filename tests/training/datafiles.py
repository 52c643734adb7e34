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


# -- a teleoperation rosbag2, as a real arm records it ----------------------------------------
TELEOP_FRONT = "/front_camera/color/image_raw/compressed"
TELEOP_WRIST = "/wrist_camera/color/image_raw/compressed"
TELEOP_JOINTS = "/joint_states"
TELEOP_TWIST = "/servo_node/delta_twist_cmds"
TELEOP_GRIPPER = "/gripper/command"
TELEOP_POSE = "/ee_pose"
ARM_JOINTS = tuple(f"joint{k}" for k in range(1, 7))
FINGER = "finger_joint"
CAM_PERIOD = 10**9 / 30  # ns
FRONT_PHASE, WRIST_PHASE, TWIST_PHASE, FINGER_PHASE = 0, 11 * MS, 7 * MS, 5 * MS
GRIPPER_EVENTS = ((550 * MS, 1.0), (1400 * MS, -1.0))  # (time, command): close, then open


def cam_time(phase: int, i: int) -> int:
    """Header stamp (ns after T0) of frame i of a 30 Hz camera."""
    return phase + round(i * CAM_PERIOD)


def teleop_frame(cam: int, i: int) -> np.ndarray:
    """Frame i of camera 0 (front) or 1 (wrist): flat colours that survive JPEG."""
    img = np.zeros((24, 32, 3), np.uint8)
    img[...] = ((4 * i) % 256, 60 + 100 * cam, 200 - (3 * i) % 200)
    return img


def joint_value(name: str, t_ns: int) -> float:
    """The recorded position of a joint at t (ns after T0): joint k is 0.1 k + t seconds."""
    k = 10 if name == FINGER else int(name[len("joint") :])
    return 0.1 * k + t_ns / 1e9


def twist_value(j: int) -> np.ndarray:
    """The j-th recorded TwistStamped command (linear xyz, angular xyz)."""
    return np.array([0.01 * j, -0.02, 0.03, 0.0, 0.1, -0.001 * j])


def write_teleop_bag(
    path: Path,
    *,
    seconds: float = 2.0,
    storage: str = "mcap",
    gripper: bool = True,
    pose: bool = False,
    joints: bool = True,
) -> None:
    """Two unsynchronised 30 Hz CompressedImage cameras (front JPEG, wrist PNG, ``format`` as
    compressed_image_transport writes it), JointState at 100 Hz (arm joints; the finger joint
    in separate messages at 10 Hz), TwistStamped commands at 20 Hz, a sparse Float64 gripper
    command (GRIPPER_EVENTS) and optionally an end-effector PoseStamped at 50 Hz at (t, 2t, 3t)
    m. Header stamps are the times above; each message is logged 2-4 ms later."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    end = int(seconds * 1e9)

    def header(ns: int, frame: str = "base_link"):
        t = T0 + ns
        stamp = T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    msgs = []  # (time ns after T0, topic, type, message)
    for cam, (topic, phase, codec) in enumerate(
        ((TELEOP_FRONT, FRONT_PHASE, "jpeg"), (TELEOP_WRIST, WRIST_PHASE, "png"))
    ):
        i = 0
        while (t := cam_time(phase, i)) <= end:
            bgr = cv2.cvtColor(teleop_frame(cam, i), cv2.COLOR_RGB2BGR)
            data = cv2.imencode(f".{'jpg' if codec == 'jpeg' else 'png'}", bgr)[1].reshape(-1)
            fmt = f"rgb8; {codec} compressed bgr8"
            msg = T["sensor_msgs/msg/CompressedImage"](header=header(t), format=fmt, data=data)
            msgs.append((t, topic, "sensor_msgs/msg/CompressedImage", msg))
            i += 1
    if joints:
        state = "sensor_msgs/msg/JointState"
        for t in range(0, end + 1, 10 * MS):
            msg = T[state](
                header=header(t),
                name=list(ARM_JOINTS),
                position=np.array([joint_value(n, t) for n in ARM_JOINTS]),
                velocity=np.zeros(6),
                effort=np.zeros(0),
            )
            msgs.append((t, TELEOP_JOINTS, state, msg))
        for t in range(FINGER_PHASE, end + 1, 100 * MS):
            msg = T[state](
                header=header(t),
                name=[FINGER],
                position=np.array([joint_value(FINGER, t)]),
                velocity=np.zeros(0),
                effort=np.zeros(0),
            )
            msgs.append((t, TELEOP_JOINTS, state, msg))
    vec = T["geometry_msgs/msg/Vector3"]
    j = 0
    while (t := TWIST_PHASE + j * 50 * MS) <= end:
        v = twist_value(j)
        twist = T["geometry_msgs/msg/Twist"](linear=vec(*v[:3]), angular=vec(*v[3:]))
        msg = T["geometry_msgs/msg/TwistStamped"](header=header(t), twist=twist)
        msgs.append((t, TELEOP_TWIST, "geometry_msgs/msg/TwistStamped", msg))
        j += 1
    if gripper:
        for t, value in GRIPPER_EVENTS:
            msgs.append(
                (t, TELEOP_GRIPPER, "std_msgs/msg/Float64", T["std_msgs/msg/Float64"](value))
            )
    if pose:
        for t in range(0, end + 1, 20 * MS):
            s = t / 1e9
            p = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](s, 2 * s, 3 * s),
                orientation=T["geometry_msgs/msg/Quaternion"](0.0, 0.0, 0.0, 1.0),
            )
            msg = T["geometry_msgs/msg/PoseStamped"](header=header(t), pose=p)
            msgs.append((t, TELEOP_POSE, "geometry_msgs/msg/PoseStamped", msg))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for n, (t, topic, msgtype, msg) in enumerate(sorted(msgs, key=lambda m: m[0])):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            late = (2 + n % 3) * MS
            writer.write(conns[topic], T0 + t + late, ts.serialize_cdr(msg, msgtype))
