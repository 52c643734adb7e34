"""``view``: a dataset episode as MCAP (read back with the mcap reader) and as a Rerun
recording (checked with the Rerun SDK's own ``rrd`` reader where rerun-sdk is installed)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader

from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm_core import contract

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "training/train.py"), "view", *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "RERUN_ANALYTICS": "0"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_hdf5(
        tmp_path_factory.mktemp("view") / "d.hdf5", episodes=3, length=14, image_size=32
    )


def _messages(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with open(path, "rb") as f:
        for schema, channel, msg in make_reader(f).iter_messages():
            assert schema.encoding == "jsonschema" and channel.message_encoding == "json"
            body = json.loads(msg.data)
            body["_t"] = msg.log_time
            out.setdefault(channel.topic, []).append(body)
    return out


def test_view_writes_an_mcap_episode_foxglove_reads(data, tmp_path):
    out = tmp_path / "ep1.mcap"
    r = _cli("--data", data, "--episode", 1, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    src = open_sources(data)[1]
    ep = src.read(0, src.length)
    msgs = _messages(out)
    assert msgs["/instruction"][0]["text"] == src.instruction
    for cam in contract.CAMERAS:
        frames = msgs[f"/camera/{cam}"]
        assert len(frames) == src.length and frames[0]["format"] == "png"
        png = np.frombuffer(base64.b64decode(frames[5]["data"]), np.uint8)
        img = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(img, ep["images"][cam][5])  # lossless
    actions = np.array([[m[k] for k in ("dx", "dy", "dz", "droll", "dpitch", "dyaw",
                                        "gripper")] for m in msgs["/action"]])  # fmt: skip
    np.testing.assert_allclose(actions, ep["actions"], atol=1e-6)
    proprio = np.array([[m[k] for k in src.proprio_layout] for m in msgs["/proprio"]])
    np.testing.assert_allclose(proprio, ep["proprio"], atol=1e-6)
    times = np.array([m["_t"] for m in msgs["/action"]])
    assert np.all(np.diff(times) == 50_000_000)  # 20 Hz, the data's rate


def test_view_refuses_bad_requests_in_one_line(data, tmp_path):
    r = _cli("--data", data, "--episode", 7, "--out", tmp_path / "x.mcap")
    assert r.returncode == 2 and "3 episodes" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--data", data, "--out", tmp_path / "x.mp4")
    assert r.returncode == 2 and ".mcap or .rrd" in r.stderr


def test_view_writes_a_rerun_recording(data, tmp_path):
    pytest.importorskip("rerun", reason="rerun-sdk is optional (make setup-viewer)")
    out = tmp_path / "ep0.rrd"
    r = _cli("--data", data, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    blob = out.read_bytes()
    assert len(blob) > 10_000
    for entity in ("/cameras/agentview", "/cameras/eye_in_hand", "/action/dx",
                   "/proprio/ee_x", "/instruction"):  # fmt: skip
        assert entity.encode() in blob, entity
    printed = subprocess.run(
        [sys.executable, "-m", "rerun", "rrd", "print", str(out)], capture_output=True,
        text=True, timeout=120, env={**os.environ, "RERUN_ANALYTICS": "0"},
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "StoreInfo" in printed.stdout
