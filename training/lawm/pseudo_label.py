"""Action labels for unlabelled clips, read off the pretrained "kinematic" world model.

The kinematic world model (``lawm.models.world_model``) moves a pose code through one shared
linear map per latent action: ``pose_{t+1} = pose_t + W_a z_{t+1}``. Its encoder therefore
gives, for any frame, a pose code whose step-to-step change is a linear image of the motion
between frames. That makes the pretrained world model an inverse-dynamics model from video
alone: the action at step t is read from the pose code at t and its changes from t + lo to
t + hi by a linear map fitted on the labelled demonstrations (ridge; the window and the
penalty chosen by leave-one-episode-out error). Near a clip's start or end, where some of those
changes do not exist, a step is labelled by a map fitted over only the changes it has.

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

# Pose-code changes from step t + lo to t + hi explain action t (the controller needs a few
# steps to carry out a command, the gripper's fingers move for several after it is given, and
# a smooth expert's action shows in the motion that follows it for longer still). The window
# is chosen among these by leave-one-demonstration-out error, with the ridge penalty. On the
# demo's LIBERO-Object clips (3 demonstrations per task, pretraining seeds 0 and 1) the label
# MSE against their recorded actions is 0.0085-0.0090 with -3..8, 0.0055-0.0060 with -5..12 and
# 0.0047-0.0050 with -8..20; the leave-one-out errors (0.014-0.015, 0.009, 0.006) rank them
# the same way.
WINDOWS = ((-3, 8), (-5, 12), (-8, 20))
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


def windows(length: int, span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each step of an episode of ``length`` steps, the first and last offset within
    ``span`` whose pose-code change exists: a change at offset k is seen when
    0 <= t + k <= length - 2. Near the start the earlier changes are missing, near the end
    the later ones: the last step's
    own change is never seen (its action shows in no frame of the clip), so it is labelled from
    the changes before it."""
    t = np.arange(length)
    lo = np.maximum(span[0], -t)
    hi = np.minimum(span[1], length - 2 - t)
    return lo, hi


def features(pose: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """(T, pose_dim) pose codes -> (T, F): each step's pose code and the pose-code changes at
    offsets span[0]..span[1] from it (where a change does not exist the nearest one stands in;
    ``windows`` says which exist, and the labeller reads only those)."""
    t = len(pose)
    delta = np.zeros_like(pose)
    delta[:-1] = pose[1:] - pose[:-1]
    cols = [
        delta[np.clip(np.arange(t) + k, 0, max(t - 2, 0))] for k in range(span[0], span[1] + 1)
    ]
    return np.concatenate([pose, *cols], 1)


def _columns(pose_dim: int, span: tuple[int, int], lo: int, hi: int) -> np.ndarray:
    """Feature columns of the pose code and the changes at offsets lo..hi (within span)."""
    blocks = [np.arange(pose_dim)]
    for j, k in enumerate(range(span[0], span[1] + 1)):
        if lo <= k <= hi:
            blocks.append(pose_dim * (j + 1) + np.arange(pose_dim))
    return np.concatenate(blocks)


def _sums(x: np.ndarray, y: np.ndarray) -> list:
    return [x.T @ x, x.sum(0), x.T @ y, y.sum(0), len(x)]


def _solve(sxx, sx, sxy, sy, n, alpha):  # noqa: ANN001, ANN202
    """Ridge from sufficient statistics (centred; the penalty scales with the rows)."""
    xm, ym = sx / n, sy / n
    gram = sxx - n * np.outer(xm, xm)
    w = np.linalg.solve(gram + alpha * n * np.eye(len(xm)), sxy - n * np.outer(xm, ym))
    return w, ym - xm @ w


def _loo(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """(leave-one-episode-out MSE, alpha) for every penalty; the per-episode sums make each
    held-out fit one solve. Needs two episodes with rows."""
    sums = [_sums(x, y) for x, y in zip(xs, ys)]
    total = [sum(s[i] for s in sums) for i in range(5)]
    out = []
    for alpha in RIDGE_ALPHAS:
        sse, count = 0.0, 0
        for i, own in enumerate(sums):
            if own[4] == 0:
                continue
            w, b = _solve(*[total[k] - own[k] for k in range(5)], alpha)
            sse += float(((xs[i] @ w + b - ys[i]) ** 2).sum())
            count += ys[i].size
        out.append((sse / count, alpha))
    return out


@dataclasses.dataclass
class PoseLabeller:
    """Linear maps from pose codes and their changes to actions (ridge, fitted on labelled
    episodes). Steps that see every change of the window share one map; a step near a clip's
    start or end gets a map fitted on the same demonstrations over only the changes it has
    (same penalty), never stand-ins for the missing ones."""

    pose_dim: int
    span: tuple[int, int]  # offsets of the pose-code changes read, chosen by cv_mse
    alpha: float
    cv_mse: float  # leave-one-demonstration-out MSE of the chosen window and penalty
    mean: np.ndarray  # (F,) feature standardisation
    scale: np.ndarray  # (F,)
    low: np.ndarray  # (7,) the demonstrations' smallest and largest value per dimension
    high: np.ndarray
    xs: list[np.ndarray]  # the demonstrations' standardised features and actions
    ys: list[np.ndarray]
    maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=dict
    )

    def _map(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns, weight, bias) for steps that see the changes at offsets lo..hi."""
        if (lo, hi) not in self.maps:
            cols = _columns(self.pose_dim, self.span, lo, hi)
            x, y = [], []
            for xe, ye in zip(self.xs, self.ys):
                # the demonstration steps that see at least this window
                elo, ehi = windows(len(xe), self.span)
                keep = (elo <= lo) & (ehi >= hi)
                x.append(xe[np.ix_(keep, cols)])
                y.append(ye[keep])
            w, b = _solve(*_sums(np.concatenate(x), np.concatenate(y)), self.alpha)
            self.maps[(lo, hi)] = (cols, w, b)
        return self.maps[(lo, hi)]

    def raw(self, pose: np.ndarray) -> np.ndarray:
        """(T, 7) unclipped labels of one episode's pose codes."""
        x = (features(np.asarray(pose, np.float64), self.span) - self.mean) / self.scale
        lo, hi = windows(len(pose), self.span)
        out = np.empty((len(pose), self.ys[0].shape[1]))
        for key in sorted(set(zip(lo.tolist(), hi.tolist()))):
            cols, w, b = self._map(*key)
            rows = (lo == key[0]) & (hi == key[1])
            out[rows] = x[np.ix_(rows, cols)] @ w + b
        return out

    def label(self, pose: np.ndarray) -> np.ndarray:
        """(T, 7) labels of one episode's pose codes, within the demonstrations' range per
        dimension; the gripper snapped to the nearer of its two extremes (open or closed,
        whatever the data's convention)."""
        raw = self.raw(pose)
        out = np.clip(raw, self.low, self.high)
        g_lo, g_hi = self.low[GRIPPER], self.high[GRIPPER]
        out[:, GRIPPER] = np.where(raw[:, GRIPPER] >= (g_lo + g_hi) / 2.0, g_hi, g_lo)
        return out


def fit_labeller(
    poses: Sequence[np.ndarray],
    actions: Sequence[np.ndarray],
    spans: Sequence[tuple[int, int]] = WINDOWS,
) -> PoseLabeller:
    """Fit on labelled episodes ((T, pose_dim) pose codes and (T, 7) actions each). The window
    of changes and the ridge penalty are the pair with the lowest leave-one-episode-out MSE
    over the steps that see the whole window (with one episode: the widest window it can see
    and the smallest penalty)."""
    if len(poses) != len(actions) or not poses:
        raise ValueError("need the same number (>= 1) of pose-code and action arrays")
    poses = [np.asarray(p, np.float64) for p in poses]
    ys = [np.asarray(a, np.float64) for a in actions]
    longest = max(len(p) for p in poses)
    seen = [s for s in spans if longest >= s[1] - s[0] + 2]
    if not seen:
        raise ValueError(
            f"the labelled episodes are too short: the labeller needs one of at least "
            f"{min(s[1] - s[0] for s in spans) + 2} steps"
        )
    best = None
    for span in seen:
        feats = [features(p, span) for p in poses]
        x_all = np.concatenate(feats)
        mean, scale = x_all.mean(0), x_all.std(0) + 1e-8
        xs = [(f - mean) / scale for f in feats]
        full = []
        for p, x, y in zip(poses, xs, ys):
            lo, hi = windows(len(p), span)
            keep = (lo == span[0]) & (hi == span[1])
            full.append((x[keep], y[keep]))
        if sum(len(x) > 0 for x, _ in full) >= 2:
            cv, alpha = min(_loo([x for x, _ in full], [y for _, y in full]))
        else:
            cv, alpha = float("nan"), RIDGE_ALPHAS[0]
        rank = cv if np.isfinite(cv) else np.inf
        if best is None or rank <= best[0]:  # a tie goes to the wider window
            best = (rank, alpha, span, mean, scale, xs)
    rank, alpha, span, mean, scale, xs = best
    cv = rank if np.isfinite(rank) else float("nan")
    y_all = np.concatenate(ys)
    return PoseLabeller(
        poses[0].shape[1], span, alpha, cv, mean, scale, y_all.min(0), y_all.max(0), xs, ys
    )


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
    poses, actions = [], []
    for s in labelled:
        poses.append(pose_codes(wm, s))
        actions.append(s.read(0, s.length, cameras=(), actions=True, proprio=False)["actions"])
    labeller = fit_labeller(poses, actions)
    space = next(iter(spaces))
    out = [LabelledSource(c, labeller.label(pose_codes(wm, c)), space) for c in clips]
    info = {
        "window": list(labeller.span),
        "alpha": labeller.alpha,
        "cv_mse": labeller.cv_mse if np.isfinite(labeller.cv_mse) else None,
        "fit_episodes": len(labelled),
        "fit_steps": int(sum(len(a) for a in actions)),
    }
    return out, info
