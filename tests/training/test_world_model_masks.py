"""The world model respects the camera and proprio masks (lawm.models.world_model,
lawm.objectives): an episode without a camera is neither encoded nor reconstructed in it, so the
loss and every gradient are independent of the (black or garbage) pixels standing in for it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datafiles import AV, EYE, write_libero

from lawm import keys
from lawm.config import preset
from lawm.data import WindowDataset, collate, open_sources
from lawm.models.world_model import WorldModel
from lawm.objectives import PretrainObjective


def _wm_inputs(cfg, b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    images = {
        c: torch.randint(0, 256, (b, t, 3, s, s), generator=g).float() / 255 for c in cfg.cameras
    }
    actions = torch.rand(b, t, cfg.action_dim, generator=g) * 2 - 1
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    proprio = torch.randn(b, t, cfg.proprio_dim, generator=g)
    return images, actions, is_first, proprio


def _loss_and_grads(wm, images, actions, is_first, proprio, **masks):
    wm.zero_grad()
    images = {c: v.clone().requires_grad_(True) for c, v in images.items()}
    proprio = proprio.clone().requires_grad_(True)
    torch.manual_seed(1)  # the latents are sampled: the same draws for both runs
    loss, metrics = wm.loss(images, actions, is_first, proprio=proprio, **masks)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in wm.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {c: v.grad for c, v in images.items()}, proprio.grad, metrics


def test_world_model_loss_ignores_the_pixels_of_an_absent_camera():
    cfg = dataclasses.replace(
        preset("debug").world_model, cameras=(AV, EYE), use_proprio=True, proprio_dim=5
    )
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first, proprio = _wm_inputs(cfg, b=3, t=4)
    # Sample 1 has no wrist camera, sample 2 no robot state.
    masks = {
        "camera_mask": torch.tensor([[True, True], [True, False], [True, True]]),
        "has_proprio": torch.tensor([True, True, False]),
    }
    black = {c: v.clone() for c, v in images.items()}
    black[EYE][1] = 0.0
    black_proprio = proprio.clone()
    black_proprio[2] = 0.0
    loss_a, grads_a, pix_a, prop_a, metrics = _loss_and_grads(
        wm, black, actions, is_first, black_proprio, **masks
    )
    garbage = {c: v.clone() for c, v in images.items()}
    garbage[EYE][1] = torch.rand_like(garbage[EYE][1])
    garbage_proprio = proprio.clone()
    garbage_proprio[2] = 1e3 * torch.randn_like(proprio[2])
    loss_b, grads_b, pix_b, prop_b, _ = _loss_and_grads(
        wm, garbage, actions, is_first, garbage_proprio, **masks
    )
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    # Not even a gradient reaches the stand-in pixels or values; the present ones get one.
    assert torch.count_nonzero(pix_a[EYE][1]) == 0 and torch.count_nonzero(prop_a[2]) == 0
    assert torch.count_nonzero(pix_a[EYE][0]) > 0 and torch.count_nonzero(pix_a[AV][1]) > 0
    assert torch.count_nonzero(prop_a[0]) > 0
    assert metrics["recon_eye_in_hand"] > 0 and metrics["proprio"] > 0

    # The control: the same pixels counted as present do change the loss.
    present = {"camera_mask": torch.ones(3, 2, dtype=torch.bool)}
    assert not torch.equal(
        _loss_and_grads(wm, black, actions, is_first, proprio, **present)[0],
        _loss_and_grads(wm, garbage, actions, is_first, proprio, **present)[0],
    )
    with pytest.raises(ValueError, match=r"camera_mask must be \(B, 2\)"):
        wm.loss(images, actions, is_first, proprio=proprio, camera_mask=torch.ones(3, 1))


def test_world_model_loss_with_every_input_present_is_unchanged_by_the_masks():
    cfg = dataclasses.replace(preset("debug").world_model, cameras=(AV, EYE))
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first, _ = _wm_inputs(cfg, b=2, t=3)
    plain = _loss_and_grads(wm, images, actions, is_first, torch.zeros(2, 3, 5))
    masked = _loss_and_grads(
        wm,
        images,
        actions,
        is_first,
        torch.zeros(2, 3, 5),
        camera_mask=torch.ones(2, 2, dtype=torch.bool),
    )
    assert torch.allclose(plain[0], masked[0]) and plain[4] == pytest.approx(masked[4])


def _pretrain_batch(tmp_path, cfg):
    write_libero(tmp_path / "both.hdf5", lengths=(6,), size=(32, 32), seed=1)
    write_libero(tmp_path / "wrist.hdf5", lengths=(6,), cameras=(EYE,), size=(32, 32), seed=2)
    sources = open_sources(tmp_path, labelled=False)
    pc = cfg.policy
    ds = WindowDataset(sources, pc.cameras, pc.image_size, pc.chunk_size, mode="pretrain")
    # Windows 0-1 from the two-camera episode, 5-6 from the wrist-only one.
    batch = collate([ds[i] for i in (0, 1, 5, 6)])
    batch[keys.LANG] = torch.randn(4, pc.lang_dim, generator=torch.Generator().manual_seed(3))
    assert batch["camera_mask"].tolist() == [[True, True]] * 2 + [[False, True]] * 2
    assert torch.count_nonzero(batch[keys.IMAGES][AV][2:]) == 0  # the dataset's black frames
    return batch


def _objective_run(obj, batch):
    obj.zero_grad()
    torch.manual_seed(1)
    loss, metrics = obj(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("wm_cameras", [(AV,), (AV, EYE)])
def test_pretraining_on_a_wrist_only_episode_is_not_pretraining_on_black_frames(
    tmp_path, wm_cameras
):
    base = preset("debug")
    cfg = base.replace(world_model=dataclasses.replace(base.world_model, cameras=wm_cameras))
    batch = _pretrain_batch(tmp_path, cfg)
    torch.manual_seed(0)
    obj = PretrainObjective(cfg)
    loss_a, grads_a, metrics = _objective_run(obj, batch)
    garbage = dict(batch)
    garbage[keys.IMAGES] = dict(batch[keys.IMAGES])
    noise = torch.randint(0, 256, batch[keys.IMAGES][AV][2:].shape, dtype=torch.uint8)
    garbage[keys.IMAGES][AV] = torch.cat([batch[keys.IMAGES][AV][:2], noise])
    loss_b, grads_b, _ = _objective_run(obj, garbage)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    assert any(n.startswith("world_model.") for n in grads_a)
    assert any(n.startswith("policy.") for n in grads_a)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert metrics["recon"] > 0

    # The control: the same batch without its camera mask trains on the black frames.
    unmasked = {k: v for k, v in garbage.items() if k != "camera_mask"}
    assert not torch.equal(_objective_run(obj, unmasked)[0], loss_b)
