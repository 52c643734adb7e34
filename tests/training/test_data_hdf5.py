"""The LIBERO-layout HDF5 reader (lawm.data.hdf5) on files written here."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from datafiles import AV, EYE, write_libero

from lawm.data import DataError, Hdf5Options, detect_format, open_sources
from lawm_core import contract


def test_hdf5_reads_back_exactly_in_natural_demo_order(tmp_path):
    path = tmp_path / "libero.hdf5"
    stored = write_libero(
        path, lengths=(5, 7, 4), demo_names=["demo_10", "demo_2", "demo_1"], success=[1, 1, 1]
    )
    assert detect_format(path) == "hdf5"
    sources = open_sources(path)
    assert [s.name.rsplit(":", 1)[1] for s in sources] == ["demo_1", "demo_2", "demo_10"]
    src = sources[1]
    rec = stored["demo_2"]
    assert (src.length, src.cameras, src.instruction) == (7, (AV, EYE), "open the drawer")
    assert src.has_actions and src.has_proprio and src.success is True
    out = src.read(2, 6)
    np.testing.assert_array_equal(out["images"][AV], rec[AV][2:6])
    np.testing.assert_array_equal(out["images"][EYE], rec[EYE][2:6])
    np.testing.assert_array_equal(out["actions"], rec["actions"][2:6].astype(np.float32))
    np.testing.assert_array_equal(out["proprio"], rec["proprio"][2:6])
    assert out["actions"].dtype == np.float32 and out["proprio"].shape == (4, 5)
    only = src.read(0, 1, cameras=(EYE,), actions=False, proprio=False)
    assert list(only["images"]) == [EYE] and only["actions"] is None and only["proprio"] is None
    with pytest.raises(IndexError):
        src.read(5, 9)


@pytest.mark.parametrize("convention", ["opengl", None])
def test_hdf5_upside_down_images_are_flipped(tmp_path, convention):
    # Official LIBERO files carry no convention attribute and are rendered upside down.
    path = tmp_path / "official.hdf5"
    stored = write_libero(path, lengths=(3,), convention=convention)
    out = open_sources(path)[0].read(0, 3)
    for cam in (AV, EYE):
        np.testing.assert_array_equal(out["images"][cam], stored["demo_0"][cam][:, ::-1])


def test_hdf5_instruction_from_file_name_and_ee_states(tmp_path):
    path = tmp_path / "KITCHEN_SCENE3_put_the_black_bowl_on_the_plate_demo.hdf5"
    stored = write_libero(path, lengths=(4,), problem_info=False, ee_key="ee_states")
    src = open_sources(path)[0]
    assert src.instruction == "put the black bowl on the plate"
    np.testing.assert_array_equal(src.read(0, 4)["proprio"], stored["demo_0"]["proprio"])


def test_hdf5_success_filter_folder_and_unlabelled(tmp_path):
    write_libero(tmp_path / "a.hdf5", lengths=(3, 3, 3), success=[1, 0, 1])
    write_libero(tmp_path / "b.hdf5", lengths=(2,), with_actions=False)
    with pytest.raises(DataError, match=r"b\.hdf5.*missing key 'actions'"):
        open_sources(tmp_path)  # labelled by default: the unlabeled file is refused
    videos = open_sources(tmp_path, labelled=False)
    assert len(videos) == 3 and not any(s.has_actions for s in videos)
    assert all(s.read(0, 2)["actions"] is None for s in videos)
    assert (
        len(open_sources(tmp_path, labelled=False, options=Hdf5Options(successful_only=False)))
        == 4
    )
    assert [s.success for s in open_sources(tmp_path / "a.hdf5")] == [True, True]


def _drop(path: Path, key: str) -> None:
    with h5py.File(path, "a") as f:
        del f[key]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _drop(p, "data/demo_0/actions"), "missing key 'actions'"),
        (lambda p: _drop(p, "data/demo_1/obs/eye_in_hand_rgb"), "missing camera key"),
        (
            lambda p: [
                _drop(p, f"data/demo_0/obs/{k}") for k in contract.HDF5_IMAGE_KEYS.values()
            ],
            "missing camera key",
        ),
        (lambda p: _drop(p, "data"), "missing key 'data'"),
    ],
)
def test_hdf5_missing_keys_raise_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "broken.hdf5"
    write_libero(path, lengths=(3, 3))
    damage(path)
    with pytest.raises(DataError, match=message) as err:
        open_sources(path)
    assert str(path) in str(err.value)


def test_hdf5_zero_length_shape_mismatch_and_truncation(tmp_path):
    empty = tmp_path / "empty.hdf5"
    write_libero(empty, lengths=(3, 0))
    with pytest.raises(DataError, match="zero-length") as err:
        open_sources(empty)
    assert "empty.hdf5" in str(err.value) and "demo_1" in str(err.value)

    wide = tmp_path / "wide.hdf5"
    write_libero(wide, lengths=(3,))
    with h5py.File(wide, "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros((3, 6))
    with pytest.raises(DataError, match=r"wide\.hdf5.*actions: shape \(3, 6\)"):
        open_sources(wide)

    short = tmp_path / "short.hdf5"
    write_libero(short, lengths=(3,))
    with h5py.File(short, "a") as f:
        del f["data/demo_0/obs/gripper_states"]
        f["data/demo_0/obs/gripper_states"] = np.zeros((2, 2))
    with pytest.raises(DataError, match=r"short\.hdf5.*gripper_states: 2 rows"):
        open_sources(short)

    cut = tmp_path / "cut.hdf5"
    write_libero(cut, lengths=(20, 20), size=(32, 32))
    blob = cut.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as err:
        open_sources(cut)
    assert "cut.hdf5" in str(err.value)
