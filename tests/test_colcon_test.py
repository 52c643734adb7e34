"""`colcon test`: every ROS package's own tests (its test/ folder: a ruff lint in each package,
the contract and command checks of lawm_core) run through colcon and pass, as `make colcon-test`
and the ROS image run them.

The workspace is built into temporary build, install and result folders, with copies rather
than symlinks as the image builds it; ros2_ws/install, which the node tests run from, is left
alone. The checks of the check: the lint helper reports an unused import and a badly formatted
file, and a package whose lint fails makes `colcon test-result` fail, naming the problem.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from lawm_apps.harness import ROOT

SRC = ROOT / "ros2_ws" / "src"
PACKAGES = sorted(p.parent.name for p in SRC.glob("*/package.xml"))
COLCON = Path(sys.executable).parent / "colcon"
# A package's own checks that must run (not merely be collected) under colcon.
REQUIRED_TESTS = {
    "lawm_core": {
        "test_policy_sidecar_round_trip",
        "test_a_damaged_policy_json_is_refused_by_field",
        "test_raw_actions_become_commands_in_the_declared_units",
        "test_the_gripper_switch_sends_changes_only",
    },
}

pytestmark = pytest.mark.slow


def _lint_file(package: str) -> Path:
    return SRC / package / "test" / f"test_{package}_lint.py"


def _colcon_env() -> dict[str, str]:
    """The environment `scripts/setup.sh` builds in: the venv's tools first, and nothing of
    ros2_ws/install (which scripts/env.sh overlays) on the paths."""
    env = dict(os.environ)
    for name in ("AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH", "PYTHONPATH", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    env["PATH"] = f"{COLCON.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _colcon(base: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COLCON), "--log-base", str(base / "log"), *args],
        cwd=base,
        env=_colcon_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _build_and_test(base: Path, *source_folders: Path) -> subprocess.CompletedProcess:
    """colcon build, test and test-result of the packages under ``source_folders`` into
    ``base``; returns test-result's outcome (its exit status is 1 when a test failed)."""
    paths = ["--base-paths", *map(str, source_folders)]
    folders = ["--build-base", str(base / "build"), "--install-base", str(base / "install")]
    build = _colcon(base, "build", *paths, *folders, "--event-handlers", "console_cohesion+")
    assert build.returncode == 0, build.stdout + build.stderr
    test = _colcon(
        base,
        "test",
        *paths,
        *folders,
        "--test-result-base",
        str(base / "results"),
        "--event-handlers",
        "console_direct+",
    )
    assert test.returncode == 0, test.stdout + test.stderr
    return _colcon(base, "test-result", "--test-result-base", str(base / "results"), "--verbose")


def _junit(path: Path) -> tuple[dict[str, int], set[str]]:
    """(totals of tests, failures, errors, skipped; test function names) of a pytest JUnit
    file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {
        key: sum(int(s.get(key, 0)) for s in suites)
        for key in ("tests", "failures", "errors", "skipped")
    }
    # Test functions, without the parameters of parametrized ones.
    return totals, {case.get("name").split("[")[0] for case in root.iter("testcase")}


@pytest.fixture(scope="module")
def workspace_tests(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    assert COLCON.is_file(), f"{COLCON} is missing: run `make setup`"
    base = tmp_path_factory.mktemp("colcon")
    return base, _build_and_test(base, SRC)


def test_colcon_test_runs_and_passes_every_package(workspace_tests):
    base, result = workspace_tests
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    summary = re.search(
        r"Summary: (\d+) tests, (\d+) errors, (\d+) failures, (\d+) skipped", report
    )
    assert summary, report
    tests, errors, failures, skipped = map(int, summary.groups())
    assert tests > 0 and errors == failures == skipped == 0, report
    for package in PACKAGES:
        # pytest's own result file: colcon ran pytest (not its unittest fallback) on test/.
        totals, names = _junit(base / "results" / package / "pytest.xml")
        assert totals["tests"] > 0, (package, totals)
        assert totals["failures"] == totals["errors"] == 0, (package, totals, report)
        # ruff is installed here (requirements/lock.txt): no lint test may have skipped.
        assert totals["skipped"] == 0, (package, totals, report)
        assert "test_ruff_finds_nothing_in_the_package" in names, (package, names)
        assert REQUIRED_TESTS.get(package, set()) <= names, (package, names)
    # Installed into the temporary base, as copies (the image's layout), executables included.
    (contract,) = (base / "install" / "lawm_core").rglob("contract.py")
    assert contract.is_file() and not contract.is_symlink()
    assert (base / "install" / "lawm_policy" / "lib" / "lawm_policy" / "policy_node").is_file()


def test_every_package_declares_its_tests():
    for package in PACKAGES:
        root = ET.parse(SRC / package / "package.xml").getroot()
        assert "python3-pytest" in {e.text.strip() for e in root.iter("test_depend")}, package
        assert _lint_file(package).is_file(), package


def test_the_lint_test_is_one_file_in_every_package():
    # One lint test, copied: a fix to one copy must reach all of them.
    first = _lint_file(PACKAGES[0]).read_bytes()
    differ = [p for p in PACKAGES if _lint_file(p).read_bytes() != first]
    assert not differ, f"test/test_<package>_lint.py differs from {PACKAGES[0]}'s in {differ}"


def _load_lint(package: str) -> ModuleType:
    path = _lint_file(package)
    spec = importlib.util.spec_from_file_location(f"_lint_of_{package}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("package", PACKAGES)
def test_the_lint_helper_reports_problems(package, tmp_path):
    lint = _load_lint(package)
    assert lint.PACKAGE_DIR == SRC / package
    assert lint.ruff_command() is not None, "ruff is not installed: run `make setup`"
    settings = lint.ruff_settings(lint.PACKAGE_DIR)
    assert settings == ROOT / "pyproject.toml"
    clean = tmp_path / "clean.py"
    clean.write_text('"""Clean."""\n\nimport os\n\nprint(os.sep)\n')
    assert lint.ruff_problems([clean], settings) == ""
    unused = tmp_path / "unused.py"
    unused.write_text('"""An unused import."""\n\nimport os\n')
    assert "F401" in lint.ruff_problems([unused], settings)
    unformatted = tmp_path / "unformatted.py"
    unformatted.write_text('"""Badly formatted."""\n\nx = {  "a":1 }\n')
    report = lint.ruff_problems([unformatted], settings)
    assert "ruff format" in report and "check" not in report.splitlines()[0], report


def test_a_lint_failure_fails_colcon_test_and_a_missing_setting_skips(tmp_path):
    """Through colcon, in copies: a package with an unused import under the repository's ruff
    settings fails `colcon test-result`; a package with no ruff settings above it skips its
    lint test, saying why."""
    linted, unlinted = tmp_path / "linted", tmp_path / "unlinted"
    linted.mkdir()
    shutil.copy(ROOT / "pyproject.toml", linted / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(SRC / "lawm_sim", linted / "lawm_sim", ignore=ignore)
    (linted / "lawm_sim" / "lawm_sim" / "broken.py").write_text('"""Bad."""\n\nimport os\n')
    shutil.copytree(SRC / "lawm_bringup", unlinted / "lawm_bringup", ignore=ignore)
    base = tmp_path / "colcon"
    base.mkdir()
    result = _build_and_test(base, linted, unlinted)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "lawm_sim/broken.py" in report and "F401" in report, report
    totals, _ = _junit(base / "results" / "lawm_sim" / "pytest.xml")
    assert totals["failures"] == 1, totals
    totals, _ = _junit(base / "results" / "lawm_bringup" / "pytest.xml")
    assert totals["skipped"] == 1 and totals["failures"] == 0, totals
    skipped = ET.parse(base / "results" / "lawm_bringup" / "pytest.xml").getroot()
    reason = next(skipped.iter("skipped")).get("message")
    assert "no ruff settings above" in reason and "not linted" in reason, reason


def test_the_root_pytest_run_leaves_package_tests_to_colcon(pytestconfig):
    # `pytest` at the root collects tests/ only; each package's test/ runs under colcon, once.
    assert pytestconfig.rootpath == ROOT
    assert pytestconfig.getini("testpaths") == ["tests"]
    # The package tests' file names differ, so one pytest run may also collect them together.
    names = [p.name for p in SRC.glob("*/test/test_*.py")]
    assert len(names) == len(set(names)) >= len(PACKAGES), names
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", str(SRC)],
        cwd=ROOT,
        env=_colcon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
