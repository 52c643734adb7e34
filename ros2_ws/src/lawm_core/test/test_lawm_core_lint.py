"""Lint: ruff over this package's sources (rules, then formatting), with the repository's ruff
settings (the nearest pyproject.toml with a [tool.ruff] table, or ruff.toml, above the package).

Skips, saying why, where ruff is not installed or no such settings are found: the ROS image
copies only ros2_ws/src and carries no ruff. The same file stands in every package's test/
folder; tests/test_colcon_test.py keeps the copies identical and checks that a problem is
reported.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1]
LOCKED = "requirements/lock.txt pins the version `make setup` installs"


def ruff_command() -> list[str] | None:
    """How to run ruff: the Python package's (the one pip installs), else one on PATH."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    return [found] if found else None


def ruff_settings(start: Path) -> Path | None:
    """The ruff configuration file ruff itself would use for ``start``: the nearest one above."""
    for folder in (start, *start.parents):
        for name in (".ruff.toml", "ruff.toml"):
            if (folder / name).is_file():
                return folder / name
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.ruff" in pyproject.read_text(errors="replace"):
            return pyproject
    return None


def ruff_problems(paths: list[Path], settings: Path) -> str:
    """ruff's report on ``paths`` under ``settings``: lint findings, then the formatting
    changes it would make; empty when both are clean.

    ruff runs in the settings' folder: it resolves their relative paths (``src``, the folders
    whose modules count as first-party for import sorting) from where it runs, so this gives
    what ``ruff check`` run there gives, not what it gives run inside a package (where a folder
    such as ``launch/`` would pass for a first-party module)."""
    command = ruff_command()
    assert command is not None, "ruff is not installed"
    config = ["--config", str(settings), "--no-cache"]
    reports = []
    for args in (["check", "--output-format", "concise"], ["format", "--diff"]):
        done = subprocess.run(
            [*command, *args, *config, *(str(p.resolve()) for p in paths)],
            cwd=settings.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            reports.append(f"$ ruff {' '.join(args)}\n{done.stdout}{done.stderr}")
    return "\n".join(reports)


def test_ruff_finds_nothing_in_the_package():
    if ruff_command() is None:
        pytest.skip(f"ruff is not installed, {PACKAGE_DIR.name} not linted ({LOCKED})")
    settings = ruff_settings(PACKAGE_DIR)
    if settings is None:
        pytest.skip(
            f"no ruff settings above {PACKAGE_DIR}, {PACKAGE_DIR.name} not linted (they are "
            "the repository's pyproject.toml [tool.ruff])"
        )
    problems = ruff_problems([PACKAGE_DIR], settings)
    assert not problems, f"{PACKAGE_DIR.name}: ruff with {settings}:\n{problems}"
