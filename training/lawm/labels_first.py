"""The labels-first recipe: what pretraining gives the policy, by way of labels.

1. The pretrained "kinematic" world model labels the unlabeled clips (``lawm.pseudo_label``:
   a linear map from its pose codes' motion to actions, fitted on the demonstrations).
2. A fresh policy behaviour-clones the labelled clips (as many steps as pretraining).
3. That policy is fine-tuned on the demonstrations, its head reused (it already emits
   actions); with ``rehearse`` the labelled clips stay in the fine-tuning data beside the
   demonstrations, so what stage 2 learned is not overwritten by a few demonstrations.

Why rehearse: on LIBERO-Spatial tasks 0-1 with one demonstration per task, the oracle's first
stage (the clips with their recorded actions) succeeds from 98 of 100 unseen initial states,
and fine-tuning on the 2 demonstrations alone takes it down to 71 of 100; with the clips kept
in the data, 99 of 100 (``bench/learning.py``, arm ``oracle_rehearse``). It is not the default:
rehearsing keeps the labels' errors in the data too. Where they are poor (one demonstration per
task on LIBERO-Spatial, stage 2 alone 0 of 100) it succeeds in 0 of 100; where they are good
but not exact (LIBERO-Object tasks 0-1, three demonstrations per task, arm R^2 0.93, stage 2
alone 60 of 100) in 80 of 100 against 95 of 100 without it (2 runs x 50 unseen states, 0 / 15
discordant). Only exact labels (the oracle) have gained from it so far.

This is the oracle's recipe (clone the clips with their recorded actions, then the
demonstrations) with the world model's labels in place of the recorded ones; the benchmark
(``bench/learning.py``, arm ``labels_first``) measured it against scratch in closed loop. One
definition here serves ``train.py finetune --labels-first``, the benchmark and ``make demo``.

Run layout: stage 2 writes ``OUT/labels_bc/`` (its ``labels.json`` says how the labeller was
fitted), stage 3 ``OUT/`` itself, so ``OUT/policy`` is the policy to export. Both stages resume
when rerun; a finished stage 2 is not labelled or trained again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lawm.checkpoint import CheckpointError
from lawm.config import LawmConfig
from lawm.data.base import EpisodeSource
from lawm.trainer import run_finished, train
from lawm_core.files import atomic_write_text

STAGE_DIR = "labels_bc"


class LabellingError(ValueError):
    """The clips could not be labelled (no usable world model, episodes too short to fit)."""


def bc_config(cfg: LawmConfig, steps: int) -> LawmConfig:
    """``cfg`` with a fine-tuning stage of ``steps`` steps (two checkpoints): behaviour cloning
    of labelled clips before the demonstrations."""
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"behaviour-cloning steps must be a positive integer, got {steps!r}")
    return cfg.replace(
        finetune=dataclasses.replace(
            cfg.finetune, steps=steps, checkpoint_every=max(1, steps // 2)
        )
    )


def train_labels_first(
    cfg: LawmConfig,
    labeller_run: Path,
    demos: Sequence[EpisodeSource],
    clips: Sequence[EpisodeSource],
    out: Path,
    *,
    label_steps: int | None = None,
    rehearse: bool = False,
    say: Callable[[str], None] = print,
    **train_kw: Any,
) -> dict[str, Any]:
    """The recipe above into ``out``: ``labeller_run`` is a pretraining run (its
    ``world_model.safetensors``), ``demos`` labelled episodes, ``clips`` episodes opened without
    actions. ``label_steps``: stage 2's length (default: ``cfg.pretrain.steps``); stage 3 is
    ``cfg.finetune``. ``train_kw`` goes to both ``train`` calls (lang_cache, progress, device,
    gripper, ...). Returns {"labels": the labeller's fit, "bc": stage 2's summary or None when
    it was already done, "finetune": stage 3's summary}. ``rehearse``: stage 3 trains on the
    demonstrations and the labelled clips together (a finished stage 2's clips are labelled
    again, by the same deterministic fit)."""
    from lawm.pseudo_label import label_clips

    if not clips:
        raise ValueError("the labels-first recipe needs unlabeled clips to label")
    if not demos:
        raise ValueError("the labels-first recipe needs labelled demonstrations")
    out = Path(out)
    stage = out / STAGE_DIR
    steps = cfg.pretrain.steps if label_steps is None else label_steps
    bc_cfg = bc_config(cfg, steps)
    bc_summary = None
    labelled = None
    if run_finished(stage):
        info = json.loads((stage / "labels.json").read_text())
        say(f"labels first: behaviour cloning of the labelled clips already done ({stage})")
    else:
        try:
            labelled, info = label_clips(Path(labeller_run), demos, clips)
        except (ValueError, CheckpointError) as err:
            raise LabellingError(str(err)) from err
        info = {"labeller": str(labeller_run), "clips": len(labelled), **info}
        stage.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage / "labels.json", json.dumps(info, indent=1))
        cv = info.get("cv_mse")
        say(
            f"labels first: {len(labelled)} clips labelled by {labeller_run} (window "
            f"{tuple(info['window'])}, ridge {info['alpha']:g}, leave-one-out MSE "
            + (f"{cv:.4g}" if cv is not None else "n/a")
            + f"); a fresh policy clones them for {steps} steps"
        )
        bc_summary = train("finetune", bc_cfg, list(labelled), stage, **train_kw)
    data = list(demos)
    if rehearse and not run_finished(out):
        if labelled is None:
            try:
                labelled, _ = label_clips(Path(labeller_run), demos, clips)
            except (ValueError, CheckpointError) as err:
                raise LabellingError(str(err)) from err
        data += labelled
    say(
        f"labels first: fine-tuning on {len(demos)} demonstrations"
        + (f" and the {len(clips)} labelled clips" if rehearse else "")
        + f" from {stage / 'policy'}"
    )
    summary = train("finetune", cfg, data, out, init=stage / "policy", head="reuse", **train_kw)
    return {"labels": info, "bc": bc_summary, "finetune": summary}
