"""Episodes into a LeRobotDataset v3.0 folder, the layout lerobot and the Hub use.

- ``data/chunk-XXX/file-XXX.parquet``: many episodes per file (one row group each, in episode
  order), a new file past ``data_file_mb``, a new chunk folder every ``chunks_size`` files;
  columns ``observation.state`` and ``action`` (fixed-size float32 lists), ``timestamp``
  (frame_index / fps), ``frame_index``, ``episode_index``, ``index`` (global), ``task_index``.
- ``videos/<key>/chunk-XXX/file-XXX.mp4`` per camera: the episodes back to back (time base
  1/fps, pts continuing), AV1 by default as lerobot encodes (SVT-AV1, yuv420p, GOP 2, CRF 30),
  a new file past ``video_file_mb``; each episode's ``from_timestamp`` is where it starts.
- ``meta/info.json``, ``meta/stats.json`` (min, max, mean, std, count per feature; cameras
  per channel in [0, 1], shape (3, 1, 1)), ``meta/tasks.parquet`` (the task text as the
  pandas index named ``task``, column ``task_index``), ``meta/episodes/chunk-000/file-000
  .parquet`` (one row per episode: tasks, length, data and video locations, per-episode stats).

Camera feature names are those of the LIBERO copies on the Hub
(``observation.images.image``, ``observation.images.wrist_image``); the state's ``names`` are
the proprio layout (``lawm_core.contract`` names), so a reader knows what each value is.

The folder is built beside its destination and renamed into place by ``commit``; ``abort``
(or a crash) leaves the old folder or none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import contract
from lawm_core.files import atomic_dir

CODEBASE_VERSION = "v3.0"
CAMERA_FEATURES = {
    contract.AGENTVIEW: "observation.images.image",
    contract.EYE_IN_HAND: "observation.images.wrist_image",
}
STATE_FEATURE = "observation.state"
ACTION_FEATURE = "action"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CODECS = {"av1": "libsvtav1", "h264": "libx264"}


class LerobotWriteError(ValueError):
    """The episodes cannot be written as given; the message says why."""


def _threads() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:  # no procfs: the calling thread alone is put back
        return set()


@contextlib.contextmanager
def _scheduling_kept():
    """Keep the process's scheduling as it was across an encoder call. SVT-AV1 moves the
    thread that opens an encoder (PyAV opens it at the first frame), and the worker threads it
    starts, to SCHED_FIFO priority 99 when it is allowed to (as root, e.g. in a container):
    left so, the writing process, and every process it starts later (a simulator, a ROS node),
    would run real-time and could starve the machine. On the way out the calling thread gets
    back its policy and priority, and the threads the call started get the same."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, priority = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    before = _threads()
    try:
        yield
    finally:
        kept = (policy, priority)
        for tid in [0, *(_threads() - before if before else ())]:
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                if (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority) != kept:
                    os.sched_setscheduler(tid, policy, os.sched_param(priority))


class _Video:
    """One camera's current mp4: episodes appended back to back."""

    def __init__(self, path: Path, fps: int, codec: str, size: tuple[int, int]) -> None:
        import av

        # SVT-AV1 prints a banner per encoder on stderr unless told to log errors only.
        os.environ.setdefault("SVT_LOG", "1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), "w")
        options = {"g": "2", "crf": "30", "preset": "12"} if codec == "av1" else {"g": "2"}
        self.stream = self.container.add_stream(CODECS[codec], rate=fps, options=options)
        self.stream.height, self.stream.width = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1, fps)
        self.frames = 0
        self.fps = fps
        self.bytes = 0  # encoded so far (the muxer's file lags behind the encoder)

    def add(self, frames: np.ndarray) -> tuple[float, float]:
        import av

        start = self.frames / self.fps
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            with _scheduling_kept():
                packets = self.stream.encode(frame)
            for packet in packets:
                self.bytes += packet.size
                self.container.mux(packet)
        return start, self.frames / self.fps

    def size_mb(self) -> float:
        return self.bytes / 1e6

    def close(self) -> None:
        with _scheduling_kept():
            packets = self.stream.encode()
        for packet in packets:
            self.container.mux(packet)
        self.container.close()

    def abandon(self) -> None:
        """Stop after a failure (a full disk): the encoder is drained (told the stream ended,
        its packets dropped) so the native encoder shuts down cleanly, and the file closed."""
        with contextlib.suppress(Exception):
            for _ in self.stream.encode():
                pass
        with contextlib.suppress(Exception):
            self.container.close()


class _Stats:
    """Running min / max / sum / sum of squares of one feature (per value or per channel)."""

    def __init__(self) -> None:
        self.n = 0
        self.lo = self.hi = self.s = self.ss = None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        lo, hi, s, ss = x.min(0), x.max(0), x.sum(0), (x * x).sum(0)
        if self.n == 0:
            self.lo, self.hi, self.s, self.ss = lo, hi, s, ss
        else:
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
            self.s, self.ss = self.s + s, self.ss + ss
        self.n += len(x)

    def merge(self, other: _Stats) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.lo, self.hi, self.s, self.ss = (
                other.n, other.lo, other.hi, other.s, other.ss
            )  # fmt: skip
            return
        self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)
        self.s, self.ss, self.n = self.s + other.s, self.ss + other.ss, self.n + other.n

    def to_json(self, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))

        def out(v: np.ndarray) -> list:
            return np.asarray(v).reshape(shape).tolist() if shape else np.asarray(v).tolist()

        return {"min": out(self.lo), "max": out(self.hi), "mean": out(mean), "std": out(std),
                "count": [int(self.n)]}  # fmt: skip


def _stats_of(values: np.ndarray) -> _Stats:
    st = _Stats()
    st.add(values)
    return st


class LerobotWriter:
    """Streams episodes into a LeRobotDataset v3.0 at a temporary folder; ``commit`` renames
    it to ``root``.

    fps: the episodes' step rate (an integer, as lerobot stores it). cameras: which of
    ``contract.CAMERAS`` every episode has. proprio_layout: the names of the state values
    (None: no state). actions: whether episodes carry actions (unlabelled video: False).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        cameras: Sequence[str],
        proprio_layout: Sequence[str] | None = contract.PROPRIO_LAYOUT,
        actions: bool = True,
        robot_type: str | None = None,
        codec: str = "av1",
        data_file_mb: float = 100.0,
        video_file_mb: float = 200.0,
        chunks_size: int = 1000,
    ) -> None:
        if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
            raise LerobotWriteError(f"fps {fps!r} must be a positive number")
        if abs(fps - round(fps)) > 1e-9:
            raise LerobotWriteError(
                f"fps {fps} is not a whole number; LeRobotDataset stores an integer rate "
                "(resample the episodes first, e.g. --control-rate-hz)"
            )
        unknown = [c for c in cameras if c not in CAMERA_FEATURES]
        if unknown or not cameras:
            raise LerobotWriteError(
                f"cameras {list(cameras)}: expected some of {list(contract.CAMERAS)}"
            )
        if codec not in CODECS:
            raise LerobotWriteError(f"codec {codec!r}: expected one of {list(CODECS)}")
        self.root = Path(root)
        self.fps = int(round(fps))
        self.cameras = tuple(c for c in contract.CAMERAS if c in cameras)
        self.layout = tuple(proprio_layout) if proprio_layout else None
        self.actions = bool(actions)
        self.robot_type = robot_type
        self.codec = codec
        self.data_file_mb = data_file_mb
        self.video_file_mb = video_file_mb
        self.chunks_size = int(chunks_size)
        self._stack = contextlib.ExitStack()
        self.tmp = self._stack.enter_context(atomic_dir(self.root))
        self.tmp.mkdir(parents=True)
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._frames = 0
        self._data_file = 0
        self._data_writer = None
        self._data_bytes = 0.0
        self._video_file = dict.fromkeys(self.cameras, 0)
        self._videos: dict[str, _Video] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._stats: dict[str, _Stats] = {}
        self._closed = False

    # -- layout ---
    def _loc(self, index: int) -> tuple[int, int]:
        return divmod(index, self.chunks_size)

    def _data_path(self, index: int) -> Path:
        chunk, file = self._loc(index)
        return self.tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)

    def _video_path(self, cam: str, index: int) -> Path:
        chunk, file = self._loc(index)
        return self.tmp / VIDEO_PATH.format(
            video_key=CAMERA_FEATURES[cam], chunk_index=chunk, file_index=file
        )

    def _schema(self):
        import pyarrow as pa

        fields = []
        if self.layout:
            fields.append((STATE_FEATURE, pa.list_(pa.float32(), len(self.layout))))
        if self.actions:
            fields.append((ACTION_FEATURE, pa.list_(pa.float32(), contract.ACTION_DIM)))
        fields += [("timestamp", pa.float32()), ("frame_index", pa.int64()),
                   ("episode_index", pa.int64()), ("index", pa.int64()),
                   ("task_index", pa.int64())]  # fmt: skip
        return pa.schema(fields)

    # -- writing ---
    def add(
        self,
        images: Mapping[str, np.ndarray],
        instruction: str,
        actions: np.ndarray | None = None,
        proprio: np.ndarray | None = None,
    ) -> int:
        """Append one episode; returns its index. images: camera -> uint8 (T, H, W, 3)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._closed:
            raise LerobotWriteError("the writer is committed or aborted")
        index = len(self._episodes)
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise LerobotWriteError(f"episode {index}: cameras {missing} missing")
        lengths = {len(images[c]) for c in self.cameras}
        if len(lengths) != 1 or 0 in lengths:
            raise LerobotWriteError(f"episode {index}: cameras of different or zero length")
        n = lengths.pop()
        for c in self.cameras:
            img = images[c]
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[3] != 3:
                raise LerobotWriteError(f"episode {index}: {c} frames must be uint8 (T, H, W, 3)")
            size = self._sizes.setdefault(c, img.shape[1:3])
            if img.shape[1:3] != size:
                raise LerobotWriteError(
                    f"episode {index}: {c} frames are {img.shape[1:3]}, earlier ones {size}; "
                    "one camera has one size in a LeRobotDataset"
                )
        cols: dict[str, Any] = {}
        episode_stats: dict[str, _Stats] = {}  # this episode's, per numeric feature
        for name, values, dim, want in (
            (STATE_FEATURE, proprio, len(self.layout or ()), self.layout is not None),
            (ACTION_FEATURE, actions, contract.ACTION_DIM, self.actions),
        ):
            if not want:
                continue
            arr = np.asarray(values, np.float32) if values is not None else None
            if arr is None or arr.shape != (n, dim) or not np.isfinite(arr).all():
                raise LerobotWriteError(
                    f"episode {index}: {name} must be finite float32 ({n}, {dim}), got "
                    f"{None if arr is None else arr.shape}"
                )
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), dim)
            episode_stats[name] = _stats_of(arr)
            self._stats.setdefault(name, _Stats()).merge(episode_stats[name])
        task = " ".join(instruction.split())
        task_index = self._tasks.setdefault(task, len(self._tasks))
        frame = np.arange(n)
        cols["timestamp"] = pa.array((frame / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(frame, pa.int64())
        cols["episode_index"] = pa.array(np.full(n, index), pa.int64())
        cols["index"] = pa.array(self._frames + frame, pa.int64())
        cols["task_index"] = pa.array(np.full(n, task_index), pa.int64())
        table = pa.table(cols, schema=self._schema())
        if self._data_writer is None:
            path = self._data_path(self._data_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
        chunk, file = self._loc(self._data_file)
        row: dict[str, Any] = {
            "episode_index": index,
            "tasks": [task],
            "length": n,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": self._frames,
            "dataset_to_index": self._frames + n,
        }
        self._data_writer.write_table(table)
        self._data_bytes += table.nbytes / 1e6
        if self._data_bytes >= self.data_file_mb:
            self._data_writer.close()
            self._data_writer, self._data_bytes = None, 0.0
            self._data_file += 1
        for cam in self.cameras:
            video = self._videos.get(cam)
            if video is None:
                video = _Video(self._video_path(cam, self._video_file[cam]), self.fps,
                               self.codec, self._sizes[cam])  # fmt: skip
                self._videos[cam] = video
            start, stop = video.add(images[cam])
            chunk, file = self._loc(self._video_file[cam])
            key = CAMERA_FEATURES[cam]
            row |= {
                f"videos/{key}/chunk_index": chunk,
                f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start,
                f"videos/{key}/to_timestamp": stop,
            }
            st = _stats_of(images[cam].reshape(-1, 3) / 255.0)  # per channel, in [0, 1]
            self._stats.setdefault(key, _Stats()).merge(st)
            row |= _stats_columns(key, st, (3, 1, 1))
            if video.size_mb() >= self.video_file_mb:
                video.close()
                del self._videos[cam]
                self._video_file[cam] += 1
        for name, st in episode_stats.items():
            row |= _stats_columns(name, st, None)
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        self._episodes.append(row)
        self._frames += n
        return index

    def commit(self) -> Path:
        """Write the metadata and move the dataset into place."""
        if self._closed:
            raise LerobotWriteError("the writer is committed or aborted")
        if not self._episodes:
            self.abort()
            raise LerobotWriteError(f"{self.root}: no episodes to write")
        self._close_files()
        self._write_meta()
        self._closed = True
        self._stack.close()
        return self.root

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._data_writer is not None:
            with contextlib.suppress(Exception):
                self._data_writer.close()
            self._data_writer = None
        for video in self._videos.values():
            video.abandon()
        self._videos = {}
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for video in self._videos.values():
            video.close()
        self._videos = {}

    def _write_meta(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = self.tmp / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), str(self.tmp / EPISODES_PATH))
        tasks = sorted(self._tasks, key=self._tasks.get)
        table = pa.table(
            {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks)}
        )
        # As pandas writes a frame whose index is the task text (lerobot reads it so).
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],  # fmt: skip
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
        pq.write_table(table, str(meta / "tasks.parquet"))
        stats = {
            name: st.to_json((3, 1, 1) if name.startswith("observation.images.") else None)
            for name, st in self._stats.items()
        }
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._frames,
            "total_tasks": len(tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_file_mb,
            "video_files_size_in_mb": self.video_file_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": self._features(),
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))

    def _features(self) -> dict[str, Any]:
        feats: dict[str, Any] = {}
        for cam in self.cameras:
            h, w = self._sizes[cam]
            feats[CAMERA_FEATURES[cam]] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": self.codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "video.g": 2,
                    "video.crf": 30 if self.codec == "av1" else None,
                    "has_audio": False,
                },
            }
        if self.layout:
            feats[STATE_FEATURE] = {
                "dtype": "float32", "shape": [len(self.layout)], "names": list(self.layout)
            }  # fmt: skip
        if self.actions:
            feats[ACTION_FEATURE] = {
                "dtype": "float32",
                "shape": [contract.ACTION_DIM],
                "names": list(contract.ACTION_LAYOUT),
            }
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in ("frame_index", "episode_index", "index", "task_index"):
            feats[name] = {"dtype": "int64", "shape": [1], "names": None}
        return feats


def _stats_columns(name: str, st: _Stats, shape: tuple[int, ...] | None) -> dict[str, Any]:
    return {f"stats/{name}/{k}": v for k, v in st.to_json(shape).items()}
