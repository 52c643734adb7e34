"""Error types shared by the runtime core."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """An exported model cannot be used: a file is missing, unreadable, or its sha256, names or
    shapes differ from what its sidecar JSON promises. The message names the file."""


class InputError(ValueError):
    """A runtime input (image, proprio, language embedding, action chunk, stamp) is malformed:
    wrong shape, dtype, encoding or size, truncated, or not finite. The message says which
    input and why; the caller drops that input and carries on."""
