"""Data files written the way third-party tools write them, for the format tests: robomimic
image datasets (h5py, robomimic's keys, ``env_args`` JSON, ``total``/``num_samples``, byte-string
``mask/<split>`` lists), the LIBERO release root (suite folders of ``*_demo.hdf5``) and
Something-Something v2 as released (``20bn-something-something-v2/<id>.webm`` with the labels
JSON files beside the video folder)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from datafiles import AV, EYE, frames_with_index, write_libero

from lawm_sim.recording import write_video

RM_IMAGE_KEYS = {AV: "agentview_image", EYE: "robot0_eye_in_hand_image"}


def upright_scene(n: int, h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    """Frames whose top half is bright (sky, walls) and bottom half dark (table), plus noise
    that identifies each frame: an upside-down copy differs everywhere."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (n, h, w, 3), dtype=np.uint8)
    frames[:, : h // 2] += 200
    return frames


def robosuite_render(upright: np.ndarray) -> np.ndarray:
    """What robosuite returns with its default ``macros.IMAGE_CONVENTION = "opengl"``: the
    image origin at the bottom-left, i.e. the frames upside down."""
    return np.ascontiguousarray(upright[:, ::-1])


def robomimic_observation(rendered: np.ndarray) -> np.ndarray:
    """robomimic's ``EnvRobosuite.get_observation``: every RGB observation flipped in height
    (what ``dataset_states_to_obs.py`` then writes)."""
    return np.ascontiguousarray(rendered[:, ::-1])


def robomimic_env_args(
    env_name: str = "Lift",
    control_freq: int = 20,
    controller: str = "OSC_POSE",
    control_delta: bool = True,
    robosuite_version: str = "1.5.1",
) -> dict:
    """``data.attrs["env_args"]`` as robomimic serialises it (``EnvRobosuite.serialize``);
    robosuite 1.5 wraps the arm controller in a composite "BASIC" controller."""
    arm = {
        "type": controller,
        "input_max": 1,
        "input_min": -1,
        "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
        "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
        "kp": 150,
        "damping_ratio": 1,
        "control_delta": control_delta,
        "gripper": {"type": "GRIP"},
    }
    if robosuite_version.startswith("1.4"):
        controllers = arm
    else:
        controllers = {"type": "BASIC", "body_parts": {"right": arm}}
    return {
        "env_name": env_name,
        "env_version": robosuite_version,
        "type": 1,
        "env_kwargs": {
            "has_renderer": False,
            "has_offscreen_renderer": True,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": True,
            "control_freq": control_freq,
            "controller_configs": controllers,
            "robots": ["Panda"],
            "camera_depths": False,
            "camera_heights": 84,
            "camera_widths": 84,
            "camera_names": ["agentview", "robot0_eye_in_hand"],
            "reward_shaping": False,
        },
    }


def write_robomimic(
    path: Path,
    lengths=(5, 4, 6),
    *,
    masks: dict[str, list[str]] | None = None,
    cameras=(AV, EYE),
    env_args: dict | None = None,
    convention: str | None = None,
    size=(16, 16),
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """A robomimic image dataset as ``dataset_states_to_obs.py`` writes it (after
    ``split_train_val.py`` when ``masks`` is given). Images are an upright scene passed through
    robosuite's OpenGL render and robomimic's observation flip. Returns per demo: the upright
    frames per camera, the stored actions and the proprio the reader should give."""
    rng = np.random.default_rng(seed)
    stored: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i, n in enumerate(lengths):
            name = f"demo_{i}"
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            g.attrs["model_file"] = "<mujoco model='base'><worldbody/></mujoco>"
            rec: dict[str, np.ndarray] = {}
            obs, next_obs = g.create_group("obs"), g.create_group("next_obs")
            for k, cam in enumerate(cameras):
                upright = upright_scene(n + 1, *size, seed=seed * 100 + i * 10 + k)
                rec[cam] = upright[:n]
                images = robomimic_observation(robosuite_render(upright))
                obs.create_dataset(RM_IMAGE_KEYS[cam], data=images[:n], compression="gzip")
                next_obs.create_dataset(RM_IMAGE_KEYS[cam], data=images[1:])
            low_dim = {
                "robot0_eef_pos": rng.normal(size=(n + 1, 3)),
                "robot0_eef_quat": rng.normal(size=(n + 1, 4)),
                "robot0_gripper_qpos": rng.normal(size=(n + 1, 2)) * 0.04,
                "robot0_joint_pos": rng.normal(size=(n + 1, 7)),
                "object": rng.normal(size=(n + 1, 10)),
            }
            for key, value in low_dim.items():
                obs.create_dataset(key, data=value[:n])
                next_obs.create_dataset(key, data=value[1:])
            rec["actions"] = rng.uniform(-1, 1, (n, 7))
            g.create_dataset("actions", data=rec["actions"])
            g.create_dataset("states", data=rng.normal(size=(n, 32)))
            g.create_dataset("rewards", data=np.zeros(n))
            g.create_dataset("dones", data=np.eye(1, n, n - 1)[0].astype(np.int64))
            rec["proprio"] = np.concatenate(
                [low_dim["robot0_eef_pos"][:n], low_dim["robot0_gripper_qpos"][:n]], 1
            ).astype(np.float32)
            stored[name] = rec
            total += n
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(env_args or robomimic_env_args(), indent=4)
        if convention is not None:
            data.attrs["macros_image_convention"] = convention
        for split, names in (masks or {}).items():
            f[f"mask/{split}"] = np.array(names, dtype="S")
    return stored


def write_libero_release(root: Path, suites: dict[str, list[str]]) -> dict[str, list[Path]]:
    """The LIBERO release root: one folder per suite, one ``<task>_demo.hdf5`` per task (no
    ``macros_image_convention``: upside down, as the released files are)."""
    files: dict[str, list[Path]] = {}
    for s, (suite, tasks) in enumerate(suites.items()):
        (root / suite).mkdir(parents=True)
        files[suite] = []
        for t, task in enumerate(tasks):
            path = root / suite / f"{task.replace(' ', '_')}_demo.hdf5"
            write_libero(
                path, lengths=(3, 2), convention=None, problem_info=False, seed=s * 10 + t
            )
            files[suite].append(path)
    return files


def write_ssv2_release(
    root: Path,
    splits: dict[str, dict[str, str | None]],
    *,
    labels_dir: str = "",
    old_names: bool = False,
) -> dict[str, np.ndarray]:
    """Something-Something v2 as released: ``root/20bn-something-something-v2/<id>.webm`` and
    the labels files in ``root/<labels_dir>`` (``labels.json``, ``train.json``,
    ``validation.json``, ``test.json``; ``something-something-v2-<split>.json`` with
    ``old_names``). ``splits``: {split: {id: template, None in the test split}}.
    Returns the frames of each clip by id."""
    videos = root / "20bn-something-something-v2"
    labels = root / labels_dir
    labels.mkdir(parents=True, exist_ok=True)
    frames: dict[str, np.ndarray] = {}
    templates: dict[str, str] = {}
    for split, clips in splits.items():
        entries = []
        for k, (clip, template) in enumerate(clips.items()):
            frames[clip] = frames_with_index(4 + k % 3)
            write_video(videos / f"{clip}.webm", frames[clip])
            if template is None:
                entries.append({"id": clip})
                continue
            templates.setdefault(template, str(len(templates)))
            words = template.replace("[", "").replace("]", "")
            entries.append(
                {
                    "id": clip,
                    "label": words.lower(),
                    "template": template,
                    "placeholders": ["something"] * template.count("["),
                }
            )
        prefix = "something-something-v2-" if old_names else ""
        (labels / f"{prefix}{split}.json").write_text(json.dumps(entries))
    prefix = "something-something-v2-" if old_names else ""
    (labels / f"{prefix}labels.json").write_text(json.dumps(templates))
    return frames
