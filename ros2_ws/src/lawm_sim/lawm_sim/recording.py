"""Recording simulated (or synthetic) episodes into files other tools read.

``write_video``: uint8 RGB frames -> an mp4/webm/avi/mkv/mov clip (PyAV), written atomically;
the clips serve as unlabeled video for pretraining and as evaluation videos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lawm_core.files import atomic_path

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
