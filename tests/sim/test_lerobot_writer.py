"""lawm_sim.lerobot_writer leaves the writing process as it found it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lawm.data import open_sources
from lawm.data.synthetic import simulate_episode
from lawm_core import contract
from lawm_sim.lerobot_writer import LerobotWriter


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="SVT-AV1 can raise a thread to real-time scheduling only with the privilege to",
)
def test_writing_av1_keeps_the_process_on_ordinary_scheduling(tmp_path):
    """SVT-AV1 moves the thread that opens an encoder, and its workers, to SCHED_FIFO 99 where
    it may (root in a container); the writer puts them back, so neither the encoding nor what
    the process starts next runs real-time."""
    before = os.sched_getscheduler(0)
    assert before == os.SCHED_OTHER
    rng = np.random.default_rng(0)
    ep = simulate_episode(rng, 0, 2, 6, 64)
    writer = LerobotWriter(tmp_path / "lr", fps=20, cameras=contract.CAMERAS)
    proprio = np.concatenate([ep["ee_pos"], ep["gripper_states"]], axis=1)
    earlier = _threads()  # threads of earlier tests keep whatever they chose
    writer.add(ep["images"], "push the block", ep["actions"], proprio)
    # The encoders are open and their worker threads alive: neither this thread nor the ones
    # the encoders started runs real-time.
    started = _threads() - earlier
    assert started, "the encoders started no thread"
    assert {os.sched_getscheduler(t) for t in [0, *started]} == {os.SCHED_OTHER}
    writer.commit()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    (back,) = open_sources(tmp_path / "lr")
    assert back.length == 6
