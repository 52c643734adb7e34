"""The "probe" head start: the last head layer fitted to the demonstrations before fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch

from lawm.checkpoint import latest_checkpoint, load_tensors, save_policy
from lawm.config import preset
from lawm.data import WindowDataset, open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm.head_fit import _masked_mse, fit_head
from lawm.models.policy import Policy, policy_inputs
from lawm.trainer import LangTable, resolve_head, train


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    d = tmp_path_factory.mktemp("headfit")
    size = preset("debug").policy.image_size
    write_synthetic_hdf5(d / "demos.hdf5", episodes=4, length=24, image_size=size, seed=3)
    return d / "demos.hdf5"


def _dataset(cfg, sources):
    pc = cfg.policy
    return WindowDataset(sources, pc.cameras, pc.image_size, pc.chunk_size, mode="finetune")


def test_fit_head_lowers_the_demonstrations_error_and_touches_only_the_last_layer(demos, tmp_path):
    cfg = preset("debug")
    sources = open_sources(demos, labelled=True)
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    from lawm.data import compute_stats

    stats = compute_stats(sources, proprio_dim=cfg.policy.proprio_dim)
    policy.set_stats(stats)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    lang = LangTable([s.instruction for s in sources], tmp_path / "lang.safetensors", 384)
    fit = fit_head(policy, _dataset(cfg, sources), lang)
    assert fit["windows"] > 0
    assert fit["mse_after"] < 0.8 * fit["mse_before"], fit
    after = policy.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    last = len(policy.head) - 1
    assert changed == [f"head.{last}.bias", f"head.{last}.weight"]
    assert policy.training  # left as it found it

    # The reported figure is the policy's own error on those windows, recomputed here.
    ds = _dataset(cfg, sources)
    from lawm import keys
    from lawm.data import collate

    batch = collate([ds[i] for i in range(len(ds))])
    batch[keys.LANG] = lang(batch[keys.INSTRUCTION])
    policy.eval()
    with torch.no_grad():
        pred = policy(**policy_inputs(batch)).flatten(1)
        target = policy.normalize_actions(batch[keys.ACTIONS].float()).flatten(1)
        mask = batch[keys.ACTION_MASK].float().repeat_interleave(cfg.policy.action_dim, dim=1)
    assert _masked_mse(pred, target, mask).item() == pytest.approx(fit["mse_after"], rel=1e-3)
    # It reads the features: better than the best constant chunk (the targets' mean).
    mean = (target * mask).sum(0) / mask.sum(0).clamp_min(1.0)
    constant = _masked_mse(mean.expand_as(target), target, mask).item()
    assert fit["mse_after"] < constant, (fit, constant)


def test_resolve_head():
    assert resolve_head(None, False, "finetune", None) == "reuse"  # nothing to fit from
    assert resolve_head(None, False, "finetune", "x") == "probe"  # the default from --init
    assert resolve_head(None, False, "pretrain", "x") == "reuse"
    assert resolve_head(None, True, "finetune", "x") == "fresh"
    assert resolve_head("probe", False, "finetune", "x") == "probe"
    with pytest.raises(ValueError, match="one of"):
        resolve_head("lstsq", False, "finetune", "x")
    with pytest.raises(ValueError, match="pretrained weights"):
        resolve_head("probe", False, "finetune", None)
    with pytest.raises(ValueError, match="fresh head"):
        resolve_head("probe", True, "finetune", "x")


def test_finetune_with_a_probe_head_starts_from_the_fitted_layer(demos, tmp_path):
    cfg = preset("debug")
    cfg = cfg.replace(finetune=cfg.finetune.__class__(**{**cfg.finetune.__dict__, "steps": 2}))
    torch.manual_seed(5)
    save_policy(tmp_path / "pre", Policy(cfg.policy), cfg, {"stage": "pretrain"})
    sources = open_sources(demos, labelled=True)
    kw = {"lang_cache": tmp_path / "lang.safetensors", "progress": False}
    train("finetune", cfg, sources, tmp_path / "probe", init=tmp_path / "pre", head="probe", **kw)
    state = json.loads((latest_checkpoint(tmp_path / "probe") / "state.json").read_text())
    assert "head fitted to" in state["init_from"]
    (first,) = [json.loads(x) for x in (tmp_path / "probe" / "metrics.jsonl").open()][:1]
    train("finetune", cfg, sources, tmp_path / "fresh", init=tmp_path / "pre", head="fresh", **kw)
    fresh = json.loads((tmp_path / "fresh" / "metrics.jsonl").open().readline())
    # The fitted head starts fine-tuning far closer to the demonstrations than a fresh one.
    assert first["action_mse"] < fresh["action_mse"], (first, fresh)
    pre = load_tensors(tmp_path / "pre" / "model.safetensors")
    assert set(pre) == set(load_tensors(tmp_path / "probe" / "policy" / "model.safetensors"))


def test_init_lr_scale_slows_the_loaded_trunk_only(demos, tmp_path):
    cfg = preset("debug")
    ft = cfg.finetune.__class__(**{**cfg.finetune.__dict__, "steps": 3, "init_lr_scale": 0.1})
    cfg = cfg.replace(finetune=ft)
    torch.manual_seed(5)
    save_policy(tmp_path / "pre", Policy(cfg.policy), cfg, {"stage": "pretrain"})
    sources = open_sources(demos, labelled=True)
    kw = {"lang_cache": tmp_path / "lang.safetensors", "progress": False}
    train("finetune", cfg, sources, tmp_path / "run", init=tmp_path / "pre", head="fresh", **kw)
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    groups = state["param_groups"]
    full = [g for g in groups if g["lr_scale"] == 1.0]
    slow = [g for g in groups if g["lr_scale"] == 0.1]
    assert full and slow
    # Every slow group runs at a tenth of the full groups' learning rate at the same step.
    assert all(g["lr"] == pytest.approx(0.1 * full[0]["lr"]) for g in slow)
    # The head (and only policy weights outside it) is at the full rate: the slow groups hold
    # exactly the loaded trunk's parameters.
    policy = Policy(cfg.policy)
    n_head = sum(1 for n, _ in policy.named_parameters() if n.startswith("head."))
    n_trunk = sum(1 for n, _ in policy.named_parameters() if not n.startswith("head."))
    assert sum(len(g["params"]) for g in slow) == n_trunk
    assert sum(len(g["params"]) for g in full) == n_head
    # From scratch there is nothing loaded to slow down.
    train("finetune", cfg, sources, tmp_path / "scratch", **kw)
    state = json.loads((latest_checkpoint(tmp_path / "scratch") / "state.json").read_text())
    assert {g["lr_scale"] for g in state["param_groups"]} == {1.0}
