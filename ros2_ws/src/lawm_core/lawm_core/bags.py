"""rosbag2 files as the ROS 2 tools write them (sqlite3 or mcap), read without ROS.

Shared by the training loaders, replay evaluation and the simulation's recorder, so a message
type or topic accepted by one is accepted by all. Uses the pure-Python ``rosbags`` package.
"""

from __future__ import annotations

_TYPESTORE = None


def typestore():
    """The ROS 2 Jazzy type store (built once per process)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE
