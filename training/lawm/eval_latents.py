"""Offline evaluation of trained policies (latent-action CCA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lawm import keys
from lawm.checkpoint import load_policy, save_policy
from lawm.data import WindowDataset, collate
from lawm.data.base import require_labelled
from lawm.metrics import canonical_correlations, heldout_canonical_correlations
from lawm.models.policy import Policy
from lawm.trainer import LangTable
from lawm_core import contract


@torch.no_grad()
def latent_action_cca(
    policy_dir: Path,
    sources: list,
    *,
    lang_cache: Path | None = None,
    max_windows: int = 5000,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """CCA between the policy's first latent action z[t] and the recorded action a[t].

    sources: labelled episodes held out from pretraining (unlabelled ones raise DataError
    "cca needs labelled episodes"). Returns the canonical correlations
    (descending), their mean, and the sample count.
    """

    require_labelled(sources, "cca", "recorded actions to correlate with")
    policy, cfg, _ = load_policy(policy_dir)
    policy.eval()
    pc = cfg.policy
    dataset = WindowDataset(
        sources,
        pc.cameras,
        pc.image_size,
        pc.chunk_size,
        mode="finetune",
        proprio_dim=pc.proprio_dim,
    )
    idx = np.arange(len(dataset))
    if len(idx) > max_windows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_windows, replace=False))
    lang = LangTable([s.instruction for s in sources], lang_cache, pc.lang_dim)
    latents, actions = [], []
    for start in range(0, len(idx), batch_size):
        batch = collate([dataset[int(i)] for i in idx[start : start + batch_size]])
        z = policy(
            {c: v[:, 0] for c, v in batch[keys.IMAGES].items()},
            batch[keys.PROPRIO][:, 0],
            lang(batch[keys.INSTRUCTION]),
            camera_mask=batch.get("camera_mask"),
            has_proprio=batch.get(keys.HAS_PROPRIO),
        )
        latents.append(z[:, 0].numpy())
        actions.append(batch[keys.ACTIONS][:, 0].numpy())
    z = np.concatenate(latents)
    a = np.concatenate(actions)
    episode = np.array([dataset.locate(int(i))[0] for i in idx])
    # Action dims that never vary (e.g. rotation in planar tasks) carry no signal to correlate.
    varying = np.flatnonzero(a.std(axis=0) > 1e-6)
    if len(varying) == 0:
        raise ValueError("the recorded actions are constant; nothing to correlate")
    corr = canonical_correlations(z, a[:, varying])
    result: dict[str, Any] = {}
    # Held out by episode: fit on even-numbered episodes, correlate on odd-numbered ones.
    fit, test = episode % 2 == 0, episode % 2 == 1
    if fit.sum() > z.shape[1] and test.sum() > 2:
        held = heldout_canonical_correlations(
            z[fit], a[fit][:, varying], z[test], a[test][:, varying]
        )
        result["heldout_correlations"] = [float(c) for c in held]
        result["heldout_mean"] = float(held.mean())
    return {
        **result,
        "correlations": [float(c) for c in corr],
        "action_dims": [contract.ACTION_LAYOUT[i] for i in varying],
        "mean": float(corr.mean()),
        "n_samples": int(len(z)),
        "policy": str(policy_dir),
    }


def untrained_cca(cfg, sources: list, out_dir: Path, *, lang_cache: Path | None = None) -> dict:
    """``latent_action_cca`` of the same architecture untrained (seeded like pretraining): the
    baseline a pretrained policy's CCA is read against. The policy is saved in ``out_dir``."""

    torch.manual_seed(cfg.pretrain.seed)
    save_policy(Path(out_dir), Policy(cfg.policy), cfg, {"stage": "untrained"})
    return latent_action_cca(Path(out_dir), sources, lang_cache=lang_cache)
