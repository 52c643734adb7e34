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

import datetime
import json
import multiprocessing as mp
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import contract

# Topics of the LIBERO ROS bridge (and of the rosbags written here).
ROSBAG_TOPICS = {
    "agentview": "/libero/agentview/image_raw",
    "eye_in_hand": "/libero/eye_in_hand/image_raw",
    "proprio": "/libero/proprio",
    "action": "/lawm_policy/action",
    "instruction": "/libero/instruction",
}
IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
# Stop an episode this many steps after the expert has finished without success.
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
@dataclass
class Episode:
    """One recorded rollout (row t: the observation before action t)."""

    suite: str
    task_id: int
    task_name: str
    init_state: int
    instruction: str
    success: bool
    actions: np.ndarray
    obs: dict[str, np.ndarray]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    states: np.ndarray | None = None
    robot_states: np.ndarray | None = None
    sim_time: np.ndarray | None = None  # seconds, per row
    error: str | None = None  # what ended the episode early, if anything raised

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def stem(self) -> str:
        return f"{self.suite}_task{self.task_id}_init{self.init_state}"


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
    from lawm_sim.experts import make_expert
    from lawm_sim.libero_env import LiberoEnv

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


# -- writers ------------------------------------------------------------------------------------
def _task_meta(suite: str, task_id: int) -> dict[str, Any]:
    from lawm_sim import libero_env

    path = libero_env.bddl_path(suite, task_id)
    return {
        "suite": suite,
        "task_id": task_id,
        "task_name": libero_env.task_names(suite)[task_id],
        "language_instruction": libero_env.task_instruction(suite, task_id),
        "bddl_file_name": path,
    }


def _problem_info(bddl_file: str, instruction: str) -> dict[str, str]:
    text = Path(bddl_file).read_text()
    m = re.search(r"\(define\s+\(problem\s+([^)\s]+)\)", text)
    d = re.search(r"\(:domain\s+([^)\s]+)\)", text)
    return {
        "problem_name": m.group(1) if m else "",
        "domain_name": d.group(1) if d else "",
        "language_instruction": instruction,
    }


class Hdf5Writer:
    """Streams episodes into a LIBERO-layout file at a temporary path; ``commit`` renames it."""

    def __init__(self, path: Path, suite: str, tasks: Sequence[int], env_args: dict[str, Any]):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)
        self.file = h5py.File(self.tmp, "w")
        self.data = self.file.create_group("data")
        metas = [_task_meta(suite, t) for t in tasks]
        first = metas[0]
        info = _problem_info(first["bddl_file_name"], first["language_instruction"])
        attrs = self.data.attrs
        attrs["problem_info"] = json.dumps(info)
        attrs["macros_image_convention"] = "opencv"  # we store upright frames
        attrs["env_name"] = info["problem_name"] or suite
        attrs["bddl_file_name"] = first["bddl_file_name"]
        attrs["bddl_file_content"] = Path(first["bddl_file_name"]).read_text()
        attrs["env_args"] = json.dumps(env_args)
        attrs["tasks"] = json.dumps(metas)
        attrs["suite"] = suite
        attrs["date"] = datetime.date.today().isoformat()
        self.count = 0
        self.total = 0

    def add(self, ep: Episode) -> None:
        demo = self.data.create_group(f"demo_{self.count}")
        self.count += 1
        self.total += ep.length
        a = demo.attrs
        a["success"] = bool(ep.success)
        a["suite"] = ep.suite
        a["task_id"] = int(ep.task_id)
        a["task_name"] = ep.task_name
        a["init_state"] = int(ep.init_state)
        a["num_samples"] = int(ep.length)
        a["language_instruction"] = ep.instruction
        if ep.error is not None:
            a["error"] = ep.error
        demo.create_dataset("actions", data=ep.actions)
        demo.create_dataset("states", data=ep.states)
        demo.create_dataset("robot_states", data=ep.robot_states)
        rewards = np.zeros(ep.length, np.float64)
        dones = np.zeros(ep.length, np.uint8)
        if ep.success and ep.length:
            rewards[-1], dones[-1] = 1.0, 1
        demo.create_dataset("rewards", data=rewards)
        demo.create_dataset("dones", data=dones)
        obs = demo.create_group("obs")
        for cam, frames in ep.images.items():
            obs.create_dataset(
                contract.HDF5_IMAGE_KEYS[cam],
                data=frames,
                chunks=(1, *frames.shape[1:]),
                **IMAGE_COMPRESSION,
            )
        for k in ("ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states"):
            obs.create_dataset(k, data=ep.obs[k])

    def commit(self) -> Path:
        self.data.attrs["num_demos"] = self.count
        self.data.attrs["total"] = self.total
        self.file.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp made it private
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_mp4(folder: Path, ep: Episode, fps: int = 20) -> Path:
    """The episode's agentview as ``<stem>.mp4`` + ``<stem>.txt`` (its instruction)."""
    from lawm_core.files import atomic_write_text
    from lawm_sim.recording import write_video

    frames = ep.images[contract.AGENTVIEW]
    path = Path(folder) / f"{ep.stem}.mp4"
    write_video(path, frames, fps=fps)
    atomic_write_text(path.with_suffix(".txt"), ep.instruction + "\n")
    return path


def write_rosbag(folder: Path, ep: Episode) -> Path:
    """The episode as a rosbag2 (sqlite3) folder ``<folder>/<stem>`` with the bridge topics:
    both cameras (sensor_msgs/Image rgb8), proprio and actions (std_msgs/Float32MultiArray),
    the instruction (std_msgs/String). Stamps are the simulator time (20 Hz)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from lawm_core.bags import typestore

    ts = typestore()
    T = ts.types
    image_t, array_t, string_t = (
        "sensor_msgs/msg/Image",
        "std_msgs/msg/Float32MultiArray",
        "std_msgs/msg/String",
    )
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    stamps = np.round(np.asarray(ep.sim_time) * 1e9).astype(np.int64)
    if len(stamps) and stamps[0] <= 0:  # a zero header stamp reads as "unset"
        stamps = stamps - stamps[0] + 1_000_000_000
    final = Path(folder) / ep.stem
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ep.stem}.", dir=final.parent))
    bag = staging / "bag"
    try:
        with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
            conns = {
                cam: w.add_connection(ROSBAG_TOPICS[cam], image_t, typestore=ts)
                for cam in ep.images
            }
            proprio = w.add_connection(ROSBAG_TOPICS["proprio"], array_t, typestore=ts)
            action = w.add_connection(ROSBAG_TOPICS["action"], array_t, typestore=ts)
            text = w.add_connection(ROSBAG_TOPICS["instruction"], string_t, typestore=ts)
            t0 = int(stamps[0]) if len(stamps) else 1_000_000_000
            w.write(text, t0, ts.serialize_cdr(T[string_t](data=ep.instruction), string_t))
            for t, stamp in enumerate(stamps):
                stamp = int(stamp)
                sec, nsec = divmod(stamp, 1_000_000_000)
                header = T["std_msgs/msg/Header"](
                    stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                    frame_id="",
                )
                for cam, conn in conns.items():
                    img = np.ascontiguousarray(ep.images[cam][t])
                    h, wd = img.shape[:2]
                    msg = T[image_t](
                        header=header,
                        height=h,
                        width=wd,
                        encoding="rgb8",
                        is_bigendian=0,
                        step=wd * 3,
                        data=img.reshape(-1),
                    )
                    w.write(conn, stamp, ts.serialize_cdr(msg, image_t))
                state = np.concatenate([ep.obs["ee_pos"][t], ep.obs["gripper_states"][t]])
                for conn, values in ((proprio, state), (action, ep.actions[t])):
                    msg = T[array_t](layout=layout, data=np.asarray(values, dtype=np.float32))
                    w.write(conn, stamp, ts.serialize_cdr(msg, array_t))
        if final.exists():
            old = final.parent / f".{ep.stem}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(bag, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(bag, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


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
) -> dict[str, Any]:
    """Run the expert on every (task, init state) and write ``out``; returns a summary.

    ``max_steps`` caps episodes below the suite's limit (``libero_env.MAX_STEPS``).

    Raises GenerateError for unknown suites/tasks/init states, unsupported tasks, or output
    options that need rendering.
    """
    from lawm_sim import experts, libero_env

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
    out = Path(out)
    if out.suffix.lower() not in (".hdf5", ".h5"):
        raise GenerateError(f"--out must end in .hdf5 or .h5, got {str(out)!r}")
    if not 16 <= image_size <= 512 or image_size % 2:
        raise GenerateError(f"image size must be even and in [16, 512], got {image_size}")
    if not render and (mp4_dir is not None or rosbag_dir is not None):
        raise GenerateError("--mp4-dir and --rosbag need images; drop --no-render")
    if workers < 1:
        raise GenerateError(f"workers must be >= 1, got {workers}")
    if render:
        libero_env.select_gl()  # decided once here; spawned workers inherit MUJOCO_GL

    if max_steps is not None and max_steps < 1:
        raise GenerateError(f"max steps must be >= 1, got {max_steps}")
    jobs = [(suite, t, i, image_size, render, max_steps) for t in tasks for i in init_states]
    env_args = {
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
    writer = Hdf5Writer(out, suite, tasks, env_args)
    per_task: dict[int, list[int]] = {t: [0, 0] for t in tasks}
    n_mp4 = n_bags = 0
    errors: list[str] = []
    try:
        bar = _progress(len(jobs), progress)
        for ep in run_episodes(jobs, workers):
            if ep.error is not None:
                errors.append(f"{ep.stem}: {ep.error}")
            if ep.length:  # an episode that failed before its first step has nothing to keep
                writer.add(ep)
            per_task[ep.task_id][0] += int(ep.success)
            per_task[ep.task_id][1] += 1
            if ep.success and mp4_dir is not None:
                write_mp4(Path(mp4_dir), ep)
                n_mp4 += 1
            if ep.success and rosbag_dir is not None:
                write_rosbag(Path(rosbag_dir), ep)
                n_bags += 1
            if on_episode is not None:
                on_episode(ep)
            done = sum(v[1] for v in per_task.values())
            ok = sum(v[0] for v in per_task.values())
            bar.update(1)
            bar.set_postfix(success=f"{ok}/{done}")
        bar.close()
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    ok = sum(v[0] for v in per_task.values())
    return {
        "out": str(path),
        "suite": suite,
        "episodes": len(jobs),
        "successful": ok,
        "success_rate": round(ok / len(jobs), 4),
        "per_task": {str(t): f"{s}/{n}" for t, (s, n) in per_task.items()},
        "frames": writer.total,
        "mp4": n_mp4,
        "rosbags": n_bags,
        "errors": errors,
    }


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
    from tqdm import tqdm

    return tqdm(total=total, unit="ep", desc="generate", dynamic_ncols=True)
