"""bench/learning.py: its statistics, and a dry run of every arm on tiny synthetic data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench/learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_episodes():
    rng = np.random.default_rng(0)
    few, many = rng.normal(1.0, 0.5, 10), rng.normal(1.0, 0.5, 400)
    lo, hi = bench.bootstrap_mean_ci(few)
    assert lo < few.mean() < hi
    lo2, hi2 = bench.bootstrap_mean_ci(many)
    assert lo2 < many.mean() < hi2
    assert hi2 - lo2 < (hi - lo) / 3  # about sqrt(40) narrower
    assert bench.bootstrap_mean_ci([0.3]) == [0.3, 0.3]
    assert bench.bootstrap_mean_ci(few) == bench.bootstrap_mean_ci(few)  # seeded
    with pytest.raises(ValueError):
        bench.bootstrap_mean_ci([])


def test_differences_are_paired_by_fine_tuning_seed():
    scratch = {0: [1.0, 2.0, 3.0], 1: [2.0, 3.0, 4.0]}
    # Each arm run is exactly 0.5 below the scratch run of its own fine-tuning seed.
    arm = {(p, s): [v - 0.5 for v in scratch[s]] for p in (0, 1) for s in (0, 1)}
    d = bench.paired_differences(arm, scratch)
    np.testing.assert_allclose(d, [-0.5, -0.5, -0.5])
    # Paired, the interval is a point; unpaired (per-episode means) it would not exclude 0.
    cell = bench.summarise_cell({"scratch": scratch, "x": arm})
    assert cell["x"]["minus_scratch_ci"] == pytest.approx([-0.5, -0.5])
    assert cell["x"]["verdict"] == "lower"
    assert cell["scratch"]["heldout_mse"] == pytest.approx(2.5)
    assert cell["scratch"]["runs"] == {"f0": 2.0, "f1": 3.0}
    assert cell["x"]["runs"]["p1_f0"] == pytest.approx(1.5)
    with pytest.raises(KeyError, match="seed 2"):
        bench.paired_differences({(0, 2): [1.0, 1.0, 1.0]}, scratch)


def test_the_runs_too_interval_counts_the_spread_between_seeds():
    rng = np.random.default_rng(1)
    episodes = rng.normal(0.0, 0.1, 30)
    # Three fine-tuning seeds whose runs differ by far more than the episodes do.
    runs = {(0, s): episodes + offset for s, offset in enumerate((-1.0, 0.0, 1.5))}
    table = bench.grid(runs)
    assert table.shape == (1, 3, 30)
    lo, hi = bench.bootstrap_mean_ci(bench.episode_means(runs))
    lo_r, hi_r = bench.run_bootstrap_ci(table)
    assert lo_r <= table.mean() <= hi_r
    assert hi_r - lo_r > 10 * (hi - lo)
    # One run of each: the same as the episode bootstrap's spread.
    one = bench.run_bootstrap_ci(episodes[None, None])
    ref = bench.bootstrap_mean_ci(episodes)
    assert one == pytest.approx(ref, abs=0.01)
    assert bench.grid({(0, 0): [1.0], (1, 1): [1.0]}) is None  # (0, 1), (1, 0) missing
    cell = bench.summarise_cell({"scratch": {s: [0.0] * 30 for s in range(3)}, "x": runs})
    assert cell["x"]["verdict_runs"] == "no difference"


def test_verdicts():
    assert bench.verdict([-0.2, -0.01]) == "lower"
    assert bench.verdict([0.01, 0.2]) == "higher"
    assert bench.verdict([-0.1, 0.1]) == "no difference"


def test_first_per_task_takes_the_first_episodes_of_each_instruction(tmp_path):
    path = write_synthetic_hdf5(tmp_path / "d.hdf5", episodes=12, length=16, image_size=32)
    sources = open_sources(path, labelled=True)
    picked = bench.first_per_task(sources, 2)
    assert len(picked) == 8  # 4 instructions x 2
    assert [s.name for s in picked] == [s.name for s in sources[:8]]
    assert len(bench.first_per_task(sources, 10)) == 12  # all there is


def test_arms_name_what_they_need():
    table = bench.arms()
    assert {
        "scratch", "lawm_paper", "lawm_paper_fresh_head", "lawm_motion", "lawm_kinematic",
        "control_shuffled", "oracle",
    } <= set(table)  # fmt: skip
    assert bench.default_arm_name() == "labels_first"  # the default world model's method
    assert table["lawm_kinematic"].head == "probe" and table["lawm_paper"].head == "reuse"
    quick = bench.quick_arms()
    assert quick == ["scratch", "labels_first"]
    assert bench.unavailable(table["scratch"]) is None
    assert bench.unavailable(table["lawm_paper"]) is None
    why = bench.unavailable(table["control_shuffled"])
    if not bench.control_field():
        assert bench.CONTROL_FIELD in why
    assert bench.default_arm_name() in table


def test_dry_run_of_every_arm_on_synthetic_data(tmp_path):
    """The whole pipeline at toy size: pretraining, the oracle, fine-tuning of every arm, the
    held-out MSE, probes, the report and the last JSON line."""
    files = {
        name: write_synthetic_hdf5(
            tmp_path / f"{name}.hdf5", episodes=8, length=16, image_size=32, seed=seed
        )
        for seed, name in enumerate(("clips", "demos", "heldout"))
    }
    setting = bench.Setting("in_domain", files["clips"], files["demos"], files["heldout"], "toy")
    plan = bench.Plan(
        settings=[setting],
        arms=list(bench.arms()),
        ns=[1],
        seeds=[0],
        pretrain_seeds=[0],
        budget=bench.Budget(
            preset="debug", pretrain_steps=3, finetune_steps=3, probe_windows=32, eval_stride=3
        ),
        out=tmp_path / "out",
        lang_cache=tmp_path / "lang.safetensors",
        progress=False,
    )
    printed: list[str] = []
    results = bench.run_bench(plan, "test", print_out=printed.append)

    cell = results["settings"]["in_domain"]["cells"]["1"]
    assert cell["demos"] == 4
    ran = set(cell["arms"])
    assert ran | set(results["skipped"]) == set(bench.arms())
    for name, row in cell["arms"].items():
        lo, hi = row["heldout_mse_ci"]
        assert lo <= row["heldout_mse"] <= hi, name
        assert row["episodes"] == 8
        assert set(row["reliance"]) == {"images", "proprio"}
        assert all(np.isfinite(v) and v > 0 for v in row["reliance"].values()), name
        assert set(row["sensitivity"]) == {"clean_mse", "image_shift", "ee_position"}
        assert all(np.isfinite(v) and v > 0 for v in row["sensitivity"].values()), name
        if bench.arms()[name].labels == "world_model":  # labels scored against the actions
            lab = row["labels"]
            assert 0 <= lab["mse"] and 0 <= lab["gripper_agreement"] <= 1, name
            assert lab["untrained_mse"] is not None, name
        if name != "scratch":
            assert row["verdict"] in ("lower", "higher", "no difference")
    # The LAWM arms fine-tuned from the pretrained policy; scratch from nothing.
    info = json.loads(
        next((plan.out / "in_domain" / "n1").glob("lawm_paper_s3_p0_f0"))
        .joinpath("policy", "config.json")
        .read_text()
    )["info"]
    assert "pretrain_paper" in info["init_from"]
    # labels_first fine-tunes what behaviour-cloned the labelled clips, whose fit it reports.
    n1 = plan.out / "in_domain" / "n1"
    info = json.loads((n1 / "labels_first_s3_p0_f0" / "policy" / "config.json").read_text())
    assert "labels_first_bc_s3_p0" in info["info"]["init_from"]
    assert (n1 / "labels_first_bc_s3_p0" / "labels.json").is_file()
    # The rehearsing arms start from the same first stage (trained once) and fine-tune on the
    # 4 demonstrations together with the 8 clips.
    assert sum("labels_first_bc" in k for k in results["train_seconds"]) == 1
    for arm, first in (
        ("labels_first_rehearse", n1 / "labels_first_bc_s3_p0"),
        ("oracle_rehearse", plan.out / "in_domain" / "oracle_bc_s3_p0"),
    ):
        info = json.loads((n1 / f"{arm}_s3_p0_f0" / "policy" / "config.json").read_text())
        assert str(first) in info["info"]["init_from"], arm
        state = next((n1 / f"{arm}_s3_p0_f0" / "checkpoints").glob("step_*/state.json"))
        assert json.loads(state.read_text())["n_episodes"] == 4 + 8, arm
    state = next((n1 / "labels_first_s3_p0_f0" / "checkpoints").glob("step_*/state.json"))
    assert json.loads(state.read_text())["n_episodes"] == 4
    line = json.loads(printed[-1])
    for key in ("lawm_heldout_mse", "scratch_heldout_mse", "lawm_probe_r2"):
        assert key in line
    assert len(line["lawm_heldout_mse_ci"]) == 2 and len(line["scratch_heldout_mse_ci"]) == 2
    assert line["untrained_probe_r2"] is None or np.isfinite(line["untrained_probe_r2"])
    assert line["proprio_probe_r2"] is None or np.isfinite(line["proprio_probe_r2"])
    report = (plan.out / "results.md").read_text()
    assert report.startswith("Held-out action MSE") and "Input reliance" in report
    assert "Input sensitivity" in report and "Clip labels read off" in report

    # Rerun: every run and figure is reused, nothing trains again.
    again = bench.run_bench(plan, "test", print_out=lambda _: None)
    assert again["train_seconds"] == {}
    assert again["settings"]["in_domain"]["cells"] == results["settings"]["in_domain"]["cells"]


def test_closed_loop_rolls_out_every_run_from_the_same_states(tmp_path):
    """Closed loop at toy size, in real LIBERO: R runs per arm, each from the same unseen
    initial states, paired with scratch; Wilson intervals; the target reported; a rerun
    reuses every rollout."""
    files = {
        name: write_synthetic_hdf5(
            tmp_path / f"{name}.hdf5", episodes=4, length=16, image_size=32, seed=seed
        )
        for seed, name in enumerate(("clips", "demos", "heldout"))
    }
    setting = bench.Setting(
        "in_domain", files["clips"], files["demos"], files["heldout"], "toy",
        suite="libero_object", tasks=(1, 2),
    )  # fmt: skip
    plan = bench.Plan(
        settings=[setting],
        arms=["scratch", "labels_first"],
        ns=[1],
        seeds=[0],
        pretrain_seeds=[0, 1],
        budget=bench.Budget(
            preset="debug", pretrain_steps=2, finetune_steps=2, probe_windows=16, eval_stride=4
        ),
        out=tmp_path / "out",
        lang_cache=tmp_path / "lang.safetensors",
        progress=False,
        closed_loop_n=[1],
        closed_loop_runs=2,
        closed_loop_arms=["labels_first"],
        closed_loop_states=range(25, 27),
        closed_loop_max_steps=3,
    )
    printed: list[str] = []
    results = bench.run_bench(plan, "test", print_out=printed.append)
    cl = results["settings"]["in_domain"]["cells"]["1"]["closed_loop"]
    assert list(cl["arms"]) == ["scratch", "labels_first"]
    # Scratch: fine-tuning seeds 0, 1 (1 trained for closed loop only); the method cycles
    # through its pretraining seeds first.
    assert cl["arms"]["scratch"]["training_runs"] == ["scratch_s2_f0", "scratch_s2_f1"]
    assert cl["arms"]["labels_first"]["training_runs"] == [
        "labels_first_s2_p0_f0", "labels_first_s2_p1_f0",
    ]  # fmt: skip
    for row in cl["arms"].values():
        assert row["episodes"] == 2 * 2 * 2  # runs x states x tasks (one process each)
        # Three steps cannot solve a LIBERO task.
        assert row["successes"] == 0 and row["success_ci"][0] == 0.0
        assert 0.25 < row["success_ci"][1] < 0.4
    vs = cl["arms"]["labels_first"]["vs_scratch"]
    assert vs["pairs"] == 8 and vs["states"] == 4 and vs["mcnemar_p"] == 1.0
    # Its first stage (the labelled clips cloned, one policy per pretraining seed) is rolled
    # out from the same states, and each fine-tuned run is paired with the stage it began from.
    first = cl["arms"]["labels_first"]["first_stage"]
    assert first["training_runs"] == ["labels_first_bc_s2_p0", "labels_first_bc_s2_p1"]
    assert first["episodes"] == 8 and first["successes"] == 0
    assert first["fine_tuning_minus_first_stage"]["pairs"] == 8
    assert "first_stage" not in cl["arms"]["scratch"]
    bc = plan.out / "in_domain" / "n1" / "labels_first_bc_s2_p1" / "closed_loop.json"
    assert len(json.loads(bc.read_text())["episodes"]) == 4
    run = plan.out / "in_domain" / "n1" / "scratch_s2_f1"
    report = json.loads((run / "closed_loop.json").read_text())
    assert [e[:2] for e in report["episodes"]] == [[1, 25], [1, 26], [2, 25], [2, 26]]
    assert all(e[3] == 3 for e in report["episodes"])  # ran the horizon
    assert (run / "export" / "policy.onnx").is_file()
    target = [t for t in results["targets"] if "closed-loop" in t["what"]]
    assert len(target) == 1 and target[0]["status"] == "not met"
    md = (plan.out / "results.md").read_text()
    assert "Closed loop, N = 1" in md and "| scratch | 0/8 |" in md
    assert "First stage alone" in md and "| labels_first | 0/8 |" in md
    line = json.loads(printed[-1])
    assert line["lawm_closed_loop_n1_episodes"] == 8
    assert line["scratch_closed_loop_n1_success"] == 0.0

    stamp = (run / "closed_loop.json").stat().st_mtime_ns
    again = bench.run_bench(plan, "test", print_out=lambda _: None)
    assert again["train_seconds"] == {}
    assert (run / "closed_loop.json").stat().st_mtime_ns == stamp
    assert again["settings"]["in_domain"]["cells"]["1"]["closed_loop"] == cl


def test_closed_loop_runs_pair_run_k_of_each_arm():
    plan = bench.Plan(
        settings=[], arms=["scratch"], ns=[3], seeds=[0, 1], pretrain_seeds=[0, 1],
        budget=bench.FULL, out=Path("/nonexistent"), lang_cache=Path("/nonexistent"),
        closed_loop_runs=4,
    )  # fmt: skip
    runner = bench.Runner(plan)
    table = bench.arms()
    assert runner.closed_loop_keys(table["scratch"]) == [(None, 0), (None, 1), (None, 2),
                                                         (None, 3)]  # fmt: skip
    # 4 runs of a pretrained arm: both pretraining seeds x fine-tuning seeds 0, 1.
    assert runner.closed_loop_keys(table["lawm_kinematic"]) == [(0, 0), (1, 0), (0, 1), (1, 1)]
