"""Latent-action quality: canonical correlation analysis (CCA) against ground-truth actions.

The paper reports canonical correlations above 0.9 between LAWM's latent actions and the true
actions: the policy, trained only to make a world model explain video, learns a linear
re-coding of the real controls.
"""

from __future__ import annotations

import numpy as np


def canonical_correlations(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Canonical correlations of x (N, p) and y (N, q), descending, min(p, q) values.

    Each view is centred and whitened (Cholesky of its covariance plus a small ridge, relative
    to the trace, so constant dimensions don't make it singular); the singular values of the
    whitened cross-covariance are the correlations.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"expected (N, p) and (N, q) arrays, got {x.shape} and {y.shape}")
    n = len(x)
    if n <= max(x.shape[1], y.shape[1]):
        raise ValueError(
            f"CCA needs more samples ({n}) than dimensions {x.shape[1]}, {y.shape[1]}"
        )
    x = x - x.mean(0)
    y = y - y.mean(0)

    def inv_sqrt_chol(a: np.ndarray) -> np.ndarray:
        cov = a.T @ a / (n - 1)
        cov += np.eye(len(cov)) * ridge * max(np.trace(cov) / len(cov), 1e-12)
        return np.linalg.inv(np.linalg.cholesky(cov))

    wx, wy = inv_sqrt_chol(x), inv_sqrt_chol(y)
    cxy = x.T @ y / (n - 1)
    s = np.linalg.svd(wx @ cxy @ wy.T, compute_uv=False)
    return np.clip(s[: min(x.shape[1], y.shape[1])], 0.0, 1.0)
