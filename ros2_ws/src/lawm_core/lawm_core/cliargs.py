"""Command-line helpers shared by every CLI of the project (training, simulation, replay).

``UsageError`` is a bad flag or input: the CLIs print its message on one line, without a
traceback, and exit with code 2. The ``argparse`` types give the same wording everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path


class UsageError(ValueError):
    """A flag or input is invalid; printed without a traceback, exit code 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text!r}")
    return path
