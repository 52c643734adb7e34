"""Policy model, config validation, objectives, checkpoints and CCA (no data files needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lawm import keys
from lawm.checkpoint import CheckpointError, load_policy, save_policy
from lawm.config import AugmentConfig, ConfigError, LawmConfig, OptimConfig, PolicyConfig, preset
from lawm.metrics import canonical_correlations
from lawm.models.policy import Policy
from lawm.objectives import FinetuneObjective, augment_images


def _inputs(cfg: PolicyConfig, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    images = {
        c: torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8) for c in cfg.cameras
    }
    return (
        images,
        torch.randn(b, cfg.proprio_dim, generator=g),
        torch.randn(b, cfg.lang_dim, generator=g),
    )


def test_policy_output_shape_and_range():
    cfg = preset("debug").policy
    policy = Policy(cfg).eval()
    out = policy(*_inputs(cfg))
    assert out.shape == (3, cfg.chunk_size, cfg.action_dim)
    assert out.abs().max() <= 1.0


def test_paper_policy_size_is_near_the_reference():
    with torch.device("meta"):
        policy = Policy(preset("paper").policy)
    n = sum(p.numel() for p in policy.parameters())
    gpt = sum(p.numel() for p in policy.blocks.parameters())
    # Reference LIBERO config: 7.71 M in total, GPT trunk 6.47 M.
    assert 7.0e6 < n < 10.5e6, n
    assert 6.0e6 < gpt < 7.0e6, gpt


def test_masked_camera_and_proprio_do_not_influence_the_output():
    cfg = preset("debug").policy
    policy = Policy(cfg).eval()
    images, proprio, lang = _inputs(cfg, b=2)
    mask = torch.tensor([[True, False], [True, False]])
    has_proprio = torch.tensor([False, False])
    a = policy(images, proprio, lang, camera_mask=mask, has_proprio=has_proprio)
    images2 = dict(images, **{cfg.cameras[1]: torch.zeros_like(images[cfg.cameras[1]])})
    b = policy(images2, proprio * 100, lang, camera_mask=mask, has_proprio=has_proprio)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    c = policy(images2, proprio * 100, lang)  # unmasked: the inputs matter
    assert (a - c).abs().max() > 1e-4


def test_language_conditions_the_image_features():
    cfg = preset("debug").policy
    policy = Policy(cfg).eval()
    # FiLM starts as identity; perturb it so the test checks the wiring, not the init.
    for block in policy.image_encoder.trunk.blocks:
        torch.nn.init.normal_(block.film.weight, std=0.1)
    images, _, lang = _inputs(cfg, b=1)
    img = images[cfg.cameras[0]]
    f1 = policy.image_encoder(img, lang)
    f2 = policy.image_encoder(img, -lang)
    assert (f1 - f2).abs().max() > 1e-3


def test_action_normalisation_round_trip():
    cfg = preset("debug").policy
    policy = Policy(cfg)
    policy.set_stats({"action_min": np.full(7, -2.0), "action_max": np.full(7, 4.0)})
    raw = torch.tensor([[-2.0, 1.0, 4.0, 0.0, -1.0, 2.5, 3.9]])
    norm = policy.normalize_actions(raw)
    assert norm.min() >= -1 and norm.max() <= 1
    torch.testing.assert_close(policy.unnormalize_actions(norm), raw)


def test_augmentation_keeps_range_and_changes_pixels():
    cfg = preset("small").augment
    img = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = augment_images(img, cfg, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 255
    assert (out - img.float()).abs().mean() > 1.0


def test_save_load_round_trip_is_bit_exact(tmp_path):
    cfg = preset("debug")
    policy = Policy(cfg.policy).eval()
    policy.set_stats({"proprio_mean": np.arange(5.0), "proprio_std": np.full(5, 2.0)})
    save_policy(tmp_path / "p", policy, cfg, {"note": "test"})
    loaded, cfg2, info = load_policy(tmp_path / "p")
    assert cfg2 == cfg and info == {"note": "test"}
    for (k, v), (k2, v2) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    x = _inputs(cfg.policy)
    assert torch.equal(policy(*x), loaded.eval()(*x))


def test_load_refuses_mismatched_or_corrupt_checkpoints(tmp_path):
    cfg = preset("debug")
    save_policy(tmp_path / "p", Policy(cfg.policy), cfg, {})
    # A config that no longer matches the weights: refuse, naming what differs.
    data = json.loads((tmp_path / "p" / "config.json").read_text())
    data["config"]["policy"]["hidden_dim"] = 64
    (tmp_path / "p" / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_policy(tmp_path / "p")
    # Requested config differs from the saved one.
    save_policy(tmp_path / "q", Policy(cfg.policy), cfg, {})
    with pytest.raises(CheckpointError, match="differs"):
        load_policy(tmp_path / "q", expect=preset("small"))
    # Truncated weights file.
    weights = tmp_path / "q" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_policy(tmp_path / "q")
    with pytest.raises(CheckpointError, match="not found"):
        load_policy(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PolicyConfig(image_size=30), "image_size"),
        (lambda: PolicyConfig(hidden_dim=30, n_heads=4), "divisible"),
        (lambda: PolicyConfig(cameras=()), "camera"),
        (lambda: PolicyConfig(dropout=1.5), "dropout"),
        (lambda: OptimConfig(lr=-1.0), "lr"),
        (lambda: OptimConfig(batch_size=10, grad_accum=3), "divisible"),
        (lambda: preset("huge"), "huge"),
        (lambda: LawmConfig.from_dict({"policy": {"bogus": 1}}), "bogus"),
    ],
)
def test_bad_config_values_are_rejected_with_the_value_quoted(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_config_json_round_trip():
    for name in ("debug", "small", "paper"):
        cfg = preset(name)
        assert LawmConfig.from_json(cfg.to_json()) == cfg


def test_finetune_objective_masks_padded_steps():
    cfg = preset("debug")
    obj = FinetuneObjective(cfg).eval()
    pc = cfg.policy
    images, proprio, lang = _inputs(pc, b=2)
    batch = {
        keys.IMAGES: {c: v[:, None] for c, v in images.items()},
        keys.PROPRIO: proprio[:, None],
        keys.LANG: lang,
        keys.ACTIONS: torch.zeros(2, pc.chunk_size, 7),
        keys.ACTION_MASK: torch.ones(2, pc.chunk_size, dtype=torch.bool),
    }
    with torch.no_grad():
        pred = obj.policy(images, proprio, lang)
        batch[keys.ACTIONS] = pred.clone()
        batch[keys.ACTIONS][:, -1] += 0.5  # wrong only where masked below
        batch[keys.ACTION_MASK][:, -1] = False
        loss, metrics = obj(batch)
    assert loss.item() < 1e-8 and metrics["action_mse"] < 1e-10


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.99999])
def test_proprio_dropout_hides_the_arm_state_from_that_share_of_training_samples(dropout):
    # The proprio MLP only gets a gradient through samples that show it; evaluation always
    # shows it.
    cfg = preset("debug")
    cfg = cfg.replace(augment=AugmentConfig(0.0, 0, proprio_dropout=dropout))
    pc = cfg.policy
    obj = FinetuneObjective(cfg)
    images, proprio, lang = _inputs(pc, b=1)
    n = 400
    batch = {
        keys.IMAGES: {c: v[:, None].expand(n, 1, *v.shape[1:]) for c, v in images.items()},
        keys.PROPRIO: proprio[:, None].expand(n, 1, -1),
        keys.LANG: lang.expand(n, -1),
        keys.ACTIONS: torch.zeros(n, pc.chunk_size, 7),
        keys.ACTION_MASK: torch.ones(n, pc.chunk_size, dtype=torch.bool),
    }
    torch.manual_seed(0)
    shown = []
    for _ in range(3):
        obj.zero_grad()
        loss, _ = obj.train()(batch)
        loss.backward()
        shown.append(obj.policy.proprio_mlp[0].weight.grad.abs().sum().item())
    if dropout > 0.99:
        assert max(shown) == 0.0  # every sample hid it
    else:
        assert min(shown) > 0.0
    if dropout == 0.5:  # about half the batch: the loss differs from evaluation's
        with torch.no_grad():
            eval_loss, _ = obj.eval()(batch)
            torch.manual_seed(1)
            train_loss, _ = obj.train()(batch)
        assert abs(train_loss.item() - eval_loss.item()) > 1e-6
    with pytest.raises(ConfigError, match="proprio_dropout"):
        AugmentConfig(proprio_dropout=1.0)


def test_cca_recovers_a_linear_recoding():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 7))
    mix, _ = np.linalg.qr(rng.normal(size=(7, 7)))  # a well-conditioned re-coding
    z = np.tanh(0.3 * a @ mix) + 0.01 * rng.normal(size=(2000, 7))
    corr = canonical_correlations(z, a)
    assert corr.shape == (7,) and corr.min() > 0.9
    noise = canonical_correlations(rng.normal(size=(2000, 7)), a)
    assert noise.max() < 0.15
    with pytest.raises(ValueError, match="more samples"):
        canonical_correlations(z[:5], a[:5])


def test_constant_action_dims_normalise_to_zero():
    policy = Policy(preset("debug").policy)
    policy.set_stats(
        {
            "action_min": np.array([-1, 0, 0, 0, 0, 0, -1.0]),
            "action_max": np.array([1, 0, 0, 0, 0, 0, 1.0]),
        }
    )
    norm = policy.normalize_actions(torch.tensor([[0.5, 0, 0, 0, 0, 0, 1.0]]))
    torch.testing.assert_close(norm, torch.tensor([[0.5, 0, 0, 0, 0, 0, 1.0]]))


def test_heldout_cca_is_not_fooled_by_noise_that_in_sample_cca_overfits():
    from lawm.metrics import heldout_canonical_correlations

    rng = np.random.default_rng(1)
    a = rng.normal(size=(60, 7))
    noise = rng.normal(size=(60, 7))
    assert canonical_correlations(noise, a).mean() > 0.2  # in-sample: optimistic
    held = heldout_canonical_correlations(noise[:30], a[:30], noise[30:], a[30:])
    assert abs(held.mean()) < 0.2
    z = a @ np.linalg.qr(rng.normal(size=(7, 7)))[0] + 0.05 * rng.normal(size=(60, 7))
    assert heldout_canonical_correlations(z[:30], a[:30], z[30:], a[30:]).min() > 0.9
