"""Command line for training, export and evaluation (``python training/train.py --help``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lawm.board import BoardError
from lawm.checkpoint import CheckpointError, load_policy_config
from lawm.config import (
    PRESETS,
    WORLD_MODEL_SIZES,
    WORLD_MODEL_VARIANTS,
    AugmentConfig,
    ConfigError,
    LawmConfig,
    preset,
)
from lawm.convert import TARGETS, ConvertError, check_out, convert
from lawm.data import (
    FORMATS,
    DataError,
    Hdf5Options,
    LerobotOptions,
    RosbagOptions,
    Ssv2Options,
    detect_format,
    open_sources,
)
from lawm.data.base import skipping_bad
from lawm.data.lerobot import DEFAULT_TOLERANCE_S
from lawm.eval_latents import latent_action_cca
from lawm.export import ExportError, export_policy
from lawm.head_fit import HEAD_INITS
from lawm.models.policy import Policy
from lawm.models.world_model import WorldModel
from lawm.probe import format_table, run_probe
from lawm.quantize import DEFAULT_TOLERANCE
from lawm.smoke import run_smoke
from lawm.trainer import train
from lawm_core import contract
from lawm_core.cliargs import UsageError, existing_path, positive_float, positive_int
from lawm_core.files import atomic_write_text
from lawm_sim import commands as sim_commands

DEFAULT_LANG_CACHE = Path(".cache") / "lang_embeddings.safetensors"


def _add_lang_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lang-cache",
        type=Path,
        default=DEFAULT_LANG_CACHE,
        help="instruction embedding cache (safetensors)",
    )


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        type=existing_path,
        action="append",
        required=required,
        help="dataset file or folder (repeatable): LIBERO/robomimic HDF5, LeRobotDataset "
        "(v3.0, v2.1) root, video folder, Something-Something v2 folder, BridgeData v2 raw, "
        "rosbag2",
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
    p.add_argument(
        "--gripper-topic",
        help="rosbag2 only: gripper command (std_msgs/Float64) of a TwistStamped action topic; "
        "sparse is fine: each step holds its latest value (default: the one topic named "
        "*gripper*)",
    )
    p.add_argument(
        "--proprio-topic",
        help="rosbag2 only: proprio array (Float32MultiArray) in the default layout "
        f"{','.join(contract.PROPRIO_LAYOUT)}",
    )
    p.add_argument(
        "--proprio-pose-topic",
        help="rosbag2 only: end-effector geometry_msgs/PoseStamped as proprio (ee_x, ee_y, ee_z)",
    )
    p.add_argument(
        "--proprio-joint-states-topic",
        help="rosbag2 only: sensor_msgs/JointState topic of --proprio-joints (default: the "
        "bag's one JointState topic)",
    )
    p.add_argument(
        "--proprio-joints",
        metavar="A,B,...",
        help="rosbag2 only: joints whose positions are proprio (joint:A, joint:B, ...), after "
        "the pose's values",
    )
    p.add_argument(
        "--instruction",
        help="the episodes' instruction: rosbag2, and HDF5 files without one (robomimic: "
        "required)",
    )
    p.add_argument(
        "--split",
        help="robomimic HDF5: the mask/<SPLIT> filter key (default train where the file has "
        "one; 'all' for every demo); Something-Something v2: train (default), validation, test",
    )
    p.add_argument(
        "--image-convention",
        choices=["opengl", "opencv"],
        help="HDF5 only: how every file stores its images, opengl (upside down) or opencv "
        "(upright); default: the file's macros_image_convention, else LIBERO opengl, "
        "robomimic opencv",
    )
    p.add_argument(
        "--suite",
        action="append",
        default=[],
        help="HDF5 only: with the LIBERO release root, only this suite folder (repeatable), "
        "e.g. libero_object",
    )
    p.add_argument(
        "--lerobot-camera",
        action="append",
        default=[],
        metavar="CAMERA=KEY",
        help="LeRobotDataset only: which video/image feature is a camera (repeatable), e.g. "
        "agentview=observation.images.image eye_in_hand=observation.images.wrist_image "
        "(default: those names, or image2 for the wrist)",
    )
    p.add_argument(
        "--lerobot-state-key",
        help="LeRobotDataset only: the robot-state feature (default observation.state)",
    )
    p.add_argument(
        "--lerobot-state-layout",
        metavar="NAME,...",
        help="LeRobotDataset only: a proprio name or - (unused) per state value, e.g. "
        "ee_x,ee_y,ee_z,-,-,-,gripper_left,gripper_right (the default for 8 values: "
        "LIBERO's eef position, axis-angle, fingers)",
    )
    p.add_argument(
        "--lerobot-action-key",
        help="LeRobotDataset only: the 7-value action feature (default action or actions)",
    )
    p.add_argument(
        "--video-tolerance",
        type=float,
        metavar="SECONDS",
        help="LeRobotDataset only: how far a decoded video frame may lie from the time its "
        "data row asks for (default 1e-4, lerobot's)",
    )
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
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log to wandb (needs the wandb package; offline unless WANDB_MODE says "
        "otherwise); TensorBoard curves are always written to <out>/tensorboard/",
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start from scratch even if --out holds a checkpoint",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="go on without files and episodes that cannot be read (truncated or corrupt), "
        "each named in one warning and counted in the summary (default: stop at the first, "
        "naming it)",
    )
    _add_lang_cache(p)
    p.add_argument(
        "--control-rate-hz",
        type=positive_float,
        help="the model's control rate; rosbag2 episodes are resampled to steps at it "
        "(default: the preset's, 20 Hz)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_gripper_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gripper-convention",
        choices=contract.GRIPPER_CONVENTIONS,
        help="how the data writes the gripper action: sign (-1 open, +1 closed; LIBERO/HDF5 "
        "data) or width (an opening, with --gripper-open and --gripper-closed); default: what "
        "the data says, else sign",
    )
    p.add_argument(
        "--gripper-open", type=float, help="with width: the value meaning open (e.g. 0.08)"
    )
    p.add_argument(
        "--gripper-closed", type=float, help="with width: the value meaning closed (e.g. 0.0)"
    )


def gripper_flags(args: argparse.Namespace) -> dict | None:
    """The declared gripper convention {"convention", "open", "closed"}, None when no flag is
    given; UsageError for an incomplete or contradictory declaration."""
    conv = getattr(args, "gripper_convention", None)
    open_, closed = getattr(args, "gripper_open", None), getattr(args, "gripper_closed", None)
    if conv is None:
        if open_ is not None or closed is not None:
            raise UsageError(
                f"{args.command}: --gripper-open/--gripper-closed need --gripper-convention "
                "width (sign is always -1 open, +1 closed)"
            )
        return None
    if conv == contract.GRIPPER_SIGN:
        sign = (contract.GRIPPER_OPEN, contract.GRIPPER_CLOSE)
        if (open_ is not None and open_ != sign[0]) or (closed is not None and closed != sign[1]):
            raise UsageError(
                f"{args.command}: --gripper-convention sign means open -1, closed +1; for "
                f"open {open_}, closed {closed} pass --gripper-convention width"
            )
        return {"convention": conv, "open": sign[0], "closed": sign[1]}
    if open_ is None or closed is None or open_ == closed:
        raise UsageError(
            f"{args.command}: --gripper-convention width needs --gripper-open and "
            "--gripper-closed, two different values (e.g. 0.08 and 0.0)"
        )
    return {"convention": conv, "open": open_, "closed": closed}


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
        ("init_lr_scale", "init_lr_scale"),
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
    if getattr(args, "wm_variant", None):
        wm_changes["variant"] = args.wm_variant
    if wm_changes:
        cfg = cfg.replace(world_model=dataclasses.replace(cfg.world_model, **wm_changes))
    if getattr(args, "no_augment", False):
        cfg = cfg.replace(augment=AugmentConfig(color_jitter=0.0, random_shift=0))
    if getattr(args, "proprio_dropout", None) is not None:
        cfg = cfg.replace(
            augment=dataclasses.replace(cfg.augment, proprio_dropout=args.proprio_dropout)
        )
    if getattr(args, "reference_wm_frames", False):
        cfg = cfg.replace(wm_observe_current=False)
    if getattr(args, "pretrain_chunk", None):
        cfg = cfg.replace(pretrain_chunk=args.pretrain_chunk)
    if getattr(args, "control_rate_hz", None):
        cfg = cfg.replace(
            policy=dataclasses.replace(cfg.policy, control_rate_hz=args.control_rate_hz)
        )
    overrides = _opt_overrides(args)
    if overrides:
        opt = getattr(cfg, stage)
        cfg = cfg.replace(**{stage: dataclasses.replace(opt, **overrides)})
    return cfg


_ROSBAG_FLAGS = (
    ("image_topic", "--image-topic"),
    ("action_topic", "--action-topic"),
    ("gripper_topic", "--gripper-topic"),
    ("proprio_topic", "--proprio-topic"),
    ("proprio_pose_topic", "--proprio-pose-topic"),
    ("proprio_joint_states_topic", "--proprio-joint-states-topic"),
    ("proprio_joints", "--proprio-joints"),
)
# flag -> the formats it applies to (besides the rosbag2-only ones above)
_FORMAT_FLAGS = (
    ("instruction", "--instruction", ("rosbag", "hdf5")),
    ("split", "--split", ("hdf5", "ssv2")),
    ("image_convention", "--image-convention", ("hdf5", "lerobot")),
    ("suite", "--suite", ("hdf5",)),
    ("lerobot_camera", "--lerobot-camera", ("lerobot",)),
    ("lerobot_state_key", "--lerobot-state-key", ("lerobot",)),
    ("lerobot_state_layout", "--lerobot-state-layout", ("lerobot",)),
    ("lerobot_action_key", "--lerobot-action-key", ("lerobot",)),
    ("video_tolerance", "--video-tolerance", ("lerobot",)),
)


def lerobot_options(args: argparse.Namespace, command: str) -> LerobotOptions:
    cameras = {}
    for item in getattr(args, "lerobot_camera", None) or []:
        if "=" not in item:
            raise UsageError(f"{command}: --lerobot-camera expects CAMERA=KEY, got {item!r}")
        cam, key = (v.strip() for v in item.split("=", 1))
        cameras[cam] = key
    layout = getattr(args, "lerobot_state_layout", None)
    tolerance = getattr(args, "video_tolerance", None)
    return LerobotOptions(
        cameras=cameras or None,
        state_key=getattr(args, "lerobot_state_key", None) or None,
        state_layout=tuple(v.strip() for v in layout.split(",")) if layout else None,
        action_key=getattr(args, "lerobot_action_key", None) or None,
        tolerance_s=DEFAULT_TOLERANCE_S if tolerance is None else tolerance,
        image_convention=getattr(args, "image_convention", None),
    )


def open_data(
    args: argparse.Namespace,
    labelled: bool,
    control_rate_hz: float | None = None,
    gripper_open: float = contract.GRIPPER_OPEN,
    paths: list | None = None,
) -> list:
    """The episodes of every ``--data`` (or of ``paths``, e.g. ``--label-clips``). rosbag2
    episodes are stepped at ``control_rate_hz`` (None: at their first camera's frames), a
    gripper topic reads ``gripper_open`` before its first message. A format's flags are
    accepted when any input of the command (``--data`` or ``--label-clips``) is in that
    format: demonstrations in HDF5 may come with clips in LeRobot's layout."""
    command = getattr(args, "command", None) or "train.py"
    topics = {}
    for item in args.image_topic:
        if "=" not in item:
            raise UsageError(f"{command}: --image-topic expects CAMERA=TOPIC, got {item!r}")
        cam, topic = item.split("=", 1)
        topics[cam] = topic
    joints = None
    if getattr(args, "proprio_joints", None):
        joints = tuple(j.strip() for j in args.proprio_joints.split(","))
        if not all(joints):
            raise UsageError(
                f"{command}: --proprio-joints expects joint names separated by commas, got "
                f"{args.proprio_joints!r}"
            )
    rosbag_options = RosbagOptions(
        image_topics=topics or None,
        action_topic=args.action_topic or None,
        proprio_topic=args.proprio_topic or None,
        gripper_topic=getattr(args, "gripper_topic", None) or None,
        instruction=args.instruction or None,
        proprio_pose_topic=getattr(args, "proprio_pose_topic", None) or None,
        proprio_joint_states_topic=getattr(args, "proprio_joint_states_topic", None) or None,
        proprio_joints=joints,
        control_rate_hz=control_rate_hz,
        gripper_open=gripper_open,
    )
    options = {
        "hdf5": Hdf5Options(
            successful_only=not args.include_failed,
            instruction=args.instruction or None,
            split=getattr(args, "split", None) or None,
            image_convention=getattr(args, "image_convention", None),
            suites=tuple(getattr(args, "suite", None) or ()),
        ),
        "ssv2": Ssv2Options(split=getattr(args, "split", None) or "train"),
        "rosbag": rosbag_options,
    }
    paths = list(args.data if paths is None else paths)
    every = [*(args.data or []), *(getattr(args, "label_clips", None) or []), *paths]
    inputs = list(dict.fromkeys(every))
    detected = {p: detect_format(p) if args.format == "auto" else args.format for p in inputs}
    formats = [detected[p] for p in paths]
    seen = sorted(set(detected.values()))
    given = [flag for name, flag in _ROSBAG_FLAGS if getattr(args, name, None)]
    if given and "rosbag" not in seen:
        raise UsageError(
            f"{command}: {'/'.join(given)} apply to rosbag2 data, and none of "
            f"{[str(p) for p in inputs]} is a rosbag2 ({', '.join(seen)})"
        )
    for name, flag, applies in _FORMAT_FLAGS:
        if getattr(args, name, None) and not set(applies) & set(seen):
            raise UsageError(
                f"{command}: {flag} applies to {'/'.join(applies)} data, and none of "
                f"{[str(p) for p in inputs]} is ({', '.join(seen)})"
            )
    if "lerobot" in formats:
        options["lerobot"] = lerobot_options(args, command)
    sources = []
    for path, fmt in zip(paths, formats):
        sources += open_sources(path, fmt, labelled=labelled, options=options.get(fmt))
    if not sources:
        raise UsageError(f"{command}: no episodes found in {[str(p) for p in paths]}")
    return sources


def labeller_run(args: argparse.Namespace) -> Path:
    """The pretraining run whose world model labels --label-clips: --labeller, else the run
    that holds --init (RUN/policy or a checkpoint inside RUN)."""
    if args.labeller is not None:
        return Path(args.labeller)
    init = getattr(args, "init", None)
    for parent in [] if init is None else Path(init).resolve().parents:
        if (parent / "world_model.safetensors").is_file():
            return parent
    raise UsageError(
        "--label-clips needs a pretrained world model: pass --labeller RUN (a pretraining run "
        "with world model 'kinematic'), or --init a policy inside such a run"
    )


def open_label_clips(args: argparse.Namespace, cfg, gripper) -> list:
    """The --label-clips episodes, opened without actions (any format --data reads)."""
    return open_data(
        args,
        labelled=False,
        paths=args.label_clips,
        control_rate_hz=cfg.policy.control_rate_hz,
        gripper_open=contract.GRIPPER_OPEN if gripper is None else gripper["open"],
    )


def label_clips_arg(args: argparse.Namespace, demos: list, cfg, gripper) -> list:
    """The --label-clips episodes, opened without actions and labelled by the world model of
    ``labeller_run`` fitted on ``demos``; the fit is written to OUT/labels.json."""
    from lawm.pseudo_label import label_clips

    run = labeller_run(args)
    clips = open_label_clips(args, cfg, gripper)
    try:
        labelled, info = label_clips(run, demos, clips)
    except (ValueError, CheckpointError) as err:
        raise UsageError(f"--label-clips: {err}") from err
    info = {"labeller": str(run), "clips": len(labelled), **info}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "labels.json", json.dumps(info, indent=1))
    cv = info["cv_mse"]
    print(
        f"[finetune] {len(labelled)} clips labelled by {run} (pose-code changes at offsets "
        f"{info['window'][0]}..{info['window'][1]}, ridge alpha {info['alpha']:g}, "
        + (
            "one demonstration: no held-out error)"
            if cv is None
            else f"leave-one-demonstration-out action MSE {cv:.4f})"
        ),
        flush=True,
    )
    return labelled


def check_labels_first_args(args: argparse.Namespace) -> None:
    if not args.label_clips:
        raise UsageError("--labels-first needs the unlabeled clips to label: --label-clips PATH")
    if args.labeller is None:
        raise UsageError(
            "--labels-first needs the pretraining run whose world model labels the clips: "
            "--labeller RUN"
        )
    for flag, name in (("init", "--init"), ("labels_only", "--labels-only")):
        if getattr(args, flag, None):
            raise UsageError(
                f"--labels-first starts from a fresh network and runs both stages itself; "
                f"drop {name}"
            )


def run_labels_first(args, cfg, demos: list, gripper, skipped: list[str]) -> int:
    """finetune --labels-first: ``lawm.labels_first`` into --out (stage 2 in OUT/labels_bc)."""
    from lawm.labels_first import LabellingError, train_labels_first

    clips = open_label_clips(args, cfg, gripper)
    print(
        f"[finetune] labels first: {len(demos)} demonstrations, {len(clips)} clips to label, "
        f"preset {cfg.preset}, out {args.out}",
        flush=True,
    )
    try:
        result = train_labels_first(
            cfg,
            args.labeller,
            demos,
            clips,
            args.out,
            label_steps=args.label_steps,
            rehearse=args.rehearse,
            say=lambda line: print(f"[finetune] {line}", flush=True),
            **train_kwargs(args, gripper),
        )
    except LabellingError as err:
        raise UsageError(f"--labels-first: {err}") from err
    labels = {k: result["labels"].get(k) for k in ("window", "alpha", "cv_mse")}
    print_summary(args, "finetune", result["finetune"], skipped, recipe="labels_first",
                  labels=labels)  # fmt: skip
    return 0


def train_kwargs(args: argparse.Namespace, gripper) -> dict:
    """The ``train`` arguments every training command takes from its flags."""
    return {
        "resume": not args.no_resume,
        "device": args.device,
        "lang_cache": args.lang_cache,
        "progress": not args.quiet,
        "gripper": gripper,
        "wandb": args.wandb,
        "skip_bad": args.skip_bad,
    }


def print_summary(args, stage: str, summary: dict, skipped: list[str], **extra) -> None:
    """The run's last line: one JSON object (stage, steps, where the policy is, last metrics)."""
    skipped += summary["skipped"]
    last = summary["history"][-1] if summary["history"] else {}
    line = {"stage": stage, "steps": summary["steps"], "run_dir": str(args.out),
            "policy": str(Path(args.out) / "policy"), **extra}  # fmt: skip
    if args.skip_bad:
        line["skipped"] = len(skipped)
    line.update({k: round(v, 6) for k, v in last.items() if isinstance(v, float)})
    print(json.dumps(line))


# -- commands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, stage: str) -> int:
    head = getattr(args, "head", None)
    if head is not None and getattr(args, "reinit_head", False) and head != "fresh":
        raise UsageError(f"--reinit-head asks for a fresh head, --head asks for {head!r}")
    if head not in (None, "reuse") and getattr(args, "init", None) is None:
        raise UsageError(f"--head {head} needs --init (a pretrained policy)")
    if getattr(args, "labeller", None) is not None and not args.label_clips:
        raise UsageError("--labeller applies to --label-clips (the clips it labels)")
    if getattr(args, "labels_only", False) and not args.label_clips:
        raise UsageError("--labels-only trains on the --label-clips clips: pass them")
    if getattr(args, "labels_first", False):
        check_labels_first_args(args)
    for flag, name in (("rehearse", "--rehearse"), ("label_steps", "--label-steps")):
        if getattr(args, flag, None) and not getattr(args, "labels_first", False):
            raise UsageError(f"{name} belongs to the labels-first recipe: add --labels-first")
    cfg = build_config(args, stage)
    gripper = gripper_flags(args)
    # Pretraining reads images only (labelled=False): the loaders never hand it an action.
    skipped: list[str] = []
    with skipping_bad(skipped) if args.skip_bad else contextlib.nullcontext():
        sources = open_data(
            args,
            labelled=(stage == "finetune"),
            control_rate_hz=cfg.policy.control_rate_hz,
            gripper_open=contract.GRIPPER_OPEN if gripper is None else gripper["open"],
        )
    for line in skipped:
        print(f"[{stage}] skipping an unreadable file: {line}", file=sys.stderr, flush=True)
    if getattr(args, "labels_first", False):
        return run_labels_first(args, cfg, sources, gripper, skipped)
    if getattr(args, "label_clips", None):
        labelled = label_clips_arg(args, sources, cfg, gripper)
        # --labels-only: the demonstrations fitted the labeller; training sees the clips alone.
        sources = labelled if args.labels_only else sources + labelled
    print(
        f"[{stage}] {len(sources)} episodes at {cfg.policy.control_rate_hz:g} Hz, preset "
        f"{cfg.preset}, out {args.out}",
        flush=True,
    )
    summary = train(
        stage,
        cfg,
        sources,
        args.out,
        init=getattr(args, "init", None),
        reinit_head=getattr(args, "reinit_head", False),
        head=getattr(args, "head", None),
        **train_kwargs(args, gripper),
    )
    print_summary(args, stage, summary, skipped)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    sources = None
    if args.data:
        rate = load_policy_config(args.policy)[0].policy.control_rate_hz
        sources = open_data(args, labelled=False, control_rate_hz=rate)
    else:
        print(
            "[export] no --data: fp32 only (the int8 model and the reference set that lets the "
            "runtime check a lower precision are made from the training data's frames)",
            file=sys.stderr,
            flush=True,
        )
    sidecar = export_policy(
        args.policy,
        args.out,
        opset=args.opset,
        text_encoder=not args.no_text_encoder,
        action_space=args.action_space,
        data=sources,
        lang_cache=args.lang_cache,
        tolerance=args.parity_tolerance,
        say=lambda line: print(f"[export] {line}", flush=True),
    )
    low = sidecar.low_precision
    print(
        json.dumps(
            {
                "out": str(args.out),
                "onnx_sha256": sidecar.onnx_sha256,
                "parity_max_abs_error": sidecar.parity_max_abs_error,
                "action_space": sidecar.action_space.kind,
                "parity_tolerance": None if low is None else low.tolerance,
                "int8_op_types": None if low is None or low.int8 is None else low.int8.op_types,
                "int8_max_abs_error": (
                    None if low is None or low.int8 is None else low.int8.max_abs_error
                ),
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
    rate = None  # bags at the policy's control rate, where its config says it
    if (Path(args.policy) / "config.json").is_file():
        rate = load_policy_config(args.policy)[0].policy.control_rate_hz
    sources = open_data(args, labelled=True, control_rate_hz=rate)
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


def cmd_probe(args: argparse.Namespace) -> int:
    rate = None  # bags at the policy's control rate, where its config says it
    if (Path(args.policy) / "config.json").is_file():
        rate = load_policy_config(args.policy)[0].policy.control_rate_hz
    sources = open_data(args, labelled=True, control_rate_hz=rate)
    world_model = args.world_model
    beside = Path(args.policy).parent / "world_model.safetensors"
    if world_model is None and beside.is_file():
        world_model = beside  # the pretraining run's own world model
    result = run_probe(
        args.policy,
        sources,
        world_model=world_model,
        lang_cache=args.lang_cache,
        max_windows=args.max_windows,
    )
    print(format_table(result), flush=True)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    check_out(args.out, args.force)
    sources = open_data(args, labelled=not args.unlabelled, control_rate_hz=args.control_rate_hz)
    try:
        summary = convert(
            sources, args.out, args.to, fps=args.control_rate_hz, codec=args.codec,
            storage=args.storage, progress=not args.quiet,
        )  # fmt: skip
    except ConvertError as err:
        raise UsageError(f"convert: {err}") from None
    print(
        f"{summary['episodes']} episodes, {summary['frames']} steps at "
        f"{summary['control_rate_hz']:g} Hz -> {summary['out']} ({args.to}) in "
        f"{summary['seconds']:.1f} s"
    )
    print(json.dumps(summary))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from lawm_sim.episode_view import ViewError, write_episode_view

    if args.out.suffix not in (".mcap", ".rrd"):
        raise UsageError(f"view: --out must end in .mcap or .rrd, got {str(args.out)!r}")
    sources = open_data(args, labelled=not args.no_actions, control_rate_hz=args.control_rate_hz)
    if not 0 <= args.episode < len(sources):
        raise UsageError(f"view: --episode {args.episode}: the data has {len(sources)} episodes")
    src = sources[args.episode]
    rate = args.control_rate_hz or src.control_rate_hz or 20.0
    ep = src.read(0, src.length)
    try:
        write_episode_view(
            args.out, ep["images"], src.instruction, rate, actions=ep["actions"],
            proprio=ep["proprio"], proprio_names=src.proprio_layout if src.has_proprio else None,
            name=src.name,
        )  # fmt: skip
    except ViewError as err:
        raise UsageError(f"view: {err}") from None
    print(f"{src.name}: {src.length} steps at {rate:g} Hz, cameras {list(src.cameras)} -> "
          f"{args.out}")  # fmt: skip
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
        "--pretrain-chunk",
        choices=("policy", "shuffled"),
        default=None,
        help="pretraining: the chunk the world model gets, 'policy' (default, LAWM) or "
        "'shuffled' (another window's: a control for 'more optimisation' vs 'trained by the "
        "world model')",
    )
    p.add_argument(
        "--wm-variant",
        choices=WORLD_MODEL_VARIANTS,
        default=None,
        help="how the world model uses the latent chunk: 'paper' (the paper's RSSM filters "
        "frames t..t+K from a learned initial state, never seeing the instruction), 'motion' "
        "(starts from frame t's embedding and the instruction, then predicts t+1..t+K "
        "open-loop driven only by the chunk) or 'kinematic' (a scene code and a pose code from "
        "frame t; each latent action moves the pose code by one shared linear map, frames are "
        "rendered from both). Default: the preset's",
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
        "--head",
        choices=HEAD_INITS,
        help="with --init: how the action head starts. probe (the default): its last layer "
        "fitted to the demonstrations on the frozen pretrained features first (linear probe, "
        "then fine-tune); reuse: the pretrained head as it is (the paper's way; it emits "
        "latent actions, not robot actions); fresh: freshly initialised",
    )
    p.add_argument(
        "--reinit-head",
        action="store_true",
        help="with --init: the same as --head fresh",
    )
    p.add_argument(
        "--init-lr-scale",
        type=positive_float,
        help="with --init: learning-rate factor of the pretrained weights other than the head "
        "(in (0, 1]; default 1)",
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="no colour jitter or random shift (default: the preset's)",
    )
    p.add_argument(
        "--proprio-dropout",
        type=float,
        metavar="P",
        help="fine-tuning: hide the proprio input from a fraction P of the samples, so the "
        "images must carry the scene (default 0)",
    )
    p.add_argument(
        "--label-clips",
        type=existing_path,
        action="append",
        metavar="PATH",
        help="unlabelled clips (any format --data reads; repeatable) to add to the fine-tuning "
        "data, labelled by a pretrained 'kinematic' world model: a linear map from its pose "
        "codes' motion to actions, fitted on the --data demonstrations (their actions are "
        "never read)",
    )
    p.add_argument(
        "--labels-only",
        action="store_true",
        help="with --label-clips: train on the labelled clips alone (the --data demonstrations "
        "only fit the labeller); then fine-tune this policy on the demonstrations (--init "
        "OUT/policy --head reuse): the labels-first recipe",
    )
    p.add_argument(
        "--labels-first",
        action="store_true",
        help="the labels-first recipe in one command (needs --label-clips and --labeller): the "
        "world model labels the clips, a fresh policy clones them (OUT/labels_bc, "
        "--label-steps steps), then fine-tunes on the --data demonstrations with its head "
        "reused (OUT/policy). The benchmark's best method with 3 demonstrations per task",
    )
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="with --labels-first: fine-tune on the demonstrations together with the labelled "
        "clips, so the few demonstrations do not overwrite what cloning the clips gave (with "
        "the clips' true actions: 99/100 vs 71/100 on LIBERO-Spatial with one demonstration "
        "per task, 2 runs x 50 states). Off by default: the labels' errors stay in the data "
        "too (with the world model's labels 80/100 vs 95/100 on LIBERO-Object with three "
        "demonstrations per task, 0/100 on LIBERO-Spatial with one)",
    )
    p.add_argument(
        "--label-steps",
        type=positive_int,
        metavar="N",
        help="with --labels-first: steps of cloning the labelled clips (default: the preset's "
        "pretraining steps)",
    )
    p.add_argument(
        "--labeller",
        type=existing_path,
        metavar="RUN",
        help="with --label-clips: the pretraining run whose world model labels them "
        "(RUN/world_model.safetensors; default: the run of --init)",
    )
    _add_gripper_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, "finetune"))


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """export, cca, probe, describe, smoke."""
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
    _add_data_args(p, required=False)
    _add_lang_cache(p)
    p.add_argument(
        "--parity-tolerance",
        type=positive_float,
        default=DEFAULT_TOLERANCE,
        help="max abs difference from fp32 (normalised actions) a lower precision may show on "
        f"the reference set to run (default and most: {DEFAULT_TOLERANCE})",
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
    _add_lang_cache(p)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    p.set_defaults(func=cmd_cca)

    p = sub.add_parser(
        "probe", help="diagnostics of a policy's latent actions on labelled held-out episodes"
    )
    p.add_argument("--policy", type=existing_path, required=True, help="policy directory")
    _add_data_args(p)
    p.add_argument(
        "--world-model",
        type=existing_path,
        help="world_model.safetensors of the pretraining run (default: the one beside "
        "--policy, if any); adds the world-model loss and open-loop figures",
    )
    p.add_argument(
        "--max-windows",
        type=positive_int,
        default=512,
        help="at most this many windows (default 512; the world-model figures use 256 of them)",
    )
    _add_lang_cache(p)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("describe", help="parameter counts of a preset")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--world-model-size", choices=sorted(WORLD_MODEL_SIZES))
    p.add_argument("--gru", choices=["dense", "blockdiag"])
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser(
        "convert",
        help="a dataset (any format above) -> LeRobotDataset v3.0 or rosbag2",
        description="Reads the episodes through the training loaders (every data flag "
        "applies) and writes them as one LeRobotDataset v3.0 folder (AV1 video) or a folder of "
        "rosbag2 bags with the LIBERO bridge's topics (replayable through the policy node).",
    )
    _add_data_args(p)
    p.add_argument("--to", required=True, choices=list(TARGETS), help="output format")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--control-rate-hz",
        type=positive_float,
        help="step rate (rosbag2 input is resampled at it; default: the data's own rate)",
    )
    p.add_argument("--codec", default="av1", choices=["av1", "h264"], help="LeRobot video codec")
    p.add_argument(
        "--storage", default="sqlite3", choices=["sqlite3", "mcap"], help="rosbag2 storage"
    )
    p.add_argument("--unlabelled", action="store_true", help="images and instructions only")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "view",
        help="one dataset episode as an MCAP file (Foxglove) or a Rerun recording (.rrd)",
        description="Writes the cameras, actions, proprio and instruction of one episode of "
        "any dataset the loaders read on one timeline: FILE.mcap opens in Foxglove, FILE.rrd "
        "in the Rerun viewer (needs rerun-sdk: make setup-viewer).",
    )
    _add_data_args(p)
    p.add_argument("--episode", type=int, default=0, help="which episode (default 0)")
    p.add_argument("--out", type=Path, required=True, help="FILE.mcap or FILE.rrd")
    p.add_argument(
        "--control-rate-hz",
        type=positive_float,
        help="the timeline's step rate (default: the data's own; rosbag2 is resampled at it)",
    )
    p.add_argument("--no-actions", action="store_true", help="video only (e.g. bags without)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("smoke", help="tiny data -> pretrain -> finetune -> export, in minutes")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--preset", default="debug", choices=sorted(PRESETS))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_smoke)


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; bad input exits 2 with one line."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _log_to_stderr()
    try:
        return args.func(args)
    except (UsageError, ConfigError, DataError, CheckpointError, ExportError, BoardError) as err:
        # Every error names the command that ran.
        text = str(err)
        if not text.startswith(f"{args.command}"):
            text = f"{args.command}: {text}"
        print(f"error: {text}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in OUT_OF_SPACE:
            raise
        # Every writer writes beside its target and renames: what was there is still there.
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"error: {args.command}: {os.strerror(err.errno)}{where}; the files written before "
            "are intact (free some space and run the command again)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """The training code's log lines (what was resampled, re-initialised) on stderr."""
    logger = logging.getLogger("lawm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)
