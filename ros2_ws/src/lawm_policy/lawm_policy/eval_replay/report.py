"""What a replay produced, scored against the recording and written out.

``Evaluation`` is the per-step outcome of a live or offline replay; ``compute_metrics`` and
``latency_stats`` score it (the gripper by the model's declared convention,
``GripperScoring``); ``build_report`` makes the JSON report; ``write_outputs`` writes
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
from lawm_core.command import ActionMapper
from lawm_core.files import atomic_path, atomic_write_text
from lawm_core.sidecar import ActionSpace, PolicySidecar
from lawm_policy.eval_replay.index import BagIndex

REPORT_FILE = "report.json"
PLOT_FILE = "actions.png"
PREDICTIONS_FILE = "predictions.csv"
LAYOUT = contract.ACTION_LAYOUT
GRIPPER = contract.GRIPPER_INDEX
CLOSED_ABOVE = 0.5  # the gripper counts as closed past halfway from open to closed


@dataclass(frozen=True)
class GripperScoring:
    """How a raw gripper value reads as open or closed: the model's declared convention
    (``ActionSpace`` gripper, open and closed values), the same for its predictions and for
    the recorded actions it was trained on. Closed: ``ActionMapper.closing`` (the fraction of
    the way from the open value to the closed one) > ``CLOSED_ABOVE``. ``source``: where the
    convention comes from."""

    space: ActionSpace
    source: str

    @classmethod
    def of_model(cls, spec: PolicySidecar, source: str) -> GripperScoring:
        return cls(spec.action_space, source)

    @classmethod
    def assumed(cls, why: str) -> GripperScoring:
        """The sign convention (-1 open, +1 closed), when the model's is unknown."""
        return cls(ActionSpace.for_kind(contract.ACTION_TWIST), f"assumed: {why}")

    def closed(self, values: np.ndarray) -> np.ndarray:
        """float64 (N,): 1.0 closed, 0.0 open, NaN for a non-finite value."""
        mapper = ActionMapper(self.space, control_rate_hz=1.0)
        raw = np.zeros(contract.ACTION_DIM)
        out = np.full(len(values), np.nan)
        for i, v in enumerate(np.asarray(values, np.float64)):
            raw[GRIPPER] = v
            closing = mapper.closing(raw)
            if np.isfinite(closing):
                out[i] = float(closing > CLOSED_ABOVE)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "convention": self.space.gripper,
            "open": self.space.gripper_open,
            "closed": self.space.gripper_closed,
            "closed_when": f"fraction of the way from open to closed > {CLOSED_ABOVE}",
            "source": self.source,
        }


SIGN = GripperScoring.assumed("the sign convention (no model sidecar)")


@dataclass
class Evaluation:
    """Per-step outcome of a replay (live or offline)."""

    mode: str
    predicted: np.ndarray  # float64 (N, 7), NaN rows for steps without an answer
    latency_ms: np.ndarray  # float64 (N,), NaN for steps without an answer
    answered: np.ndarray  # bool (N,)
    published: int  # frames sent to the policy (live) / steps processed (offline)
    latency_what: str
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gripper: GripperScoring = SIGN  # how the gripper dimension is scored


# ------------------------------------------------------------------------------ metrics
def finite_or_none(x: float | np.floating | None) -> float | None:
    """A float for JSON: None for None, NaN or infinity."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def compute_metrics(
    predicted: np.ndarray, recorded: np.ndarray, gripper: GripperScoring = SIGN
) -> dict[str, Any]:
    """Per action dimension of ``predicted`` and ``recorded`` (N, 7): MAE, RMSE, Pearson r and
    n over the steps where both are finite (Pearson is null with fewer than 2 steps or a
    constant series); the mean MAE/RMSE over the dimensions; gripper agreement (the share of
    scored steps where both are closed or both open, by ``gripper``'s convention)."""
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
    pred_closed, rec_closed = gripper.closed(pred[:, GRIPPER]), gripper.closed(rec[:, GRIPPER])
    ok = np.isfinite(pred_closed) & np.isfinite(rec_closed)
    agree = None
    if ok.any():
        agree = float(np.mean(pred_closed[ok] == rec_closed[ok]))
    return {
        "per_dim": per_dim,
        "mae_mean": finite_or_none(np.mean(maes)) if maes else None,
        "rmse_mean": finite_or_none(np.mean(rmses)) if rmses else None,
        "gripper_agreement": agree,
        "gripper_frames": int(ok.sum()),
        "gripper_closed_share": {
            "predicted": finite_or_none(np.mean(pred_closed[ok])) if ok.any() else None,
            "recorded": finite_or_none(np.mean(rec_closed[ok])) if ok.any() else None,
        },
        "gripper_scoring": gripper.describe(),
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
        "metrics": compute_metrics(ev.predicted, index.recorded, ev.gripper),
        "latency_ms": {**latency_stats(ev.latency_ms), "measures": ev.latency_what},
        **ev.extra,
        "warnings": [*index.notes, *ev.warnings],
        "files": {
            "report": str(out_dir / REPORT_FILE),
            "predictions": str(out_dir / PREDICTIONS_FILE),
            "plot": str(out_dir / PLOT_FILE),
        },
    }


# ------------------------------------------------------------------------------ outputs
def predictions_csv(index: BagIndex, ev: Evaluation) -> str:
    """One row per step: frame (the step's index), time_s (since the first step), answered,
    latency_ms, the predicted and the recorded action per dimension, and whether each gripper
    is closed (1/0, by the scored convention; empty where there is no value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["frame", "time_s", "answered", "latency_ms"]
        + [f"pred_{n}" for n in LAYOUT]
        + [f"rec_{n}" for n in LAYOUT]
        + ["pred_gripper_closed", "rec_gripper_closed"]
    )

    def num(x: float) -> str:
        return repr(float(x)) if math.isfinite(x) else ""

    def flag(x: float) -> str:
        return str(int(x)) if math.isfinite(x) else ""

    times = index.frame_times_s
    pred_closed = ev.gripper.closed(ev.predicted[:, GRIPPER])
    rec_closed = ev.gripper.closed(index.recorded[:, GRIPPER])
    for i in range(index.n_frames):
        w.writerow(
            [i, f"{times[i]:.6f}", int(ev.answered[i]), num(ev.latency_ms[i])]
            + [num(v) for v in ev.predicted[i]]
            + [num(v) for v in index.recorded[i]]
            + [flag(pred_closed[i]), flag(rec_closed[i])]
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
        space = ev.gripper.space  # the open/closed boundary of the scored convention
        middle = space.gripper_open + CLOSED_ABOVE * (space.gripper_closed - space.gripper_open)
        axes[GRIPPER].axhline(middle, color="tab:blue", lw=0.8, ls="--", label="open | closed")
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
