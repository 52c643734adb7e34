"""Inputs the training tests share: a random window for the world model, and a pretraining
batch of real dataset windows with instruction embeddings."""

from __future__ import annotations

import torch

from lawm import keys
from lawm.config import LawmConfig, WorldModelConfig
from lawm.data import WindowDataset, collate
from lawm.trainer import LangTable


def random_window(cfg: WorldModelConfig, b: int, t: int, seed: int = 0):
    """(images {cam: uint8 (B, T, 3, H, W)}, actions (B, T, A) in [-1, 1], is_first (B, T) true
    at frame 0, the generator) for ``cfg``: draw further inputs from the generator so they
    follow these in one seeded stream."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    images = {
        c: torch.randint(0, 256, (b, t, 3, s, s), generator=g, dtype=torch.uint8)
        for c in cfg.cameras
    }
    actions = torch.rand(b, t, cfg.action_dim, generator=g) * 2 - 1
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    return images, actions, is_first, g


def pretrain_batch(cfg: LawmConfig, sources: list, lang_cache, rows) -> dict:
    """The pretraining windows ``rows`` of ``sources`` collated, with the instruction
    embeddings under ``keys.LANG``."""
    pc = cfg.policy
    ds = WindowDataset(sources, pc.cameras, pc.image_size, pc.chunk_size, mode="pretrain")
    batch = collate([ds[int(i)] for i in rows])
    lang = LangTable([s.instruction for s in sources], lang_cache, pc.lang_dim)
    batch[keys.LANG] = lang(batch[keys.INSTRUCTION])
    return batch
