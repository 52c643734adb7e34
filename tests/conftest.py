"""Shared pytest fixtures.

ROS isolation: each test session gets its own ``ROS_DOMAIN_ID`` and localhost-only discovery,
set before anything imports rclpy, so parallel sessions on one machine never see each other.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

from lawm_apps.harness import NodeProcess


def _pick_domain_id() -> int:
    # Fast DDS maps a domain to UDP ports 7400 + 250 * id (+ offsets); ids 1..100 stay below
    # the ephemeral port range. Seed from the pid so two concurrent sessions differ.
    return random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little")).randint(1, 100)


# OpenVINO runs in the test processes' children only (nodes, and the subprocess of
# tests/core/test_backends.py that checks its backends): loaded into the long pytest process,
# whose later fork()s of subprocesses it crashed (SIGSEGV in test_language's subprocess
# test, 260 tests after it was first loaded). In here it is reported not installed.
sys.modules["openvino"] = None  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread per process: tests start several processes (nodes, trainers, DDP
    # ranks) on a 2-core machine, and OpenMP pools that oversubscribe the cores slow torch
    # down by orders of magnitude. Benchmarks, not tests, measure multi-threaded speed.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("LAWM_TEST_DOMAIN_ID", str(_pick_domain_id()))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_STATIC_PEERS", None)
    log_root = Path(tempfile.mkdtemp(prefix="lawm-ros-"))
    os.environ["ROS_HOME"] = str(log_root)
    os.environ["ROS_LOG_DIR"] = str(log_root / "log")
    os.environ.setdefault("HOME", str(log_root))


def pytest_report_header(config: pytest.Config) -> str:
    return f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} (discovery: localhost only)"


@pytest.fixture
def ros_node(request):
    """A node in the test process, in its own rclpy context (spin it with the harness waits)."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    name = "test_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50]
    node = rclpy.create_node(name, context=context)
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)  # lawm_apps.harness.wait_* spin node.executor
    try:
        yield node
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


@pytest.fixture
def start_node(tmp_path):
    """Factory: ``start_node(package, executable, params_file=..., params={...})``.

    Every process started through it is stopped (SIGINT, then SIGKILL) when the test ends.
    """
    started: list[NodeProcess] = []

    def _start(package: str, name: str, **kwargs) -> NodeProcess:
        proc = NodeProcess(package, name, log_dir=tmp_path / "logs", **kwargs).start()
        started.append(proc)
        return proc

    yield _start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="session")
def exported_debug_model(tmp_path_factory):
    """A really exported debug-preset policy (untrained weights) with its text encoder.

    Action statistics of +-2 make denormalisation visible in the node's ~/action.
    """
    import numpy as np
    import torch

    from lawm.checkpoint import save_policy
    from lawm.config import preset
    from lawm.export import export_policy
    from lawm.models.policy import Policy

    root = tmp_path_factory.mktemp("exported_model")
    cfg = preset("debug")
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    policy.set_stats({"action_min": np.full(7, -2.0), "action_max": np.full(7, 2.0)})
    save_policy(root / "policy", policy, cfg, {"stage": "test"})
    export_policy(root / "policy", root / "export", action_space="osc_pose_delta")
    return root / "export"


@pytest.fixture(scope="session")
def exported_low_precision_model(tmp_path_factory):
    """A debug-preset policy (untrained weights, action statistics +-2) exported with training
    data (LIBERO HDF5 written here): policy.onnx, reference.npz, policy.int8.onnx,
    calibration.json, and the text encoder. Returns (export dir, data file)."""
    import warnings

    import numpy as np
    import torch

    from lawm.checkpoint import save_policy
    from lawm.config import preset
    from lawm.data import Hdf5Options, open_sources
    from lawm.export import export_policy
    from lawm.models.policy import Policy
    from tests.training.datafiles import write_libero

    root = tmp_path_factory.mktemp("low_precision_model")
    data = root / "demos.hdf5"
    write_libero(data, lengths=(70, 60, 50), size=(60, 80), seed=3)
    cfg = preset("debug")
    torch.manual_seed(0)
    policy = Policy(cfg.policy)
    policy.set_stats({"action_min": np.full(7, -2.0), "action_max": np.full(7, 2.0)})
    save_policy(root / "policy", policy, cfg, {"stage": "test"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(
            root / "policy",
            root / "export",
            action_space="osc_pose_delta",
            data=open_sources(data, "hdf5", labelled=False, options=Hdf5Options()),
            say=lambda line: None,
        )
    return root / "export", data


@pytest.fixture(autouse=True)
def _ordinary_scheduling(request):
    """Keep the test process on ordinary (time-shared) scheduling. SVT-AV1 (the AV1 encoder
    PyAV opens for LeRobot videos) moves the thread that opens it to SCHED_FIFO 99 when run as
    root; the tests' own LeRobot files are encoded so, as lerobot's writer encodes them, and
    every node the pytest process starts afterwards would inherit it: on a two-core machine
    two such nodes starve the rest. After each test the main thread is put back and the test
    that changed it is named (our own writer puts it back itself)."""
    yield
    if not hasattr(os, "sched_getscheduler"):
        return
    policy = os.sched_getscheduler(0)
    if policy != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        sys.stderr.write(
            f"\n{request.node.nodeid} left the test process on scheduling policy {policy}; "
            "put back to SCHED_OTHER\n"
        )
