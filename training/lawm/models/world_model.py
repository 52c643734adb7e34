"""DreamerV3-style RSSM world model whose action inputs are the policy's latent actions.

LAWM pretrains a policy without action labels: the policy emits a chunk of latent actions
z (B, K, A) in [-1, 1] from frame t, and this world model has to explain the following frames
with z as its action inputs. The world-model loss is therefore differentiable with respect to
the action tensor it is given; nothing here detaches or copies it, so the gradient reaches the
policy.

Conventions (as in DreamerV3):
    images[cam]: uint8 (B, T, 3, H, W), or float in [0, 1]; normalised inside to x/255 - 0.5.
    actions:     float (B, T, A); ``actions[:, t]`` is the action that led INTO frame t, so it is
                 ignored (zeroed) where ``is_first[:, t]`` is true.
    is_first:    bool (B, T); resets that sample's recurrent state to the learned initial state.
    frame_mask:  bool (B, T); False marks padding past an episode's end: those frames add no
                 reconstruction or KL loss (and, coming after the valid frames, cannot influence
                 them through the recurrence either).
    proprio:     float (B, T, P) raw units, only with ``cfg.use_proprio`` (symlog inside).

Model state: ``deter`` (B, D) GRU state and ``stoch`` (B, S, C), S categoricals with C classes
each, sampled one-hot with straight-through gradients, probabilities mixed with ``cfg.unimix``
(1 %) uniform. The decoder reads the feature ``cat(deter, stoch.flatten())`` of size D + S*C.

Loss: per camera, image MSE summed over the pixels of an image and averaged over valid frames
(DreamerV3's image loss), plus KL balancing with free bits,
``kl_dyn * max(free, KL(sg(post) || prior)) + kl_rep * max(free, KL(post || sg(prior)))``.
No reward or continue heads: LAWM only models observations.

Variants (``cfg.variant``):

* ``"paper"``: as above (the paper's model). Every window starts from the learned initial
  state and the posterior filters frames t..t+K, so frame t reaches the model only through its
  small stochastic state and the instruction never does; the chunk's cheapest use is then to
  say which task it is.
* ``"motion"``: the scene and the task reach the model through paths that bypass the chunk, and
  only the chunk drives what happens next. The state at frame t is built from frame t's full
  encoder embedding and the instruction embedding ``lang`` (B, L):
  ``deter_t = tanh(context(cat(embed_t, lang_encoder(lang))))``, ``stoch_t`` the posterior at
  (deter_t, embed_t); frames t+1..t+K are then predicted open-loop from the prior (``imagine``),
  whose only inputs are the chunk's actions. Loss: reconstruction of frame t and of the K
  predicted frames, plus the KL terms at frame t (posterior vs the prior of deter_t). The rollout
  uses the latents' modes (straight-through), so the gradient reaching the chunk carries no
  sampling noise. No learned initial state (nothing would train it).
* ``"kinematic"``: no recurrent state. Frame t's embedding gives a scene code
  ``scene = dense(embed_t)`` and a pose code ``pose_t = W_p embed_t`` (``cfg.pose_dim``); each
  latent action then moves the pose code by one shared linear map,
  ``pose_{t+i} = pose_t + W_a (z_{t+1} + ... + z_{t+i})``, and every frame t..t+K is rendered from
  ``(scene, pose_{t+i})`` by a small MLP and the image decoder. Nothing tells the decoder how far
  into the window a frame is except the summed chunk, and the chunk can only act as additive
  steps through one linear map, so its cheapest use is the per-step displacement of what moves
  (the arm): latent actions that relate linearly to end-effector deltas. Deterministic (no KL);
  the instruction is not read (the chunk must also say where the motion goes). Loss:
  reconstruction of frames t..t+K (and proprio when used). The default: on the demo's
  LIBERO data it is the variant whose pretraining lowers the fine-tuned policy's held-out
  action error below training from scratch (README, ``bench/learning.py``).

Parameter count of the paper's default (size "50m": deter 4096, hidden 512, 32x32 categoricals,
cnn_depth 32, one 128x128 camera, dense GRU; see ``describe``): 114.15 M in total, against the
reference model's ~115.7 M (-1.3 %):

    rssm.gru      56.65 M  Linear(512 + 4096 -> 3*4096, no bias) 56.62 M + LayerNorm(3*4096)
    rssm (rest)    9.97 M  posterior Linear(4096 + 8192 -> 512) 6.29 M, prior trunk
                           Linear(4096 -> 512) 2.10 M, img_in Linear(1024 + 7 -> 512) 0.53 M,
                           two logit heads Linear(512 -> 32*32) 1.05 M, norms, initial state
    encoder        2.79 M  5 convs 4x4 stride 2: 3 -> 32 -> 64 -> 128 -> 256 -> 512 channels
                           (128 -> 4 px), embedding 4*4*512 = 8192
    decoder       44.74 M  Linear(4096 + 1024 -> 4*4*512) 41.95 M (most of the non-GRU weight,
                           as in DreamerV3-style decoders) + transposed convs mirroring the
                           encoder, 2.79 M

The ~1.6 M gap to the reference is not itemised here (DreamerV3-style models also carry reward
and continue heads, which this model does not have). ``gru="blockdiag"`` keeps the GRU's input
weight dense but makes its recurrent weight block-diagonal (``gru_blocks`` groups): at 50m the GRU
drops to 12.59 M and the model to 70.09 M. It is much cheaper, but it is NOT the model the paper
measured.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lawm.config import WorldModelConfig

Carry = dict[str, Tensor]

# Spatial size at which the encoder stops halving and the decoder starts (DreamerV3 "minres").
_MIN_RES = 4


# -- small building blocks ----------------------------------------------------------------------
class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of a (N, C, H, W) map, independently per pixel.

    Per-sample statistics (unlike BatchNorm) keep training (batch 256) and CPU/robot inference
    (batch 1..8) identical.
    """

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _dense(d_in: int, d_out: int) -> nn.Sequential:
    """Linear (no bias: the norm's shift replaces it) -> LayerNorm -> SiLU."""
    return nn.Sequential(
        nn.Linear(d_in, d_out, bias=False), nn.LayerNorm(d_out, eps=1e-3), nn.SiLU()
    )


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): squashes large raw proprio values, keeps small ones ~linear."""
    return torch.sign(x) * torch.log1p(x.abs())


def _stages(image_size: int) -> int:
    n = int(round(math.log2(image_size / _MIN_RES)))
    if _MIN_RES * 2**n != image_size:
        raise ValueError(f"image_size must be {_MIN_RES} * 2**n, got {image_size!r}")
    return n


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on modules built on the meta device)."""
    return sum(p.numel() for p in module.parameters())


# -- images -------------------------------------------------------------------------------------
class FrameEncoder(nn.Module):
    """DreamerV3-style CNN: stride-2 4x4 convs, channel LayerNorm + SiLU, until 4x4 pixels.

    (B, T, 3, H, W) uint8 or float in [0, 1] -> (B, T, E); any number of leading dims works.
    Channels: depth, 2*depth, 4*depth, ...; E = 4 * 4 * depth * 2**(stages - 1).
    """

    def __init__(self, image_size: int, depth: int) -> None:
        super().__init__()
        self.image_size = image_size
        n = _stages(image_size)
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(n):
            c_out = depth * 2**i
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), ChannelNorm(c_out), nn.SiLU()]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in
        self.embed_dim = c_in * _MIN_RES * _MIN_RES

    def forward(self, images: Tensor) -> Tensor:
        lead = images.shape[:-3]
        if tuple(images.shape[-3:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"expected images (..., 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(images.shape)}"
            )
        x = images.reshape(-1, *images.shape[-3:])
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = self.net(x - 0.5)
        return x.reshape(*lead, self.embed_dim)


class FrameDecoder(nn.Module):
    """Feature (..., F) -> image (..., 3, H, W) in the centred space x/255 - 0.5.

    One Linear to a 4x4 x C grid (the bulk of the decoder's weights), then transposed 4x4/2 convs
    mirroring the encoder back to full resolution. Add 0.5 for pixel values in [0, 1].
    """

    def __init__(self, feat_dim: int, image_size: int, depth: int) -> None:
        super().__init__()
        self.image_size = image_size
        n = _stages(image_size)
        self.top = depth * 2 ** (n - 1)
        self.linear = nn.Linear(feat_dim, self.top * _MIN_RES * _MIN_RES)
        layers: list[nn.Module] = [ChannelNorm(self.top), nn.SiLU()]
        c_in = self.top
        for i in reversed(range(n - 1)):
            c_out = depth * 2**i
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                ChannelNorm(c_out),
                nn.SiLU(),
            ]
            c_in = c_out
        layers.append(nn.ConvTranspose2d(c_in, 3, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = self.net(x.view(-1, self.top, _MIN_RES, _MIN_RES))
        return x.reshape(*lead, 3, self.image_size, self.image_size)


# -- recurrent core -----------------------------------------------------------------------------
def _gru_update(parts: Tensor, deter: Tensor) -> Tensor:
    """DreamerV3's normalised GRU: parts (..., 3, D) = reset, candidate, update pre-activations.

    The update gate is biased by -1 so a fresh model mostly keeps its state (long memory).
    """
    reset, cand, update = parts.unbind(-2)
    reset = torch.sigmoid(reset)
    cand = torch.tanh(reset * cand)
    update = torch.sigmoid(update - 1.0)
    return update * cand + (1.0 - update) * deter


class DenseGRU(nn.Module):
    """The paper's GRU: one Linear(hidden + deter -> 3 * deter) + LayerNorm.

    (B, hidden), (B, D) -> (B, D). At D = 4096, hidden = 512 this is 56.6 M parameters.
    """

    def __init__(self, hidden: int, deter: int) -> None:
        super().__init__()
        self.deter = deter
        self.linear = nn.Linear(hidden + deter, 3 * deter, bias=False)
        self.norm = nn.LayerNorm(3 * deter, eps=1e-3)

    def forward(self, x: Tensor, deter: Tensor) -> Tensor:
        parts = self.norm(self.linear(torch.cat([x, deter], -1)))
        return _gru_update(parts.view(-1, 3, self.deter), deter)


class BlockDiagGRU(nn.Module):
    """Cheaper GRU (DreamerV3's block GRU idea), NOT the model the paper measured.

    The input (B, hidden) still reaches every unit through a dense Linear(hidden -> 3 * D), but the
    recurrent weight is block-diagonal: D splits into ``blocks`` groups and each group's gates see
    only its own slice of the previous state (information crosses groups through the stochastic
    state). Parameters: 3*D*hidden + 3*D*D/blocks instead of 3*D*(hidden + D).
    (B, hidden), (B, D) -> (B, D).
    """

    def __init__(self, hidden: int, deter: int, blocks: int) -> None:
        super().__init__()
        if deter % blocks:
            raise ValueError(f"deter {deter} must be divisible by gru_blocks {blocks}")
        self.deter, self.blocks, self.size = deter, blocks, deter // blocks
        self.inp = nn.Linear(hidden, 3 * deter, bias=False)
        self.rec = nn.Parameter(torch.empty(blocks, self.size, 3 * self.size))
        bound = 1.0 / math.sqrt(self.size)
        nn.init.uniform_(self.rec, -bound, bound)
        # Normalised per group, so each group behaves like an independent small GRU.
        self.norm = nn.LayerNorm(3 * self.size, eps=1e-3)

    def forward(self, x: Tensor, deter: Tensor) -> Tensor:
        b = deter.shape[0]
        rec = torch.einsum("bgi,gio->bgo", deter.view(b, self.blocks, self.size), self.rec)
        parts = self.norm(self.inp(x).view(b, self.blocks, 3 * self.size) + rec)
        # (B, G, 3, D/G) -> (B, 3, D) keeping each group's units contiguous in the state.
        parts = parts.view(b, self.blocks, 3, self.size).transpose(1, 2).reshape(b, 3, self.deter)
        return _gru_update(parts, deter)


# -- categorical latents and KL ------------------------------------------------------------------
def _to_float32(x: Tensor) -> Tensor:
    # Probabilities and KLs in at least float32, also under autocast.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def unimix_logits(raw: Tensor, unimix: float) -> Tensor:
    """(..., S, C) raw logits -> log of (1 - unimix) * softmax + unimix / C (normalised).

    The floor keeps every class probability >= unimix / C, so KLs stay finite and the prior can
    never become over-confident.
    """
    raw = _to_float32(raw)
    if unimix <= 0.0:
        return raw.log_softmax(-1)
    probs = (1.0 - unimix) * raw.softmax(-1) + unimix / raw.shape[-1]
    return probs.log()


def straight_through_sample(logits: Tensor, sample: bool = True) -> Tensor:
    """(..., S, C) normalised logits -> one-hot (..., S, C) with straight-through gradients.

    ``sample=False`` takes the mode. Sampling uses Gumbel-max with one uniform draw per class,
    so the random numbers consumed do not depend on the values (reproducible under a seed).
    """
    probs = logits.exp()
    if sample:
        u = torch.rand_like(probs).clamp_(torch.finfo(probs.dtype).tiny, 1.0)
        index = (logits - torch.log(-torch.log(u))).argmax(-1)
    else:
        index = logits.argmax(-1)
    one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return one_hot + probs - probs.detach()


def categorical_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) of S independent categoricals: (..., S, C) x2 -> (...), summed over S."""
    p_logits = _to_float32(p_logits).log_softmax(-1)
    q_logits = _to_float32(q_logits).log_softmax(-1)
    return (p_logits.exp() * (p_logits - q_logits)).sum((-2, -1))


def categorical_entropy(logits: Tensor) -> Tensor:
    """(..., S, C) -> (...) entropy in nats, summed over the S categoricals."""
    logits = _to_float32(logits).log_softmax(-1)
    return -(logits.exp() * logits).sum((-2, -1))


def kl_balance(
    post_logits: Tensor, prior_logits: Tensor, free_bits: float
) -> tuple[Tensor, Tensor, Tensor]:
    """DreamerV3 KL balancing, elementwise over the leading dims: (..., S, C) x2 -> 3 x (...).

    Returns ``dyn = max(free, KL(sg(post) || prior))`` (trains the prior to predict),
    ``rep = max(free, KL(post || sg(prior)))`` (makes the posterior predictable) and the raw,
    detached KL. Below ``free_bits`` nats the max is constant, so no gradient flows: the model
    is not pushed to squeeze information out of the latents once they are cheap enough.
    """
    dyn = categorical_kl(post_logits.detach(), prior_logits)
    rep = categorical_kl(post_logits, prior_logits.detach())
    raw = dyn.detach()
    return dyn.clamp_min(free_bits), rep.clamp_min(free_bits), raw


class RSSM(nn.Module):
    """Recurrent state-space model with an explicit carry ``dict(deter=(B, D), stoch=(B, S, C))``.

    One step: ``img_in(cat(stoch, action))`` -> GRU -> deter; the prior predicts stoch from deter
    alone, the posterior from deter and the observation embedding. Steps return
    ``dict(deter, stoch, logits)`` with ``logits`` (B, S, C) the normalised log-probabilities
    after unimix; sequence methods stack them to (B, T, ...).
    """

    def __init__(self, cfg: WorldModelConfig, embed_dim: int) -> None:
        super().__init__()
        self.deter = cfg.deter_size
        self.stoch, self.classes = cfg.stoch, cfg.classes
        self.hidden, self.action_dim, self.embed_dim = cfg.hidden, cfg.action_dim, embed_dim
        self.unimix = cfg.unimix
        sc = self.stoch * self.classes
        # Learned initial state: deter = tanh(init_deter); starts at zero like DreamerV3's. The
        # "motion" variant starts from a context frame instead, so it has none (an unused
        # parameter would also break DistributedDataParallel).
        self.init_deter: nn.Parameter | None = None
        if cfg.variant == "paper":
            self.init_deter = nn.Parameter(torch.zeros(self.deter))
        self.img_in = _dense(sc + self.action_dim, self.hidden)
        if cfg.gru == "dense":
            self.gru: nn.Module = DenseGRU(self.hidden, self.deter)
        else:
            self.gru = BlockDiagGRU(self.hidden, self.deter, cfg.gru_blocks)
        self.prior_net = nn.Sequential(_dense(self.deter, self.hidden), nn.Linear(self.hidden, sc))
        # Posterior trunk Linear(deter + embed -> hidden), kept as one weight; ``observe`` applies
        # its embedding columns to the whole sequence at once and only the deter columns per step.
        self.post_in = nn.Linear(self.deter + embed_dim, self.hidden, bias=False)
        self.post_norm = nn.LayerNorm(self.hidden, eps=1e-3)
        self.post_out = nn.Linear(self.hidden, sc)

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch * self.classes

    @staticmethod
    def feature(state: Carry) -> Tensor:
        """(..., D) and (..., S, C) -> (..., D + S*C), the decoders' input."""
        return torch.cat([state["deter"], state["stoch"].flatten(-2)], -1)

    # -- pieces ---------------------------------------------------------------------------------
    def _logits(self, raw: Tensor) -> Tensor:
        return unimix_logits(raw.unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def prior_logits(self, deter: Tensor) -> Tensor:
        """(B, D) -> (B, S, C)."""
        return self._logits(self.prior_net(deter))

    def _post_from(self, deter: Tensor, embed_proj: Tensor, sample: bool) -> Carry:
        d = self.deter
        h = embed_proj + F.linear(deter, self.post_in.weight[:, :d])
        logits = self._logits(self.post_out(F.silu(self.post_norm(h))))
        return {"deter": deter, "stoch": straight_through_sample(logits, sample), "logits": logits}

    def _embed_proj(self, embed: Tensor) -> Tensor:
        return F.linear(embed, self.post_in.weight[:, self.deter :])

    def initial(self, batch_size: int) -> Carry:
        """Learned initial carry: deter (B, D) = tanh(param); stoch (B, S, C) = prior mode."""
        if self.init_deter is None:
            raise ValueError(
                "world model variant 'motion' has no learned initial state: it starts from a "
                "context frame (WorldModel.context_state)"
            )
        deter = torch.tanh(self.init_deter)[None].expand(batch_size, -1)
        logits = self.prior_logits(deter[:1])
        stoch = F.one_hot(logits.argmax(-1), self.classes).to(deter.dtype)
        return {"deter": deter, "stoch": stoch.expand(batch_size, -1, -1)}

    def _reset(self, carry: Carry, action: Tensor, is_first: Tensor, init: Carry):
        # torch.where, not a Python branch on is_first.any(): no host sync, and the replaced
        # entries get exactly zero gradient (so an action at is_first reaches nothing).
        f = is_first.bool()
        deter = torch.where(f[:, None], init["deter"], carry["deter"])
        stoch = torch.where(f[:, None, None], init["stoch"], carry["stoch"])
        action = torch.where(f[:, None], torch.zeros_like(action), action)
        return {"deter": deter, "stoch": stoch}, action

    # -- steps ----------------------------------------------------------------------------------
    def img_step(self, carry: Carry, action: Tensor, sample: bool = True) -> Carry:
        """Prior step: carry (deter (B, D), stoch (B, S, C)), action (B, A) -> prior state."""
        x = self.img_in(torch.cat([carry["stoch"].flatten(-2), action], -1))
        deter = self.gru(x, carry["deter"])
        logits = self.prior_logits(deter)
        return {"deter": deter, "stoch": straight_through_sample(logits, sample), "logits": logits}

    def obs_step(
        self,
        carry: Carry,
        action: Tensor,
        embed: Tensor,
        is_first: Tensor,
        sample: bool = True,
    ) -> tuple[Carry, Carry]:
        """One filtering step: action (B, A), embed (B, E), is_first (B,) -> (post, prior).

        Where ``is_first`` is true the carry is replaced by ``initial`` and the action by zeros.
        """
        init = self.initial(action.shape[0])
        return self._obs_step(carry, action, self._embed_proj(embed), is_first, init, sample)

    def _obs_step(self, carry, action, embed_proj, is_first, init, sample):
        carry, action = self._reset(carry, action, is_first, init)
        prior = self.img_step(carry, action, sample)
        post = self._post_from(prior["deter"], embed_proj, sample)
        return post, prior

    # -- sequences ------------------------------------------------------------------------------
    def observe(
        self,
        embeds: Tensor,
        actions: Tensor,
        is_first: Tensor,
        carry: Carry | None = None,
        sample: bool = True,
    ) -> tuple[Carry, Carry]:
        """embeds (B, T, E), actions (B, T, A), is_first (B, T) -> (posts, priors), each
        ``dict(deter=(B, T, D), stoch=(B, T, S, C), logits=(B, T, S, C))``.

        ``carry`` defaults to the initial state (``is_first[:, 0]`` resets it anyway).
        """
        b, t = actions.shape[:2]
        init = self.initial(b)
        carry = init if carry is None else carry
        embed_proj = self._embed_proj(embeds)  # (B, T, hidden): one matmul for all steps
        posts, priors = [], []
        for i in range(t):
            post, prior = self._obs_step(
                carry, actions[:, i], embed_proj[:, i], is_first[:, i], init, sample
            )
            posts.append(post)
            priors.append(prior)
            carry = post
        return _stack(posts), _stack(priors)

    def imagine(self, carry: Carry, actions: Tensor, sample: bool = True) -> Carry:
        """Open-loop prediction from ``carry`` with actions (B, T, A) -> priors (B, T, ...)."""
        priors = []
        for i in range(actions.shape[1]):
            carry = self.img_step(carry, actions[:, i], sample)
            priors.append(carry)
        return _stack(priors)


def _stack(states: list[Carry]) -> Carry:
    return {k: torch.stack([s[k] for s in states], 1) for k in states[0]}


def _last(states: Carry) -> Carry:
    return {k: v[:, -1] for k, v in states.items()}


# -- the world model ----------------------------------------------------------------------------
class WorldModel(nn.Module):
    """Image (and optionally proprio) world model over ``cfg.cameras``, latent actions as input.

    The paper uses one camera; several cameras (embeddings concatenated, one decoder each) and
    proprio (MLP encoder/decoder on symlog values) are its stated future work, enabled by config.
    """

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict(
            {c: FrameEncoder(cfg.image_size, cfg.cnn_depth) for c in cfg.cameras}
        )
        embed_dim = sum(e.embed_dim for e in self.encoders.values())
        self.proprio_encoder: nn.Module | None = None
        self.proprio_decoder: nn.Module | None = None
        if cfg.use_proprio:
            self.proprio_encoder = nn.Sequential(
                _dense(cfg.proprio_dim, cfg.hidden), _dense(cfg.hidden, cfg.hidden)
            )
            embed_dim += cfg.hidden
        self.embed_dim = embed_dim
        kinematic = cfg.variant == "kinematic"
        # The "kinematic" variant has no recurrent state (see the module docstring).
        self.rssm: RSSM | None = None if kinematic else RSSM(cfg, embed_dim)
        feat = cfg.hidden if kinematic else self.rssm.feat_dim
        self.decoders = nn.ModuleDict(
            {c: FrameDecoder(feat, cfg.image_size, cfg.cnn_depth) for c in cfg.cameras}
        )
        if cfg.use_proprio:
            self.proprio_decoder = nn.Sequential(
                _dense(feat, cfg.hidden),
                _dense(cfg.hidden, cfg.hidden),
                nn.Linear(cfg.hidden, cfg.proprio_dim),
            )
        # "motion" variant: the paths from frame t and the instruction into the state.
        self.lang_encoder: nn.Module | None = None
        self.context: nn.Module | None = None
        if cfg.variant == "motion":
            self.lang_encoder = _dense(cfg.lang_dim, cfg.hidden)
            self.context = nn.Sequential(
                _dense(embed_dim + cfg.hidden, cfg.hidden), nn.Linear(cfg.hidden, cfg.deter_size)
            )
        # "kinematic" variant: scene and pose codes of frame t, the chunk's linear steps.
        self.scene: nn.Module | None = None
        self.pose: nn.Module | None = None
        self.displace: nn.Module | None = None
        self.render: nn.Module | None = None
        if kinematic:
            self.scene = _dense(embed_dim, cfg.hidden)
            self.pose = nn.Linear(embed_dim, cfg.pose_dim)
            self.displace = nn.Linear(cfg.action_dim, cfg.pose_dim, bias=False)
            self.render = nn.Sequential(
                _dense(cfg.hidden + cfg.pose_dim, cfg.hidden), _dense(cfg.hidden, cfg.hidden)
            )

    # -- helpers --------------------------------------------------------------------------------
    def _check_inputs(self, images: dict[str, Tensor], actions: Tensor) -> None:
        missing = [c for c in self.cfg.cameras if c not in images]
        if missing:
            raise ValueError(f"world model needs cameras {missing}, got {sorted(images)}")
        if actions.dim() != 3 or actions.shape[-1] != self.cfg.action_dim:
            raise ValueError(
                f"actions must be (B, T, {self.cfg.action_dim}), got {tuple(actions.shape)}"
            )

    def embed(
        self,
        images: dict[str, Tensor],
        proprio: Tensor | None = None,
        camera_mask: Tensor | None = None,
        has_proprio: Tensor | None = None,
    ) -> Tensor:
        """images[cam] (B, T, 3, H, W), proprio (B, T, P) -> embedding (B, T, E).

        camera_mask (B, n_cams) in ``cfg.cameras`` order and has_proprio (B,) mark the inputs a
        sample has; an absent one's embedding is zero (by ``where``: its pixels or values reach
        neither the embedding nor any gradient), as the policy hides an absent input's token.
        """
        parts = []
        for i, c in enumerate(self.cfg.cameras):
            e = self.encoders[c](images[c])
            if camera_mask is not None:
                keep = camera_mask[:, i].to(device=e.device, dtype=torch.bool)
                e = torch.where(keep[:, None, None], e, torch.zeros_like(e))
            parts.append(e)
        if self.proprio_encoder is not None:
            if proprio is None:
                raise ValueError("this world model uses proprio (use_proprio=True); got None")
            e = self.proprio_encoder(symlog(proprio.float()))
            if has_proprio is not None:
                keep = has_proprio.to(device=e.device, dtype=torch.bool)
                e = torch.where(keep[:, None, None], e, torch.zeros_like(e))
            parts.append(e)
        return torch.cat(parts, -1)

    def decode(self, feat: Tensor) -> dict[str, Tensor]:
        """feat (B, T, F) -> {cam: (B, T, 3, H, W) centred}, plus 'proprio' (B, T, P) symlog."""
        out = {c: self.decoders[c](feat) for c in self.cfg.cameras}
        if self.proprio_decoder is not None:
            out["proprio"] = self.proprio_decoder(feat)
        return out

    # -- the "motion" variant's open-loop states ----------------------------------------------
    def context_state(
        self, embed: Tensor, lang: Tensor, sample: bool = False
    ) -> tuple[Carry, Tensor]:
        """The "motion" variant's state at frame t: its embedding (B, E) and the instruction
        embedding (B, L) -> (posterior dict(deter, stoch, logits), prior logits (B, S, C) of the
        same deter). ``sample=False`` takes the posterior's mode."""
        if self.context is None or self.lang_encoder is None:
            raise ValueError(f"context_state needs variant 'motion', not {self.cfg.variant!r}")
        lang_h = self.lang_encoder(lang.to(embed.dtype))
        deter = torch.tanh(self.context(torch.cat([embed, lang_h], -1)))
        post = self.rssm._post_from(deter, self.rssm._embed_proj(embed), sample)
        return post, self.rssm.prior_logits(deter)

    def _open_loop_states(
        self,
        images: dict[str, Tensor],
        actions: Tensor,
        is_first: Tensor,
        lang: Tensor | None,
        proprio: Tensor | None,
        camera_mask: Tensor | None,
        has_proprio: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The "motion" variant's states: frame 0's from its observation and ``lang``, then
        frames 1..T-1 imagined from ``actions[:, 1:]`` alone -> (feat (B, T, F), posterior
        logits (B, 1, S, C) and prior logits (B, 1, S, C) at frame 0, prior logits
        (B, T, S, C))."""
        b, t = actions.shape[:2]
        if lang is None:
            raise ValueError(
                "world model variant 'motion' is conditioned on the instruction: pass lang "
                f"(B, {self.cfg.lang_dim})"
            )
        if tuple(lang.shape) != (b, self.cfg.lang_dim):
            raise ValueError(
                f"lang must be (B, {self.cfg.lang_dim}) = ({b}, {self.cfg.lang_dim}), "
                f"got {tuple(lang.shape)}"
            )
        first = is_first.bool()
        if not bool(first[:, 0].all()) or bool(first[:, 1:].any()):
            raise ValueError(
                "world model variant 'motion' predicts one window of one episode from its first "
                "frame: is_first must be true at frame 0 only"
            )
        frame0 = {c: images[c][:, :1] for c in self.cfg.cameras}
        p0 = proprio[:, :1] if proprio is not None else None
        embed0 = self.embed(frame0, p0, camera_mask, has_proprio)[:, 0]
        post0, prior0 = self.context_state(embed0, lang)
        feat = self.rssm.feature(post0)[:, None]
        prior_all = prior0[:, None]
        if t > 1:
            priors = self.rssm.imagine(post0, actions[:, 1:], sample=False)
            feat = torch.cat([feat, self.rssm.feature(priors)], 1)
            prior_all = torch.cat([prior_all, priors["logits"]], 1)
        return feat, post0["logits"][:, None], prior0[:, None], prior_all

    def _kinematic_states(
        self,
        images: dict[str, Tensor],
        actions: Tensor,
        is_first: Tensor,
        proprio: Tensor | None,
        camera_mask: Tensor | None,
        has_proprio: Tensor | None,
    ) -> Tensor:
        """The "kinematic" variant's features (B, T, hidden): frame 0's scene code with the pose
        code of frame 0 moved by ``actions[:, 1:]`` (cumulative, through one linear map)."""
        assert self.scene is not None and self.pose is not None
        assert self.displace is not None and self.render is not None
        first = is_first.bool()
        if not bool(first[:, 0].all()) or bool(first[:, 1:].any()):
            raise ValueError(
                "world model variant 'kinematic' predicts one window of one episode from its "
                "first frame: is_first must be true at frame 0 only"
            )
        t = actions.shape[1]
        frame0 = {c: images[c][:, :1] for c in self.cfg.cameras}
        p0 = proprio[:, :1] if proprio is not None else None
        embed0 = self.embed(frame0, p0, camera_mask, has_proprio)[:, 0]
        steps = self.displace(actions[:, 1:].to(embed0.dtype))  # (B, T-1, pose)
        pose0 = self.pose(embed0)[:, None]
        pose = torch.cat([pose0, pose0 + torch.cumsum(steps, 1)], 1)  # (B, T, pose)
        scene = self.scene(embed0)[:, None].expand(-1, t, -1)
        return self.render(torch.cat([scene, pose], -1))

    # -- training -------------------------------------------------------------------------------
    def loss(
        self,
        images: dict[str, Tensor],
        actions: Tensor,
        is_first: Tensor,
        proprio: Tensor | None = None,
        frame_mask: Tensor | None = None,
        camera_mask: Tensor | None = None,
        has_proprio: Tensor | None = None,
        lang: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """World-model loss over a sequence; differentiable w.r.t. ``actions``.

        images[cam] (B, T, 3, H, W) uint8, actions (B, T, A), is_first (B, T) bool,
        proprio (B, T, P) | None, frame_mask (B, T) bool | None, camera_mask (B, n_cams) bool
        | None (``cfg.cameras`` order), has_proprio (B,) bool | None, lang (B, L) | None (read
        by the "motion" variant only, which needs it) -> (scalar loss, metrics).

        The "motion" variant starts from frame 0 (``is_first`` true there only) and predicts
        frames 1..T-1 open-loop from ``actions[:, 1:]``; its KL terms are those of frame 0.

        An absent camera (or proprio) of a sample is neither encoded (see ``embed``) nor
        reconstructed: the loss and its gradients do not depend on its pixels (the zeros a
        dataset puts there). Each camera's image loss is averaged over the valid frames that
        have it; a sample with no observation at all adds nothing, not even KL.
        Metrics: loss, recon (image loss, summed pixels), recon_mse (per pixel, in [0, 1]
        units), kl_dyn / kl_rep (after free bits), kl (raw), prior_ent, post_ent, and proprio
        (symlog MSE) when used; recon_<cam> per camera when there are several.
        """
        self._check_inputs(images, actions)
        cfg = self.cfg
        b, t = actions.shape[:2]
        if camera_mask is not None and tuple(camera_mask.shape) != (b, len(cfg.cameras)):
            raise ValueError(
                f"camera_mask must be (B, {len(cfg.cameras)}) in the order {cfg.cameras}, "
                f"got {tuple(camera_mask.shape)}"
            )
        use_proprio = self.proprio_decoder is not None
        has_p = has_proprio if use_proprio else None
        kl_post = kl_prior = prior_all = None
        if cfg.variant == "kinematic":
            feat = self._kinematic_states(images, actions, is_first, proprio, camera_mask, has_p)
        elif cfg.variant == "motion":
            feat, kl_post, kl_prior, prior_all = self._open_loop_states(
                images, actions, is_first, lang, proprio, camera_mask, has_p
            )
        else:
            assert self.rssm is not None
            embeds = self.embed(images, proprio, camera_mask, has_p)
            posts, priors = self.rssm.observe(embeds, actions, is_first)
            feat = self.rssm.feature(posts)
            kl_post, kl_prior, prior_all = posts["logits"], priors["logits"], priors["logits"]
        preds = self.decode(feat)
        dev = feat.device

        if frame_mask is None:
            mask = torch.ones(b, t, device=dev)
        else:
            mask = frame_mask.to(device=dev, dtype=torch.float32)
        ones = torch.ones(b, device=dev)
        cam_present = (
            torch.ones(b, len(cfg.cameras), device=dev)
            if camera_mask is None
            else camera_mask.to(device=dev, dtype=torch.float32)
        )
        prop_present = (
            ones if has_proprio is None or not use_proprio else has_proprio.to(dev).float()
        )
        observed = cam_present.amax(1)
        if use_proprio:
            observed = torch.maximum(observed, prop_present)
        frames = mask * observed[:, None]  # (B, T): valid frames with some observation

        def masked_sum(x: Tensor, weight: Tensor) -> Tensor:  # (B, T) -> scalar
            # where(), not multiplication: a non-finite value in a left-out frame stays out.
            return torch.where(
                weight > 0, x.float(), torch.zeros_like(x, dtype=torch.float32)
            ).sum()

        def masked_mean(x: Tensor, weight: Tensor) -> Tensor:
            return masked_sum(x, weight) / weight.sum().clamp_min(1.0)

        total = feat.new_zeros((), dtype=torch.float32)
        image_loss = feat.new_zeros((), dtype=torch.float32)
        mse_sum = feat.new_zeros((), dtype=torch.float32)
        extra: dict[str, Tensor] = {}
        for i, c in enumerate(cfg.cameras):
            target = images[c]
            target = target.float() / 255.0 if target.dtype == torch.uint8 else target.float()
            err = (preds[c].float() - (target - 0.5)).square()  # (B, T, 3, H, W)
            weight = mask * cam_present[:, i, None]
            cam_loss = masked_mean(err.sum((-3, -2, -1)), weight)
            image_loss = image_loss + cam_loss
            mse_sum = mse_sum + masked_sum(err.mean((-3, -2, -1)), weight).detach()
            if len(cfg.cameras) > 1:
                extra[f"recon_{c}"] = cam_loss.detach()
        n_images = (mask[:, :, None] * cam_present[:, None, :]).sum().clamp_min(1.0)
        total = total + image_loss
        if use_proprio:
            assert proprio is not None  # embed() already raised otherwise
            p_err = (preds["proprio"].float() - symlog(proprio.float())).square().sum(-1)
            p_loss = masked_mean(p_err, mask * prop_present[:, None])
            total = total + p_loss
            extra["proprio"] = p_loss.detach()

        kl_values: dict[str, Tensor] = {}
        if kl_post is not None:  # every variant but the deterministic "kinematic"
            kl_frames = frames[:, : kl_post.shape[1]]  # all frames; frame 0 alone for "motion"
            dyn, rep, raw = kl_balance(kl_post, kl_prior, cfg.free_bits)
            dyn, rep = masked_mean(dyn, kl_frames), masked_mean(rep, kl_frames)
            total = total + cfg.kl_dyn * dyn + cfg.kl_rep * rep
            with torch.no_grad():
                kl_values = {
                    "kl_dyn": dyn.detach(),
                    "kl_rep": rep.detach(),
                    "kl": masked_mean(raw, kl_frames),
                    "prior_ent": masked_mean(categorical_entropy(prior_all), frames),
                    "post_ent": masked_mean(categorical_entropy(kl_post), kl_frames),
                }

        with torch.no_grad():
            values = {
                "loss": total.detach(),
                "recon": image_loss.detach(),
                "recon_mse": mse_sum / n_images,
                **kl_values,
                **extra,
            }
            # One device->host copy for all metrics instead of one sync per .item().
            flat = torch.stack([v.float() for v in values.values()]).tolist()
        return total, dict(zip(values, flat))

    # -- inspection -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: dict[str, Tensor],
        actions: Tensor,
        n_context: int,
        proprio: Tensor | None = None,
        sample: bool = False,
        lang: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Observe frames [0, n_context), then imagine the rest open-loop from the actions.

        The "motion" variant takes one context frame (``n_context=1``) and needs ``lang``
        (B, L); it always uses the latents' modes.

        images[cam] (B, >= n_context, 3, H, W), actions (B, T, A) (``actions[:, t]`` leads into
        frame t), proprio (B, >= n_context, P) when used -> {cam: (B, T, 3, H, W) float in
        [0, 1]} (posterior reconstructions for the context, predictions after it), plus
        'proprio' (B, T, P) in raw units when used. ``sample=False`` uses latent modes.
        """
        self._check_inputs(images, actions)
        b, t = actions.shape[:2]
        if not 1 <= n_context <= t:
            raise ValueError(f"n_context must be in [1, {t}], got {n_context!r}")
        ctx = {c: images[c][:, :n_context] for c in self.cfg.cameras}
        p_ctx = proprio[:, :n_context] if proprio is not None else None
        if self.cfg.variant in ("motion", "kinematic"):
            if n_context != 1:
                raise ValueError(
                    f"world model variant {self.cfg.variant!r} predicts from one context frame "
                    f"(n_context=1), got {n_context!r}"
                )
            is_first = torch.zeros(b, t, dtype=torch.bool, device=actions.device)
            is_first[:, 0] = True
            if self.cfg.variant == "kinematic":
                feat = self._kinematic_states(ctx, actions, is_first, p_ctx, None, None)
            else:
                feat = self._open_loop_states(ctx, actions, is_first, lang, p_ctx, None, None)[0]
            out = self.decode(feat)
        else:
            assert self.rssm is not None
            is_first = torch.zeros(b, n_context, dtype=torch.bool, device=actions.device)
            is_first[:, 0] = True
            posts, _ = self.rssm.observe(
                self.embed(ctx, p_ctx), actions[:, :n_context], is_first, sample=sample
            )
            feat = self.rssm.feature(posts)
            if n_context < t:
                priors = self.rssm.imagine(_last(posts), actions[:, n_context:], sample=sample)
                feat = torch.cat([feat, self.rssm.feature(priors)], 1)
            out = self.decode(feat)
        result = {c: (out[c].float() + 0.5).clamp(0.0, 1.0) for c in self.cfg.cameras}
        if "proprio" in out:
            y = out["proprio"].float()
            result["proprio"] = torch.sign(y) * torch.expm1(y.abs())  # inverse symlog
        return result


def describe(cfg: WorldModelConfig) -> dict[str, int]:
    """Parameter counts per component, built on the meta device (no memory, ~instant).

    Keys: encoder (image encoders), rssm, rssm_gru, rssm_rest, decoder (image decoders),
    proprio (proprio encoder + decoder, 0 when unused), context (the "motion" variant's frame
    and instruction paths into the state; the "kinematic" variant's scene, pose, displacement
    and render layers; 0 for "paper"), total. The "kinematic" variant has no rssm (0).
    """
    with torch.device("meta"):
        wm = WorldModel(cfg)
    gru = count_parameters(wm.rssm.gru) if wm.rssm is not None else 0
    rssm = count_parameters(wm.rssm) if wm.rssm is not None else 0
    proprio = sum(
        count_parameters(m) for m in (wm.proprio_encoder, wm.proprio_decoder) if m is not None
    )
    paths = (wm.lang_encoder, wm.context, wm.scene, wm.pose, wm.displace, wm.render)
    context = sum(count_parameters(m) for m in paths if m is not None)
    return {
        "encoder": count_parameters(wm.encoders),
        "rssm": rssm,
        "rssm_gru": gru,
        "rssm_rest": rssm - gru,
        "decoder": count_parameters(wm.decoders),
        "proprio": proprio,
        "context": context,
        "total": count_parameters(wm),
    }
