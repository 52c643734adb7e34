"""robomimic image datasets and the LIBERO release root (lawm.data.hdf5, lawm.data.formats),
on files written here the way robomimic and LIBERO write them."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
from datafiles import AV, EYE, write_libero
from datafiles_formats import (
    robomimic_env_args,
    robosuite_render,
    write_libero_release,
    write_robomimic,
)

from lawm.data import DataError, Hdf5Options, detect_format, open_sources
from lawm_core import contract

LIFT = "lift the red cube"
SPLITS = {"train": ["demo_0", "demo_2", "demo_3"], "valid": ["demo_1"]}


def _demo(source) -> str:
    return source.name.rsplit(":", 1)[1]


def test_robomimic_image_dataset_reads_upright_frames_proprio_actions_and_the_train_split(
    tmp_path,
):
    path = tmp_path / "image_v15.hdf5"
    stored = write_robomimic(path, lengths=(5, 4, 6, 3), masks=SPLITS)
    assert detect_format(path) == "hdf5"
    sources = open_sources(path, options=Hdf5Options(instruction=LIFT))
    # Only mask/train by default: the validation demo is not trained on.
    assert [_demo(s) for s in sources] == ["demo_0", "demo_2", "demo_3"]
    src = sources[1]
    rec = stored["demo_2"]
    assert (src.length, src.cameras, src.instruction) == (6, (AV, EYE), LIFT)
    assert src.has_actions and src.has_proprio and src.success is None
    assert src.action_space == contract.ACTION_OSC_POSE_DELTA and src.control_rate_hz == 20.0
    out = src.read(1, 5)
    # Upright: the scene's bright top half is at the top, frame for frame.
    np.testing.assert_array_equal(out["images"][AV], rec[AV][1:5])
    np.testing.assert_array_equal(out["images"][EYE], rec[EYE][1:5])
    assert out["images"][AV][:, :8].mean() > out["images"][AV][:, 8:].mean() + 100
    np.testing.assert_array_equal(out["actions"], rec["actions"][1:5].astype(np.float32))
    np.testing.assert_array_equal(out["proprio"], rec["proprio"][1:5])

    def demos(**kw) -> list[str]:
        return [_demo(s) for s in open_sources(path, options=Hdf5Options(instruction=LIFT, **kw))]

    assert demos(split="valid") == demos(split="validation") == ["demo_1"]
    assert demos(split="all") == ["demo_0", "demo_1", "demo_2", "demo_3"]
    with pytest.raises(DataError, match=r"no mask/better \(its filter keys are \['train', "):
        demos(split="better")
    # A file never split has no mask/: every demo, unless a split is asked for by name.
    plain = tmp_path / "unsplit.hdf5"
    write_robomimic(plain, lengths=(2, 2))
    assert len(open_sources(plain, options=Hdf5Options(instruction=LIFT))) == 2
    with pytest.raises(DataError, match=r"unsplit\.hdf5: no mask/valid \(it has no mask/ group"):
        open_sources(plain, options=Hdf5Options(instruction=LIFT, split="valid"))


def test_robomimic_without_an_instruction_is_refused_naming_the_flag(tmp_path):
    path = tmp_path / "lift" / "ph" / "image_v15.hdf5"
    path.parent.mkdir(parents=True)
    write_robomimic(path, lengths=(3,))
    with pytest.raises(DataError, match="--instruction") as err:
        open_sources(path)
    msg = str(err.value)
    assert "image_v15.hdf5" in msg and "no language instruction" in msg and "Lift" in msg
    # Unlabelled (pretraining) opening needs it just the same: never the file name.
    with pytest.raises(DataError, match="--instruction"):
        open_sources(path, labelled=False)
    with pytest.raises(DataError, match="instruction is empty"):
        Hdf5Options(instruction="  ")
    # Demos that carry their own instruction need no flag.
    with h5py.File(path, "a") as f:
        f["data/demo_0"].attrs["language_instruction"] = "lift the cube"
    assert open_sources(path)[0].instruction == "lift the cube"


def test_robomimic_image_convention_default_attribute_and_override(tmp_path):
    # Default: robomimic flipped robosuite's OpenGL render once, the file is upright.
    path = tmp_path / "image.hdf5"
    stored = write_robomimic(path, lengths=(4,))
    upright = stored["demo_0"][AV]
    opts = Hdf5Options(instruction=LIFT)
    np.testing.assert_array_equal(
        open_sources(path, options=opts)[0].read(0, 4)["images"][AV], upright
    )
    # Made with robosuite set to "opencv", robomimic's flip leaves it upside down: the flag
    # turns it back.
    flipped = tmp_path / "opencv_robosuite.hdf5"
    write_robomimic(flipped, lengths=(4,))
    with h5py.File(flipped, "a") as f:
        ds = f["data/demo_0/obs/agentview_image"]
        ds[...] = robosuite_render(ds[()])
    fixed = Hdf5Options(instruction=LIFT, image_convention="opengl")
    np.testing.assert_array_equal(
        open_sources(flipped, options=fixed)[0].read(0, 4)["images"][AV], upright
    )
    # A file that states its convention is read by it.
    stated = tmp_path / "stated.hdf5"
    write_robomimic(stated, lengths=(4,), convention="opengl")
    got = open_sources(stated, options=opts)[0].read(0, 4)["images"][AV]
    np.testing.assert_array_equal(got, upright[:, ::-1])
    # LIBERO files without the attribute stay upside down (LIBERO stores robosuite's render).
    libero = tmp_path / "libero.hdf5"
    rec = write_libero(libero, lengths=(3,), convention=None)
    np.testing.assert_array_equal(
        open_sources(libero)[0].read(0, 3)["images"][AV], rec["demo_0"][AV][:, ::-1]
    )
    with pytest.raises(DataError, match="image convention 'upside'"):
        Hdf5Options(image_convention="upside")


def test_robomimic_files_that_cannot_train_as_claimed_say_so(tmp_path):
    low_dim = tmp_path / "low_dim_v15.hdf5"
    write_robomimic(low_dim, lengths=(3,), cameras=())
    with pytest.raises(DataError, match=r"low_dim_v15\.hdf5.*low_dim dataset.*camera_names"):
        open_sources(low_dim, options=Hdf5Options(instruction=LIFT))

    absolute = tmp_path / "abs.hdf5"
    write_robomimic(absolute, lengths=(3,), env_args=robomimic_env_args(control_delta=False))
    with pytest.warns(UserWarning, match=r"abs\.hdf5: controller OSC_POSE.*--action-space"):
        (src,) = open_sources(absolute, options=Hdf5Options(instruction=LIFT))
    assert src.action_space is None

    old = tmp_path / "v141.hdf5"
    args = robomimic_env_args(control_freq=10, robosuite_version="1.4.1")
    write_robomimic(old, lengths=(3,), env_args=args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (src,) = open_sources(old, options=Hdf5Options(instruction=LIFT))
    assert src.control_rate_hz == 10.0 and src.action_space == contract.ACTION_OSC_POSE_DELTA

    counted = tmp_path / "counted.hdf5"
    write_robomimic(counted, lengths=(3, 3))
    with h5py.File(counted, "a") as f:
        f["data/demo_1"].attrs["num_samples"] = 7
    with pytest.raises(DataError, match=r"demo_1: attrs\['num_samples'\] is 7.*3 frames"):
        open_sources(counted, options=Hdf5Options(instruction=LIFT))

    masked = tmp_path / "masked.hdf5"
    write_robomimic(masked, lengths=(3,), masks={"train": ["demo_0", "demo_9"]})
    with pytest.raises(DataError, match=r"mask/train names demos not in data/: \['demo_9'\]"):
        open_sources(masked, options=Hdf5Options(instruction=LIFT))


def test_libero_file_keeps_its_instruction_and_says_the_flag_is_unused(tmp_path):
    path = tmp_path / "demos.hdf5"
    write_libero(path, lengths=(2,))
    with pytest.warns(UserWarning, match="own instruction 'open the drawer' is used"):
        (src,) = open_sources(path, options=Hdf5Options(instruction="something else"))
    assert src.instruction == "open the drawer"
    # Without problem_info the flag beats the file name.
    bare = tmp_path / "KITCHEN_SCENE1_open_the_drawer_demo.hdf5"
    write_libero(bare, lengths=(2,), problem_info=False)
    assert open_sources(bare)[0].instruction == "open the drawer"
    (src,) = open_sources(bare, options=Hdf5Options(instruction="open the top drawer"))
    assert src.instruction == "open the top drawer"


def test_libero_release_root_with_suite_folders_and_the_suite_filter(tmp_path):
    root = tmp_path / "datasets"
    files = write_libero_release(
        root,
        {
            "libero_spatial": ["pick up the black bowl next to the plate"],
            "libero_object": [
                "pick up the alphabet soup and place it in the basket",
                "pick up the ketchup and place it in the basket",
            ],
        },
    )
    (root / "README.txt").write_text("LIBERO datasets")
    assert detect_format(root) == "hdf5"
    sources = open_sources(root)
    assert len(sources) == 6
    assert [s.instruction for s in sources[::2]] == [
        "pick up the alphabet soup and place it in the basket",
        "pick up the ketchup and place it in the basket",
        "pick up the black bowl next to the plate",
    ]
    assert sources[0].name.startswith(str(files["libero_object"][0].resolve()))
    only = open_sources(root, options=Hdf5Options(suites=("libero_spatial",)))
    assert len(only) == 2 and all("libero_spatial" in s.name for s in only)
    with pytest.raises(
        DataError, match=r"no suite folder \['libero_goal'\]; its suites are \['libero_object'"
    ):
        open_sources(root, options=Hdf5Options(suites=("libero_goal",)))
    with pytest.raises(DataError, match="--suite selects suite folders of a dataset root"):
        open_sources(root / "libero_object", options=Hdf5Options(suites=("libero_object",)))
    with pytest.raises(DataError, match="--suite selects suite folders"):
        open_sources(files["libero_object"][0], options=Hdf5Options(suites=("x",)))
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown data format"):
        open_sources(tmp_path / "nothing")
    with pytest.raises(DataError, match="no .hdf5/.h5 files in the folder or its subfolders"):
        open_sources(tmp_path / "nothing", format="hdf5")
