"""Fitting the action head's last layer to the demonstrations before fine-tuning ("probe" head).

A pretrained policy's head emits latent actions for the world model. Fine-tuning it whole
(``reuse``) starts from saturated outputs of another meaning; a fresh head (``fresh``) starts
from random outputs whose large early gradients flow back into the pretrained trunk and move it
before the head means anything. ``probe`` first fits the head's last linear layer on the frozen
pretrained features (the masked action MSE of ``FinetuneObjective`` through the same tanh, full
batch, with a small ridge penalty), then fine-tunes everything from there: "linear probe, then
fine-tune", which keeps more of what pretraining learned than fine-tuning from a random head.

Deterministic for a given policy and data (windows chosen by a fixed stride, no augmentation,
no dropout); the fit reads action labels, so it belongs to fine-tuning only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from lawm import keys
from lawm.data import collate, to_device
from lawm.models.policy import Policy, policy_inputs

HEAD_INITS = ("reuse", "fresh", "probe")
MAX_WINDOWS = 4096
FIT_STEPS = 400
RIDGE = 1e-3


@torch.no_grad()
def _features(
    policy: Policy, dataset, lang: Callable[[list[str]], Tensor], index: np.ndarray, batch: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(features (N, F), normalised targets (N, K*A), step mask (N, K*A)) of the windows."""
    dev = next(policy.parameters()).device
    feats, targets, masks = [], [], []
    a = policy.cfg.action_dim
    for start in range(0, len(index), batch):
        b = collate([dataset[int(i)] for i in index[start : start + batch]])
        b[keys.LANG] = lang(b[keys.INSTRUCTION])
        b = to_device(b, dev)
        feats.append(policy.head_features(**policy_inputs(b)).float())
        targets.append(policy.normalize_actions(b[keys.ACTIONS].float()).flatten(1))
        masks.append(b[keys.ACTION_MASK].float().repeat_interleave(a, dim=1))
    return torch.cat(feats), torch.cat(targets), torch.cat(masks)


def _masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """FinetuneObjective's MSE: per sample over its valid steps, then the mean of samples."""
    per = ((pred - target).square() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return per.mean()


def fit_head(
    policy: Policy,
    dataset,
    lang: Callable[[list[str]], Tensor],
    *,
    max_windows: int = MAX_WINDOWS,
    steps: int = FIT_STEPS,
    ridge: float = RIDGE,
    batch: int = 64,
) -> dict[str, float]:
    """Fit ``policy.head[-1]`` (weight and bias) to the labelled windows of ``dataset`` on the
    policy's frozen features; returns {"windows", "mse_before", "mse_after"} (normalised
    action MSE over those windows). The rest of the policy is untouched."""
    if len(dataset) == 0:
        raise ValueError("fitting the head needs at least one labelled window")
    was_training = policy.training
    policy.eval()
    try:
        stride = max(1, -(-len(dataset) // max_windows))
        index = np.arange(0, len(dataset), stride)
        phi, y, m = _features(policy, dataset, lang, index, batch)
        last = policy.head[-1]
        w = last.weight.detach().clone().float().requires_grad_(True)
        b = last.bias.detach().clone().float().requires_grad_(True)
        with torch.no_grad():
            before = _masked_mse(torch.tanh(phi @ w.T + b), y, m).item()
        # Full batch: L-BFGS converges in a few dozen iterations on this small convex-ish fit.
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = _masked_mse(torch.tanh(phi @ w.T + b), y, m) + ridge * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            after = _masked_mse(torch.tanh(phi @ w.T + b), y, m).item()
            if not (np.isfinite(after) and after <= before):
                # Never hand fine-tuning a worse start than it had.
                return {"windows": float(len(index)), "mse_before": before, "mse_after": before}
            last.weight.copy_(w.to(last.weight.dtype))
            last.bias.copy_(b.to(last.bias.dtype))
        return {"windows": float(len(index)), "mse_before": before, "mse_after": after}
    finally:
        policy.train(was_training)
