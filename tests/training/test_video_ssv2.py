"""Something-Something v2 as released (lawm.data.video): the labels JSON files beside or above
the video folder, one split at a time; numbered clips without labels; and ``cca`` refusing
unlabelled video (lawm.eval_latents)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from datafiles import AV, decoded_close
from datafiles_formats import write_ssv2_release

from lawm.checkpoint import save_policy
from lawm.config import preset
from lawm.data import DataError, detect_format, open_sources
from lawm.data.video import Ssv2Options
from lawm.eval_latents import latent_action_cca
from lawm.models.policy import Policy

SPLITS = {
    "train": {
        "101": "Pushing [something] from left to right",
        "7": "Putting [something] into [something]",
    },
    "validation": {"55": "Holding [something]"},
    "test": {"9": None},
}


def _ids(sources) -> list[str]:
    return [Path(s.name).stem for s in sources]


@pytest.mark.parametrize("labels_dir, old_names", [("", False), ("labels", True)])
def test_ssv2_release_uses_the_labels_beside_the_videos_and_only_the_train_split(
    tmp_path, labels_dir, old_names
):
    frames = write_ssv2_release(tmp_path, SPLITS, labels_dir=labels_dir, old_names=old_names)
    videos = tmp_path / "20bn-something-something-v2"
    assert detect_format(videos) == "ssv2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = open_sources(videos)
    # Validation (55) and test (9) clips are in the folder, but not in the train split.
    assert _ids(train) == ["7", "101"]
    by_id = {Path(s.name).stem: s for s in train}
    assert by_id["101"].instruction == "pushing something from left to right"
    assert by_id["7"].instruction == "putting something into something"
    assert by_id["101"].cameras == (AV,) and not by_id["101"].has_actions
    decoded_close(by_id["101"].read(0, 4)["images"][AV], frames["101"])

    valid = open_sources(videos, options=Ssv2Options(split="validation"))
    assert _ids(valid) == ["55"] and valid[0].instruction == "holding something"
    assert _ids(open_sources(videos, options=Ssv2Options(split="valid"))) == ["55"]
    with pytest.warns(UserWarning, match="test.json: no clip has a label or template"):
        test = open_sources(videos, format="ssv2", options=Ssv2Options(split="test"))
    assert _ids(test) == ["9"] and test[0].instruction == ""


def test_ssv2_labels_two_levels_up_and_a_missing_split(tmp_path):
    # The videos unpacked one level deeper (data/20bn-.../), the labels at the top.
    write_ssv2_release(tmp_path / "data", {"train": SPLITS["train"]})
    (tmp_path / "data" / "train.json").rename(tmp_path / "train.json")
    videos = tmp_path / "data" / "20bn-something-something-v2"
    assert _ids(open_sources(videos)) == ["7", "101"]
    with pytest.raises(DataError, match=r"no validation.json in .*pass --split with one of train"):
        open_sources(videos, options=Ssv2Options(split="validation"))
    with pytest.raises(DataError, match="split 'dev': expected one of train, validation, test"):
        Ssv2Options(split="dev")


def test_ssv2_split_whose_clips_are_absent_is_refused(tmp_path):
    write_ssv2_release(tmp_path, {"train": {"3": "Holding [something]"}})
    (tmp_path / "validation.json").write_text('[{"id": "4", "template": "Holding [something]"}]')
    videos = tmp_path / "20bn-something-something-v2"
    with pytest.raises(DataError, match=r"none of the 1 clips of .*validation.json is in"):
        open_sources(videos, options=Ssv2Options(split="valid"))


def test_numbered_clips_without_labels_warn_and_get_no_instruction(tmp_path):
    write_ssv2_release(tmp_path, {"train": SPLITS["train"]})
    for name in ("train.json", "labels.json"):
        (tmp_path / name).unlink()
    videos = tmp_path / "20bn-something-something-v2"
    assert detect_format(videos) == "video"
    with pytest.warns(UserWarning, match=r"every clip is named by a number \(e.g. 7.webm\)"):
        sources = open_sources(videos)
    assert [s.instruction for s in sources] == ["", ""]
    # A named clip is an instruction; a single numbered one among them is not.
    (videos / "101.webm").rename(videos / "wave_hello.webm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = open_sources(videos)
    assert [s.instruction for s in named] == ["", "wave hello"]


def test_cca_on_unlabelled_episodes_names_cca(tmp_path):
    write_ssv2_release(tmp_path, {"train": SPLITS["train"]})
    clips = open_sources(tmp_path / "20bn-something-something-v2")
    cfg = preset("debug")
    torch.manual_seed(0)
    save_policy(tmp_path / "policy", Policy(cfg.policy), cfg, {"stage": "pretrain"})
    with pytest.raises(DataError, match=r"^cca needs labelled episodes") as err:
        latent_action_cca(tmp_path / "policy", clips)
    assert "2 of 2 have none" in str(err.value) and "finetune" not in str(err.value)
