"""What a replay produced, scored against the recording and written out.

``Evaluation`` is the per-frame outcome of a live or offline replay; ``compute_metrics`` and
``latency_stats`` score it; ``build_report`` makes the JSON report; ``write_outputs`` writes
``predictions.csv``, ``actions.png`` and (last) ``report.json``, each atomically
(``lawm_core.files``), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import contract
from lawm_core.files import atomic_path, atomic_write_text
from lawm_policy.eval_replay.index import BagIndex

REPORT_FILE = "report.json"
PLOT_FILE = "actions.png"
PREDICTIONS_FILE = "predictions.csv"
LAYOUT = contract.ACTION_LAYOUT
GRIPPER = contract.GRIPPER_INDEX


@dataclass
class Evaluation:
    """Per-frame outcome of a replay (live or offline)."""

    mode: str
    predicted: np.ndarray  # float64 (N, 7), NaN rows for frames without an answer
    latency_ms: np.ndarray  # float64 (N,), NaN for frames without an answer
    answered: np.ndarray  # bool (N,)
    published: int  # frames sent to the policy (live) / processed (offline)
    latency_what: str
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ metrics
def finite_or_none(x: float | np.floating | None) -> float | None:
    """A float for JSON: None for None, NaN or infinity."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def compute_metrics(predicted: np.ndarray, recorded: np.ndarray) -> dict[str, Any]:
    """Per action dimension of ``predicted`` and ``recorded`` (N, 7): MAE, RMSE, Pearson r and
    n over the frames where both are finite (Pearson is null with fewer than 2 frames or a
    constant series); the mean MAE/RMSE over the dimensions; gripper sign agreement (closed =
    value > 0) over the scored frames."""
    pred = np.asarray(predicted, np.float64)
    rec = np.asarray(recorded, np.float64)
    per_dim: dict[str, dict[str, Any]] = {}
    for d, name in enumerate(LAYOUT):
        ok = np.isfinite(pred[:, d]) & np.isfinite(rec[:, d])
        p, r = pred[ok, d], rec[ok, d]
        entry: dict[str, Any] = {"n": int(ok.sum()), "mae": None, "rmse": None, "pearson": None}
        if ok.any():
            err = p - r
            entry["mae"] = finite_or_none(np.mean(np.abs(err)))
            entry["rmse"] = finite_or_none(np.sqrt(np.mean(err**2)))
            if ok.sum() >= 2 and np.std(p) > 0 and np.std(r) > 0:
                entry["pearson"] = finite_or_none(np.corrcoef(p, r)[0, 1])
        per_dim[name] = entry
    maes = [e["mae"] for e in per_dim.values() if e["mae"] is not None]
    rmses = [e["rmse"] for e in per_dim.values() if e["rmse"] is not None]
    ok = np.isfinite(pred[:, GRIPPER]) & np.isfinite(rec[:, GRIPPER])
    agree = None
    if ok.any():
        agree = float(np.mean((pred[ok, GRIPPER] > 0) == (rec[ok, GRIPPER] > 0)))
    return {
        "per_dim": per_dim,
        "mae_mean": finite_or_none(np.mean(maes)) if maes else None,
        "rmse_mean": finite_or_none(np.mean(rmses)) if rmses else None,
        "gripper_sign_agreement": agree,
        "gripper_frames": int(ok.sum()),
    }


def latency_stats(latency_ms: np.ndarray) -> dict[str, Any]:
    """n, p50, p99, mean and max of the finite latencies (ms)."""
    ms = np.asarray(latency_ms, np.float64)
    ms = ms[np.isfinite(ms)]
    if ms.size == 0:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    return {
        "n": int(ms.size),
        "p50": finite_or_none(np.percentile(ms, 50)),
        "p99": finite_or_none(np.percentile(ms, 99)),
        "mean": finite_or_none(ms.mean()),
        "max": finite_or_none(ms.max()),
    }


def build_report(
    index: BagIndex,
    ev: Evaluation,
    *,
    instruction: str | None,
    instruction_source: str,
    settings: Mapping[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    compared = np.isfinite(ev.predicted).any(axis=1) & np.isfinite(index.recorded).any(axis=1)
    answered = int(ev.answered.sum())
    return {
        "mode": ev.mode,
        "bag": str(index.path),
        "storage": index.storage,
        "topics": index.selection.as_dict(),
        "bag_topics": dict(sorted(index.topics.items())),
        "instruction": instruction,
        "instruction_source": instruction_source,
        "settings": dict(settings),
        "action_layout": list(LAYOUT),
        "frames": {
            "in_bag": index.n_frames,
            "published": int(ev.published),
            "answered": answered,
            "dropped": int(ev.published) - answered,
            "compared": int(compared.sum()),
        },
        "metrics": compute_metrics(ev.predicted, index.recorded),
        "latency_ms": {**latency_stats(ev.latency_ms), "measures": ev.latency_what},
        **ev.extra,
        "warnings": list(ev.warnings),
        "files": {
            "report": str(out_dir / REPORT_FILE),
            "predictions": str(out_dir / PREDICTIONS_FILE),
            "plot": str(out_dir / PLOT_FILE),
        },
    }


# ------------------------------------------------------------------------------ outputs
def predictions_csv(index: BagIndex, ev: Evaluation) -> str:
    """One row per frame: frame, time_s (since the first frame), answered, latency_ms, the
    predicted and the recorded action per dimension (empty where there is none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["frame", "time_s", "answered", "latency_ms"]
        + [f"pred_{n}" for n in LAYOUT]
        + [f"rec_{n}" for n in LAYOUT]
    )

    def num(x: float) -> str:
        return repr(float(x)) if math.isfinite(x) else ""

    times = index.frame_times_s
    for i in range(index.n_frames):
        w.writerow(
            [i, f"{times[i]:.6f}", int(ev.answered[i]), num(ev.latency_ms[i])]
            + [num(v) for v in ev.predicted[i]]
            + [num(v) for v in index.recorded[i]]
        )
    return buf.getvalue()


def plot_actions(index: BagIndex, ev: Evaluation, path: Path, title: str) -> None:
    """Predicted vs recorded action per dimension over the bag's time (PNG, Agg backend)."""
    # matplotlib: heavy, and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = index.frame_times_s
    fig, axes = plt.subplots(len(LAYOUT), 1, figsize=(10, 2.0 * len(LAYOUT)), sharex=True)
    try:
        for d, (ax, name) in enumerate(zip(axes, LAYOUT)):
            ax.plot(t, index.recorded[:, d], color="0.3", lw=1.2, label="recorded")
            ax.plot(
                t, ev.predicted[:, d], color="tab:red", lw=1.0, marker=".", ms=3, label="predicted"
            )
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("time since first frame (s)")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)


def write_outputs(
    out_dir: Path, report: Mapping[str, Any], index: BagIndex, ev: Evaluation
) -> None:
    """``predictions.csv``, ``actions.png`` and (last) ``report.json``, each atomically."""
    atomic_write_text(out_dir / PREDICTIONS_FILE, predictions_csv(index, ev))
    title = f"{ev.mode}: {index.path.name} ({index.n_frames} frames)"
    plot_actions(index, ev, out_dir / PLOT_FILE, title)
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
