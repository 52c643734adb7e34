"""What each inference backend costs and how far it is from the machine's limit (bench/run.py's
``inference`` part; also run alone: ``python bench/precision.py EXPORT_DIR DATA.hdf5``).

- ``graph_flops``: multiply-accumulates x 2 of every Conv, MatMul and Gemm of an ONNX graph at
  batch 1 (shapes from ONNX shape inference); the rest of the graph is a few percent.
- ``measure_peaks``: the machine's matrix throughput per precision and thread count, measured
  on one large MatMul (fp32: onnxruntime and OpenVINO; bf16: OpenVINO's bf16 inference
  precision, where the CPU has a bf16 path; int8: a QDQ MatMul on onnxruntime and OpenVINO).
  The best engine counts: the figure is the machine's, not an engine's.
- ``time_backends``: each backend ``PolicyModel`` can run on the export, p50/p99 of one
  ``predict`` at 1 and 2 threads on real frames, its max abs error against fp32 on them, the
  GFLOP/s it reaches and that as a fraction of the measured peak of its precision.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lawm.quantize import graph_flops
from lawm_core import backends, contract
from lawm_core.model import PolicyModel

__all__ = ["graph_flops", "measure_peaks", "real_frames", "roofline_ms", "time_backends"]

PEAK_SHAPE = (256, 1024, 1024)  # M, K, N of the peak MatMul: 0.54 GFLOP a run


def roofline_ms(flops: dict[str, Any], peaks_gflops: dict[str, float], int8_nodes=()) -> float:
    """The time the graph's matrix work would take at the measured peaks: ``int8_nodes`` at
    the int8 peak, the rest at the precision's own (``peaks_gflops``: precision -> GFLOP/s,
    ``"rest"`` the precision of the layers not in ``int8_nodes``)."""
    int8 = set(int8_nodes)
    q = sum(f for n, f in flops["nodes"].items() if n in int8)
    rest = flops["total"] - q
    ms = rest / peaks_gflops["rest"] / 1e6
    if q:
        ms += q / peaks_gflops["int8"] / 1e6
    return ms


def _matmul_model(path: Path, m: int, k: int, n: int, int8: bool) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(k, n)).astype(np.float32) * 0.05, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = [w]
    if int8:  # QDQ: x and w quantised, as the quantiser writes them
        inits += [
            numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.int8), "xz"),
            numpy_helper.from_array(
                np.round(rng.normal(size=(k, n)) * 20).clip(-127, 127).astype(np.int8), "wq"
            ),
            numpy_helper.from_array(np.array(0.0025, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
        ]
        inits = inits[1:]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _best_ms(run, reps: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def measure_peaks(threads: tuple[int, ...] = (1, 2), reps: int = 15) -> dict[str, Any]:
    """GFLOP/s (int8: GOP/s) of one large MatMul per precision and thread count, the best
    engine's; ``peak_<precision>_<threads>t`` keys, plus which engine reached each."""
    import onnxruntime as ort

    m, k, n = PEAK_SHAPE
    flops = 2.0 * m * k * n
    x = np.random.default_rng(1).normal(size=(m, k)).astype(np.float32)
    caps = backends.openvino_capabilities()
    out: dict[str, Any] = {"peak_matmul": f"{m}x{k} @ {k}x{n}"}
    with tempfile.TemporaryDirectory(prefix="lawm-peak-") as tmp:
        paths = {}
        for kind in ("fp32", "int8"):
            paths[kind] = Path(tmp) / f"{kind}.onnx"
            _matmul_model(paths[kind], m, k, n, kind == "int8")
        for t in threads:
            tried: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}, "int8": {}}
            for kind in ("fp32", "int8"):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = t
                opts.inter_op_num_threads = 1
                sess = ort.InferenceSession(
                    str(paths[kind]), opts, providers=["CPUExecutionProvider"]
                )
                ms = _best_ms(lambda: sess.run(None, {"x": x}), reps)  # noqa: B023
                tried[kind]["onnxruntime"] = flops / ms / 1e6
            if caps is not None:
                import openvino as ov

                core = ov.Core()
                for kind, path, hint in (
                    ("fp32", paths["fp32"], "f32"),
                    ("bf16", paths["fp32"], "bf16"),
                    ("int8", paths["int8"], "f32"),
                ):
                    if kind == "bf16" and "BF16" not in caps:
                        continue
                    cfg = {
                        "INFERENCE_PRECISION_HINT": hint,
                        "INFERENCE_NUM_THREADS": t,
                        "PERFORMANCE_HINT": "LATENCY",
                    }
                    compiled = core.compile_model(core.read_model(str(path)), "CPU", cfg)
                    req = compiled.create_infer_request()
                    ms = _best_ms(lambda: req.infer({"x": x}), reps)  # noqa: B023
                    tried[kind]["openvino"] = flops / ms / 1e6
            for kind, by_engine in tried.items():
                if by_engine:
                    engine = max(by_engine, key=by_engine.get)
                    out[f"peak_{kind}_{t}t_gflops"] = round(by_engine[engine], 1)
                    out[f"peak_{kind}_{t}t_engine"] = engine
    return out


def time_backends(
    export: Path,
    feeds: list[dict[str, np.ndarray]],
    flops: dict[str, Any],
    peaks: dict[str, Any],
    threads: tuple[int, ...] = (1, 2),
) -> dict[str, Any]:
    """Per backend that loads and passes its parity check: p50/p99 ms of ``predict`` over
    ``feeds`` (batch-1 graph inputs by name) at each thread count, max abs error against fp32
    on them, GFLOP/s, and the fraction of the machine's peak it reaches: the time its matrix
    work would take at the measured peaks (``roofline_ms``; an int8 graph's int8 layers at the
    int8 peak, its other layers at fp32's) over the time it took."""
    report = json.loads((export / contract.CALIBRATION_REPORT_FILE).read_text())
    int8_nodes = report.get("int8", {}).get("nodes", [])
    logging.getLogger("lawm_core").setLevel(logging.ERROR)
    out: dict[str, Any] = {}
    reference: np.ndarray | None = None
    for name in backends.BACKENDS:
        row: dict[str, Any] = {"precision": backends.PRECISION[name]}
        for t in threads:
            model = PolicyModel(export, providers="cpu", threads=t, backend=name)
            if model.backend != name:
                row["status"] = model.selection.summary()
                break
            cams = model.cameras

            def predict(f, model=model, cams=cams):
                return model.predict(
                    {c: f[contract.onnx_image_input(c)][0] for c in cams},
                    f[contract.ONNX_PROPRIO_INPUT][0] if model.has_proprio else None,
                    f[contract.ONNX_LANG_INPUT][0],
                )

            for f in feeds[:5]:
                predict(f)
            times, outs = [], []
            for f in feeds:
                t0 = time.perf_counter()
                outs.append(predict(f))
                times.append((time.perf_counter() - t0) * 1e3)
            acts = np.stack(outs)
            if name == backends.FP32 and reference is None:
                reference = acts
            p50 = float(np.percentile(times, 50))
            row[f"ms_p50_{t}t"] = round(p50, 3)
            row[f"ms_p99_{t}t"] = round(float(np.percentile(times, 99)), 3)
            row[f"gflops_{t}t"] = round(flops["total"] / p50 / 1e6, 1)
            prec = row["precision"]
            rest = "fp32" if prec == "int8" else prec
            at_peak = {
                "rest": peaks.get(f"peak_{rest}_{t}t_gflops"),
                "int8": peaks.get(f"peak_int8_{t}t_gflops"),
            }
            if at_peak["rest"] and (prec != "int8" or at_peak["int8"]):
                nodes = int8_nodes if prec == "int8" else ()
                row[f"peak_ms_{t}t"] = round(roofline_ms(flops, at_peak, nodes), 3)
                row[f"peak_fraction_{t}t"] = round(row[f"peak_ms_{t}t"] / p50, 3)
            if reference is not None:
                row["max_abs_error"] = float(np.abs(acts - reference).max())
            row["status"] = "ran"
        out[name] = row
    return out


def real_frames(
    export: Path, data: Path, count: int, lang_cache: Path | None = None
) -> list[dict[str, np.ndarray]]:
    """``count`` frames of ``data`` as the export's graph inputs (batch 1), drawn with another
    seed than the export's reference and calibration frames."""
    from lawm.data import open_sources
    from lawm.quantize import draw_frames
    from lawm_core.sidecar import PolicySidecar

    spec = PolicySidecar.read(export)
    (frames,) = draw_frames(
        open_sources(data, labelled=False),
        spec.cameras,
        spec.proprio_layout,
        spec.image_size,
        spec.lang_dim,
        lang_cache,
        (count,),
        seed=1,
    )
    return frames.feeds


def main() -> int:
    export, data = Path(sys.argv[1]), Path(sys.argv[2])
    feeds = real_frames(export, data, 200)
    flops = graph_flops(export / contract.ONNX_FILE)
    peaks = measure_peaks()
    print({k: v for k, v in flops.items() if k != "nodes"}, peaks)
    for name, row in time_backends(export, feeds, flops, peaks).items():
        print(name, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
