"""LIBERO and robomimic HDF5 demonstrations.

Both projects write robosuite demonstrations in the same group structure (``data/demo_N`` with
``actions`` (T, 7) OSC_POSE deltas and an ``obs`` group), under different observation keys:

=================  ==========================  =================================
                   LIBERO                      robomimic (image datasets)
=================  ==========================  =================================
front camera       obs/agentview_rgb           obs/agentview_image
wrist camera       obs/eye_in_hand_rgb         obs/robot0_eye_in_hand_image
end effector       obs/ee_pos (T, 3) or        obs/robot0_eef_pos (T, 3)
                   obs/ee_states (first 3)
fingers            obs/gripper_states (T, 2)   obs/robot0_gripper_qpos (T, 2)
instruction        data.attrs["problem_info"]  none: given by the user
                   JSON "language_instruction"
splits             none                        mask/train, mask/valid (demo names
                                               as byte strings), other filter keys
=================  ==========================  =================================

The layout is read from each file's keys. ``data.attrs["env_args"]`` (JSON, written by both)
gives the control rate (``env_kwargs.control_freq``) and the controller; a demo's
``language_instruction`` attribute overrides the file's instruction for that demo.

Image orientation. robosuite renders with OpenGL, whose image origin is the bottom-left corner:
with its default ``macros.IMAGE_CONVENTION = "opengl"`` every camera observation is upside
down. The two projects store them differently:

- LIBERO's ``create_dataset.py`` stores robosuite's observations as they come and records the
  convention in ``data.attrs["macros_image_convention"]``; the released files were made with the
  default, so a LIBERO file without the attribute is upside down ("opengl").
- robomimic's ``dataset_states_to_obs.py`` (which makes its image datasets, including those of
  the v1.5 release, from the raw ``demo_v15.hdf5`` states) reads observations through
  ``EnvRobosuite.get_observation``, which flips every RGB observation vertically before it is
  written, and records no convention. With robosuite's default that flip undoes OpenGL's, so a
  robomimic file without the attribute holds upright images ("opencv").

The attribute, when present, wins; ``Hdf5Options.image_convention`` (``--image-convention``)
overrides both for files made otherwise (e.g. robomimic run with robosuite set to "opencv",
which stores them upside down).

A folder is read as every .hdf5/.h5 file in it; a folder without any, whose subfolders hold
them, as a dataset root of suite folders (the LIBERO release: ``libero_object/``,
``libero_spatial/``, ... each with ``*_demo.hdf5``), optionally restricted to some suites.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lawm.data.base import (
    HDF5_SUFFIXES,
    DataError,
    EpisodeSource,
    HandleCache,
    natural_key,
    skip_or_raise,
)
from lawm_core import contract

IMAGE_CONVENTIONS = ("opengl", "opencv")
# robosuite's control frequency, the rate of both projects' released demonstrations.
DEFAULT_CONTROL_RATE_HZ = 20.0
ALL_DEMOS = "all"  # Hdf5Options.split: every demo, whatever the file's filter keys


@dataclass(frozen=True)
class Hdf5Options:
    """How HDF5 demonstrations are opened.

    successful_only: skip demos whose ``success`` attribute is false (demos without one are
        kept).
    instruction: the instruction of files that carry none (robomimic); a file or demo with its
        own keeps it. Required for robomimic files.
    split: which demos of a file with filter keys (robomimic's ``mask/<name>``): None takes
        ``mask/train`` where the file has it and every demo otherwise; "all" every demo; any
        other name ("train", "valid", robomimic's "better_train", ...) that filter key, which
        the file must have ("validation" also finds "valid").
    image_convention: "opengl" (stored upside down) or "opencv" (upright) for every file,
        instead of the file's attribute or its layout's default.
    suites: for a dataset root of suite folders (the LIBERO release), only these suite folders
        (e.g. ``("libero_object",)``); empty for all.
    """

    successful_only: bool = True
    instruction: str | None = None
    split: str | None = None
    image_convention: str | None = None
    suites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.image_convention not in (None, *IMAGE_CONVENTIONS):
            raise DataError(
                f"image convention {self.image_convention!r}: expected one of "
                f"{', '.join(IMAGE_CONVENTIONS)}"
            )
        if isinstance(self.suites, str):
            object.__setattr__(self, "suites", (self.suites,))
        else:
            object.__setattr__(self, "suites", tuple(self.suites))
        if self.instruction is not None and not self.instruction.strip():
            raise DataError("the instruction is empty; pass the task's words")


@dataclass(frozen=True)
class _Layout:
    """The observation keys of one project's files."""

    name: str
    images: dict[str, str]  # camera -> obs key
    positions: tuple[str, ...]  # end-effector keys, first found wins (first 3 columns)
    gripper: str
    convention: str  # when the file does not say (see the module docstring)


LIBERO = _Layout(
    "LIBERO", dict(contract.HDF5_IMAGE_KEYS), ("ee_pos", "ee_states"), "gripper_states", "opengl"
)
ROBOMIMIC = _Layout(
    "robomimic",
    {contract.AGENTVIEW: "agentview_image", contract.EYE_IN_HAND: "robot0_eye_in_hand_image"},
    ("robot0_eef_pos",),
    "robot0_gripper_qpos",
    "opencv",
)
LAYOUTS = (LIBERO, ROBOMIMIC)


def _open_h5(path: str):
    return h5py.File(path, "r")


_FILES = HandleCache(_open_h5, lambda f: f.close(), capacity=64)


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def instruction_from_filename(path: str | Path) -> str:
    """LIBERO names files ``[SCENE_PREFIX_]the_task_words_demo.hdf5``; recover the words."""
    stem = Path(path).stem
    stem = re.sub(r"_demo$", "", stem)
    words = stem.split("_")
    # Scene prefixes are all capitals (KITCHEN_SCENE3_, LIVING_ROOM_SCENE2_); task words never.
    while words and words[0].upper() == words[0] and any(ch.isalpha() for ch in words[0]):
        words.pop(0)
    return " ".join(w for w in words if w)


class Hdf5Episode(EpisodeSource):
    """One ``data/demo_N`` group of a LIBERO or robomimic file.

    ``control_rate_hz``: the rate the demo was recorded at (robosuite's control frequency);
    ``layout``: "LIBERO" or "robomimic".
    """

    def __init__(
        self,
        path: str,
        demo: str,
        length: int,
        instruction: str,
        image_keys: dict[str, str],
        has_actions: bool,
        proprio_keys: tuple[str, str] | None,
        flip: bool,
        success: bool | None,
        action_space: str | None = contract.ACTION_OSC_POSE_DELTA,
        control_rate_hz: float = DEFAULT_CONTROL_RATE_HZ,
        layout: str = LIBERO.name,
    ) -> None:
        self.path = path
        self.demo = demo
        self.name = f"{path}:{demo}"
        self.length = length
        self.instruction = instruction
        self.cameras = tuple(c for c in contract.CAMERAS if c in image_keys)
        self._image_keys = dict(image_keys)
        self.has_actions = has_actions
        self.has_proprio = proprio_keys is not None
        self._proprio_keys = proprio_keys  # (end-effector key, finger key)
        self._flip = flip
        self.success = success
        self.action_space = action_space
        self.control_rate_hz = float(control_rate_hz)
        # robosuite's gripper action: -1 open, +1 closed, whatever the arm controller.
        self.gripper_convention = contract.GRIPPER_SIGN
        self.layout = layout

    def _read(
        self, start: int, stop: int, cameras: tuple[str, ...], actions: bool, proprio: bool
    ) -> dict[str, Any]:
        try:
            group = _FILES.get(self.path)["data"][self.demo]
            obs = group["obs"]
            images = {}
            for cam in cameras:
                frames = obs[self._image_keys[cam]][start:stop]
                if self._flip:
                    frames = np.ascontiguousarray(frames[:, ::-1])
                images[cam] = frames
            out: dict[str, Any] = {"images": images, "actions": None, "proprio": None}
            if actions:
                out["actions"] = np.asarray(group["actions"][start:stop], dtype=np.float32)
            if proprio:
                assert self._proprio_keys is not None
                pos_key, grip_key = self._proprio_keys
                pos = obs[pos_key][start:stop, : contract.EE_POS_DIM]
                grip = obs[grip_key][start:stop]
                out["proprio"] = np.concatenate([pos, grip], axis=1).astype(np.float32)
        except (OSError, KeyError, ValueError) as err:
            _FILES.drop(self.path)
            raise DataError(f"{self.name}: reading frames [{start}, {stop}): {err}") from err
        return out


def _check_shape(name: str, ds: Any, length: int | None, tail: tuple[int | None, ...]) -> int:
    """Validate ``ds.shape == (length, *tail)`` (None: any); returns its length."""
    shape = tuple(ds.shape)
    ok = len(shape) == 1 + len(tail) and all(
        want is None or got == want for got, want in zip(shape[1:], tail)
    )
    if not ok:
        want = ("T", *("*" if t is None else t for t in tail))
        raise DataError(f"{name}: shape {shape}, expected {want}")
    if length is not None and shape[0] != length:
        raise DataError(f"{name}: {shape[0]} rows, but the episode has {length} frames")
    return shape[0]


# -- what a file says about itself ------------------------------------------------------------
@dataclass(frozen=True)
class _FileInfo:
    layout: _Layout
    instruction: str | None  # the file's own (problem_info), None when it has none
    flip: bool
    control_rate_hz: float
    action_space: str | None


def _layout_of(path: str, obs: Any) -> _Layout:
    keys = set(obs.keys())
    for layout in LAYOUTS:
        if keys & set(layout.images.values()):
            return layout
    if "robot0_eef_pos" in keys:
        raise DataError(
            f"{path}: a robomimic file without camera observations (a low_dim dataset?); "
            "use its image dataset (robomimic's dataset_states_to_obs.py --camera_names "
            "agentview robot0_eye_in_hand)"
        )
    expected = [f"obs/{k}" for layout in LAYOUTS for k in layout.images.values()]
    raise DataError(
        f"{path}: missing camera key: none of {expected} present (obs has {sorted(keys)})"
    )


def _env_args(path: str, data: Any) -> dict[str, Any]:
    if "env_args" not in data.attrs:
        return {}
    try:
        args = json.loads(_attr_str(data.attrs["env_args"]))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: data.attrs['env_args'] is not JSON: {err}") from err
    return args if isinstance(args, dict) else {}


def _controller(env_kwargs: dict[str, Any]) -> tuple[str | None, bool | None]:
    """(arm controller type, control_delta) from robosuite's env kwargs, None when unsaid.

    robosuite 1.4 writes ``controller_configs = {"type": "OSC_POSE", "control_delta": ...}``;
    1.5 a composite controller whose ``body_parts`` hold the arm's ("right", then "left").
    """
    cfg = env_kwargs.get("controller_configs")
    if not isinstance(cfg, dict):
        return None, None
    parts = cfg.get("body_parts")
    if isinstance(parts, dict):
        arm = next((parts[k] for k in ("right", "left") if isinstance(parts.get(k), dict)), None)
        cfg = arm if arm is not None else cfg
    kind = cfg.get("type")
    delta = cfg.get("control_delta")
    return (str(kind) if kind is not None else None), (bool(delta) if delta is not None else None)


def _file_info(path: str, data: Any, first_demo: str, options: Hdf5Options) -> _FileInfo:
    group = data[first_demo]
    if "obs" not in group:
        raise DataError(f"{path}:data/{first_demo}: missing key 'obs'")
    layout = _layout_of(f"{path}:data/{first_demo}", group["obs"])
    instruction = None
    if "problem_info" in data.attrs:
        try:
            info = json.loads(_attr_str(data.attrs["problem_info"]))
            if info.get("language_instruction"):
                instruction = str(info["language_instruction"])
        except (json.JSONDecodeError, AttributeError) as err:
            raise DataError(f"{path}: data.attrs['problem_info'] is not JSON: {err}") from err
    convention = options.image_convention
    if convention is None:
        convention = _attr_str(data.attrs.get("macros_image_convention", layout.convention))
        convention = convention.lower()
        if convention not in IMAGE_CONVENTIONS:
            raise DataError(
                f"{path}: macros_image_convention {convention!r}, expected opengl or opencv; "
                "pass --image-convention opengl|opencv"
            )
    env_kwargs = _env_args(path, data).get("env_kwargs") or {}
    rate = DEFAULT_CONTROL_RATE_HZ
    if isinstance(env_kwargs, dict) and env_kwargs.get("control_freq"):
        rate = float(env_kwargs["control_freq"])
    action_space: str | None = contract.ACTION_OSC_POSE_DELTA
    kind, delta = _controller(env_kwargs if isinstance(env_kwargs, dict) else {})
    if (kind is not None and kind != "OSC_POSE") or delta is False:
        action_space = None
        warnings.warn(
            f"{path}: controller {kind} (control_delta={delta}) in data.attrs['env_args']: "
            "the actions are not OSC_POSE deltas; export needs --action-space",
            stacklevel=3,
        )
    return _FileInfo(layout, instruction, convention == "opengl", rate, action_space)


def _episode(
    path: str, f: Any, demo: str, info: _FileInfo, instruction: str, labelled: bool
) -> Hdf5Episode:
    where = f"{path}:data/{demo}"
    group = f["data"][demo]
    if "obs" not in group:
        raise DataError(f"{where}: missing key 'obs'")
    obs = group["obs"]
    layout = info.layout
    image_keys = {c: k for c, k in layout.images.items() if k in obs}
    if not image_keys:
        expected = [f"obs/{k}" for k in layout.images.values()]
        raise DataError(
            f"{where}: missing camera key: none of {expected} present "
            f"(obs has {sorted(obs.keys())})"
        )
    length = None
    for key in image_keys.values():
        ds = obs[key]
        if ds.dtype != np.uint8:
            raise DataError(f"{where}/obs/{key}: dtype {ds.dtype}, expected uint8")
        length = _check_shape(f"{where}/obs/{key}", ds, length, (None, None, 3))
    assert length is not None
    if length == 0:
        raise DataError(f"{where}: zero-length episode (no frames)")
    if "num_samples" in group.attrs and int(group.attrs["num_samples"]) != length:
        raise DataError(
            f"{where}: attrs['num_samples'] is {int(group.attrs['num_samples'])}, but the "
            f"camera observations have {length} frames"
        )
    has_actions = False
    if labelled:
        if "actions" not in group:
            raise DataError(f"{where}: missing key 'actions' (open with labelled=False for video)")
        _check_shape(f"{where}/actions", group["actions"], length, (contract.ACTION_DIM,))
        has_actions = True
    proprio_keys = None
    pos_key = next((k for k in layout.positions if k in obs), None)
    if pos_key is not None and layout.gripper in obs:
        pos = obs[pos_key]
        if pos.ndim != 2 or pos.shape[1] < contract.EE_POS_DIM:
            raise DataError(f"{where}/obs/{pos_key}: shape {pos.shape}, expected (T, >=3)")
        _check_shape(f"{where}/obs/{pos_key}", pos, length, (pos.shape[1],))
        _check_shape(
            f"{where}/obs/{layout.gripper}",
            obs[layout.gripper],
            length,
            (contract.GRIPPER_STATE_DIM,),
        )
        proprio_keys = (pos_key, layout.gripper)
    if "language_instruction" in group.attrs:
        instruction = _attr_str(group.attrs["language_instruction"])
    success = bool(group.attrs["success"]) if "success" in group.attrs else None
    return Hdf5Episode(
        path,
        demo,
        length,
        instruction,
        image_keys,
        has_actions,
        proprio_keys,
        info.flip,
        success,
        action_space=info.action_space,
        control_rate_hz=info.control_rate_hz,
        layout=layout.name,
    )


def _split_demos(path: str, f: Any, demos: list[str], split: str | None) -> list[str]:
    """The demos of ``split`` (see ``Hdf5Options.split``), in natural order."""
    if split == ALL_DEMOS:
        return demos
    masks = f["mask"] if "mask" in f and isinstance(f["mask"], h5py.Group) else None
    names = sorted(masks.keys()) if masks is not None else []
    key = split or "train"
    if key not in names and key == "validation" and "valid" in names:
        key = "valid"
    if key not in names:
        if split is None:
            return demos  # no filter keys (LIBERO, or a robomimic file never split)
        have = f"its filter keys are {names}" if names else "it has no mask/ group"
        raise DataError(
            f"{path}: no mask/{split} ({have}); pass --split with one of them, or "
            f"--split {ALL_DEMOS} for every demo"
        )
    wanted = [_attr_str(v) for v in np.asarray(masks[key][()]).reshape(-1)]
    if not wanted:
        raise DataError(f"{path}: mask/{key} lists no demos; pass another --split")
    missing = sorted(set(wanted) - set(demos), key=natural_key)
    if missing:
        raise DataError(f"{path}: mask/{key} names demos not in data/: {missing[:5]}")
    chosen = set(wanted)
    return [d for d in demos if d in chosen]


def open_hdf5_file(
    path: str | Path,
    labelled: bool = True,
    successful_only: bool = True,
    options: Hdf5Options | None = None,
) -> list[Hdf5Episode]:
    """The demos of one file, in natural order (demo_2 before demo_10)."""
    options = options or Hdf5Options(successful_only=successful_only)
    path = str(Path(path).resolve())
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise DataError(f"{path}: missing key 'data' (not a LIBERO/robomimic file?)")
            data = f["data"]
            demos = sorted((k for k in data.keys() if k.startswith("demo")), key=natural_key)
            if not demos:
                raise DataError(f"{path}: no data/demo_* groups")
            demos = _split_demos(path, f, demos, options.split)
            info = _file_info(path, data, demos[0], options)
            instruction = info.instruction or options.instruction
            own = all("language_instruction" in data[d].attrs for d in demos)
            if instruction is None and not own:
                if info.layout is ROBOMIMIC:
                    env = _env_args(path, data).get("env_name", "?")
                    raise DataError(
                        f"{path}: robomimic files carry no language instruction (env "
                        f"{env}); pass --instruction with the task's words, e.g. "
                        '--instruction "lift the cube"'
                    )
                instruction = instruction_from_filename(path)
            instruction = instruction or ""  # every demo has its own
            if info.instruction and options.instruction not in (None, info.instruction):
                warnings.warn(
                    f"{path}: the file's own instruction {info.instruction!r} is used; "
                    "--instruction applies to files without one (robomimic)",
                    stacklevel=2,
                )
            episodes = [_episode(path, f, d, info, instruction, labelled) for d in demos]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise DataError(f"{path}: cannot read HDF5 file (corrupt or truncated?): {err}") from err
    # A camera present in some demos but not others means a broken conversion, not a choice.
    all_cams = {c for e in episodes for c in e.cameras}
    for e in episodes:
        missing = sorted(all_cams - set(e.cameras))
        if missing:
            keys_missing = [f"obs/{info.layout.images[c]}" for c in missing]
            raise DataError(f"{e.name}: missing camera key {keys_missing} present in other demos")
    if options.successful_only:
        episodes = [e for e in episodes if e.success is not False]
    return episodes


def _hdf5_files(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in HDF5_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: natural_key(p.name),
    )


def find_suite_folders(root: str | Path) -> list[Path]:
    """Subfolders of ``root`` holding .hdf5/.h5 files (the LIBERO release's suites), in
    natural order; empty when there are none."""
    root = Path(root)
    try:
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted((p for p in subdirs if _hdf5_files(p)), key=lambda p: natural_key(p.name))


def hdf5_files(path: str | Path, suites: tuple[str, ...] = ()) -> list[Path]:
    """The files ``path`` stands for: itself, the files in a folder, or the files of the
    (selected) suite folders of a dataset root."""
    path = Path(path)
    if not path.is_dir():
        if suites:
            raise DataError(
                f"{path}: --suite selects suite folders of a dataset root (the LIBERO "
                "release folder holding libero_object/, ...), not a file"
            )
        return [path]
    files = _hdf5_files(path)
    if files:
        if suites:
            raise DataError(
                f"{path}: --suite selects suite folders of a dataset root, but this folder "
                "holds the .hdf5 files itself; pass its parent, or drop --suite"
            )
        return files
    folders = find_suite_folders(path)
    if not folders:
        raise DataError(f"{path}: no .hdf5/.h5 files in the folder or its subfolders")
    if suites:
        by_name = {p.name: p for p in folders}
        unknown = [s for s in suites if s not in by_name]
        if unknown:
            raise DataError(f"{path}: no suite folder {unknown}; its suites are {sorted(by_name)}")
        folders = [by_name[s] for s in suites]
    return [f for folder in folders for f in _hdf5_files(folder)]


def open_hdf5(
    path: str | Path, labelled: bool = True, options: Hdf5Options | None = None
) -> list[Hdf5Episode]:
    """A file, every .hdf5/.h5 file in a folder, or those of a dataset root's suite folders
    (natural order)."""
    options = Hdf5Options() if options is None else options
    episodes: list[Hdf5Episode] = []
    for file in hdf5_files(path, options.suites):
        try:
            found = open_hdf5_file(file, labelled=labelled, options=options)
        except (DataError, OSError) as err:
            skip_or_raise(err, str(file))
            continue
        if not found:
            warnings.warn(f"{file}: every demo is marked unsuccessful; none used", stacklevel=2)
        episodes += found
    return episodes
