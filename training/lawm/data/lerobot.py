"""LeRobotDataset v3.0 and v2.1 (the Hugging Face ``lerobot`` format), read with pyarrow + PyAV.

A dataset root holds ``meta/info.json`` (``codebase_version``, ``fps``, ``features``,
``data_path`` and ``video_path`` templates). Layouts:

- **v3.0**: one row per episode in ``meta/episodes/chunk-XXX/file-XXX.parquet`` (``tasks``,
  ``length``, which data file holds it, ``dataset_from_index``/``dataset_to_index`` in the
  global frame index, and per camera the video file and the episode's ``from_timestamp`` in
  it); many episodes per data parquet and per mp4; tasks in ``meta/tasks.parquet``.
- **v2.1** (and v2.0): one parquet and one mp4 per camera per episode (``episode_chunk`` =
  episode index // ``chunks_size``); ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``.

Camera frames come from ``video`` features (decoded by timestamp: the frame of data row r in
the episode's video file is the one at ``from_timestamp + timestamp[r]``; a frame further
than ``tolerance_s`` from it is an error naming the episode and time, never a neighbour) or
``image`` features (PNG/JPEG bytes in the parquet). Vector columns may be fixed-size or
variable lists (datasets converted from v2.1 have the latter).

Which features are our cameras, robot state and actions is an explicit key map
(:class:`LerobotOptions`); the defaults recognise the LIBERO copies on the Hub
(``observation.images.image`` -> agentview, ``observation.images.wrist_image`` or ``image2``
-> eye_in_hand, ``observation.state``: 8 values, eef position, axis-angle, two gripper
fingers; ``action``: 7). The instruction is the episode's first task.

Sources keep paths and integers; data files, parquet readers and video containers are opened
per process, on demand, and kept in small LRU caches.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lawm.data.base import DataError, EpisodeSource, HandleCache, natural_key, skip_or_raise
from lawm.data.hdf5 import IMAGE_CONVENTIONS
from lawm_core import contract

VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_TOLERANCE_S = 1e-4  # lerobot's own default for frame timestamps

# Feature keys recognised without a key map, in order of preference.
CAMERA_KEYS: dict[str, tuple[str, ...]] = {
    contract.AGENTVIEW: (
        "observation.images.image",
        "observation.images.agentview",
        "observation.images.agentview_rgb",
        "observation.images.front",
        "image",
    ),
    contract.EYE_IN_HAND: (
        "observation.images.wrist_image",
        "observation.images.image2",
        "observation.images.eye_in_hand",
        "observation.images.eye_in_hand_rgb",
        "observation.images.wrist",
        "wrist_image",
    ),
}
STATE_KEYS = ("observation.state", "state")
ACTION_KEYS = ("action", "actions")
SKIP = "-"  # a state dimension that is not proprio, in a state layout
# LIBERO's 8-D state on the Hub: eef position, eef axis-angle, the two gripper fingers.
LIBERO_STATE_LAYOUT: tuple[str, ...] = (
    *contract.PROPRIO_EE_NAMES,
    SKIP,
    SKIP,
    SKIP,
    *contract.PROPRIO_GRIPPER_NAMES,
)
_RESERVED = ("timestamp", "frame_index", "episode_index", "index", "task_index")


@dataclass(frozen=True)
class LerobotOptions:
    """How a LeRobotDataset's features become our episodes.

    cameras: camera (one of ``contract.CAMERAS``) -> feature key (``video`` or ``image``);
        None: the keys of ``CAMERA_KEYS`` the dataset has.
    state_key: the robot-state feature; None: ``observation.state`` or ``state`` if present.
    state_layout: one proprio name (``lawm_core.contract``) or ``"-"`` (not used) per value
        of the state; None: the feature's ``names`` when they are such names (our writer
        records them), else the default layout for a 5-value state, LIBERO's (eef position,
        axis-angle, two fingers) for an 8-value one, otherwise no proprio (with a warning).
    action_key: the 7-value action feature; None: ``action`` or ``actions``.
    tolerance_s: how far a decoded video frame may lie from the time the data row asks for.
    image_convention: "opencv" (upright, the default) or "opengl" (stored upside down).
    """

    cameras: Mapping[str, str] | None = None
    state_key: str | None = None
    state_layout: Sequence[str] | None = None
    action_key: str | None = None
    tolerance_s: float = DEFAULT_TOLERANCE_S
    image_convention: str | None = None

    def __post_init__(self) -> None:
        if self.cameras is not None:
            unknown = [c for c in self.cameras if c not in contract.CAMERAS]
            if unknown or not self.cameras:
                raise DataError(
                    f"LeRobot camera map {dict(self.cameras)}: cameras must be among "
                    f"{list(contract.CAMERAS)}, e.g. agentview=observation.images.image"
                )
            object.__setattr__(self, "cameras", dict(self.cameras))
        if self.state_layout is not None:
            layout = tuple(str(n).strip() for n in self.state_layout)
            for name in layout:
                if name != SKIP and (why := contract.proprio_name_problem(name)):
                    raise DataError(f"LeRobot state layout: {why}, or {SKIP!r} to skip a value")
            used = [n for n in layout if n != SKIP]
            if len(set(used)) != len(used) or not used:
                raise DataError(
                    f"LeRobot state layout {list(layout)}: name each proprio value once "
                    f"(and at least one; {SKIP!r} skips a value)"
                )
            object.__setattr__(self, "state_layout", layout)
        if not (isinstance(self.tolerance_s, int | float) and 0 < self.tolerance_s < 1):
            raise DataError(f"video tolerance {self.tolerance_s!r} s: expected 0 < t < 1")
        if self.image_convention not in (None, *IMAGE_CONVENTIONS):
            raise DataError(
                f"image convention {self.image_convention!r}: expected one of "
                f"{', '.join(IMAGE_CONVENTIONS)}"
            )


def is_lerobot(path: Path) -> bool:
    return path.is_dir() and (path / "meta" / "info.json").is_file()


# -- per-process caches ---------------------------------------------------------------------
def _pq():
    import pyarrow.parquet as pq

    return pq


def _open_parquet(path: str):
    try:
        return _pq().ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for corrupt files
        raise DataError(
            f"{path}: cannot read parquet file (corrupt or truncated?): {err}"
        ) from err


def _open_video(path: str):
    import av

    try:
        return av.open(path)
    except Exception as err:
        raise DataError(f"{path}: cannot open video (missing or corrupt?): {err}") from err


_PARQUET = HandleCache(_open_parquet, lambda f: f.close(), capacity=16)
_VIDEOS = HandleCache(_open_video, lambda c: c.close(), capacity=16)


class _Columns:
    """Numeric columns of one data parquet file as numpy arrays (read once per process)."""

    def __init__(self, path: str, columns: tuple[str, ...]) -> None:
        pf = _PARQUET.get(path)
        try:
            table = pf.read(columns=list(columns))
        except Exception as err:
            _PARQUET.drop(path)
            raise DataError(f"{path}: cannot read columns {list(columns)}: {err}") from err
        self.arrays = {c: _to_numpy(table.column(c), path, c) for c in columns}


_COLUMNS: HandleCache = HandleCache(lambda key: _Columns(*json.loads(key)), lambda c: None, 8)


def _to_numpy(column, path: str, name: str) -> np.ndarray:
    """A parquet column as numpy: scalars (n,), fixed or variable lists of equal length (n, d)."""
    import pyarrow as pa

    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        n = len(col)
        if col.null_count:
            raise DataError(f"{path}: column {name!r} has {col.null_count} empty rows")
        values = np.asarray(col.flatten().to_numpy(zero_copy_only=False))
        if n and len(values) % n:
            raise DataError(f"{path}: column {name!r} holds lists of different lengths")
        return values.reshape(n, len(values) // n if n else 0)
    if col.null_count:
        raise DataError(f"{path}: column {name!r} has {col.null_count} empty rows")
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _columns(path: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    return _COLUMNS.get(json.dumps([path, list(columns)])).arrays


# -- the dataset's metadata -----------------------------------------------------------------
@dataclass(frozen=True)
class _Meta:
    root: Path
    version: str
    fps: float
    features: dict[str, dict]
    data_path: str
    video_path: str | None
    chunks_size: int


def _read_info(root: Path) -> _Meta:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DataError(f"{root}: no meta/info.json (not a LeRobotDataset root?)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise DataError(
            f"{path}: codebase_version {version!r} is not supported; this reader knows "
            f"{', '.join(VERSIONS)}"
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DataError(f"{path}: missing key {key!r}")
    fps = info["fps"]
    if not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise DataError(f"{path}: fps {fps!r} is not a positive number")
    features = info["features"]
    if not isinstance(features, dict) or not all(
        isinstance(v, dict) and "dtype" in v for v in features.values()
    ):
        raise DataError(f"{path}: 'features' must map each key to a spec with a 'dtype'")
    return _Meta(
        root,
        version,
        float(fps),
        features,
        str(info["data_path"]),
        info.get("video_path"),
        int(info.get("chunks_size") or 1000),
    )


def _format_path(meta: _Meta, template: str, **values: Any) -> str:
    try:
        return str(meta.root / template.format(**values))
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(
            f"{meta.root}/meta/info.json: path template {template!r} needs {err} "
            f"(codebase_version {meta.version})"
        ) from err


@dataclass(frozen=True)
class _Episode:
    index: int
    length: int
    instruction: str
    data_file: str
    row: int  # the episode's first row in data_file
    videos: dict[str, tuple[str, float]]  # feature key -> (file, from_timestamp)


def _episodes_v3(meta: _Meta, video_keys: list[str]) -> list[_Episode]:
    files = sorted(
        (meta.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"),
        key=lambda p: natural_key(str(p)),
    )
    if not files:
        raise DataError(f"{meta.root}: no meta/episodes/chunk-*/file-*.parquet")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index",
            "dataset_from_index", "dataset_to_index"]  # fmt: skip
    for key in video_keys:
        need += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    rows: list[dict[str, Any]] = []
    for f in files:
        pf = _open_parquet(str(f))
        names = set(pf.schema_arrow.names)
        missing = [c for c in need if c not in names]
        if missing:
            raise DataError(f"{f}: missing columns {missing}")
        cols = need + (["tasks"] if "tasks" in names else [])
        try:
            rows += pf.read(columns=cols).to_pylist()
        except Exception as err:
            raise DataError(f"{f}: cannot read episodes (corrupt?): {err}") from err
        finally:
            pf.close()
    tasks = None
    if any(not r.get("tasks") for r in rows):
        tasks = _tasks_v3(meta)
    # A data file's first row holds the lowest global index of the episodes in it.
    first: dict[str, int] = {}
    out = []
    for r in rows:
        data = _format_path(meta, meta.data_path, chunk_index=r["data/chunk_index"],
                            file_index=r["data/file_index"])  # fmt: skip
        first[data] = min(first.get(data, r["dataset_from_index"]), r["dataset_from_index"])
    for r in sorted(rows, key=lambda r: r["episode_index"]):
        data = _format_path(meta, meta.data_path, chunk_index=r["data/chunk_index"],
                            file_index=r["data/file_index"])  # fmt: skip
        if r["dataset_to_index"] - r["dataset_from_index"] != r["length"]:
            raise DataError(
                f"{meta.root}: episode {r['episode_index']} has length {r['length']} but "
                f"rows [{r['dataset_from_index']}, {r['dataset_to_index']})"
            )
        videos = {
            key: (
                _format_path(
                    meta,
                    meta.video_path or "",
                    video_key=key,
                    chunk_index=r[f"videos/{key}/chunk_index"],
                    file_index=r[f"videos/{key}/file_index"],
                ),
                float(r[f"videos/{key}/from_timestamp"]),
            )  # fmt: skip
            for key in video_keys
        }
        task_list = r.get("tasks") or []
        if task_list:
            instruction = task_list[0]
        else:  # the task of the episode's first frame
            row = int(r["dataset_from_index"]) - first[data]
            task_index = _columns(data, ["task_index"])["task_index"]
            if not 0 <= row < len(task_index) or int(task_index[row]) not in (tasks or {}):
                raise DataError(f"{data}: no task for episode {r['episode_index']}")
            instruction = tasks[int(task_index[row])]
        out.append(
            _Episode(
                int(r["episode_index"]),
                int(r["length"]),
                str(instruction),
                data,
                int(r["dataset_from_index"]) - first[data],
                videos,
            )  # fmt: skip
        )
    return out


def _tasks_v3(meta: _Meta) -> dict[int, str]:
    """task_index -> task of meta/tasks.parquet (the task is the pandas index: a column
    named ``task``, or ``__index_level_0__`` in files written before lerobot named it)."""
    path = meta.root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise DataError(f"{meta.root}: episodes without tasks and no meta/tasks.parquet")
    try:
        table = _pq().read_table(path).to_pydict()
    except Exception as err:
        raise DataError(f"{path}: cannot read parquet file (corrupt?): {err}") from err
    text = next((table[k] for k in ("task", "__index_level_0__") if k in table), None)
    if text is None or "task_index" not in table:
        raise DataError(f"{path}: expected columns task_index and task, got {list(table)}")
    return dict(zip(table["task_index"], text, strict=True))


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path.parent.parent}: no meta/{path.name}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as err:
                raise DataError(f"{path}:{i}: not valid JSON: {err}") from err
    return out


def _episodes_v2(meta: _Meta, video_keys: list[str]) -> list[_Episode]:
    out = []
    for r in sorted(_jsonl(meta.root / "meta" / "episodes.jsonl"),
                    key=lambda r: r.get("episode_index", -1)):  # fmt: skip
        try:
            idx, length = int(r["episode_index"]), int(r["length"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{meta.root}/meta/episodes.jsonl: bad line {r}: {err}") from err
        chunk = idx // meta.chunks_size
        data = _format_path(meta, meta.data_path, episode_chunk=chunk, episode_index=idx)
        videos = {
            key: (
                _format_path(
                    meta,
                    meta.video_path or "",
                    episode_chunk=chunk,
                    video_key=key,
                    episode_index=idx,
                ),
                0.0,
            )  # fmt: skip
            for key in video_keys
        }
        tasks = r.get("tasks") or [""]
        out.append(_Episode(idx, length, str(tasks[0]), data, 0, videos))
    return out


# -- the key map ----------------------------------------------------------------------------
def _keys_text(meta: _Meta) -> str:
    return ", ".join(f"{k} ({v['dtype']})" for k, v in meta.features.items() if k not in _RESERVED)


def _resolve(meta: _Meta, options: LerobotOptions, labelled: bool):
    feats = meta.features
    visual = {k for k, v in feats.items() if v["dtype"] in ("video", "image")}
    if options.cameras is not None:
        cameras = dict(options.cameras)
        for cam, key in cameras.items():
            if key not in feats:
                raise DataError(
                    f"{meta.root}: camera {cam} -> {key!r}: the dataset has no such feature; "
                    f"its features: {_keys_text(meta)}"
                )
            if key not in visual:
                raise DataError(f"{meta.root}: feature {key!r} is {feats[key]['dtype']}, not "
                                "a video or image")  # fmt: skip
    else:
        cameras = {}
        for cam, candidates in CAMERA_KEYS.items():
            key = next((k for k in candidates if k in visual), None)
            if key is not None:
                cameras[cam] = key
        if not cameras and len(visual) == 1:
            cameras[contract.AGENTVIEW] = next(iter(visual))
        if not cameras:
            raise DataError(
                f"{meta.root}: which features are the cameras? none of the usual names; map "
                f"them with --lerobot-camera agentview=KEY (its features: {_keys_text(meta)})"
            )
    if any(feats[k]["dtype"] == "video" for k in cameras.values()) and not meta.video_path:
        raise DataError(f"{meta.root}/meta/info.json: video features but no video_path")
    cameras = {c: cameras[c] for c in contract.CAMERAS if c in cameras}

    def pick(given: str | None, candidates: tuple[str, ...], what: str, flag: str):
        if given is not None:
            if given not in feats:
                raise DataError(
                    f"{meta.root}: {what} feature {given!r} ({flag}) is not in the dataset; its "
                    f"features: {_keys_text(meta)}"
                )
            return given
        return next((k for k in candidates if k in feats), None)

    action = pick(options.action_key, ACTION_KEYS, "action", "--lerobot-action-key")
    if labelled and action is None:
        raise DataError(
            f"{meta.root}: no action feature ('action' or 'actions'); name it with "
            f"--lerobot-action-key (its features: {_keys_text(meta)})"
        )
    if labelled and _width(feats[action]) != contract.ACTION_DIM:
        raise DataError(
            f"{meta.root}: action feature {action!r} has shape {feats[action].get('shape')}; "
            f"the policy's action is {contract.ACTION_DIM} values (dx, dy, dz, droll, "
            "dpitch, dyaw, gripper)"
        )
    state = pick(options.state_key, STATE_KEYS, "state", "--lerobot-state-key")
    layout: tuple[str, ...] | None = None
    if state is not None:
        width = _width(feats[state])
        if options.state_layout is not None:
            layout = tuple(options.state_layout)
            if len(layout) != width:
                raise DataError(
                    f"{meta.root}: --lerobot-state-layout names {len(layout)} values, the state "
                    f"{state!r} has {width}"
                )
        elif (named := _named_layout(feats[state], width)) is not None:
            layout = named
        elif width == len(contract.PROPRIO_LAYOUT):
            layout = contract.PROPRIO_LAYOUT
        elif width == len(LIBERO_STATE_LAYOUT):
            layout = LIBERO_STATE_LAYOUT
            warnings.warn(
                f"{meta.root}: state {state!r} has 8 values, read as LIBERO's (eef position, "
                "axis-angle, two gripper fingers: proprio = values 0-2 and 6-7); if that is "
                "wrong, pass --lerobot-state-layout",
                stacklevel=3,
            )
        else:
            warnings.warn(
                f"{meta.root}: state {state!r} has {width} values in no layout known here; "
                "episodes get no proprio (name each value with --lerobot-state-layout, e.g. "
                "ee_x,ee_y,ee_z,-,-,-,gripper_left,gripper_right)",
                stacklevel=3,
            )
    return cameras, action, state, layout


def _named_layout(spec: dict, width: int | None) -> tuple[str, ...] | None:
    """The state's ``names`` when each is a proprio name or "-" (as our writer records them)."""
    names = spec.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if not isinstance(names, list) or len(names) != width:
        return None
    if all(n == SKIP or contract.proprio_name_problem(n) is None for n in names):
        used = [n for n in names if n != SKIP]
        if used and len(set(used)) == len(used):
            return tuple(names)
    return None


def _width(spec: dict) -> int | None:
    shape = spec.get("shape")
    if isinstance(shape, list | tuple) and len(shape) == 1 and isinstance(shape[0], int):
        return int(shape[0])
    return None


# -- episodes -------------------------------------------------------------------------------
class LerobotEpisode(EpisodeSource):
    """One episode of a LeRobotDataset."""

    def __init__(
        self,
        meta: _Meta,
        ep: _Episode,
        cameras: dict[str, str],
        action: str | None,
        state: str | None,
        layout: tuple[str, ...] | None,
        options: LerobotOptions,
        labelled: bool,
    ) -> None:
        self.name = f"{meta.root}:episode_{ep.index}"
        self.length = ep.length
        self.instruction = " ".join(ep.instruction.split())
        self.cameras = tuple(cameras)
        self.has_actions = labelled and action is not None
        self.has_proprio = layout is not None
        self.success = None
        self.control_rate_hz = meta.fps
        if layout is not None:
            self.proprio_layout = tuple(n for n in layout if n != SKIP)
        self._keep = np.array([i for i, n in enumerate(layout) if n != SKIP]) if layout else None
        self._episode_index = ep.index
        self._file = ep.data_file
        self._row = ep.row
        self._camera_keys = dict(cameras)
        self._kinds = {c: meta.features[k]["dtype"] for c, k in cameras.items()}
        self._videos = {c: ep.videos[k] for c, k in cameras.items() if k in ep.videos}
        self._action = action if self.has_actions else None
        self._state = state if self.has_proprio else None
        self._tol = float(options.tolerance_s)
        self._flip = options.image_convention == "opengl"

    def _numeric(self) -> dict[str, np.ndarray]:
        cols = ["episode_index", "timestamp"]
        cols += [c for c in (self._action, self._state) if c is not None]
        return _columns(self._file, cols)

    def _rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        arrays = self._numeric()
        a, b = self._row + start, self._row + stop
        ep = arrays["episode_index"]
        if b > len(ep) or np.any(ep[a:b] != self._episode_index):
            raise DataError(
                f"{self._file}: rows {a}-{b - 1} do not belong to episode {self._episode_index} "
                "as meta/episodes says (the dataset's metadata and data disagree)"
            )
        return {k: v[a:b] for k, v in arrays.items()}

    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        rows = self._rows(start, stop)
        out: dict[str, Any] = {"images": {}, "actions": None, "proprio": None}
        for cam in cameras:
            if self._kinds[cam] == "video":
                path, offset = self._videos[cam]
                frames = self._decode(path, offset + rows["timestamp"].astype(np.float64), cam)
            else:
                frames = self._images(start, stop, self._camera_keys[cam])
            out["images"][cam] = np.ascontiguousarray(frames[:, ::-1]) if self._flip else frames
        if actions and self._action is not None:
            out["actions"] = self._finite(rows[self._action], "action", start).astype(np.float32)
        if proprio and self._state is not None:
            state = self._finite(rows[self._state], "state", start)
            out["proprio"] = state[:, self._keep].astype(np.float32)
        return out

    def _finite(self, values: np.ndarray, what: str, start: int) -> np.ndarray:
        bad = ~np.isfinite(values.astype(np.float64)).all(axis=-1)
        if bad.any():
            raise DataError(
                f"{self.name}: non-finite {what} at frame {start + int(np.argmax(bad))}"
            )
        return values

    def _decode(self, path: str, times: np.ndarray, cam: str) -> np.ndarray:
        """The frames of ``path`` at ``times`` (seconds, ascending), each within tolerance."""
        import av

        container = _VIDEOS.get(path)
        try:
            stream = container.streams.video[0]
            base = stream.time_base or Fraction(1, 1)
            # Seek lands on the keyframe at or before the first wanted time.
            target = max(0.0, float(times[0]) - self._tol)
            container.seek(int(target / base), stream=stream, backward=True, any_frame=False)
            frames: list[np.ndarray] = []
            want = 0
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * base)
                if want < len(times) and t > times[want] + self._tol:
                    raise self._missing(path, cam, times[want], t)
                if want < len(times) and abs(t - times[want]) <= self._tol:
                    rgb = frame.to_ndarray(format="rgb24")
                    frames.append(rgb)
                    want += 1
                    # The same frame cannot serve two rows; two rows at one time would.
                    while want < len(times) and abs(t - times[want]) <= self._tol:
                        frames.append(rgb)
                        want += 1
                if want == len(times):
                    break
        except DataError:
            raise
        except (av.FFmpegError, OSError, ValueError) as err:
            _VIDEOS.drop(path)
            raise DataError(f"{path}: cannot decode video ({cam}, {self.name}): {err}") from err
        if want < len(times):
            _VIDEOS.drop(path)
            raise DataError(
                f"{path}: the video ends before {times[want]:.4f} s, the time of a frame of "
                f"{self.name} (camera {cam}); the video is shorter than its episodes' timestamps"
            )
        return np.stack(frames)

    def _missing(self, path: str, cam: str, want: float, got: float) -> DataError:
        _VIDEOS.drop(path)
        return DataError(
            f"{path}: no frame within {self._tol:g} s of {want:.4f} s ({self.name}, camera "
            f"{cam}; the nearest decoded frame after it is at {got:.4f} s); a looser "
            "--video-tolerance accepts it"
        )

    def _images(self, start: int, stop: int, key: str) -> np.ndarray:
        pf = _PARQUET.get(self._file)
        a, b = self._row + start, self._row + stop
        meta = pf.metadata
        groups, first, pos = [], None, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if pos + n > a and pos < b:
                groups.append(g)
                first = pos if first is None else first
            pos += n
        try:
            column = pf.read_row_groups(groups, columns=[key]).column(key)
        except Exception as err:
            _PARQUET.drop(self._file)
            raise DataError(f"{self._file}: cannot read images {key!r}: {err}") from err
        cells = column.slice(a - first, b - a).to_pylist()
        frames = []
        for i, cell in enumerate(cells):
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if not data:
                raise DataError(
                    f"{self._file}: image {key!r} of {self.name} frame {start + i} has no "
                    "embedded bytes"
                )
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(
                    f"{self._file}: image {key!r} of {self.name} frame {start + i} cannot be "
                    "decoded (corrupt PNG/JPEG bytes)"
                )
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len({f.shape for f in frames}) > 1:
            raise DataError(f"{self.name}: images {key!r} differ in size")
        return np.stack(frames)


def open_lerobot(
    root: str | Path, labelled: bool = True, options: LerobotOptions | None = None
) -> list[LerobotEpisode]:
    """Every episode of the LeRobotDataset at ``root`` (the folder holding ``meta/``)."""
    root = Path(root)
    options = options or LerobotOptions()
    meta = _read_info(root)
    cameras, action, state, layout = _resolve(meta, options, labelled)
    video_keys = [k for k in cameras.values() if meta.features[k]["dtype"] == "video"]
    if meta.version == "v3.0":
        episodes = _episodes_v3(meta, video_keys)
    else:
        episodes = _episodes_v2(meta, video_keys)
    if not episodes:
        raise DataError(f"{root}: the dataset lists no episodes")
    usable = []
    for ep in episodes:
        if ep.length < 1:
            raise DataError(f"{root}: episode {ep.index} has length {ep.length}")
        if not Path(ep.data_file).is_file():
            skip_or_raise(DataError(f"{ep.data_file}: missing"), f"{root} episode {ep.index}")
            continue
        gone = [(k, p) for k, (p, _) in ep.videos.items() if not Path(p).is_file()]
        if gone:
            key, path = gone[0]
            skip_or_raise(DataError(f"{path}: missing (video {key} of episode {ep.index})"), path)
            continue
        usable.append(ep)
    # The data files' schemas name the features the key map uses.
    wanted = [k for k in (action if labelled else None, state) if k is not None]
    wanted += [k for k in cameras.values() if meta.features[k]["dtype"] == "image"]
    unreadable = set()
    for data in sorted({ep.data_file for ep in usable}):
        try:
            pf = _open_parquet(data)
        except DataError as err:  # with --skip-bad: its episodes are left out
            skip_or_raise(err, data)
            unreadable.add(data)
            continue
        names = set(pf.schema_arrow.names)
        pf.close()
        missing = [k for k in [*wanted, "timestamp", "episode_index"] if k not in names]
        if missing:
            raise DataError(f"{data}: columns {missing} missing (info.json lists them)")
    usable = [ep for ep in usable if ep.data_file not in unreadable]
    if not usable:
        raise DataError(f"{root}: no episode can be read")
    return [
        LerobotEpisode(meta, ep, cameras, action, state, layout, options, labelled)
        for ep in usable
    ]
