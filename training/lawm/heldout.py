"""Held-out evaluation of a fine-tuned policy, shared by ``bench/learning.py`` and the demo.

- ``first_per_task``: the first N labelled episodes of each instruction (the demonstrations a
  run fine-tunes on; the rest of a file can then be held out).
- ``heldout_mse``: per-episode action MSE in raw action units (the policy's chunk denormalised
  with its own statistics, against the recorded chunk), so policies trained on different data,
  hence with different normalisers, are compared in the same units.
- ``bootstrap_mean_ci``: percentile bootstrap interval of a mean over episodes.
- ``input_reliance``: how much that error grows when the images, or the proprio, of each
  window are replaced by another held-out window's: a policy that leans on the arm's own state
  more than on what it sees can fit the demonstrations and still miss the object in closed
  loop, where the state leaves the demonstrations' path.
- ``input_sensitivity``: how far the policy's actions move when every camera image is shifted
  by a few pixels, or the end-effector position in the proprio is off by a centimetre: the
  small changes closed loop brings, asked of the held-out windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lawm import keys
from lawm.checkpoint import load_policy
from lawm.data import WindowDataset, collate
from lawm.models.policy import policy_inputs
from lawm.trainer import LangTable
from lawm_core import contract

CI_LEVEL = 0.95
N_BOOT = 4000
SWAPS = (None, "images", "proprio")


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = N_BOOT, level: float = CI_LEVEL, seed: int = 0
) -> list[float]:
    """Percentile bootstrap interval [low, high] of the mean of ``values`` (one value per
    held-out episode), resampling the values with replacement. A single value gives [v, v]."""
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need a non-empty 1-D list of values, got shape {x.shape}")
    if len(x) == 1:
        return [float(x[0]), float(x[0])]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def first_per_task(sources: list, n: int) -> list:
    """The first ``n`` episodes of each instruction, in file order (LIBERO files are in
    (task, init state) order, so these are the lowest init states)."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        task = " ".join(s.instruction.split())
        if seen.get(task, 0) < n:
            seen[task] = seen.get(task, 0) + 1
            out.append(s)
    return out


def _heldout_windows(policy_dir: Path, sources: list, lang_cache: Path | None, stride: int):
    """(the policy in eval mode, its fine-tuning windows over ``sources``, their language
    table, the index of every ``stride``-th window): what each held-out figure reads."""
    policy, cfg, _ = load_policy(policy_dir)
    policy.eval()
    pc = cfg.policy
    dataset = WindowDataset(
        sources, pc.cameras, pc.image_size, pc.chunk_size, mode="finetune",
        proprio_dim=pc.proprio_dim,
    )  # fmt: skip
    lang = LangTable([s.instruction for s in sources], lang_cache, pc.lang_dim)
    return policy, dataset, lang, np.arange(0, len(dataset), stride)


def _batch(dataset: WindowDataset, lang: LangTable, rows: np.ndarray) -> dict:
    """The windows ``rows`` collated, with their instructions' embeddings."""
    batch = collate([dataset[int(i)] for i in rows])
    batch[keys.LANG] = lang(batch[keys.INSTRUCTION])
    return batch


@torch.no_grad()
def heldout_mse(
    policy_dir: Path,
    sources: list,
    *,
    lang_cache: Path | None = None,
    stride: int = 1,
    batch_size: int = 64,
    swap: str | None = None,
    seed: int = 0,
) -> list[float]:
    """Per-episode action MSE in raw action units of the policy's chunk (denormalised with its
    own statistics) against the recorded chunk, over the valid steps of every
    ``stride``-th window of each held-out episode. One value per source, in order.

    swap: None, or "images" / "proprio": that input of every window is taken from another
    evaluated window, drawn by a permutation seeded by ``seed``."""
    if swap not in SWAPS:
        raise ValueError(f"swap must be one of {SWAPS}, got {swap!r}")
    policy, dataset, lang, index = _heldout_windows(policy_dir, sources, lang_cache, stride)
    episode = np.array([dataset.locate(int(i))[0] for i in index])
    donor = index[np.random.default_rng(seed).permutation(len(index))]
    sse = np.zeros(len(sources))
    count = np.zeros(len(sources))
    for start in range(0, len(index), batch_size):
        rows = index[start : start + batch_size]
        batch = _batch(dataset, lang, rows)
        inputs = policy_inputs(batch)
        if swap is not None:  # only the swapped input is read from the other windows
            other = _batch(dataset, lang, donor[start : start + batch_size])
            inputs[swap] = policy_inputs(other)[swap]
        pred = policy.unnormalize_actions(policy(**inputs))
        mask = batch[keys.ACTION_MASK].to(pred.dtype)[..., None]
        sq = ((pred - batch[keys.ACTIONS].to(pred.dtype)) ** 2 * mask).sum(dim=(1, 2))
        n = mask.sum(dim=(1, 2)) * pred.shape[-1]
        np.add.at(sse, episode[start : start + len(rows)], sq.numpy())
        np.add.at(count, episode[start : start + len(rows)], n.numpy())
    if (count == 0).any():
        raise ValueError(f"{int((count == 0).sum())} held-out episode(s) have no window")
    return (sse / count).tolist()


def input_reliance(
    policy_dir: Path,
    sources: list,
    *,
    lang_cache: Path | None = None,
    stride: int = 1,
    clean: Sequence[float] | None = None,
) -> dict[str, float]:
    """Held-out action MSE with each window's images, or its proprio, taken from another
    held-out window, as a multiple of the MSE with its own (``clean``: that per-episode MSE if
    already computed). {"images": ratio, "proprio": ratio}; 1 means the policy ignores it."""
    kw = {"lang_cache": lang_cache, "stride": stride}
    base = float(np.mean(clean if clean is not None else heldout_mse(policy_dir, sources, **kw)))
    return {
        what: float(np.mean(heldout_mse(policy_dir, sources, swap=what, **kw))) / base
        for what in ("images", "proprio")
    }


SHIFT_PX = 2  # image shift of input_sensitivity (pixels, down and right)
EE_POS_NOISE = 0.01  # end-effector position noise of input_sensitivity (m, per axis)


@torch.no_grad()
def input_sensitivity(
    policy_dir: Path,
    sources: list,
    *,
    lang_cache: Path | None = None,
    stride: int = 4,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Mean squared change of the policy's chunk (raw action units, valid steps) on every
    ``stride``-th held-out window when each camera image is shifted by ``SHIFT_PX`` pixels
    ("image_shift", wrapping at the border) or Gaussian noise of ``EE_POS_NOISE`` is added to
    the end-effector position in the proprio ("ee_position"); "clean_mse": the unperturbed
    chunk's MSE against the recorded one, for scale."""
    policy, dataset, lang, index = _heldout_windows(policy_dir, sources, lang_cache, stride)
    gen = torch.Generator().manual_seed(seed)
    sums = {"clean_mse": 0.0, "image_shift": 0.0, "ee_position": 0.0}
    count = 0.0
    for start in range(0, len(index), batch_size):
        batch = _batch(dataset, lang, index[start : start + batch_size])
        inputs = policy_inputs(batch)
        clean = policy.unnormalize_actions(policy(**inputs))
        shifted = dict(inputs)
        shifted["images"] = {
            c: torch.roll(v, shifts=(SHIFT_PX, SHIFT_PX), dims=(-2, -1))
            for c, v in inputs["images"].items()
        }
        moved = dict(inputs)
        noise = torch.zeros_like(inputs["proprio"])
        noise[:, : contract.EE_POS_DIM] = (
            torch.randn(noise.shape[0], contract.EE_POS_DIM, generator=gen) * EE_POS_NOISE
        )
        moved["proprio"] = inputs["proprio"] + noise
        mask = batch[keys.ACTION_MASK].to(clean.dtype)[..., None]
        target = batch[keys.ACTIONS].to(clean.dtype)
        sums["clean_mse"] += float(((clean - target) ** 2 * mask).sum())
        for name, inp in (("image_shift", shifted), ("ee_position", moved)):
            pred = policy.unnormalize_actions(policy(**inp))
            sums[name] += float(((pred - clean) ** 2 * mask).sum())
        count += float(mask.sum()) * clean.shape[-1]
    if count == 0:
        raise ValueError("no held-out window to perturb")
    return {k: v / count for k, v in sums.items()}
