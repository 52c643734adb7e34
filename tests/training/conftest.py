"""Fixtures the training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def lang_cache(tmp_path_factory) -> Path:
    """An instruction-embedding cache of the test module's own (filled on first use)."""
    return tmp_path_factory.mktemp("lang") / "cache.safetensors"
