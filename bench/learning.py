#!/usr/bin/env python3
"""Does pretraining on unlabeled clips make the fine-tuned policy better? A benchmark that can
tell (not a test). Usage, after ``source scripts/env.sh``:

    python bench/learning.py [--quick] [--settings in_domain,cross_task,spatial] [--n 1,3,10]
                             [--seeds 0,1,2] [--pretrain-seeds 0,1] [--arms ARM[,ARM]]

Arms, all at equal labelled data (N demonstrations per task) and an equal fine-tuning budget
(the same steps, batch and schedule; fine-tuning seed s pairs every arm with scratch seed s):

- ``scratch``: behaviour cloning from a fresh network;
- ``lawm_paper``: LAWM as the paper describes it (world-model variant "paper"), the pretrained
  policy fine-tuned whole, its head included (``--head reuse``);
- ``lawm_paper_fresh_head``: the same pretrained policy with a freshly initialised head;
- ``lawm_motion``: world-model variant "motion" (the world model gets the scene and the task
  directly and predicts frames t+1..t+K open-loop from the chunk), fresh head;
- ``lawm_kinematic_fresh_head``: world-model variant "kinematic" (each latent action moves a
  pose code through one shared linear map; frames rendered from a scene code and the pose
  code), fresh head;
- ``lawm_kinematic``: the pretrained policy fine-tuned with the training package's defaults:
  variant "kinematic", the head's last layer fitted by a linear probe on the frozen pretrained
  features before fine-tuning (``--head probe``);
- ``control_shuffled``: ``lawm_kinematic``'s pretraining with each window's chunk handed to
  another window's world model (the policy is still trained through the world model, for the
  same steps, but its chunk cannot explain its own frames), then ``lawm_kinematic``'s
  fine-tuning: separates "trained by the world model" from "more optimisation steps";
- ``lawm_kinematic_labels``, ``scratch_labels``: the pretrained policy or a fresh network
  fine-tuned on the demonstrations plus the clips labelled by the kinematic world model
  (``lawm.pseudo_label``); ``scratch_recorded_labels``: the same with the clips' recorded
  actions;
- ``labels_first``: **the default method** (``lawm.labels_first``, ``train.py finetune
  --labels-first``): a fresh network behaviour-clones the clips labelled by the kinematic
  world model first, then fine-tunes on the demonstrations (the oracle's recipe with the world
  model's labels);
- ``oracle``: behaviour cloning of the clips with their recorded actions first (the ceiling of
  what the clips can give), then the same fine-tuning.

An arm whose switch the training package lacks is skipped, with the reason in the results.

Settings (LIBERO, rendered at the demo's 64 px by its scripted experts; cached under
``.cache/demo/`` beside the demo's data, which is reused):

- ``in_domain``: LIBERO-Object tasks 0-1; pretraining clips of init states 10-24 of the same
  tasks (the demo's clips), demonstrations from init states 0-9 (the first N per task);
- ``cross_task``: pretraining clips of LIBERO-Object tasks 2-9 (init states 10-24), the same
  demonstrations and held-out episodes of tasks 0-1;
- ``spatial``: LIBERO-Spatial tasks 0-1 (``--spatial-tasks``), laid out like ``in_domain``.

The primary figure is the held-out action MSE in raw action units (the OSC_POSE deltas as
recorded, so no normaliser differs between N or arms) on unseen demonstrations (init states
25-34 of the fine-tuning tasks), per episode and averaged over the runs of an arm; its 95 %
interval and those of the paired differences against scratch are bootstrapped over the held-out
episodes (paired by seed: arm run (p, s) against scratch run s on the same episode). Beside it,
the probe figures of each pretrained policy (``lawm.probe``: held-out linear-probe R^2 of the
true action chunk from the latent chunk, from the trunk features, from the same network
untrained, from proprio alone; world-model loss with the policy's chunk vs others).

``--closed-loop N`` confirms in LIBERO (through the robot's runtime core): R training runs per
arm from the same unseen initial states, paired with scratch. For the arms that clone the clips
first (``oracle``, ``labels_first``) the first stage alone is rolled out from the same states
too, with the fine-tuned runs paired against it: what fine-tuning on the demonstrations adds,
or takes away, from what the clips gave.

``--quick``: in-domain, N = 1, one seed per arm, offline figures only, arms scratch and the
default method; data generated if missing (cached). Results (every run
resumes or is reused when rerun) land in ``runs/bench_learning/{quick,full}/``:
``results.json`` and ``results.md``. The last line printed is one JSON object; its ``lawm_*``
figures are the default method's (``labels_first`` with the default world-model variant
"kinematic"; its probe figures are those of the pretraining run whose world model labels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lawm.config import LawmConfig, WorldModelConfig, preset
from lawm.data import open_sources
from lawm.heldout import (
    CI_LEVEL,
    EE_POS_NOISE,
    N_BOOT,
    SHIFT_PX,
    bootstrap_mean_ci,
    first_per_task,
    heldout_mse,
    input_reliance,
    input_sensitivity,
)
from lawm.labels_first import bc_config
from lawm.trainer import run_finished, train
from lawm_core.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "bench_learning"
DEFAULT_CACHE = ROOT / ".cache" / "demo"
SETTINGS = ("in_domain", "cross_task", "spatial")
HELDOUT_STATES = range(25, 35)  # unseen by every arm: demos 0-9, clips 10-24
# LIBERO fixes 50 initial states per task; the ones no arm trained on, for closed loop.
CLOSED_LOOP_STATES = range(25, 50)
CLOSED_LOOP_RUNS = 4  # training runs per arm in closed loop (x 25 states x 2 tasks = 200)
CLOSED_LOOP_IMAGE_SIZE = 64  # rendered as the data were
CROSS_TASK_PRETRAIN = tuple(range(2, 10))


def _say(text: str) -> None:
    print(f"[bench learning] {text}", flush=True)


# -- statistics -------------------------------------------------------------------------------
def episode_means(runs: dict[Any, Sequence[float]]) -> np.ndarray:
    """Per-episode mean over the runs of an arm (each run: one value per held-out episode, the
    episodes in the same order in every run)."""
    if not runs:
        raise ValueError("no runs")
    table = np.asarray(list(runs.values()), np.float64)
    if table.ndim != 2:
        raise ValueError("every run must score the same held-out episodes")
    return table.mean(axis=0)


def paired_differences(
    arm: dict[tuple[int, int], Sequence[float]], scratch: dict[int, Sequence[float]]
) -> np.ndarray:
    """Per-episode mean of (arm run (p, s), or s for an arm without pretraining, - scratch run
    s): each arm run is paired with the scratch run of its fine-tuning seed s on the same
    episode. Raises KeyError when a seed has no scratch run."""
    if not arm:
        raise ValueError("no runs")
    diffs = []
    for key, values in sorted(arm.items()):
        s = key[1] if isinstance(key, tuple) else key
        if s not in scratch:
            raise KeyError(f"fine-tuning seed {s} has no scratch run to pair with")
        diffs.append(np.asarray(values, np.float64) - np.asarray(scratch[s], np.float64))
    return np.mean(diffs, axis=0)


def grid(runs: dict[Any, Sequence[float]]) -> np.ndarray | None:
    """Runs as an array (pretraining seeds, fine-tuning seeds, episodes): keys (p, s), or s
    (one pretraining "seed"). None when some (p, s) of the grid has no run."""
    keyed = {(k if isinstance(k, tuple) else (0, k)): v for k, v in runs.items()}
    ps = sorted({p for p, _ in keyed})
    ss = sorted({s for _, s in keyed})
    if len(keyed) != len(ps) * len(ss):
        return None
    return np.asarray([[keyed[(p, s)] for s in ss] for p in ps], np.float64)


def run_bootstrap_ci(
    table: np.ndarray, n_boot: int = N_BOOT, level: float = CI_LEVEL, seed: int = 0
) -> list[float]:
    """Percentile bootstrap interval of the grand mean of ``table`` (pretraining seeds,
    fine-tuning seeds, episodes), resampling the pretraining seeds, the fine-tuning seeds and
    the episodes independently: it counts the spread between training runs as well as between
    episodes (with one seed of each it is ``bootstrap_mean_ci`` of the episodes)."""
    t = np.asarray(table, np.float64)
    if t.ndim != 3 or 0 in t.shape:
        raise ValueError(f"need a (pretrain seeds, seeds, episodes) table, got shape {t.shape}")
    rng = np.random.default_rng(seed)
    weights = [
        rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n for n in t.shape
    ]  # (n_boot, n) resampling weights per axis
    means = np.einsum("bp,bs,be,pse->b", *weights, t)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def verdict(ci: Sequence[float]) -> str:
    """'lower' / 'higher' when the interval of (arm - scratch) excludes zero, else 'no
    difference' (lower MSE is better)."""
    lo, hi = ci
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return "no difference"


def summarise_cell(
    runs: dict[str, dict[Any, Sequence[float]]], n_boot: int = N_BOOT
) -> dict[str, dict[str, Any]]:
    """Figures of one (setting, N): ``runs[arm]`` maps a run key to its per-episode held-out
    MSE (scratch: key s; the others: key (p, s)). Per arm: mean, 95 % interval, per-run means
    and, beside scratch, the paired difference with its interval and verdict."""
    out: dict[str, dict[str, Any]] = {}
    scratch = runs.get("scratch")
    for name, arm_runs in runs.items():
        if not arm_runs:
            continue
        per_episode = episode_means(arm_runs)
        row: dict[str, Any] = {
            "heldout_mse": float(per_episode.mean()),
            "heldout_mse_ci": bootstrap_mean_ci(per_episode, n_boot),
            "runs": {_key_text(k): float(np.mean(v)) for k, v in sorted(arm_runs.items())},
            "episodes": int(len(per_episode)),
        }
        table = grid(arm_runs)
        if table is not None:
            row["heldout_mse_ci_runs"] = run_bootstrap_ci(table, n_boot)
        if name != "scratch" and scratch:
            d = paired_differences(arm_runs, scratch)
            ci = bootstrap_mean_ci(d, n_boot)
            row.update(minus_scratch=float(d.mean()), minus_scratch_ci=ci, verdict=verdict(ci))
            base = grid(scratch)
            if table is not None and base is not None and base.shape[1] == table.shape[1]:
                ci_runs = run_bootstrap_ci(table - base, n_boot)  # paired by fine-tuning seed
                row.update(minus_scratch_ci_runs=ci_runs, verdict_runs=verdict(ci_runs))
        out[name] = row
    return out


def _key_text(key: Any) -> str:
    return f"p{key[0]}_f{key[1]}" if isinstance(key, tuple) else f"f{key}"


# -- arms -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """How an arm starts fine-tuning. ``start``: "scratch", "pretrain" (LAWM pretraining with
    world-model ``variant`` and, for a control, the chunk switch ``control``) or "oracle"
    (behaviour cloning of the clips with their actions)."""

    name: str
    start: str
    what: str
    variant: str | None = None
    control: str | None = None
    head: str = "reuse"  # how fine-tuning's action head starts: reuse, fresh or probe
    # Fine-tuning data: the demonstrations, plus the clips labelled by the pretrained world
    # model (labels="world_model", ``lawm.pseudo_label``) or with their recorded actions
    # (labels="recorded": the ceiling of any labeller); init_policy=False: a fresh network.
    labels: str | None = None
    init_policy: bool = True
    # "mix": the labelled clips join the demonstrations; "first": a fresh network first
    # behaviour-clones the labelled clips (the oracle's recipe), then fine-tunes on the
    # demonstrations alone.
    label_stage: str = "mix"
    # After a first stage on the clips (oracle, labels_first): fine-tune on the demonstrations
    # with the clips (their labels, or the oracle's recorded actions) still in the data.
    rehearse: bool = False

    @property
    def labels_first(self) -> bool:
        """Whether the arm behaviour-clones labelled clips before fine-tuning."""
        return self.labels is not None and self.label_stage == "first"


def variant_field() -> bool:
    """Whether the training package has selectable world-model variants."""
    return "variant" in {f.name for f in dataclasses.fields(WorldModelConfig)}


def default_variant() -> str:
    return WorldModelConfig().variant if variant_field() else "paper"


# The switch the control arm needs: LawmConfig.pretrain_chunk, "policy" (the default) or
# "shuffled" (each window's chunk goes to another window's world model in the batch).
CONTROL_FIELD = "pretrain_chunk"
CONTROL_VALUE = "shuffled"


def control_field() -> bool:
    return CONTROL_FIELD in {f.name for f in dataclasses.fields(LawmConfig)}


# The head each variant's pretrained policy fine-tunes with, and the method (arm) of each
# default variant: with "kinematic", the labels-first recipe (its world model labels clips).
DEFAULT_HEADS = {"paper": "reuse", "motion": "fresh", "kinematic": "probe"}
DEFAULT_ARMS = {"paper": "lawm_paper", "motion": "lawm_motion", "kinematic": "labels_first"}
QUICK_ARMS = ("scratch", "default")  # "default": the method


def default_arm_name() -> str:
    return DEFAULT_ARMS.get(default_variant(), "lawm_paper")


def quick_arms() -> list[str]:
    """``--quick``'s arms: scratch and the default method. The oracle (about 3.5 minutes
    more) and the shuffled-chunk control (about 7) are in the full run: with them the quick
    run would not fit in 15 minutes with its data generated."""
    return [default_arm_name() if a == "default" else a for a in QUICK_ARMS]


def arms() -> dict[str, Arm]:
    default = default_variant()
    return {
        a.name: a
        for a in (
            Arm("scratch", "scratch", "behaviour cloning from a fresh network"),
            Arm(
                "lawm_paper",
                "pretrain",
                "LAWM as in the paper (world model 'paper'), head reused (--head reuse)",
                variant="paper",
            ),
            Arm(
                "lawm_paper_fresh_head",
                "pretrain",
                "LAWM as in the paper, fresh head (--head fresh)",
                variant="paper",
                head="fresh",
            ),
            Arm(
                "lawm_motion",
                "pretrain",
                "world model 'motion', fresh head",
                variant="motion",
                head="fresh",
            ),
            Arm(
                "lawm_kinematic_fresh_head",
                "pretrain",
                "world model 'kinematic', fresh head",
                variant="kinematic",
                head="fresh",
            ),
            Arm(
                "lawm_kinematic",
                "pretrain",
                "the pretrained policy fine-tuned: world model 'kinematic', head fitted by a "
                "linear probe first (--head probe; train.py finetune --init's defaults)",
                variant="kinematic",
                head="probe",
            ),
            Arm(
                "control_shuffled",
                "pretrain",
                f"the default world model's pretraining ({default!r}) with the chunks shuffled "
                "across the batch, then the pretrained policy's fine-tuning",
                variant=default,
                control=CONTROL_VALUE,
                head=DEFAULT_HEADS.get(default, "reuse"),
            ),
            Arm(
                "lawm_kinematic_labels",
                "pretrain",
                "lawm_kinematic, fine-tuned on the demonstrations plus the clips labelled by "
                "its world model (pose-code changes -> actions, fitted on the demonstrations)",
                variant="kinematic",
                head="probe",
                labels="world_model",
            ),
            Arm(
                "scratch_labels",
                "pretrain",
                "a fresh network fine-tuned on the demonstrations plus the clips labelled by the "
                "kinematic world model (separates the labels from the pretrained weights)",
                variant="kinematic",
                head="fresh",
                labels="world_model",
                init_policy=False,
            ),
            Arm(
                "scratch_recorded_labels",
                "scratch",
                "a fresh network fine-tuned on the demonstrations plus the clips with their "
                "recorded actions (the ceiling of any labeller)",
                labels="recorded",
            ),
            Arm(
                "labels_first",
                "pretrain",
                "a fresh network behaviour-clones the clips labelled by the kinematic world "
                "model first (as long as pretraining), then fine-tunes on the demonstrations "
                "(the oracle's recipe with the world model's labels)",
                variant="kinematic",
                labels="world_model",
                init_policy=False,
                label_stage="first",
            ),
            Arm(
                "labels_first_rehearse",
                "pretrain",
                "labels_first, its fine-tuning on the demonstrations together with the labelled "
                "clips it cloned first (train.py finetune --labels-first --rehearse)",
                variant="kinematic",
                labels="world_model",
                init_policy=False,
                label_stage="first",
                rehearse=True,
            ),
            Arm("oracle", "oracle", "behaviour cloning of the clips with their actions first"),
            Arm(
                "oracle_rehearse",
                "oracle",
                "the oracle, its fine-tuning on the demonstrations together with the clips and "
                "their recorded actions",
                rehearse=True,
            ),
        )
    }


def unavailable(arm: Arm) -> str | None:
    """Why the training package cannot run ``arm``; None when it can."""
    if arm.variant not in (None, "paper") and not variant_field():
        return (
            f"the training package has no world-model variant {arm.variant!r} "
            "(WorldModelConfig.variant)"
        )
    if arm.variant is not None and variant_field():
        from lawm.config import WORLD_MODEL_VARIANTS

        if arm.variant not in WORLD_MODEL_VARIANTS:
            return f"world-model variant {arm.variant!r} is not in {list(WORLD_MODEL_VARIANTS)}"
    if arm.control is not None and not control_field():
        return (
            f"pretraining has no chunk switch: it needs LawmConfig.{CONTROL_FIELD} with the value "
            f"{CONTROL_VALUE!r} (PretrainObjective hands each window's chunk to another "
            "window's world model, e.g. z[torch.randperm(B)], so the policy is still trained "
            "through the world model but its chunk cannot explain its own frames)"
        )
    return None


# -- budgets and settings ---------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """Training sizes, equal for every arm: ``pretrain_steps`` (LAWM pretraining and the
    oracle's behaviour cloning of the clips), ``finetune_steps`` on the demonstrations."""

    preset: str = "small"
    pretrain_steps: int = 1500
    finetune_steps: int = 1000
    probe_windows: int = 512
    eval_stride: int = 1  # every eval_stride-th held-out window
    proprio_dropout: float = 0.0  # fine-tuning augmentation of every arm (AugmentConfig)
    # Learning-rate factor of the loaded weights when fine-tuning a pretrained policy
    # (OptimConfig.init_lr_scale); scratch has none, so its runs are shared across values.
    init_lr_scale: float = 1.0

    def config(
        self,
        *,
        pretrain_seed: int = 0,
        finetune_seed: int = 0,
        variant: str | None = None,
        control: str | None = None,
    ) -> LawmConfig:
        cfg = preset(self.preset)
        changes: dict[str, Any] = {
            "pretrain": dataclasses.replace(
                cfg.pretrain,
                steps=self.pretrain_steps,
                checkpoint_every=max(1, self.pretrain_steps // 2),
                seed=pretrain_seed,
            ),
            "finetune": dataclasses.replace(
                cfg.finetune,
                steps=self.finetune_steps,
                checkpoint_every=max(1, self.finetune_steps // 2),
                seed=finetune_seed,
            ),
        }
        if variant is not None and variant_field():
            changes["world_model"] = dataclasses.replace(cfg.world_model, variant=variant)
        if control is not None:
            changes[CONTROL_FIELD] = control
        return cfg.replace(**changes)

    def finetune_config(self, pretrained: bool = False, **kw: Any) -> LawmConfig:
        cfg = self.config(**kw)
        if pretrained and self.init_lr_scale != 1.0:
            cfg = cfg.replace(
                finetune=dataclasses.replace(cfg.finetune, init_lr_scale=self.init_lr_scale)
            )
        if self.proprio_dropout:
            augment = dataclasses.replace(cfg.augment, proprio_dropout=self.proprio_dropout)
            cfg = cfg.replace(augment=augment)
        return cfg


FULL = Budget()
RELIANCE_STRIDE = 4  # the input-reliance ratios need fewer windows than the MSE itself
# Fine-tuning as long as the full run's: at 400 steps scratch is far from its plateau (held-out
# MSE 0.0234 vs 0.0122-0.0129 at 1000 on the in-domain data), which flatters pretraining.
QUICK = Budget(pretrain_steps=1500, finetune_steps=1000, probe_windows=256, eval_stride=2)


@dataclass(frozen=True)
class Setting:
    """Data of one setting: ``pretrain`` clips (opened without actions for LAWM pretraining,
    with them for the oracle), a pool of labelled ``demos`` (the first N per task are used)
    and unseen labelled ``heldout`` episodes of the same tasks."""

    name: str
    pretrain: Path
    demos: Path
    heldout: Path
    about: str = ""
    suite: str = "libero_object"
    tasks: tuple[int, ...] = (0, 1)


def _ensure(path: Path, suite: str, tasks, states, image_size: int, workers: int, progress):
    """The cached file, generated by the scripted experts when missing."""
    from lawm_sim.generate import generate

    if path.exists():
        _say(f"cached {path}")
        return path
    n = len(tasks) * len(states)
    _say(f"{n} expert episodes -> {path}")
    summary = generate(
        suite, list(tasks), list(states), path, image_size=image_size, workers=workers,
        progress=progress,
    )  # fmt: skip
    _say(f"{summary['successful']}/{n} successful")
    return path


def libero_setting(
    name: str, cache: Path, progress: bool, spatial_tasks: tuple[int, ...] = (0, 1)
) -> Setting:
    """The LIBERO data of a setting, from the demo's generation and cache."""
    from lawm_apps.demo import DemoConfig, make_data

    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; choose from {list(SETTINGS)}")
    demo = (
        DemoConfig()
        if name != "spatial"
        else DemoConfig(suite="libero_spatial", tasks=spatial_tasks)
    )
    files = make_data(demo, cache, progress)
    tasks = "-".join(str(t) for t in demo.tasks)
    states = HELDOUT_STATES
    held = cache / (
        f"heldout_{demo.suite}_t{tasks}_i{states.start}-{states.stop - 1}_{demo.image_size}px.hdf5"
    )
    _ensure(held, demo.suite, demo.tasks, states, demo.image_size, demo.workers, progress)
    clips = files["clips"]
    about = (
        f"{demo.suite} tasks {list(demo.tasks)}: clips init states "
        f"{demo.demos_per_task}-{demo.demos_per_task + demo.clips_per_task - 1}"
    )
    if name == "cross_task":
        other = DemoConfig(tasks=CROSS_TASK_PRETRAIN)
        path, clip_states = other.data_files(cache)["clips"]
        clips = _ensure(path, other.suite, other.tasks, clip_states, other.image_size,
                        other.workers, progress)  # fmt: skip
        about = (
            f"{demo.suite}: pretraining clips of tasks {list(CROSS_TASK_PRETRAIN)} (init states "
            f"{clip_states[0]}-{clip_states[-1]}); demonstrations of tasks {list(demo.tasks)}"
        )
    about += (
        f"; demonstrations init states 0-{demo.demos_per_task - 1}; held-out init states "
        f"{states.start}-{states.stop - 1}"
    )
    return Setting(name, clips, files["demos"], held, about, demo.suite, tuple(demo.tasks))


# -- held-out evaluation ----------------------------------------------------------------------
# -- the runs ---------------------------------------------------------------------------------
@dataclass
class Plan:
    """What one invocation runs."""

    settings: list[Setting]
    arms: list[str]
    ns: list[int]
    seeds: list[int]  # fine-tuning
    pretrain_seeds: list[int]
    budget: Budget
    out: Path
    lang_cache: Path
    progress: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    # Closed loop (confirmatory) at these N; empty: offline only.
    closed_loop_n: list[int] = field(default_factory=list)
    closed_loop_runs: int = CLOSED_LOOP_RUNS
    # Arms besides scratch; None: those whose offline interval at that N lies below zero.
    closed_loop_arms: list[str] | None = None
    closed_loop_states: range = CLOSED_LOOP_STATES
    closed_loop_max_steps: int | None = None  # None: the suite's reference horizon
    closed_loop_workers: int = 2  # simulator processes (one task each)


def success_summary(episodes: dict[Any, bool]) -> dict[str, Any]:
    """Episodes, successes, rate and Wilson 95 % interval of closed-loop outcomes."""
    from lawm.stats import wilson_ci

    wins = sum(episodes.values())
    return {
        "episodes": len(episodes),
        "successes": wins,
        "success_rate": wins / len(episodes),
        "success_ci": wilson_ci(wins, len(episodes)),
    }


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


class Runner:
    """Trains and evaluates what a plan needs, reusing every finished run."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.arms = arms()
        self.bar: Any = None
        self.seconds: dict[str, float] = {}
        self._ready: set[Path] = set()  # run dirs trained (or found finished) by this runner

    def _train(self, label: str, stage: str, cfg, sources, run_dir: Path, **kw) -> Path:
        if run_dir in self._ready:
            return run_dir / "policy"
        if not run_finished(run_dir):
            self.bar.set_description(label)
            t0 = time.perf_counter()
            train(stage, cfg, sources, run_dir, lang_cache=self.plan.lang_cache,
                  progress=self.plan.progress, **kw)  # fmt: skip
            self.seconds[str(run_dir.relative_to(self.plan.out))] = time.perf_counter() - t0
        self._ready.add(run_dir)
        self.bar.update(1)
        return run_dir / "policy"

    # -- pretraining ---
    def pretrained_dir(self, setting: Setting, arm: Arm, p: int) -> Path:
        b = self.plan.budget
        root = self.plan.out / setting.name
        if arm.start == "oracle":
            return root / f"oracle_bc_s{b.pretrain_steps}_p{p}"
        name = f"pretrain_{arm.variant}" + (f"_{arm.control}" if arm.control else "")
        return root / f"{name}_s{b.pretrain_steps}_p{p}"

    def pretrained(self, setting: Setting, arm: Arm, p: int) -> Path:
        """The run dir of the arm's pretraining (shared by the arms that pretrain alike)."""
        b = self.plan.budget
        run_dir = self.pretrained_dir(setting, arm, p)
        if arm.start == "oracle":
            if run_dir in self._ready:
                return run_dir
            # The oracle's first stage: behaviour cloning of the clips, pretraining's length.
            clips = open_sources(setting.pretrain, labelled=True)
            self._train(
                f"{setting.name}: oracle BC of clips p{p}", "finetune", self._bc_config(p),
                clips, run_dir,
            )  # fmt: skip
            return run_dir
        name = f"pretrain_{arm.variant}" + (f"_{arm.control}" if arm.control else "")
        if run_dir in self._ready:
            return run_dir
        cfg = b.config(pretrain_seed=p, variant=arm.variant, control=arm.control)
        # Opened unlabeled: the pretraining loader is never handed an action.
        clips = open_sources(setting.pretrain, labelled=False)
        self._train(f"{setting.name}: {name} p{p}", "pretrain", cfg, clips, run_dir)
        return run_dir

    def _bc_config(self, seed: int) -> LawmConfig:
        """Behaviour cloning of the clips before fine-tuning (the oracle's first stage and
        labels_first's): as many steps as pretraining."""
        b = self.plan.budget
        return bc_config(b.config(finetune_seed=seed), b.pretrain_steps)

    def labels_first_dir(self, setting: Setting, n: int, p: int | None) -> Path:
        """The first stage of the labels-first arms (shared: the same labels, the same
        cloning)."""
        b = self.plan.budget
        return self.plan.out / setting.name / f"n{n}" / f"labels_first_bc_s{b.pretrain_steps}_p{p}"

    def labels_first(self, setting: Setting, arm: Arm, n: int, p: int, demos) -> Path:
        """A fresh network behaviour-cloned on the clips labelled by the world model of
        pretraining seed ``p`` (its labeller fitted on the N demonstrations, so one run per N)."""
        run_dir = self.labels_first_dir(setting, n, p)
        if run_dir in self._ready or run_finished(run_dir):
            return run_dir
        clips = self.labelled_clips(setting, arm, p, demos, run_dir)
        self._train(
            f"{setting.name} N={n}: BC of labelled clips p{p}", "finetune", self._bc_config(p),
            clips, run_dir,
        )  # fmt: skip
        return run_dir

    def probe(self, setting: Setting, run_dir: Path, heldout: list) -> dict | None:
        path = run_dir / "probe.json"
        cached = _read_json(path)
        if cached is not None:
            return cached
        try:
            from lawm.probe import run_probe
        except ImportError as err:
            return {"unavailable": f"lawm.probe is missing ({err})"}
        wm = run_dir / "world_model.safetensors"
        self.bar.set_description(f"{setting.name}: probe {run_dir.name}")
        kw = {"lang_cache": self.plan.lang_cache, "max_windows": self.plan.budget.probe_windows}
        try:
            result = run_probe(
                run_dir / "policy", heldout, world_model=wm if wm.is_file() else None, **kw
            )
        except (ValueError, RuntimeError) as err:
            if not wm.is_file():
                raise
            # The policy's figures stand without the world model's; say why those are missing.
            result = run_probe(run_dir / "policy", heldout, world_model=None, **kw)
            result["world_model_error"] = f"{type(err).__name__}: {err}"
            _say(f"probe of {run_dir.name} without its world model: {err}")
        atomic_write_text(path, json.dumps(result, indent=1))
        return result

    # -- fine-tuning ---
    def finetune_dir(self, setting: Setting, arm: Arm, n: int, p: int | None, s: int) -> Path:
        b = self.plan.budget
        tag = f"{arm.name}_s{b.finetune_steps}" + (f"_p{p}" if p is not None else "") + f"_f{s}"
        if b.proprio_dropout:
            tag += f"_pd{round(b.proprio_dropout * 100)}"
        if b.init_lr_scale != 1.0 and arm.start != "scratch":
            tag += f"_lr{round(b.init_lr_scale * 100)}"
        return self.plan.out / setting.name / f"n{n}" / tag

    def finetuned(self, setting: Setting, arm: Arm, n: int, p: int | None, s: int, demos):
        b = self.plan.budget
        run_dir = self.finetune_dir(setting, arm, n, p, s)
        tag = run_dir.name
        init = None
        if arm.start != "scratch" and arm.init_policy:
            init = self.pretrained(setting, arm, p) / "policy"
        if arm.labels_first and not run_finished(run_dir):
            # The labelled clips are its first stage; fine-tuning sees the demonstrations.
            assert p is not None
            init = self.labels_first(setting, arm, n, p, demos) / "policy"
        cfg = b.finetune_config(
            pretrained=init is not None, finetune_seed=s, variant=arm.variant, control=arm.control
        )
        fresh = not run_finished(run_dir) and run_dir not in self._ready
        if arm.labels == "recorded" or (arm.rehearse and arm.start == "oracle"):
            demos = list(demos) + open_sources(setting.pretrain, labelled=True)
        elif arm.labels and (arm.rehearse or not arm.labels_first) and fresh:
            demos = list(demos) + self.labelled_clips(setting, arm, p, demos, run_dir)
        self._train(
            f"{setting.name} N={n}: {tag}", "finetune", cfg, demos, run_dir, init=init,
            head=arm.head if init is not None else None,
        )  # fmt: skip
        return run_dir

    def labelled_clips(self, setting: Setting, arm: Arm, p: int | None, demos, run_dir: Path):
        """The setting's clips labelled by the arm's pretrained world model, fitted on
        ``demos``; how close the labels come to the clips' recorded actions (read for this
        report only) goes to run_dir/labels.json."""
        from lawm.pseudo_label import label_accuracy, label_clips

        assert p is not None
        pretrain_run = self.pretrained(setting, arm, p)
        self.bar.set_description(f"label clips for {run_dir.name}")
        clips = open_sources(setting.pretrain, labelled=False)
        labelled, info = label_clips(pretrain_run, demos, clips)
        truth = open_sources(setting.pretrain, labelled=True)
        recorded = [t.read(0, t.length, cameras=(), proprio=False)["actions"] for t in truth]
        info["accuracy"] = label_accuracy([c.labels for c in labelled], recorded)
        # The same labeller on the untrained world model: what pretraining adds to the labels.
        baseline, _ = label_clips(pretrain_run, demos, clips, untrained=True)
        info["untrained_accuracy"] = label_accuracy([c.labels for c in baseline], recorded)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "labels.json", json.dumps(info, indent=1))
        return labelled

    def evaluate(self, run_dir: Path, heldout: list) -> list[float]:
        path = run_dir / "heldout.json"
        names = [s.name for s in heldout]
        cached = _read_json(path)
        stride = self.plan.budget.eval_stride
        if cached and cached.get("episodes") == names and cached.get("stride") == stride:
            return cached["mse"]
        self.bar.set_description(f"held-out MSE {run_dir.name}")
        mse = heldout_mse(run_dir / "policy", heldout, lang_cache=self.plan.lang_cache,
                          stride=stride)  # fmt: skip
        atomic_write_text(path, json.dumps({"episodes": names, "stride": stride, "mse": mse}))
        return mse

    def _cached(self, run_dir: Path, heldout: list, key: str, what: str, compute) -> dict:
        """``compute(policy_dir, heldout, lang_cache=..., stride=RELIANCE_STRIDE)`` of a
        fine-tuned run, cached in run_dir/KEY.json for these held-out episodes."""
        path = run_dir / f"{key}.json"
        names = [s.name for s in heldout]
        cached = _read_json(path)
        if cached and cached.get("episodes") == names:
            return cached[key]
        self.bar.set_description(f"{what} {run_dir.name}")
        found = compute(run_dir / "policy", heldout, lang_cache=self.plan.lang_cache,
                        stride=RELIANCE_STRIDE)  # fmt: skip
        atomic_write_text(path, json.dumps({"episodes": names, key: found}))
        return found

    def reliance(self, run_dir: Path, heldout: list) -> dict[str, float]:
        """``input_reliance`` of a fine-tuned run on every RELIANCE_STRIDE-th held-out window
        (cached beside its held-out MSE)."""
        return self._cached(run_dir, heldout, "reliance", "input reliance", input_reliance)

    def sensitivity(self, run_dir: Path, heldout: list) -> dict[str, float]:
        """``input_sensitivity`` of a fine-tuned run (cached beside its held-out MSE)."""
        return self._cached(
            run_dir, heldout, "sensitivity", "input sensitivity", input_sensitivity
        )

    # -- closed loop ---
    def closed_loop_keys(self, arm: Arm) -> list[tuple[int | None, int]]:
        """(pretraining seed, fine-tuning seed) of the arm's closed-loop runs; run k of every
        arm meets the same initial states as run k of scratch. Scratch takes fine-tuning
        seeds 0..R-1; an arm that pretrains cycles through the pretraining seeds first."""
        count = self.plan.closed_loop_runs
        if arm.start == "scratch":
            return [(None, k) for k in range(count)]
        ps = self.plan.pretrain_seeds
        return [(ps[k % len(ps)], k // len(ps)) for k in range(count)]

    def exported(self, run_dir: Path) -> Path:
        """The run's policy exported for the runtime core (with its text encoder)."""
        from lawm.export import export_policy

        out = run_dir / "export"
        if (out / "policy.json").is_file():
            return out
        self.bar.set_description(f"export {run_dir.name}")
        export_policy(run_dir / "policy", out)
        return out

    def rollouts(self, setting: Setting, run_dir: Path) -> dict[tuple[int, int], bool]:
        """Closed-loop success of the run from each unseen initial state of each task (in
        LIBERO, through the robot's runtime core, at the suite's reference horizon)."""
        from lawm_sim.eval_sim import evaluate as evaluate_sim

        states = list(self.plan.closed_loop_states)
        path = run_dir / "closed_loop.json"
        cached = _read_json(path)
        want = {
            "suite": setting.suite,
            "tasks": list(setting.tasks),
            "init_states": states,
            "max_steps": self.plan.closed_loop_max_steps,
        }
        if not (cached and all(cached.get(k) == v for k, v in want.items())):
            export = self.exported(run_dir)
            self.bar.set_description(f"closed loop {run_dir.name}")
            kw = {
                "init_states": states,
                "max_steps": self.plan.closed_loop_max_steps,
                "render_size": CLOSED_LOOP_IMAGE_SIZE,
                "progress": False,
            }
            t0 = time.perf_counter()
            workers = min(self.plan.closed_loop_workers, len(setting.tasks))
            if workers > 1:  # one simulator per task, in parallel (rendering is single-threaded)
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                    futures = [
                        pool.submit(evaluate_sim, export, setting.suite, [t], len(states), **kw)
                        for t in setting.tasks
                    ]
                    tasks = [t for f in futures for t in f.result()["tasks"]]
            else:
                tasks = evaluate_sim(
                    export, setting.suite, list(setting.tasks), len(states), **kw
                )["tasks"]
            cached = {
                **want,
                "seconds": round(time.perf_counter() - t0, 1),
                "episodes": [
                    [t["task_id"], e["init_state"], bool(e["success"]), e["steps"]]
                    for t in tasks
                    for e in t["episodes"]
                ],
            }
            atomic_write_text(path, json.dumps(cached))
        return {(t, i): ok for t, i, ok, _ in cached["episodes"]}

    def closed_loop_arms(self, cell: dict) -> list[str]:
        pl = self.plan
        if pl.closed_loop_arms is not None:
            return ["scratch"] + [a for a in pl.closed_loop_arms if a != "scratch"]
        chosen = [
            a
            for a, row in cell["arms"].items()
            if a != "scratch" and row.get("minus_scratch_ci") and row["minus_scratch_ci"][1] < 0
        ]
        return ["scratch"] + chosen

    def closed_loop(self, setting: Setting, n: int, demos: list, cell: dict) -> dict[str, Any]:
        """Success of each chosen arm over R runs x the unseen initial states, with Wilson
        intervals, and each arm against scratch paired by (initial state, run)."""
        from lawm.stats import paired_successes

        names = self.closed_loop_arms(cell)
        out: dict[str, Any] = {
            "n": n,
            "runs": self.plan.closed_loop_runs,
            "init_states": [self.plan.closed_loop_states[0], self.plan.closed_loop_states[-1]],
            "tasks": list(setting.tasks),
            "arms": {},
        }
        outcome: dict[str, dict] = {name: {} for name in names}
        runs: dict[str, list[str]] = {name: [] for name in names}
        keys = {name: self.closed_loop_keys(self.arms[name]) for name in names}
        for name in names:
            arm = self.arms[name]
            dirs = [self.finetune_dir(setting, arm, n, p, s) for p, s in keys[name]]
            pretrain = {p for p, _ in keys[name]} if arm.start != "scratch" else set()
            self.bar.total += (
                len(dirs)
                + sum(d not in self._ready for d in dirs)
                + sum(self.pretrained_dir(setting, arm, p) not in self._ready for p in pretrain)
            )
        self.bar.refresh()
        # Run k of every arm before run k + 1 of any: an interrupted run leaves pairs.
        for k in range(self.plan.closed_loop_runs):
            for name in names:
                p, s = keys[name][k]
                run_dir = self.finetuned(setting, self.arms[name], n, p, s, demos)
                for state, ok in self.rollouts(setting, run_dir).items():
                    outcome[name][(state, k)] = ok
                runs[name].append(run_dir.name)
                self.bar.update(1)
        for name in names:
            episodes = outcome[name]
            out["arms"][name] = {"training_runs": runs[name], **success_summary(episodes)}
        for name in names[1:]:
            out["arms"][name]["vs_scratch"] = paired_successes(outcome[name], outcome["scratch"])
            first = self.first_stage_closed_loop(setting, n, demos, name, keys[name], outcome)
            if first is not None:
                out["arms"][name]["first_stage"] = first
        return out

    def first_stage_dir(self, setting: Setting, arm: Arm, n: int, p: int) -> Path | None:
        """The run dir of the arm's first stage (behaviour cloning of the clips, before the
        demonstrations' fine-tuning), for the oracle and labels_first; None for other arms."""
        if arm.start == "oracle":
            return self.pretrained_dir(setting, arm, p)
        if arm.labels_first:
            return self.labels_first_dir(setting, n, p)
        return None

    def first_stage_closed_loop(
        self, setting: Setting, n: int, demos: list, name: str, keys: list, outcome: dict
    ) -> dict[str, Any] | None:
        """Success of the arm's first stage alone (one policy per pretraining seed, on the same
        initial states), and what fine-tuning on the demonstrations changes: its run k against
        the first stage it started from, paired by initial state (runs whose first stage was
        rolled out). None for arms without a first stage."""
        from lawm.stats import paired_successes

        arm = self.arms[name]
        seeds = sorted({p for p, _ in keys if p is not None})
        dirs = {p: self.first_stage_dir(setting, arm, n, p) for p in seeds}
        if not dirs or any(d is None for d in dirs.values()):
            return None
        found: dict[tuple, bool] = {}
        for p, run_dir in dirs.items():
            if arm.labels_first:
                self.labels_first(setting, arm, n, p, demos)
            else:
                self.pretrained(setting, arm, p)
            for state, ok in self.rollouts(setting, run_dir).items():
                found[(state, p)] = ok
        # Fine-tuned run k against its own first stage (pretraining seed keys[k][0]).
        tuned = {(state, keys[k][0]): ok for (state, k), ok in outcome[name].items()
                 if keys[k][1] == 0}  # fmt: skip
        return {
            "training_runs": [d.name for d in dirs.values()],
            **success_summary(found),
            "fine_tuning_minus_first_stage": paired_successes(tuned, found),
        }

    def count_jobs(self) -> int:
        pl = self.plan
        per_seed = {a for a in pl.arms if self.arms[a].start != "scratch"}
        pretrain_kinds = {
            (self.arms[a].start, self.arms[a].variant, self.arms[a].control) for a in per_seed
        }
        ft = (
            len(pl.ns)
            * len(pl.seeds)
            * (len(pl.arms) - len(per_seed) + len(per_seed) * len(pl.pretrain_seeds))
        )
        # Behaviour cloning of the labelled clips: one per N and pretraining seed (shared by
        # the labels-first arms).
        first = any(self.arms[a].labels_first for a in pl.arms)
        bc = first * len(pl.ns) * len(pl.pretrain_seeds)
        return len(pl.settings) * (len(pretrain_kinds) * len(pl.pretrain_seeds) + ft + bc)

    def run(self) -> dict[str, Any]:
        pl = self.plan
        results: dict[str, Any] = {"settings": {}}
        self.bar = tqdm(total=self.count_jobs(), desc="bench", unit="run",
                        disable=not pl.progress, position=0)  # fmt: skip
        try:
            for setting in pl.settings:
                results["settings"][setting.name] = self.run_setting(setting)
        finally:
            self.bar.close()
        results["train_seconds"] = {k: round(v, 1) for k, v in self.seconds.items()}
        return results

    def run_setting(self, setting: Setting) -> dict[str, Any]:
        pl = self.plan
        heldout = open_sources(setting.heldout, labelled=True)
        pool = open_sources(setting.demos, labelled=True)
        out: dict[str, Any] = {"about": setting.about, "heldout_episodes": len(heldout)}
        # Pretraining and its probes first: every N reuses them.
        probes: dict[str, dict[str, Any]] = {}
        for name in pl.arms:
            arm = self.arms[name]
            if arm.start != "pretrain":
                continue
            for p in pl.pretrain_seeds:
                run_dir = self.pretrained(setting, arm, p)
                key = run_dir.name
                if key not in probes:
                    probes[key] = {"arms": [], "probe": self.probe(setting, run_dir, heldout)}
                probes[key]["arms"].append(name)
        out["probes"] = probes
        cells = {}
        for n in pl.ns:
            demos = first_per_task(pool, n)
            runs: dict[str, dict[Any, list[float]]] = {}
            relies: dict[str, list[dict[str, float]]] = {}
            labels: dict[str, list[dict[str, Any]]] = {}
            for name in pl.arms:
                arm = self.arms[name]
                runs[name], relies[name], labels[name] = {}, [], []
                for s in pl.seeds:
                    for p in [None] if arm.start == "scratch" else pl.pretrain_seeds:
                        run_dir = self.finetuned(setting, arm, n, p, s, demos)
                        runs[name][s if p is None else (p, s)] = self.evaluate(run_dir, heldout)
                        relies[name].append(
                            {**self.reliance(run_dir, heldout),
                             **self.sensitivity(run_dir, heldout)}
                        )  # fmt: skip
                        if arm.labels == "world_model":
                            where = run_dir
                            if arm.labels_first:  # the fit belongs to its first stage
                                where = self.labels_first_dir(setting, n, p)
                            labels[name].append(_read_json(where / "labels.json") or {})
            summary = summarise_cell(runs)
            for name, found in relies.items():
                if found and name in summary:
                    summary[name]["reliance"] = {
                        k: _mean([f[k] for f in found]) for k in ("images", "proprio")
                    }
                    summary[name]["sensitivity"] = {
                        k: _mean([f[k] for f in found])
                        for k in ("clean_mse", "image_shift", "ee_position")
                    }
            for name, found in labels.items():
                if found and name in summary:
                    summary[name]["labels"] = label_summary(found)
            cells[str(n)] = {"demos": len(demos), "arms": summary}
            if n in pl.closed_loop_n:
                cells[str(n)]["closed_loop"] = self.closed_loop(setting, n, demos, cells[str(n)])
        out["cells"] = cells
        out["probe_summary"] = probe_summary(probes, pl.arms, self.arms)
        return out


LABEL_FIGURES = ("mse", "r2_arm_mean", "gripper_agreement")


def label_summary(found: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean over an arm's runs of its clip labels' accuracy against the recorded actions, and
    of the untrained world model's labels (``untrained_`` keys)."""
    out: dict[str, float | None] = {}
    for src, prefix in (("accuracy", ""), ("untrained_accuracy", "untrained_")):
        for k in LABEL_FIGURES:
            out[prefix + k] = _mean([(f.get(src) or {}).get(k) for f in found])
    return out


def probe_summary(probes: dict, arm_names: Sequence[str], table: dict[str, Arm]) -> dict:
    """Per arm that pretrains: the probe R^2 figures (mean over pretraining seeds) of its
    pretrained policy, and the world-model loss with its chunk vs the alternatives."""
    out: dict[str, Any] = {}
    for name in arm_names:
        found = [v["probe"] for v in probes.values() if name in v["arms"]]
        found = [f for f in found if f and "probe_r2" in f]
        if not found:
            continue
        r2 = {
            k: _mean([f["probe_r2"].get(k) for f in found])
            for k in ("latent", "trunk", "untrained_latent", "untrained_trunk", "proprio",
                      "shuffled")
        }  # fmt: skip
        row: dict[str, Any] = {"probe_r2": r2, "pretrain_seeds": len(found)}
        losses = [f.get("wm_loss") for f in found if f.get("wm_loss")]
        if losses:
            row["wm_loss"] = {k: _mean([x.get(k) for x in losses]) for k in losses[0]}
        splits = [f.get("variance_split", {}).get("latent") for f in found]
        splits = [x for x in splits if x]
        if splits:
            row["latent_variance_split"] = {
                k: _mean([x.get(k) for x in splits])
                for k in ("between_tasks", "between_episodes", "within_episode")
            }
        out[name] = row
    return out


def _mean(values: Sequence[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


# -- report -----------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci: Sequence[float] | None, digits: int = 4) -> str:
    return "n/a" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def table(results: dict[str, Any]) -> str:
    lines = [
        "Held-out action MSE (raw action units; unseen demonstrations), mean over runs. 95 % "
        "bootstrap intervals: over held-out episodes (the runs fixed), and over episodes and "
        "training seeds both ('runs too'); differences paired by fine-tuning seed. The verdict "
        "reads the episode interval; 'runs too' says whether it holds across seeds.",
        f"default method: {results['default_arm']}; budget: {results['budget']}",
    ]
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"skipped {name}: {reason}")
    for sname, s in results["settings"].items():
        lines += ["", f"## {sname}: {s['about']} ({s['heldout_episodes']} held-out episodes)"]
        for n, cell in s["cells"].items():
            lines += [
                "",
                f"N = {n} per task ({cell['demos']} demonstrations)",
                "",
                "| arm | held-out MSE | 95 % interval | minus scratch | 95 % interval | "
                "runs too | verdict (runs too) |",
                "|---|---:|---:|---:|---:|---:|---|",
            ]
            for arm, row in cell["arms"].items():
                said = row.get("verdict", "")
                if "verdict_runs" in row:
                    said += f" ({row['verdict_runs']})"
                lines.append(
                    f"| {arm} | {_fmt(row['heldout_mse'])} | {_ci(row['heldout_mse_ci'])} | "
                    f"{_fmt(row.get('minus_scratch'))} | {_ci(row.get('minus_scratch_ci'))} | "
                    f"{_ci(row.get('minus_scratch_ci_runs'))} | {said} |"
                )
            relied = {a: r["reliance"] for a, r in cell["arms"].items() if r.get("reliance")}
            if relied:
                lines += [
                    "",
                    "Input reliance: held-out MSE with each window's images, or proprio, taken "
                    "from another held-out window, as a multiple of the MSE with its own (mean "
                    "over runs; 1 = ignored)",
                    "",
                    "| arm | images | proprio |",
                    "|---|---:|---:|",
                ]
                lines += [
                    f"| {a} | {r['images']:.2f} | {r['proprio']:.2f} |" for a, r in relied.items()
                ]
            moved = {a: r["sensitivity"] for a, r in cell["arms"].items() if r.get("sensitivity")}
            if moved:
                lines += [
                    "",
                    f"Input sensitivity: mean squared change of the policy's chunk (raw units) "
                    f"when every image is shifted by {SHIFT_PX} px, or the end-effector position "
                    f"is off by N(0, {EE_POS_NOISE:g} m) per axis, on every "
                    f"{RELIANCE_STRIDE}th held-out window; the clean chunk's MSE for scale "
                    "(mean over runs)",
                    "",
                    "| arm | clean MSE | image shift | end-effector position |",
                    "|---|---:|---:|---:|",
                ]
                lines += [
                    f"| {a} | {_fmt(r['clean_mse'])} | {_fmt(r['image_shift'], 5)} | "
                    f"{_fmt(r['ee_position'])} |"
                    for a, r in moved.items()
                ]
            labelled = {a: r["labels"] for a, r in cell["arms"].items() if r.get("labels")}
            if labelled:
                lines += [
                    "",
                    "Clip labels read off the pretrained world model (fitted on the "
                    "demonstrations) against the clips' recorded actions, and the same labeller "
                    "on the untrained world model (mean over runs; R^2 averaged over the six arm "
                    "dimensions)",
                    "",
                    "| arm | label MSE | arm R^2 | gripper sign agrees | untrained: MSE | "
                    "arm R^2 | gripper |",
                    "|---|---:|---:|---:|---:|---:|---:|",
                ]
                lines += [
                    f"| {a} | {_fmt(r['mse'])} | {_fmt(r['r2_arm_mean'], 3)} | "
                    f"{_fmt(r['gripper_agreement'], 3)} | {_fmt(r['untrained_mse'])} | "
                    f"{_fmt(r['untrained_r2_arm_mean'], 3)} | "
                    f"{_fmt(r['untrained_gripper_agreement'], 3)} |"
                    for a, r in labelled.items()
                ]
            cl = cell.get("closed_loop")
            if cl:
                lines += closed_loop_table(cl)
        ps = s.get("probe_summary") or {}
        if ps:
            lines += [
                "",
                "Held-out linear-probe R^2 of the true action chunk (pretrained policy, mean "
                "over pretraining seeds)",
                "",
                "| arm | latent | trunk | untrained latent | untrained trunk | proprio | "
                "shuffled |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for arm, row in ps.items():
                r = row["probe_r2"]
                lines.append(
                    f"| {arm} | "
                    + " | ".join(
                        _fmt(r[k], 3)
                        for k in (
                            "latent",
                            "trunk",
                            "untrained_latent",
                            "untrained_trunk",
                            "proprio",
                            "shuffled",
                        )
                    )  # fmt: skip
                    + " |"
                )
            wm_rows = [(a, r["wm_loss"]) for a, r in ps.items() if r.get("wm_loss")]
            if wm_rows:
                keys_ = list(wm_rows[0][1])
                lines += ["", "World-model loss with the chunk of", "",
                          "| arm | " + " | ".join(keys_) + " |",
                          "|---|" + "---:|" * len(keys_)]  # fmt: skip
                for a, w in wm_rows:
                    lines.append(f"| {a} | " + " | ".join(_fmt(w[k], 3) for k in keys_) + " |")
    if results.get("targets"):
        lines += ["", "Targets"]
        lines += [f"- {t['what']}: {t['status']}" for t in results["targets"]]
    lines.append("")
    lines.append(f"time: {results['seconds']:.0f} s")
    return "\n".join(lines)


def closed_loop_table(cl: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Closed loop, N = {cl['n']}: success over {cl['runs']} training runs per arm x init "
        f"states {cl['init_states'][0]}-{cl['init_states'][1]} of each task (unseen by every "
        "arm); Wilson 95 % intervals; against scratch paired by (init state, run): difference "
        "with a 95 % bootstrap interval over init states, exact McNemar p",
        "",
        "| arm | successes | rate | 95 % interval | minus scratch | 95 % interval | "
        "only this / only scratch | McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, row in cl["arms"].items():
        vs = row.get("vs_scratch")
        extra = (
            f"{vs['difference']:+.3f} | {_ci(vs['difference_ci'], 3)} | "
            f"{vs['only_a']} / {vs['only_b']} | {vs['mcnemar_p']:.3g}"
            if vs
            else "| | |"
        )
        lines.append(
            f"| {arm} | {row['successes']}/{row['episodes']} | {row['success_rate']:.3f} | "
            f"{_ci(row['success_ci'], 3)} | {extra} |"
        )
    firsts = {arm: row["first_stage"] for arm, row in cl["arms"].items() if "first_stage" in row}
    if firsts:
        lines += [
            "",
            "First stage alone (the clips behaviour-cloned, before fine-tuning on the "
            "demonstrations; one policy per pretraining seed, the same init states), and the "
            "fine-tuned runs minus the first stage each started from, paired by init state",
            "",
            "| arm | first stage | rate | 95 % interval | fine-tuned minus first stage | "
            "95 % interval | only fine-tuned / only first | McNemar p |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for arm, f in firsts.items():
            d = f["fine_tuning_minus_first_stage"]
            lines.append(
                f"| {arm} | {f['successes']}/{f['episodes']} | {f['success_rate']:.3f} | "
                f"{_ci(f['success_ci'], 3)} | {d['difference']:+.3f} | "
                f"{_ci(d['difference_ci'], 3)} | {d['only_a']} / {d['only_b']} | "
                f"{d['mcnemar_p']:.3g} |"
            )
    return lines


def closed_loop_target(sname: str, n: str, cl: dict[str, Any], arm: str) -> dict[str, str]:
    """At least 10 points above scratch with Wilson intervals that do not overlap."""
    row, ref = cl["arms"].get(arm), cl["arms"]["scratch"]
    what = (
        f"{sname} N={n}: closed-loop success of {arm} at least 10 points above scratch, "
        "intervals apart"
    )
    if row is None:
        return {"what": what + " (arm not run in closed loop: its offline interval did not "
                "lie below zero)", "status": "not measured"}  # fmt: skip
    gap = row["success_rate"] - ref["success_rate"]
    ok = gap >= 0.10 and row["success_ci"][0] > ref["success_ci"][1]
    return {
        "what": f"{what} ({row['successes']}/{row['episodes']} vs "
        f"{ref['successes']}/{ref['episodes']}: {gap:+.3f}, {_ci(row['success_ci'], 3)} vs "
        f"{_ci(ref['success_ci'], 3)}, McNemar p {row['vs_scratch']['mcnemar_p']:.3g})",
        "status": "met" if ok else "not met",
    }


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's offline targets for the default method, each met / not met / not measured."""
    arm = results["default_arm"]
    out = []
    for sname, s in results["settings"].items():
        ps = (s.get("probe_summary") or {}).get(arm)
        if ps:
            r = ps["probe_r2"]
            ok = all(
                r[k] is not None and r["latent"] is not None and r["latent"] > r[k]
                for k in ("untrained_latent", "proprio")
            )
            out.append({
                "what": f"{sname}: probe R^2 of {arm}'s chunk above the untrained network's and "
                f"proprio's ({_fmt(r['latent'], 3)} vs {_fmt(r['untrained_latent'], 3)}, "
                f"{_fmt(r['proprio'], 3)})",
                "status": "met" if ok else "not met",
            })  # fmt: skip
        for n, cell in s["cells"].items():
            if cell.get("closed_loop"):
                out.append(closed_loop_target(sname, n, cell["closed_loop"], arm))
        if sname == "spatial":
            continue
        for n, cell in s["cells"].items():
            row = cell["arms"].get(arm)
            if int(n) > 3 or not row or "minus_scratch_ci" not in row:
                continue
            ok = row["minus_scratch_ci"][1] < 0
            runs = row.get("minus_scratch_ci_runs")
            status = "met" if ok else "not met"
            if ok and runs is not None:
                status += " (across seeds too)" if runs[1] < 0 else " (not across seeds)"
            out.append({
                "what": f"{sname} N={n}: held-out MSE of {arm} below scratch beyond the 95 % "
                f"interval (difference {_fmt(row['minus_scratch'])}, episodes "
                f"{_ci(row['minus_scratch_ci'])}, runs too {_ci(runs)})",
                "status": status,
            })  # fmt: skip
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The last printed line: the first setting's first N, with the default method as
    ``lawm_``; a figure that is unavailable is null with a ``*_reason``."""
    arm = results["default_arm"]
    line: dict[str, Any] = {"default_method": arm}
    sname, s = next(iter(results["settings"].items()))
    n, cell = next(iter(s["cells"].items()))
    line.update(setting=sname, n_per_task=int(n))
    for prefix, name in (("lawm", arm), ("scratch", "scratch")):
        row = cell["arms"].get(name)
        if row:
            line[f"{prefix}_heldout_mse"] = row["heldout_mse"]
            line[f"{prefix}_heldout_mse_ci"] = row["heldout_mse_ci"]
        else:
            line[f"{prefix}_heldout_mse"] = line[f"{prefix}_heldout_mse_ci"] = None
            line[f"{prefix}_heldout_mse_reason"] = results.get("skipped", {}).get(
                name, "arm not run"
            )
    row = cell["arms"].get(arm) or {}
    line["lawm_minus_scratch"] = row.get("minus_scratch")
    line["lawm_minus_scratch_ci"] = row.get("minus_scratch_ci")
    line["lawm_minus_scratch_ci_runs"] = row.get("minus_scratch_ci_runs")
    for other, orow in cell["arms"].items():
        if other not in (arm, "scratch"):
            line[f"{other}_heldout_mse"] = orow["heldout_mse"]
            line[f"{other}_minus_scratch_ci"] = orow.get("minus_scratch_ci")
    for cname, c in s["cells"].items():
        cl = c.get("closed_loop")
        for prefix, name in (("lawm", arm), ("scratch", "scratch")):
            row = (cl or {}).get("arms", {}).get(name)
            if row:
                line[f"{prefix}_closed_loop_n{cname}_success"] = row["success_rate"]
                line[f"{prefix}_closed_loop_n{cname}_success_ci"] = row["success_ci"]
                line[f"{prefix}_closed_loop_n{cname}_episodes"] = row["episodes"]
    ps = (s.get("probe_summary") or {}).get(arm)
    figures = {
        "lawm_probe_r2": "latent",
        "lawm_trunk_probe_r2": "trunk",
        "untrained_probe_r2": "untrained_latent",
        "proprio_probe_r2": "proprio",
    }
    for key, src in figures.items():
        line[key] = ps["probe_r2"][src] if ps else None
        if line[key] is None:
            line[key + "_reason"] = _probe_reason(s, arm, results)
    line["skipped"] = results.get("skipped", {})
    line["seconds"] = round(results["seconds"], 1)
    return line


def _probe_reason(s: dict, arm: str, results: dict) -> str:
    if arm in results.get("skipped", {}):
        return f"{arm} was skipped"
    for v in (s.get("probes") or {}).values():
        if arm in v["arms"] and v["probe"] and "unavailable" in v["probe"]:
            return v["probe"]["unavailable"]
    return "no probe figure for this arm (the probe could not compute it on the held-out data)"


# -- entry point ------------------------------------------------------------------------------
def run_bench(
    plan: Plan,
    budget_name: str = "",
    *,
    data_seconds: float = 0.0,
    write: bool = True,
    print_out: Callable = print,
) -> dict[str, Any]:
    """Run ``plan``; returns the results (also written to plan.out/results.{json,md}).
    ``data_seconds``: the time the data took (generation or cache look-up), counted in the
    reported total."""
    t0 = time.perf_counter() - data_seconds
    table_ = arms()
    runnable = []
    for name in plan.arms:
        if name not in table_:
            raise ValueError(f"unknown arm {name!r}; choose from {list(table_)}")
        why = unavailable(table_[name])
        if why is None:
            runnable.append(name)
        else:
            plan.skipped[name] = why
            _say(f"skipping {name}: {why}")
    if "scratch" not in runnable:
        raise ValueError("the scratch arm is the reference of every difference; keep it")
    plan.arms = runnable
    plan.out.mkdir(parents=True, exist_ok=True)
    results = Runner(plan).run()
    results.update(
        default_arm=default_arm_name(),
        budget={"name": budget_name, **dataclasses.asdict(plan.budget)},
        arms={n: dataclasses.asdict(table_[n]) for n in plan.arms},
        skipped=dict(plan.skipped),
        seeds=plan.seeds,
        pretrain_seeds=plan.pretrain_seeds,
        ns=plan.ns,
        torch_threads=torch.get_num_threads(),
        data_seconds=round(data_seconds, 1),
        seconds=time.perf_counter() - t0,
    )
    results["targets"] = targets(results)
    text = table(results)
    if write:
        atomic_write_text(plan.out / "results.json", json.dumps(results, indent=1))
        atomic_write_text(plan.out / "results.md", text + "\n")
    print_out("\n" + text + f"\n\nwritten to {plan.out}/ (results.json, results.md)")
    print_out(json.dumps(headline(results)))
    return results


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in names if v not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: choose from {list(choices)}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Offline benchmark: does pretraining on clips improve the fine-tuned policy?",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="arms:\n" + "\n".join(f"  {a.name}: {a.what}" for a in arms().values()),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="in-domain, N = 1, one seed per arm; scratch and the default method, "
        "labels_first (14 min 46 s measured with the data generated, about 9.5 with it cached)",
    )
    p.add_argument("--settings", type=_names(SETTINGS), help=f"of {list(SETTINGS)}")
    p.add_argument("--n", type=_ints, help="demonstrations per task (default 1,3,10)")
    p.add_argument("--seeds", type=_ints, help="fine-tuning seeds (default 0,1,2)")
    p.add_argument("--pretrain-seeds", type=_ints, help="pretraining seeds (default 0,1)")
    p.add_argument("--arms", type=_names(tuple(arms())), help="default: all")
    p.add_argument("--pretrain-steps", type=int, help="pretraining (and oracle BC) steps")
    p.add_argument("--finetune-steps", type=int, help="fine-tuning steps")
    p.add_argument(
        "--proprio-dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="fine-tune every arm hiding the proprio input from a fraction P of the samples",
    )
    p.add_argument(
        "--init-lr-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="fine-tune the pretrained arms with their loaded weights' learning rate x S (the "
        "head's unchanged); scratch runs are shared with S = 1 (run folders tagged _lrNN)",
    )
    p.add_argument("--spatial-tasks", type=_ints, default=[0, 1], help="LIBERO-Spatial tasks")
    p.add_argument("--out", type=Path, help="default runs/bench_learning/{quick,full}")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="generated data")
    p.add_argument(
        "--fresh", action="store_true", help="delete the output folder first (data stays cached)"
    )
    p.add_argument(
        "--closed-loop",
        type=_ints,
        metavar="N[,N]",
        help="also roll out in LIBERO at these N (of --n): scratch and the arms whose offline "
        f"interval lies below zero (or --closed-loop-arms), {CLOSED_LOOP_RUNS} training runs "
        f"each x init states {CLOSED_LOOP_STATES.start}-{CLOSED_LOOP_STATES.stop - 1} per task",
    )
    p.add_argument(
        "--closed-loop-runs",
        type=int,
        default=CLOSED_LOOP_RUNS,
        help=f"training runs per arm in closed loop (default {CLOSED_LOOP_RUNS})",
    )
    p.add_argument(
        "--closed-loop-workers",
        type=int,
        default=2,
        help="simulator processes for closed loop, one task each (default 2)",
    )
    p.add_argument(
        "--closed-loop-arms",
        type=_names(tuple(arms())),
        help="arms to roll out besides scratch (default: chosen by the offline interval)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = "quick" if args.quick else "full"
    budget = QUICK if args.quick else FULL
    if not 0.0 < args.init_lr_scale <= 1.0:
        raise SystemExit(f"--init-lr-scale must be in (0, 1], got {args.init_lr_scale}")
    if (
        args.pretrain_steps
        or args.finetune_steps
        or args.proprio_dropout
        or args.init_lr_scale != 1.0
    ):
        budget = dataclasses.replace(
            budget,
            pretrain_steps=args.pretrain_steps or budget.pretrain_steps,
            finetune_steps=args.finetune_steps or budget.finetune_steps,
            proprio_dropout=args.proprio_dropout,
            init_lr_scale=args.init_lr_scale,
        )
    names = args.settings or (["in_domain"] if args.quick else list(SETTINGS))
    progress = not args.quiet
    out = args.out or DEFAULT_OUT / mode
    if args.fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    settings = [libero_setting(n, args.cache, progress, tuple(args.spatial_tasks)) for n in names]
    data_seconds = time.perf_counter() - t0
    plan = Plan(
        settings=settings,
        arms=args.arms or (quick_arms() if args.quick else list(arms())),
        ns=args.n or ([1] if args.quick else [1, 3, 10]),
        seeds=args.seeds or ([0] if args.quick else [0, 1, 2]),
        pretrain_seeds=args.pretrain_seeds or ([0] if args.quick else [0, 1]),
        budget=budget,
        out=out,
        lang_cache=DEFAULT_OUT / "lang_cache.safetensors",
        progress=progress,
        closed_loop_n=args.closed_loop or [],
        closed_loop_runs=args.closed_loop_runs,
        closed_loop_arms=args.closed_loop_arms,
        closed_loop_workers=max(1, args.closed_loop_workers),
    )
    bad = [n for n in plan.closed_loop_n if n not in plan.ns]
    if bad or plan.closed_loop_runs < 1:
        build_parser().error(
            f"--closed-loop {bad} is not among --n {plan.ns}" if bad
            else "--closed-loop-runs must be at least 1"
        )  # fmt: skip
    run_bench(plan, mode, data_seconds=data_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
