"""BAKU-style policy: FiLM ResNet-18 trunk per camera, GPT trunk, tanh action-chunk head.

Tokens per step (paper config: 5): language, one per camera, proprio, and a learned action
token whose output feeds the head. The head predicts a chunk of K actions x 7 dims in [-1, 1]
(normalised space); statistics for normalising proprio and (de)normalising actions are buffers
of the module, so they travel with the weights into checkpoints and the exported graph.

Shapes:
    images[cam]: uint8 (B, 3, H, W)       proprio: float (B, P) raw units
    lang: float (B, L) sentence embedding  -> actions: float (B, K, A) in [-1, 1]
"""

from __future__ import annotations

import math
from math import gcd

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lawm import keys
from lawm.config import PolicyConfig

# Image normalisation (ImageNet statistics, as ResNet trunks conventionally use).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: batch statistics would differ between a 256-sample training
    # batch, a batch of 8 on a CPU and batch-1 inference on the robot.
    return nn.GroupNorm(gcd(8, channels), channels)


class FiLMBlock(nn.Module):
    """ResNet basic block whose second norm is modulated by the language (FiLM)."""

    def __init__(self, c_in: int, c_out: int, stride: int, lang_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(c_out)
        self.film = nn.Linear(lang_dim, 2 * c_out)
        # Start as identity modulation (gamma = 1, beta = 0) so FiLM cannot hurt at init.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out))

    def forward(self, x: Tensor, lang: Tensor) -> Tensor:
        skip = x if self.down is None else self.down(x)
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        gamma, beta = self.film(lang).chunk(2, dim=-1)
        h = h * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return F.relu(h + skip)


class FiLMResNetTrunk(nn.Module):
    """ResNet-18 stem + layer1 + layer2 (cut there, as BAKU does), FiLM in every block.

    (B, 3, H, W) float -> (B, 2*width, H/8, W/8). ``width`` 64 is ResNet-18.
    """

    def __init__(self, width: int, lang_dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            _norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.blocks = nn.ModuleList(
            [
                FiLMBlock(width, width, 1, lang_dim),
                FiLMBlock(width, width, 1, lang_dim),
                FiLMBlock(width, 2 * width, 2, lang_dim),
                FiLMBlock(2 * width, 2 * width, 1, lang_dim),
            ]
        )
        self.out_channels = 2 * width

    def forward(self, x: Tensor, lang: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, lang)
        return h


class ImageEncoder(nn.Module):
    """Shared by every camera: trunk -> 1x1 conv -> 4x4 average pool -> linear -> token."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.trunk = FiLMResNetTrunk(cfg.trunk_width, cfg.lang_dim)
        reduced = max(16, cfg.trunk_width)
        self.reduce = nn.Sequential(nn.Conv2d(self.trunk.out_channels, reduced, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.proj = nn.Sequential(
            nn.Linear(reduced * 16, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim)
        )
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor, lang: Tensor) -> Tensor:
        """image: uint8 or float in [0, 255], (B, 3, H, W); lang: (B, L) -> (B, D)."""
        x = (image.float() / 255.0 - self.mean) / self.std
        h = self.pool(self.reduce(self.trunk(x, lang)))
        return self.proj(h.flatten(1))


class Block(nn.Module):
    """Pre-norm transformer block (GPT style) with an optional key mask."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_bias: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d_head)
        att = (q @ k.transpose(-2, -1)) * self.scale
        if key_bias is not None:
            att = att + key_bias[:, None, None, :]
        att = self.drop(att.softmax(dim=-1))
        h = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(h))
        return x + self.mlp(self.ln2(x))


class Policy(nn.Module):
    """The LAWM / BAKU policy. ``forward`` -> action chunk in normalised space [-1, 1]."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.image_encoder = ImageEncoder(cfg)
        self.camera_embed = nn.Parameter(torch.zeros(len(cfg.cameras), d))
        self.lang_proj = nn.Sequential(nn.Linear(cfg.lang_dim, d), nn.LayerNorm(d))
        self.proprio_mlp = nn.Sequential(
            nn.Linear(cfg.proprio_dim, d), nn.ReLU(), nn.Linear(d, d), nn.LayerNorm(d)
        )
        self.action_token = nn.Parameter(torch.zeros(1, 1, d))
        self.type_embed = nn.Parameter(torch.zeros(1, self.n_tokens, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        layers: list[nn.Module] = []
        width = d
        for _ in range(cfg.head_layers):
            layers += [nn.Linear(width, cfg.head_hidden), nn.ReLU()]
            width = cfg.head_hidden
        layers.append(nn.Linear(width, cfg.chunk_size * cfg.action_dim))
        self.head = nn.Sequential(*layers)
        # Normalisation statistics (set from the data before training; saved with the weights).
        self.register_buffer("action_min", -torch.ones(cfg.action_dim))
        self.register_buffer("action_max", torch.ones(cfg.action_dim))
        self.register_buffer("proprio_mean", torch.zeros(cfg.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(cfg.proprio_dim))
        self._init_weights()

    @property
    def n_tokens(self) -> int:
        # language + cameras + proprio + action token
        return 1 + len(self.cfg.cameras) + 1 + 1

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("embed") or name == "action_token":
                nn.init.normal_(p, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # -- statistics ---------------------------------------------------------------------------
    def set_stats(self, stats: dict) -> None:
        """Copy normalisation statistics (numpy or tensors) into the buffers."""
        for key in ("action_min", "action_max", "proprio_mean", "proprio_std"):
            if key in stats and stats[key] is not None:
                getattr(self, key).copy_(torch.as_tensor(stats[key], dtype=torch.float32))

    def normalize_actions(self, actions: Tensor) -> Tensor:
        """Raw actions (..., A) -> [-1, 1]; dims that never vary in the data map to 0."""
        raw_span = self.action_max - self.action_min
        span = raw_span.clamp_min(1e-6)
        norm = (2.0 * (actions - self.action_min) / span - 1.0).clamp(-1.0, 1.0)
        return torch.where(raw_span > 1e-6, norm, torch.zeros_like(norm))

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        return (actions + 1.0) / 2.0 * (self.action_max - self.action_min) + self.action_min

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        images: dict[str, Tensor],
        proprio: Tensor,
        lang: Tensor,
        camera_mask: Tensor | None = None,
        has_proprio: Tensor | None = None,
    ) -> Tensor:
        """images[cam]: (B, 3, H, W); proprio (B, P) raw; lang (B, L) -> (B, K, A) in [-1, 1].

        camera_mask (B, n_cams) and has_proprio (B,) hide absent inputs from attention (video
        pretraining has one camera and no robot state). This is the training forward.
        """
        b = lang.shape[0]
        cams = self.cfg.cameras
        prop = (proprio - self.proprio_mean) / self.proprio_std
        if not self.cfg.use_proprio:
            prop = torch.zeros_like(prop)
        tokens = (
            torch.cat(
                [
                    self.lang_proj(lang)[:, None],
                    self._camera_tokens(images, cams, lang),
                    self.proprio_mlp(prop)[:, None],
                    self.action_token.expand(b, -1, -1),
                ],
                dim=1,
            )
            + self.type_embed
        )
        key_bias = None
        if camera_mask is not None or has_proprio is not None or not self.cfg.use_proprio:
            keep = torch.ones(b, self.n_tokens, dtype=torch.bool, device=lang.device)
            if camera_mask is not None:
                keep[:, 1 : 1 + len(cams)] = camera_mask
            if has_proprio is not None:
                keep[:, -2] = has_proprio
            if not self.cfg.use_proprio:
                keep[:, -2] = False
            key_bias = torch.zeros(keep.shape, device=lang.device).masked_fill(~keep, -1e9)
        return self._decode(tokens, key_bias)

    def forward_present(
        self, images: dict[str, Tensor], proprio: Tensor | None, lang: Tensor
    ) -> Tensor:
        """The training forward (``forward``) of an observation that has exactly the cameras in
        ``images`` and, when ``proprio`` is not None, robot state: camera_mask True for those
        cameras only, has_proprio ``proprio is not None``. (B, K, A) in [-1, 1].

        Computed without the masked tokens: a masked key's attention weight is exp(-1e9) = 0
        and only the action token's output is read, so the tokens of absent inputs cannot change
        the actions; leaving them out gives the same result (to float rounding) without
        encoding images that do not exist. What the exported graph runs.
        """
        order = self.cfg.cameras
        unknown = sorted(set(images) - set(order))
        if unknown:
            raise ValueError(f"cameras {unknown} are not inputs of this policy ({list(order)})")
        cams = tuple(c for c in order if c in images)
        if not cams:
            raise ValueError(f"forward_present needs at least one of the cameras {list(order)}")
        b = lang.shape[0]
        parts = [self.lang_proj(lang)[:, None], self._camera_tokens(images, cams, lang)]
        slots = [0, *(1 + order.index(c) for c in cams)]
        if proprio is not None and self.cfg.use_proprio:
            prop = (proprio - self.proprio_mean) / self.proprio_std
            parts.append(self.proprio_mlp(prop)[:, None])
            slots.append(1 + len(order))
        parts.append(self.action_token.expand(b, -1, -1))
        slots.append(self.n_tokens - 1)
        tokens = torch.cat(parts, dim=1) + self.type_embed[:, slots]
        return self._decode(tokens, None)

    def _camera_tokens(self, images: dict[str, Tensor], cams: tuple[str, ...], lang: Tensor):
        """One token per camera of ``cams`` (model order): (B, len(cams), D)."""
        b = lang.shape[0]
        # One encoder pass over the cameras: (n_cams * B, 3, H, W).
        stacked = torch.cat([images[c] for c in cams], dim=0)
        tokens = self.image_encoder(stacked, lang.repeat(len(cams), 1))
        embed = self.camera_embed
        if cams != self.cfg.cameras:
            embed = embed[[self.cfg.cameras.index(c) for c in cams]]
        return tokens.view(len(cams), b, -1).transpose(0, 1) + embed

    def _decode(self, tokens: Tensor, key_bias: Tensor | None) -> Tensor:
        """Transformer over the tokens, head on the last (action) token -> (B, K, A)."""
        out = self.head(self._action_feature(tokens, key_bias))
        return torch.tanh(out).view(tokens.shape[0], self.cfg.chunk_size, self.cfg.action_dim)

    def _action_feature(self, tokens: Tensor, key_bias: Tensor | None) -> Tensor:
        h = tokens
        for block in self.blocks:
            h = block(h, key_bias)
        return self.ln_f(h[:, -1])

    def head_features(self, **inputs) -> Tensor:
        """What the head's last linear layer reads, for the inputs of ``forward``: (B, F).
        ``tanh(self.head[-1](head_features(...)))`` reshaped to (B, K, A) is ``forward``."""
        seen: dict[str, Tensor] = {}

        def grab(_module, args, _out):
            seen["input"] = args[0]

        hook = self.head[-1].register_forward_hook(grab)
        try:
            self.forward(**inputs)
        finally:
            hook.remove()
        return seen["input"]


def policy_inputs(batch: dict, t: int = 0) -> dict:
    """Pick frame ``t`` of a dataset batch as the policy's inputs (keyword arguments)."""

    return {
        "images": {c: v[:, t] for c, v in batch[keys.IMAGES].items()},
        "proprio": batch[keys.PROPRIO][:, t],
        "lang": batch[keys.LANG],
        "camera_mask": batch.get("camera_mask"),
        "has_proprio": batch.get(keys.HAS_PROPRIO),
    }
