"""The ROS packages' package.xml files against their sources.

Every module a package imports from outside itself and the standard library (every import
statement, those inside functions included) must be an exec_depend of its package.xml, as its
rosdep key, or be named on the manifest's ``pip-only:`` comment line (modules that come from pip,
pinned by requirements/lock.txt, rather than through rosdep). The package's tests (its ``test/``
folder, run by ``colcon test``) may also use its test_depend keys. A missing dependency shows
only on a fresh install (``rosdep install`` leaves the module out); this catches it when it is
written.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET

import pytest

from lawm_apps.harness import ROOT

SRC = ROOT / "ros2_ws" / "src"
PACKAGES = sorted(p.parent.name for p in SRC.glob("*/package.xml"))
# Python module -> its rosdep key, where the names differ. A ROS package's module is its name.
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "matplotlib": "python3-matplotlib",
    "h5py": "python3-h5py",
    "tqdm": "python3-tqdm",
    "pytest": "python3-pytest",
}
TEST_DIR = "test"  # a package's tests: ``colcon test`` runs them with pytest


def manifest(package: str, *, tests: bool = False) -> tuple[set[str], set[str]]:
    """(exec_depend and depend keys, pip-only modules) of ``package``'s package.xml; with
    ``tests``, the test_depend keys are among the keys too."""
    path = SRC / package / "package.xml"
    root = ET.parse(path).getroot()
    tags = ("depend", "exec_depend", "test_depend") if tests else ("depend", "exec_depend")
    keys = {e.text.strip() for tag in tags for e in root.iter(tag)}
    pip_only = set()
    for comment in re.findall(r"<!--(.*?)-->", path.read_text(), re.S):
        for line in comment.splitlines():
            if line.strip().startswith("pip-only:"):
                pip_only |= set(line.split(":", 1)[1].split())
    return keys, pip_only


def imported_modules(package: str, *, tests: bool | None = None) -> dict[str, set[str]]:
    """Top-level module -> the files of ``package`` importing it, for modules from outside the
    package and the standard library. setup.py (a build step, setuptools) is left out.
    ``tests``: only the files of its test/ folder (True), only the others (False), all (None)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        if path.name == "setup.py":
            continue
        in_tests = path.relative_to(SRC / package).parts[0] == TEST_DIR
        if tests is not None and in_tests != tests:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != package and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(SRC)))
    return found


def test_every_ros_package_is_checked():
    assert {"lawm_core", "lawm_sim", "lawm_policy", "lawm_bringup"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_xml_covers_every_imported_module(package):
    imported = imported_modules(package)
    assert imported, f"{package}: no imports found"
    _, pip_only = manifest(package)
    for tests, kind in ((False, "an exec_depend"), (True, "an exec_depend or test_depend")):
        keys, _ = manifest(package, tests=tests)
        missing = {
            module: sorted(files)
            for module, files in imported_modules(package, tests=tests).items()
            if ROSDEP_KEYS.get(module, module) not in keys and module not in pip_only
        }
        assert not missing, (
            f"{package}/package.xml lacks {kind} (rosdep key) or a pip-only entry for {missing}"
        )
    # The pip-only line names only what the sources import: it stays a true list.
    stale = pip_only - set(imported)
    assert not stale, f"{package}/package.xml: pip-only names modules nothing imports: {stale}"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_xml_names_its_own_packages_that_exist(package):
    keys, _ = manifest(package)
    ours = {k for k in keys if k.startswith("lawm_")}
    assert ours <= set(PACKAGES), ours - set(PACKAGES)
    assert package not in keys


def test_policy_nodes_depend_on_the_core_and_sim():
    keys, _ = manifest("lawm_policy")
    assert {"lawm_core", "lawm_sim", "rclpy"} <= keys


def test_manifest_reads_pip_only_and_flags_a_missing_dependency(tmp_path, monkeypatch):
    """The check itself: an import with no dependency is reported."""
    pkg = tmp_path / "demo_pkg"
    (pkg / "demo_pkg").mkdir(parents=True)
    (pkg / "package.xml").write_text(
        '<?xml version="1.0"?>\n<package format="3"><name>demo_pkg</name>\n'
        "<exec_depend>python3-numpy</exec_depend>\n"
        "<test_depend>python3-pytest</test_depend>\n"
        "<!-- from pip.\n     pip-only: onnxruntime -->\n</package>\n"
    )
    (pkg / "demo_pkg" / "m.py").write_text(
        "import os\nimport numpy\nimport onnxruntime\n\ndef f():\n    import h5py\n"
    )
    (pkg / "test").mkdir()
    (pkg / "test" / "test_m.py").write_text("import numpy\nimport pytest\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    keys, pip_only = manifest("demo_pkg")
    assert keys == {"python3-numpy"} and pip_only == {"onnxruntime"}
    assert manifest("demo_pkg", tests=True)[0] == {"python3-numpy", "python3-pytest"}
    assert set(imported_modules("demo_pkg")) == {"numpy", "onnxruntime", "h5py", "pytest"}
    assert set(imported_modules("demo_pkg", tests=True)) == {"numpy", "pytest"}
    with pytest.raises(AssertionError, match="h5py"):
        test_package_xml_covers_every_imported_module("demo_pkg")
    # A test_depend covers the tests only: the same import outside test/ is reported.
    (pkg / "demo_pkg" / "m.py").write_text("import numpy\nimport onnxruntime\nimport pytest\n")
    with pytest.raises(AssertionError, match="lacks an exec_depend .*pytest"):
        test_package_xml_covers_every_imported_module("demo_pkg")
    (pkg / "demo_pkg" / "m.py").write_text("import numpy\nimport onnxruntime\n")
    test_package_xml_covers_every_imported_module("demo_pkg")


def test_rosdep_key_table_names_real_modules():
    # Each table entry is a module some package imports: no dead mappings.
    imported = set().union(*(imported_modules(p) for p in PACKAGES))
    assert set(ROSDEP_KEYS) <= imported, set(ROSDEP_KEYS) - imported
