"""The end-to-end demo at toy size: real LIBERO data, training, export, and the closed loop
through libero_bridge + policy_node processes for both models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lawm_apps.demo import DemoConfig, run_demo
from lawm_apps.harness import ROOT

TINY = DemoConfig(
    tasks=(0,),
    demos_per_task=2,
    finetune_demos_per_task=1,
    clips_per_task=1,
    eval_episodes=1,
    eval_init_state=3,
    image_size=32,
    preset="debug",
    pretrain_steps=6,
    finetune_steps=6,
    max_steps=12,
    workers=1,
)


def test_demo_end_to_end_then_cached_rerun(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    results = run_demo(TINY, out, cache, progress=False)

    loop = results["closed_loop"]["models"]
    assert set(loop) == {"lawm", "scratch"}
    for model in loop.values():
        episodes = model["tasks"]["0"]["episodes"]
        assert len(episodes) == 1
        ep = episodes[0]
        assert ep["init_state"] == 3  # unseen: demos used 0-1, clips 2
        assert ep["success"] or ep["steps"] == TINY.max_steps, ep
        assert ep["invalid_actions"] == 0
        assert model["steps"] > 0
    # Both models trained on the same demos. LAWM by the labels-first recipe: a fresh policy
    # cloned the clips the pretrained world model labelled, then the demos fine-tuned it.
    info = {
        name: json.loads((out / f"finetune_{name}" / "policy" / "config.json").read_text())["info"]
        for name in ("lawm", "scratch", "lawm/labels_bc")
    }
    assert "labels_bc" in str(info["lawm"]["init_from"])
    assert info["lawm/labels_bc"]["init_from"] is None
    assert info["scratch"]["init_from"] is None
    labels = json.loads((out / "finetune_lawm" / "labels_bc" / "labels.json").read_text())
    assert labels["labeller"] == str(out / "pretrain") and labels["clips"] == 1
    assert results["labels"]["window"] == labels["window"]
    paired = results["closed_loop"]["paired"]
    assert (paired["a"], paired["b"], paired["pairs"]) == ("lawm", "scratch", 1)
    for model in loop.values():
        assert model["episodes"] == 1 and model["successes"] in (0, 1)
        assert 0 <= model["success_ci"][0] <= model["success_rate"] <= model["success_ci"][1]
    for name in ("lawm", "scratch"):
        assert results["exports"][name]["parity_max_abs_error"] < 1e-4
        assert len(results["exports"][name]["onnx_sha256"]) == 64
    assert 0 < results["latency"]["ort_ms_p50"] <= results["latency"]["ort_ms_p99"]
    assert -1 <= results["cca"]["cca_heldout_mean"] <= 1
    # Fine-tuned on demo 0; demo 1 held out and scored in raw units, paired by episode.
    held = results["heldout_action_mse"]
    assert held["episodes"] == 1 and len(held["lawm"]["per_episode"]) == 1
    diff = held["lawm"]["per_episode"][0] - held["scratch"]["per_episode"][0]
    assert held["lawm_minus_scratch"]["mean"] == pytest.approx(diff)
    for name in ("results.json", "results.md", "curves.png", "success.png", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "results.md").read_text()
    assert "closed-loop success" in table and "CCA" in table and "held-out action MSE" in table
    assert "paired by init state" in table and "labels read off the world model" in table
    printed = capsys.readouterr().out
    assert "expert episodes" in printed and "closed-loop success" in printed

    # The next run reuses the cached data and the finished training runs.
    data = sorted(cache.glob("*.hdf5"))
    assert len(data) == 2
    stamps = [p.stat().st_mtime_ns for p in data]
    metrics = (out / "finetune_lawm" / "metrics.jsonl").read_text()
    run_demo(TINY, out, cache, evaluate=False, progress=False)
    assert [p.stat().st_mtime_ns for p in data] == stamps
    assert "cached" in capsys.readouterr().out
    assert (out / "finetune_lawm" / "metrics.jsonl").read_text() == metrics


def test_demo_config_refuses_eval_states_that_were_trained_on():
    with pytest.raises(ValueError, match="overlaps the training init states"):
        DemoConfig(demos_per_task=10, clips_per_task=15, eval_init_state=20)
    with pytest.raises(ValueError, match="eval_episodes"):
        DemoConfig(eval_episodes=0)
    with pytest.raises(ValueError, match="leaves none of the 3 demos per task held out"):
        DemoConfig(demos_per_task=3, finetune_demos_per_task=3)


def test_demo_cli_bad_flags_exit_2_with_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "training" / "train.py"), "demo", "--out", str(tmp_path)]
    bad = subprocess.run(
        [*cmd, "--eval-init-state", "3"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "overlaps the training init states" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = subprocess.run([*cmd, "--tasks", "12"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "task" in bad.stderr and "Traceback" not in bad.stderr
    # A task the scripted experts cannot do (LIBERO-Goal 0 opens a drawer) is named, no trace.
    bad = subprocess.run(
        [*cmd, "--cache", str(tmp_path / "c"), "--suite", "libero_goal", "--tasks", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr and "no scripted expert" in bad.stderr, bad.stderr[-2000:]


@pytest.mark.ros
def test_closed_loop_stops_at_once_on_a_model_the_node_cannot_load(tmp_path, exported_debug_model):
    # An export from an older version (sidecar format 1): the policy node stays up,
    # unconfigured, so the evaluation has to notice from its log, not from its deadline.
    import shutil
    import time

    from lawm_apps.demo import evaluate_ros

    old = tmp_path / "old_export"
    shutil.copytree(exported_debug_model, old)
    sidecar = json.loads((old / "policy.json").read_text())
    sidecar["format_version"] = 1
    (old / "policy.json").write_text(json.dumps(sidecar))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot configure") as err:
        evaluate_ros(TINY, {"old": old}, tmp_path / "logs", progress=False)
    assert "export the model again" in str(err.value)
    assert time.monotonic() - t0 < 60  # the deadline would be 90 s and more
