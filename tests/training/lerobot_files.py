"""LeRobotDataset folders written for the tests with plain pyarrow and PyAV, laid out as the
format's specification and lerobot's own writer lay them out, independently of our reader and
writer:

- v3.0: ``meta/info.json`` (indent 4), ``meta/tasks.parquet`` (the task text as pandas writes
  its index: column ``task``, or ``__index_level_0__`` in older files), one row per episode in
  ``meta/episodes/chunk-000/file-000.parquet`` (tasks, length, data and video file indices,
  ``dataset_from_index``/``dataset_to_index``, ``videos/<key>/from_timestamp``/``to_timestamp``,
  a few ``stats/*`` columns), data parquet files holding several episodes each (one row group
  per episode, a new file every ``episodes_per_file``, a new chunk folder every ``chunks_size``
  files), and per camera mp4 files holding the same episodes back to back (pts continue from
  one episode to the next, time base 1/fps, so an episode's frame k lies at
  ``from_timestamp + k / fps``).
- v2.1: one parquet and one mp4 per camera per episode, ``meta/episodes.jsonl``,
  ``meta/tasks.jsonl``, ``meta/episodes_stats.jsonl``.

Frames, states and actions come from the synthetic block scenes (``lawm.data.synthetic``):
state = eef position, axis-angle (zeros), two gripper fingers (LIBERO's 8 values on the Hub).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lawm.data.synthetic import DEFAULT_INSTRUCTIONS, simulate_episode
from lawm_core import contract

IMAGE = "observation.images.image"
WRIST = "observation.images.wrist_image"
KEYS = {contract.AGENTVIEW: IMAGE, contract.EYE_IN_HAND: WRIST}


@dataclass
class Episode:
    index: int
    task: str
    images: dict[str, np.ndarray]  # feature key -> (T, H, W, 3) uint8
    state: np.ndarray  # (T, 8) float32
    action: np.ndarray  # (T, 7) float32

    @property
    def length(self) -> int:
        return len(self.action)


@dataclass
class Written:
    root: Path
    episodes: list[Episode]
    fps: int
    files: list[Path] = field(default_factory=list)


def make_episodes(n: int, lengths=(12, 9, 15, 7, 11), size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        ep = simulate_episode(rng, i % 4, 4, length, size)
        state = np.concatenate(
            [ep["ee_pos"], np.zeros((length, 3), np.float32), ep["gripper_states"]], axis=1
        ).astype(np.float32)
        images = {KEYS[c]: ep["images"][c] for c in contract.CAMERAS}
        out.append(
            Episode(
                i, DEFAULT_INSTRUCTIONS[i % 4], images, state, ep["actions"].astype(np.float32)
            )
        )
    return out


def encode_video(path: Path, clips: list[np.ndarray], fps: int, codec: str = "libsvtav1"):
    """Episodes' frames back to back in one mp4; returns each clip's (from, to) timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spans = []
    with av.open(str(path), "w") as out:
        options = {"g": "2", "crf": "30", "preset": "12"} if codec == "libsvtav1" else {}
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = clips[0].shape[2], clips[0].shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        pts = 0
        for clip in clips:
            spans.append((pts / fps, (pts + len(clip)) / fps))
            for img in clip:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts = pts
                pts += 1
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return spans


def _vector(values: np.ndarray, fixed: bool) -> pa.Array:
    flat = pa.array(values.reshape(-1).astype(np.float32), pa.float32())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _features(episodes: list[Episode], fps: int, image_dtype: str, codec: str) -> dict:
    h, w = episodes[0].images[IMAGE].shape[1:3]
    cam = {
        "dtype": image_dtype,
        "shape": [h, w, 3],
        "names": ["height", "width", "channels"],
    }
    if image_dtype == "video":
        cam["info"] = {
            "video.height": h,
            "video.width": w,
            "video.codec": "av1" if codec == "libsvtav1" else "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        }
    return {
        IMAGE: cam,
        WRIST: dict(cam),
        "observation.state": {"dtype": "float32", "shape": [8], "names": ["state"]},
        "action": {"dtype": "float32", "shape": [7], "names": ["actions"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _data_table(
    episodes: list[Episode],
    start_index: int,
    tasks: list[str],
    fixed: bool,
    image_dtype: str,
    fps: int,
) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    if image_dtype == "image":
        for key in (IMAGE, WRIST):
            cells = [
                {"bytes": _png(img), "path": f"frame-{k:06d}.png"}
                for ep in episodes
                for k, img in enumerate(ep.images[key])
            ]
            cols[key] = pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    cols["observation.state"] = _vector(np.concatenate([e.state for e in episodes]), fixed)
    cols["action"] = _vector(np.concatenate([e.action for e in episodes]), fixed)
    cols["timestamp"] = pa.array(
        np.concatenate([(np.arange(e.length) / fps).astype(np.float32) for e in episodes]),
        pa.float32(),
    )
    cols["frame_index"] = pa.array(np.concatenate([np.arange(e.length) for e in episodes]))
    cols["episode_index"] = pa.array(np.concatenate([[e.index] * e.length for e in episodes]))
    n = sum(e.length for e in episodes)
    cols["index"] = pa.array(np.arange(start_index, start_index + n))
    cols["task_index"] = pa.array(
        np.concatenate([[tasks.index(e.task)] * e.length for e in episodes])
    )
    return pa.table(cols)


def write_v3(
    root: Path,
    episodes: list[Episode],
    *,
    fps: int = 10,
    episodes_per_file: int = 2,
    chunks_size: int = 2,
    fixed_lists: bool = True,
    image_dtype: str = "video",
    codec: str = "libsvtav1",
    tasks_index_name: str = "task",
    info_changes: dict | None = None,
) -> Written:
    """A v3.0 dataset at ``root``; ``chunks_size`` files per chunk folder (lerobot: 1000)."""
    tasks = sorted({e.task for e in episodes}, key=[e.task for e in episodes].index)
    groups = [
        episodes[i : i + episodes_per_file] for i in range(0, len(episodes), episodes_per_file)
    ]
    written = Written(root, episodes, fps)
    rows = []
    index = 0
    for f, group in enumerate(groups):
        chunk, file = divmod(f, chunks_size)
        data = root / f"data/chunk-{chunk:03d}/file-{file:03d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        table = _data_table(group, index, tasks, fixed_lists, image_dtype, fps)
        with pq.ParquetWriter(str(data), table.schema, compression="snappy") as writer:
            at = 0
            for e in group:  # one row group per episode, as lerobot appends them
                writer.write_table(table.slice(at, e.length))
                at += e.length
        written.files.append(data)
        spans = {}
        if image_dtype == "video":
            for key in (IMAGE, WRIST):
                video = root / f"videos/{key}/chunk-{chunk:03d}/file-{file:03d}.mp4"
                spans[key] = encode_video(video, [e.images[key] for e in group], fps, codec)
                written.files.append(video)
        for j, e in enumerate(group):
            row = {
                "episode_index": e.index,
                "tasks": [e.task],
                "length": e.length,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": index,
                "dataset_to_index": index + e.length,
            }
            for key, span in spans.items():
                row |= {
                    f"videos/{key}/chunk_index": chunk,
                    f"videos/{key}/file_index": file,
                    f"videos/{key}/from_timestamp": span[j][0],
                    f"videos/{key}/to_timestamp": span[j][1],
                }
            row |= {
                "stats/action/min": e.action.min(0).astype(np.float64).tolist(),
                "stats/action/max": e.action.max(0).astype(np.float64).tolist(),
                "stats/action/count": [e.length],
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
            rows.append(row)
            index += e.length
    meta = root / "meta"
    (meta / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(meta / "episodes/chunk-000/file-000.parquet"))
    pq.write_table(
        pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), tasks_index_name: tasks}),
        str(meta / "tasks.parquet"),
    )
    actions = np.concatenate([e.action for e in episodes])
    stats = {"action": {"min": actions.min(0).tolist(), "max": actions.max(0).tolist(),
                        "mean": actions.mean(0).tolist(), "std": actions.std(0).tolist(),
                        "count": [len(actions)]}}  # fmt: skip
    (meta / "stats.json").write_text(json.dumps(stats, indent=4))
    info = {
        "codebase_version": "v3.0",
        "robot_type": "panda",
        "total_episodes": len(episodes),
        "total_frames": index,
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if image_dtype == "video"
        else None,
        "features": _features(episodes, fps, image_dtype, codec),
    }
    info |= info_changes or {}
    (meta / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    return written


def write_v21(root: Path, episodes: list[Episode], *, fps: int = 10, chunks_size: int = 1000):
    """A v2.1 dataset: one parquet and one mp4 per camera per episode."""
    tasks = sorted({e.task for e in episodes}, key=[e.task for e in episodes].index)
    written = Written(root, episodes, fps)
    index = 0
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    lines, stats_lines = [], []
    for e in episodes:
        chunk = e.index // chunks_size
        data = root / f"data/chunk-{chunk:03d}/episode_{e.index:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table([e], index, tasks, True, "video", fps), str(data))
        written.files.append(data)
        for key in (IMAGE, WRIST):
            video = root / f"videos/chunk-{chunk:03d}/{key}/episode_{e.index:06d}.mp4"
            encode_video(video, [e.images[key]], fps)
            written.files.append(video)
        lines.append(json.dumps({"episode_index": e.index, "tasks": [e.task], "length": e.length}))
        stats_lines.append(json.dumps({"episode_index": e.index, "stats": {
            "action": {"min": e.action.min(0).tolist(), "max": e.action.max(0).tolist(),
                       "count": [e.length]}}}))  # fmt: skip
        index += e.length
    (meta / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (meta / "episodes_stats.jsonl").write_text("\n".join(stats_lines) + "\n")
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks))
    )
    info = {
        "codebase_version": "v2.1",
        "robot_type": "panda",
        "total_episodes": len(episodes),
        "total_frames": index,
        "total_tasks": len(tasks),
        "total_videos": 2 * len(episodes),
        "total_chunks": 1 + (len(episodes) - 1) // chunks_size,
        "chunks_size": chunks_size,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": (
            "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        ),
        "features": _features(episodes, fps, "video", "libsvtav1"),
    }
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    return written
