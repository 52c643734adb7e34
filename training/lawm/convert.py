"""``train.py convert``: any dataset the loaders read -> LeRobotDataset v3.0 or rosbag2.

Episodes are read through the same loaders training uses (so every format, key map and topic
flag applies: rosbag2 topics and rate, HDF5 layouts, LeRobot key maps) and written:

- ``--to lerobot``: one LeRobotDataset v3.0 folder (``lawm_sim.lerobot_writer``: AV1 video,
  many episodes per file), stepped at the episodes' control rate;
- ``--to rosbag``: a folder of rosbag2 bags (sqlite3 or mcap), one per episode, with the
  LIBERO bridge's topics and types, stamped at the control rate, so ``replay_eval`` can play
  them through the policy node.

The output is built beside its destination and renamed into place when every episode is
written; an interrupted conversion leaves the old output or none.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lawm.data.base import DataError, data_proprio_layout
from lawm_core import contract
from lawm_core.files import atomic_dir

TARGETS = ("lerobot", "rosbag")
START_NS = 1_000_000_000  # the first step's stamp in converted bags (a zero stamp reads unset)


class ConvertError(ValueError):
    """The conversion cannot proceed as asked; the message says what to pass."""


def _rate(sources: list, fps: float | None) -> float:
    if fps is not None:
        return float(fps)
    rates = {s.control_rate_hz for s in sources}
    if None in rates or len(rates) != 1:
        shown = sorted(str(r) for r in rates)
        raise ConvertError(
            f"the episodes' step rates are {shown}: pass --control-rate-hz (rosbag2 episodes "
            "are then resampled at that rate)"
        )
    return float(rates.pop())


def _cameras(sources: list) -> tuple[str, ...]:
    cams = [c for c in contract.CAMERAS if all(c in s.cameras for s in sources)]
    if not cams:
        raise ConvertError("no camera is present in every episode")
    dropped = sorted({c for s in sources for c in s.cameras} - set(cams))
    if dropped:
        warnings.warn(f"cameras {dropped} are missing from some episodes: left out", stacklevel=3)
    return tuple(cams)


def _stem(name: str, index: int) -> str:
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.rsplit("/", 1)[-1]).strip("._") or "episode"
    return f"{index:06d}_{tail[:80]}"


def convert(
    sources: list,
    out: str | Path,
    to: str,
    *,
    fps: float | None = None,
    codec: str = "av1",
    storage: str = "sqlite3",
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``sources`` to ``out`` as ``to`` (``TARGETS``); returns a summary."""
    from lawm_sim.lerobot_writer import LerobotWriteError, LerobotWriter
    from lawm_sim.recording import write_bag

    if to not in TARGETS:
        raise ConvertError(f"--to {to!r}: expected one of {list(TARGETS)}")
    if not sources:
        raise ConvertError("no episodes to convert")
    rate = _rate(sources, fps)
    cameras = _cameras(sources)
    labelled = all(s.has_actions for s in sources)
    if not labelled and any(s.has_actions for s in sources):
        warnings.warn("some episodes carry no actions: every episode is written without them",
                      stacklevel=2)  # fmt: skip
    layout = data_proprio_layout(sources)
    with_proprio = layout is not None and all(s.has_proprio for s in sources)
    if to == "rosbag" and with_proprio and tuple(layout) != contract.PROPRIO_LAYOUT:
        warnings.warn(
            f"proprio {list(layout)} is not the bridge's layout {list(contract.PROPRIO_LAYOUT)}: "
            "the bags carry no proprio topic",
            stacklevel=2,
        )
        with_proprio = False
    out = Path(out)
    t0 = time.perf_counter()
    frames = 0
    bar = tqdm(sources, desc=f"convert -> {to}", unit="ep", disable=not progress)
    if to == "lerobot":
        try:
            writer = LerobotWriter(
                out, fps=rate, cameras=cameras, proprio_layout=layout if with_proprio else None,
                actions=labelled, codec=codec,
            )  # fmt: skip
        except LerobotWriteError as err:
            raise ConvertError(str(err)) from None
        try:
            for src in bar:
                ep = src.read(0, src.length, cameras=cameras, actions=labelled,
                              proprio=with_proprio)  # fmt: skip
                writer.add(ep["images"], src.instruction, ep["actions"], ep["proprio"])
                frames += src.length
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    else:
        period_ns = 1e9 / rate
        with atomic_dir(out) as tmp:
            tmp.mkdir(parents=True)
            for i, src in enumerate(bar):
                ep = src.read(0, src.length, cameras=cameras, actions=labelled,
                              proprio=with_proprio)  # fmt: skip
                stamps = START_NS + np.round(np.arange(src.length) * period_ns).astype(np.int64)
                write_bag(tmp / _stem(src.name, i), ep["images"], src.instruction, stamps,
                          ep["actions"], ep["proprio"], storage=storage)  # fmt: skip
                frames += src.length
    bar.close()
    return {
        "to": to,
        "out": str(out),
        "episodes": len(sources),
        "frames": frames,
        "control_rate_hz": rate,
        "cameras": list(cameras),
        "actions": labelled,
        "proprio": list(layout) if with_proprio else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise DataError(f"{out} exists; pass --force to replace it")
