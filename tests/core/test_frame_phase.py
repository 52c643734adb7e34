"""Waiting for camera frames that are about to arrive (lawm_core.frame_phase)."""

from __future__ import annotations

import pytest

from lawm_core.frame_phase import FramePhase, FrameWait


def test_frame_phase_waits_only_for_a_frame_that_is_about_to_arrive():
    phase = FramePhase(max_wait_s=0.012)
    assert phase.wait_s(0.0) == 0.0  # nothing seen yet
    for i in range(10):  # 30 Hz with a little jitter
        phase.arrived(i / 30 + (0.001 if i % 2 else -0.001))
    assert phase.period_s == pytest.approx(1 / 30, abs=0.002)
    last = phase.last_s
    # Just after a frame: the next one is 33 ms away, act now on this fresh one.
    assert phase.wait_s(last + 0.002) == 0.0
    # 25 ms after: the next frame is due in about 8 ms, wait for it.
    assert phase.wait_s(last + 0.025) == pytest.approx(1 / 30 - 0.025, abs=0.003)
    # Overdue (the camera is late): never wait for it.
    assert phase.wait_s(last + 0.05) == 0.0
    # A long pause does not stretch the period estimate.
    phase.arrived(last + 5.0)
    assert phase.period_s == pytest.approx(1 / 30, abs=0.002)
    # Disabled, or too few frames to know the period: never wait.
    off = FramePhase(max_wait_s=0.0)
    for i in range(10):
        off.arrived(i / 30)
    assert off.wait_s(9 / 30 + 0.03) == 0.0
    few = FramePhase(max_wait_s=0.012)
    for i in range(3):
        few.arrived(i / 30)
    assert few.wait_s(2 / 30 + 0.03) == 0.0
    with pytest.raises(ValueError, match="max_wait_s"):
        FramePhase(max_wait_s=float("nan"))


def test_frame_wait_waits_for_every_camera_about_to_deliver():
    wait = FrameWait(["agentview", "wrist"], max_wait_s=0.012)
    assert wait.due(0.0) == frozenset()  # nothing seen yet
    for i in range(10):  # both at 30 Hz; the wrist camera 5 ms behind the agentview one
        wait.arrived("agentview", i / 30)
        wait.arrived("wrist", i / 30 + 0.005)
    last = 9 / 30
    # Just after both frames: act now on them.
    assert wait.due(last + 0.006) == frozenset()
    # 25 ms after the agentview frame: it is due in ~8 ms, the wrist one in ~13 ms (beyond
    # the 12 ms limit): wait for the agentview frame only.
    assert wait.due(last + 0.025) == {"agentview"}
    # 27 ms after: both due within the limit (in ~6 and ~11 ms).
    assert wait.due(last + 0.027) == {"agentview", "wrist"}
    # 36 ms after: the agentview frame is overdue (never waited for), the wrist one due.
    assert wait.due(last + 0.036) == {"wrist"}
    wait.reset()
    assert wait.due(last + 0.027) == frozenset()
    off = FrameWait(["agentview"], max_wait_s=0.0)
    for i in range(10):
        off.arrived("agentview", i / 30)
    assert off.due(9 / 30 + 0.03) == frozenset()
    with pytest.raises(ValueError, match="camera"):
        FrameWait([], max_wait_s=0.012)
