"""The end-to-end demo (``make demo``): LIBERO-Object from video pretraining to a robot acting.

1. data: the scripted expert plays LIBERO-Object tasks in the simulator. Two disjoint sets of
   init states: *clips* (unlabeled video for pretraining; opened without actions, so the
   pretraining loader never sees one) and *demos* (a few labelled demonstrations per task).
   Both are cached under ``.cache/demo/`` and reused by the next run.
2. pretrain: LAWM (policy + world model) on the clips.
3. two policies from the same demos and the same fine-tuning budget: LAWM by the labels-first
   recipe (``lawm.labels_first``: the pretrained world model labels the clips, a fresh policy
   clones them, then fine-tunes on the demos) and scratch (the demos alone).
4. export both to ONNX (+ text encoder) and measure the runtime core's inference latency.
5. CCA of the pretrained policy's latent actions against the demos' true actions (held-out
   episodes), next to the same network untrained.
6. closed loop through ROS 2: per model and task, a ``libero_bridge`` process (simulator,
   cameras, /clock) and a ``policy_node`` process (the exported model, sim time) run unseen init
   states; the two models run side by side in separate ROS domains, from the same states, and
   are compared pair by pair (Wilson intervals, the paired difference, exact McNemar test).

Everything lands in ``runs/demo/``: ``results.json``, ``results.md`` (the table), plots
(``curves.png``, ``success.png``, ``latency.png``) and the node logs. Training stages resume
from their checkpoints when rerun (``--fresh`` starts over).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lawm.config import preset
from lawm.data import open_sources
from lawm.eval_latents import latent_action_cca, untrained_cca
from lawm.export import export_policy
from lawm.heldout import bootstrap_mean_ci, first_per_task, heldout_mse
from lawm.labels_first import train_labels_first
from lawm.stats import paired_successes, wilson_ci
from lawm.trainer import train
from lawm_apps.harness import WS_INSTALL, NodeProcess, executable
from lawm_core.files import atomic_write_text
from lawm_core.model import PolicyModel
from lawm_sim.generate import generate

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "runs" / "demo"
DEFAULT_CACHE = ROOT / ".cache" / "demo"
MODELS = ("lawm", "scratch")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults fit in about 30 minutes on a 2-core CPU."""

    suite: str = "libero_object"
    tasks: tuple[int, ...] = (0, 1)
    demos_per_task: int = 10  # labelled, init states 0..demos-1
    # The first ones each model fine-tunes on (both the same); the others are held out for the
    # offline action error. 3: where the benchmark measured the labels-first recipe ahead of
    # scratch in closed loop (README).
    finetune_demos_per_task: int = 3
    clips_per_task: int = 15  # unlabeled, the next init states
    eval_episodes: int = 15  # per task and model, unseen init states from eval_init_state
    eval_init_state: int = 35
    image_size: int = 64  # rendered size (data and closed loop alike)
    preset: str = "small"
    pretrain_steps: int = 1500
    finetune_steps: int = 1000
    max_steps: int = 220  # closed-loop horizon (the expert needs about 110-150 steps)
    workers: int = 2  # simulator processes while generating data
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "demos_per_task",
            "finetune_demos_per_task",
            "clips_per_task",
            "eval_episodes",
            "image_size",
            "pretrain_steps",
            "finetune_steps",
            "max_steps",
            "workers",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        if self.finetune_demos_per_task >= self.demos_per_task:
            raise ValueError(
                f"finetune_demos_per_task {self.finetune_demos_per_task} leaves none of the "
                f"{self.demos_per_task} demos per task held out"
            )
        if self.eval_init_state < self.demos_per_task + self.clips_per_task:
            raise ValueError(
                f"eval_init_state {self.eval_init_state} overlaps the training init states "
                f"0..{self.demos_per_task + self.clips_per_task - 1}"
            )

    def data_files(self, cache: Path) -> dict[str, tuple[Path, list[int]]]:
        """name -> (cached HDF5 path, init states); the name encodes what is in the file."""
        tasks = "-".join(str(t) for t in self.tasks)
        d, c = self.demos_per_task, self.clips_per_task
        out = {}
        for kind, states in (("demos", range(0, d)), ("clips", range(d, d + c))):
            stem = f"{self.suite}_t{tasks}_i{states.start}-{states.stop - 1}_{self.image_size}px"
            out[kind] = (cache / f"{kind}_{stem}.hdf5", list(states))
        return out


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


# -- stages ---------------------------------------------------------------------------------
def make_data(cfg: DemoConfig, cache: Path, progress: bool) -> dict[str, Path]:

    files = {}
    for kind, (path, states) in cfg.data_files(cache).items():
        if path.exists():
            _say(f"{kind}: cached {path}")
        else:
            n = len(states) * len(cfg.tasks)
            _say(f"{kind}: {n} expert episodes -> {path}")
            summary = generate(
                cfg.suite,
                list(cfg.tasks),
                states,
                path,
                image_size=cfg.image_size,
                workers=cfg.workers,
                progress=progress,
            )
            _say(f"{kind}: {summary['successful']}/{n} successful")
        files[kind] = path
    return files


def train_models(cfg: DemoConfig, data: dict[str, Path], out: Path, progress: bool) -> dict:

    lcfg = preset(cfg.preset)
    lcfg = lcfg.replace(
        pretrain=dataclasses.replace(
            lcfg.pretrain,
            steps=cfg.pretrain_steps,
            checkpoint_every=max(1, cfg.pretrain_steps // 2),
            seed=cfg.seed,
        ),
        finetune=dataclasses.replace(
            lcfg.finetune,
            steps=cfg.finetune_steps,
            checkpoint_every=max(1, cfg.finetune_steps // 2),
            seed=cfg.seed,
        ),
    )
    lang_cache = out / "lang_cache.safetensors"
    # The clips are opened unlabeled: the pretraining loader is never handed an action.
    clips = open_sources(data["clips"], labelled=False)
    pool = open_sources(data["demos"], labelled=True)
    demos = first_per_task(pool, cfg.finetune_demos_per_task)
    held = [s for s in pool if not any(s is d for d in demos)]
    _say(f"pretrain: LAWM on {len(clips)} unlabeled clips ({cfg.pretrain_steps} steps)")
    t0 = time.perf_counter()
    train("pretrain", lcfg, clips, out / "pretrain", lang_cache=lang_cache, progress=progress)
    timings = {"pretrain_s": time.perf_counter() - t0}
    _say(
        f"finetune [lawm]: labels first: the world model labels the {len(clips)} clips, a fresh "
        f"policy clones them ({cfg.pretrain_steps} steps), then {len(demos)} demos "
        f"({cfg.finetune_steps} steps)"
    )
    t0 = time.perf_counter()
    recipe = train_labels_first(
        lcfg,
        out / "pretrain",
        demos,
        clips,
        out / "finetune_lawm",
        label_steps=cfg.pretrain_steps,
        say=_say,
        lang_cache=lang_cache,
        progress=progress,
    )
    timings["finetune_lawm_s"] = time.perf_counter() - t0
    _say(f"finetune [scratch]: {len(demos)} demos, {cfg.finetune_steps} steps, from scratch")
    t0 = time.perf_counter()
    train("finetune", lcfg, demos, out / "finetune_scratch", lang_cache=lang_cache,
          progress=progress)  # fmt: skip
    timings["finetune_scratch_s"] = time.perf_counter() - t0
    return {
        "timings": timings, "config": lcfg, "demos": demos, "heldout": held,
        "lang_cache": lang_cache, "labels": recipe["labels"],
    }  # fmt: skip


def heldout_error(held: list, out: Path, lang_cache: Path) -> dict[str, Any]:
    """Both models' action MSE (raw units) on the held-out demonstrations, per episode, with
    95 % bootstrap intervals of each mean and of the paired difference (LAWM - scratch)."""
    mse = {n: heldout_mse(out / f"finetune_{n}" / "policy", held, lang_cache=lang_cache)
           for n in MODELS}  # fmt: skip
    diff = [a - b for a, b in zip(mse["lawm"], mse["scratch"])]
    return {
        "episodes": len(held),
        **{n: {"mean": float(np.mean(v)), "ci": bootstrap_mean_ci(v), "per_episode": v}
           for n, v in mse.items()},
        "lawm_minus_scratch": {"mean": float(np.mean(diff)), "ci": bootstrap_mean_ci(diff)},
    }  # fmt: skip


def export_models(out: Path, demos: Path) -> dict[str, Any]:
    """Both policies with their text encoder, and the reference frames and int8 model drawn
    from the demonstrations (the runtime's backend choice checks against them)."""
    info = {}
    for name in MODELS:
        sidecar = export_policy(
            out / f"finetune_{name}" / "policy",
            out / f"export_{name}",
            data=open_sources(demos, labelled=False),
            lang_cache=out / "lang_cache.safetensors",
            say=lambda line: _say(f"export {name}: {line}"),  # noqa: B023
        )
        info[name] = {
            "dir": str(out / f"export_{name}"),
            "onnx_sha256": sidecar.onnx_sha256,
            "parity_max_abs_error": sidecar.parity_max_abs_error,
        }
    return info


def latent_cca(cfg_l, demos: list, out: Path, lang_cache: Path) -> dict[str, float]:

    trained = latent_action_cca(out / "pretrain" / "policy", demos, lang_cache=lang_cache)
    untrained = untrained_cca(cfg_l, demos, out / "untrained" / "policy", lang_cache=lang_cache)
    return {
        "cca_mean": trained["mean"],
        "cca_heldout_mean": trained.get("heldout_mean", float("nan")),
        "cca_heldout_mean_untrained": untrained.get("heldout_mean", float("nan")),
    }


def inference_latency(model_dir: Path, n: int = 300) -> dict[str, Any]:
    """Runtime core (onnxruntime, one thread, batch 1) on the exported model."""

    model = PolicyModel(model_dir, providers="cpu", threads=1)
    model.warmup(10)
    times = model.warmup(n)
    return {
        "ort_ms_p50": float(np.percentile(times, 50)),
        "ort_ms_p99": float(np.percentile(times, 99)),
        "samples_ms": [round(t, 3) for t in times],
    }


# -- closed loop through ROS 2 ------------------------------------------------------------
class _Lane:
    """One model's evaluation: a bridge + policy node pair per task, in its own ROS domain.
    ``command_mode``: the bridge's (``action``: the raw ~/action drives the simulator; ``twist``:
    ~/cmd_twist + ~/cmd_gripper, the real-arm path)."""

    def __init__(
        self,
        name,
        model_dir,
        domain,
        cfg: DemoConfig,
        log_dir: Path,
        bar,
        command_mode: str = "action",
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.name, self.model_dir, self.domain, self.cfg = name, Path(model_dir), domain, cfg
        self.log_dir, self.bar, self.command_mode = log_dir, bar, command_mode
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(f"lawm_demo_{name}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.node.create_subscription(String, "/libero/episode_result", self._on_result, qos)
        self.results: list[dict] = []
        self._seen: set[tuple] = set()
        self.queue = list(cfg.tasks)
        self.procs: list = []
        self.task: int | None = None
        self.deadline = 0.0
        self.next_log_check = 0.0  # when to look at the policy's log for a configure failure
        self.ended_at: float | None = None
        self.on_result = lambda: None

    def _on_result(self, msg) -> None:
        r = json.loads(msg.data)
        key = (r.get("task_id"), r.get("episode"), r.get("init_state"))
        if key in self._seen:
            return
        self._seen.add(key)
        self.results.append(r)
        self.bar.update(1)
        self.on_result()

    def _env(self) -> dict[str, str]:
        return {
            "ROS_DOMAIN_ID": str(self.domain),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "OMP_NUM_THREADS": "1",
        }

    def _start_next(self) -> None:

        self.task = self.queue.pop(0)
        params_file = WS_INSTALL / "lawm_bringup" / "share" / "lawm_bringup" / "config"
        params_file = params_file / "libero_sim.yaml"
        logs = self.log_dir / f"{self.name}_task{self.task}"
        bridge = NodeProcess(
            "lawm_policy",
            "libero_bridge",
            log_dir=logs,
            params_file=params_file,
            params={
                "suite": self.cfg.suite,
                "task_id": self.task,
                "init_state": self.cfg.eval_init_state,
                "episodes": self.cfg.eval_episodes,
                "image_size": self.cfg.image_size,
                "max_steps": self.cfg.max_steps,
                "command_mode": self.command_mode,
            },
            env=self._env(),
        ).start()
        policy = NodeProcess(
            "lawm_policy",
            "policy_node",
            log_dir=logs,
            params_file=params_file,
            params={"model_dir": str(self.model_dir), "threads": 1},
            env=self._env(),
        ).start()
        self.procs = [bridge, policy]
        # Generous: a simulator step renders two cameras (~10 steps/s with one free core).
        self.deadline = time.monotonic() + 90 + self.cfg.eval_episodes * self.cfg.max_steps / 2

    def _task_results(self) -> list[dict]:
        return [r for r in self.results if r.get("task_id") == self.task]

    def poll(self) -> bool:
        """Advance; returns True while this lane has work left."""
        self.executor.spin_once(timeout_sec=0.02)
        if self.task is None:
            if not self.queue:
                return False
            self._start_next()
            return True
        bridge, policy = self.procs
        if bridge.alive() and time.monotonic() < self.deadline:
            if not policy.alive():
                raise RuntimeError(
                    f"[{self.name}] policy_node exited with {policy.proc.returncode}:\n"
                    + policy.tail()
                )
            # A node that cannot configure (e.g. an export from an older version) stays up,
            # unconfigured, for a retry: say so now rather than at the deadline.
            if time.monotonic() >= self.next_log_check:
                self.next_log_check = time.monotonic() + 1.0
                if "cannot configure" in policy.tail(400):
                    raise RuntimeError(
                        f"[{self.name}] policy_node cannot configure:\n" + policy.tail()
                    )
            return True
        if self.ended_at is None:  # let the last result arrive, then stop the pair
            self.ended_at = time.monotonic()
        if time.monotonic() - self.ended_at < 1.0:
            return True
        self.ended_at = None
        timed_out = bridge.alive()
        code = bridge.stop()
        policy.stop()
        got = len(self._task_results())
        if got < self.cfg.eval_episodes:
            why = "timed out" if timed_out else f"exited with {code}"
            raise RuntimeError(
                f"[{self.name}] task {self.task}: {got}/{self.cfg.eval_episodes} episode "
                f"results; libero_bridge {why}:\n{bridge.tail()}\n--- policy_node\n{policy.tail()}"
            )
        self.task = None
        return bool(self.queue)

    def close(self) -> None:
        import rclpy

        for p in self.procs:
            p.stop()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def evaluate_ros(
    cfg: DemoConfig,
    models: dict[str, Path],
    log_dir: Path,
    progress: bool,
    command_modes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Closed-loop episodes of each model (name -> export dir), the models in parallel.
    ``command_modes``: name -> the bridge's command_mode for that model (default: action)."""

    executable("lawm_policy", "libero_bridge")  # a clear error if the workspace is not built
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    base = 40 + os.getpid() % 50  # own domains: no crosstalk with other ROS graphs here
    total = len(models) * len(cfg.tasks) * cfg.eval_episodes
    bar = tqdm(total=total, desc="closed loop (ROS 2)", unit="ep", disable=not progress)
    lanes = [
        _Lane(name, path, base + i, cfg, log_dir, bar, (command_modes or {}).get(name, "action"))
        for i, (name, path) in enumerate(models.items())
    ]
    t0 = time.perf_counter()
    try:
        active = list(lanes)
        while active:
            active = [lane for lane in active if lane.poll()]
            bar.set_postfix({lane.name: sum(r["success"] for r in lane.results) for lane in lanes})
    finally:
        bar.close()
        for lane in lanes:
            lane.close()
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = {"seconds": seconds, "models": {}}
    for lane in lanes:
        per_task = {}
        for task in cfg.tasks:
            eps = [r for r in lane.results if r["task_id"] == task]
            per_task[str(task)] = {
                "success_rate": float(np.mean([r["success"] for r in eps])),
                "episodes": sorted(eps, key=lambda r: r["episode"]),
                "instruction": eps[0].get("task", "") if eps else "",
            }
        steps = sum(r["steps"] for r in lane.results)
        wins = sum(bool(r["success"]) for r in lane.results)
        report["models"][lane.name] = {
            "success_rate": float(np.mean([r["success"] for r in lane.results])),
            "successes": wins,
            "episodes": len(lane.results),
            "success_ci": wilson_ci(wins, len(lane.results)),
            "tasks": per_task,
            "steps": steps,
        }
    report["sim_steps_per_s"] = sum(m["steps"] for m in report["models"].values()) / seconds
    if len(lanes) == 2:  # the two models from the same states, pair by pair
        a, b = ({(r["task_id"], r["init_state"]): bool(r["success"]) for r in lane.results}
                for lane in lanes)  # fmt: skip
        pairs = paired_successes({(k, 0): v for k, v in a.items()},
                                 {(k, 0): v for k, v in b.items()})  # fmt: skip
        report["paired"] = {"a": lanes[0].name, "b": lanes[1].name, **pairs}
    return report


# -- report ---------------------------------------------------------------------------------
def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_plots(out: Path, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    pre = _read_metrics(out / "pretrain" / "metrics.jsonl")
    if pre:
        axes[0].plot([m["step"] for m in pre], [m["recon_mse"] for m in pre], label="recon MSE")
        axes[0].set_title("pretraining (world model reconstruction)")
        axes[0].set_xlabel("step")
        axes[0].set_yscale("log")
        axes[0].legend()
    for name in MODELS:
        ft = _read_metrics(out / f"finetune_{name}" / "metrics.jsonl")
        if ft:
            axes[1].plot([m["step"] for m in ft], [m["action_mse"] for m in ft], label=name)
    axes[1].set_title("fine-tuning (action MSE, normalised)")
    axes[1].set_xlabel("step")
    axes[1].set_yscale("log")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    written.append("curves.png")

    ros = results.get("closed_loop")
    if ros:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        tasks = list(next(iter(ros["models"].values()))["tasks"])
        width = 0.8 / len(ros["models"])
        for i, (name, m) in enumerate(ros["models"].items()):
            xs = np.arange(len(tasks)) + i * width
            ax.bar(xs, [m["tasks"][t]["success_rate"] for t in tasks], width, label=name)
        ax.set_xticks(np.arange(len(tasks)) + width * (len(ros["models"]) - 1) / 2)
        ax.set_xticklabels([f"task {t}" for t in tasks])
        ax.set_ylim(0, 1)
        ax.set_ylabel("success rate")
        ax.set_title("LIBERO-Object, closed loop through ROS 2")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "success.png", dpi=110)
        plt.close(fig)
        written.append("success.png")

    lat = results.get("latency", {}).get("samples_ms")
    if lat:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.hist(lat, bins=40)
        ax.axvline(results["latency"]["ort_ms_p50"], color="k", ls="--", label="p50")
        ax.axvline(results["latency"]["ort_ms_p99"], color="r", ls="--", label="p99")
        ax.set_xlabel("policy inference (ms, onnxruntime CPU, 1 thread, batch 1)")
        ax.set_ylabel("count")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    return written


def table(results: dict) -> str:
    cfg = results["demo_config"]
    lines = [
        f"LAWM demo: {cfg['suite']} tasks {cfg['tasks']}, {cfg['finetune_demos_per_task']} "
        f"labelled demos per task to fine-tune on (the other "
        f"{cfg['demos_per_task'] - cfg['finetune_demos_per_task']} held out), "
        f"{cfg['clips_per_task']} unlabeled clips per task, preset {cfg['preset']}",
        "",
        "| | LAWM (labels first) | scratch |",
        "|---|---:|---:|",
    ]
    ros = results.get("closed_loop")
    if ros:
        m = ros["models"]
        n = cfg["eval_episodes"] * len(cfg["tasks"])

        def rate(name: str) -> str:
            r = m[name]
            if "success_ci" not in r:
                return f"{r['success_rate']:.0%}"
            lo, hi = r["success_ci"]
            return f"{r['successes']}/{r['episodes']} ({lo:.0%}-{hi:.0%})"

        lines.append(
            f"| closed-loop success ({n} episodes, unseen init states; 95 % Wilson) | "
            f"{rate('lawm')} | {rate('scratch')} |"
        )
        for t in m["lawm"]["tasks"]:
            lines.append(
                f"| task {t} | {m['lawm']['tasks'][t]['success_rate']:.0%} | "
                f"{m['scratch']['tasks'][t]['success_rate']:.0%} |"
            )
        pr = ros.get("paired")
        if pr:
            lo, hi = pr["difference_ci"]
            lines.append(
                f"| LAWM minus scratch, paired by init state (95 % bootstrap; only LAWM / only "
                f"scratch; McNemar p) | {pr['difference'] * 100:+.0f} points [{lo * 100:+.0f}, "
                f"{hi * 100:+.0f}]; {pr['only_a']} / {pr['only_b']}; p {pr['mcnemar_p']:.2g} "
                "| - |"
            )
    h = results.get("heldout_action_mse")
    if h:
        d = h["lawm_minus_scratch"]
        lines.append(
            f"| held-out action MSE, raw units ({h['episodes']} unseen demos; 95 % bootstrap) | "
            f"{h['lawm']['mean']:.4f} [{h['lawm']['ci'][0]:.4f}, {h['lawm']['ci'][1]:.4f}] | "
            f"{h['scratch']['mean']:.4f} [{h['scratch']['ci'][0]:.4f}, "
            f"{h['scratch']['ci'][1]:.4f}] |"
        )
        lines.append(
            f"| LAWM minus scratch, paired by episode | {d['mean']:+.4f} "
            f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] | - |"
        )
    ft = results.get("final_action_mse", {})
    if ft:
        lines.append(
            f"| final fine-tuning action MSE | {ft.get('lawm', float('nan')):.4f} | "
            f"{ft.get('scratch', float('nan')):.4f} |"
        )
    lab = results.get("labels")
    if lab:
        cv = lab.get("cv_mse")
        lines.append(
            f"| clip labels read off the world model (pose-code changes t{lab['window'][0]:+d}"
            f"..t{lab['window'][1]:+d}; leave-one-demo-out action MSE) | "
            + (f"{cv:.4f}" if cv is not None else "n/a")
            + " | - |"
        )
    c = results.get("cca", {})
    if c:
        lines.append(
            f"| latent-action CCA, held-out demos (untrained: "
            f"{c['cca_heldout_mean_untrained']:.3f}) | {c['cca_heldout_mean']:.3f} | - |"
        )
    lat = results.get("latency")
    if lat:
        lines.append(
            f"| inference p50 / p99 (ms, 1 thread) | {lat['ort_ms_p50']:.2f} / "
            f"{lat['ort_ms_p99']:.2f} | same network |"
        )
    lines.append("")
    secs = results.get("seconds", {})
    if secs:
        lines.append(
            "time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items() if v is not None)
        )
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------------
def run_demo(
    cfg: DemoConfig | None = None,
    out: Path = DEFAULT_OUT,
    cache: Path = DEFAULT_CACHE,
    *,
    evaluate: bool = True,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:

    cfg = cfg or DemoConfig()
    out, cache = Path(out), Path(cache)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float | None] = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    data = make_data(cfg, cache, progress)
    secs["data_s"] = time.perf_counter() - t0
    trained = train_models(cfg, data, out, progress)
    secs.update(trained["timings"])
    t0 = time.perf_counter()
    _say("export: both policies to ONNX (+ text encoder)")
    exports = export_models(out, data["demos"])
    secs["export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _say("held-out action error; CCA of latent actions on the held-out demos; latency")
    heldout = heldout_error(trained["heldout"], out, trained["lang_cache"])
    # Every demonstration is held out from pretraining (it saw the clips only).
    pool = trained["demos"] + trained["heldout"]
    cca = latent_cca(trained["config"], pool, out, trained["lang_cache"])
    latency = inference_latency(Path(exports["lawm"]["dir"]))
    secs["cca_latency_s"] = time.perf_counter() - t0
    results: dict[str, Any] = {
        "demo_config": dataclasses.asdict(cfg),
        "exports": exports,
        "heldout_action_mse": heldout,
        "labels": trained["labels"],
        "cca": cca,
        "latency": latency,
        "final_action_mse": {
            name: _read_metrics(out / f"finetune_{name}" / "metrics.jsonl")[-1]["action_mse"]
            for name in MODELS
        },
    }
    if evaluate:
        _say(
            f"closed loop: {len(cfg.tasks)} tasks x {cfg.eval_episodes} episodes per model, "
            "libero_bridge + policy_node processes"
        )
        t0 = time.perf_counter()
        models = {name: Path(exports[name]["dir"]) for name in MODELS}
        results["closed_loop"] = evaluate_ros(cfg, models, out / "logs", progress)
        secs["closed_loop_s"] = time.perf_counter() - t0
    secs["total_s"] = time.perf_counter() - t_all
    results["seconds"] = {k: round(v, 1) for k, v in secs.items() if v is not None}
    results["plots"] = write_plots(out, results)
    text = table(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "results.md", text + "\n")
    print(
        "\n"
        + text
        + f"\n\nwritten to {out}/ (results.json, results.md, "
        + ", ".join(results["plots"])
        + ")",
        flush=True,
    )
    return results
