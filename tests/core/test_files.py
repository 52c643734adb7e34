"""lawm_core.files: folders written atomically with the project's modes."""

from __future__ import annotations

import os
import stat

import pytest

from lawm_core.files import DIR_MODE, FILE_MODE, atomic_dir


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_dir_replaces_the_old_folder_with_readable_modes(tmp_path):
    target = tmp_path / "bag"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as new:
        assert not new.exists()  # the writer makes it (rosbag2 writers insist)
        new.mkdir()
        (new / "sub").mkdir()
        (new / "sub" / "data.db3").write_bytes(b"x")
        assert (target / "old.txt").exists()  # readers still see the old folder
    assert not (target / "old.txt").exists()
    assert (target / "sub" / "data.db3").read_bytes() == b"x"
    assert _mode(target) == DIR_MODE and _mode(target / "sub") == DIR_MODE
    assert _mode(target / "sub" / "data.db3") == FILE_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # no temporaries left


def test_atomic_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError), atomic_dir(target) as new:
        new.mkdir()
        (new / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
