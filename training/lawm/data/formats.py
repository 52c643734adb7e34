"""The registry of data formats: how each is recognised from a path, opened and configured.

Every format is one :class:`Format` record. A format with settings has its own frozen options
dataclass, defined in its module (``Hdf5Options``, ``RosbagOptions``); :func:`open_sources`
takes the options object of the format it opens and refuses any other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lawm.data import bridgedata, hdf5, lerobot, rosbag, video
from lawm.data.base import (
    HDF5_SUFFIXES,
    ROSBAG_SUFFIXES,
    VIDEO_SUFFIXES,
    DataError,
    EpisodeSource,
)

# (path, labelled, the format's options or None) -> episodes
Opener = Callable[[Path, bool, Any], list[EpisodeSource]]


@dataclass(frozen=True)
class Format:
    """One data format.

    name: what ``--format`` and ``open_sources(format=...)`` call it.
    description: what a path of this format looks like (for error messages).
    detect: whether an existing path holds this format.
    open: the episodes under an existing path.
    options: the format's options dataclass; None when it has no settings.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    open: Opener
    options: type | None = None


def _has_file(folder: Path, suffixes: tuple[str, ...]) -> bool:
    # scandir stops at the first hit: SSv2 folders hold ~220k files.
    with os.scandir(folder) as it:
        # Hidden files are skipped: an interrupted atomic write leaves a '.<name>.<suffix>'.
        return any(
            e.name[0] != "." and e.is_file() and e.name.lower().endswith(suffixes) for e in it
        )


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    """A file with one of ``suffixes``, or a folder holding one."""
    if path.is_file():
        return path.suffix.lower() in suffixes
    return _has_file(path, suffixes)


def _is_hdf5(path: Path) -> bool:
    # A folder of .hdf5 files, or a dataset root whose suite folders hold them (LIBERO).
    if _has_suffix(path, HDF5_SUFFIXES):
        return True
    return path.is_dir() and bool(hdf5.find_suite_folders(path))


def _is_video(path: Path) -> bool:
    return _has_suffix(path, VIDEO_SUFFIXES)


def _is_ssv2(path: Path) -> bool:
    return path.is_dir() and _has_file(path, (".webm",)) and bool(video.find_ssv2_labels(path))


def _is_rosbag(path: Path) -> bool:
    """A bag file, a bag's metadata.yaml, a bag folder, or a folder holding bags."""
    if path.is_file():
        return path.suffix.lower() in ROSBAG_SUFFIXES or path.name == "metadata.yaml"
    if (path / "metadata.yaml").is_file():
        return True
    with os.scandir(path) as it:
        return any(
            (e.is_dir() and os.path.isfile(os.path.join(e.path, "metadata.yaml")))
            or (e.is_file() and e.name.lower().endswith(ROSBAG_SUFFIXES))
            for e in it
        )


def _is_bridgedata(path: Path) -> bool:
    return path.is_dir() and bool(bridgedata.find_trajectories(path, first_only=True))


def _open_lerobot(
    path: Path, labelled: bool, options: lerobot.LerobotOptions | None
) -> list[EpisodeSource]:
    return lerobot.open_lerobot(path, labelled=labelled, options=options)


def _open_hdf5(
    path: Path, labelled: bool, options: hdf5.Hdf5Options | None
) -> list[EpisodeSource]:
    return hdf5.open_hdf5(path, labelled=labelled, options=options)


def _open_video(path: Path, labelled: bool, options: None) -> list[EpisodeSource]:
    return video.open_video(path)  # video never has actions: labelled changes nothing


def _open_ssv2(
    path: Path, labelled: bool, options: video.Ssv2Options | None
) -> list[EpisodeSource]:
    return video.open_ssv2(path, options=options)


def _open_bridgedata(path: Path, labelled: bool, options: None) -> list[EpisodeSource]:
    return bridgedata.open_bridgedata(path)  # frames and language only


def _open_rosbag(
    path: Path, labelled: bool, options: rosbag.RosbagOptions | None
) -> list[EpisodeSource]:
    return rosbag.open_rosbags(path, labelled=labelled, options=options)


# Detection tries the formats in this order and takes the first that matches: SSv2 folders
# are also video folders, and a folder of loose files wins over bags or trajectories below it.
REGISTRY: tuple[Format, ...] = (
    Format(
        "lerobot",
        "a LeRobotDataset root (meta/info.json; codebase v3.0, v2.1 or v2.0)",
        lerobot.is_lerobot,
        _open_lerobot,
        lerobot.LerobotOptions,
    ),
    Format(
        "hdf5",
        "a LIBERO/robomimic .hdf5/.h5 file, a folder of them, or a folder of such folders "
        "(the LIBERO release: libero_object/, ...)",
        _is_hdf5,
        _open_hdf5,
        hdf5.Hdf5Options,
    ),
    Format(
        "ssv2",
        "Something-Something v2: a folder of <id>.webm with train.json/validation.json "
        "next to or above it",
        _is_ssv2,
        _open_ssv2,
        video.Ssv2Options,
    ),
    Format(
        "video",
        "a video file or a folder of mp4/webm/avi/mkv/mov",
        _is_video,
        _open_video,
    ),
    Format(
        "rosbag",
        "a rosbag2 folder with metadata.yaml, a .mcap/.db3 file, or a folder of bags",
        _is_rosbag,
        _open_rosbag,
        rosbag.RosbagOptions,
    ),
    Format(
        "bridgedata",
        "BridgeData v2 raw: traj*/images0/im_*.jpg",
        _is_bridgedata,
        _open_bridgedata,
    ),
)
_BY_NAME = {f.name: f for f in REGISTRY}
FORMATS: tuple[str, ...] = tuple(_BY_NAME)


def _known() -> str:
    return ", ".join(f"{f.name} ({f.description})" for f in REGISTRY)


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path``; raises DataError listing the known formats."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    for fmt in REGISTRY:
        if fmt.detect(path):
            return fmt.name
    what = "no recognised files in the folder" if path.is_dir() else "unrecognised file"
    raise DataError(f"{path}: unknown data format ({what}); expected one of: {_known()}")


def _check_options(fmt: Format, options: Any, path: Path, detected: bool) -> None:
    if options is None or (fmt.options is not None and isinstance(options, fmt.options)):
        return
    given = type(options).__name__
    owner = next((f.name for f in REGISTRY if f.options is type(options)), None)
    given += f" (options of format {owner!r})" if owner else ""
    how = "detected as" if detected else "opened as"
    wants = f"takes {fmt.options.__name__}" if fmt.options else "takes no options"
    raise DataError(f"{path}: {how} format {fmt.name!r}, which {wants}; got {given}")


def open_sources(
    path: str | Path,
    format: str = "auto",
    labelled: bool = True,
    options: Any = None,
) -> list[EpisodeSource]:
    """Open every episode under ``path`` (a file or a folder).

    format: "auto" (detect) or one of ``FORMATS``. labelled=False opens the data as unlabeled
    video: sources report ``has_actions=False`` and never read an action. options: the chosen
    format's options object (e.g. ``RosbagOptions``, ``Hdf5Options``), None for its defaults;
    another format's options raise DataError naming both formats.
    """
    path = Path(path)
    if format != "auto" and format not in _BY_NAME:
        raise DataError(
            f"{path}: unknown format {format!r}; valid formats: auto, {', '.join(FORMATS)}"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    fmt = _BY_NAME[detect_format(path) if format == "auto" else format]
    _check_options(fmt, options, path, detected=format == "auto")
    return fmt.open(path, labelled, options)
