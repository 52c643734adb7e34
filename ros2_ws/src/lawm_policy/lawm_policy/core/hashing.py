"""File hashing shared by the model and text-encoder loaders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lawm_policy.core.errors import ModelLoadError


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path | str, expected_sha256: str) -> None:
    """ModelLoadError naming ``path`` if it is missing or its sha256 is not the expected one."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: file missing (expected sha256 {expected_sha256})")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelLoadError(
            f"{path}: sha256 mismatch, expected {expected_sha256}, actual {actual} "
            "(the file changed after export; export again)"
        )
