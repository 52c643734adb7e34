"""Latent-action quality: canonical correlation analysis (CCA) against ground-truth actions.

The paper reports canonical correlations above 0.9 between LAWM's latent actions and the true
actions: the policy, trained only to make a world model explain video, learns a linear
re-coding of the real controls.
"""

from __future__ import annotations

import numpy as np


def fit_cca(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6):
    """Fit CCA on x (N, p), y (N, q).

    Returns (correlations, (mean_x, wx), (mean_y, wy)) where ``(x - mean_x) @ wx`` gives the
    canonical variates of x (columns ordered by correlation, descending), likewise for y.
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
    mx, my = x.mean(0), y.mean(0)
    x = x - mx
    y = y - my

    def whitener(a: np.ndarray) -> np.ndarray:
        cov = a.T @ a / (n - 1)
        cov += np.eye(len(cov)) * ridge * max(np.trace(cov) / len(cov), 1e-12)
        return np.linalg.inv(np.linalg.cholesky(cov))  # L^-1 with cov = L L^T

    lx, ly = whitener(x), whitener(y)
    cxy = x.T @ y / (n - 1)
    u, s, vt = np.linalg.svd(lx @ cxy @ ly.T)
    k = min(x.shape[1], y.shape[1])
    wx = lx.T @ u[:, :k]
    wy = ly.T @ vt.T[:, :k]
    return np.clip(s[:k], 0.0, 1.0), (mx, wx), (my, wy)


def canonical_correlations(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Canonical correlations of x (N, p) and y (N, q), descending, min(p, q) values."""
    return fit_cca(x, y, ridge)[0]


def heldout_canonical_correlations(
    x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> np.ndarray:
    """Fit the canonical directions on one split, report their correlations on another.

    In-sample CCA is optimistic (with few samples even random features correlate); the
    held-out figure is the honest one.
    """
    _, (mx, wx), (my, wy) = fit_cca(x_fit, y_fit)
    u = (np.asarray(x_test, np.float64) - mx) @ wx
    v = (np.asarray(y_test, np.float64) - my) @ wy
    u = u - u.mean(0)
    v = v - v.mean(0)
    denom = np.sqrt((u * u).sum(0) * (v * v).sum(0))
    return np.where(denom > 0, (u * v).sum(0) / np.maximum(denom, 1e-300), 0.0)
