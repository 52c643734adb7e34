"""Training throughput of a preset on any torch device: optimisation steps of the pretraining
and fine-tuning objectives on random batches of the preset's shapes, fp32 and (CUDA) bfloat16
autocast, median step time after one warm-up step.

    python bench/train_throughput.py --presets small,paper [--device cuda] [--reps 4]

Prints one JSON line last. Needs torch and the ``lawm`` training package only (no ROS), so it
also runs on a GPU machine with ``PYTHONPATH=training:ros2_ws/src/lawm_core``. ``bench/run.py``
calls ``measure`` for its CPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import numpy as np
import torch

from lawm import keys
from lawm.config import preset
from lawm.objectives import FinetuneObjective, PretrainObjective

STAGES = (("pretrain", 8), ("finetune", 32))  # (stage, batch): the figures bench/run.py quotes


def _batch(cfg, stage: str, batch: int, device: torch.device) -> dict:
    pc = cfg.policy
    k, s = pc.chunk_size, pc.image_size
    t = k + 1 if stage == "pretrain" else 1
    b = {
        keys.IMAGES: {
            c: torch.randint(0, 256, (batch, t, 3, s, s), dtype=torch.uint8, device=device)
            for c in pc.cameras
        },
        keys.PROPRIO: torch.randn(batch, t, pc.proprio_dim, device=device),
        keys.LANG: torch.randn(batch, pc.lang_dim, device=device),
        "camera_mask": torch.ones(batch, len(pc.cameras), dtype=torch.bool, device=device),
        keys.HAS_PROPRIO: torch.ones(batch, dtype=torch.bool, device=device),
        "frame_mask": torch.ones(batch, t, dtype=torch.bool, device=device),
    }
    if stage == "finetune":
        b[keys.ACTIONS] = torch.rand(batch, k, pc.action_dim, device=device) * 2 - 1
        b[keys.ACTION_MASK] = torch.ones(batch, k, dtype=torch.bool, device=device)
    return b


def measure(
    presets: list[str],
    reps: int,
    device: str = "cpu",
    precisions: tuple[str, ...] = ("fp32",),
    stages: tuple[tuple[str, int], ...] = STAGES,
) -> dict:
    """``train_<preset>_<stage>[_bf16]_{batch,step_s,samples_per_s}`` for each combination."""
    dev = torch.device(device)
    out = {}
    for name in presets:
        cfg = preset(name)
        for stage, batch in stages:
            for precision in precisions:
                torch.manual_seed(0)
                obj = PretrainObjective(cfg) if stage == "pretrain" else FinetuneObjective(cfg)
                obj = obj.to(dev)
                opt = torch.optim.AdamW(obj.parameters(), lr=1e-4)
                b = _batch(cfg, stage, batch, dev)
                autocast = (
                    torch.autocast(dev.type, dtype=torch.bfloat16)
                    if precision == "bf16"
                    else contextlib.nullcontext()
                )
                times = []
                for _ in range(reps + 1):
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with autocast:
                        loss, _ = obj(b)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                step_s = float(np.median(times[1:]))
                tag = f"train_{name}_{stage}" + ("" if precision == "fp32" else f"_{precision}")
                out[f"{tag}_batch"] = batch
                out[f"{tag}_step_s"] = step_s
                out[f"{tag}_samples_per_s"] = batch / step_s
                del obj, opt, b
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="small,paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument(
        "--batches",
        default="",
        help="PRETRAIN,FINETUNE batch sizes (default 8,32, the figures bench/run.py quotes)",
    )
    args = ap.parse_args()
    stages = STAGES
    if args.batches:
        pre, fine = (int(v) for v in args.batches.split(","))
        stages = (("pretrain", pre), ("finetune", fine))
    precisions = ("fp32", "bf16") if args.device.startswith("cuda") else ("fp32",)
    info = {"device": args.device, "machine": platform.machine(), "torch": torch.__version__}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in args.presets.split(","):
        for stage, batch in stages:
            print(f"{name} {stage} batch {batch} on {args.device} ...", flush=True)
    res = measure(args.presets.split(","), args.reps, args.device, precisions, stages)
    for key, value in res.items():
        if key.endswith("samples_per_s"):
            print(f"  {key}: {value:.1f}")
    print(json.dumps({**info, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
