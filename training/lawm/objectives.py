"""The two training objectives of LAWM, as modules with ``forward(batch) -> (loss, metrics)``.

- ``PretrainObjective``: no action labels. The policy sees frame t and emits a chunk
  z[t:t+K]; those latent actions are the world model's action inputs while it explains frames
  t..t+K. The reconstruction + KL loss reaches the policy through z (nothing detaches it).
  World model variant "motion" also gets frame t and the instruction embedding directly and
  predicts t+1..t+K open-loop from z alone (see ``lawm.models.world_model``).
  Inputs an episode lacks (``camera_mask``, ``has_proprio``) are hidden from both models: the
  policy masks their tokens, the world model neither encodes nor reconstructs them.
- ``FinetuneObjective``: the same policy head regresses ground-truth chunks (normalised to
  [-1, 1]); BAKU's TruncatedNormal(std 0.1) negative log-likelihood is, up to a constant, the
  squared error scaled by 1 / (2 * 0.1^2), which is what we minimise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lawm import keys
from lawm.config import AugmentConfig, LawmConfig
from lawm.models.policy import Policy, policy_inputs
from lawm.models.world_model import WorldModel
from lawm_core import contract

ACTION_STD = 0.1  # BAKU's head: TruncatedNormal with this std


def augment_images(images: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None):
    """Random shift (replicate pad + crop) and colour jitter, per sample.

    images: uint8 (B, 3, H, W) -> float (B, 3, H, W) in [0, 255].
    """
    x = images.float()
    b, _, h, w = x.shape
    if cfg.random_shift > 0:
        pad = cfg.random_shift
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        # Integer shifts through a sampling grid keep it batched and differentiable-free.
        shift = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(x.device)
        rows = torch.arange(h, device=x.device)[None, :] + shift[:, :1]
        cols = torch.arange(w, device=x.device)[None, :] + shift[:, 1:]
        idx_r = rows[:, None, :, None].expand(b, 3, h, w + 2 * pad)
        x = padded.gather(2, idx_r)
        idx_c = cols[:, None, None, :].expand(b, 3, h, w)
        x = x.gather(3, idx_c)
    if cfg.color_jitter > 0:
        j = cfg.color_jitter

        def factor() -> Tensor:
            u = torch.rand(b, 1, 1, 1, generator=generator).to(x.device)
            return 1.0 + (2.0 * u - 1.0) * j

        x = x * factor()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * factor() + gray  # saturation
        x = x.clamp(0.0, 255.0)
    return x


class FinetuneObjective(nn.Module):
    """Behaviour cloning of ground-truth action chunks with the (possibly pretrained) head."""

    def __init__(self, cfg: LawmConfig, policy: Policy | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.policy = policy if policy is not None else Policy(cfg.policy)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        inputs = policy_inputs(batch)
        if self.training:
            inputs["images"] = {
                c: augment_images(v, self.cfg.augment) for c, v in inputs["images"].items()
            }
            drop = self.cfg.augment.proprio_dropout
            if drop > 0 and self.cfg.policy.use_proprio:
                shown = inputs["has_proprio"]
                if shown is None:
                    shown = torch.ones(len(inputs["proprio"]), dtype=torch.bool)
                keep = torch.rand(len(shown)) >= drop
                inputs["has_proprio"] = shown & keep.to(shown.device)
        pred = self.policy(**inputs)  # (B, K, A)
        target = self.policy.normalize_actions(batch[keys.ACTIONS].to(pred.dtype))
        mask = batch[keys.ACTION_MASK].to(pred.dtype)[..., None]  # (B, K, 1)
        sq = (pred - target).square() * mask
        # Mean per sample, then over samples: equal slices of a batch on N processes then
        # average to exactly the single-process loss.
        per_sample = sq.sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)).clamp_min(1.0) * pred.shape[-1])
        mse = per_sample.mean()
        loss = mse / (2 * ACTION_STD**2)
        gripper = contract.GRIPPER_INDEX
        agree = ((pred[..., gripper] > 0) == (target[..., gripper] > 0)).to(pred.dtype)
        grip_acc = (agree * mask[..., 0]).sum() / mask.sum().clamp_min(1.0)
        return loss, {
            "loss": loss.item(),
            "action_mse": mse.item(),
            "gripper_acc": grip_acc.item(),
        }


class PretrainObjective(nn.Module):
    """LAWM pretraining: policy chunk -> world-model actions; no action labels are read."""

    def __init__(self, cfg: LawmConfig, policy: Policy | None = None, world_model=None) -> None:
        super().__init__()

        self.cfg = cfg
        self.policy = policy if policy is not None else Policy(cfg.policy)
        self.world_model = world_model if world_model is not None else WorldModel(cfg.world_model)

    def latent_actions(self, batch: dict) -> Tensor:
        """The policy's chunk from frame 0 of the window: (B, K, A) in [-1, 1]."""
        return self.policy(**policy_inputs(batch))

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        if keys.ACTIONS in batch:
            # A pretraining batch must not carry labels; refusing makes leakage impossible.
            raise ValueError("pretraining batch contains action labels; LAWM pretrains without")
        z = self.latent_actions(batch)  # (B, K, A)
        b, k, a = z.shape
        if self.cfg.pretrain_chunk == "shuffled" and b > 1:
            # The control arm: each window gets another window's chunk (a derangement), so
            # the policy is trained through the same objective by a chunk that cannot explain
            # its window's motion.
            z = z[_derangement(b, z.device)]
        wm_cfg = self.cfg.world_model
        frames = {c: batch[keys.IMAGES][c] for c in wm_cfg.cameras}  # (B, K+1, 3, H, W)
        frame_mask = batch.get("frame_mask")
        proprio = batch[keys.PROPRIO] if wm_cfg.use_proprio else None
        zero = torch.zeros(b, 1, a, dtype=z.dtype, device=z.device)
        if self.cfg.wm_observe_current:
            # Observe frame t first, so z[t] must explain t -> t+1 (DreamerV3 convention:
            # actions[:, i] led into frame i; the first is ignored as is_first).
            actions = torch.cat([zero, z], dim=1)  # (B, K+1, A)
        else:
            # The reference code's variant: frames t+1..t+K, is_first on t+1, so z[t] is unused.
            frames = {c: v[:, 1:] for c, v in frames.items()}
            actions = z
            frame_mask = frame_mask[:, 1:] if frame_mask is not None else None
            proprio = proprio[:, 1:] if proprio is not None else None
        t = actions.shape[1]
        frames = {c: _resize_frames(v, wm_cfg.image_size) for c, v in frames.items()}
        is_first = torch.zeros(b, t, dtype=torch.bool, device=z.device)
        is_first[:, 0] = True
        loss, metrics = self.world_model.loss(
            frames,
            actions,
            is_first,
            proprio=proprio,
            frame_mask=frame_mask,
            camera_mask=self._wm_camera_mask(batch),
            has_proprio=batch.get(keys.HAS_PROPRIO) if wm_cfg.use_proprio else None,
            # The "motion" variant reads the instruction; the paper's world model never does.
            lang=batch[keys.LANG] if wm_cfg.variant == "motion" else None,
        )
        metrics = dict(metrics)
        metrics["z_abs"] = z.detach().abs().mean().item()
        metrics["z_std"] = z.detach().std(dim=0).mean().item()
        return loss, metrics

    @torch.no_grad()
    def open_loop(self, batch: dict, n: int = 4) -> tuple[Tensor, Tensor]:
        """For the first ``n`` windows of ``batch``: frames t..t+K of the world model's first
        camera, and the world model's open-loop prediction of them from frame t and the
        policy's chunk; uint8 (n, K+1, H, W, 3) each (what the training curves show)."""
        was = self.training
        self.eval()
        try:
            sub = _head(batch, n)
            z = self.latent_actions(sub)
            wc = self.cfg.world_model
            frames = {c: _resize_frames(sub[keys.IMAGES][c], wc.image_size) for c in wc.cameras}
            proprio = sub[keys.PROPRIO] if wc.use_proprio else None
            if self.cfg.wm_observe_current:
                actions = torch.cat([torch.zeros_like(z[:, :1]), z], dim=1)
            else:
                frames = {c: v[:, 1:] for c, v in frames.items()}
                actions = z
                proprio = proprio[:, 1:] if proprio is not None else None
            lang = sub[keys.LANG] if wc.variant == "motion" else None
            pred = self.world_model.predict(frames, actions, 1, proprio=proprio, lang=lang)
            cam = wc.cameras[0]
            target = frames[cam].permute(0, 1, 3, 4, 2)
            guess = (pred[cam].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
            return target.cpu(), guess.cpu()
        finally:
            self.train(was)

    def _wm_camera_mask(self, batch: dict) -> Tensor | None:
        """The batch's camera_mask (B, policy cameras) for the world model's cameras: a sample
        whose episode lacks a camera is not reconstructed (nor encoded) in it."""
        mask = batch.get("camera_mask")
        if mask is None:
            return None
        order = self.cfg.policy.cameras
        return mask[:, [order.index(c) for c in self.cfg.world_model.cameras]]


def _head(value, n: int):
    """The first ``n`` samples of a batch (tensors, and dicts of them, sliced on dim 0)."""
    if torch.is_tensor(value):
        return value[:n]
    if isinstance(value, dict):
        return {k: _head(v, n) for k, v in value.items()}
    return value


def _resize_frames(frames: Tensor, size: int) -> Tensor:
    """(B, T, 3, H, W) uint8 -> same at ``size`` (only when the policy and model sizes differ)."""
    if frames.shape[-1] == size and frames.shape[-2] == size:
        return frames
    b, t = frames.shape[:2]
    flat = frames.flatten(0, 1).float()
    out = F.interpolate(flat, size=(size, size), mode="area")
    return out.round().clamp(0, 255).to(torch.uint8).view(b, t, 3, size, size)


def _derangement(n: int, device) -> Tensor:
    """Indices of a random permutation of range(n) with no fixed point (n > 1): one cycle
    through a random order, each index taking the next one's place."""
    order = torch.randperm(n, device=device)
    idx = torch.empty(n, dtype=torch.long, device=device)
    idx[order] = torch.roll(order, -1)
    return idx
