"""Action labels for unlabelled clips, read off the pretrained "kinematic" world model.

The kinematic world model (``lawm.models.world_model``) moves a pose code through one shared
linear map per latent action: ``pose_{t+1} = pose_t + W_a z_{t+1}``. Its encoder therefore
gives, for any frame, a pose code whose step-to-step change is a linear image of the motion
between frames. That makes the pretrained world model an inverse-dynamics model from video
alone: the action at step t is read from the pose code at t and its changes from t - 3 to t + 9
by a linear map fitted on the labelled demonstrations (ridge, the penalty chosen by
leave-one-episode-out error).

- ``pose_codes``: the world model's pose code of every frame of an episode (images only; no
  action or robot state is read).
- ``PoseLabeller``: fitted on labelled episodes, labels any episode; every dimension stays
  within the demonstrations' range, the gripper snapped to its open or closed value.
- ``LabelledSource``: an unlabelled episode source with labels attached, for fine-tuning.
- ``label_accuracy``: how close the labels come to recorded actions (a report: the labeller
  never reads a clip's actions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lawm.checkpoint import load_policy_config
from lawm.data.base import EpisodeSource
from lawm.data.dataset import square_resize
from lawm.models.world_model import WorldModel

# Pose-code changes at these offsets from step t explain action t (the controller needs a few
# steps to carry out a command; the gripper's fingers move for several after it is given). On
# the demo's LIBERO-Object clips (3 demonstrations per task fitted, pretraining seed 0), label
# MSE 0.029 with offsets -1..4 and changes only, 0.012 with -3..8 and the pose code itself.
OFFSETS = tuple(range(-3, 9))
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
GRIPPER = 6  # the gripper's index in the action vector
BATCH_FRAMES = 256


def load_kinematic_world_model(run_dir: Path) -> tuple[WorldModel, Any]:
    """The world model of a pretraining run (RUN/world_model.safetensors, config from
    RUN/policy); it must be the "kinematic" variant, the only one with a pose code."""
    from lawm.probe import load_world_model

    cfg, _ = load_policy_config(Path(run_dir) / "policy")
    if cfg.world_model.variant != "kinematic":
        raise ValueError(
            f"{run_dir}: pseudo-labels need world model variant 'kinematic' (it has a pose "
            f"code), this run's is {cfg.world_model.variant!r}"
        )
    return load_world_model(Path(run_dir) / "world_model.safetensors", cfg), cfg


@torch.no_grad()
def pose_codes(wm: WorldModel, source: EpisodeSource) -> np.ndarray:
    """(T, pose_dim) pose code of every frame of ``source``, from its images alone."""
    wc = wm.cfg
    if wm.pose is None:
        raise ValueError("pose codes need world model variant 'kinematic'")
    missing = [c for c in wc.cameras if c not in source.cameras]
    if missing:
        raise ValueError(f"{source.name}: lacks the world model's cameras {missing}")
    out = []
    for start in range(0, source.length, BATCH_FRAMES):
        stop = min(source.length, start + BATCH_FRAMES)
        data = source.read(start, stop, cameras=wc.cameras, actions=False, proprio=False)
        images = {
            c: torch.from_numpy(square_resize(data["images"][c], wc.image_size))[None]
            for c in wc.cameras
        }
        proprio = None
        if wc.use_proprio:  # this labeller reads video only: the robot state is hidden
            proprio = torch.zeros(1, stop - start, wc.proprio_dim)
        embed = wm.embed(images, proprio, has_proprio=torch.zeros(1) if wc.use_proprio else None)
        out.append(wm.pose(embed[0]).numpy())
    return np.concatenate(out).astype(np.float64)


def features(pose: np.ndarray) -> np.ndarray:
    """(T, pose_dim) pose codes -> (T, F): each step's pose code and the pose-code changes at
    ``OFFSETS`` from it (edges repeat the nearest change; the last step's change is zero)."""
    t = len(pose)
    delta = np.zeros_like(pose)
    delta[:-1] = pose[1:] - pose[:-1]
    cols = [delta[np.clip(np.arange(t) + k, 0, max(t - 2, 0))] for k in OFFSETS]
    return np.concatenate([pose, *cols], 1)


@dataclasses.dataclass
class PoseLabeller:
    """Linear map from pose-code changes to actions (ridge, fitted on labelled episodes)."""

    weight: np.ndarray  # (F, 7)
    bias: np.ndarray  # (7,)
    mean: np.ndarray  # (F,) feature standardisation
    scale: np.ndarray  # (F,)
    alpha: float
    cv_mse: float  # leave-one-episode-out MSE at ``alpha`` (raw action units)
    low: np.ndarray  # (7,) the demonstrations' smallest and largest value per dimension
    high: np.ndarray

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Labels within the demonstrations' range per dimension; the gripper snapped to the
        nearer of its two extremes (open or closed, whatever the data's convention)."""
        raw = ((feats - self.mean) / self.scale) @ self.weight + self.bias
        out = np.clip(raw, self.low, self.high)
        g_lo, g_hi = self.low[GRIPPER], self.high[GRIPPER]
        out[:, GRIPPER] = np.where(raw[:, GRIPPER] >= (g_lo + g_hi) / 2.0, g_hi, g_lo)
        return out


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * len(x) * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, ym - xm @ w


def fit_labeller(feats: Sequence[np.ndarray], actions: Sequence[np.ndarray]) -> PoseLabeller:
    """Ridge from features to actions over the labelled episodes; the penalty is the one with
    the lowest leave-one-episode-out MSE (all of them pooled when there is one episode)."""
    if len(feats) != len(actions) or not feats:
        raise ValueError("need the same number (>= 1) of feature and action arrays")
    x_all = np.concatenate(feats)
    mean, scale = x_all.mean(0), x_all.std(0) + 1e-8
    xs = [(f - mean) / scale for f in feats]
    ys = [np.asarray(a, np.float64) for a in actions]
    best = (np.inf, RIDGE_ALPHAS[0])
    for alpha in RIDGE_ALPHAS:
        if len(xs) < 2:
            break
        sse, n = 0.0, 0
        for i in range(len(xs)):
            x = np.concatenate([v for j, v in enumerate(xs) if j != i])
            y = np.concatenate([v for j, v in enumerate(ys) if j != i])
            w, b = _ridge(x, y, alpha)
            sse += float(((xs[i] @ w + b - ys[i]) ** 2).sum())
            n += ys[i].size
        best = min(best, (sse / n, alpha))
    y_all = np.concatenate(ys)
    w, b = _ridge(np.concatenate(xs), y_all, best[1])
    return PoseLabeller(w, b, mean, scale, best[1], best[0], y_all.min(0), y_all.max(0))


class LabelledSource(EpisodeSource):
    """An episode source whose actions are given labels ((T, 7), in ``action_space``); images
    and robot state are read from ``inner``, which is never asked for its own actions."""

    def __init__(self, inner: EpisodeSource, labels: np.ndarray, action_space: str) -> None:
        labels = np.asarray(labels, np.float32)
        if labels.shape != (inner.length, 7) or not np.isfinite(labels).all():
            raise ValueError(f"{inner.name}: labels must be finite ({inner.length}, 7)")
        self.inner = inner
        self.labels = labels
        self.name = f"{inner.name} (pseudo-labelled)"
        self.length = inner.length
        self.instruction = inner.instruction
        self.cameras = inner.cameras
        self.has_actions = True
        self.has_proprio = inner.has_proprio
        self.success = inner.success
        self.action_space = action_space
        self.proprio_layout = inner.proprio_layout
        self.control_rate_hz = inner.control_rate_hz
        self.gripper_convention = inner.gripper_convention

    def _read(self, start, stop, cameras, actions, proprio):  # noqa: ANN001
        out = self.inner._read(start, stop, cameras, False, proprio)
        out["actions"] = self.labels[start:stop].copy() if actions else None
        return out


def label_accuracy(pred: Sequence[np.ndarray], true: Sequence[np.ndarray]) -> dict[str, Any]:
    """Labels against recorded actions: MSE, R^2 per dimension, how often the gripper (open or
    closed) agrees."""
    p, y = np.concatenate(pred), np.concatenate(true).astype(np.float64)
    var = y.var(0)
    mid = (y[:, GRIPPER].min() + y[:, GRIPPER].max()) / 2.0  # open vs closed, any convention
    r2 = 1.0 - ((p - y) ** 2).mean(0) / np.where(var > 0, var, np.nan)
    return {
        "mse": float(((p - y) ** 2).mean()),
        "r2_per_dim": [None if not np.isfinite(v) else round(float(v), 4) for v in r2],
        "r2_arm_mean": (
            float(np.nanmean(r2[:GRIPPER])) if np.isfinite(r2[:GRIPPER]).any() else None
        ),
        "gripper_agreement": float(((p[:, GRIPPER] >= mid) == (y[:, GRIPPER] >= mid)).mean()),
        "steps": len(y),
    }


def label_clips(
    pretrain_run: Path,
    labelled: Sequence[EpisodeSource],
    clips: Sequence[EpisodeSource],
    untrained: bool = False,
) -> tuple[list[LabelledSource], dict[str, Any]]:
    """Fit the labeller on ``labelled`` (episodes with actions) with the world model of
    ``pretrain_run``, label ``clips`` (their actions are never read) -> (the labelled clips,
    {"alpha", "cv_mse", "fit_episodes", "fit_steps"}). ``untrained``: the same world model
    freshly initialised (seed 0) instead, the baseline the pretrained labels are read beside."""
    if not labelled:
        raise ValueError("the labeller needs at least one labelled episode")
    spaces = {s.action_space for s in labelled}
    if len(spaces) != 1 or not all(s.has_actions for s in labelled):
        raise ValueError(f"labelled episodes must share one action space, got {sorted(spaces)}")
    wm, cfg = load_kinematic_world_model(pretrain_run)
    if untrained:
        torch.manual_seed(0)
        wm = WorldModel(cfg.world_model).eval()
    feats, actions = [], []
    for s in labelled:
        feats.append(features(pose_codes(wm, s)))
        actions.append(s.read(0, s.length, cameras=(), actions=True, proprio=False)["actions"])
    labeller = fit_labeller(feats, actions)
    space = next(iter(spaces))
    out = [LabelledSource(c, labeller.predict(features(pose_codes(wm, c))), space) for c in clips]
    info = {
        "alpha": labeller.alpha,
        "cv_mse": labeller.cv_mse,
        "fit_episodes": len(labelled),
        "fit_steps": int(sum(len(a) for a in actions)),
    }
    return out, info
