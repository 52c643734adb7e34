"""Closed-loop LIBERO evaluation of an exported model through the runtime core (no ROS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lawm_sim.eval_sim import evaluate

ROOT = Path(__file__).resolve().parents[2]


def test_eval_sim_runs_episodes_and_writes_videos(exported_debug_model, tmp_path):
    report = evaluate(
        exported_debug_model,
        "libero_object",
        [1],
        2,
        init_states=[3, 4],
        max_steps=8,
        videos=tmp_path / "videos",
        n_videos=1,
        render_size=64,
        progress=False,
    )
    assert report["suite"] == "libero_object" and report["episodes"] == 2
    task = report["tasks"][0]
    assert task["task_id"] == 1 and "basket" in task["instruction"]
    assert [e["init_state"] for e in task["episodes"]] == [3, 4]
    # An untrained policy does not solve the task in 8 steps; each episode runs the horizon.
    assert all(e["steps"] == 8 and not e["success"] for e in task["episodes"])
    assert report["mean_success"] == 0.0
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


def _eval_sim(model, *args, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "eval-sim", "--model", str(model)]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--suite", "libero_nothing"], "libero_object"),
        (["--suite", "libero_object", "--tasks", "12"], "12"),
        (["--suite", "libero_object", "--tasks", "x"], "'x'"),
    ],
)
def test_eval_sim_cli_bad_input(exported_debug_model, args, needle):
    r = _eval_sim(exported_debug_model, *args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_eval_sim_cli_writes_json(exported_debug_model, tmp_path):
    out = tmp_path / "report.json"
    r = _eval_sim(
        exported_debug_model,
        *("--suite", "libero_spatial", "--tasks", 0, "--episodes-per-task", 1),
        *("--max-steps", 5, "--render-size", 64, "--json", out, "--quiet"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tasks"][0]["episodes"][0]["steps"] == 5


def test_eval_sim_records_each_episode_for_foxglove(exported_debug_model, tmp_path):
    import json as _json

    from mcap.reader import make_reader

    r = _eval_sim(
        exported_debug_model,
        *("--suite", "libero_object", "--tasks", 2, "--episodes-per-task", 2),
        *("--init-states", "5,6", "--max-steps", 4, "--render-size", 64, "--quiet"),
        *("--record", tmp_path / "rec"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert files == ["libero_object_task2_init5_fail.mcap", "libero_object_task2_init6_fail.mcap"]
    topics: dict[str, list] = {}
    with open(tmp_path / "rec" / files[1], "rb") as f:
        for _, channel, msg in make_reader(f).iter_messages():
            topics.setdefault(channel.topic, []).append(_json.loads(msg.data))
    assert len(topics["/camera/agentview"]) == 4 and len(topics["/action"]) == 4
    # The commands the simulator received: clipped to [-1, 1].
    assert all(-1.0 <= v <= 1.0 for m in topics["/action"] for v in m.values())
    assert topics["/outcome"] == [{"success": False, "steps": 4, "init_state": 6}]
    assert "basket" in topics["/instruction"][0]["text"]
