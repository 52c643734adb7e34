"""Training loops end to end on tiny synthetic data: learning, gradients, resume, DDP, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from wm_inputs import pretrain_batch

from lawm import keys
from lawm.checkpoint import latest_checkpoint, load_tensors, save_policy
from lawm.config import AugmentConfig, preset
from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm.models.policy import Policy
from lawm.objectives import PretrainObjective
from lawm.trainer import train
from lawm_core import contract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    size = preset("debug").policy.image_size
    write_synthetic_hdf5(d / "video.hdf5", episodes=6, length=30, image_size=size, seed=1)
    write_synthetic_hdf5(d / "demos.hdf5", episodes=6, length=30, image_size=size, seed=2)
    return d


def _cfg(steps=40, **opt):
    cfg = preset("debug")
    return cfg.replace(
        pretrain=cfg.pretrain.__class__(**{**cfg.pretrain.__dict__, "steps": steps, **opt}),
        finetune=cfg.finetune.__class__(**{**cfg.finetune.__dict__, "steps": steps, **opt}),
    )


def _pretrain_batch(cfg, sources, lang_cache, n=4):
    return pretrain_batch(cfg, sources, lang_cache, range(n))


def test_pretraining_gradient_reaches_every_policy_parameter(synthetic, lang_cache):
    cfg = preset("debug")
    sources = open_sources(synthetic / "video.hdf5", labelled=False)
    batch = _pretrain_batch(cfg, sources, lang_cache)
    assert keys.ACTIONS not in batch  # the pretraining data path carries no labels
    obj = PretrainObjective(cfg)
    loss, metrics = obj(batch)
    loss.backward()
    no_grad = [
        n for n, p in obj.policy.named_parameters() if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert no_grad == [], f"policy parameters without gradient: {no_grad}"
    # And a batch that does carry labels is refused outright.
    batch[keys.ACTIONS] = torch.zeros(4, cfg.policy.chunk_size, 7)
    with pytest.raises(ValueError, match="action labels"):
        obj(batch)


def test_pretraining_learns_and_finetuning_fits_the_actions(synthetic, lang_cache, tmp_path):
    cfg = _cfg(steps=120)
    video = open_sources(synthetic / "video.hdf5", labelled=False)
    demos = open_sources(synthetic / "demos.hdf5", labelled=True)
    pre = train("pretrain", cfg, video, tmp_path / "pre", lang_cache=lang_cache, progress=False)
    recon = [h["recon_mse"] for h in pre["history"]]
    assert np.mean(recon[-10:]) < 0.6 * np.mean(recon[:5]), recon[::10]
    assert (tmp_path / "pre" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "pre" / "world_model.safetensors").is_file()

    fine_cfg = _cfg(steps=300).replace(augment=AugmentConfig(0.0, 0))
    fine = train(
        "finetune",
        fine_cfg,
        demos,
        tmp_path / "fine",
        init=tmp_path / "pre" / "policy",
        head="reuse",  # from the pretrained head as it is: the whole fit is fine-tuning's
        lang_cache=lang_cache,
        progress=False,
    )
    mse = [h["action_mse"] for h in fine["history"]]
    # The synthetic actions carry N(0, 0.2) noise on dx, dy, so they can't be fitted exactly.
    assert np.mean(mse[-10:]) < 0.35 * np.mean(mse[:5]), mse[::10]
    state = json.loads((latest_checkpoint(tmp_path / "fine") / "state.json").read_text())
    assert state["init_from"].endswith("policy")
    lines = (tmp_path / "fine" / "metrics.jsonl").read_text().splitlines()
    assert lines and "samples_per_s" in json.loads(lines[-1])


def test_resume_replays_the_interrupted_run_exactly(synthetic, lang_cache, tmp_path):
    cfg = _cfg(steps=8, checkpoint_every=100)
    demos = open_sources(synthetic / "demos.hdf5", labelled=True)
    full = train("finetune", cfg, demos, tmp_path / "full", lang_cache=lang_cache, progress=False)
    part = train(
        "finetune", cfg, demos, tmp_path / "part", lang_cache=lang_cache, progress=False, stop_at=4
    )
    assert part["steps"] == 4 and not (tmp_path / "part" / "policy").exists()
    rest = train("finetune", cfg, demos, tmp_path / "part", lang_cache=lang_cache, progress=False)
    assert rest["start"] == 4 and rest["steps"] == 8
    assert [h["loss"] for h in rest["history"]] == [h["loss"] for h in full["history"][4:]]
    a = load_tensors(tmp_path / "full" / "policy" / "model.safetensors")
    b = load_tensors(tmp_path / "part" / "policy" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_init_can_keep_a_fresh_action_head(tmp_path):
    from lawm.trainer import build_objective, init_policy_from

    cfg = _cfg()
    torch.manual_seed(123)
    save_policy(tmp_path / "pre", Policy(cfg.policy), cfg, {"stage": "pretrain"})
    pre = load_tensors(tmp_path / "pre" / "model.safetensors")
    for reinit in (False, True):
        torch.manual_seed(0)
        obj = build_objective("finetune", cfg)
        fresh = {k: v.clone() for k, v in obj.policy.state_dict().items()}
        note = init_policy_from(obj, tmp_path / "pre", reinit_head=reinit)
        got = obj.policy.state_dict()
        heads = [k for k in got if k.startswith("head.")]
        assert heads and len(heads) < len(got)
        for k, v in got.items():
            want = fresh[k] if (reinit and k.startswith("head.")) else pre[k]
            assert torch.equal(v, want), k
        assert ("re-initialised" in note) == reinit


def test_resume_refuses_a_different_config(synthetic, lang_cache, tmp_path):
    from lawm.checkpoint import CheckpointError

    demos = open_sources(synthetic / "demos.hdf5", labelled=True)
    train("finetune", _cfg(steps=2), demos, tmp_path / "r", lang_cache=lang_cache, progress=False)
    with pytest.raises(CheckpointError, match="different run"):
        train(
            "finetune", _cfg(steps=3), demos, tmp_path / "r", lang_cache=lang_cache, progress=False
        )


def _cli(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(synthetic, tmp_path):
    common = [
        "finetune",
        "--data",
        str(synthetic / "demos.hdf5"),
        "--preset",
        "debug",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--no-augment",
        "--quiet",
        "--log-every",
        "1",
        "--lang-cache",
        str(tmp_path / "lang.safetensors"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = _cli(*common, "--out", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "training" / "train.py"),
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(run):
        rows = [
            json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().split("\n") if x
        ]
        return [r["loss"] for r in rows]

    l1, l2 = losses("one"), losses("two")
    assert len(l1) == len(l2) == 4
    np.testing.assert_allclose(l2, l1, rtol=1e-4, atol=1e-5)
    state = json.loads((latest_checkpoint(tmp_path / "two") / "state.json").read_text())
    assert state["world_size"] == 2


def test_export_parity_and_sidecar(synthetic, lang_cache, tmp_path):
    import onnxruntime as ort

    from lawm.checkpoint import load_policy
    from lawm.export import check_parity, export_policy
    from lawm_core.files import sha256_file

    cfg = _cfg(steps=2)
    demos = open_sources(synthetic / "demos.hdf5", labelled=True)
    train("finetune", cfg, demos, tmp_path / "run", lang_cache=lang_cache, progress=False)
    side = export_policy(tmp_path / "run" / "policy", tmp_path / "export", text_encoder=False)
    onnx_path = tmp_path / "export" / "policy.onnx"
    onnx.checker.check_model(str(onnx_path))
    on_disk = json.loads((tmp_path / "export" / "policy.json").read_text())
    assert on_disk["onnx_sha256"] == sha256_file(onnx_path) == side.onnx_sha256
    for key in (
        "chunk_size",
        "action_dim",
        "control_rate_hz",
        "cameras",
        "image_size",
        "inputs",
        "outputs",
        "normalization",
        "action_space",
        "opset",
        "run",
    ):
        assert key in on_disk, key
    assert on_disk["cameras"] == list(contract.CAMERAS)
    assert on_disk["control_rate_hz"] == 20.0
    # Fine-tuning on LIBERO/robomimic HDF5 recorded what the actions are: OSC_POSE deltas.
    assert on_disk["run"]["action_space"] == contract.ACTION_OSC_POSE_DELTA
    assert on_disk["action_space"]["kind"] == contract.ACTION_OSC_POSE_DELTA
    assert side.action_space.linear_per_unit == contract.OSC_POSE_LINEAR_M
    policy, _, _ = load_policy(tmp_path / "run" / "policy")
    assert check_parity(policy.eval(), onnx_path, seed=123, batch=3) <= 1e-4

    # The clamp is in the graph: even absurd weights give actions within [-1, 1].
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i["name"] for i in on_disk["inputs"]]
    assert [i.name for i in sess.get_inputs()] == names
    s = on_disk["image_size"]
    feeds = {n: np.full((2, s, s, 3), 255, np.uint8) for n in names[:-2]}
    feeds["proprio"] = np.full((2, 5), 1e6, np.float32)
    feeds["lang"] = np.ones((2, 384), np.float32)
    out = sess.run(None, feeds)[0]
    assert out.shape == (2, on_disk["chunk_size"], 7)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


def test_cli_rejects_bad_flags_with_the_value_quoted(tmp_path):
    r = _cli("finetune", "--data", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "missing.hdf5" in r.stderr
    r = _cli("pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "x"), "--steps", "-3")
    assert r.returncode == 2 and "'-3'" in r.stderr
    r = _cli("describe", "--preset", "enormous")
    assert r.returncode == 2 and "enormous" in r.stderr
    (tmp_path / "notes.txt").write_text("not data")
    r = _cli("finetune", "--data", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "notes.txt" in r.stderr and "Traceback" not in r.stderr


def test_export_cli_needs_an_action_space_the_run_could_not_record(tmp_path):
    cfg = preset("debug")
    save_policy(tmp_path / "p", Policy(cfg.policy), cfg, {"stage": "finetune"})  # no record
    args = ("export", "--policy", str(tmp_path / "p"), "--no-text-encoder")
    r = _cli(*args, "--out", str(tmp_path / "refused"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "pass --action-space osc_pose_delta|twist" in r.stderr
    assert not (tmp_path / "refused" / "policy.json").exists()
    r = _cli(*args, "--out", str(tmp_path / "x"), "--action-space", "velocity")
    assert r.returncode == 2 and "'velocity'" in r.stderr
    r = _cli(*args, "--out", str(tmp_path / "ok"), "--action-space", "twist")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["action_space"] == "twist"
    side = json.loads((tmp_path / "ok" / "policy.json").read_text())
    assert side["action_space"]["kind"] == "twist"
    assert side["action_space"]["units"][:4] == ["m/s", "m/s", "m/s", "rad/s"]


def test_describe_paper_preset_reports_both_model_sizes():
    r = _cli("describe", "--preset", "paper", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert 7.0e6 < info["policy_params"] < 10.5e6
    assert 100e6 < info["world_model_params"] < 130e6


@pytest.mark.slow
def test_smoke_command_leaves_an_exported_model(tmp_path):
    # About 30 s on an idle 2-core machine; the timeout is for a machine shared with other jobs.
    r = _cli("smoke", "--out", str(tmp_path / "smoke"), "--quiet", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    export = tmp_path / "smoke" / "export"
    side = json.loads((export / "policy.json").read_text())
    assert (export / "policy.onnx").is_file() and (export / "text_encoder.onnx").is_file()
    assert side["onnx_sha256"] == result["onnx_sha256"]
    # Exported with its demonstrations: the reference frames a lower precision is checked on.
    assert side["low_precision"]["reference"]["count"] == 32
    assert (export / "reference.npz").is_file() and (export / "calibration.json").is_file()
    first, last = result["pretrain_recon_mse_first_last"]
    assert last < 0.5 * first
    # Fine-tuning starts from the head fitted by a linear probe (the default from a pretrained
    # policy): the fit lowers the error, and fine-tuning takes it below half the unfitted one.
    first, last = result["finetune_action_mse_first_last"]
    fit = result["finetune_head_fit"]
    assert fit["mse_after"] < fit["mse_before"], fit
    assert last < first and last < 0.5 * fit["mse_before"], (first, last, fit)
