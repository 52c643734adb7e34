"""The exported model folder is untrusted input: checks made before onnxruntime sees a file.

A model folder may come from anywhere (a colleague, a download, a shared drive). Before any
inference session is created, the runtime makes sure that:

* every file it reads is a regular file directly inside the folder: not a symlink (which could
  point anywhere), not a device or a folder, and not larger than ``MAX_FILE_BYTES``;
* an ONNX graph (parsed with the ``onnx`` package, weights left on disk) has exactly the inputs
  and outputs its sidecar declares, by name, element type and shape; uses only the operator
  domains onnxruntime implements itself (``ALLOWED_DOMAINS``: a custom operator would need a
  native library we never load); and keeps every weight inside the file (external data names a
  path on disk, which a hostile file could aim anywhere).

Each refusal is a ``ModelLoadError`` of one line that names the file and the reason.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from lawm_core.errors import ModelLoadError
from lawm_core.sidecar import TensorSpec

MAX_FILE_BYTES = 2 * 1024**3  # the protobuf limit of an ONNX file without external data
# Operator domains built into onnxruntime: the ONNX standard, ONNX-ML and onnxruntime's own
# contrib operators (which its optimiser and quantiser emit).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def folder_file(model_dir: Path, name: str) -> Path:
    """``model_dir / name`` if it is a regular file directly in the folder and not too large;
    otherwise ModelLoadError (a missing file included)."""
    path = Path(model_dir) / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file missing") from None
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read it ({err.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        raise ModelLoadError(
            f"{path}: is a symbolic link (to {target}); a model folder holds its files itself"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path}: not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise ModelLoadError(
            f"{path}: {info.st_size} bytes, more than the {MAX_FILE_BYTES} this runtime reads"
        )
    return path


def _dims(value_info) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    out: list[int | str] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def _type_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return f"onnx type {elem_type}"


def _same_dims(graph: Sequence[int | str], spec: Sequence[int | str]) -> bool:
    """Same rank; fixed sizes must agree, and a dimension the sidecar leaves symbolic (the
    batch) must be symbolic in the graph too. A symbolic graph dimension where the sidecar has
    a size is left to onnxruntime's shape inference, checked once the session exists."""
    if len(graph) != len(spec):
        return False
    for g, s in zip(graph, spec):
        if isinstance(s, int) and isinstance(g, int) and g != s:
            return False
        if isinstance(s, str) and isinstance(g, int):
            return False
    return True


def check_onnx_graph(
    path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    described_by: Path,
) -> None:
    """Parse ``path`` (weights stay on disk) and refuse a graph that differs from the sidecar
    ``described_by`` (``inputs`` exactly, ``outputs`` at least), uses an operator domain
    outside ``ALLOWED_DOMAINS`` or stores weights outside the file."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise ModelLoadError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    local = {f.domain for f in proto.functions}
    used = {o.domain for o in proto.opset_import}
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    used |= {n.domain for n in nodes}
    foreign = sorted(d for d in used - ALLOWED_DOMAINS - local)
    if foreign:
        raise ModelLoadError(
            f"{path}: uses operators of domain(s) {foreign}, which need a custom-operator "
            f"library; this runtime runs only {sorted(ALLOWED_DOMAINS)}"
        )
    tensors = list(proto.graph.initializer) + [
        a.t for n in nodes for a in n.attribute if a.HasField("t")
    ]
    external = [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelLoadError(
            f"{path}: keeps {len(external)} weight(s) in external files (e.g. {external[0]!r}); "
            "this runtime reads weights only from the model file itself"
        )
    weights = {t.name for t in proto.graph.initializer}
    graph_in = {i.name: i for i in proto.graph.input if i.name not in weights}
    graph_out = {o.name: o for o in proto.graph.output}
    spec_in = {t.name: t for t in inputs}
    spec_out = {t.name: t for t in outputs}
    if set(graph_in) != set(spec_in) or not set(spec_out) <= set(graph_out):
        raise ModelLoadError(
            f"{path}: graph inputs {sorted(graph_in)} / outputs {sorted(graph_out)} differ from "
            f"{described_by} (inputs {sorted(spec_in)}, outputs {sorted(spec_out)})"
        )
    for kind, graph, specs in (("input", graph_in, spec_in), ("output", graph_out, spec_out)):
        for name, spec in specs.items():
            node = graph[name]
            dtype = _type_name(node.type.tensor_type.elem_type)
            dims = _dims(node)
            if dtype != spec.dtype or not _same_dims(dims, spec.shape):
                raise ModelLoadError(
                    f"{path}: graph {kind} {name} is {dtype} {dims}, {described_by} says "
                    f"{spec.dtype} {list(spec.shape)}"
                )
