"""Temporal aggregation of overlapping action chunks (lawm_core.aggregation)."""

from __future__ import annotations

import numpy as np
import pytest

from lawm_core.aggregation import TemporalAggregator
from lawm_core.errors import InputError


def test_aggregator_hand_computed():
    c0 = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    c1 = [[0.7, 0.8], [0.9, 1.0], [-0.1, -0.2]]
    c2 = [[-0.3, -0.4], [-0.5, -0.6], [0.2, 0.0]]
    c3 = [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    agg = TemporalAggregator(chunk_size=3, action_dim=2)
    assert len(agg) == 0
    np.testing.assert_allclose(agg.step(np.array(c0)), [0.1, 0.2])
    assert len(agg) == 1
    np.testing.assert_allclose(agg.step(np.array(c1)), [(0.7 + 0.3) / 2, (0.8 + 0.4) / 2])
    assert len(agg) == 2
    np.testing.assert_allclose(
        agg.step(np.array(c2)), [(-0.3 + 0.9 + 0.5) / 3, (-0.4 + 1.0 + 0.6) / 3]
    )
    assert len(agg) == 3
    # c0 has no row for this step any more
    np.testing.assert_allclose(
        agg.step(np.array(c3)), [(1.0 - 0.5 - 0.1) / 3, (1.0 - 0.6 - 0.2) / 3]
    )
    assert len(agg) == 3

    agg.reset()
    assert len(agg) == 0
    np.testing.assert_allclose(agg.step(np.array(c2)), [-0.3, -0.4])
    # clamped to [-1, 1]
    agg.reset()
    np.testing.assert_allclose(agg.step(np.array([[3.0, -3.0], [0, 0], [0, 0]])), [1.0, -1.0])


def test_aggregator_matches_brute_force_and_rejects_bad_chunks():
    k, a = 4, 7
    rng = np.random.default_rng(3)
    agg = TemporalAggregator(k, a)
    predictions: dict[int, list[np.ndarray]] = {}
    for t in range(12):
        chunk = rng.uniform(-1, 1, (k, a))
        for j in range(k):
            predictions.setdefault(t + j, []).append(chunk[j])
        if t == 5:  # a bad chunk in the middle changes nothing
            bad = chunk.copy()
            bad[2, 3] = np.nan
            with pytest.raises(InputError, match="non-finite"):
                agg.step(bad)
            with pytest.raises(InputError, match="shape"):
                agg.step(chunk[:3])
            with pytest.raises(InputError, match="not numeric"):
                agg.step([["x"] * a] * k)
        before = len(agg)
        got = agg.step(chunk)
        assert len(agg) == min(before + 1, k)
        np.testing.assert_allclose(got, np.mean(predictions[t], axis=0), atol=1e-12)
    with pytest.raises(ValueError, match="chunk_size"):
        TemporalAggregator(0, 7)
