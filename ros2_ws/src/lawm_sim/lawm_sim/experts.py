"""Scripted experts for LIBERO tasks, driven by privileged simulator state.

An expert reads the object poses in ``obs["privileged"]`` (and static geometry from the env:
object extents, collision geoms, fixture joints, bddl region sites) and returns 7-D OSC_POSE
delta actions in [-1, 1]. Position deltas are proportional to the remaining error; the
gripper stays pointing down and turns about the vertical only.

Usage::

    env = LiberoEnv("libero_object", 3, init_state=0, render=False)
    expert = make_expert(env)          # NotImplementedError for unsupported tasks
    obs = env.reset(); expert.reset(obs)
    while True:
        obs, success, info = env.step(expert.act(obs))

Pick and place (``PickPlace``), phases:

1. ``approach``: move above the grasp point, turning the hand so the fingers close across the
   object's narrow horizontal side (boxes, bottles, cans); objects wider than the open fingers
   (bowls, plates) are taken by the rim, on the side with room for the outer finger and the
   hand (checked against every collision geom nearby) and, for a tilted bowl, its highest
   point;
2. ``descend`` to the grasp height; 3. ``close`` the gripper for ``CLOSE_STEPS`` steps;
4. ``lift``, then measure where the object hangs relative to the hand (a miss, the object
   still down, goes back to 1, at most ``MAX_RETRIES`` times; so does a drop while carrying);
5. ``carry`` at a height where the hanging object clears every object and fixture on the way
   (basket rims, cabinets), to above the target;
6. ``lower`` until the object's bottom is just above the support (plate, basket floor, region);
7. ``release`` the gripper; 8. ``retreat`` upwards.

Turning on a stove (``TurnKnob``): grasp the knob's raised bar across its narrow side, turn
the hand about the vertical until the joint passes the turn-on threshold, release.

An expert's plan follows the task's bddl goal: ``Turnon`` first, then one pick-and-place per
``In x region`` / ``On x object`` / ``On x region`` (a plate "pushed" to a region is picked by
its rim and put down there). Drawers, doors and the microwave have no skill.
``SUPPORTED`` lists the tasks measured at >= 95 % (docs/libero_experts.md); ``make_expert``
refuses the others unless ``strict=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lawm_core import contract

POS_SCALE = 0.05  # metres per unit of position action (robosuite OSC_POSE output limit)
ROT_SCALE = 0.5  # radians per unit of rotation action
R_DOWN = np.diag([1.0, -1.0, -1.0])  # gripper pointing down, fingers closing along world y
OPEN, CLOSED = -1.0, 1.0
CLOSE_STEPS = 12
RELEASE_STEPS = 8
RIM_INSET = 0.012  # rim grasp: hand this far inside the outer radius
RIM_DEPTH = 0.018  # rim grasp: hand this far below the rim top
FINGER_REACH = 0.075  # finger gap when open (m): wider objects need a rim grasp
MAX_RETRIES = 2  # grasp attempts after a miss or a drop
KNOB_TURN = 1.0  # radians the hand turns a knob (LIBERO stoves: on from 0.5)

# Tasks whose expert reaches >= 95 % over the measured init states (docs/libero_experts.md).
SUPPORTED: dict[str, tuple[int, ...]] = {
    "libero_object": tuple(range(10)),
    "libero_spatial": tuple(range(10)),
    "libero_goal": (1, 2, 4, 5, 6, 7, 8, 9),
    "libero_10": (0, 4, 5, 6, 7),
    "libero_90": (),
}


# -- small geometry helpers --------------------------------------------------------------------
def quat_to_mat(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> 3x3 rotation matrix."""
    x, y, z, w = np.asarray(quat, dtype=np.float64) / max(np.linalg.norm(quat), 1e-12)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def mat_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-7:
        return np.zeros(3)
    if np.pi - angle < 1e-4:  # 180 degrees: the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(rot) + 1.0) / 2.0, 0.0, None))
        k = int(np.argmax(axis))
        for j in range(3):
            if j != k and rot[k, j] + rot[j, k] < 0:
                axis[j] = -axis[j]
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    return axis / (2.0 * np.sin(angle)) * angle


def wrap_angle(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def yaw_for_closure(direction: np.ndarray, current_yaw: float = 0.0) -> float:
    """Hand yaw that makes the fingers close along horizontal ``direction`` (either sign),
    choosing the one nearest ``current_yaw``, within [-pi/2, pi/2] of zero."""
    # At yaw y the closing axis is rot_z(y) @ R_DOWN @ [0, 1, 0] = (sin y, -cos y, 0).
    yaw = float(np.arctan2(direction[0], -direction[1]))
    candidates = [wrap_angle(yaw), wrap_angle(yaw + np.pi)]
    candidates = [c for c in candidates if abs(c) <= np.pi / 2 + 1e-6] or candidates
    return min(candidates, key=lambda c: abs(wrap_angle(c - current_yaw)))


@dataclass
class Box:
    """An oriented box in the world: center, axes (columns), half extents."""

    center: np.ndarray
    axes: np.ndarray
    half: np.ndarray

    @classmethod
    def from_local(cls, pos: np.ndarray, rot: np.ndarray, local: tuple[np.ndarray, np.ndarray]):
        center, half = local
        return cls(pos + rot @ center, rot, half)

    @property
    def extent(self) -> np.ndarray:
        """Half size of the world axis-aligned bounding box."""
        return np.abs(self.axes) @ self.half

    @property
    def lo(self) -> np.ndarray:
        return self.center - self.extent

    @property
    def hi(self) -> np.ndarray:
        return self.center + self.extent

    def horizontal(self) -> list[tuple[np.ndarray, float]]:
        """The two most horizontal box axes as (unit xy direction, half extent), narrow first."""
        vertical = int(np.argmax(np.abs(self.axes[2])))
        out = []
        for i in range(3):
            if i == vertical:
                continue
            d = np.array([self.axes[0, i], self.axes[1, i], 0.0])
            n = np.linalg.norm(d)
            out.append((d / n if n > 1e-6 else np.array([1.0, 0.0, 0.0]), float(self.half[i])))
        return sorted(out, key=lambda t: t[1])


def rim_point(box: Box, direction: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Point on the rim circle of a (possibly tilted) bowl-like box on the side ``direction``
    (horizontal), and the horizontal radial direction there."""
    up = box.axes[:, 2]  # objects are modelled upright: their own z axis is the bowl's axis
    rim_center = box.center + up * box.half[2]
    radial = direction - np.dot(direction, up) * up
    radial /= max(np.linalg.norm(radial), 1e-9)
    flat = np.array([radial[0], radial[1], 0.0])
    return rim_center + radial * radius, flat / max(np.linalg.norm(flat), 1e-9)


def rim_depth(box: Box) -> float:
    """How far below the rim to put the hand: ``RIM_DEPTH``, less for low objects (plates) so
    the fingertips stay above the table."""
    return float(min(RIM_DEPTH, 2 * box.half[2] - 0.013))


def _segment_hits_rect(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether the 2-D segment a-b meets the axis-aligned rectangle [lo, hi] (slab test)."""
    t0, t1 = 0.0, 1.0
    d = b - a
    for k in range(2):
        if abs(d[k]) < 1e-12:
            if a[k] < lo[k] or a[k] > hi[k]:
                return False
            continue
        u0, u1 = (lo[k] - a[k]) / d[k], (hi[k] - a[k]) / d[k]
        t0, t1 = max(t0, min(u0, u1)), min(t1, max(u0, u1))
        if t0 > t1:
            return False
    return True


# -- the scene as the expert sees it ---------------------------------------------------------
class Scene:
    """Privileged geometry of one env: local boxes of every object and fixture (computed
    once), current world boxes from the observation (objects) or the simulator (fixtures)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.objects, self.fixtures = env.object_names()
        self.local = {n: env.object_box(n) for n in self.objects + self.fixtures}
        self._geom_cache: dict[tuple[str, ...], np.ndarray] = {}

    def box(self, name: str, obs: dict[str, Any]) -> Box:
        priv = obs["privileged"]
        if f"{name}_pos" in priv:
            pos = np.asarray(priv[f"{name}_pos"], dtype=np.float64)
            rot = quat_to_mat(priv[f"{name}_quat"])
        else:
            pos, rot = self.env.body_pose(name)
        return Box.from_local(pos, rot, self.local[name])

    def position(self, name: str, obs: dict[str, Any]) -> np.ndarray:
        priv = obs["privileged"]
        if f"{name}_pos" in priv:
            return np.asarray(priv[f"{name}_pos"], dtype=np.float64)
        return self.env.body_pose(name)[0]

    def obstacles(self, obs: dict[str, Any], exclude: Sequence[str]) -> list[Box]:
        return [self.box(n, obs) for n in self.objects + self.fixtures if n not in exclude]

    def clearance(self, points: np.ndarray, exclude: Sequence[str]) -> np.ndarray:
        """Distance from each world point (N, 3) to the nearest collision geom of the scene
        (robot and ``exclude`` objects left out), each geom taken as its oriented box."""
        geoms = self._geoms(tuple(exclude))
        if not len(geoms):
            return np.full(len(points), np.inf)
        m, d = self.env.sim.model._model, self.env.sim.data._data
        rot = d.geom_xmat[geoms].reshape(-1, 3, 3)
        center = d.geom_xpos[geoms] + np.einsum("gij,gj->gi", rot, m.geom_aabb[geoms, :3])
        half = m.geom_aabb[geoms, 3:]
        rel = points[:, None, :] - center[None]  # (N, G, 3)
        local = np.einsum("gji,ngj->ngi", rot, rel)
        outside = np.maximum(np.abs(local) - half[None], 0.0)
        return np.linalg.norm(outside, axis=2).min(axis=1)

    def _geoms(self, exclude: tuple[str, ...]) -> np.ndarray:
        if exclude not in self._geom_cache:
            m = self.env.sim.model._model
            skip_roots = {self.env.raw.env.obj_body_id[n] for n in exclude}
            keep = []
            for g in range(m.ngeom):
                if not (m.geom_contype[g] or m.geom_conaffinity[g]):
                    continue
                b = int(m.geom_bodyid[g])
                chain = []
                while b != 0:
                    chain.append(b)
                    b = int(m.body_parentid[b])
                if skip_roots.intersection(chain) or chain and self._robot_body(chain[-1]):
                    continue
                keep.append(g)
            self._geom_cache[exclude] = np.asarray(keep, dtype=np.int64)
        return self._geom_cache[exclude]

    def _robot_body(self, root: int) -> bool:
        import mujoco

        name = mujoco.mj_id2name(self.env.sim.model._model, mujoco.mjtObj.mjOBJ_BODY, root) or ""
        return name.startswith(("robot", "gripper", "mount"))


# -- motion -----------------------------------------------------------------------------------
def hand_state(obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """(position, rotation matrix, yaw) of the hand."""
    rot = quat_to_mat(obs["privileged"]["robot0_eef_quat"])
    closing = rot @ np.array([0.0, 1.0, 0.0])
    yaw = float(np.arctan2(closing[0], -closing[1]))
    return np.asarray(obs["ee_pos"], dtype=np.float64), rot, yaw


def servo(
    obs: dict[str, Any],
    target: np.ndarray,
    yaw: float,
    grip: float,
    speed: float = 1.0,
    gain: float = 1.6,
) -> np.ndarray:
    """Action moving the hand towards ``target`` with the fingers at ``yaw``."""
    pos, rot, _ = hand_state(obs)
    action = np.zeros(contract.ACTION_DIM)
    action[:3] = np.clip(gain * (target - pos) / POS_SCALE, -speed, speed)
    err = mat_to_axis_angle(rot_z(yaw) @ R_DOWN @ rot.T)
    action[3:6] = np.clip(1.5 * err / ROT_SCALE, -1.0, 1.0)
    action[contract.GRIPPER_INDEX] = grip
    return action


# -- skills -----------------------------------------------------------------------------------
@dataclass
class Placement:
    """Where a picked object goes.

    kind: "in" (a container region: drop inside it), "on_object" (its body centred on another
    object's body, e.g. a bowl on a plate), "on_region" (inside a bddl region site's xy box).
    """

    kind: str
    target: str  # object/fixture name, or region site name
    parent: str | None = None  # the object/fixture owning a region site


class Skill:
    """A phase machine producing actions until ``done``."""

    first_phase = "approach"

    def __init__(self, scene: Scene, name: str) -> None:
        self.scene = scene
        self.name = name
        self.phase = self.first_phase
        self.done = False
        self._count = 0  # steps in the current phase
        self._hist: list[np.ndarray] = []

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _stalled(self, pos: np.ndarray, n: int = 4, eps: float = 0.0015) -> bool:
        """Whether the hand moved less than ``eps`` over the last ``n`` calls."""
        self._hist.append(pos.copy())
        if len(self._hist) < n + 1:
            return False
        return bool(np.linalg.norm(self._hist[-1] - self._hist[-1 - n]) < eps)

    def _next(self, phase: str) -> None:
        self.phase = phase
        self._count = 0
        self._hist = []
        if phase == "done":
            self.done = True


class PickPlace(Skill):
    """Pick ``obj`` and put it at ``place``; a phase machine (see the module docstring)."""

    def __init__(self, scene: Scene, obj: str, place: Placement, name: str = "") -> None:
        super().__init__(scene, name or f"pick {obj} -> {place.kind} {place.target}")
        self.obj = obj
        self.place = place
        self._grasp: tuple[np.ndarray, float] | None = None
        self._offset = np.zeros(3)  # object body position minus hand position, once lifted
        self._hang = 0.0  # hand height above the object's bottom, once lifted
        self._carry_z = 0.0
        self._lift_z = 0.0
        self._yaw_ref: float | None = None
        self._rim_dir: np.ndarray | None = None
        self._last_obj: np.ndarray | None = None
        self._retries = 0
        self._z0 = 0.0  # object height when the fingers started closing
        self._held_z = 0.0  # object height once lifted

    # planning --------------------------------------------------------------------------------
    def _grasp_plan(self, obs: dict[str, Any]) -> tuple[np.ndarray, float, float]:
        """(grasp point, hand yaw, approach height) for the object's current pose.

        The grasp side (rim direction, or which of the two finger orientations) is chosen on
        the first call and then only follows the object, so the plan never flip-flops."""
        box = self.scene.box(self.obj, obs)
        if self._yaw_ref is None:
            self._yaw_ref = hand_state(obs)[2]
        (narrow, narrow_half), (_, wide_half) = box.horizontal()
        top, bottom = box.hi[2], box.lo[2]
        last, self._last_obj = self._last_obj, box.center.copy()
        if min(box.half[:2]) * 2 <= FINGER_REACH - 0.01:  # fits between the fingers
            point = box.center.copy()
            yaw = yaw_for_closure(narrow, self._yaw_ref)
            point[2] = max(top - 0.03, bottom + 0.012)
        else:  # too wide for the fingers: grasp the rim (bowls)
            radius = float(min(box.half[:2]))
            moving = last is not None and np.linalg.norm(box.center - last) > 5e-4
            if self._rim_dir is None or (moving and self.phase == "approach"):
                self._rim_dir = self._rim_direction(obs, box, radius)
            point, closing = rim_point(box, self._rim_dir, radius - RIM_INSET)
            point[2] -= rim_depth(box)
            yaw = yaw_for_closure(closing, self._yaw_ref)
        self._yaw_ref = yaw
        return point, yaw, max(top + 0.06, point[2] + 0.08)

    def _rim_direction(self, obs: dict[str, Any], box: Box, radius: float) -> np.ndarray:
        """The rim side to grasp: room for the outer finger and the hand (checked against every
        collision geom nearby), little turning of the hand, preferably facing the robot."""
        hand = np.asarray(obs["ee_pos"], dtype=np.float64)
        hand_yaw = hand_state(obs)[2]
        towards = hand[:2] - box.center[:2]
        towards /= max(np.linalg.norm(towards), 1e-6)
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        rims = [
            rim_point(box, np.array([np.cos(a), np.sin(a), 0.0]), radius - RIM_INSET)
            for a in angles
        ]
        highest = max(p[2] for p, _ in rims)
        best, best_score = None, -np.inf
        for p, d in rims:
            lower_by = highest - p[2]  # a tilted bowl is best taken at its highest rim point
            p = p - np.array([0.0, 0.0, rim_depth(box)])
            side = np.array([-d[1], d[0], 0.0])
            pts = []
            for dz in (-0.012, 0.0, 0.025, 0.05):  # outer finger, tip to knuckle
                for s_ in (-0.01, 0.0, 0.01):
                    pts.append(p + d * 0.045 + side * s_ + np.array([0, 0, dz]))
            # The hand above the fingers, all the way up its vertical path.
            for along in (-0.1, -0.05, 0.0, 0.05, 0.1):
                for s_ in (-0.03, 0.03):
                    for dz in np.arange(0.04, 0.2, 0.03):
                        pts.append(p + d * along + side * s_ + np.array([0, 0, dz]))
            clear = float(self.scene.clearance(np.array(pts), exclude=[self.obj]).min())
            turn = abs(yaw_for_closure(d, hand_yaw))
            score = (
                min(clear, 0.03)
                - 0.01 * turn
                + 0.004 * float(np.dot(d[:2], towards))
                - 0.5 * lower_by
            )
            if score > best_score:
                best, best_score = d, score
        return best

    def _target_xy(self, obs: dict[str, Any]) -> np.ndarray:
        place = self.place
        if place.kind == "on_object":
            return self.scene.position(place.target, obs)[:2]
        pos, _, _ = self.scene.env.site_region(place.target)
        return pos[:2]

    def _support_z(self, obs: dict[str, Any]) -> float:
        place = self.place
        if place.kind == "on_object":
            return float(self.scene.box(place.target, obs).hi[2])
        if place.kind == "in":
            owner = place.parent or place.target
            return float(self.scene.box(owner, obs).lo[2]) + 0.01
        pos, _, _ = self.scene.env.site_region(place.target)
        return float(pos[2])

    def _clear_height(self, obs: dict[str, Any], start: np.ndarray, goal: np.ndarray) -> float:
        """Highest obstacle top near the straight path start -> goal (xy)."""
        obj_box = self.scene.box(self.obj, obs)
        margin = float(np.max(obj_box.extent[:2])) + 0.02
        top = -np.inf
        for o in self.scene.obstacles(obs, exclude=[self.obj]):
            if _segment_hits_rect(start[:2], goal[:2], o.lo[:2] - margin, o.hi[:2] + margin):
                top = max(top, float(o.hi[2]))
        return top

    def _retry(self, obs: dict[str, Any]) -> np.ndarray:
        self._retries += 1
        self._rim_dir = None
        self._last_obj = None
        self._next("approach")
        pos, _, yaw = hand_state(obs)
        return servo(obs, pos + np.array([0.0, 0.0, 0.05]), yaw, OPEN)

    # acting ----------------------------------------------------------------------------------
    def act(self, obs: dict[str, Any]) -> np.ndarray:
        pos, _, yaw_now = hand_state(obs)
        self._count += 1
        phase = self.phase
        if phase == "approach":
            point, yaw, above = self._grasp_plan(obs)
            self._grasp = (point, yaw)
            if self._retries and pos[2] < above - 0.02:  # after a miss: straight up first
                return servo(obs, np.array([pos[0], pos[1], above]), yaw, OPEN)
            target = np.array(
                [point[0], point[1], max(above, pos[2] if self._count < 3 else above)]
            )
            xy_err = np.linalg.norm(target[:2] - pos[:2])
            if xy_err > 0.05:
                target[2] = max(target[2], pos[2])  # go over, not through
            if (
                xy_err < 0.01
                and abs(target[2] - pos[2]) < 0.02
                and abs(wrap_angle(yaw - yaw_now)) < 0.06
            ) or self._count > 80:
                self._next("descend")
            return servo(obs, target, yaw, OPEN)
        if phase == "descend":
            if self._rim_dir is None or self._grasp is None:
                # Follow the object down; a rim grasp keeps its point instead, since a finger
                # resting on a plate would drag it along.
                point, yaw, _ = self._grasp_plan(obs)
                self._grasp = (point, yaw)
            point, yaw = self._grasp
            err = point - pos
            if np.linalg.norm(err) < 0.006 or (self._stalled(pos) and abs(err[2]) < 0.02):
                self._next("close")
            elif self._count > 60:
                self._next("close")
            return servo(obs, point, yaw, OPEN)
        if phase == "close":
            point, yaw = self._grasp
            if self._count == 1:
                self._z0 = float(self.scene.position(self.obj, obs)[2])
            if self._count >= CLOSE_STEPS:
                self._lift_z = pos[2] + 0.06
                self._next("lift")
            return servo(obs, point, yaw, CLOSED)
        if phase == "lift":
            point, yaw = self._grasp
            target = np.array([point[0], point[1], self._lift_z])
            if abs(target[2] - pos[2]) < 0.015 or self._count > 40:
                box = self.scene.box(self.obj, obs)
                self._held_z = float(self.scene.position(self.obj, obs)[2])
                if self._held_z - self._z0 < 0.01 and self._retries < MAX_RETRIES:
                    return self._retry(obs)  # the object stayed down: grasp again
                self._hang = pos[2] - box.lo[2]
                self._offset = self.scene.position(self.obj, obs) - pos
                goal = self._target_xy(obs) - self._offset[:2]
                clear = self._clear_height(obs, pos, goal)
                self._carry_z = max(self._lift_z, clear + 0.03 + self._hang)
                self._next("carry")
            return servo(obs, target, yaw, CLOSED)
        if phase == "carry":
            _, yaw = self._grasp
            goal = self._target_xy(obs) - self._offset[:2]
            target = np.array([goal[0], goal[1], self._carry_z])
            if np.linalg.norm(target[:2] - pos[:2]) > 0.03 and pos[2] < self._carry_z - 0.03:
                target[:2] = pos[:2]  # rise first, then travel
            fallen = self.scene.position(self.obj, obs)[2] < self._held_z - 0.04
            if fallen and self._retries < MAX_RETRIES:
                return self._retry(obs)  # dropped on the way
            if np.linalg.norm(target - pos) < 0.012 or self._count > 120:
                self._next("lower")
            return servo(obs, target, yaw, CLOSED)
        if phase == "lower":
            _, yaw = self._grasp
            goal = self._target_xy(obs) - self._offset[:2]
            z = self._support_z(obs) + 0.015 + self._hang
            target = np.array([goal[0], goal[1], z])
            if abs(z - pos[2]) < 0.008 or self._stalled(pos) or self._count > 80:
                self._next("release")
            return servo(obs, target, yaw, CLOSED)
        if phase == "release":
            _, yaw = self._grasp
            if self._count >= RELEASE_STEPS:
                self._retreat = pos + np.array([0.0, 0.0, 0.08])
                self._next("retreat")
            return servo(obs, pos, yaw, OPEN, speed=0.0)
        if phase == "retreat":
            _, yaw = self._grasp
            if np.linalg.norm(self._retreat - pos) < 0.02 or self._count > 30:
                self._next("done")
            return servo(obs, self._retreat, yaw, OPEN)
        # done: hold still
        return servo(obs, pos, yaw_now, OPEN, speed=0.0)


# -- articulated fixtures ---------------------------------------------------------------------
@dataclass
class Joint:
    """A fixture joint in the world: type (2 slide, 3 hinge), axis, anchor, position."""

    name: str
    body: int
    kind: int
    axis: np.ndarray
    anchor: np.ndarray
    qpos: float


def _joint(scene: Scene, name: str) -> Joint:
    import mujoco

    m, d = scene.env.sim.model._model, scene.env.sim.data._data
    jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
    if jid < 0:
        raise NotImplementedError(f"no joint {name!r} in the scene")
    return Joint(
        name,
        int(m.jnt_bodyid[jid]),
        int(m.jnt_type[jid]),
        d.xaxis[jid].copy(),
        d.xanchor[jid].copy(),
        float(d.qpos[m.jnt_qposadr[jid]]),
    )


def _body_obbs(scene: Scene, body: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(center, rotation, half) of each collision geom of one body."""
    m, d = scene.env.sim.model._model, scene.env.sim.data._data
    out = []
    for g in np.nonzero(m.geom_bodyid == body)[0]:
        if not (m.geom_contype[g] or m.geom_conaffinity[g]):
            continue
        rot = d.geom_xmat[g].reshape(3, 3).copy()
        out.append((d.geom_xpos[g] + rot @ m.geom_aabb[g, :3], rot, m.geom_aabb[g, 3:].copy()))
    return out


class TurnKnob(Skill):
    """Turn on a stove: grasp the knob's bar across its narrow side and turn the hand about
    the knob's (vertical) hinge until the joint passes the fixture's turn-on threshold."""

    def __init__(self, scene: Scene, fixture: str, name: str = "") -> None:
        super().__init__(scene, name or f"turn on {fixture}")
        obj = scene.env.raw.env.get_object(fixture)
        joints = list(obj.joints)
        if len(joints) != 1:
            raise NotImplementedError(f"{fixture} has {len(joints)} joints, expected one knob")
        self.joint = joints[0]
        ranges = obj.object_properties.get("articulation", {}).get("default_turnon_ranges")
        if not ranges:
            raise NotImplementedError(f"{fixture} has no turn-on range")
        self.threshold = float(min(ranges))
        self._plan: dict[str, Any] = {}

    def _geometry(self) -> dict[str, Any]:
        j = _joint(self.scene, self.joint)
        if j.kind != 3 or abs(j.axis[2]) < 0.9:
            raise NotImplementedError(f"{self.joint} is not a vertical hinge")
        obbs = _body_obbs(self.scene, j.body)
        tops = [c[2] + float(np.abs(r[2]) @ h) for c, r, h in obbs]
        top = max(tops)
        # The raised grip of the knob: the geoms reaching up to (nearly) the top.
        grip = [o for o, t in zip(obbs, tops) if t > top - 0.012]
        big = max(grip, key=lambda o: float(np.prod(o[2])))
        center, rot, half = big
        axes = [(rot[:, i], half[i]) for i in range(3) if abs(rot[2, i]) < 0.7]
        narrow = min(axes, key=lambda a: a[1])[0]
        point = center.copy()
        point[2] = top - 0.012
        return {"point": point, "narrow": narrow, "j": j, "turn": +1.0 if j.axis[2] > 0 else -1.0}

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        pos, _, yaw_now = hand_state(obs)
        self._count += 1
        if not self._plan:
            self._plan = self._geometry()
            self._yaw0 = yaw_for_closure(self._plan["narrow"], yaw_now)
        g = self._plan
        point, yaw0 = g["point"], self._yaw0
        if self.phase == "approach":
            target = point + np.array([0.0, 0.0, 0.07])
            if np.linalg.norm(target - pos) > 0.05:
                target[2] = max(target[2], pos[2])
            if (
                np.linalg.norm(target - pos) < 0.01 and abs(wrap_angle(yaw0 - yaw_now)) < 0.05
            ) or self._count > 80:
                self._next("descend")
            return servo(obs, target, yaw0, OPEN)
        if self.phase == "descend":
            if np.linalg.norm(point - pos) < 0.006 or self._stalled(pos) or self._count > 50:
                self._next("close")
            target = point.copy()
            if np.linalg.norm(point[:2] - pos[:2]) > 0.005:
                target[2] = pos[2]  # drifted sideways (the arm lags going down): re-centre first
            return servo(obs, target, yaw0, OPEN, speed=0.6)
        if self.phase == "close":
            if self._count >= CLOSE_STEPS:
                self._next("turn")
            return servo(obs, point, yaw0, CLOSED)
        if self.phase == "turn":
            q = _joint(self.scene, self.joint).qpos
            yaw = yaw0 + g["turn"] * min(0.35 * self._count / 4.0, KNOB_TURN)
            if q >= self.threshold + 0.15 or self._count > 40:
                self._yaw_end = yaw_now
                self._next("release")
            return servo(obs, point, yaw, CLOSED)
        if self.phase == "release":
            if self._count >= RELEASE_STEPS:
                self._retreat = pos + np.array([0.0, 0.0, 0.08])
                self._next("retreat")
            return servo(obs, pos, self._yaw_end, OPEN, speed=0.0)
        if self.phase == "retreat":
            if np.linalg.norm(self._retreat - pos) < 0.02 or self._count > 30:
                self._next("done")
            return servo(obs, self._retreat, self._yaw_end, OPEN)
        return servo(obs, pos, yaw_now, OPEN, speed=0.0)


# -- experts ----------------------------------------------------------------------------------
class Expert:
    """A sequence of skills for one task. ``reset(obs)`` at the start of every episode, then
    ``act(obs)`` each step; ``done`` once every skill finished (it then holds still).

    ``plan`` holds skill factories (``scene -> Skill``), so every episode starts afresh."""

    def __init__(self, env: Any, plan: Sequence[Any]) -> None:
        self.env = env
        self.scene = Scene(env)
        self.plan = list(plan)
        self.skills: list[Skill] = []
        self._current = 0

    def reset(self, obs: dict[str, Any]) -> None:
        self.skills = [make(self.scene) for make in self.plan]
        self._current = 0

    @property
    def done(self) -> bool:
        return bool(self.skills) and self._current >= len(self.skills)

    @property
    def phase(self) -> str:
        if self.done:
            return "done"
        if not self.skills:
            return "reset"
        return f"{self._current}:{self.skills[self._current].phase}"

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if not self.skills:
            raise RuntimeError("call reset(obs) before act(obs)")
        while not self.done and self.skills[self._current].done:
            self._current += 1
        if self.done:
            pos, _, yaw = hand_state(obs)
            grip = float(np.sign(obs["privileged"]["robot0_gripper_qpos"][0] - 0.02)) * -1.0
            return servo(obs, pos, yaw, grip or OPEN, speed=0.0)
        action = self.skills[self._current].act(obs)
        return np.clip(action, -1.0, 1.0)


class PickPlaceExpert(Expert):
    """Pick-and-place tasks: LIBERO-Object (into the basket), LIBERO-Spatial (bowl on plate)
    and the pick-and-place tasks of LIBERO-Goal / LIBERO-10 (one skill per goal predicate)."""


class ArticulationExpert(Expert):
    """Tasks that also turn on a stove (LIBERO-Goal, LIBERO-10): the knob first, then the
    pick-and-place skills."""


def _owner(names: Sequence[str], region: str) -> str | None:
    hits = [n for n in names if region.startswith(n + "_")]
    return max(hits, key=len) if hits else None


def _plan(env: Any) -> tuple[list[Any], bool]:
    """Skill factories for ``env``'s bddl goal, and whether any is not pick-and-place.

    Turning on comes first (a pot put on a stove would hide its knob), then one pick-and-place
    per ``In``/``On`` predicate, in the goal's order."""
    objects, fixtures = env.object_names()
    names = objects + fixtures
    sites = env.raw.env.object_sites_dict
    first: list[Any] = []
    then: list[Any] = []
    for predicate in env.goal:
        op, args = predicate[0].lower(), predicate[1:]
        text = " ".join(predicate)
        if op == "in" and len(args) == 2 and args[0] in objects and args[1] in sites:
            if list(getattr(sites[args[1]], "joints", []) or []):
                raise NotImplementedError(f"no scripted skill for drawers ({predicate})")
            place = Placement("in", args[1], _owner(names, args[1]))
            then.append(lambda sc, o=args[0], p=place, t=text: PickPlace(sc, o, p, t))
        elif op == "on" and len(args) == 2 and args[0] in objects and args[1] in objects:
            place = Placement("on_object", args[1])
            then.append(lambda sc, o=args[0], p=place, t=text: PickPlace(sc, o, p, t))
        elif op == "on" and len(args) == 2 and args[0] in objects and args[1] in sites:
            # Also plates ("push the plate to ..."): taken by the rim and put down there.
            place = Placement("on_region", args[1], _owner(names, args[1]))
            then.append(lambda sc, o=args[0], p=place, t=text: PickPlace(sc, o, p, t))
        elif op == "turnon" and len(args) == 1 and args[0] in fixtures:
            first.append(lambda sc, f=args[0], t=text: TurnKnob(sc, f, t))
        else:
            raise NotImplementedError(f"no scripted skill for goal predicate {predicate}")
    return first + then, bool(first)


def check_supported(suite: str, task_id: int, task_name: str = "") -> None:
    """NotImplementedError naming the task and the supported ones, if it is not supported."""
    if not is_supported(suite, task_id):
        supported = ", ".join(str(i) for i in SUPPORTED.get(suite, ())) or "none"
        label = f"{suite} task {task_id}" + (f" ({task_name})" if task_name else "")
        raise NotImplementedError(
            f"no scripted expert for {label}; supported {suite} tasks: {supported}"
        )


def is_supported(suite: str, task_id: int) -> bool:
    return task_id in SUPPORTED.get(suite, ())


def make_expert(env: Any, strict: bool = True) -> Expert:
    """The scripted expert for ``env``'s task.

    strict: raise NotImplementedError for tasks not in ``SUPPORTED`` (measured below 95 % or
    never measured); False tries any task whose goal predicates all have a skill.
    """
    name = f"{env.suite} task {env.task_id} ({env.task_name})"
    if strict:
        check_supported(env.suite, env.task_id, env.task_name)
    try:
        plan, articulated = _plan(env)
    except NotImplementedError as err:
        raise NotImplementedError(f"no scripted expert for {name}: {err}") from None
    cls = ArticulationExpert if articulated else PickPlaceExpert
    return cls(env, plan)
