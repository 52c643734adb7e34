#!/usr/bin/env python3
"""LAWM training CLI: pretrain, finetune, export, cca, describe, smoke (see --help)."""

import sys
from pathlib import Path

# Runnable from a checkout without `pip install -e .` as well.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lawm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
