"""The staleness watchdog over the policy's inputs (lawm_core.watchdog)."""

from __future__ import annotations

import math

import pytest

from lawm_core.watchdog import StalenessWatchdog


def test_watchdog():
    wd = StalenessWatchdog(0.5, ["cam", "proprio", "cam"])
    assert wd.required == ("cam", "proprio")
    assert wd.stale(100.0) == ["cam", "proprio"]
    assert wd.ages(100.0) == {"cam": math.inf, "proprio": math.inf}
    assert wd.update("cam", 99.9, 100.0) and wd.update("proprio", 100.2, 100.0)  # 0.2 s skew ok
    assert wd.stale(100.0) == []
    assert wd.ages(100.1) == {"cam": pytest.approx(0.2), "proprio": pytest.approx(-0.1)}
    assert wd.stale(100.45) == ["cam"]
    assert "old (timeout 0.5 s)" in wd.stale_reasons(100.45)["cam"]
    assert wd.update("extra", 100.0, 100.0) and "extra" in wd.ages(100.0)
    assert "extra" not in wd.stale(200.0)

    # from the future, from the far past, non-finite: rejected, not refreshing the input
    assert not wd.update("cam", 101.0, 100.0)
    assert "in the future" in wd.rejections["cam"]
    assert not wd.update("cam", 0.0, 100000.0)
    assert "old (max 3600 s)" in wd.rejections["cam"]
    assert not wd.update("cam", math.nan, 100.0)
    assert wd.rejected_count["cam"] == 3
    assert wd.ages(100.0)["cam"] == pytest.approx(0.1)
    assert wd.stale(101.0) == ["cam", "proprio"]

    # a clock that went back makes the stored stamps look like the future: stale, then recovers
    assert "ahead of the clock" in wd.stale_reasons(5.0)["cam"]
    assert wd.update("cam", 5.0, 5.0) and wd.update("proprio", 5.0, 5.0)
    assert wd.stale(5.1) == []
    wd.reset()
    assert wd.stale(5.1) == ["cam", "proprio"] and wd.rejections == {}

    never = StalenessWatchdog(1.0, ["cam"])
    never.update("cam", 50.0, 0.0)
    assert "never received (last stamp rejected" in never.stale_reasons(0.0)["cam"]
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match="timeout_s"):
            StalenessWatchdog(bad, ["cam"])


def test_negative_stamps_are_refused_even_when_recent():
    # On sim time shortly after t = 0, a stamp of -0.1 s is only 0.15 s old, but no ROS time
    # is negative (builtin_interfaces/Time.sec is signed): a sender with a broken clock.
    wd = StalenessWatchdog(0.5, ["cam"])
    assert not wd.update("cam", -0.1, 0.05)
    assert "negative stamp" in wd.rejections["cam"] and wd.stale(0.05) == ["cam"]
    assert wd.update("cam", 0.0, 0.05)


def test_a_frozen_camera_goes_stale_although_its_stamps_advance():
    wd = StalenessWatchdog(0.3, ["cam"], frozen_timeout_s=1.0)
    t = 100.0
    for i in range(10):  # a live camera: new content every frame
        assert wd.update("cam", t, t, content=i)
        t += 1 / 30
    assert wd.stale(t) == []
    frozen_at = t
    accepted = []
    while t < frozen_at + 2.0:  # the driver re-sends its last frame with new stamps
        accepted.append((t, wd.update("cam", t, t, content=9)))
        t += 1 / 30
    last_ok = max(s for s, ok in accepted if ok)
    assert frozen_at + 0.9 < last_ok <= frozen_at + 1.0 + 1e-9
    assert "frozen" in wd.rejections["cam"]
    assert wd.stale(t) == ["cam"]  # stale one timeout after the last accepted frame
    assert wd.update("cam", t, t, content=10)  # it moves again: fresh at once
    assert wd.stale(t) == []
    # Off (the default, for simulators that render identical frames): never frozen.
    off = StalenessWatchdog(0.3, ["cam"])
    assert all(off.update("cam", 100 + k, 100 + k, content=1) for k in range(10))
    with pytest.raises(ValueError, match="frozen_timeout_s"):
        StalenessWatchdog(0.3, ["cam"], frozen_timeout_s=-1)
