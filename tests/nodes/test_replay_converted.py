"""A LeRobotDataset converted to rosbag2 (``train.py convert --to rosbag``) replays through
``eval_replay`` against an exported model, with the dataset's actions as the reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from replay_bags import eval_replay, read_csv

from lawm.data.synthetic import simulate_episode
from lawm_core import contract
from lawm_sim.lerobot_writer import LerobotWriter
from lawm_sim.recording import ROSBAG_TOPICS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ros
def test_lerobot_to_rosbag_replays_offline(exported_debug_model, tmp_path):
    rng = np.random.default_rng(3)
    writer = LerobotWriter(tmp_path / "lr", fps=20, cameras=contract.CAMERAS)
    episodes = [simulate_episode(rng, i, 2, 12, 64) for i in range(2)]
    for i, ep in enumerate(episodes):
        proprio = np.concatenate([ep["ee_pos"], ep["gripper_states"]], axis=1)
        writer.add(ep["images"], f"push the block, task {i}", ep["actions"], proprio)
    writer.commit()
    r = subprocess.run(
        [sys.executable, str(ROOT / "training/train.py"), "convert", "--data",
         str(tmp_path / "lr"), "--to", "rosbag", "--out", str(tmp_path / "bags"), "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    bag = sorted((tmp_path / "bags").iterdir())[1]
    out = tmp_path / "replay"
    res = eval_replay(
        "--bag", bag, "--out", out, "--offline", "--model-dir", exported_debug_model,
        "--image-topic", f"agentview={ROSBAG_TOPICS['agentview']}",
        "--image-topic", f"eye_in_hand={ROSBAG_TOPICS['eye_in_hand']}",
        "--action-topic", ROSBAG_TOPICS["action"], "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["frames"]["compared"] == 12
    assert report["instruction"] == "push the block, task 1"
    _, recorded, _ = read_csv(out / "predictions.csv")
    np.testing.assert_allclose(recorded, episodes[1]["actions"], atol=1e-6)


@pytest.mark.ros
def test_a_recorders_jpeg_bag_converts_to_lerobot(tmp_path):
    """A bag as a robot's recorder writes it (rosbags, CompressedImage jpeg as image_transport
    sends them, its own topic names) -> LeRobot v3 with the topic flags -> the same steps."""
    from replay_bags import (
        ACTION,
        COMPRESSED_CAMS,
        N_FRAMES,
        PROPRIO,
        frame_image,
        proprio_value,
        recorded_action,
        write_bag,
    )

    from lawm.data import open_sources

    bag = write_bag(tmp_path / "bag", "mcap", codec="jpeg")
    cams = [
        a for cam, topic in COMPRESSED_CAMS.items() for a in ("--image-topic", f"{cam}={topic}")
    ]
    r = subprocess.run(
        [sys.executable, str(ROOT / "training/train.py"), "convert", "--data", str(bag), *cams,
         "--action-topic", ACTION, "--proprio-topic", PROPRIO, "--control-rate-hz", "20",
         "--to", "lerobot", "--out", str(tmp_path / "lr"), "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (ep,) = open_sources(tmp_path / "lr")
    assert ep.length == N_FRAMES and ep.control_rate_hz == 20.0
    out = ep.read(0, ep.length)
    np.testing.assert_array_equal(out["actions"], [recorded_action(i) for i in range(N_FRAMES)])
    np.testing.assert_array_equal(out["proprio"], [proprio_value(i) for i in range(N_FRAMES)])
    for c, cam in enumerate(contract.CAMERAS):
        want = np.stack([frame_image(c, i) for i in range(N_FRAMES)]).astype(np.int16)
        got = out["images"][cam].astype(np.int16)
        err = np.abs(got - want).mean(axis=(1, 2, 3))
        assert err.max() < 17.0, err  # jpeg, then AV1, of noisy gradients: about 12.5
        # Each step holds its own frame, not the previous one (about 20 away).
        assert np.all(err[1:] < np.abs(got[1:] - want[:-1]).mean(axis=(1, 2, 3)))
