"""Streaming data layer: episode sources for every supported format, training windows, stats.

Formats (registered in lawm.data.formats): LIBERO/robomimic HDF5, LeRobotDataset (v3.0, v2.1),
unlabeled video (plain folders, Something-Something v2), BridgeData v2 raw, rosbag2 (sqlite3 or
mcap); plus synthetic
data for tests and smoke runs.
Everything is read lazily per window; nothing loads a whole dataset into memory.
"""

from lawm.data.base import DataError, EpisodeSource
from lawm.data.dataset import CAMERA_MASK, FRAME_MASK, WindowDataset, collate, to_device
from lawm.data.formats import FORMATS, detect_format, open_sources
from lawm.data.hdf5 import Hdf5Options
from lawm.data.lerobot import LerobotOptions
from lawm.data.rosbag import RosbagOptions
from lawm.data.stats import compute_stats
from lawm.data.video import Ssv2Options

__all__ = [
    "CAMERA_MASK",
    "FORMATS",
    "FRAME_MASK",
    "DataError",
    "EpisodeSource",
    "Hdf5Options",
    "LerobotOptions",
    "RosbagOptions",
    "Ssv2Options",
    "WindowDataset",
    "collate",
    "to_device",
    "compute_stats",
    "detect_format",
    "open_sources",
]
