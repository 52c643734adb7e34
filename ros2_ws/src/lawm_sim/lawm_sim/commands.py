"""Command-line registration of the simulation commands (``generate``, ``eval-sim``).

Each command has its own ``_add_<command>`` helper that builds its subparser; ``register``
calls them all. The simulator modules import robosuite and MuJoCo only when an environment is
built, so ``train.py --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lawm_core.cliargs import UsageError, positive_int
from lawm_sim import libero_env
from lawm_sim.eval_sim import add_parser as add_eval_sim_parser
from lawm_sim.generate import GenerateError, generate, parse_ids


def register(sub: argparse._SubParsersAction) -> None:
    """Add the simulation subcommands to the training CLI's subparsers."""
    _add_generate(sub)
    _add_eval_sim(sub)


def _add_eval_sim(sub: argparse._SubParsersAction) -> None:
    add_eval_sim_parser(sub)


# -- generate -----------------------------------------------------------------------------------
SUITE_CHOICES = ("libero_object", "libero_spatial", "libero_goal", "libero_10", "libero_90")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="scripted LIBERO demonstrations -> LIBERO/robomimic HDF5 (+ mp4, rosbag2, LeRobot)",
        description="Run the scripted experts in the LIBERO simulator from the benchmark's "
        "fixed init states and write the episodes in the official LIBERO HDF5 layout (upright "
        "images). Failed episodes are kept and flagged success=False.",
    )
    p.add_argument("--suite", required=True, choices=SUITE_CHOICES, help="LIBERO suite")
    p.add_argument("--tasks", required=True, help="task ids: '0,3,5', '0-9' or a mix like '0-2,7'")
    p.add_argument(
        "--init-states", default="0-49", help="init state ids, same syntax (default 0-49)"
    )
    p.add_argument("--out", type=Path, required=True, help="output .hdf5 file")
    p.add_argument(
        "--no-render", action="store_true", help="no camera images (fast; actions and state)"
    )
    p.add_argument(
        "--image-size", type=positive_int, default=128, help="square image size (default 128)"
    )
    p.add_argument(
        "--workers", type=positive_int, default=1, help="episode worker processes (default 1)"
    )
    p.add_argument(
        "--mp4-dir",
        type=Path,
        help="also write each successful episode's agentview as <stem>.mp4 + <stem>.txt",
    )
    p.add_argument(
        "--rosbag",
        type=Path,
        metavar="DIR",
        help="also write each successful episode as a rosbag2 (sqlite3) with the bridge topics",
    )
    p.add_argument(
        "--lerobot",
        type=Path,
        metavar="DIR",
        help="also write the successful episodes as one LeRobotDataset v3.0 (AV1 video) in DIR",
    )
    p.add_argument(
        "--max-steps",
        type=positive_int,
        help="cap episodes at this many steps (default: the suite's limit, 300 or 520)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        n = libero_env.n_tasks(args.suite)
        tasks = parse_ids(args.tasks, range(n), "task")
        n_init = min(libero_env.n_init_states(args.suite, t) for t in tasks)
        init_states = parse_ids(args.init_states, range(n_init), "init state")
        summary = generate(
            args.suite,
            tasks,
            init_states,
            args.out,
            render=not args.no_render,
            image_size=args.image_size,
            workers=args.workers,
            mp4_dir=args.mp4_dir,
            rosbag_dir=args.rosbag,
            lerobot_dir=args.lerobot,
            progress=not args.quiet,
            max_steps=args.max_steps,
        )
    except GenerateError as err:
        raise UsageError(str(err)) from None
    print(json.dumps(summary))
    return 0
