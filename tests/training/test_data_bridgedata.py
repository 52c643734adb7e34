"""BridgeData v2 trajectory folders (lawm.data.bridgedata) written here."""

from __future__ import annotations

import pickle

import pytest
from datafiles import AV, bridgedata_traj, decoded_close

from lawm.data import detect_format, open_sources


def test_bridgedata_frames_and_language_without_touching_pickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a .pkl file was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    group = tmp_path / "bridge" / "toykitchen1" / "put_pot_in_sink" / "2023-01-01" / "raw"
    a = bridgedata_traj(
        group / "traj_group0" / "traj0", 12, "put the pot in the sink\nconfidence: 1\n", 0
    )
    b = bridgedata_traj(group / "traj_group0" / "traj1", 3, None, 1)
    c = bridgedata_traj(group / "traj_group1" / "traj0", 2, None, 2)
    (group / "traj_group1" / "lang.txt").write_text("\n\nwipe the table\n")
    root = tmp_path / "bridge"
    assert detect_format(root) == "bridgedata"
    with pytest.warns(UserWarning, match="1 of 3 trajectories have no lang.txt"):
        sources = open_sources(root)
    assert [s.length for s in sources] == [12, 3, 2]
    assert [s.instruction for s in sources] == ["put the pot in the sink", "", "wipe the table"]
    assert sources[0].cameras == (AV,) and not sources[0].has_actions
    # im_10 and im_11 come after im_9 (numeric order), within JPEG tolerance.
    decoded_close(sources[0].read(0, 12)["images"][AV], a, tol=6.0)
    decoded_close(sources[1].read(1, 3)["images"][AV], b[1:3], tol=6.0)
    decoded_close(sources[2].read(0, 2)["images"][AV], c, tol=6.0)
