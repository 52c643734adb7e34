#!/usr/bin/env python3
"""LAWM command line: pretrain, finetune, export, cca, probe, describe, smoke, generate, eval-sim,
demo.

``python training/train.py --help`` lists them; with no command it prints that help.
"""

import sys

from lawm_apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
