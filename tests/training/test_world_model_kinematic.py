"""World-model variant "kinematic": a scene code and a pose code from frame t, each latent action
moving the pose code through one shared linear map, frames rendered from both.

Real computation on tiny configs and on the synthetic block data, whose frames are caused by
its actions (lawm.data.synthetic).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from wm_inputs import pretrain_batch, random_window

from lawm import keys
from lawm.config import ConfigError, LawmConfig, WorldModelConfig, preset
from lawm.data import open_sources
from lawm.data.synthetic import write_synthetic_hdf5
from lawm.models.world_model import WorldModel, describe
from lawm.objectives import PretrainObjective
from lawm_core import contract

CAM = contract.CAMERAS[0]


def _kinematic(cfg: LawmConfig) -> LawmConfig:
    return cfg.replace(world_model=dataclasses.replace(cfg.world_model, variant="kinematic"))


def _wm_cfg(**changes) -> WorldModelConfig:
    return dataclasses.replace(preset("debug").world_model, variant="kinematic", **changes)


def _inputs(cfg: WorldModelConfig, b: int = 3, t: int = 6, seed: int = 0):
    return random_window(cfg, b, t, seed)[:3]


def test_config_and_structure():
    cfg = _kinematic(preset("debug"))
    assert LawmConfig.from_json(cfg.to_json()).world_model.variant == "kinematic"
    with pytest.raises(ConfigError, match="'kinematic'.*wm_observe_current"):
        cfg.replace(wm_observe_current=False)
    with pytest.raises(ConfigError, match="pose_dim"):
        _wm_cfg(pose_dim=0)
    wm = WorldModel(cfg.world_model)
    assert wm.rssm is None and not any(k.startswith("rssm.") for k in wm.state_dict())
    sizes = describe(cfg.world_model)
    assert sizes["rssm"] == 0 < sizes["context"]
    assert sizes["total"] == sum(p.numel() for p in wm.parameters())


def test_frames_depend_on_frame_t_and_the_summed_chunk_only():
    cfg = _wm_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first = _inputs(cfg)

    def feat(imgs=images, acts=actions):
        return wm._kinematic_states(imgs, acts, is_first, None, None, None)

    base = feat()
    assert base.shape == (3, 6, cfg.hidden)
    # Frames after t are targets only.
    later = {CAM: images[CAM].clone()}
    later[CAM][:, 1:] = 255 - later[CAM][:, 1:]
    assert torch.equal(feat(imgs=later), base)
    # The action into frame k changes frames k.. and nothing before; the one at frame 0 nothing.
    for k in range(actions.shape[1]):
        moved = actions.clone()
        moved[:, k] = -moved[:, k]
        diff = (feat(acts=moved) - base).abs().amax((0, 2))
        assert torch.all(diff[: max(k, 1)] == 0), (k, diff)
        if k > 0:
            assert torch.all(diff[k:] > 0), (k, diff)
    # Steps add up: swapping the actions into frames 1 and 2 leaves frames 2.. as they were
    # (the pose code is moved by their sum), frame 1 moves.
    swapped = actions.clone()
    swapped[:, [1, 2]] = actions[:, [2, 1]]
    diff = (feat(acts=swapped) - base).abs().amax((0, 2))
    assert diff[1] > 0 and torch.allclose(feat(acts=swapped)[:, 2:], base[:, 2:], atol=1e-5)


def test_loss_reaches_every_chunk_step_and_every_parameter_without_kl():
    cfg = _wm_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first = _inputs(cfg)
    actions.requires_grad_(True)
    loss, metrics = wm.loss(images, actions, is_first)
    loss.backward()
    per_step = actions.grad.abs().sum((0, 2))
    assert per_step[0] == 0 and torch.all(per_step[1:] > 0), per_step
    unused = [n for n, p in wm.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert unused == [], unused  # DistributedDataParallel needs every parameter used
    assert set(metrics) == {"loss", "recon", "recon_mse"}  # deterministic: no KL terms
    assert metrics["loss"] == pytest.approx(metrics["recon"])


def test_refusals_padding_and_prediction():
    cfg = _wm_cfg()
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first = _inputs(cfg)
    reset = is_first.clone()
    reset[:, 2] = True
    with pytest.raises(ValueError, match="is_first must be true at frame 0 only"):
        wm.loss(images, actions, reset)
    with pytest.raises(ValueError, match="n_context=1"):
        wm.predict(images, actions, n_context=2)
    pred = wm.predict(images, actions, n_context=1)[CAM]
    assert pred.shape == images[CAM].shape and 0 <= pred.min() <= pred.max() <= 1
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 3:] = False
    other = {CAM: images[CAM].clone()}
    other[CAM][0, 3:] = 0
    a, _ = wm.loss(images, actions, is_first, frame_mask=mask)
    b, _ = wm.loss(other, actions, is_first, frame_mask=mask)
    assert torch.equal(a, b)  # padded frames change nothing


def test_absent_cameras_and_proprio_are_neither_encoded_nor_reconstructed():
    cfg = _wm_cfg(cameras=contract.CAMERAS, use_proprio=True)
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    images, actions, is_first = _inputs(cfg)
    proprio = torch.randn(3, 6, cfg.proprio_dim)
    cam_mask = torch.ones(3, len(contract.CAMERAS), dtype=torch.bool)
    cam_mask[1, 1] = False
    has_p = torch.tensor([True, False, True])
    kw = {"camera_mask": cam_mask, "has_proprio": has_p}
    a, _ = wm.loss(images, actions, is_first, proprio=proprio, **kw)
    other = {c: v.clone() for c, v in images.items()}
    other[contract.CAMERAS[1]][1] = 0
    p2 = proprio.clone()
    p2[1] = 1e3
    b, _ = wm.loss(other, actions, is_first, proprio=p2, **kw)
    assert torch.equal(a, b)


# -- pretraining on synthetic data --------------------------------------------------------------
def test_pretraining_reaches_every_policy_parameter_without_labels(tmp_path, lang_cache):
    cfg = _kinematic(preset("debug"))
    size = cfg.policy.image_size
    path = write_synthetic_hdf5(tmp_path / "v.hdf5", episodes=4, length=20, image_size=size)
    sources = open_sources(path, labelled=False)
    batch = pretrain_batch(cfg, sources, lang_cache, range(4))
    assert keys.ACTIONS not in batch
    torch.manual_seed(0)
    obj = PretrainObjective(cfg)
    loss, _ = obj(batch)
    loss.backward()
    for module in (obj.policy, obj.world_model):
        none = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.any()]
        assert none == [], none
