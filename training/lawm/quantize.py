"""The low-precision companions of an exported policy, made from the training data's own frames.

Written by ``lawm.export.export_policy`` next to ``policy.onnx`` when it is given data:

- ``reference.npz``: ``REFERENCE_COUNT`` graph inputs (one array per input name, stacked on the
  batch axis) drawn from the training episodes, and ``actions``, the fp32 graph's output for
  them. At configure the runtime (``lawm_core.backends``) runs every low-precision backend on
  these and lets it run only when its actions stay within the sidecar's tolerance of these.
- ``policy.int8.onnx``: a static int8 graph (QDQ: weights per channel, activations calibrated
  with min/max) calibrated on ``CALIBRATION_COUNT`` other frames of the same data. Which
  layers are quantised is chosen by measured error (``choose_int8``): every layer alone, then,
  taking layers in order of error per FLOP, the longest run whose error together stays within
  ``EXPORT_SHARE`` of the tolerance (headroom for the rounding of other CPUs' int8 kernels).
  On a trained policy the stem convolution and the action head are the touchy ones. No layer
  within: no int8 graph, and the report says why.
- ``calibration.json``: that report (each layer's error alone, the chosen set, its error and
  latency, the frames used).

The reference windows and the calibration windows are disjoint: the check runs on frames the
calibration never saw.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from tqdm.auto import tqdm

from lawm.data.dataset import square_resize
from lawm_core import contract
from lawm_core.files import atomic_path, sha256_file
from lawm_core.sidecar import Int8Model, LowPrecision

REFERENCE_COUNT = 32
CALIBRATION_COUNT = 128
DEFAULT_TOLERANCE = contract.MAX_PARITY_TOLERANCE
SELECTION_COUNT = 32  # calibration frames the layer selection measures errors on
EXPORT_SHARE = 0.5  # the int8 graph may use this share of the tolerance at export
QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")


class CalibrationError(ValueError):
    """The data cannot give reference/calibration frames for this graph (no episode with its
    cameras and robot state, or too few frames)."""


@dataclass(frozen=True)
class Frames:
    """Graph inputs drawn from episodes: one batch-1 feed per frame, and where each came from."""

    feeds: list[dict[str, np.ndarray]]
    origins: list[str]  # "<episode name>@<frame>"


def draw_frames(
    sources: Sequence[Any],
    cameras: Sequence[str],
    proprio_layout: Sequence[str],
    image_size: int,
    lang_dim: int,
    lang_cache: Path | None,
    counts: Sequence[int],
    seed: int = 0,
) -> list[Frames]:
    """Disjoint sets of ``counts[i]`` frames from ``sources``, as graph inputs: each camera's
    image square-cropped and resized as in training (uint8 (1, S, S, 3) RGB), the proprio in
    raw units (only with a ``proprio_layout``), the instruction's embedding. Only episodes with
    every camera (and the robot state) the graph takes are drawn from; frames are spread over
    them by a permutation seeded by ``seed``. CalibrationError when there are not enough."""
    from lawm.trainer import LangTable  # torch-side; only export needs it

    cameras = tuple(cameras)
    layout = tuple(proprio_layout)
    usable = [
        s
        for s in sources
        if set(cameras) <= set(s.cameras)
        and (not layout or (s.has_proprio and tuple(s.proprio_layout) == layout))
    ]
    need = int(sum(counts))
    if not usable:
        raise CalibrationError(
            f"none of the {len(sources)} episode(s) has every input the graph takes (cameras "
            f"{list(cameras)}{', robot state ' + str(list(layout)) if layout else ''})"
        )
    lengths = np.array([s.length for s in usable], np.int64)
    total = int(lengths.sum())
    if total < need:
        raise CalibrationError(
            f"{total} frames in {len(usable)} usable episode(s), {need} needed "
            f"({' + '.join(map(str, counts))})"
        )
    ends = np.cumsum(lengths)
    picks = np.random.default_rng(seed).permutation(total)[:need]
    lang = LangTable([s.instruction for s in usable], lang_cache, lang_dim)
    out: list[Frames] = []
    start = 0
    for count in counts:
        feeds, origins = [], []
        for flat in picks[start : start + count]:
            i = int(np.searchsorted(ends, flat, side="right"))
            t = int(flat - (ends[i - 1] if i else 0))
            src = usable[i]
            data = src.read(t, t + 1, cameras=cameras, actions=False, proprio=bool(layout))
            feed = {
                contract.onnx_image_input(c): np.ascontiguousarray(
                    square_resize(data["images"][c], image_size).transpose(0, 2, 3, 1)
                )
                for c in cameras
            }
            if layout:
                feed[contract.ONNX_PROPRIO_INPUT] = np.asarray(data["proprio"], np.float32)
            feed[contract.ONNX_LANG_INPUT] = lang([src.instruction]).numpy().astype(np.float32)
            feeds.append(feed)
            origins.append(f"{src.name}@{t}")
        out.append(Frames(feeds, origins))
        start += count
    return out


def stack(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch-1 feeds -> one array per input name, stacked on the batch axis."""
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def _session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_each(sess: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """Actions (N, K, A) for batch-1 feeds, one run each (as the robot runs them)."""
    return np.concatenate([sess.run([contract.ONNX_ACTION_OUTPUT], f)[0] for f in feeds])


def _median_ms(sess: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]) -> float:
    sess.run(None, feeds[0])
    times = []
    for f in feeds:
        t = time.perf_counter()
        sess.run(None, f)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


class _Reader:
    """onnxruntime's calibration data reader over batch-1 feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def graph_flops(path: Path) -> dict[str, Any]:
    """FLOPs (2 x multiply-accumulates) of the graph at batch 1, per operator type. Shapes are
    the ones a real run gives (onnxruntime on zero inputs, every Conv/MatMul/Gemm's operands
    made outputs): static shape inference loses them behind reshapes and norms."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    consts = {i.name: list(i.dims) for i in graph.initializer}
    ops = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    have = {o.name for o in graph.output}
    wanted = []
    for n in ops:
        for name in (n.input[0], n.input[1], n.output[0]):
            if name not in consts and name not in have and name not in wanted:
                wanted.append(name)
    for name in wanted:
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    feed = {}
    for inp in graph.input:
        if inp.name in consts:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feed[inp.name] = np.zeros(dims, dtype)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in sess.get_outputs()]
    shapes = {n: list(v.shape) for n, v in zip(names, sess.run(names, feed))}
    shapes.update(consts)
    out: dict[str, Any] = {"Conv": 0.0, "MatMul": 0.0, "Gemm": 0.0}
    per_node: dict[str, float] = {}
    for node in ops:
        a, w, y = (shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]])
        if node.op_type == "Conv":
            # y: (N, Cout, H, W); w: (Cout, Cin/groups, kH, kW)
            flops = 2.0 * float(np.prod(y)) * float(np.prod(w[1:]))
        else:
            k = a[-1]
            if node.op_type == "Gemm":
                attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
                k = a[0] if attrs.get("transA", 0) else a[-1]
            flops = 2.0 * float(np.prod(y)) * float(k)
        out[node.op_type] += flops
        per_node[node.name] = per_node.get(node.name, 0.0) + flops
    out["total"] = out["Conv"] + out["MatMul"] + out["Gemm"]
    out["nodes"] = per_node
    return out


def quantizable_nodes(path: Path) -> list[tuple[str, str]]:
    """(name, op type) of the nodes int8 may take: every Conv and Gemm, and every MatMul with
    a constant weight (attention's activation x activation products stay fp32)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [
        (n.name, n.op_type)
        for n in graph.node
        if n.name
        and (
            n.op_type in ("Conv", "Gemm")
            or (n.op_type == "MatMul" and any(i in consts for i in n.input))
        )
    ]


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    nodes: Sequence[str],
    cache: Path | None = None,
) -> None:
    """Static int8 QDQ of ``nodes`` of ``fp32_path`` (weights int8 per channel, activations
    int8 from min/max over ``calibration``). ``cache``: tensor ranges kept between calls (the
    calibration runs once for every layer)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Reader, CalibrationDataReader):
        pass

    root = logging.getLogger()  # the quantiser writes its advice to the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            Reader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OP_TYPES),
            nodes_to_quantize=list(nodes),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=None if cache is None else str(cache),
        )
    finally:
        root.setLevel(level)


def choose_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    reference: Sequence[dict[str, np.ndarray]],
    ref_actions: np.ndarray,
    budget: float,
    say=print,
) -> dict[str, Any]:
    """Quantise layer by layer, keeping the error within ``budget``: each quantisable node is
    quantised alone and its error measured on ``SELECTION_COUNT`` calibration frames; the nodes
    are ordered by that error per FLOP, and the longest prefix of that order whose error
    together stays within budget (bisection) is taken and checked on the reference frames
    (halved until it keeps within budget there too). Writes ``out_path`` when a set is
    found. Returns the report entry (``nodes``: the quantised ones, ``max_abs_error`` on the
    reference frames)."""
    nodes = quantizable_nodes(fp32_path)
    selection = list(calibration[:SELECTION_COUNT])
    fp32 = _session(fp32_path)
    sel_actions = run_each(fp32, selection)
    entry: dict[str, Any] = {"quantisable_nodes": len(nodes)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lawm-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        trial = Path(tmp) / "trial.onnx"

        def error(subset: Sequence[str], feeds, want) -> float:
            quantize_int8(fp32_path, trial, calibration, subset, cache)
            err = float(np.abs(run_each(_session(trial), feeds) - want).max())
            return err if math.isfinite(err) else math.inf

        every = [name for name, _ in nodes]
        if not every:
            entry["why"] = "the graph has no Conv, Gemm or constant-weight MatMul"
            return entry
        all_err = error(every, selection, sel_actions)
        say(f"int8 every layer ({len(every)}): max abs error {all_err:.4f} (budget {budget:.4f})")
        if all_err <= budget:
            order, count = every, len(every)
        else:
            alone = []
            for name, op in tqdm(nodes, desc="int8 sensitivity", unit="layer", leave=False):
                alone.append((error([name], selection, sel_actions), name, op))
            # Cheapest error per FLOP first: the most arithmetic int8 can take for the budget
            # (by error alone, the GPT's many small matmuls would use it up before the
            # convolutions that carry nearly all the FLOPs).
            flops = graph_flops(fp32_path)["nodes"]
            alone.sort(key=lambda item: item[0] / max(flops.get(item[1], 0.0), 1.0))
            entry["sensitivity"] = [
                {
                    "node": name,
                    "op_type": op,
                    "max_abs_error_alone": round(e, 6),
                    "mflops": round(flops.get(name, 0.0) / 1e6, 3),
                }
                for e, name, op in alone
            ]
            order = [name for _, name, _ in alone]
            lo, hi = 0, len(order) - 1  # largest count within budget, by bisection
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if error(order[:mid], selection, sel_actions) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            count = lo
        ref_err = math.inf
        while count > 0:
            ref_err = error(order[:count], reference, ref_actions)
            if ref_err <= budget:
                break
            count //= 2
        entry["select_seconds"] = round(time.perf_counter() - t0, 2)
        if count == 0:
            entry["why"] = f"no layer keeps within {budget:.4f} on the reference frames"
            return entry
        quantize_int8(fp32_path, out_path, calibration, order[:count], cache)
    kinds = dict(nodes)
    chosen = order[:count]
    entry.update(
        nodes=chosen,
        op_types=sorted({kinds[n] for n in chosen}),
        max_abs_error=ref_err,
        onnxruntime_ms_p50_1_thread=round(_median_ms(_session(out_path), reference), 3),
    )
    return entry


def write_companions(
    out_dir: Path,
    reference: Frames,
    calibration: Frames,
    tolerance: float = DEFAULT_TOLERANCE,
    say=print,
) -> LowPrecision:
    """Write reference.npz, policy.int8.onnx (when some layers keep within budget) and
    calibration.json into ``out_dir`` (which holds policy.onnx). Returns the sidecar section."""
    if not 0 < tolerance <= contract.MAX_PARITY_TOLERANCE:
        raise ValueError(
            f"tolerance must be in (0, {contract.MAX_PARITY_TOLERANCE}], got {tolerance!r}"
        )
    out_dir = Path(out_dir)
    fp32_path = out_dir / contract.ONNX_FILE
    fp32 = _session(fp32_path)
    ref_actions = run_each(fp32, reference.feeds)
    ref_path = out_dir / contract.REFERENCE_FILE
    buf = io.BytesIO()
    np.savez(buf, **stack(reference.feeds), actions=ref_actions)
    with atomic_path(ref_path) as tmp:
        tmp.write_bytes(buf.getvalue())
    fp32_ms = _median_ms(fp32, reference.feeds)

    budget = EXPORT_SHARE * tolerance
    int8_path = out_dir / contract.INT8_ONNX_FILE
    staging = out_dir / ".int8-staging.onnx"
    try:
        entry = choose_int8(
            fp32_path, staging, calibration.feeds, reference.feeds, ref_actions, budget, say
        )
    except Exception as err:  # quantiser and onnxruntime errors share no base class
        entry = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    if "nodes" in entry:
        staging.replace(int8_path)
        say(
            f"int8: {len(entry['nodes'])} of {entry['quantisable_nodes']} layers "
            f"({'+'.join(entry['op_types'])}), max abs error {entry['max_abs_error']:.4f} on "
            f"the reference frames, {entry['onnxruntime_ms_p50_1_thread']:.2f} ms vs fp32 "
            f"{fp32_ms:.2f} ms (onnxruntime, 1 thread)"
        )
    else:
        staging.unlink(missing_ok=True)
        say(f"int8: none ({entry.get('why') or entry.get('error')}); fp32 and OpenVINO remain")

    report = {
        "tolerance": tolerance,
        "export_budget": budget,
        "reference": {"count": len(reference.feeds), "frames": reference.origins},
        "calibration": {
            "count": len(calibration.feeds),
            "method": "MinMax, weights int8 per channel, activations int8, QDQ",
            "frames": calibration.origins,
        },
        "fp32_onnxruntime_ms_p50_1_thread": round(fp32_ms, 3),
        "int8": entry,
    }
    report_path = out_dir / contract.CALIBRATION_REPORT_FILE
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    int8 = None
    if "nodes" in entry:
        int8 = Int8Model(
            sha256=sha256_file(int8_path),
            op_types=tuple(entry["op_types"]),
            max_abs_error=float(entry["max_abs_error"]),
            calibration_count=len(calibration.feeds),
        )
    return LowPrecision(
        tolerance=float(tolerance),
        reference_sha256=sha256_file(ref_path),
        reference_count=len(reference.feeds),
        report_sha256=sha256_file(report_path),
        int8=int8,
    )
