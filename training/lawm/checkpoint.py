"""Checkpoints as safetensors + JSON, written atomically; nothing is ever unpickled.

A training checkpoint is a directory::

    step_000100/
      model.safetensors      weights and buffers of the trained module (strict on load)
      optimizer.safetensors  optimizer tensors (moments, step counts)
      state.json             config, step, stage, optimizer param groups, data statistics

It is written into a temporary sibling directory and renamed into place, so a crash mid-write
never leaves a half checkpoint that ``latest`` points at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lawm.config import ConfigError, LawmConfig
from lawm.models.policy import Policy
from lawm_core.files import atomic_dir, atomic_path, atomic_write_text


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    """safetensors' ``save_file``; its I/O failures (a full disk) raised as the OSError they
    are, naming ``path``, instead of the library's own error type."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        _save_file(clean, tmp, metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def load_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str):
    """load_state_dict(strict=True) with an error that lists what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tensors[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{where} does not match the model: " + ", ".join(parts))
    module.load_state_dict(tensors, strict=True)


# -- optimizer state ------------------------------------------------------------------------
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t
    return tensors, sd["param_groups"]


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors, param_groups) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


# -- training checkpoints -------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    step: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write ``run_dir/checkpoints/step_N`` atomically and point ``latest`` at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    # A run killed while writing a checkpoint leaves its hidden staging folder; one process
    # writes a run's checkpoints, so any found now is such a leftover.
    for stale in ckpt_root.glob(".step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = ckpt_root / f"step_{step:06d}"
    with atomic_dir(final) as tmp:
        tmp.mkdir()
        _save_file(
            {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
            tmp / "model.safetensors",
        )
        opt_tensors, groups = optimizer_to_tensors(optimizer)
        _save_file(
            {k: v.contiguous().cpu() for k, v in opt_tensors.items()},
            tmp / "optimizer.safetensors",
        )
        full = dict(state, step=step, param_groups=groups)
        (tmp / "state.json").write_text(json.dumps(full, indent=2, sort_keys=True))
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    return load_json(Path(path) / "state.json")


def load_checkpoint(path: Path, module: torch.nn.Module, optimizer=None) -> dict[str, Any]:
    """Restore weights (strict) and, if given, the optimizer; returns state.json's content."""
    path = Path(path)
    state = read_checkpoint_state(path)
    load_state_strict(module, load_tensors(path / "model.safetensors"), str(path))
    if optimizer is not None:
        optimizer_from_tensors(
            optimizer, load_tensors(path / "optimizer.safetensors"), state["param_groups"]
        )
    return state


# -- policy artefacts (what fine-tuning starts from and export reads) -----------------------
def save_policy(out_dir: Path, policy: torch.nn.Module, cfg: LawmConfig, info: dict) -> Path:
    """``out_dir/model.safetensors`` + ``out_dir/config.json`` (the full LawmConfig + info)."""
    out_dir = Path(out_dir)
    atomic_save_tensors(out_dir / "model.safetensors", policy.state_dict())
    atomic_write_text(
        out_dir / "config.json",
        json.dumps({"config": cfg.to_dict(), "info": info}, indent=2, sort_keys=True),
    )
    return out_dir


def load_policy_config(policy_dir: Path) -> tuple[LawmConfig, dict]:
    data = load_json(Path(policy_dir) / "config.json")
    try:
        return LawmConfig.from_dict(data["config"]), data.get("info", {})
    except (KeyError, ConfigError, TypeError) as err:
        raise CheckpointError(
            f"{policy_dir}/config.json: not a LAWM policy config ({err})"
        ) from err


def load_policy(policy_dir: Path, expect: LawmConfig | None = None):
    """Rebuild the policy from its own config and load its weights strictly."""

    cfg, info = load_policy_config(policy_dir)
    if expect is not None and expect.policy != cfg.policy:
        raise CheckpointError(
            f"{policy_dir}: policy config differs from the one requested "
            f"(saved {cfg.policy}, requested {expect.policy})"
        )
    policy = Policy(cfg.policy)
    load_state_strict(
        policy, load_tensors(Path(policy_dir) / "model.safetensors"), str(policy_dir)
    )
    return policy, cfg, info
