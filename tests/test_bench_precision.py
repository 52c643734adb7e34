"""bench/precision.py: the FLOP count the peak fractions are computed from."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import precision  # noqa: E402


def test_graph_flops_counts_convolutions_and_matrix_products_at_batch_1(tmp_path):
    rng = np.random.default_rng(0)
    w_conv = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "wc")
    w_gemm = numpy_helper.from_array(rng.normal(size=(8 * 16 * 16, 5)).astype(np.float32), "wg")
    w_mm = numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "wm")
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["g"]),
        helper.make_node("MatMul", ["g", "wm"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w_conv, w_gemm, w_mm],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a valid graph

    flops = precision.graph_flops(path)
    # Conv: output 8 x 16 x 16, each 3 x 3 x 3 multiply-adds; Gemm 2048 x 5; MatMul 5 x 4.
    assert flops["Conv"] == 2 * 8 * 16 * 16 * 27
    assert flops["Gemm"] == 2 * 2048 * 5
    assert flops["MatMul"] == 2 * 5 * 4
    assert flops["total"] == flops["Conv"] + flops["Gemm"] + flops["MatMul"]
