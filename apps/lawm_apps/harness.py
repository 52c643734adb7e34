"""Run installed ROS 2 executables as processes and wait on what they do.

Used by the tests, the benchmarks and the demo (rclpy + Fast DDS on localhost).

- ``node_env()``: the environment a node process needs (venv + workspace overlay, logging dirs).
- ``NodeProcess``: start an installed executable with a params file, ``-p`` overrides and
  remappings; stop it cleanly (SIGINT, then SIGKILL) so no process outlives its caller.
- ``wait_until`` / ``wait_for_subscribers`` / ``wait_for_publishers``: spin the caller's own node
  until a condition holds. Discovery on loopback usually takes 50 ms and sometimes seconds, so
  callers wait for matched endpoints, never for a fixed time. A timeout, or a watched process
  that exits early, raises ``WaitError`` with the processes' last log lines.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WS_INSTALL = ROOT / "ros2_ws" / "install"


def executable(package: str, name: str) -> Path:
    """Path of an installed node executable; a clear error if the workspace is not built."""
    path = WS_INSTALL / package / "lib" / package / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup` to build ros2_ws")
    return path


@functools.lru_cache(maxsize=1)
def _sourced_env() -> tuple[tuple[str, str], ...]:
    """The variables `source scripts/env.sh` sets (venv, ament prefixes, workspace overlay)."""
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'scripts' / 'env.sh'} >/dev/null && env -0"],
        check=True,
        capture_output=True,
        env=dict(os.environ),
    ).stdout.decode()
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    keep = ("AMENT_PREFIX_PATH", "PYTHONPATH", "PATH", "VIRTUAL_ENV", "COLCON_PREFIX_PATH")
    return tuple((k, v) for k, v in pairs if k in keep)


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a node process: the test's own plus what scripts/env.sh sets."""
    if not (WS_INSTALL / "setup.bash").exists():
        raise FileNotFoundError(f"{WS_INSTALL}/setup.bash is missing: run `make setup`")
    env = dict(os.environ)
    env.update(dict(_sourced_env()))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    if extra:
        env.update(extra)
    return env


def _param_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_value(v) for v in value) + "]"
    if isinstance(value, str):
        # YAML-quote so "1.0" stays a string and spaces survive.
        return "'" + value.replace("'", "''") + "'"
    return str(value)


class NodeProcess:
    """An installed ROS 2 executable running in its own process group.

    Use as a context manager; output goes to ``log_path`` and is shown on failure via ``tail()``.
    """

    def __init__(
        self,
        package: str,
        name: str,
        *,
        log_dir: Path,
        params_file: Path | None = None,
        params: Mapping[str, object] | None = None,
        remaps: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cmd: list[str] = [str(executable(package, name)), *args, "--ros-args"]
        if params_file is not None:
            self.cmd += ["--params-file", str(params_file)]
        for key, value in (params or {}).items():
            self.cmd += ["-p", f"{key}:={_param_value(value)}"]
        for old, new in (remaps or {}).items():
            self.cmd += ["-r", f"{old}:={new}"]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._env = node_env(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (what Ctrl-C sends), then SIGKILL to the whole group; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WaitError(RuntimeError):
    """A condition did not hold in time, or a process it depended on exited."""


def wait_until(
    node,
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    procs: Sequence[NodeProcess] = (),
) -> None:
    """Spin ``node`` (on its executor) until ``condition()`` holds; else fail with the logs."""
    executor = node.executor
    if executor is None:
        raise RuntimeError(f"node {node.get_name()} is not added to an executor")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for p in procs:
            if not p.alive():
                raise WaitError(
                    f"{p.cmd[0]} exited with {p.proc.returncode} while waiting for {what}:\n"
                    + p.tail()
                )
        executor.spin_once(timeout_sec=0.05)
    logs = "\n".join(f"--- {p.log_path.name}\n{p.tail()}" for p in procs)
    raise WaitError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def call_service(
    node,
    client,
    request,
    timeout: float,
    what: str,
    procs: Sequence[NodeProcess] = (),
    resend_s: float = 2.0,
):
    """Call an idempotent service and return its reply, re-sending the request every
    ``resend_s`` seconds without one.

    A service's reply can be dropped while discovery is still matching its reply topic (Fast DDS
    logs "failed to send response (timeout)" on the server), although ``wait_for_service`` has
    already returned; a second request then gets through. Only for requests that may safely
    arrive twice (queries, parameter sets, resets).
    """
    deadline = time.monotonic() + timeout
    while True:
        fut = client.call_async(request)
        step = min(resend_s, deadline - time.monotonic())
        try:
            wait_until(node, fut.done, max(step, 0.0), what, procs)
            return fut.result()
        except WaitError:
            client.remove_pending_request(fut)
            if time.monotonic() + 1e-3 >= deadline or not all(p.alive() for p in procs):
                raise


def wait_for_subscribers(node, publisher, count: int = 1, timeout: float = 30.0, procs=()):
    wait_until(
        node,
        lambda: publisher.get_subscription_count() >= count,
        timeout,
        f"{count} subscriber(s) on {publisher.topic_name}",
        procs,
    )


def wait_for_publishers(node, subscription, count: int = 1, timeout: float = 30.0, procs=()):
    wait_until(
        node,
        lambda: subscription.get_publisher_count() >= count,
        timeout,
        f"{count} publisher(s) on {subscription.topic_name}",
        procs,
    )
