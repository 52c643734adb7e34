"""Files: written atomically (readers never see half a file) and readable; hashed and verified.

Every artefact (datasets, checkpoints, exported models, reports) goes through ``atomic_path``:
a temporary file beside the target (same folder, hence same filesystem; same suffix, so writers
that go by the extension still work), made world-readable (a robot's service user reads what
training wrote; ``mkstemp`` would leave it private), synced and renamed onto the target. An
exception, or a crash, leaves the old file or none, and at most a hidden ``.<stem>.*`` temporary.
``sha256_file`` / ``verify_file``: the hash an exported model's sidecar records and the check
the runtime makes before loading it. One helper for training, export, recording and the robot.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lawm_core.errors import ModelLoadError

FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(err, path) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(err: OSError, target: Path) -> OSError:
    """The same OSError naming the file being replaced rather than its hidden temporary (what
    a user needs to know when the disk is full); errors without an errno pass unchanged."""
    if err.errno is None:
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno), str(target))


DIR_MODE = 0o755


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a not-yet-existing folder path beside ``path`` (some writers, e.g. rosbag2's, must
    create the folder themselves); when the block succeeds, the folder and its files get the
    project's modes and it replaces ``path`` (an old one is moved aside first, then removed).
    An exception, or a crash, leaves the old folder or none, and at most a hidden temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        new = staging / "new"
        yield new
        for root, _dirs, files in os.walk(new):
            os.chmod(root, DIR_MODE)
            for name in files:
                os.chmod(os.path.join(root, name), FILE_MODE)
        if path.exists():
            os.replace(path, staging / "old")
        os.replace(new, path)
    except OSError as err:
        raise _naming(err, path) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path, expected_sha256: str) -> None:
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
