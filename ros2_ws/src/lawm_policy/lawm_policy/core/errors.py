"""Error types shared by the runtime core."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """An exported model cannot be used: a file is missing, unreadable, or its sha256, names or
    shapes differ from what its sidecar JSON promises. The message names the file."""
