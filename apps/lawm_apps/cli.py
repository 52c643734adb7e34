"""The project's command line: the training CLI (``lawm.cli``) plus the demo.

``python training/train.py --help`` lists every command. The demo runs ROS 2 nodes, so it lives
here, above training, which never imports rclpy.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lawm.cli import build_parser, run
from lawm.config import PRESETS
from lawm_apps.demo import DEFAULT_CACHE, DEFAULT_OUT, DemoConfig, run_demo
from lawm_core.cliargs import UsageError, positive_int
from lawm_sim.generate import GenerateError, parse_ids


def cmd_demo(args: argparse.Namespace) -> int:
    # Every DemoConfig field has a flag of the same name (tasks: an id list, parsed below).
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DemoConfig)
        if f.name != "tasks" and getattr(args, f.name, None) is not None
    }
    if args.tasks is not None:
        try:
            changes["tasks"] = tuple(parse_ids(args.tasks, range(10), "task"))
        except GenerateError as err:
            raise UsageError(str(err)) from None
    try:
        cfg = DemoConfig(**changes)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        run_demo(
            cfg,
            args.out,
            args.cache,
            evaluate=not args.skip_eval,
            fresh=args.fresh,
            progress=not args.quiet,
        )
    except GenerateError as err:  # e.g. a task without a scripted expert
        raise UsageError(str(err)) from None
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="the end-to-end demo: LIBERO-Object data, pretrain, finetune (LAWM vs scratch), "
        "export, closed loop through ROS 2",
        description="Scripted-expert LIBERO-Object data (cached), LAWM pretraining on unlabeled "
        "clips, two policies from the same demos (LAWM by the labels-first recipe: the world "
        "model labels the clips, a fresh policy clones them, then the demos; and scratch), ONNX "
        "export, latent-action CCA, inference latency, and closed-loop evaluation with the "
        "libero_bridge and policy_node processes. Results under --out.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run directory ({DEFAULT_OUT})")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache ({DEFAULT_CACHE})"
    )
    p.add_argument("--suite", help=f"LIBERO suite (default {d.suite})")
    p.add_argument("--tasks", help=f"task ids, e.g. 0-2 (default {','.join(map(str, d.tasks))})")
    for flag, what in (
        ("demos-per-task", "labelled demonstrations per task"),
        ("clips-per-task", "unlabeled clips per task"),
        ("eval-episodes", "closed-loop episodes per task and model"),
        ("image-size", "rendered image size"),
        ("pretrain-steps", "pretraining steps"),
        ("finetune-steps", "fine-tuning steps (each model)"),
        ("max-steps", "closed-loop horizon in steps"),
        ("workers", "simulator processes for data generation"),
    ):
        field = flag.replace("-", "_")
        p.add_argument(
            f"--{flag}", type=positive_int, help=f"{what} (default {getattr(d, field)})"
        )
    p.add_argument(
        "--eval-init-state",
        type=int,
        help=f"first init state of the closed-loop episodes (default {d.eval_init_state})",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help=f"model preset (default {d.preset})")
    p.add_argument("--skip-eval", action="store_true", help="stop after export, CCA, latency")
    p.add_argument("--fresh", action="store_true", help="discard --out's earlier training runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


# -- parser ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(extra=add_demo), argv)
