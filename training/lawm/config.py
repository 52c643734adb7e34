"""Typed configuration for the LAWM policy, world model and training, with named presets.

A preset is a named set of values (`debug`, `small`, `paper`), never a fork of the code. Every
config validates itself in ``__post_init__`` and quotes the bad value in its error. Configs
round-trip through JSON (``to_dict`` / ``from_dict``), which is how checkpoints and exported
models record what they were built from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lawm_core import contract

# World-model sizes (DreamerV3 naming): deterministic GRU state per size. The paper's default is
# "50m"; its ablation: 25m -> 93 %, 50m -> 96 % LIBERO success.
WORLD_MODEL_SIZES: dict[str, int] = {
    "tiny": 64,
    "1m": 512,
    "12m": 2048,
    "25m": 3072,
    "50m": 4096,
    "100m": 6144,
}

# How the world model is driven by the policy's chunk during pretraining (see world_model.py).
# "paper": the paper's RSSM filters frames t..t+K from a learned initial state; it sees frame t
#   only through its small stochastic state and never sees the instruction.
# "motion": the state starts from frame t's full embedding and the instruction embedding, then
#   frames t+1..t+K are predicted open-loop from the prior, driven only by the chunk.
# "kinematic": a scene code and a pose code from frame t; each latent action moves the pose
#   code by one shared linear map, and frames t..t+K are rendered from (scene, pose).
WORLD_MODEL_VARIANTS: tuple[str, ...] = ("paper", "motion", "kinematic")


class ConfigError(ValueError):
    """A configuration value is invalid; the message quotes it."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _positive(name: str, value: Any) -> None:
    _check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        f"{name} must be a positive number, got {value!r}",
    )


@dataclass(frozen=True)
class PolicyConfig:
    """BAKU-style policy: FiLM ResNet-18 trunk (to layer2) per camera, GPT trunk, chunk head."""

    cameras: tuple[str, ...] = contract.CAMERAS
    image_size: int = 128
    proprio_dim: int = contract.PROPRIO_DIM
    action_dim: int = contract.ACTION_DIM
    chunk_size: int = 10
    lang_dim: int = 384
    hidden_dim: int = 256
    n_layers: int = 8
    n_heads: int = 4
    dropout: float = 0.1
    head_hidden: int = 256
    head_layers: int = 2
    # ResNet width multiplier: 64 is ResNet-18; smaller values make CPU presets fast.
    trunk_width: int = 64
    use_proprio: bool = True
    control_rate_hz: float = 20.0

    def __post_init__(self) -> None:
        _check(
            len(self.cameras) >= 1, f"cameras must name at least one camera, got {self.cameras!r}"
        )
        _check(
            len(set(self.cameras)) == len(self.cameras),
            f"cameras must be distinct, got {self.cameras!r}",
        )
        for name in (
            "image_size",
            "proprio_dim",
            "action_dim",
            "chunk_size",
            "lang_dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "head_hidden",
            "head_layers",
            "trunk_width",
            "control_rate_hz",
        ):
            _positive(name, getattr(self, name))
        _check(
            self.image_size % 8 == 0 and self.image_size >= 32,
            f"image_size must be a multiple of 8 and >= 32, got {self.image_size!r}",
        )
        _check(
            self.hidden_dim % self.n_heads == 0,
            f"hidden_dim {self.hidden_dim!r} must be divisible by n_heads {self.n_heads!r}",
        )
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class WorldModelConfig:
    """DreamerV3-style RSSM over images, driven by the policy's latent action chunk."""

    size: str = "50m"
    deter: int = 0  # 0: taken from WORLD_MODEL_SIZES[size]
    hidden: int = 512
    stoch: int = 32
    classes: int = 32
    unimix: float = 0.01
    cnn_depth: int = 32
    image_size: int = 128
    action_dim: int = contract.ACTION_DIM
    kl_dyn: float = 0.5
    kl_rep: float = 0.1
    free_bits: float = 1.0
    # "dense": one Linear(hidden + deter -> 3 * deter), as in the paper. "blockdiag": DreamerV3's
    # block-diagonal GRU with `gru_blocks` groups; far cheaper, NOT what the paper measured.
    gru: str = "dense"
    gru_blocks: int = 8
    # Beyond the paper (its stated future work): world model over every camera + proprio.
    cameras: tuple[str, ...] = (contract.CAMERAS[0],)
    use_proprio: bool = False
    proprio_dim: int = contract.PROPRIO_DIM
    # One of WORLD_MODEL_VARIANTS; "motion" also reads the instruction embedding (lang_dim).
    variant: str = "kinematic"
    lang_dim: int = 384
    pose_dim: int = 32  # the "kinematic" variant's pose code

    def __post_init__(self) -> None:
        _check(
            self.variant in WORLD_MODEL_VARIANTS,
            f"world model variant must be one of {list(WORLD_MODEL_VARIANTS)}, "
            f"got {self.variant!r}",
        )
        _check(
            self.size in WORLD_MODEL_SIZES,
            f"world model size must be one of {sorted(WORLD_MODEL_SIZES)}, got {self.size!r}",
        )
        _check(
            isinstance(self.deter, int) and self.deter >= 0,
            f"deter must be an int >= 0, got {self.deter!r}",
        )
        for name in (
            "hidden",
            "stoch",
            "classes",
            "cnn_depth",
            "image_size",
            "action_dim",
            "lang_dim",
            "pose_dim",
        ):
            _positive(name, getattr(self, name))
        _check(
            self.image_size in (32, 64, 128, 256),
            f"world model image_size must be 32, 64, 128 or 256, got {self.image_size!r}",
        )
        _check(0.0 <= self.unimix < 1.0, f"unimix must be in [0, 1), got {self.unimix!r}")
        _check(
            self.gru in ("dense", "blockdiag"),
            f"gru must be 'dense' or 'blockdiag', got {self.gru!r}",
        )
        if self.gru == "blockdiag":
            _check(
                self.deter_size % self.gru_blocks == 0 and self.hidden % self.gru_blocks == 0,
                f"deter {self.deter_size} and hidden {self.hidden} must be divisible by "
                f"gru_blocks {self.gru_blocks!r}",
            )
        _check(len(self.cameras) >= 1, f"world model needs a camera, got {self.cameras!r}")

    @property
    def deter_size(self) -> int:
        return self.deter or WORLD_MODEL_SIZES[self.size]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + cosine schedule with warm-up; reference defaults."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 1000
    grad_clip: float = 100.0
    batch_size: int = 256
    grad_accum: int = 1
    steps: int = 10000
    num_workers: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0
    amp: bool = True  # mixed precision on GPU only; ignored on CPU
    # Fine-tuning from pretrained weights: learning-rate factor of every loaded policy weight
    # except the action head's (a pretrained trunk moved more gently than a fresh head).
    init_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _check(
            0.0 < self.init_lr_scale <= 1.0,
            f"init_lr_scale must be in (0, 1], got {self.init_lr_scale!r}",
        )
        for name in (
            "lr",
            "batch_size",
            "grad_accum",
            "steps",
            "checkpoint_every",
            "log_every",
            "grad_clip",
        ):
            _positive(name, getattr(self, name))
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas!r}",
        )
        _check(
            self.batch_size % self.grad_accum == 0,
            f"batch_size {self.batch_size!r} must be divisible by grad_accum {self.grad_accum!r}",
        )
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Fine-tuning augmentation (reference: colour jitter 0.3, random shift 4 px)."""

    color_jitter: float = 0.3
    random_shift: int = 4
    # Probability of hiding the proprio token from a fine-tuning sample (as for video without
    # robot state), so that the images, not the arm's own pose, have to carry where things are.
    proprio_dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(
            0 <= self.proprio_dropout < 1,
            f"proprio_dropout must be in [0, 1), got {self.proprio_dropout!r}",
        )
        _check(
            0 <= self.color_jitter <= 1,
            f"color_jitter must be in [0, 1], got {self.color_jitter!r}",
        )
        _check(self.random_shift >= 0, f"random_shift must be >= 0, got {self.random_shift!r}")


PRETRAIN_CHUNKS = ("policy", "shuffled")


@dataclass(frozen=True)
class LawmConfig:
    """Everything needed to rebuild a model and resume its training."""

    preset: str = "paper"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    pretrain: OptimConfig = field(default_factory=OptimConfig)
    finetune: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Feed frame t as the RSSM's first observation so z[t] explains t -> t+1 (see DESIGN.md).
    wm_observe_current: bool = True
    # Which chunk the world model gets in pretraining: "policy" (LAWM), or "shuffled" (another
    # window's chunk of the batch: a control that trains the policy through the same objective
    # but with a chunk that cannot explain its window's motion).
    pretrain_chunk: str = "policy"

    def __post_init__(self) -> None:
        _check(
            self.policy.action_dim == self.world_model.action_dim,
            f"policy action_dim {self.policy.action_dim} != world model action_dim "
            f"{self.world_model.action_dim}",
        )
        for cam in self.world_model.cameras:
            _check(
                cam in self.policy.cameras,
                f"world model camera {cam!r} is not a policy camera {self.policy.cameras!r}",
            )
        _check(
            self.pretrain_chunk in PRETRAIN_CHUNKS,
            f"pretrain_chunk must be one of {list(PRETRAIN_CHUNKS)}, got {self.pretrain_chunk!r}",
        )
        if self.world_model.variant == "motion":
            _check(
                self.world_model.lang_dim == self.policy.lang_dim,
                f"world model lang_dim {self.world_model.lang_dim} != policy lang_dim "
                f"{self.policy.lang_dim} (world model variant 'motion' reads the instruction)",
            )
        if self.world_model.variant in ("motion", "kinematic"):
            _check(
                self.wm_observe_current,
                f"world model variant {self.world_model.variant!r} starts from frame t, so it "
                "needs wm_observe_current=True (not --reference-wm-frames), got False",
            )

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LawmConfig:
        def build(klass, value):
            if not isinstance(value, dict):
                raise ConfigError(f"{klass.__name__} expects an object, got {value!r}")
            names = {f.name: f for f in dataclasses.fields(klass)}
            unknown = set(value) - set(names)
            if unknown:
                raise ConfigError(f"unknown {klass.__name__} keys: {sorted(unknown)}")
            kwargs = {}
            for k, v in value.items():
                sub = _NESTED.get((klass, k))
                if sub is not None:
                    kwargs[k] = build(sub, v)
                elif isinstance(v, list):
                    kwargs[k] = tuple(v)
                else:
                    kwargs[k] = v
            return klass(**kwargs)

        wm = data.get("world_model") if isinstance(data, dict) else None
        if isinstance(wm, dict) and "variant" not in wm:
            # Written before world models had variants: those were all the paper's model (the
            # default variant has changed since).
            data = {**data, "world_model": {**wm, "variant": "paper"}}
        return build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> LawmConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> LawmConfig:
        return dataclasses.replace(self, **changes)


_NESTED = {
    (LawmConfig, "policy"): PolicyConfig,
    (LawmConfig, "world_model"): WorldModelConfig,
    (LawmConfig, "pretrain"): OptimConfig,
    (LawmConfig, "finetune"): OptimConfig,
    (LawmConfig, "augment"): AugmentConfig,
}


def _debug() -> LawmConfig:
    # Seconds per few steps on a 2-core CPU; for tests.
    img = 32
    return LawmConfig(
        preset="debug",
        policy=PolicyConfig(
            image_size=img,
            hidden_dim=32,
            n_layers=1,
            n_heads=2,
            dropout=0.0,
            head_hidden=32,
            trunk_width=8,
            chunk_size=4,
        ),
        world_model=WorldModelConfig(
            size="tiny", hidden=32, stoch=4, classes=4, cnn_depth=4, image_size=img
        ),
        pretrain=OptimConfig(
            lr=1e-3, batch_size=8, warmup_steps=5, steps=50, checkpoint_every=25, log_every=5
        ),
        finetune=OptimConfig(
            lr=1e-3, batch_size=8, warmup_steps=5, steps=50, checkpoint_every=25, log_every=5
        ),
        augment=AugmentConfig(color_jitter=0.0, random_shift=1),
    )


def _small() -> LawmConfig:
    # Minutes on a laptop CPU: 64x64 images, a 4-layer trunk and a 1m-class world model.
    img = 64
    return LawmConfig(
        preset="small",
        policy=PolicyConfig(
            image_size=img,
            hidden_dim=128,
            n_layers=4,
            n_heads=4,
            dropout=0.1,
            head_hidden=128,
            trunk_width=16,
            chunk_size=10,
        ),
        world_model=WorldModelConfig(
            size="1m", deter=256, hidden=128, stoch=16, classes=16, cnn_depth=16, image_size=img
        ),
        pretrain=OptimConfig(
            lr=3e-4,
            batch_size=16,
            warmup_steps=100,
            steps=1500,
            checkpoint_every=500,
            log_every=10,
        ),
        finetune=OptimConfig(
            lr=3e-4,
            batch_size=32,
            warmup_steps=100,
            steps=1500,
            checkpoint_every=500,
            log_every=10,
        ),
        augment=AugmentConfig(color_jitter=0.3, random_shift=2),
    )


def _paper() -> LawmConfig:
    # The paper's sizes and the reference code's optimisation defaults, and the paper's world
    # model (variant "paper"; --wm-variant kinematic gives this repository's method at this size).
    return LawmConfig(preset="paper", world_model=WorldModelConfig(variant="paper"))


PRESETS = {"debug": _debug, "small": _small, "paper": _paper}


def preset(name: str, **overrides: Any) -> LawmConfig:
    """Return the named preset; ``overrides`` replace top-level fields."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg
