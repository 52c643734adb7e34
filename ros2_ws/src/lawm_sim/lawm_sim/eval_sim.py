"""Closed-loop evaluation of an exported policy in LIBERO, without ROS.

The policy runs through the same runtime core as the ROS node (``lawm_core.runner``:
onnxruntime, preprocessing, temporal aggregation, denormalisation), at the simulator's 20 Hz,
for the reference horizon of the suite. Per task: success rate over N episodes (init states
0..N-1 unless given), steps, and a few rollout videos.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lawm_core import contract
from lawm_core.backends import CHOICES
from lawm_core.cliargs import UsageError
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.files import atomic_write_text
from lawm_core.model import PolicyModel
from lawm_core.runner import PolicyRunner
from lawm_core.text_encoder import TextEncoderRuntime
from lawm_sim import libero_env
from lawm_sim.episode_view import ViewError, write_episode_view
from lawm_sim.generate import parse_ids
from lawm_sim.libero_env import LiberoEnv
from lawm_sim.recording import write_video

SIM_RATE_HZ = 20.0  # LIBERO's control frequency


def run_episode(
    env: LiberoEnv,
    runner: PolicyRunner,
    lang: np.ndarray,
    max_steps: int,
    record: bool = False,
    trace: dict[str, list] | None = None,
) -> tuple[bool, int, list[np.ndarray]]:
    """One closed-loop episode from the env's chosen init state; ``lang`` (lang_dim,) is the
    instruction's embedding.

    Returns (success, steps, frames) where frames are the first model camera's (H, W, 3) uint8
    images when ``record``. ``trace`` (a dict) collects, per step, every model camera's frame
    (``trace[camera]``), the proprio the policy saw (``"proprio"``) and the action commanded
    (``"actions"``). InputError if the policy refuses an observation.
    """
    cameras = runner.model.cameras
    obs = env.reset()
    runner.reset()
    frames = []
    for step in range(max_steps):
        if record:
            frames.append(obs["images"][cameras[0]])
        proprio = np.concatenate([obs["ee_pos"], obs["gripper_states"]]).astype(np.float32)
        result = runner.step(obs["images"], proprio, lang, step / SIM_RATE_HZ)
        if not result.acted:
            raise InputError(f"the policy did not act at step {step}: {result.reason}")
        command = np.clip(result.raw, -1.0, 1.0)
        if trace is not None:
            for cam in cameras:
                trace.setdefault(cam, []).append(obs["images"][cam])
            trace.setdefault("proprio", []).append(proprio)
            trace.setdefault("actions", []).append(command.astype(np.float32))
        obs, success, _ = env.step(command)
        if success:
            if record:
                frames.append(obs["images"][cameras[0]])
            return True, step + 1, frames
    return False, max_steps, frames


def evaluate(
    model_dir: Path,
    suite: str,
    tasks: list[int],
    episodes_per_task: int,
    *,
    init_states: list[int] | None = None,
    max_steps: int | None = None,
    videos: Path | None = None,
    n_videos: int = 2,
    record: Path | None = None,
    record_format: str = "mcap",
    providers: str = "cpu",
    backend: str = "auto",
    render_size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on ``tasks`` of ``suite``; returns the report dict."""
    model = PolicyModel(model_dir, providers=providers, backend=backend)
    if not model.has_text_encoder:
        raise ValueError(f"{model_dir} has no text encoder; export with it to evaluate in sim")
    text = TextEncoderRuntime(model_dir)
    runner = PolicyRunner(model, max_gap_s=2.0 / SIM_RATE_HZ)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "onnx_sha256": model.spec.onnx_sha256,
        "backend": model.backend,
        "precision": model.precision,
        "backend_selection": model.selection.summary(),
        "suite": suite,
        "control_rate_hz": SIM_RATE_HZ,
        "tasks": [],
    }
    total = len(tasks) * episodes_per_task
    bar = tqdm(total=total, desc=f"eval {suite}", unit="ep", disable=not progress)
    t_start = time.perf_counter()
    for task_id in tasks:
        # Render as the data generator does (128 px by default), then fit to the model's size
        # exactly as the training data loader and the ROS node do.
        env = LiberoEnv(suite, task_id, image_size=render_size, cameras=model.cameras, render=True)
        try:
            lang = text.embed(env.instruction)
            horizon = max_steps or env.max_steps
            states = init_states or list(range(env.n_init_states))
            results = []
            for ep in range(episodes_per_task):
                state = states[ep % len(states)]
                env.set_init_state(state)
                want_video = videos is not None and ep < n_videos
                trace: dict[str, list] | None = {} if record is not None else None
                t0 = time.perf_counter()
                success, steps, frames = run_episode(env, runner, lang, horizon, want_video, trace)
                results.append(
                    {
                        "init_state": state,
                        "success": success,
                        "steps": steps,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                )
                if trace:
                    tag = "success" if success else "fail"
                    write_episode_view(
                        Path(record) / f"{suite}_task{task_id}_init{state}_{tag}.{record_format}",
                        {c: np.stack(trace[c]) for c in model.cameras},
                        env.instruction,
                        SIM_RATE_HZ,
                        actions=np.stack(trace["actions"]),
                        proprio=np.stack(trace["proprio"]),
                        proprio_names=contract.PROPRIO_LAYOUT,
                        outcome={"success": bool(success), "steps": steps, "init_state": state},
                        name=f"{suite}_task{task_id}_init{state}",
                    )
                if want_video and frames:
                    videos.mkdir(parents=True, exist_ok=True)
                    tag = "success" if success else "fail"
                    write_video(
                        videos / f"{suite}_task{task_id}_init{state}_{tag}.mp4",
                        np.stack(frames),
                        fps=20,
                    )
                bar.update(1)
                bar.set_postfix(task=task_id, success=sum(r["success"] for r in results))
        finally:
            env.close()
        rate = float(np.mean([r["success"] for r in results]))
        report["tasks"].append(
            {
                "task_id": task_id,
                "instruction": env.instruction,
                "success_rate": rate,
                "episodes": results,
            }
        )
    bar.close()
    report["mean_success"] = float(np.mean([t["success_rate"] for t in report["tasks"]]))
    report["episodes"] = total
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(report, indent=2))


def add_parser(sub) -> None:
    """Register ``eval-sim`` on the training CLI."""
    p = sub.add_parser(
        "eval-sim",
        help="closed-loop LIBERO evaluation of an exported policy (no ROS)",
        description="Runs the exported ONNX policy through the robot runtime core in LIBERO "
        "at 20 Hz and reports success per task.",
    )
    p.add_argument("--model", type=Path, required=True, help="export directory")
    p.add_argument("--suite", required=True, help="libero_object, libero_spatial, ...")
    p.add_argument("--tasks", default="0-9", help="task ids: 0,3,5 or 0-9 (default 0-9)")
    p.add_argument("--episodes-per-task", type=int, default=10, help="episodes per task")
    p.add_argument("--init-states", help="init states to cycle through (default 0..N-1)")
    p.add_argument("--max-steps", type=int, help="horizon (default: the suite's reference)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--videos", type=Path, help="write a few rollout videos here")
    p.add_argument("--n-videos", type=int, default=2, help="videos per task (default 2)")
    p.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="write every episode (cameras, commanded actions, proprio, instruction, success) "
        "as <suite>_task<T>_init<I>_<success|fail>.mcap (Foxglove) or .rrd (Rerun)",
    )
    p.add_argument("--record-format", choices=["mcap", "rrd"], default="mcap", help="for --record")
    p.add_argument("--render-size", type=int, default=128, help="render size (default 128)")
    p.add_argument("--providers", default="cpu", help="onnxruntime providers (default cpu)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=CHOICES,
        help="inference backend: auto (the fastest whose actions match fp32 on the export's "
        "reference frames), onnxruntime (fp32), onnxruntime-int8, openvino, openvino-bf16, "
        "openvino-int8 (default auto)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    try:
        if args.suite not in libero_env.SUITES:
            raise ValueError(f"unknown suite {args.suite!r}; valid suites: {libero_env.SUITES}")
        tasks = parse_ids(args.tasks, range(libero_env.n_tasks(args.suite)), "task")
        states = None
        if args.init_states:
            n_init = min(libero_env.n_init_states(args.suite, t) for t in tasks)
            states = parse_ids(args.init_states, range(n_init), "init state")
        if args.episodes_per_task <= 0:
            raise ValueError(f"--episodes-per-task must be positive, got {args.episodes_per_task}")
        if args.max_steps is not None and args.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {args.max_steps}")
        if not (args.model / "policy.json").is_file():
            raise ValueError(f"--model {str(args.model)!r} has no policy.json")
        if args.record is not None and args.record_format == "rrd":
            try:
                import rerun  # noqa: F401
            except ImportError:
                raise ValueError(
                    "--record-format rrd needs the rerun-sdk package (make setup-viewer); "
                    "--record-format mcap needs nothing more"
                ) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        report = evaluate(
            args.model,
            args.suite,
            tasks,
            args.episodes_per_task,
            init_states=states,
            max_steps=args.max_steps,
            videos=args.videos,
            n_videos=args.n_videos,
            record=args.record,
            record_format=args.record_format,
            providers=args.providers,
            backend=args.backend,
            render_size=args.render_size,
            progress=not args.quiet,
        )
    except (ModelLoadError, ViewError) as err:
        raise UsageError(str(err)) from None
    for t in report["tasks"]:
        print(f"task {t['task_id']}: success {t['success_rate']:.2f}  {t['instruction']}")
    print(f"mean success {report['mean_success']:.3f} over {report['episodes']} episodes")
    if args.json:
        write_report(report, args.json)
    print(json.dumps({k: report[k] for k in ("suite", "mean_success", "episodes", "seconds")}))
    return 0
