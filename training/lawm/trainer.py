"""One training loop for both stages: pretraining (LAWM) and fine-tuning (behaviour cloning).

- AdamW (no weight decay on norms, biases and embeddings), linear warm-up then cosine decay,
  gradient clipping, gradient accumulation.
- A deterministic batch schedule: the global batch of step s is a pure function of (seed, s),
  and every step reseeds torch from (seed, s, rank). Resuming from a checkpoint therefore
  replays exactly the run that was interrupted.
- DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on GPU): rank r takes an equal
  slice of each global batch, so N processes compute the same update as one process.
- Mixed precision (bfloat16 autocast) on GPU; full precision on CPU.
- Checkpoints every ``checkpoint_every`` steps (safetensors + JSON, atomic), a JSONL metrics log
  and a progress bar with the loss and samples/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from lawm import keys
from lawm.board import Board, prediction_strip
from lawm.checkpoint import (
    CheckpointError,
    atomic_save_tensors,
    latest_checkpoint,
    load_checkpoint,
    load_json,
    load_state_strict,
    load_tensors,
    save_checkpoint,
    save_policy,
)
from lawm.config import LawmConfig, OptimConfig
from lawm.data import DataError, WindowDataset, collate, compute_stats, to_device
from lawm.data.base import data_proprio_layout, first_line
from lawm.data.dataset import SKIPPED
from lawm.head_fit import HEAD_INITS, fit_head
from lawm.language import TextEmbedder
from lawm.objectives import FinetuneObjective, PretrainObjective
from lawm_core import contract
from lawm_core.files import atomic_write_text

STAGES = ("pretrain", "finetune")
# An episode whose steps are this far (relative) from the model's control rate is refused.
RATE_TOLERANCE = 0.05
log = logging.getLogger(__name__)


# -- distributed ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# -- schedule -------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(
    module: nn.Module,
    weight_decay: float,
    slow: Callable[[str], bool] | None = None,
    slow_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW groups: matrices and conv kernels decay; norms, biases, embeddings and tokens do
    not. Parameters named by ``slow`` go to groups whose learning rate is scaled by
    ``slow_scale`` (``lr_scale``); the first group is always an unscaled one."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and "embed" not in name and "token" not in name
        is_slow = slow is not None and slow_scale != 1.0 and slow(name)
        groups.setdefault((is_slow, decays), []).append(p)
    out = [
        {"params": groups.get((False, True), []), "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": groups.get((False, False), []), "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    for decays in (True, False):
        if (True, decays) in groups:
            out.append({"params": groups[(True, decays)], "lr_scale": slow_scale,
                        "weight_decay": weight_decay if decays else 0.0})  # fmt: skip
    return out


def _loaded_trunk(name: str) -> bool:
    """A policy weight that fine-tuning loads from pretrained weights, other than the head."""
    return name.startswith("policy.") and not name.startswith("policy.head.")


class StepBatches(torch.utils.data.Sampler):
    """Yields this rank's index list for each step from ``start`` to ``stop``.

    The global order is a fresh permutation per epoch, seeded by (seed, epoch); the global
    batch of a step is a contiguous slice of that endless stream.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start: int, stop: int, d: Dist):
        if global_batch % d.world:
            raise ValueError(f"batch_size {global_batch} is not divisible by {d.world} processes")
        self.n, self.gb, self.seed, self.start, self.stop, self.d = (
            n,
            global_batch,
            seed,
            start,
            stop,
            d,
        )
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.gb, (step + 1) * self.gb):
            out.append(int(self._perm(pos // self.n)[pos % self.n]))
        return out

    def __iter__(self):
        per = self.gb // self.d.world
        for step in range(self.start, self.stop):
            yield self.global_batch(step)[self.d.rank * per : (self.d.rank + 1) * per]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# -- helpers --------------------------------------------------------------------------------
def split_batch(batch: dict, parts: int) -> list[dict]:
    if parts == 1:
        return [batch]
    n = len(batch[keys.INSTRUCTION])
    size = n // parts
    out = []
    for i in range(parts):
        sl = slice(i * size, (i + 1) * size)
        micro = {}
        for k, v in batch.items():
            if isinstance(v, dict):
                micro[k] = {kk: vv[sl] for kk, vv in v.items()}
            else:
                micro[k] = v[sl]
        out.append(micro)
    return out


class LangTable:
    """Instruction -> embedding, computed once (and cached on disk) before training."""

    def __init__(self, instructions: list[str], cache_path: Path | None, lang_dim: int):

        unique = sorted({" ".join(s.split()) for s in instructions})
        self.table: dict[str, np.ndarray] = {}
        texts = [t for t in unique if t]
        if texts:
            vectors = TextEmbedder(cache_path=cache_path).embed(texts)
            self.table = dict(zip(texts, vectors))
        self.zero = np.zeros(lang_dim, np.float32)  # video with no caption
        if texts and vectors.shape[1] != lang_dim:
            raise ValueError(
                f"language embeddings have {vectors.shape[1]} dims, policy expects {lang_dim}"
            )

    def __call__(self, instructions: list[str]) -> torch.Tensor:
        rows = [self.table.get(" ".join(s.split()), self.zero) for s in instructions]
        return torch.from_numpy(np.stack(rows))


def build_objective(stage: str, cfg: LawmConfig) -> nn.Module:

    return PretrainObjective(cfg) if stage == "pretrain" else FinetuneObjective(cfg)


def init_policy_from(
    objective: nn.Module,
    path: Path,
    reinit_head: bool = False,
    proprio_layout: Sequence[str] | None = None,
) -> str:
    """Load policy weights from a policy dir (model.safetensors + config.json) or a
    checkpoint dir of either stage (its ``policy.*`` tensors). Strict: every tensor must match.

    ``reinit_head`` keeps the action head's fresh initialisation (the one training from scratch
    starts with): after pretraining, the head emits latent actions for the world model, whose
    scale and meaning differ from the demonstrations' actions.

    ``proprio_layout``: the robot state the new training's data gives. When the weights were
    trained on another layout (``policy_proprio_layout``), the proprio input layer (and the
    proprio statistics) keep their fresh initialisation, and a log line says so; the rest is
    loaded. Returns a note of what was loaded (the run's ``init_from``).
    """
    path = Path(path)
    if (path / "state.json").is_file():
        tensors = load_tensors(path / "model.safetensors")
        policy_tensors = {
            k[len("policy.") :]: v for k, v in tensors.items() if k.startswith("policy.")
        }
        if not policy_tensors:
            raise CheckpointError(f"{path}: checkpoint holds no policy weights")
    elif (path / "config.json").is_file():
        policy_tensors = load_tensors(path / "model.safetensors")
    else:
        raise CheckpointError(f"{path}: neither a policy directory nor a training checkpoint")
    fresh = objective.policy.state_dict()
    keep_fresh: set[str] = set()
    if reinit_head:
        keep_fresh |= {k for k in fresh if k.startswith("head.")}
    note = str(path) + (" (head re-initialised)" if reinit_head else "")
    if proprio_layout is not None:
        old = policy_proprio_layout(path)
        if old != tuple(proprio_layout):
            keep_fresh |= proprio_input_keys(objective.policy)
            said = "an unknown layout" if old is None else str(list(old))
            line = (
                f"{path} was trained with proprio {said}, the data gives "
                f"{list(proprio_layout)}: the proprio input layer is re-initialised, the rest "
                "is loaded"
            )
            log.info("%s", line)
            note += " (proprio input layer re-initialised)"
    policy_tensors = {
        k: (fresh[k].clone() if k in keep_fresh and k in fresh else v)
        for k, v in policy_tensors.items()
    }
    for k in keep_fresh:  # a key the old weights lack (a renamed layer) starts fresh too
        policy_tensors.setdefault(k, fresh[k].clone())
    load_state_strict(objective.policy, policy_tensors, str(path))
    return note


def proprio_input_keys(policy: nn.Module) -> set[str]:
    """The state-dict keys of the policy's proprio input layer (the first Linear of its
    proprio encoder) and of its proprio statistics: what depends on the proprio layout."""
    own = policy.state_dict()
    keys_ = {k for k in ("proprio_mean", "proprio_std") if k in own}
    for prefix, module in policy.named_modules():
        if "proprio" in prefix.split(".")[0]:
            for name, sub in module.named_modules():
                if isinstance(sub, nn.Linear):
                    full = ".".join(p for p in (prefix, name) if p)
                    keys_ |= {f"{full}.{n}" for n, _ in sub.named_parameters(recurse=False)}
                    return keys_
    return keys_


def policy_proprio_layout(path: Path) -> tuple[str, ...] | None:
    """The proprio layout a policy dir or training checkpoint was trained with: its record
    (``info["proprio_layout"]`` / state.json ``proprio_layout``); for runs older than that
    record, the default layout when the policy has its size, else None (unknown)."""
    path = Path(path)
    if (path / "state.json").is_file():
        data = load_json(path / "state.json")
        layout, cfg = data.get("proprio_layout"), data.get("config") or {}
    else:
        data = load_json(path / "config.json")
        layout = (data.get("info") or {}).get("proprio_layout")
        cfg = data.get("config") or {}
    if layout is not None:
        return tuple(layout)
    dim = (cfg.get("policy") or {}).get("proprio_dim", contract.PROPRIO_DIM)
    return contract.PROPRIO_LAYOUT if dim == contract.PROPRIO_DIM else None


# -- what the data is -----------------------------------------------------------------------
def with_proprio_layout(cfg: LawmConfig, layout: Sequence[str]) -> LawmConfig:
    """``cfg`` whose policy (and world model) take ``len(layout)`` proprio values."""
    dim = len(layout)
    if cfg.policy.proprio_dim == dim and cfg.world_model.proprio_dim == dim:
        return cfg
    return cfg.replace(
        policy=dataclasses.replace(cfg.policy, proprio_dim=dim),
        world_model=dataclasses.replace(cfg.world_model, proprio_dim=dim),
    )


def check_control_rate(stage: str, sources: Sequence, rate_hz: float) -> None:
    """DataError when an episode's steps were taken at another rate than the model's control
    rate (episodes whose format does not say are not checked)."""
    off = [
        (s.name, r)
        for s in sources
        if (r := getattr(s, "control_rate_hz", None)) is not None
        and abs(r - rate_hz) > RATE_TOLERANCE * rate_hz
    ]
    if off:
        name, r = off[0]
        raise DataError(
            f"{stage}: {len(off)} episode(s) step at {r:.1f} Hz (e.g. {name}) and the model runs "
            f"at {rate_hz:g} Hz (--control-rate-hz, default the preset's); pass "
            f"--control-rate-hz {r:.3g} to train the model at theirs, or open rosbag2 data "
            f"resampled to the model's rate (RosbagOptions(control_rate_hz={rate_hz:g}), what "
            "the training CLI does)"
        )


def resolve_gripper(sources: Sequence, declared: Mapping[str, Any] | None) -> dict[str, Any]:
    """The gripper convention of the data: {"convention", "open", "closed"}.

    ``declared``: from the flags (``--gripper-convention``, ``--gripper-open``,
    ``--gripper-closed``), None when not given. Data that says how it writes the gripper
    (``gripper_convention``; LIBERO/robosuite OSC_POSE data is "sign") must agree with it.
    Default: "sign" (open -1, closed +1)."""
    said = {}
    for s in sources:
        if not s.has_actions:
            continue
        conv = s.gripper_convention
        if conv is None and s.action_space == contract.ACTION_OSC_POSE_DELTA:
            conv = contract.GRIPPER_SIGN
        if conv is not None:
            said.setdefault(conv, s.name)
    if len(said) > 1:
        raise DataError(f"finetune: episodes write the gripper differently: {said}")
    if declared is not None and said and declared["convention"] not in said:
        conv, name = next(iter(said.items()))
        raise DataError(
            f"finetune: {name} writes the gripper as {conv!r} (sign: -1 open, +1 closed), and "
            f"--gripper-convention says {declared['convention']!r}; drop --gripper-convention"
        )
    if declared is not None:
        return {
            "convention": declared["convention"],
            "open": float(declared["open"]),
            "closed": float(declared["closed"]),
        }
    return {
        "convention": contract.GRIPPER_SIGN,
        "open": contract.GRIPPER_OPEN,
        "closed": contract.GRIPPER_CLOSE,
    }


def check_gripper_values(gripper: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    """Warn when the data's gripper values do not look like the declared convention."""
    lo = float(np.asarray(stats["action_min"])[contract.GRIPPER_INDEX])
    hi = float(np.asarray(stats["action_max"])[contract.GRIPPER_INDEX])
    if not bool(np.asarray(stats.get("has_action_stats", True))):
        return
    a, b = sorted((gripper["open"], gripper["closed"]))
    margin = 0.25 * (b - a)
    if gripper["convention"] == contract.GRIPPER_SIGN and lo >= 0.0 and hi <= 0.2:
        warnings.warn(
            f"finetune: the gripper actions lie in [{lo:g}, {hi:g}], which looks like a width "
            "in m, not the sign convention (-1 open, +1 closed) assumed; pass "
            "--gripper-convention width --gripper-open W --gripper-closed W",
            stacklevel=3,
        )
    elif lo < a - margin or hi > b + margin:
        warnings.warn(
            f"finetune: the gripper actions lie in [{lo:g}, {hi:g}], outside the declared "
            f"{gripper['convention']} gripper's open {gripper['open']:g} / closed "
            f"{gripper['closed']:g}; check --gripper-convention/--gripper-open/--gripper-closed",
            stacklevel=3,
        )


def data_info(stage: str, cfg: LawmConfig, sources: Sequence, layout, gripper) -> dict:
    """What the run's data was, for the policy's record (config.json "info")."""
    present = {c for s in sources for c in s.cameras}
    info: dict[str, Any] = {
        "control_rate_hz": float(cfg.policy.control_rate_hz),
        "proprio_layout": list(layout),
        "inputs": {
            "cameras": [c for c in cfg.policy.cameras if c in present],
            "proprio": any(s.has_proprio for s in sources),
        },
    }
    if stage == "finetune":
        info["gripper"] = dict(gripper)
    return info


# -- the loop -------------------------------------------------------------------------------
@dataclass
class _Run:
    """One call of ``train``: what it trains, with what, and which steps it runs."""

    stage: str
    cfg: LawmConfig
    opt: OptimConfig
    run_dir: Path
    dev: torch.device
    d: Dist
    objective: nn.Module
    model: nn.Module  # the objective, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    dataset: WindowDataset
    lang: LangTable
    n_episodes: int
    total: int  # the schedule's length (warm-up, cosine decay, final save)
    start: int  # the first step this call runs (> 0 when resuming)
    stop: int  # the step this call ends at (``stop_at`` or ``total``)
    init_from: str | None
    stats: dict[str, Any]
    info: dict[str, Any]  # what the data was (data_info), for the policy's record
    head_fit: dict[str, float] | None = None  # the probe head's fit (windows, mse before/after)

    def checkpoint_state(self) -> dict[str, Any]:
        """The JSON part of a checkpoint: what a resumed run must match, and the data stats."""
        return {
            "stage": self.stage,
            "config": self.cfg.to_dict(),
            "init_from": self.init_from,
            "stats": {
                k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in self.stats.items()
            },
            "n_windows": len(self.dataset),
            "n_episodes": self.n_episodes,
            "world_size": self.d.world,
            "proprio_layout": self.info["proprio_layout"],
        }


def run_finished(run_dir: Path) -> bool:
    """Whether ``train`` has finished ``run_dir``: it writes run_dir/policy/ at the last step."""
    return (Path(run_dir) / "policy" / "config.json").is_file()


def train(
    stage: str,
    cfg: LawmConfig,
    sources: list,
    run_dir: Path,
    *,
    init: Path | None = None,
    resume: bool = True,
    device: str | None = None,
    lang_cache: Path | None = None,
    progress: bool = True,
    steps: int | None = None,
    stop_at: int | None = None,
    reinit_head: bool = False,
    gripper: Mapping[str, Any] | None = None,
    head: str | None = None,
    wandb: bool = False,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Train ``stage`` on ``sources`` into ``run_dir``; returns a summary dict.

    Writes run_dir/checkpoints/step_N/, run_dir/metrics.jsonl, TensorBoard curves in
    run_dir/tensorboard/ (``lawm.board``; ``wandb``: also to wandb) and, at the end,
    run_dir/policy/ (the policy alone: what fine-tuning starts from and export reads).
    ``stop_at`` ends the run early at that step (with a checkpoint), as an interruption
    would; rerunning resumes.

    The data decides the model's proprio size (its proprio layout, ``data_proprio_layout``;
    the default layout without robot state), and its episodes must step at the model's
    ``control_rate_hz``. ``gripper``: the declared gripper convention ({"convention", "open",
    "closed"}, fine-tuning; None: what the data says, else sign). The policy's record
    (config.json "info") gets ``control_rate_hz``, ``proprio_layout``, ``inputs`` (cameras
    present in some episode, whether some episode had proprio) and, fine-tuning, ``gripper``.

    ``head`` (fine-tuning from ``init``): "probe" (the default): the head's last layer fitted
    to the demonstrations on the frozen pretrained features before fine-tuning
    (``lawm.head_fit``); "reuse" the pretrained head as it is (the paper's way); "fresh"
    (what ``reinit_head`` asks for).

    An episode that cannot be read stops the run with a DataError naming it; with
    ``skip_bad`` the run goes on without it: episodes whose actions or robot state cannot be
    read are left out before training, one whose frames fail later is set aside when met
    (another episode's window takes its place); the summary's ``skipped`` lists them.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    skipped: list[str] = []
    if skip_bad:
        sources = readable_sources(sources, skipped)
    head = resolve_head(head, reinit_head, stage, init)
    layout = data_proprio_layout(sources) or contract.PROPRIO_LAYOUT
    cfg = with_proprio_layout(cfg, layout)
    check_control_rate(stage, sources, cfg.policy.control_rate_hz)
    grip = resolve_gripper(sources, gripper) if stage == "finetune" else None
    opt_cfg: OptimConfig = cfg.pretrain if stage == "pretrain" else cfg.finetune
    total = steps if steps is not None else opt_cfg.steps
    run = _prepare(
        stage,
        cfg,
        opt_cfg,
        sources,
        Path(run_dir),
        init=init,
        resume=resume,
        device=device,
        lang_cache=lang_cache,
        total=total,
        stop=total if stop_at is None else min(total, stop_at),
        head=head,
        info=data_info(stage, cfg, sources, layout, grip),
        skip_bad=skip_bad,
    )
    if grip is not None:
        check_gripper_values(grip, run.stats)
    loader = _loader(run)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(run, progress, wandb=wandb)
    history: list[dict[str, float]] = []
    run.objective.train()
    step = run.start
    for step_batch in _batches(loader):
        for why in step_batch.pop(SKIPPED, ()):
            if why and why not in skipped:
                skipped.append(why)
                logging.getLogger(__name__).warning(
                    "%s: skipping an unreadable episode: %s", stage, why
                )
        agg = _train_step(run, step_batch, step)
        step += 1
        history.append(agg)
        if run.d.main:
            log.record(agg, step)
            if step % run.opt.checkpoint_every == 0 or step in (run.total, run.stop):
                log.predictions(to_device(step_batch, run.dev), step)
                save_checkpoint(
                    run.run_dir, step, run.objective, run.optimizer, run.checkpoint_state()
                )
    log.close()
    _finish(run, step, data_action_space(sources) if stage == "finetune" else None)
    return {
        "stage": stage,
        "steps": step,
        "start": run.start,
        "history": history,
        "run_dir": str(run.run_dir),
        "n_windows": len(run.dataset),
        "head_fit": run.head_fit,
        "skipped": skipped,
    }


def readable_sources(sources: list, skipped: list[str]) -> list:
    """The episodes whose actions and robot state read (images are met during training);
    one line per other episode appended to ``skipped``."""
    out = []
    for src in sources:
        try:
            src.read(0, src.length, cameras=(), actions=src.has_actions, proprio=src.has_proprio)
        except (DataError, OSError) as err:
            text = first_line(str(err)) or type(err).__name__
            skipped.append(text if text.startswith(src.name) else f"{src.name}: {text}")
            log.warning(f"skipping an unreadable episode: {skipped[-1]}")
        else:
            out.append(src)
    if not out:
        raise DataError(f"no episode can be read; the first: {skipped[0]}")
    return out


def _batches(loader):
    """The loader's batches; a DataError raised in a worker process comes back as one line
    (the worker's traceback dropped), as it would without workers."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except DataError as err:
            lines = [x for x in str(err).splitlines() if x.strip()]
            text = lines[-1] if lines else str(err)
            marker = "DataError: "
            if marker in text:
                text = text.split(marker, 1)[1]
            raise DataError(text) from None
        yield batch


def _prepare(
    stage: str,
    cfg: LawmConfig,
    opt_cfg: OptimConfig,
    sources: list,
    run_dir: Path,
    *,
    init: Path | None,
    resume: bool,
    device: str | None,
    lang_cache: Path | None,
    total: int,
    stop: int,
    head: str,
    info: dict[str, Any],
    skip_bad: bool = False,
) -> _Run:
    """Join the process group, build the objective, data and optimiser, and restore the
    checkpoint to resume from (or the ``init`` weights and the data statistics)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d = init_distributed(dev.type)
    if dev.type == "cuda":
        dev = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(dev)

    # Seeded first: the objective's initial weights are a function of the seed.
    torch.manual_seed(opt_cfg.seed)
    objective = build_objective(stage, cfg).to(dev)
    dataset = WindowDataset(
        sources,
        cfg.policy.cameras,
        cfg.policy.image_size,
        cfg.policy.chunk_size,
        mode=stage,
        proprio_dim=cfg.policy.proprio_dim,
        skip_bad=skip_bad,
    )
    lang = LangTable([s.instruction for s in sources], lang_cache, cfg.policy.lang_dim)
    slow = _loaded_trunk if (stage == "finetune" and init is not None) else None
    optimizer = torch.optim.AdamW(
        param_groups(objective, opt_cfg.weight_decay, slow, opt_cfg.init_lr_scale),
        lr=opt_cfg.lr,
        betas=opt_cfg.betas,
    )
    ckpt = latest_checkpoint(run_dir) if resume else None
    fit = None
    if ckpt is not None:
        start, init_from, stats = _resume(ckpt, stage, cfg, sources, objective, optimizer)
    else:
        start = 0
        init_from, stats = _fresh_start(
            stage, sources, objective, init, head, info["proprio_layout"]
        )
        if head == "probe":
            fit = fit_head(objective.policy, dataset, lang)
            init_from = (
                f"{init_from} (head fitted to {int(fit['windows'])} windows: action MSE "
                f"{fit['mse_before']:.4f} -> {fit['mse_after']:.4f})"
            )
            log.info("head fitted by a linear probe: %s", init_from)
    model: nn.Module = objective
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    return _Run(
        stage=stage,
        cfg=cfg,
        opt=opt_cfg,
        run_dir=run_dir,
        dev=dev,
        d=d,
        objective=objective,
        model=model,
        optimizer=optimizer,
        dataset=dataset,
        lang=lang,
        n_episodes=len(sources),
        total=total,
        start=start,
        stop=stop,
        init_from=init_from,
        stats=stats,
        head_fit=fit,
        info=info,
    )


def _resume(
    ckpt: Path,
    stage: str,
    cfg: LawmConfig,
    sources: list,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, str | None, dict[str, Any]]:
    """Load ``ckpt`` into the objective and optimiser; returns (step, init_from, stats).

    Raises CheckpointError when the checkpoint belongs to another stage or config."""
    state = load_checkpoint(ckpt, objective, optimizer)
    same_config = False
    try:  # through the config class: a field added since the checkpoint takes its default
        stored = LawmConfig.from_dict(state.get("config") or {}).to_dict()
        same_config = json.loads(json.dumps(cfg.to_dict())) == json.loads(json.dumps(stored))
    except (TypeError, ValueError, KeyError):
        pass
    if state.get("stage") != stage or not same_config:
        raise CheckpointError(
            f"{ckpt} was written by a different run (stage {state.get('stage')!r} or config "
            f"differ); use a new --out or --no-resume"
        )
    # The policy's buffers already hold these; no second pass over the data.
    stats = state.get("stats") or compute_stats(sources, proprio_dim=cfg.policy.proprio_dim)
    return int(state["step"]), state.get("init_from"), stats


def _fresh_start(
    stage: str,
    sources: list,
    objective: nn.Module,
    init: Path | None,
    head: str,
    proprio_layout: Sequence[str],
) -> tuple[str | None, dict[str, Any]]:
    """Compute the data statistics, load the ``init`` weights (if any) and give the policy
    its normalisation; returns (init_from, stats)."""
    stats = compute_stats(sources, proprio_dim=len(proprio_layout))
    init_from = None
    if init is not None:
        init_from = init_policy_from(
            objective, init, reinit_head=head == "fresh", proprio_layout=proprio_layout
        )
    # Data statistics become part of the policy (and of the exported graph).
    policy_stats = {k: v for k, v in stats.items() if k.startswith("proprio")}
    if stage == "finetune":
        policy_stats.update({k: v for k, v in stats.items() if k.startswith("action")})
    objective.policy.set_stats(policy_stats)
    return init_from, stats


def resolve_head(head: str | None, reinit_head: bool, stage: str, init: Path | None) -> str:
    """The head start of a run: ``head``; else "fresh" with ``reinit_head``; else "probe" when
    fine-tuning from pretrained weights (measured best, README), "reuse" otherwise."""
    if head is None:
        if reinit_head:
            return "fresh"
        return "probe" if stage == "finetune" and init is not None else "reuse"
    if head not in HEAD_INITS:
        raise ValueError(f"head must be one of {list(HEAD_INITS)}, got {head!r}")
    if reinit_head and head != "fresh":
        raise ValueError(f"reinit_head asks for a fresh head, head asks for {head!r}")
    if head != "reuse" and (stage != "finetune" or init is None):
        raise ValueError(f"head {head!r} applies to fine-tuning from pretrained weights (init)")
    return head


def _loader(run: _Run) -> torch.utils.data.DataLoader:
    """This rank's batches of the steps ``run.start`` to ``run.stop``, in schedule order."""
    sampler = StepBatches(
        len(run.dataset), run.opt.batch_size, run.opt.seed, run.start, run.stop, run.d
    )
    return torch.utils.data.DataLoader(
        run.dataset,
        batch_sampler=sampler,
        num_workers=run.opt.num_workers,
        collate_fn=collate,
        persistent_workers=False,
    )


def _train_step(run: _Run, step_batch: dict, step: int) -> dict[str, float]:
    """One optimiser step (0-based ``step``) on this rank's share of its global batch.

    Returns the step's metrics (global-batch means), its grad norm, lr and 1-based step."""
    opt = run.opt
    torch.manual_seed(opt.seed * 1_000_003 + step * 101 + run.d.rank)
    for group in run.optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        group["lr"] = opt.lr * scale * lr_factor(step, opt.warmup_steps, run.total)
    step_batch[keys.LANG] = run.lang(step_batch[keys.INSTRUCTION])
    step_batch = to_device(step_batch, run.dev)
    agg = _accumulate_gradients(run, step_batch)
    if run.d.world > 1:
        # Log the global batch's mean, not rank 0's share of it.
        names = sorted(agg)
        vec = torch.tensor([agg[k] for k in names], dtype=torch.float64, device=run.dev)
        dist.all_reduce(vec)
        agg = {k: float(v) / run.d.world for k, v in zip(names, vec.tolist())}
    grad_norm = torch.nn.utils.clip_grad_norm_(run.objective.parameters(), opt.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    agg["grad_norm"] = float(grad_norm)
    agg["lr"] = run.optimizer.param_groups[0]["lr"]
    agg["step"] = step + 1
    return agg


def _accumulate_gradients(run: _Run, step_batch: dict) -> dict[str, float]:
    """Backward over ``grad_accum`` micro-batches (gradients synchronised across ranks on the
    last one only); returns the metrics averaged over the micro-batches."""
    accum = run.opt.grad_accum
    use_amp = run.opt.amp and run.dev.type == "cuda"
    agg: dict[str, float] = {}
    micro_batches = split_batch(step_batch, accum)
    for i, micro in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        ctx = run.model.no_sync() if (run.d.world > 1 and not sync) else contextlib.nullcontext()
        with ctx, torch.autocast(run.dev.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, metrics = run.model(micro)
            (loss / accum).backward()
        for k, v in metrics.items():
            agg[k] = agg.get(k, 0.0) + v / accum
    return agg


class _Log:
    """Rank 0's metrics.jsonl (a line every ``log_every`` steps and at the last step, with the
    samples/s since the previous line) and progress bar; started afresh unless resuming."""

    def __init__(self, run: _Run, progress: bool, wandb: bool = False):
        self.run = run
        self.path = run.run_dir / "metrics.jsonl"
        if run.d.main and run.start == 0:
            atomic_write_text(self.path, "")
        elif run.d.main:
            self._keep_until(run.start)
        self.board = None
        if run.d.main:
            self.board = Board(run.run_dir, run.stage, run.start, wandb=wandb,
                               config=run.cfg.to_dict())  # fmt: skip
        self.bar = None
        if progress and run.d.main:
            self.bar = tqdm(
                total=run.total, initial=run.start, desc=run.stage, unit="step", dynamic_ncols=True
            )
        self.t_last, self.samples = time.perf_counter(), 0

    def _keep_until(self, step: int) -> None:
        """Resuming from ``step``: drop the lines a killed run wrote after its last checkpoint
        (they are written again) and a last line cut short by the kill."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def record(self, agg: dict[str, float], step: int) -> None:
        """Count step ``step`` (1-based); on a logging step add samples_per_s to ``agg`` and
        append it to the file."""
        self.samples += self.run.opt.batch_size
        if step % self.run.opt.log_every == 0 or step == self.run.total:
            now = time.perf_counter()
            agg["samples_per_s"] = self.samples / max(now - self.t_last, 1e-9)
            self.t_last, self.samples = now, 0
            with open(self.path, "a") as f:
                f.write(json.dumps(agg) + "\n")
            if self.board is not None:
                self.board.scalars(agg, step)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{agg['loss']:.4f}", sps=f"{agg['samples_per_s']:.1f}")
        if self.bar is not None:
            self.bar.update(1)

    def predictions(self, step_batch: dict, step: int) -> None:
        """Pretraining: the world model's open-loop prediction of a few windows of this batch
        beside their frames, as an image on the board."""
        if self.board is None or self.run.stage != "pretrain":
            return
        target, guess = self.run.objective.open_loop(step_batch)
        self.board.image("world_model", prediction_strip(target.numpy(), guess.numpy()), step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()


def data_action_space(sources: list) -> str | None:
    """What the episodes' actions are (``contract.ACTION_KINDS``): the kind every labelled
    episode declares, None when one does not say or they differ."""
    kinds = {s.action_space for s in sources if s.has_actions}
    return kinds.pop() if len(kinds) == 1 else None


def _finish(run: _Run, step: int, action_space: str | None) -> None:
    """After the last step: at the schedule's end, rank 0 saves the policy (and, after
    pretraining, the world model); then every rank waits for it. ``action_space``: what the
    fine-tuning data's actions are (None: unknown), recorded in the policy's info for export
    with what the data was (``run.info``: rate, proprio layout, inputs, gripper)."""
    if run.d.main and step == run.start and run.start < run.stop:
        raise RuntimeError("the data loader produced no batches")
    if run.d.main and step == run.total:
        info = {
            "stage": run.stage,
            "steps": step,
            "init_from": run.init_from,
            "run_dir": str(run.run_dir),
            "action_space": action_space,
            **run.info,
        }
        save_policy(run.run_dir / "policy", run.objective.policy, run.cfg, info)
        if run.stage == "pretrain":
            atomic_save_tensors(
                run.run_dir / "world_model.safetensors", run.objective.world_model.state_dict()
            )
    if run.d.world > 1:
        dist.barrier()
