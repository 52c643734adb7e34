"""The layers and their one-way dependencies, checked from the source (every import, including
those inside functions, counts).

    lawm_apps     demo, CLI entry, process harness     may import everything below
    lawm_policy   ROS 2 nodes (thin shells)            lawm_core, lawm_sim, rclpy
    lawm          training (torch)                     lawm_core, lawm_sim; never rclpy
    lawm_sim      LIBERO, experts, recording           lawm_core; no torch, no rclpy
    lawm_core     contract + runtime core              nothing of ours; no torch, no rclpy
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "lawm_core": ROOT / "ros2_ws/src/lawm_core/lawm_core",
    "lawm_sim": ROOT / "ros2_ws/src/lawm_sim/lawm_sim",
    "lawm": ROOT / "training/lawm",
    "lawm_policy": ROOT / "ros2_ws/src/lawm_policy/lawm_policy",
    "lawm_apps": ROOT / "apps/lawm_apps",
}
# What each top-level package may not import (ours and third-party).
FORBIDDEN = {
    "lawm_core": {"lawm", "lawm_sim", "lawm_policy", "lawm_apps", "torch", "rclpy"},
    "lawm_sim": {"lawm", "lawm_policy", "lawm_apps", "torch", "rclpy"},
    "lawm": {"lawm_policy", "lawm_apps", "rclpy"},
    "lawm_policy": {"lawm", "lawm_apps", "torch"},
    "lawm_apps": set(),
}
ENTRY_SCRIPTS = [ROOT / "training/train.py", ROOT / "bench/run.py"]


def _module_name(top: str, path: Path) -> str:
    rel = path.relative_to(PACKAGES[top]).with_suffix("")
    parts = [top, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(top, p): p for top, folder in PACKAGES.items() for p in folder.rglob("*.py")
    }


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of everything ``path`` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            out.add(prefix)
            out |= {f"{prefix}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for mod, path in sources.items():
        graph[mod] = {n for n in _imports(path, mod) if n in sources and n != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_of(module: str, sources: dict[str, Path]) -> str:
    """The (sub)package a module belongs to: itself for a package, else its parent."""
    if sources[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0] or module


def test_no_import_cycle_between_modules():
    # A package's __init__ importing its own modules is not a cycle of the design.
    graph = {
        m: {d for d in deps if not (m.endswith("__init__") or d.startswith(m + "."))}
        for m, deps in _graph().items()
    }
    assert _cycles(graph) == []


def test_no_import_cycle_between_packages():
    sources = _sources()
    pkg_graph: dict[str, set[str]] = defaultdict(set)
    for mod, deps in _graph().items():
        a = _package_of(mod, sources)
        for dep in deps:
            b = _package_of(dep, sources)
            # A package may use its own subpackages; a subpackage reaching up is a cycle.
            if a != b and not b.startswith(a + "."):
                pkg_graph[a].add(b)
    assert _cycles(dict(pkg_graph)) == []


@pytest.mark.parametrize("top", sorted(PACKAGES))
def test_layers_import_only_downwards(top):
    bad = []
    for mod, path in _sources().items():
        if mod.split(".")[0] != top:
            continue
        for name in _imports(path, mod):
            if name.split(".")[0] in FORBIDDEN[top]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_no_path_tricks_in_entry_points_or_sources():
    files = [*_sources().values(), *ENTRY_SCRIPTS]
    assert [str(f.relative_to(ROOT)) for f in files if "sys.path" in f.read_text()] == []
    purelib = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [p.name for p in Path(purelib).glob("*.pth") if "lawm_policy" in p.read_text()]
    assert ours == [], "a .pth file puts the ROS package on sys.path"


def test_no_compatibility_reexports():
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _sources().values()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "re-export" in line and "noqa" in line
    ]
    assert hits == []


def test_runtime_core_runs_without_torch_rclpy_or_training(exported_debug_model):
    """Import every core module and run an exported model in a fresh interpreter: neither
    torch, rclpy nor any package of a higher layer gets loaded."""
    core = sorted(m for m in _sources() if m.split(".")[0] == "lawm_core")
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "from lawm_core.model import PolicyModel\n"
        "import numpy as np\n"
        f"m = PolicyModel({str(exported_debug_model)!r}, providers='cpu', threads=1)\n"
        "s = m.image_size\n"
        "imgs = {c: np.zeros((s, s, 3), np.uint8) for c in m.cameras}\n"
        "a = m.predict(imgs, np.zeros(m.proprio_dim), np.ones(m.lang_dim) / 20)\n"
        "assert a.shape == (m.chunk_size, m.action_dim), a.shape\n"
        "top = {'torch', 'rclpy', 'lawm', 'lawm_sim', 'lawm_policy', 'lawm_apps'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in top)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_checker_sees_a_cycle_and_a_forbidden_import(tmp_path):
    """The checks above can fail: a two-module cycle and a function-local import are found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import torch\n    from .sib import x\n")
    assert {"torch", "pkg.sib", "pkg.sib.x"} <= _imports(f, "pkg.m")
