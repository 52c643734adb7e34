#!/usr/bin/env python3
"""Data formats side by side, measured in one run (a benchmark, not a test):

    python bench/data_formats.py [--quick] [--episodes 8] [--length 120] [--size 128]

The same episodes (synthetic: two 128 px cameras, 7-D actions, 5-D proprio; or ``--data`` a
LIBERO-layout HDF5 file such as the demo's rendered LIBERO episodes) are kept as LIBERO-layout
HDF5 (gzip 4), written as rosbag2 (sqlite3, raw rgb8 images: what a robot records) and
converted to LeRobotDataset v3.0 (AV1) from both. Figures:

- ``*_mb``: size on disk of each;
- ``convert_bag_to_lerobot_frames_per_s``, ``convert_hdf5_to_lerobot_frames_per_s``: steps
  converted per second (``train.py convert``'s path: loader -> writer, AV1 encoding included);
- ``read_<format>_samples_per_s``: pretraining windows (chunk + 1 frames of both cameras,
  resized to the small preset's 64 px) per second from one process in random order, the way a
  DataLoader worker reads them, for HDF5 and LeRobot; and ``train_small_pretrain_samples_per_s``,
  the small preset's pretraining step rate on this machine (``bench/train_throughput.py``);
  the reader keeps training fed when its samples/s is above that (``reader_over_training``).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _read_rate(sources, n: int, seed: int = 0) -> float:
    from lawm.config import preset
    from lawm.data import WindowDataset

    pc = preset("small").policy
    ds = WindowDataset(sources, pc.cameras, pc.image_size, pc.chunk_size, mode="pretrain")
    order = np.random.default_rng(seed).integers(0, len(ds), n)
    ds[int(order[0])]  # open files, warm caches
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    return n / (time.perf_counter() - t0)


def run(
    episodes: int, length: int, size: int, samples: int, reps: int, data: Path | None = None
) -> dict:
    from train_throughput import measure

    from lawm.convert import convert
    from lawm.data import RosbagOptions, open_sources
    from lawm.data.synthetic import write_synthetic_hdf5

    tmp = Path(tempfile.mkdtemp(prefix="lawm_bench_data_"))
    try:
        if data is None:
            h5 = write_synthetic_hdf5(tmp / "d.hdf5", episodes=episodes, length=length,
                                      image_size=size)  # fmt: skip
        else:
            h5 = data
        src = open_sources(h5)
        frames = sum(s.length for s in src)
        convert(src, tmp / "bags", "rosbag", progress=False)
        bags = open_sources(tmp / "bags", "rosbag", options=RosbagOptions(control_rate_hz=20.0))
        t0 = time.perf_counter()
        convert(bags, tmp / "lr_from_bags", "lerobot", progress=False)
        bag_rate = frames / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        convert(src, tmp / "lr", "lerobot", progress=False)
        h5_rate = frames / (time.perf_counter() - t0)
        lr = open_sources(tmp / "lr")
        read_h5 = _read_rate(src, samples)
        read_lr = _read_rate(lr, samples)
        train = measure(["small"], reps, stages=(("pretrain", 8),))
        train_sps = train["train_small_pretrain_samples_per_s"]
        return {
            "data": str(data) if data else "synthetic",
            "episodes": len(src),
            "frames": frames,
            "image_size": int(src[0].read(0, 1)["images"][src[0].cameras[0]].shape[1]),
            "hdf5_mb": round(_size_mb(h5), 2),
            "rosbag_mb": round(_size_mb(tmp / "bags"), 2),
            "lerobot_mb": round(_size_mb(tmp / "lr"), 2),
            "convert_bag_to_lerobot_frames_per_s": round(bag_rate, 1),
            "convert_hdf5_to_lerobot_frames_per_s": round(h5_rate, 1),
            "read_hdf5_samples_per_s": round(read_h5, 1),
            "read_lerobot_samples_per_s": round(read_lr, 1),
            "train_small_pretrain_samples_per_s": round(train_sps, 1),
            "reader_over_training": round(read_lr / train_sps, 2),
            "lerobot_over_hdf5_read": round(read_lr / read_h5, 2),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 short episodes, fewer samples")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--length", type=int, default=120)
    p.add_argument("--size", type=int, default=128, help="camera image size (px)")
    p.add_argument("--samples", type=int, default=400, help="windows read per format")
    p.add_argument("--data", type=Path, help="a LIBERO-layout HDF5 file instead of synthetic")
    args = p.parse_args(argv)
    if args.quick:
        args.episodes, args.length, args.samples = 4, 60, 100
    result = run(args.episodes, args.length, args.size, args.samples, 2 if args.quick else 4,
                 args.data)  # fmt: skip
    for k, v in result.items():
        print(f"{k:40s} {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
