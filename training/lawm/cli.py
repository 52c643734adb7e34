"""Command line for training, export and evaluation (``python training/train.py --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lawm.checkpoint import CheckpointError
from lawm.config import PRESETS, WORLD_MODEL_SIZES, AugmentConfig, ConfigError, LawmConfig, preset
from lawm.data import (
    FORMATS,
    DataError,
    Hdf5Options,
    RosbagOptions,
    detect_format,
    open_sources,
)
from lawm.eval_latents import latent_action_cca
from lawm.export import ExportError, export_policy
from lawm.models.policy import Policy
from lawm.models.world_model import WorldModel
from lawm.smoke import run_smoke
from lawm.trainer import train
from lawm_core import contract
from lawm_core.cliargs import UsageError, existing_path, positive_float, positive_int
from lawm_sim import commands as sim_commands

DEFAULT_LANG_CACHE = Path(".cache") / "lang_embeddings.safetensors"


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        type=existing_path,
        action="append",
        required=required,
        help="dataset file or folder (repeatable): LIBERO/robomimic HDF5, video "
        "folder, Something-Something v2 folder, BridgeData v2 raw, rosbag2",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", *FORMATS],
        help="data format (default: detect from the path)",
    )
    p.add_argument(
        "--image-topic",
        action="append",
        default=[],
        metavar="CAMERA=TOPIC",
        help="rosbag2 only: camera topic, e.g. agentview=/camera/color/image_raw",
    )
    p.add_argument("--action-topic", help="rosbag2 only: recorded action/command topic")
    p.add_argument("--proprio-topic", help="rosbag2 only: proprio topic (Float32MultiArray)")
    p.add_argument("--instruction", help="rosbag2 only: the episode's instruction")
    p.add_argument(
        "--include-failed",
        action="store_true",
        help="also use episodes flagged unsuccessful (default: successful only)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="small",
        choices=sorted(PRESETS),
        help="model and optimisation preset (default: small)",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--steps", type=positive_int, help="optimisation steps (preset default)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size")
    p.add_argument("--grad-accum", type=positive_int, help="gradient accumulation steps")
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warm-up steps")
    p.add_argument("--workers", type=int, help="data-loader worker processes")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--log-every", type=positive_int, help="steps between metrics.jsonl lines")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start from scratch even if --out holds a checkpoint",
    )
    p.add_argument(
        "--lang-cache",
        type=Path,
        default=DEFAULT_LANG_CACHE,
        help="instruction embedding cache (safetensors)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _opt_overrides(args: argparse.Namespace) -> dict:
    out = {}
    for flag, field in [
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("warmup", "warmup_steps"),
        ("workers", "num_workers"),
        ("grad_accum", "grad_accum"),
        ("checkpoint_every", "checkpoint_every"),
        ("seed", "seed"),
        ("log_every", "log_every"),
    ]:
        value = getattr(args, flag, None)
        if value is not None:
            out[field] = value
    return out


def build_config(args: argparse.Namespace, stage: str) -> LawmConfig:
    cfg = preset(args.preset)
    wm_changes = {}
    if getattr(args, "world_model_size", None):
        wm_changes["size"] = args.world_model_size
        wm_changes["deter"] = 0
    if getattr(args, "gru", None):
        wm_changes["gru"] = args.gru
    if getattr(args, "wm_all_cameras", False):
        wm_changes["cameras"] = cfg.policy.cameras
    if getattr(args, "wm_proprio", False):
        wm_changes["use_proprio"] = True
    if wm_changes:
        cfg = cfg.replace(world_model=dataclasses.replace(cfg.world_model, **wm_changes))
    if getattr(args, "no_augment", False):
        cfg = cfg.replace(augment=AugmentConfig(color_jitter=0.0, random_shift=0))
    if getattr(args, "reference_wm_frames", False):
        cfg = cfg.replace(wm_observe_current=False)
    overrides = _opt_overrides(args)
    if overrides:
        opt = getattr(cfg, stage)
        cfg = cfg.replace(**{stage: dataclasses.replace(opt, **overrides)})
    return cfg


def open_data(args: argparse.Namespace, labelled: bool) -> list:
    topics = {}
    for item in args.image_topic:
        if "=" not in item:
            raise UsageError(f"--image-topic expects CAMERA=TOPIC, got {item!r}")
        cam, topic = item.split("=", 1)
        topics[cam] = topic
    rosbag_options = RosbagOptions(
        image_topics=topics or None,
        action_topic=args.action_topic or None,
        proprio_topic=args.proprio_topic or None,
        instruction=args.instruction or None,
    )
    options = {
        "hdf5": Hdf5Options(successful_only=not args.include_failed),
        "rosbag": rosbag_options,
    }
    formats = [detect_format(p) if args.format == "auto" else args.format for p in args.data]
    if rosbag_options != RosbagOptions() and "rosbag" not in formats:
        raise UsageError(
            "--image-topic/--action-topic/--proprio-topic/--instruction apply to rosbag2 data, "
            f"and none of {[str(p) for p in args.data]} is a rosbag2 ({', '.join(formats)})"
        )
    sources = []
    for path, fmt in zip(args.data, formats):
        sources += open_sources(path, fmt, labelled=labelled, options=options.get(fmt))
    if not sources:
        raise UsageError(f"no episodes found in {[str(p) for p in args.data]}")
    return sources


# -- commands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, stage: str) -> int:
    cfg = build_config(args, stage)
    # Pretraining reads images only (labelled=False): the loaders never hand it an action.
    sources = open_data(args, labelled=(stage == "finetune"))
    print(f"[{stage}] {len(sources)} episodes, preset {cfg.preset}, out {args.out}", flush=True)
    summary = train(
        stage,
        cfg,
        sources,
        args.out,
        init=getattr(args, "init", None),
        reinit_head=getattr(args, "reinit_head", False),
        resume=not args.no_resume,
        device=args.device,
        lang_cache=args.lang_cache,
        progress=not args.quiet,
    )
    last = summary["history"][-1] if summary["history"] else {}
    print(
        json.dumps(
            {
                "stage": stage,
                "steps": summary["steps"],
                "run_dir": str(args.out),
                "policy": str(Path(args.out) / "policy"),
                **{k: round(v, 6) for k, v in last.items() if isinstance(v, float)},
            }
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    sidecar = export_policy(
        args.policy,
        args.out,
        opset=args.opset,
        text_encoder=not args.no_text_encoder,
        action_space=args.action_space,
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "onnx_sha256": sidecar.onnx_sha256,
                "parity_max_abs_error": sidecar.parity_max_abs_error,
                "action_space": sidecar.action_space.kind,
            }
        )
    )
    return 0


def cmd_describe(args: argparse.Namespace) -> int:

    cfg = build_config(args, "pretrain")
    with torch.device("meta"):
        policy = Policy(cfg.policy)
        wm = WorldModel(cfg.world_model)

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    info = {
        "preset": cfg.preset,
        "policy_params": count(policy),
        "policy_breakdown": {
            "image_encoder": count(policy.image_encoder),
            "gpt_trunk": count(policy.blocks) + count(policy.ln_f),
            "head": count(policy.head),
            "other": count(policy)
            - count(policy.image_encoder)
            - count(policy.blocks)
            - count(policy.ln_f)
            - count(policy.head),
        },
        "world_model_params": count(wm),
        "world_model_size": cfg.world_model.size,
        "world_model_deter": cfg.world_model.deter_size,
        "world_model_gru": cfg.world_model.gru,
        "chunk_size": cfg.policy.chunk_size,
        "image_size": cfg.policy.image_size,
        "cameras": list(cfg.policy.cameras),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:22s} {v:,}" if isinstance(v, int) else f"{k:22s} {v}")
    return 0


def cmd_cca(args: argparse.Namespace) -> int:
    sources = open_data(args, labelled=True)
    result = latent_action_cca(
        args.policy, sources, lang_cache=args.lang_cache, max_windows=args.max_windows
    )
    for i, c in enumerate(result["correlations"]):
        print(f"canonical correlation {i}: {c:.4f}")
    print(f"mean: {result['mean']:.4f} over {result['n_samples']} samples (in-sample)")
    if "heldout_mean" in result:
        held = ", ".join(f"{c:.4f}" for c in result["heldout_correlations"])
        print(f"held-out episodes: {held}; mean {result['heldout_mean']:.4f}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    result = run_smoke(Path(args.out), preset_name=args.preset, progress=not args.quiet)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


def build_parser(
    extra: Callable[[argparse._SubParsersAction], None] | None = None,
) -> argparse.ArgumentParser:
    """The training CLI; ``extra(subparsers)`` adds the commands of a layer above (the demo)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="LAWM: pretrain a policy on unlabeled video through a world model, "
        "fine-tune it on demonstrations, export it to ONNX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_training_commands(sub)
    _add_tool_commands(sub)
    # Simulation commands (generate, eval-sim) live beside the simulator code.
    sim_commands.register(sub)
    if extra is not None:
        extra(sub)
    return parser


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """pretrain, finetune."""
    p = sub.add_parser("pretrain", help="LAWM pretraining on unlabeled video (no action labels)")
    _add_data_args(p)
    _add_train_args(p)
    p.add_argument(
        "--world-model-size",
        choices=sorted(WORLD_MODEL_SIZES),
        help="RSSM size (paper default 50m)",
    )
    p.add_argument(
        "--gru",
        choices=["dense", "blockdiag"],
        help="dense GRU (the paper's) or the cheaper block-diagonal one",
    )
    p.add_argument(
        "--wm-all-cameras",
        action="store_true",
        help="world model over every camera (beyond the paper)",
    )
    p.add_argument(
        "--wm-proprio",
        action="store_true",
        help="world model also encodes/decodes proprio (beyond the paper)",
    )
    p.add_argument(
        "--reference-wm-frames",
        action="store_true",
        help="feed the world model frames t+1..t+K as the reference code does, instead of t..t+K",
    )
    p.set_defaults(func=lambda a: cmd_train(a, "pretrain"))

    p = sub.add_parser("finetune", help="fine-tune the policy on labelled demonstrations")
    _add_data_args(p)
    _add_train_args(p)
    p.add_argument(
        "--init",
        type=existing_path,
        help="pretrained policy directory or checkpoint (default: from scratch)",
    )
    p.add_argument(
        "--reinit-head",
        action="store_true",
        help="with --init: keep a freshly initialised action head (the pretrained one emits "
        "latent actions, not robot actions)",
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="no colour jitter or random shift (default: the preset's)",
    )
    p.set_defaults(func=lambda a: cmd_train(a, "finetune"))


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """export, cca, describe, smoke."""
    p = sub.add_parser("export", help="export a policy to ONNX + sidecar (+ text encoder)")
    p.add_argument(
        "--policy", type=existing_path, required=True, help="policy directory (run_dir/policy)"
    )
    p.add_argument("--out", type=Path, required=True, help="export directory")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--no-text-encoder",
        action="store_true",
        help="skip text_encoder.onnx (the robot then needs embeddings from elsewhere)",
    )
    p.add_argument(
        "--action-space",
        choices=contract.ACTION_KINDS,
        help="what the policy's actions are: osc_pose_delta (LIBERO/robosuite OSC_POSE deltas, "
        "0.05 m and 0.5 rad per unit per control step) or twist (m/s, rad/s); default: what "
        "the training run recorded from its data (required when it could not tell)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cca", help="canonical correlations of latent vs ground-truth actions")
    p.add_argument(
        "--policy", type=existing_path, required=True, help="pretrained policy directory"
    )
    _add_data_args(p)
    p.add_argument(
        "--max-windows", type=positive_int, default=5000, help="at most this many samples"
    )
    p.add_argument("--lang-cache", type=Path, default=DEFAULT_LANG_CACHE)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    p.set_defaults(func=cmd_cca)

    p = sub.add_parser("describe", help="parameter counts of a preset")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--world-model-size", choices=sorted(WORLD_MODEL_SIZES))
    p.add_argument("--gru", choices=["dense", "blockdiag"])
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("smoke", help="tiny data -> pretrain -> finetune -> export, in minutes")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--preset", default="debug", choices=sorted(PRESETS))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_smoke)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; bad input exits 2 with one line."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (UsageError, ConfigError, DataError, CheckpointError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)
