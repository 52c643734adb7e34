"""Success-rate statistics for closed-loop comparisons (``bench/learning.py``, the demo).

- ``wilson_ci``: Wilson score interval of a success rate (sound at 0 % and 100 % and for small
  counts, unlike the normal approximation).
- ``paired_successes``: two arms rolled out from the same initial states, compared pair by
  pair: counts of the four outcomes, the exact McNemar test on the discordant pairs, and a
  bootstrap interval of the difference in success rate resampled by initial state (the runs of
  one state stay together, so seeds that share a state are not counted as independent).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from math import sqrt

import numpy as np

from lawm.heldout import CI_LEVEL, N_BOOT

_Z95 = 1.959963984540054


def wilson_ci(successes: int, n: int, level: float = CI_LEVEL) -> list[float]:
    """Wilson score interval [low, high] of ``successes`` out of ``n``."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    if level == 0.95:
        z = _Z95
    else:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + level / 2.0))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return [lo, hi]


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant pair is equally
    likely to favour either arm. 1.0 when there is no discordant pair."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_a, n, 0.5).pvalue)


def paired_successes(
    a: Mapping[tuple[Hashable, Hashable], bool],
    b: Mapping[tuple[Hashable, Hashable], bool],
    *,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> dict:
    """Compare arm ``a`` with arm ``b`` on the episodes both ran. Keys are (state, run): the
    initial state (e.g. (task, init state)) and the index of the training run, run k of ``a``
    paired with run k of ``b``. Returns counts, rates, ``difference`` (a minus b) with its
    bootstrap interval over states, and the exact McNemar p-value."""
    keys = sorted(set(a) & set(b), key=repr)
    if not keys:
        raise ValueError("the two arms share no (state, run) episode")
    xa = np.array([bool(a[k]) for k in keys])
    xb = np.array([bool(b[k]) for k in keys])
    both = int(np.sum(xa & xb))
    only_a = int(np.sum(xa & ~xb))
    only_b = int(np.sum(~xa & xb))
    states = sorted({k[0] for k in keys}, key=repr)
    index = {s: i for i, s in enumerate(states)}
    per_state = np.zeros((len(states), 2))  # sum of (a - b) and count per state
    for k, da in zip(keys, xa.astype(float) - xb.astype(float), strict=True):
        per_state[index[k[0]]] += (da, 1.0)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(states), (n_boot, len(states)))
    diffs = per_state[pick, 0].sum(axis=1) / per_state[pick, 1].sum(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return {
        "pairs": len(keys),
        "states": len(states),
        "both": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": len(keys) - both - only_a - only_b,
        "rate_a": float(xa.mean()),
        "rate_b": float(xb.mean()),
        "difference": float(xa.mean() - xb.mean()),
        "difference_ci": [float(lo), float(hi)],
        "mcnemar_p": mcnemar_exact_p(only_a, only_b),
    }
