"""Scripted LIBERO demonstrations in the official LIBERO/robomimic HDF5 layout.

``python training/train.py generate --suite libero_object --tasks 0-9 --init-states 0-49
--out demos.hdf5`` runs the scripted expert (lawm_sim.experts) from each chosen init state and
writes one ``data/demo_N`` per episode, in (task, init state) order::

    data                      attrs: problem_info (JSON, language_instruction of the first
                                     task), macros_image_convention="opencv" (upright frames),
                                     env_name, bddl_file_name, bddl_file_content, env_args
                                     (JSON), tasks (JSON: every task in the file), num_demos,
                                     total, suite, date
      demo_N                  attrs: success, suite, task_id, task_name, init_state (index),
                                     num_samples, language_instruction
        actions               (T, 7) float64   7-D OSC_POSE deltas in [-1, 1]
        states                (T, S) float64   MuJoCo state (time, qpos, qvel) before each action
        robot_states          (T, 9)           gripper (2), ee position (3), ee quaternion (4)
        rewards, dones        (T,)             1 on the last step of a successful episode
        obs/agentview_rgb     (T, H, W, 3) uint8, upright (absent with --no-render)
        obs/eye_in_hand_rgb   (T, H, W, 3) uint8, upright (absent with --no-render)
        obs/ee_pos (T, 3), obs/ee_ori (T, 3) axis-angle, obs/ee_states (T, 6) = both,
        obs/gripper_states (T, 2), obs/joint_states (T, 7)

Row t holds the observation the action of row t was computed from. The env's settle steps
(``libero_env.SETTLE_STEPS``) come before row 0 and are not recorded, like the official
datasets drop their first steps. An episode ends on success or at the suite's step limit;
failed episodes are kept with ``success=False`` (the loaders skip them unless asked).

Optional extra outputs of the successful episodes (formats that cannot flag a failure):
``--mp4-dir`` (agentview clip + ``<stem>.txt`` instruction, unlabeled video) and ``--rosbag``
(one rosbag2 per episode with the LIBERO bridge's topics, see ``ROSBAG_TOPICS``).

Episodes run in-process, or in ``--workers`` spawned processes that each build their own env;
the parent writes the file (atomically: temporary file, then rename).
"""

from __future__ import annotations

import multiprocessing as mp
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lawm_core import contract
from lawm_sim import experts, libero_env
from lawm_sim.experts import make_expert
from lawm_sim.libero_env import LiberoEnv
from lawm_sim.recording import Episode, Hdf5Writer, write_mp4, write_rosbag

# Steps an episode may go on after the expert says it is done, for the task to register success.
GRACE_STEPS = 20


class GenerateError(ValueError):
    """A bad argument (unknown suite, task, init state, range); the message lists valid values."""


# -- argument parsing ---------------------------------------------------------------------------
def parse_ids(text: str, valid: Sequence[int], what: str) -> list[int]:
    """``"0,3,5"``, ``"0-9"`` or a mix (``"0-2,7"``) -> sorted unique ids, each in ``valid``."""
    valid_set = set(valid)
    shown = _describe(valid)
    ids: list[int] = []
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise GenerateError(f"empty {what} list; valid {what}s: {shown}")
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise GenerateError(
                f"bad {what} {part!r}: expected N, N-M or a comma list; valid {what}s: {shown}"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise GenerateError(
                f"bad {what} range {part!r} (end before start); valid {what}s: {shown}"
            )
        bad = [i for i in range(lo, hi + 1) if i not in valid_set]
        if bad:
            raise GenerateError(f"unknown {what} {bad[0]} in {part!r}; valid {what}s: {shown}")
        ids += range(lo, hi + 1)
    return sorted(set(ids))


def _describe(valid: Sequence[int]) -> str:
    valid = sorted(valid)
    if not valid:
        return "none"
    if valid == list(range(valid[0], valid[-1] + 1)) and len(valid) > 2:
        return f"{valid[0]}-{valid[-1]}"
    return ", ".join(str(v) for v in valid)


# -- one episode --------------------------------------------------------------------------------
def rollout(env: Any, expert: Any, max_steps: int | None = None) -> Episode:
    """Reset ``env`` (its chosen init state) and run ``expert`` until success or the limit.

    An exception from the simulator or the expert ends the episode as a failure, with the
    rows recorded so far and the message in ``Episode.error``."""
    max_steps = max_steps or env.max_steps
    dims = {"ee_pos": 3, "ee_ori": 3, "gripper_states": 2, "joint_states": 7}
    rows: dict[str, list[np.ndarray]] = {k: [] for k in dims}
    images: dict[str, list[np.ndarray]] = {c: [] for c in env.cameras}
    actions, states, robot_states, times = [], [], [], []
    success, idle, error = False, 0, None
    try:
        obs = env.reset()
        expert.reset(obs)
        for _ in range(max_steps):
            action = np.asarray(expert.act(obs), dtype=np.float64)
            for k in rows:
                rows[k].append(obs[k])
            for cam in images:
                images[cam].append(obs["images"][cam])
            priv = obs["privileged"]
            robot_states.append(
                np.concatenate(
                    [priv["robot0_gripper_qpos"], priv["robot0_eef_pos"], priv["robot0_eef_quat"]]
                )
            )
            states.append(env.sim.get_state().flatten())
            times.append(float(env.sim.data.time))
            actions.append(action)
            obs, success, _ = env.step(action)
            if success:
                break
            idle = idle + 1 if getattr(expert, "done", False) else 0
            if idle > GRACE_STEPS:
                break
    except Exception as err:  # noqa: BLE001 - a simulator failure fails the episode, not the run
        success, error = False, f"{type(err).__name__}: {err}"
    out = {k: np.asarray(v, dtype=np.float64).reshape(-1, dims[k]) for k, v in rows.items()}
    out["ee_states"] = np.concatenate([out["ee_pos"], out["ee_ori"]], axis=1)
    n = len(actions)
    return Episode(
        suite=env.suite,
        task_id=env.task_id,
        task_name=env.task_name,
        init_state=env.init_state,
        instruction=env.instruction,
        success=bool(success),
        actions=np.asarray(actions, dtype=np.float64).reshape(n, contract.ACTION_DIM),
        obs=out,
        images={c: np.asarray(v, dtype=np.uint8) for c, v in images.items()},
        states=np.asarray(states, dtype=np.float64).reshape(n, -1) if n else None,
        robot_states=np.asarray(robot_states, dtype=np.float64).reshape(n, 9),
        sim_time=np.asarray(times, dtype=np.float64),
        error=error,
    )


# -- workers ------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


Job = tuple[str, int, int, int, bool, "int | None"]  # suite, task, init, size, render, limit


def _run_one(job: Job) -> Episode:
    """Run one episode, re-using this process's env while the task stays the same."""
    suite, task_id, init_state, image_size, render, max_steps = job
    key = (suite, task_id, image_size, render)
    if _WORKER.get("key") != key:
        if "env" in _WORKER:
            _WORKER.pop("env").close()
        env = LiberoEnv(suite, task_id, init_state, image_size=image_size, render=render)
        _WORKER.update(key=key, env=env, expert=make_expert(env))
    env, expert = _WORKER["env"], _WORKER["expert"]
    env.set_init_state(init_state)
    ep = rollout(env, expert, max_steps=max_steps)
    if ep.error is not None:  # the simulator may be in a bad state: build a fresh one next
        _close_worker_env()
    return ep


def _close_worker_env() -> None:
    if "env" in _WORKER:
        _WORKER.pop("env").close()
    _WORKER.clear()


def run_episodes(jobs: Sequence[Job], workers: int = 1) -> Iterator[Episode]:
    """Episodes in job order; ``workers`` > 1 runs them in spawned processes."""
    if workers <= 1 or len(jobs) <= 1:
        try:
            for job in jobs:
                yield _run_one(job)
        finally:
            _close_worker_env()
        return
    ctx = mp.get_context("spawn")  # each worker makes its own GL context and simulator
    workers = min(workers, len(jobs))
    # Consecutive jobs of a task go to one worker: an env is built once per task and worker.
    chunk = max(1, min(8, len(jobs) // (workers * 3)))
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_run_one, jobs, chunksize=chunk)


# -- the command --------------------------------------------------------------------------------
def generate(
    suite: str,
    tasks: Sequence[int],
    init_states: Sequence[int],
    out: str | Path,
    render: bool = True,
    image_size: int = 128,
    workers: int = 1,
    mp4_dir: str | Path | None = None,
    rosbag_dir: str | Path | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    on_episode: Callable[[Episode], None] | None = None,
    lerobot_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the expert on every (task, init state) and write ``out``; returns a summary.

    ``max_steps`` caps episodes below the suite's limit (``libero_env.MAX_STEPS``).
    ``lerobot_dir``: also write the successful episodes as one LeRobotDataset v3.0 there
    (``lawm_sim.lerobot_writer``), committed with the HDF5 file.

    Raises GenerateError for unknown suites/tasks/init states, unsupported tasks, or output
    options that need rendering.
    """
    _check_selection(suite, tasks, init_states)
    out = Path(out)
    _check_options(out, render, image_size, workers, max_steps, mp4_dir, rosbag_dir)
    if lerobot_dir is not None and not render:
        raise GenerateError("--lerobot needs images; drop --no-render")
    if render:
        libero_env.select_gl()  # decided once here; spawned workers inherit MUJOCO_GL
    jobs = [(suite, t, i, image_size, render, max_steps) for t in tasks for i in init_states]
    writer = Hdf5Writer(out, suite, tasks, _env_args(suite, render, image_size))
    tally = _Tally({t: [0, 0] for t in tasks})
    lerobot = None
    if lerobot_dir is not None:
        from lawm_sim.lerobot_writer import LerobotWriter

        lerobot = LerobotWriter(lerobot_dir, fps=libero_env.CONTROL_FREQ,
                                cameras=contract.CAMERAS, robot_type="panda")  # fmt: skip
    try:
        bar = _progress(len(jobs), progress)
        for ep in run_episodes(jobs, workers):
            _keep(ep, writer, tally, mp4_dir, rosbag_dir)
            if lerobot is not None and ep.success:
                proprio = np.concatenate([ep.obs["ee_pos"], ep.obs["gripper_states"]], axis=1)
                lerobot.add(ep.images, ep.instruction, ep.actions, proprio)
                tally.lerobot += 1
            if on_episode is not None:
                on_episode(ep)
            bar.update(1)
            bar.set_postfix(success=f"{tally.successful}/{tally.done}")
        bar.close()
        path = writer.commit()
        if lerobot is not None and tally.lerobot:
            lerobot.commit()
        elif lerobot is not None:
            lerobot.abort()
    except BaseException:
        writer.abort()
        if lerobot is not None:
            lerobot.abort()
        raise
    return {
        "out": str(path),
        "suite": suite,
        "episodes": len(jobs),
        "successful": tally.successful,
        "success_rate": round(tally.successful / len(jobs), 4),
        "per_task": {str(t): f"{s}/{n}" for t, (s, n) in tally.per_task.items()},
        "frames": writer.total,
        "mp4": tally.mp4,
        "rosbags": tally.rosbags,
        "lerobot_episodes": tally.lerobot,
        "errors": tally.errors,
    }


def _check_selection(suite: str, tasks: Sequence[int], init_states: Sequence[int]) -> None:
    """GenerateError unless ``suite`` exists and every task has every init state and an expert."""
    if suite not in libero_env.SUITES:
        valid = ", ".join(libero_env.SUITES)
        raise GenerateError(f"unknown suite {suite!r}; valid suites: {valid}")
    valid_tasks = range(libero_env.n_tasks(suite))
    bad = [t for t in tasks if t not in valid_tasks]
    if bad or not tasks:
        raise GenerateError(
            f"unknown task {bad[0] if bad else None} for {suite}; valid tasks: "
            f"{_describe(valid_tasks)}"
        )
    for t in tasks:
        n = libero_env.n_init_states(suite, t)
        bad = [i for i in init_states if not 0 <= i < n]
        if bad or not init_states:
            raise GenerateError(
                f"unknown init state {bad[0] if bad else None} for {suite} task {t}; "
                f"valid init states: 0-{n - 1}"
            )
    unsupported = [t for t in tasks if not experts.is_supported(suite, t)]
    if unsupported:
        names = libero_env.task_names(suite)
        raise GenerateError(
            f"no scripted expert for {suite} task(s) "
            + ", ".join(f"{t} ({names[t]})" for t in unsupported)
            + f"; supported {suite} tasks: {_describe(experts.SUPPORTED.get(suite, ()))}"
        )


def _check_options(
    out: Path,
    render: bool,
    image_size: int,
    workers: int,
    max_steps: int | None,
    mp4_dir: str | Path | None,
    rosbag_dir: str | Path | None,
) -> None:
    """GenerateError for an output path, image size, worker count, step limit or output mix
    we cannot do."""
    if out.suffix.lower() not in (".hdf5", ".h5"):
        raise GenerateError(f"--out must end in .hdf5 or .h5, got {str(out)!r}")
    if not 16 <= image_size <= 512 or image_size % 2:
        raise GenerateError(f"image size must be even and in [16, 512], got {image_size}")
    if not render and (mp4_dir is not None or rosbag_dir is not None):
        raise GenerateError("--mp4-dir and --rosbag need images; drop --no-render")
    if workers < 1:
        raise GenerateError(f"workers must be >= 1, got {workers}")
    if max_steps is not None and max_steps < 1:
        raise GenerateError(f"max steps must be >= 1, got {max_steps}")


def _env_args(suite: str, render: bool, image_size: int) -> dict[str, Any]:
    """The file's ``env_args`` attribute: how the episodes were simulated."""
    return {
        "type": "libero",
        "suite": suite,
        "controller": "OSC_POSE",
        "control_freq": libero_env.CONTROL_FREQ,
        "camera_names": [libero_env.ROBOSUITE_CAMERAS[c] for c in contract.CAMERAS]
        if render
        else [],
        "camera_heights": image_size,
        "camera_widths": image_size,
        "settle_steps": libero_env.SETTLE_STEPS,
        "msaa": False,
        "expert": "lawm_sim.experts",
    }


@dataclass
class _Tally:
    """What a run has produced so far."""

    per_task: dict[int, list[int]]  # task -> [successful, run]
    mp4: int = 0
    rosbags: int = 0
    lerobot: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def successful(self) -> int:
        return sum(v[0] for v in self.per_task.values())

    @property
    def done(self) -> int:
        return sum(v[1] for v in self.per_task.values())


def _keep(
    ep: Episode,
    writer: Hdf5Writer,
    tally: _Tally,
    mp4_dir: str | Path | None,
    rosbag_dir: str | Path | None,
) -> None:
    """Write ``ep`` to the file (and a successful one to the extra outputs); count it."""
    if ep.error is not None:
        tally.errors.append(f"{ep.stem}: {ep.error}")
    if ep.length:  # an episode that failed before its first step has nothing to keep
        writer.add(ep)
    tally.per_task[ep.task_id][0] += int(ep.success)
    tally.per_task[ep.task_id][1] += 1
    if ep.success and mp4_dir is not None:
        write_mp4(Path(mp4_dir), ep)
        tally.mp4 += 1
    if ep.success and rosbag_dir is not None:
        write_rosbag(Path(rosbag_dir), ep)
        tally.rosbags += 1


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    return tqdm(total=total, unit="ep", desc="generate", dynamic_ncols=True)
