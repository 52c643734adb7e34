"""Diagnostics of a policy's latent action chunk on labelled held-out episodes (``probe``).

Pretraining is only useful if the chunk the policy emits carries the motion. These figures
say whether it does, each beside a baseline that tells what it is worth:

- world-model loss (reconstruction + KL, exactly as pretraining computes it) with the policy's
  chunk, with a chunk of the same episode at another time, of another episode (same task), of
  another task, and with zeros; the same sampling noise for every condition (run with a world
  model only);
- open-loop prediction of frames t+1..t+K from frame t driven by the chunk, beside zeros and
  beside copying frame t (world model only);
- the variance split of the chunk: between tasks, between episodes of a task, within episodes
  (and of the true action chunk, for reference);
- held-out linear-probe R^2 of the true action chunk (ridge, fitted on half of the episodes,
  scored on the other half) from the latent chunk, the trunk features (the head's input), the
  same network untrained (fresh weights from a fixed seed, the same normalisation) and proprio
  alone, plus a shuffled-target baseline;
- CCA of the first latent action against the first true action: the first canonical
  correlation per task (the paper's figure), the mean of all correlations (in-sample, as the
  ``cca`` command) and held out, for the chunk, the untrained network, proprio and shuffled
  pairs;
- saturation: the share of latent values beyond |0.9| (tanh head).

JSON keys (``probe --json``): policy, world_model, n_windows, wm_windows, n_episodes, n_tasks,
fit_episodes, test_episodes, seconds, wm_loss, wm_recon, open_loop_mse, variance_split,
probe_r2, cca, saturation. A figure that cannot be computed on the data is null.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lawm import keys
from lawm.checkpoint import CheckpointError, load_policy, load_state_strict, load_tensors
from lawm.data import CAMERA_MASK, FRAME_MASK, DataError, WindowDataset, collate
from lawm.data.base import require_labelled
from lawm.models.policy import Policy, policy_inputs
from lawm.models.world_model import WorldModel
from lawm.objectives import PretrainObjective, _resize_frames
from lawm.probe_stats import (
    cca_figures,
    episode_halves,
    partners,
    ridge_r2,
    select_windows,
    variance_split,
)
from lawm.trainer import LangTable

PROBE_KEYS = tuple(
    "policy world_model n_windows wm_windows n_episodes n_tasks fit_episodes test_episodes "
    "seconds wm_loss wm_recon open_loop_mse variance_split probe_r2 cca saturation".split()
)
CHUNKS = ("policy", "same_episode_other_time", "other_episode", "other_task", "zeros")
FEATURES = ("latent", "trunk", "untrained_latent", "untrained_trunk", "proprio", "shuffled")
SATURATED = 0.9
_STATS = ("action_min", "action_max", "proprio_mean", "proprio_std")


# -- model passes -----------------------------------------------------------------------------
class _GivenChunk(PretrainObjective):
    """The pretraining objective with the chunk handed in (``batch["chunk"]``)."""

    def latent_actions(self, batch: dict) -> torch.Tensor:
        return batch["chunk"]


def _batches(dataset: WindowDataset, index: np.ndarray, batch_size: int, lang: LangTable):
    for s in range(0, len(index), batch_size):
        batch = collate([dataset[int(i)] for i in index[s : s + batch_size]])
        batch[keys.LANG] = lang(batch[keys.INSTRUCTION])
        yield s, batch


@torch.no_grad()
def _policy_outputs(policies: list[Policy], batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(chunk (B, K, A), trunk features (B, D)) of each policy: the trunk feature is the output
    of the final LayerNorm on the action token, the head's input."""
    inputs = policy_inputs(batch)
    out = []
    for policy in policies:
        seen: list[torch.Tensor] = []
        hook = policy.ln_f.register_forward_hook(lambda m, i, o, dest=seen: dest.append(o))
        try:
            z = policy(**inputs)
        finally:
            hook.remove()
        out.append((z.numpy(), seen[-1].numpy()))
    return out


@torch.no_grad()
def _open_loop(cfg, wm: WorldModel, batch: dict, z: torch.Tensor) -> tuple[float, float, float]:
    """Summed per-pixel MSE (in [0, 1] units) of frames predicted open-loop from the first one
    with the chunk, of copying the first frame, and the number of (frame, camera) pairs."""
    wc = cfg.world_model
    frames = {c: _resize_frames(batch[keys.IMAGES][c], wc.image_size) for c in wc.cameras}
    fmask = batch[FRAME_MASK]
    proprio = batch[keys.PROPRIO] if wc.use_proprio else None
    if cfg.wm_observe_current:
        actions = torch.cat([torch.zeros_like(z[:, :1]), z], 1)
    else:  # the reference variant: frames t+1..t+K, z[t] unused
        frames = {c: v[:, 1:] for c, v in frames.items()}
        actions, fmask = z, fmask[:, 1:]
        proprio = proprio[:, 1:] if proprio is not None else None
    lang = batch[keys.LANG] if wc.variant == "motion" else None  # "motion" reads the task
    pred = wm.predict(frames, actions, n_context=1, proprio=proprio, lang=lang)
    present = batch[CAMERA_MASK][:, [cfg.policy.cameras.index(c) for c in wc.cameras]]
    err = copy = count = 0.0
    for i, c in enumerate(wc.cameras):
        target = frames[c].float() / 255.0
        w = (fmask[:, 1:] & present[:, i, None]).float()
        err += float((((pred[c][:, 1:] - target[:, 1:]) ** 2).mean((-3, -2, -1)) * w).sum())
        copy += float((((target[:, :1] - target[:, 1:]) ** 2).mean((-3, -2, -1)) * w).sum())
        count += float(w.sum())
    return err, copy, count


def load_world_model(path: Path, cfg) -> WorldModel:
    wm = WorldModel(cfg.world_model)
    try:
        load_state_strict(wm, load_tensors(path), str(path))
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}; pass --world-model the world_model.safetensors of the run that trained "
            "this policy (RUN/world_model.safetensors)"
        ) from err
    return wm.eval()


def _untrained(policy: Policy, seed: int) -> Policy:
    """The same architecture with fresh weights (seeded) and the trained one's statistics."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = Policy(policy.cfg)
    fresh.set_stats({k: v for k, v in policy.state_dict().items() if k in _STATS})
    return fresh.eval()


def run_probe(
    policy_dir: Path,
    sources: list,
    *,
    world_model: Path | None = None,
    lang_cache: Path | None = None,
    max_windows: int = 512,
    wm_windows: int = 256,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Every diagnostic of the module docstring for the policy in ``policy_dir`` on labelled
    held-out ``sources`` (at most ``max_windows`` windows; the world-model figures on at most
    ``wm_windows`` of them, evenly spread: they cost five world-model passes each).
    ``world_model``: a world_model.safetensors of the same config (None: the world-model
    figures are null). Returns the JSON dictionary (keys ``PROBE_KEYS``)."""
    t0 = time.perf_counter()
    require_labelled(sources, "probe", "the true actions the probes predict")
    policy, cfg, _ = load_policy(policy_dir)
    policy.eval()
    wm = load_world_model(Path(world_model), cfg) if world_model is not None else None
    pc = cfg.policy
    lengths = [s.length for s in sources]
    episode, start = select_windows(lengths, max_windows, seed)
    names = sorted({" ".join(s.instruction.split()) for s in sources})
    task_of = np.array([names.index(" ".join(s.instruction.split())) for s in sources])
    task = task_of[episode]
    if len(np.unique(episode)) < 2:
        raise DataError(
            f"probe needs at least 2 labelled episodes of 3 or more steps (one half of the "
            f"episodes fits the probes, the other scores them); got {len(np.unique(episode))}: "
            "pass --data with more held-out demonstrations"
        )

    def windows(mode: str) -> tuple[WindowDataset, np.ndarray]:
        """The dataset of ``mode`` (finetune: frame t and the actions; pretrain: frames
        t..t+K) and the indices of the chosen windows in it."""
        ds = WindowDataset(
            sources, pc.cameras, pc.image_size, pc.chunk_size, mode,
            with_actions=mode == "finetune", proprio_dim=pc.proprio_dim,
        )  # fmt: skip
        shift = 1 if mode == "pretrain" else 0
        offsets = np.concatenate([[0], np.cumsum([max(n - shift, 0) for n in lengths])])
        return ds, offsets[episode] + start

    lang = LangTable([s.instruction for s in sources], lang_cache, pc.lang_dim)
    untrained = _untrained(policy, cfg.pretrain.seed)

    # Pass 1: the chunks and trunk features of both networks, the actions and proprio.
    z, feat, z0, feat0, actions, proprio = [], [], [], [], [], []
    for _, batch in _batches(*windows("finetune"), batch_size, lang):
        (zb, fb), (z0b, f0b) = _policy_outputs([policy, untrained], batch)
        z.append(zb), feat.append(fb), z0.append(z0b), feat0.append(f0b)
        actions.append(batch[keys.ACTIONS].numpy())
        proprio.append(batch[keys.PROPRIO][:, 0].numpy())
    z, feat, z0, feat0 = (np.concatenate(v) for v in (z, feat, z0, feat0))
    actions, proprio = np.concatenate(actions), np.concatenate(proprio)
    n = len(z)
    fit = episode_halves(episode, task)
    target = actions.reshape(n, -1)
    target = target[:, target.std(0) > 1e-6]
    if target.shape[1] == 0:
        raise DataError("probe: the recorded actions are constant; there is nothing to predict")

    def r2(x: np.ndarray, y: np.ndarray = target) -> float:
        x = x.reshape(n, -1)
        return ridge_r2(x[fit], y[fit], x[~fit], y[~fit], groups=episode[fit])

    rng = np.random.default_rng(seed)
    shuffled = target.copy()
    shuffled[fit] = target[fit][rng.permutation(int(fit.sum()))]
    probe = {
        "latent": r2(z),
        "trunk": r2(feat),
        "untrained_latent": r2(z0),
        "untrained_trunk": r2(feat0),
        "proprio": r2(proprio),
        "shuffled": r2(z, shuffled),
    }
    a0 = actions[:, 0]
    mixed = np.empty(n, np.int64)  # first actions shuffled within each task
    for t in np.unique(task):
        rows = np.flatnonzero(task == t)
        mixed[rows] = rows[rng.permutation(len(rows))]
    cca = {
        "latent": cca_figures(z[:, 0], a0, task, fit),
        "untrained": cca_figures(z0[:, 0], a0, task, fit),
        "proprio": cca_figures(proprio, a0, task, fit),
        "shuffled": cca_figures(z[:, 0], a0[mixed], task, fit),
    }
    result: dict[str, Any] = {
        "policy": str(policy_dir),
        "world_model": str(world_model) if world_model is not None else None,
        "n_windows": n,
        "wm_windows": 0,
        "n_episodes": int(len(np.unique(episode))),
        "n_tasks": int(len(np.unique(task))),
        "fit_episodes": int(len(np.unique(episode[fit]))),
        "test_episodes": int(len(np.unique(episode[~fit]))),
        "wm_loss": None,
        "wm_recon": None,
        "open_loop_mse": None,
        "variance_split": {
            "latent": variance_split(z, task, episode),
            "actions": variance_split(actions, task, episode),
        },
        "probe_r2": probe,
        "cca": cca,
        "saturation": {
            "latent": float((np.abs(z) > SATURATED).mean()),
            "untrained": float((np.abs(z0) > SATURATED).mean()),
        },
    }
    if wm is not None:
        partner = partners(episode, start, task, lengths, rng)
        rows = np.unique(np.linspace(0, n - 1, min(n, wm_windows)).round().astype(int))
        dataset, index = windows("pretrain")
        data = (dataset, index[rows], batch_size, lang)
        with torch.random.fork_rng():
            result.update(_world_model_figures(cfg, wm, policy, data, rows, z, partner, seed))
        result["wm_windows"] = len(rows)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return _finite(result)


def _finite(v: Any) -> Any:
    """``v`` with every non-finite float (a figure the data cannot give) as None."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


@contextmanager
def _embed_once(wm: WorldModel):
    """Within: ``wm.embed`` of the same inputs (the same frame tensors; masks of the same
    values) is computed once; the frames' embedding does not depend on the chunk."""
    cache: dict[tuple, torch.Tensor] = {}

    def key(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            small = v.numel() <= 4096  # masks, rebuilt by every call: by value
            return (v.data_ptr() if not small else v.cpu().numpy().tobytes(), v.shape, v.stride())
        if isinstance(v, dict):
            return tuple((k, key(x)) for k, x in v.items())
        if isinstance(v, (tuple, list)):
            return tuple(key(x) for x in v)
        return v

    def embed(*args: Any, **kwargs: Any) -> torch.Tensor:
        k = key((args, tuple(kwargs.items())))
        if k not in cache:
            cache[k] = WorldModel.embed(wm, *args, **kwargs)
        return cache[k]

    wm.embed = embed  # type: ignore[method-assign]
    try:
        yield
    finally:
        del wm.embed


@torch.no_grad()
def _world_model_figures(cfg, wm, policy, data, rows_of, z, partner, seed):
    """Pass 2, over the windows ``rows_of`` (rows of z): the pretraining loss under each chunk
    condition (the same sampling noise for all), and open-loop prediction errors."""
    objective = _GivenChunk(cfg, policy=policy, world_model=wm).eval()
    zt = torch.from_numpy(z)
    sums = {c: np.zeros(2) for c in CHUNKS}
    counts = dict.fromkeys(CHUNKS, 0)
    ol = np.zeros(4)  # policy, zeros, copy, count
    for s, batch in _batches(*data):
        rows = rows_of[s : s + len(batch[keys.INSTRUCTION])]
        chunks = {"policy": zt[rows], "zeros": torch.zeros_like(zt[rows])}
        for name, other in partner.items():
            if (other[rows] >= 0).all():
                chunks[name] = zt[other[rows]]
        with _embed_once(wm):  # the conditions differ in the chunk only
            for name, chunk in chunks.items():
                torch.manual_seed(seed + s)  # common random numbers across the conditions
                _, metrics = objective({**batch, "chunk": chunk})
                sums[name] += len(rows) * np.array([metrics["loss"], metrics["recon"]])
                counts[name] += len(rows)
        err, copy, count = _open_loop(cfg, wm, batch, chunks["policy"])
        err0, _, _ = _open_loop(cfg, wm, batch, chunks["zeros"])
        ol += [err, err0, copy, count]

    def mean(i: int) -> dict[str, float | None]:
        return {c: (float(sums[c][i] / counts[c]) if counts[c] else None) for c in CHUNKS}

    c = max(ol[3], 1.0)
    return {
        "wm_loss": mean(0),
        "wm_recon": mean(1),
        "open_loop_mse": {"policy": ol[0] / c, "zeros": ol[1] / c, "copy_first": ol[2] / c},
    }


# -- the table --------------------------------------------------------------------------------
LABELS = {
    "policy": "the policy's chunk",
    "same_episode_other_time": "same episode, another time",
    "other_episode": "another episode of the task",
    "other_task": "another task's chunk",
    "zeros": "zeros",
    "copy_first": "copying frame t",
    "latent": "latent chunk",
    "actions": "true action chunk",
    "trunk": "trunk features (head input)",
    "untrained": "untrained network",
    "untrained_latent": "untrained network: chunk",
    "untrained_trunk": "untrained network: trunk",
    "proprio": "proprio alone",
    "shuffled": "shuffled (latent chunk)",
}


def _num(v: Any, percent: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{100 * v:.3f} %" if percent else f"{v:.4f}"


def format_table(r: dict[str, Any]) -> str:
    """The probe's figures as a readable table (``run_probe``'s result)."""
    rows = [
        f"probe of {r['policy']}: {r['n_windows']} windows, {r['n_episodes']} episodes, "
        f"{r['n_tasks']} task(s); probes fitted on {r['fit_episodes']} episodes, scored on "
        f"{r['test_episodes']}",
        "",
    ]
    if r["wm_loss"] is None:
        rows += ["world model: none (--world-model RUN/world_model.safetensors adds its figures)"]
    else:
        head = f"world-model loss ({r['wm_windows']} windows) with"
        rows += [f"{head:<40}{'loss':>12}{'recon':>12}"]
        rows += [
            f"  {LABELS[c]:<38}{_num(r['wm_loss'][c]):>12}{_num(r['wm_recon'][c]):>12}"
            for c in CHUNKS
        ]
        rows += ["open-loop prediction of frames t+1..t+K (MSE per pixel)"]
        rows += [f"  {LABELS[k]:<38}{_num(v):>12}" for k, v in r["open_loop_mse"].items()]
    head = "variance split of the chunk"
    rows += ["", f"{head:<40}{'tasks':>12}{'episodes':>12}{'within':>12}"]
    for name, split in r["variance_split"].items():
        shares = [_num(split[k], True) for k in ("between_tasks", "between_episodes")]
        rows += [f"  {LABELS[name]:<38}" + "".join(f"{v:>12}" for v in shares)]
        rows[-1] += f"{_num(split['within_episode'], True):>12}"
    rows += ["", "held-out linear probe R^2 of the true action chunk (ridge)"]
    rows += [f"  {LABELS[k]:<38}{_num(v):>12}" for k, v in r["probe_r2"].items()]
    head = "CCA, first action vs latent"
    rows += ["", f"{head:<40}{'1st/task':>12}{'mean':>12}{'held-out':>12}  per task"]
    for name, c in r["cca"].items():
        per_task = ", ".join(_num(v) for v in c["first_per_task"])
        nums = "".join(f"{_num(c[k]):>12}" for k in ("first_mean", "mean", "heldout_mean"))
        rows += [f"  {LABELS[name]:<38}{nums}  {per_task}"]
    sat = r["saturation"]
    rows += [
        "",
        f"saturation (|z| > {SATURATED}): latent {_num(sat['latent'], True)}, untrained "
        f"{_num(sat['untrained'], True)}",
        f"{r['seconds']:.1f} s",
    ]
    return "\n".join(rows)
