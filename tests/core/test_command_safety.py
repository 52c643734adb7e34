"""From a policy action to a safe command: the action mapping (lawm_core.command) and the
safety filter (lawm_core.safety: clamps, speed and rate limits, workspace fence)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lawm_core import contract, safety
from lawm_core.command import ActionMapper, Command
from lawm_core.errors import InputError
from lawm_core.safety import SafetyFilter, SafetyLimits
from lawm_core.sidecar import ActionSpace


def test_action_mapper():
    # A twist action space: raw m/s and rad/s, times the per-axis gains.
    twist = ActionSpace.for_kind(contract.ACTION_TWIST)
    mapper = ActionMapper(twist, 20.0, [0.1, 0.2, 0.3], [1.0, 0.5, 0.25])
    cmd = mapper.to_command(np.array([0.5, -1.0, 0.2, 1.0, 0.0, -0.5, 0.3]))
    np.testing.assert_allclose(cmd.linear, [0.05, -0.2, 0.06])
    np.testing.assert_allclose(cmd.angular, [1.0, 0.0, -0.125])
    assert cmd.gripper == 1.0
    default = ActionMapper(twist, 20.0)
    assert default.to_command(np.r_[np.zeros(6), 1e-6]).gripper == 1.0
    assert default.to_command(np.r_[np.zeros(6), 0.0]).gripper == -1.0  # not beyond halfway
    assert default.to_command(np.r_[np.zeros(6), -1]).gripper == -1.0
    nan_cmd = mapper.to_command(np.full(7, np.nan))
    assert not nan_cmd.is_finite() and math.isnan(nan_cmd.gripper)
    with pytest.raises(InputError, match="expected"):
        mapper.to_command(np.zeros(6))
    with pytest.raises(ValueError, match="linear_scale"):
        ActionMapper(twist, 20.0, [1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="angular_scale"):
        ActionMapper(twist, 20.0, [1, 1, 1], [1, -1, 1])
    zero = Command.zero()
    assert zero.linear.tolist() == [0, 0, 0] and zero.angular.tolist() == [0, 0, 0]
    assert zero.gripper == 0.0 and Command.zero(gripper=-1.0).gripper == -1.0
    with pytest.raises(InputError, match="3 values"):
        Command([0, 0], [0, 0, 0], 0.0)


LIMITS = SafetyLimits(
    max_linear_axis=(0.2, 0.2, 0.1),
    max_angular_axis=(0.5, 0.5, 1.0),
    max_linear_speed=0.25,
    max_angular_speed=0.8,
    max_linear_accel=1.0,
    max_angular_accel=4.0,
    workspace_min=(-0.5, -0.5, 0.0),
    workspace_max=(0.5, 0.5, 0.8),
)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(max_linear_axis=(0.2, -0.1, 0.1)), r"max_linear_axis .*\(0.2, -0.1, 0.1\)"),
        (dict(max_angular_axis=(1, 1)), r"max_angular_axis .*\(1, 1\)"),
        (dict(max_linear_speed=0.0), "max_linear_speed .* got 0.0"),
        (dict(max_angular_speed=float("nan")), "max_angular_speed .* got nan"),
        (dict(max_linear_accel=float("inf")), "max_linear_accel .* got inf"),
        (dict(max_angular_accel="fast"), "max_angular_accel .* got 'fast'"),
        (dict(workspace_min=None), "go together"),
        (dict(workspace_max=(0.5, -0.6, 0.8)), r"workspace_min must be < .*axis \[1\]"),
        (dict(workspace_min=(0, 0, math.nan)), "workspace_min must be 3 finite"),
    ],
)
def test_safety_limits_validation(change, match):
    fields = {k: getattr(LIMITS, k) for k in LIMITS.__dataclass_fields__}
    with pytest.raises(ValueError, match=match):
        SafetyLimits(**{**fields, **change})


def test_safety_limits_normalised():
    lim = SafetyLimits([1, 2, 3], np.array([1.0, 1.0, 1.0]), 1, 1, 2, 2)
    assert lim.max_linear_axis == (1.0, 2.0, 3.0) and isinstance(lim.max_angular_axis, tuple)
    assert not lim.has_workspace and LIMITS.has_workspace
    with pytest.raises(AttributeError):
        lim.max_linear_speed = 5.0  # frozen


def _cmd(lin, ang=(0, 0, 0), grip=1.0) -> Command:
    return Command(np.array(lin, float), np.array(ang, float), grip)


def test_safety_clamps_and_speed():
    f = SafetyFilter(LIMITS)
    out, why = f.filter(_cmd([0.05, 0.0, 0.05], [0.1, 0, 0]), dt=10.0)
    assert why == [] and out.linear.tolist() == [0.05, 0.0, 0.05]
    f.reset()
    out, why = f.filter(_cmd([1.0, 0.0, -1.0], [0, 0, 3.0], 2.0), dt=10.0)
    assert out.linear.tolist() == [0.2, 0.0, -0.1] and out.angular.tolist() == [0, 0, 0.8]
    assert out.gripper == 1.0
    assert why == [
        safety.GRIPPER_CLAMP,
        safety.LINEAR_AXIS_CLAMP,
        safety.ANGULAR_AXIS_CLAMP,
        safety.ANGULAR_SPEED,
    ]
    f.reset()
    out, why = f.filter(
        _cmd([0.2, 0.2, 0.0]), dt=10.0
    )  # norm 0.283 > 0.25: scaled, same direction
    np.testing.assert_allclose(out.linear, [0.25 / math.sqrt(2)] * 2 + [0.0])
    assert why == [safety.LINEAR_SPEED]


def test_safety_rate_limit_ramps():
    f = SafetyFilter(LIMITS)
    dt = 0.05  # 20 Hz: the linear speed may change by 0.05 m/s per tick
    speeds = []
    for _ in range(6):
        out, why = f.filter(_cmd([0.2, 0, 0]), dt)
        speeds.append(out.linear[0])
    np.testing.assert_allclose(speeds, [0.05, 0.1, 0.15, 0.2, 0.2, 0.2], atol=1e-12)
    out, why = f.filter(_cmd([-0.2, 0, 0]), dt)
    assert out.linear[0] == pytest.approx(0.15) and why == [safety.LINEAR_RATE]
    out, _ = f.filter(_cmd([0, 0, 0]), dt=0.0)  # no time passed: no change
    assert out.linear[0] == pytest.approx(0.15)
    f.reset()
    out, _ = f.filter(_cmd([0.2, 0, 0]), dt)
    assert out.linear[0] == pytest.approx(0.05)


def test_safety_non_finite_and_bad_dt_stop_at_once():
    f = SafetyFilter(LIMITS)
    for _ in range(10):
        f.filter(_cmd([0.2, 0, 0], [0.5, 0, 0], grip=1.0), 0.05)
    for bad in (
        _cmd([np.nan, 0, 0]),
        _cmd([0, 0, 0], [0, np.inf, 0]),
        _cmd([0, 0, 0], grip=np.nan),
    ):
        out, why = f.filter(bad, 0.05)
        assert why == [safety.NON_FINITE]
        assert out.linear.tolist() == [0, 0, 0] and out.angular.tolist() == [0, 0, 0]
        assert out.gripper == 1.0  # held, neither dropped nor squeezed
    for dt in (math.nan, -0.01, math.inf, "x"):
        out, why = f.filter(_cmd([0.1, 0, 0]), dt)
        assert why == [safety.INVALID_DT] and not np.any(out.linear)
    out, _ = f.filter(_cmd([0.2, 0, 0]), 0.05)  # ramps again from zero
    assert out.linear[0] == pytest.approx(0.05)


def test_safety_workspace():
    f = SafetyFilter(LIMITS)
    big_dt = 0.5  # the rate limit allows 0.5 m/s of change: not in play
    # at the +x face: +x is cut, -x and other axes pass
    out, why = f.filter(_cmd([0.1, 0.1, 0.05]), big_dt, ee_pos=[0.5, 0.0, 0.4])
    assert out.linear.tolist() == [0.0, pytest.approx(0.1), pytest.approx(0.05)]
    assert safety.WORKSPACE in why
    f.reset()
    out, why = f.filter(_cmd([-0.1, 0, 0]), big_dt, ee_pos=[0.7, 0.0, 0.4])  # outside: back in
    assert out.linear[0] == pytest.approx(-0.1) and why == []
    f.reset()
    out, why = f.filter(_cmd([0, 0, -0.1]), big_dt, ee_pos=[0.0, 0.0, -0.2])  # below the floor
    assert out.linear[2] == 0.0 and why == [safety.WORKSPACE]
    # inside, close to a face: cut so that one step lands on the face at most
    f.reset()
    out, why = f.filter(_cmd([0.0, 0.0, 0.1]), 0.1, ee_pos=[0.0, 0.0, 0.795])
    assert out.linear[2] == pytest.approx(0.05) and safety.WORKSPACE in why
    # the previous output pushing outwards is stopped by the wall, not ramped down
    f.reset()
    for _ in range(10):
        f.filter(_cmd([0.2, 0, 0]), 0.05, ee_pos=[0.0, 0.0, 0.4])
    out, why = f.filter(_cmd([0.2, 0, 0]), 0.05, ee_pos=[0.5, 0.0, 0.4])
    assert out.linear[0] == 0.0 and safety.WORKSPACE in why
    # unknown position with a fence configured: no linear motion
    out, why = f.filter(_cmd([0.1, 0.1, 0.05], [0.1, 0, 0]), big_dt, ee_pos=[np.nan, 0, 0])
    assert not np.any(out.linear) and out.angular[0] == pytest.approx(0.1)
    # no ee_pos, or no box: no fence
    f.reset()
    out, _ = f.filter(_cmd([0.1, 0, 0]), big_dt)
    assert out.linear[0] == pytest.approx(0.1)
    with pytest.raises(InputError, match="ee_pos"):
        f.filter(_cmd([0.1, 0, 0]), big_dt, ee_pos=[0, 0])


def _adversarial_command(rng: np.random.Generator) -> Command:
    """Mostly finite values of every scale (huge, tiny, zero, ordinary); some commands carry
    one NaN or infinity in a random slot."""
    scale = rng.choice([0.02, 0.2, 2.0, 1e6, 1e300])
    vals = rng.normal(scale=scale, size=7)
    special = rng.random(7) < 0.1
    vals[special] = rng.choice([0.0, -0.0, 1e-300, np.finfo(float).max, -np.finfo(float).max])
    if rng.random() < 0.15:
        vals[rng.integers(0, 7)] = rng.choice([np.nan, np.inf, -np.inf])
    return Command(vals[:3], vals[3:6], vals[6])


@pytest.mark.parametrize("with_box", [True, False])
def test_safety_property_random_and_adversarial(with_box):
    limits = LIMITS
    if not with_box:
        fields = {k: getattr(LIMITS, k) for k in LIMITS.__dataclass_fields__}
        limits = SafetyLimits(**{**fields, "workspace_min": None, "workspace_max": None})
    f = SafetyFilter(limits)
    rng = np.random.default_rng(4)
    lin_ax, ang_ax = np.array(limits.max_linear_axis), np.array(limits.max_angular_axis)
    lo, hi = np.array(LIMITS.workspace_min), np.array(LIMITS.workspace_max)
    eps = 1e-9
    prev = Command.zero()
    for _ in range(3000):
        cmd = _adversarial_command(rng)
        dt = float(rng.choice([0.05, 0.0, 1e-9, 3.0, rng.uniform(0, 0.2)]))
        r = rng.random()
        if r < 0.2:
            ee = None
        elif r < 0.25:
            ee = np.array([np.nan, 0.0, 0.0])
        else:
            ee = rng.uniform(lo - 0.3, hi + 0.3)
            if rng.random() < 0.3:  # exactly on faces
                axis = rng.integers(0, 3)
                ee[axis] = (lo if rng.random() < 0.5 else hi)[axis]
        out, why = f.filter(cmd, dt, ee)
        assert out.is_finite(), (cmd, out)
        assert np.all(np.abs(out.linear) <= lin_ax + eps)
        assert np.all(np.abs(out.angular) <= ang_ax + eps)
        assert np.linalg.norm(out.linear) <= limits.max_linear_speed + eps
        assert np.linalg.norm(out.angular) <= limits.max_angular_speed + eps
        assert -1.0 <= out.gripper <= 1.0
        if not cmd.is_finite():
            assert (
                why == [safety.NON_FINITE] and not np.any(out.linear) and not np.any(out.angular)
            )
            assert out.gripper == prev.gripper
        else:
            assert safety.NON_FINITE not in why
            if safety.WORKSPACE not in why:  # a wall may stop harder than the accel limit
                assert (
                    np.linalg.norm(out.linear - prev.linear) <= limits.max_linear_accel * dt + eps
                )
            assert (
                np.linalg.norm(out.angular - prev.angular) <= limits.max_angular_accel * dt + eps
            )
        if with_box and ee is not None and np.all(np.isfinite(ee)):
            assert np.all(out.linear[ee >= hi] <= 0) and np.all(out.linear[ee <= lo] >= 0)
            inside = (ee > lo) & (ee < hi)
            nxt = ee + out.linear * dt
            assert np.all(nxt[inside] <= hi[inside] + eps) and np.all(
                nxt[inside] >= lo[inside] - eps
            )
        elif with_box and ee is not None:
            assert not np.any(out.linear)
        prev = out
