"""The smoke run: tiny data -> pretrain -> finetune -> export -> CCA, in minutes on a CPU.

Data: a small synthetic set whose frames are driven by the actions (lawm.data.synthetic).
Half of the episodes serve as unlabeled video for pretraining (their actions are never read),
the other half as labelled demonstrations for fine-tuning and as held-out data for CCA.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lawm.config import preset
from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm.eval_latents import latent_action_cca, untrained_cca
from lawm.export import export_policy
from lawm.trainer import train
from lawm_core.files import atomic_write_text


def run_smoke(out: Path, preset_name: str = "debug", progress: bool = True) -> dict[str, Any]:

    out = Path(out)
    cfg = preset(preset_name)
    if preset_name == "debug":
        # Long enough that the curves say something, still about a minute on 2 CPU cores.
        cfg = cfg.replace(
            pretrain=dataclasses.replace(cfg.pretrain, steps=400, checkpoint_every=200),
            finetune=dataclasses.replace(cfg.finetune, steps=400, checkpoint_every=200),
        )
    size = cfg.policy.image_size
    video_file = out / "data" / "video.hdf5"
    demo_file = out / "data" / "demos.hdf5"
    if not video_file.exists():
        write_synthetic_hdf5(video_file, episodes=12, length=40, image_size=size, seed=1)
    if not demo_file.exists():
        write_synthetic_hdf5(demo_file, episodes=8, length=40, image_size=size, seed=2)
    lang_cache = out / "lang_cache.safetensors"

    video = open_sources(video_file, labelled=False)
    demos = open_sources(demo_file, labelled=True)
    pre = train("pretrain", cfg, video, out / "pretrain", lang_cache=lang_cache, progress=progress)
    fine = train(
        "finetune",
        cfg,
        demos,
        out / "finetune",
        init=out / "pretrain" / "policy",
        lang_cache=lang_cache,
        progress=progress,
    )
    sidecar = export_policy(
        out / "finetune" / "policy",
        out / "export",
        data=open_sources(demo_file, labelled=False),
        lang_cache=lang_cache,
        say=lambda line: print(f"[smoke] export: {line}", flush=True) if progress else None,
    )
    cca = latent_action_cca(out / "pretrain" / "policy", demos, lang_cache=lang_cache)
    # The same architecture untrained: what CCA gives without pretraining.
    cca0 = untrained_cca(cfg, demos, out / "untrained" / "policy", lang_cache=lang_cache)

    def first_last(history, key):
        return [round(history[0][key], 5), round(history[-1][key], 5)] if history else None

    result = {
        "preset": preset_name,
        "pretrain_loss_first_last": first_last(pre["history"], "loss"),
        "pretrain_recon_mse_first_last": first_last(pre["history"], "recon_mse"),
        "finetune_action_mse_first_last": first_last(fine["history"], "action_mse"),
        # The head start's fit before fine-tuning (None when resumed or not fitted).
        "finetune_head_fit": fine["head_fit"],
        "cca_mean": round(cca["mean"], 4),
        "cca_heldout_mean": round(cca.get("heldout_mean", float("nan")), 4),
        "cca_heldout_mean_untrained": round(cca0.get("heldout_mean", float("nan")), 4),
        "export": str(out / "export"),
        "onnx_sha256": sidecar.onnx_sha256,
        "parity_max_abs_error": sidecar.parity_max_abs_error,
    }
    atomic_write_text(out / "smoke.json", json.dumps(result, indent=2))
    return result
