"""Recording simulated (or synthetic) episodes into files other tools read.

``Episode``: one recorded rollout. ``Hdf5Writer``: episodes streamed into the official
LIBERO/robomimic HDF5 layout (upright frames, the file says so), renamed into place on commit.
``write_mp4``: the agentview clip + its instruction (unlabeled video). ``write_rosbag``: one
rosbag2 (sqlite3) per episode with the LIBERO bridge's topics (``ROSBAG_TOPICS``).
``write_video``: uint8 RGB frames -> an mp4/webm/avi/mkv/mov clip (PyAV), written atomically;
the clips serve as unlabeled video for pretraining and as evaluation videos.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from lawm_core import contract
from lawm_core.bags import typestore
from lawm_core.files import atomic_dir, atomic_path, atomic_write_text
from lawm_sim import libero_env

try:  # PyAV writes the clips; OpenCV alone cannot choose the codec settings used here.
    import av
except ImportError:  # pragma: no cover - exercised only where PyAV is missing
    av = None

_CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".avi": "avi", ".mkv": "matroska", ".mov": "mov"}
_CODECS = {
    ".mp4": ("libx264", "mpeg4"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".avi": ("mpeg4",),
    ".mkv": ("libx264", "mpeg4"),
    ".mov": ("libx264", "mpeg4"),
}


def write_video(path: str | Path, frames: np.ndarray, fps: int = 20) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) (H, W even) as yuv420p, atomically. Needs PyAV."""
    if av is None:  # pragma: no cover
        raise RuntimeError("writing video needs PyAV (pip install av)")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CONTAINERS:
        raise ValueError(f"{path}: unsupported video suffix; use one of {sorted(_CONTAINERS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T>0, H, W, 3), got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    codec = next(c for c in _CODECS[suffix] if c in av.codecs_available)
    # Near-lossless settings: these clips are training data and test fixtures.
    options = {
        "libx264": {"crf": "8", "preset": "fast"},
        "libvpx-vp9": {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8"},
        "libvpx": {"crf": "4", "b": "2M"},
        "mpeg4": {"qscale": "2"},
    }[codec]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=_CONTAINERS[suffix]) as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            if codec == "mpeg4":
                stream.codec_context.qscale = 2
            for img in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


ROSBAG_TOPICS = {
    "agentview": "/libero/agentview/image_raw",
    "eye_in_hand": "/libero/eye_in_hand/image_raw",
    "proprio": "/libero/proprio",
    "action": "/lawm_policy/action",
    "instruction": "/libero/instruction",
}
IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
# Stop an episode this many steps after the expert has finished without success.


@dataclass
class Episode:
    """One recorded rollout (row t: the observation before action t)."""

    suite: str
    task_id: int
    task_name: str
    init_state: int
    instruction: str
    success: bool
    actions: np.ndarray
    obs: dict[str, np.ndarray]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    states: np.ndarray | None = None
    robot_states: np.ndarray | None = None
    sim_time: np.ndarray | None = None  # seconds, per row
    error: str | None = None  # what ended the episode early, if anything raised

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def stem(self) -> str:
        return f"{self.suite}_task{self.task_id}_init{self.init_state}"


# -- episodes ------------------------------------------------------------------------------------
def _task_meta(suite: str, task_id: int) -> dict[str, Any]:
    path = libero_env.bddl_path(suite, task_id)
    return {
        "suite": suite,
        "task_id": task_id,
        "task_name": libero_env.task_names(suite)[task_id],
        "language_instruction": libero_env.task_instruction(suite, task_id),
        "bddl_file_name": path,
    }


def _problem_info(bddl_file: str, instruction: str) -> dict[str, str]:
    text = Path(bddl_file).read_text()
    m = re.search(r"\(define\s+\(problem\s+([^)\s]+)\)", text)
    d = re.search(r"\(:domain\s+([^)\s]+)\)", text)
    return {
        "problem_name": m.group(1) if m else "",
        "domain_name": d.group(1) if d else "",
        "language_instruction": instruction,
    }


class Hdf5Writer:
    """Streams episodes into a LIBERO-layout file at a temporary path; ``commit`` renames it."""

    def __init__(self, path: Path, suite: str, tasks: Sequence[int], env_args: dict[str, Any]):
        self.path = Path(path)
        # The file is written at a temporary path beside the target (lawm_core.files): commit
        # renames it into place with the project's file mode, abort removes it.
        self._atomic = contextlib.ExitStack()
        self.tmp = self._atomic.enter_context(atomic_path(self.path))
        self.file = h5py.File(self.tmp, "w")
        self.data = self.file.create_group("data")
        metas = [_task_meta(suite, t) for t in tasks]
        first = metas[0]
        info = _problem_info(first["bddl_file_name"], first["language_instruction"])
        attrs = self.data.attrs
        attrs["problem_info"] = json.dumps(info)
        attrs["macros_image_convention"] = "opencv"  # we store upright frames
        attrs["env_name"] = info["problem_name"] or suite
        attrs["bddl_file_name"] = first["bddl_file_name"]
        attrs["bddl_file_content"] = Path(first["bddl_file_name"]).read_text()
        attrs["env_args"] = json.dumps(env_args)
        attrs["tasks"] = json.dumps(metas)
        attrs["suite"] = suite
        attrs["date"] = datetime.date.today().isoformat()
        self.count = 0
        self.total = 0

    def add(self, ep: Episode) -> None:
        demo = self.data.create_group(f"demo_{self.count}")
        self.count += 1
        self.total += ep.length
        a = demo.attrs
        a["success"] = bool(ep.success)
        a["suite"] = ep.suite
        a["task_id"] = int(ep.task_id)
        a["task_name"] = ep.task_name
        a["init_state"] = int(ep.init_state)
        a["num_samples"] = int(ep.length)
        a["language_instruction"] = ep.instruction
        if ep.error is not None:
            a["error"] = ep.error
        demo.create_dataset("actions", data=ep.actions)
        demo.create_dataset("states", data=ep.states)
        demo.create_dataset("robot_states", data=ep.robot_states)
        rewards = np.zeros(ep.length, np.float64)
        dones = np.zeros(ep.length, np.uint8)
        if ep.success and ep.length:
            rewards[-1], dones[-1] = 1.0, 1
        demo.create_dataset("rewards", data=rewards)
        demo.create_dataset("dones", data=dones)
        obs = demo.create_group("obs")
        for cam, frames in ep.images.items():
            obs.create_dataset(
                contract.HDF5_IMAGE_KEYS[cam],
                data=frames,
                chunks=(1, *frames.shape[1:]),
                **IMAGE_COMPRESSION,
            )
        for k in ("ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states"):
            obs.create_dataset(k, data=ep.obs[k])

    def commit(self) -> Path:
        self.data.attrs["num_demos"] = self.count
        self.data.attrs["total"] = self.total
        self.file.close()
        self._atomic.close()
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_mp4(folder: Path, ep: Episode, fps: int = 20) -> Path:
    """The episode's agentview as ``<stem>.mp4`` + ``<stem>.txt`` (its instruction). The text
    goes first: a clip is never on disk without its instruction (the loader would read the
    file name as one), while a lone text file is ignored."""
    frames = ep.images[contract.AGENTVIEW]
    path = Path(folder) / f"{ep.stem}.mp4"
    atomic_write_text(path.with_suffix(".txt"), ep.instruction + "\n")
    write_video(path, frames, fps=fps)
    return path


def write_rosbag(folder: Path, ep: Episode) -> Path:
    """The episode as a rosbag2 (sqlite3) folder ``<folder>/<stem>`` with the bridge topics:
    both cameras (sensor_msgs/Image rgb8), proprio and actions (std_msgs/Float32MultiArray),
    the instruction (std_msgs/String). Stamps are the simulator time (20 Hz)."""
    stamps = np.round(np.asarray(ep.sim_time) * 1e9).astype(np.int64)
    proprio = np.concatenate([ep.obs["ee_pos"], ep.obs["gripper_states"]], axis=1)
    return write_bag(Path(folder) / ep.stem, ep.images, ep.instruction, stamps, ep.actions,
                     proprio)  # fmt: skip


def write_bag(
    final: Path,
    images: dict[str, np.ndarray],
    instruction: str,
    stamps_ns: np.ndarray,
    actions: np.ndarray | None = None,
    proprio: np.ndarray | None = None,
    storage: str = "sqlite3",
) -> Path:
    """One episode as a rosbag2 folder ``final`` (written beside it, then renamed) with the
    LIBERO bridge's topics (``ROSBAG_TOPICS``): each camera's frames (sensor_msgs/Image rgb8),
    proprio and actions (std_msgs/Float32MultiArray) when given, the instruction
    (std_msgs/String) once at the start. Row t is stamped ``stamps_ns[t]`` (header and log
    time). ``storage``: "sqlite3" or "mcap"."""
    ts = typestore()
    T = ts.types
    image_t, array_t, string_t = (
        "sensor_msgs/msg/Image",
        "std_msgs/msg/Float32MultiArray",
        "std_msgs/msg/String",
    )
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    stamps = np.asarray(stamps_ns, np.int64)
    if len(stamps) and stamps[0] <= 0:  # a zero header stamp reads as "unset"
        stamps = stamps - stamps[0] + 1_000_000_000
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with atomic_dir(final) as bag, Writer(bag, version=9, storage_plugin=plugin) as w:
        conns = {
            cam: w.add_connection(ROSBAG_TOPICS[cam], image_t, typestore=ts) for cam in images
        }
        arrays = []
        for key, values in (("proprio", proprio), ("action", actions)):
            if values is not None:
                conn = w.add_connection(ROSBAG_TOPICS[key], array_t, typestore=ts)
                arrays.append((conn, np.ascontiguousarray(values, np.float32)))
        text = w.add_connection(ROSBAG_TOPICS["instruction"], string_t, typestore=ts)
        t0 = int(stamps[0]) if len(stamps) else 1_000_000_000
        w.write(text, t0, ts.serialize_cdr(T[string_t](data=instruction), string_t))
        for t, stamp in enumerate(stamps):
            stamp = int(stamp)
            sec, nsec = divmod(stamp, 1_000_000_000)
            header = T["std_msgs/msg/Header"](
                stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                frame_id="",
            )
            for cam, conn in conns.items():
                img = np.ascontiguousarray(images[cam][t])
                h, wd = img.shape[:2]
                msg = T[image_t](
                    header=header,
                    height=h,
                    width=wd,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=wd * 3,
                    data=img.reshape(-1),
                )
                w.write(conn, stamp, ts.serialize_cdr(msg, image_t))
            for conn, values in arrays:
                msg = T[array_t](layout=layout, data=values[t])
                w.write(conn, stamp, ts.serialize_cdr(msg, array_t))
    return final
