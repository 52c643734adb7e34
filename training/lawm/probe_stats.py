"""The numpy side of the ``probe`` diagnostics: which windows to probe (and which other chunk
each is given), held-out ridge probes, the variance split of a set of vectors over tasks and
episodes, and CCA per task."""

from __future__ import annotations

from typing import Any

import numpy as np

from lawm.metrics import canonical_correlations, heldout_canonical_correlations

RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the number of fitted samples


# -- windows ----------------------------------------------------------------------------------
def select_windows(lengths: list[int], max_windows: int, seed: int = 0):
    """At most ``max_windows`` pretraining windows, evenly spaced in time, at least two per
    episode (episodes with fewer than two windows are left out). Returns (episode, t) arrays;
    window t of an episode holds frames t..t+K, so an episode of length L has L - 1."""
    usable = [i for i, n in enumerate(lengths) if n - 1 >= 2]
    if len(usable) * 2 > max_windows:
        rng = np.random.default_rng(seed)
        usable = sorted(rng.choice(usable, max(max_windows // 2, 2), replace=False).tolist())
    quota = max(2, max_windows // max(len(usable), 1))
    episode, start = [], []
    for i in usable:
        n = lengths[i] - 1
        ts = np.unique(np.round(np.linspace(0, n - 1, min(quota, n))).astype(int))
        episode += [i] * len(ts)
        start += ts.tolist()
    return np.asarray(episode, np.int64), np.asarray(start, np.int64)


def partners(episode, start, task, lengths, rng) -> dict[str, np.ndarray]:
    """Row indices of the chunk each window is given in each world-model condition."""
    n = len(episode)
    same_time, same_task, other_task = np.arange(n), np.arange(n), np.full(n, -1)
    for i in range(n):
        mine = np.flatnonzero((episode == episode[i]) & (np.arange(n) != i))
        span = lengths[episode[i]] - 1
        want = (start[i] + span / 2) % span
        same_time[i] = mine[np.argmin(np.abs(start[mine] - want))]
        others = np.flatnonzero((episode != episode[i]) & (task == task[i]))
        if not len(others):
            others = np.flatnonzero(episode != episode[i])
        if len(others):
            same_task[i] = rng.choice(others)
        elsewhere = np.flatnonzero(task != task[i])
        if len(elsewhere):
            other_task[i] = rng.choice(elsewhere)
    return {
        "same_episode_other_time": same_time,
        "other_episode": same_task,
        "other_task": other_task,
    }


# -- linear probes ----------------------------------------------------------------------------
def _standardise(fit: np.ndarray, *rest: np.ndarray) -> list[np.ndarray]:
    mean, std = fit.mean(0), fit.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return [(a - mean) / std for a in (fit, *rest)]


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R^2 per target column around the scored set's own mean, averaged over the columns that
    vary there (sklearn's uniform average)."""
    sst = ((y - y.mean(0)) ** 2).sum(0)
    sse = ((y - pred) ** 2).sum(0)
    ok = sst > 1e-12 * len(y)
    return float(np.mean(1.0 - sse[ok] / sst[ok])) if ok.any() else float("nan")


def _ridge_predictions(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, alphas) -> list:
    """Ridge fits of y on x (both standardised on x's rows) for each alpha: predictions at
    x_new, one SVD for all alphas."""
    xs, xn = _standardise(x, x_new)
    ym = y.mean(0)
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    uty = u.T @ (y - ym)
    return [xn @ (vt.T @ ((s / (s**2 + a * len(x)))[:, None] * uty)) + ym for a in alphas]


def ridge_r2(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    groups: np.ndarray | None = None,
) -> float:
    """Held-out R^2 of a ridge regression of y on x, fitted on (x_fit, y_fit), scored on the
    test rows. The penalty is chosen by two-fold cross-validation inside the fitted rows, the
    folds made of whole ``groups`` (episodes); with fewer than two groups it is 1e-2."""
    x_fit, x_test = np.asarray(x_fit, np.float64), np.asarray(x_test, np.float64)
    y_fit, y_test = np.asarray(y_fit, np.float64), np.asarray(y_test, np.float64)
    alpha = 1e-2
    ids = np.unique(groups) if groups is not None else np.zeros(0)
    if len(ids) >= 2:
        fold = np.isin(groups, ids[::2])
        scores = np.zeros(len(RIDGE_ALPHAS))
        for a, b in ((fold, ~fold), (~fold, fold)):
            preds = _ridge_predictions(x_fit[a], y_fit[a], x_fit[b], RIDGE_ALPHAS)
            scores += [np.nan_to_num(_r2(y_fit[b], p), nan=-np.inf) for p in preds]
        alpha = RIDGE_ALPHAS[int(np.argmax(scores))]
    return _r2(y_test, _ridge_predictions(x_fit, y_fit, x_test, [alpha])[0])


def episode_halves(episode: np.ndarray, task: np.ndarray) -> np.ndarray:
    """Fit mask: within each task, every other episode (in order) fits, the rest are scored."""
    fit = np.zeros(len(episode), bool)
    for t in np.unique(task):
        eps = np.unique(episode[task == t])
        fit |= np.isin(episode, eps[::2])
    return fit


def variance_split(x: np.ndarray, task: np.ndarray, episode: np.ndarray) -> dict[str, Any]:
    """Shares of the total variance of x (N, D) between tasks, between the episodes of a task
    and within episodes (they sum to 1; None when x is constant)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    centred = x - x.mean(0)
    ep_mean = np.zeros_like(x)
    task_mean = np.zeros_like(x)
    for e in np.unique(episode):
        ep_mean[episode == e] = x[episode == e].mean(0)
    for t in np.unique(task):
        task_mean[task == t] = x[task == t].mean(0)
    total = float((centred**2).sum())
    parts = {
        "between_tasks": float(((task_mean - x.mean(0)) ** 2).sum()),
        "between_episodes": float(((ep_mean - task_mean) ** 2).sum()),
        "within_episode": float(((x - ep_mean) ** 2).sum()),
    }
    if total <= 1e-12 * x.size:
        return {**dict.fromkeys(parts), "total": 0.0}
    return {**{k: v / total for k, v in parts.items()}, "total": total / len(x)}


# -- CCA --------------------------------------------------------------------------------------
def _varying(a: np.ndarray) -> np.ndarray:
    return a[:, a.std(0) > 1e-6]


def cca_figures(z: np.ndarray, a: np.ndarray, task: np.ndarray, fit: np.ndarray) -> dict[str, Any]:
    """First canonical correlation per task (and their mean), the mean of all correlations
    pooled over tasks (in-sample), and that mean held out (fitted on ``fit``, scored on the
    rest). z (N, p), a (N, q) first actions."""
    per_task = []
    for t in np.unique(task):
        zt, at = z[task == t], _varying(a[task == t])
        if at.shape[1] and len(zt) > max(zt.shape[1], at.shape[1]) + 1:
            per_task.append(float(canonical_correlations(zt, at)[0]))
        else:
            per_task.append(None)
    cols = a.std(0) > 1e-6
    out: dict[str, Any] = {"first_per_task": per_task, "mean": None, "heldout_mean": None}
    known = [c for c in per_task if c is not None]
    out["first_mean"] = float(np.mean(known)) if known else None
    if cols.any() and len(z) > max(z.shape[1], cols.sum()) + 1:
        out["mean"] = float(canonical_correlations(z, a[:, cols]).mean())
    if cols.any() and fit.sum() > max(z.shape[1], cols.sum()) + 1 and (~fit).sum() > 2:
        held = heldout_canonical_correlations(z[fit], a[fit][:, cols], z[~fit], a[~fit][:, cols])
        out["heldout_mean"] = float(held.mean())
    return out
