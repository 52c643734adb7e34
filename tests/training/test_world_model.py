"""World model: shapes, carry resets, unimix, free bits, gradients into the latent actions,
padding, learning on a synthetic moving-square dataset and the paper-size parameter count.

Everything is real computation on tiny configs (CPU); the 50m model is only built on the meta
device to count its parameters.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from wm_inputs import random_window

from lawm.config import WorldModelConfig, preset
from lawm.models.world_model import (
    RSSM,
    FrameDecoder,
    FrameEncoder,
    WorldModel,
    count_parameters,
    describe,
    kl_balance,
    unimix_logits,
)
from lawm_core import contract

CAM = contract.CAMERAS[0]


def _debug_cfg(**changes) -> WorldModelConfig:
    # The paper's RSSM model (the debug preset's default variant is "kinematic").
    return dataclasses.replace(preset("debug").world_model, **{"variant": "paper", **changes})


def _batch(cfg: WorldModelConfig, b: int, t: int, seed: int = 0):
    images, actions, is_first, g = random_window(cfg, b, t, seed)
    proprio = torch.randn(b, t, cfg.proprio_dim, generator=g) if cfg.use_proprio else None
    return images, actions, is_first, proprio


# -- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size", [32, 64])
def test_shapes(image_size):
    cfg = _debug_cfg(image_size=image_size)
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    b, t = 2, 5
    d, s, c = cfg.deter_size, cfg.stoch, cfg.classes
    images, actions, is_first, _ = _batch(cfg, b, t)

    enc = FrameEncoder(image_size, cfg.cnn_depth)
    stages = {32: 3, 64: 4}[image_size]
    assert enc.embed_dim == 4 * 4 * cfg.cnn_depth * 2 ** (stages - 1)
    emb = enc(images[CAM])
    assert emb.shape == (b, t, enc.embed_dim)
    assert enc(images[CAM][:, 0]).shape == (b, enc.embed_dim)  # any leading dims
    dec = FrameDecoder(d + s * c, image_size, cfg.cnn_depth)
    assert dec(torch.randn(b, t, d + s * c)).shape == (b, t, 3, image_size, image_size)

    posts, priors = wm.rssm.observe(wm.embed(images), actions, is_first)
    for state in (posts, priors):
        assert state["deter"].shape == (b, t, d)
        assert state["stoch"].shape == (b, t, s, c)
        assert state["logits"].shape == (b, t, s, c)
        # Straight-through samples are one-hot in value.
        torch.testing.assert_close(state["stoch"].sum(-1), torch.ones(b, t, s))
    assert wm.rssm.feature(posts).shape == (b, t, d + s * c)

    carry = wm.rssm.initial(b)
    assert carry["deter"].shape == (b, d) and carry["stoch"].shape == (b, s, c)
    imagined = wm.rssm.imagine({k: v[:, -1] for k, v in posts.items()}, actions)
    assert imagined["deter"].shape == (b, t, d) and imagined["stoch"].shape == (b, t, s, c)

    loss, metrics = wm.loss(images, actions, is_first)
    assert loss.dim() == 0 and torch.isfinite(loss)
    for k in ("loss", "recon", "recon_mse", "kl_dyn", "kl_rep", "kl", "prior_ent", "post_ent"):
        assert isinstance(metrics[k], float), k
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-6)

    pred = wm.predict(images, actions, n_context=2)
    assert pred[CAM].shape == (b, t, 3, image_size, image_size)
    assert pred[CAM].min() >= 0.0 and pred[CAM].max() <= 1.0


def test_bad_inputs_are_rejected():
    cfg = _debug_cfg()
    wm = WorldModel(cfg)
    images, actions, is_first, _ = _batch(cfg, 1, 3)
    with pytest.raises(ValueError, match="images"):
        wm.loss({CAM: images[CAM][..., :16, :16]}, actions, is_first)
    with pytest.raises(ValueError, match="cameras"):
        wm.loss({}, actions, is_first)
    with pytest.raises(ValueError, match="actions"):
        wm.loss(images, actions[..., :3], is_first)
    with pytest.raises(ValueError, match="n_context"):
        wm.predict(images, actions, n_context=0)


def test_obs_step_matches_observe():
    # observe() precomputes the embedding half of the posterior input for all steps; the public
    # one-step API must give the same states.
    cfg = _debug_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first, _ = _batch(cfg, 2, 4)
    is_first[1, 2] = True
    embeds = wm.embed(images)
    posts, priors = wm.rssm.observe(embeds, actions, is_first, sample=False)
    carry = wm.rssm.initial(2)
    for t in range(4):
        post, prior = wm.rssm.obs_step(carry, actions[:, t], embeds[:, t], is_first[:, t], False)
        for k in ("deter", "stoch", "logits"):
            torch.testing.assert_close(post[k], posts[k][:, t])
            torch.testing.assert_close(prior[k], priors[k][:, t])
        carry = post


# -- RSSM mechanics ------------------------------------------------------------------------------
def test_is_first_resets_the_carry():
    cfg = _debug_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg).eval()
    b, t, reset = 2, 6, 3
    images, actions, is_first, _ = _batch(cfg, b, t, seed=0)
    is_first[0, reset] = True  # sample 0 starts a new episode at step 3; sample 1 does not
    other_images, other_actions, _, _ = _batch(cfg, b, t, seed=1)
    # Change everything before the reset (and the ignored action at it) for both samples.
    images2 = {CAM: images[CAM].clone()}
    images2[CAM][:, :reset] = other_images[CAM][:, :reset]
    actions2 = actions.clone()
    actions2[:, : reset + 1] = other_actions[:, : reset + 1]
    actions2[1, reset] = actions[1, reset]  # sample 1: only the history differs
    with torch.no_grad():
        for sample in (False, True):
            torch.manual_seed(1)
            p1, q1 = wm.rssm.observe(wm.embed(images), actions, is_first, sample=sample)
            torch.manual_seed(1)
            p2, q2 = wm.rssm.observe(wm.embed(images2), actions2, is_first, sample=sample)
            for k in ("deter", "stoch", "logits"):
                torch.testing.assert_close(p1[k][0, reset:], p2[k][0, reset:])
                torch.testing.assert_close(q1[k][0, reset:], q2[k][0, reset:])
            # Without a reset the history matters (the comparison above is not vacuous).
            assert not torch.allclose(p1["deter"][1, reset:], p2["deter"][1, reset:])


def test_unimix_floors_every_class_probability():
    cfg = _debug_cfg()
    floor = cfg.unimix / cfg.classes
    raw = torch.randn(64, cfg.stoch, cfg.classes) * 50.0  # very peaked softmaxes
    probs = unimix_logits(raw, cfg.unimix).exp()
    assert probs.min() >= floor * (1 - 1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(64, cfg.stoch))
    # And inside the model, for both prior and posterior.
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first, _ = _batch(cfg, 2, 4)
    with torch.no_grad():
        posts, priors = wm.rssm.observe(wm.embed(images), actions, is_first)
    for state in (posts, priors):
        assert state["logits"].exp().min() >= floor * (1 - 1e-5)


def test_kl_free_bits_clip_value_and_gradient():
    torch.manual_seed(0)
    values = torch.randn(3, 5, 4, 4)
    post = values.clone().requires_grad_()
    prior = values.clone().requires_grad_()
    dyn, rep, raw = kl_balance(post, prior, free_bits=1.0)
    assert torch.equal(dyn, torch.ones(3, 5)) and torch.equal(rep, torch.ones(3, 5))
    assert raw.abs().max() < 1e-6
    (dyn.sum() + rep.sum()).backward()
    for p in (post, prior):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0

    # Without free bits the balance routes dyn only into the prior and rep only into the post.
    post = torch.randn(3, 5, 4, 4, requires_grad=True)
    prior = torch.randn(3, 5, 4, 4, requires_grad=True)
    dyn, rep, raw = kl_balance(post, prior, free_bits=0.0)
    torch.testing.assert_close(dyn, rep)
    assert (raw > 0).all()
    dyn.sum().backward()
    assert post.grad is None and prior.grad.abs().sum() > 0
    prior.grad = None
    rep.sum().backward()
    assert prior.grad is None and post.grad.abs().sum() > 0


# -- gradients into the latent actions and padding ------------------------------------------------
def test_gradient_reaches_every_used_latent_action():
    cfg = _debug_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    b, t, valid = 2, 6, (6, 4)
    images, _, is_first, _ = _batch(cfg, b, t)
    frame_mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(valid):
        frame_mask[i, :n] = True
    # The policy side: a leaf parameter squashed by tanh, as the policy's chunk head does.
    pre = torch.randn(b, t, cfg.action_dim, requires_grad=True)
    actions = torch.tanh(pre)
    actions.retain_grad()
    loss, _ = wm.loss(images, actions, is_first, frame_mask=frame_mask)
    loss.backward()
    grad = actions.grad
    assert grad is not None and pre.grad is not None
    per_step = grad.abs().sum(-1)  # (B, T)
    for i, n in enumerate(valid):
        assert per_step[i, 0] == 0, "the action into an is_first frame is ignored"
        assert (per_step[i, 1:n] > 0).all(), per_step[i]
        assert (per_step[i, n:] == 0).all(), "padded frames must not train the policy"
    assert (pre.grad.abs().sum(-1)[:, 1:4] > 0).all()


def test_padded_frames_change_nothing():
    cfg = _debug_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    b, t, n = 2, 6, 4
    images, actions, is_first, _ = _batch(cfg, b, t, seed=0)
    garbage, garbage_actions, _, _ = _batch(cfg, b, t, seed=5)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, :n] = True
    images2 = {CAM: images[CAM].clone()}
    images2[CAM][:, n:] = garbage[CAM][:, n:]
    actions2 = actions.clone()
    actions2[:, n:] = garbage_actions[:, n:] * 5.0

    def run(imgs, acts, first, frame_mask):
        torch.manual_seed(3)  # same latent samples for the shared steps
        return wm.loss(imgs, acts, first, frame_mask=frame_mask)

    loss1, m1 = run(images, actions, is_first, mask)
    loss2, m2 = run(images2, actions2, is_first, mask)
    loss3, m3 = run({CAM: images[CAM][:, :n]}, actions[:, :n], is_first[:, :n], None)
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)
    torch.testing.assert_close(loss1, loss3, rtol=1e-5, atol=1e-5)
    for k in m1:
        assert m1[k] == pytest.approx(m2[k], rel=1e-6, abs=1e-7), k
        assert m1[k] == pytest.approx(m3[k], rel=1e-4, abs=1e-6), k


def test_multiple_cameras_and_proprio():
    # Beyond the paper (its stated future work): every camera plus proprio, enabled by config.
    cfg = _debug_cfg(cameras=contract.CAMERAS, use_proprio=True)
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    assert set(wm.encoders) == set(contract.CAMERAS) == set(wm.decoders)
    assert wm.embed_dim == 2 * wm.encoders[CAM].embed_dim + cfg.hidden
    b, t = 2, 4
    images, actions, is_first, proprio = _batch(cfg, b, t)
    actions.requires_grad_()
    loss, metrics = wm.loss(images, actions, is_first, proprio=proprio)
    loss.backward()
    assert (actions.grad.abs().sum(-1)[:, 1:] > 0).all()
    assert {"proprio", f"recon_{contract.CAMERAS[0]}", f"recon_{contract.CAMERAS[1]}"} <= set(
        metrics
    )
    assert metrics["recon"] == pytest.approx(
        metrics[f"recon_{contract.CAMERAS[0]}"] + metrics[f"recon_{contract.CAMERAS[1]}"], rel=1e-5
    )
    with pytest.raises(ValueError, match="proprio"):
        wm.loss(images, actions, is_first)
    pred = wm.predict(images, actions.detach(), n_context=2, proprio=proprio)
    assert set(pred) == {*contract.CAMERAS, "proprio"}
    assert pred["proprio"].shape == (b, t, cfg.proprio_dim)


def test_blockdiag_gru_runs_and_is_smaller():
    dense = _debug_cfg(deter=64, hidden=32)
    block = _debug_cfg(deter=64, hidden=32, gru="blockdiag", gru_blocks=4)
    torch.manual_seed(0)
    wm = WorldModel(block)
    d, h, g = 64, 32, 4
    assert count_parameters(wm.rssm.gru) == 3 * d * h + 3 * d * d // g + 2 * 3 * d // g
    assert count_parameters(wm.rssm.gru) < count_parameters(WorldModel(dense).rssm.gru)
    images, actions, is_first, _ = _batch(block, 2, 4)
    actions.requires_grad_()
    loss, _ = wm.loss(images, actions, is_first)
    loss.backward()
    assert torch.isfinite(loss) and (actions.grad.abs().sum(-1)[:, 1:] > 0).all()


# -- learning -----------------------------------------------------------------------------------
def _moving_square(
    n: int, t: int, seed: int, size: int = 32, square: int = 12, speed: float = 6.0
):
    """A white square on black whose top-left corner moves by speed * actions[:, i, :2].

    DreamerV3 convention: actions[:, i] leads into frame i (actions[:, 0] is unused).
    Returns uint8 images (n, t, 3, size, size) and actions (n, t, 7) in [-1, 1].
    """
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(n, t, contract.ACTION_DIM, generator=g) * 2 - 1
    pos = torch.rand(n, 2, generator=g) * (size - square)
    images = torch.zeros(n, t, 3, size, size, dtype=torch.uint8)
    for i in range(t):
        if i > 0:
            pos = (pos + speed * actions[:, i, :2]).clamp(0, size - square)
        corner = pos.round().long()
        for j in range(n):
            x, y = corner[j].tolist()
            images[j, i, :, y : y + square, x : x + square] = 255
    return images, actions


@pytest.mark.slow
def test_learns_the_moving_square_and_uses_the_actions():
    cfg = _debug_cfg(deter=128, hidden=64, stoch=8, classes=8, cnn_depth=8)
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    images, actions = _moving_square(256, 8, seed=0)
    b, t = 16, 8
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(200):
        idx = torch.randint(0, images.shape[0], (b,), generator=g)
        loss, metrics = wm.loss({CAM: images[idx]}, actions[idx], is_first)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics["recon_mse"])
    first, last = history[0], sum(history[-10:]) / 10
    print(f"recon_mse {first:.4f} -> {last:.4f}")
    assert last < 0.5 * first, history[::20]

    # Open-loop prediction on held-out sequences: 3 context frames, 7 imagined with the true
    # actions versus the same actions given to the wrong sequences.
    test_images, test_actions = _moving_square(64, 10, seed=1)
    wm.eval()
    target = test_images.float() / 255.0
    n_ctx = 3
    shuffled = test_actions.clone()
    shuffled[:, n_ctx:] = test_actions.roll(1, dims=0)[:, n_ctx:]
    errors = {}
    for name, acts in (("true", test_actions), ("shuffled", shuffled)):
        torch.manual_seed(0)
        pred = wm.predict({CAM: test_images}, acts, n_context=n_ctx)[CAM]
        errors[name] = (pred - target)[:, n_ctx:].square().mean().item()
    print(f"open-loop mse: {errors}")
    assert errors["true"] < 0.6 * errors["shuffled"], errors


# -- sizes --------------------------------------------------------------------------------------
def test_paper_size_parameter_count():
    dense = describe(WorldModelConfig(size="50m", variant="paper"))
    block = describe(WorldModelConfig(size="50m", gru="blockdiag", variant="paper"))
    print(f"50m dense: {dense}")
    print(f"50m blockdiag: {block}")
    # Reference world model at size 50m: ~115.7 M parameters, of which the dense GRU ~56.6 M.
    assert abs(dense["total"] - 115.7e6) < 0.10 * 115.7e6, dense
    assert abs(dense["rssm_gru"] - 56.6e6) < 0.01 * 56.6e6, dense
    assert dense["total"] == (
        dense["encoder"] + dense["rssm"] + dense["decoder"] + dense["proprio"]
    )
    assert block["total"] < 0.75 * dense["total"], block
    assert block["rssm_gru"] < 0.25 * dense["rssm_gru"], block
    # describe() counts the same model as a real build (meta device: no memory used).
    with torch.device("meta"):
        wm = WorldModel(WorldModelConfig(size="50m", variant="paper"))
    assert count_parameters(wm) == dense["total"]
    assert isinstance(wm.rssm, RSSM)
