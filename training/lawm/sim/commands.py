"""Command-line registration of the simulation commands (``generate``, ``eval-sim``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the simulation subcommands to the training CLI's subparsers."""
