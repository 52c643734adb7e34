"""lawm.stats: Wilson intervals and the paired closed-loop comparison."""

from __future__ import annotations

import pytest

from lawm.stats import mcnemar_exact_p, paired_successes, wilson_ci


def test_wilson_interval_matches_the_textbook_and_stays_inside_0_1():
    # 16/20: the Wilson 95 % interval is [0.584, 0.919] (Newcombe 1998, method 3).
    assert wilson_ci(16, 20) == pytest.approx([0.584, 0.919], abs=1e-3)
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35  # not the normal approximation's [0, 0]
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and 0.65 < lo < 0.75
    # 200 episodes per arm are needed to separate 80 % from 90 %; 20 are not.
    assert wilson_ci(16, 20)[1] > wilson_ci(18, 20)[0]
    assert wilson_ci(160, 200)[1] < wilson_ci(180, 200)[0]
    for bad in ((3, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_ci(*bad)


def test_mcnemar_counts_only_discordant_pairs():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact_p(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact_p(3, 9) == pytest.approx(mcnemar_exact_p(9, 3))


def test_paired_successes_pairs_by_state_and_run():
    states = [(t, i) for t in (0, 1) for i in range(25)]
    a = {(s, k): True for s in states for k in range(4)}
    b = {(s, k): (s[1] % 2 == 0) for s in states for k in range(4)}  # half the states fail
    r = paired_successes(a, b)
    assert r["pairs"] == 200 and r["states"] == 50
    assert r["both"] == 104 and r["only_a"] == 96 and r["only_b"] == 0 and r["neither"] == 0
    assert r["difference"] == pytest.approx(0.48)
    lo, hi = r["difference_ci"]
    assert lo < 0.48 < hi and lo > 0.3
    assert r["mcnemar_p"] < 1e-20
    same = paired_successes(b, b)
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0]
    assert same["mcnemar_p"] == 1.0
    # Only shared episodes count.
    assert paired_successes(a, {k: v for k, v in b.items() if k[1] == 0})["pairs"] == 50
    with pytest.raises(ValueError, match="share no"):
        paired_successes(a, {((9, 9), 0): True})
