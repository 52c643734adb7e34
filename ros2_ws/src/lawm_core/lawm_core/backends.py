"""Inference backends of an exported policy, and the choice among them gated by parity.

Backends (``BACKENDS``; ``PRECISION`` gives each one's precision):

- ``onnxruntime``: ``policy.onnx`` in fp32 on the execution providers asked for (CPU, CUDA,
  TensorRT). The reference every other backend is checked against, and the fallback.
- ``onnxruntime-int8``: ``policy.int8.onnx`` (static int8 QDQ calibrated at export on the
  training data's frames; ``lawm.quantize``) on the CPU provider.
- ``openvino``, ``openvino-bf16``, ``openvino-int8``: the same files with OpenVINO's CPU plugin
  (fp32 and bf16 inference precision from ``policy.onnx``, int8 from ``policy.int8.onnx``), when
  the ``openvino`` package is installed; bf16 only where the CPU has a bf16 path
  (``OPTIMIZATION_CAPABILITIES``: AVX512-BF16 or AMX).

``choose`` (called by ``PolicyModel`` at load): every backend other than onnxruntime fp32 runs
the export's reference inputs (``reference.npz``: frames of the training data with the fp32
graph's actions for them) and may run the policy only when its actions keep within the
sidecar's tolerance of those (max abs, normalised action units, at most
``contract.MAX_PARITY_TOLERANCE``). ``"auto"`` takes the fastest backend that passes (median
latency over the reference inputs, one at a time as the robot runs them) when it is at least
``MIN_SPEEDUP`` faster than fp32, otherwise fp32. A named backend is taken when it passes.
Anything else (a backend that cannot load or compile, a reference set that is missing, corrupt
or not reproduced by fp32, a failed check) leaves fp32 running, and the ``Selection`` says which
backend failed and why. A low-precision model never runs unchecked.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import contract
from lawm_core.errors import ModelLoadError
from lawm_core.files import verify_file
from lawm_core.model_files import check_onnx_graph, folder_file
from lawm_core.sidecar import PolicySidecar

log = logging.getLogger(__name__)

FP32 = "onnxruntime"
BACKENDS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8")
CHOICES = ("auto", *BACKENDS)
PRECISION = {
    "onnxruntime": "fp32",
    "onnxruntime-int8": "int8",
    "openvino": "fp32",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
}
# ``auto`` leaves fp32 only for a backend at least this much faster (median latency ratio).
MIN_SPEEDUP = 1.05
# The precisions ``auto`` may choose: those whose LIBERO closed-loop success matched fp32's in
# bench/run.py's precision gate (README, decision 0005). Any backend can still be named.
AUTO_PRECISIONS = ("fp32", "int8")
# fp32 on this machine must give the stored reference actions to within this, or the reference
# set is not this model's (or is corrupt): other CPUs' fp32 kernels differ by ~1e-6.
FP32_REPRODUCE = 1e-3
WARMUP_RUNS = 2


class BackendUnavailable(Exception):
    """A backend this machine or export does not have (no openvino package, no bf16 path, no
    int8 model): reported as unavailable, not as a failure."""


class Backend(ABC):
    """One way to run the graph: ``run(feed)`` -> actions float32 (B, K, A)."""

    name: str
    precision: str
    device: str

    @abstractmethod
    def run(self, feed: Mapping[str, np.ndarray]) -> np.ndarray: ...


class OrtBackend(Backend):
    """onnxruntime on ``providers`` (resolved names), ``threads`` intra-op (0: default)."""

    def __init__(self, name: str, path: Path, providers: Sequence[str], threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only; the choice is logged here
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=list(providers)
            )
        except Exception as err:  # onnxruntime's errors have no common public base class
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({err})") from err
        self.name = name
        self.precision = PRECISION[name]
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.device = self.providers[0]

    def run(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run([contract.ONNX_ACTION_OUTPUT], dict(feed))[0]


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin at ``precision`` (``f32`` or ``bf16`` inference precision), the
    inputs fixed at batch 1 (one observation per tick). One infer request, owned with the core
    and the compiled model by this object (they go together), used under a lock."""

    def __init__(
        self, name: str, path: Path, spec: PolicySidecar, threads: int, precision_hint: str
    ) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape({t.name: [1, *t.shape[1:]] for t in spec.inputs})
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision_hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.core = core
        self.compiled = core.compile_model(model, "CPU", config)
        self.output = self.compiled.output(contract.ONNX_ACTION_OUTPUT)
        self.request = self.compiled.create_infer_request()
        self.name = name
        self.precision = PRECISION[name]
        self.device = "CPU (OpenVINO)"
        self._lock = threading.Lock()

    def run(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            out = self.request.infer(dict(feed))
            return np.array(out[self.output], dtype=np.float32, copy=True)

    def __del__(self) -> None:
        # The request before the compiled model before the core, whatever order a garbage
        # collection would take them in.
        for name in ("request", "output", "compiled", "core"):
            self.__dict__.pop(name, None)


def openvino_capabilities() -> tuple[str, ...] | None:
    """The CPU plugin's optimisation capabilities (e.g. FP32, BF16, INT8), or None when the
    ``openvino`` package is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # a CPU plugin that cannot start: report none
        return ()


@dataclass(frozen=True)
class Reference:
    """The export's reference inputs (batch-1 feeds) and the fp32 actions (N, K, A) for them."""

    feeds: list[dict[str, np.ndarray]]
    actions: np.ndarray


def load_reference(model_dir: Path, spec: PolicySidecar) -> Reference:
    """``reference.npz`` checked against the sidecar: its sha256, no pickled objects, exactly
    the graph's inputs and ``actions`` with the sidecar's shapes and dtypes, finite values.
    ModelLoadError naming the file and the problem otherwise."""
    low = spec.low_precision
    if low is None:
        raise ModelLoadError(
            f"{model_dir}: exported without a reference set (export with --data to check "
            "lower precisions)"
        )
    path = folder_file(model_dir, contract.REFERENCE_FILE)
    verify_file(path, low.reference_sha256)
    n = low.reference_count
    expected = {t.name: (np.dtype(t.dtype), (n, *t.shape[1:])) for t in spec.inputs}
    expected[contract.ONNX_ACTION_OUTPUT] = (
        np.dtype(np.float32),
        (n, spec.chunk_size, spec.action_dim),
    )
    arrays = _read_npz(path, expected)
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ModelLoadError(f"{path}: {name} has non-finite values")
    want = [t.name for t in spec.inputs]
    actions = arrays[contract.ONNX_ACTION_OUTPUT]
    feeds = [{k: np.ascontiguousarray(arrays[k][i : i + 1]) for k in want} for i in range(n)]
    return Reference(feeds, actions)


def _read_npz(path: Path, expected: dict[str, tuple[np.dtype, tuple[int, ...]]]):
    """The arrays of an uncompressed npz, each header checked against ``expected`` (name ->
    dtype, shape) before its data is read: a file is untrusted, and numpy allocates what a
    header declares. No pickled objects. ModelLoadError naming the problem."""
    import zipfile

    fmt = np.lib.format
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: i for i in zf.infolist()}
            names = sorted(m[:-4] for m in members if m.endswith(".npy"))
            if len(names) != len(members) or set(names) != set(expected):
                raise ModelLoadError(
                    f"{path}: holds {sorted(members)}, the model needs "
                    f"{sorted(k + '.npy' for k in expected)}"
                )
            for name in names:
                dtype, shape = expected[name]
                with zf.open(members[name + ".npy"]) as f:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        got_shape, fortran, got_dtype = fmt.read_array_header_1_0(f)
                    else:
                        got_shape, fortran, got_dtype = fmt.read_array_header_2_0(f)
                    if got_dtype != dtype or tuple(got_shape) != shape or fortran:
                        raise ModelLoadError(
                            f"{path}: {name} is {got_dtype} {list(got_shape)}, expected "
                            f"{dtype} {list(shape)}"
                        )
                    size = int(np.prod(shape)) * dtype.itemsize
                    data = f.read(size + 1)
                if len(data) != size:
                    raise ModelLoadError(f"{path}: {name} holds {len(data)} bytes, not {size}")
                out[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    except ModelLoadError:
        raise
    except Exception as err:  # zipfile, header and short-read errors differ in type
        raise ModelLoadError(f"{path}: not a readable npz of arrays ({err})") from err
    return out


@dataclass
class Trial:
    """What happened to one backend at load: ``status`` chosen, passed (checked, not the
    fastest), failed (why), unavailable (why) or not tried."""

    name: str
    precision: str
    status: str
    reason: str = ""
    ms_p50: float | None = None
    max_abs_error: float | None = None

    def line(self) -> str:
        figures = []
        if self.ms_p50 is not None:
            figures.append(f"{self.ms_p50:.2f} ms")
        if self.max_abs_error is not None:
            figures.append(f"max abs error {self.max_abs_error:.4f}")
        text = f"{self.name} ({self.precision}): {self.status}"
        if figures:
            text += f", {', '.join(figures)}"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclass
class Selection:
    """The outcome of ``choose``: the backend running, why, and every backend's trial."""

    requested: str
    backend: Backend
    reason: str
    tolerance: float | None
    trials: list[Trial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trials.sort(key=lambda t: BACKENDS.index(t.name))

    @property
    def chosen(self) -> Trial:
        return next(t for t in self.trials if t.name == self.backend.name)

    def summary(self) -> str:
        c = self.chosen
        head = f"backend {c.name} ({c.precision}"
        if c.ms_p50 is not None:
            head += f", {c.ms_p50:.2f} ms"
        if c.max_abs_error is not None:
            head += f", max abs error {c.max_abs_error:.4f} vs fp32"
        head += f"): {self.reason}"
        others = [t.line() for t in self.trials if t.name != c.name]
        return head + ("; " + "; ".join(others) if others else "")


def _timed_run(backend: Backend, feeds: Sequence[Mapping[str, np.ndarray]]):
    """Actions (N, K, A) and the median ms of one run per feed, after WARMUP_RUNS."""
    for _ in range(WARMUP_RUNS):
        backend.run(feeds[0])
    outs, times = [], []
    for feed in feeds:
        t = time.perf_counter()
        outs.append(backend.run(feed))
        times.append((time.perf_counter() - t) * 1e3)
    return np.concatenate(outs), float(np.median(times))


def _int8_path(model_dir: Path, spec: PolicySidecar) -> Path:
    low = spec.low_precision
    if low is None or low.int8 is None:
        raise BackendUnavailable(
            f"{model_dir}: no int8 model (the export found no layers within tolerance, or "
            "was made without --data)"
        )
    path = folder_file(model_dir, contract.INT8_ONNX_FILE)
    verify_file(path, low.int8.sha256)
    check_onnx_graph(path, spec.inputs, spec.outputs, model_dir / contract.SIDECAR_FILE)
    return path


def _build(name: str, model_dir: Path, spec: PolicySidecar, threads: int, caps) -> Backend:
    """Load backend ``name`` (not fp32 onnxruntime). BackendUnavailable when this machine or
    export has none; ModelLoadError for a file that fails its checks; any other exception when
    it fails to load or compile."""
    if name == "onnxruntime-int8":
        return OrtBackend(name, _int8_path(model_dir, spec), ["CPUExecutionProvider"], threads)
    if caps is None:
        raise BackendUnavailable("the openvino package is not installed (pip install openvino)")
    if name == "openvino-bf16" and "BF16" not in caps:
        raise BackendUnavailable(f"no bf16 path on this CPU (OpenVINO: {list(caps)})")
    if name == "openvino-int8":
        return OpenVinoBackend(name, _int8_path(model_dir, spec), spec, threads, "f32")
    onnx_path = folder_file(model_dir, contract.ONNX_FILE)
    hint = "bf16" if name == "openvino-bf16" else "f32"
    return OpenVinoBackend(name, onnx_path, spec, threads, hint)


def choose(
    model_dir: Path,
    spec: PolicySidecar,
    fp32: OrtBackend,
    requested: str = "auto",
    threads: int = 0,
) -> Selection:
    """The backend to run (see the module's docstring): ``requested`` is ``"auto"`` or one of
    ``BACKENDS``; ``fp32`` the loaded onnxruntime fp32 backend (the fallback). Never raises for
    a backend or reference problem: the selection runs fp32 and says why."""
    if requested not in CHOICES:
        raise ModelLoadError(f"unknown backend {requested!r} (valid: {', '.join(CHOICES)})")
    model_dir = Path(model_dir)
    fp32_trial = Trial(FP32, "fp32", "chosen")
    trials = [fp32_trial]
    low = spec.low_precision
    tolerance = None if low is None else low.tolerance

    def fallback(reason: str) -> Selection:
        return Selection(requested, fp32, reason, tolerance, trials)

    if requested == FP32:
        return fallback("asked for (backend parameter)")
    names = list(BACKENDS[1:]) if requested == "auto" else [requested]
    ungated = [n for n in names if requested == "auto" and PRECISION[n] not in AUTO_PRECISIONS]
    names = [n for n in names if n not in ungated]
    for name in ungated:
        trials.append(
            Trial(
                name,
                PRECISION[name],
                "not tried",
                f"auto takes {'/'.join(AUTO_PRECISIONS)} only (no closed-loop gate yet); "
                "name it to use it",
            )
        )
    if requested == "auto" and fp32.device != "CPUExecutionProvider":
        return fallback(f"fp32 on {fp32.device}; the low-precision backends are CPU ones")
    try:
        ref = load_reference(model_dir, spec)
        got, fp32_trial.ms_p50 = _timed_run(fp32, ref.feeds)
        fp32_trial.max_abs_error = float(np.abs(got - ref.actions).max())
        if not fp32_trial.max_abs_error <= FP32_REPRODUCE:
            raise ModelLoadError(
                f"{model_dir / contract.REFERENCE_FILE}: fp32 here gives actions up to "
                f"{fp32_trial.max_abs_error:.2e} from the stored ones (> {FP32_REPRODUCE}): "
                "the reference set is not this model's"
            )
    except ModelLoadError as err:
        for name in names:
            trials.append(Trial(name, PRECISION[name], "not tried", "no usable reference set"))
        what = "the backend asked for" if requested != "auto" else "lower precisions"
        return fallback(f"fp32: {what} cannot be checked: {err}")

    caps = openvino_capabilities()
    passed: list[tuple[Trial, Backend]] = []
    for name in names:
        trial = Trial(name, PRECISION[name], "failed")
        trials.append(trial)
        try:
            backend = _build(name, model_dir, spec, threads, caps)
        except BackendUnavailable as err:
            trial.status, trial.reason = "unavailable", str(err)
            continue
        except ModelLoadError as err:
            trial.reason = str(err)
            continue
        except Exception as err:  # a backend that cannot load or compile this graph
            trial.reason = f"cannot load: {type(err).__name__}: {_first_line(err)}"
            continue
        try:
            out, trial.ms_p50 = _timed_run(backend, ref.feeds)
        except Exception as err:  # a backend that compiles but fails to run
            trial.reason = f"cannot run: {type(err).__name__}: {_first_line(err)}"
            continue
        err = float(np.abs(out - ref.actions).max()) if np.all(np.isfinite(out)) else math.inf
        trial.max_abs_error = err
        if err <= low.tolerance:
            trial.status = "passed"
            passed.append((trial, backend))
        else:
            trial.reason = f"outside tolerance {low.tolerance}"

    if requested != "auto":
        if passed:
            trial, backend = passed[0]
            trial.status, fp32_trial.status = "chosen", "fallback"
            return Selection(requested, backend, "asked for, within tolerance", tolerance, trials)
        return fallback(f"fp32: {requested} asked for but {trials[-1].status}")
    if not passed:
        return fallback("fp32: no other backend passed the parity check")
    trial, backend = min(passed, key=lambda tb: tb[0].ms_p50)
    speedup = fp32_trial.ms_p50 / trial.ms_p50
    if speedup < MIN_SPEEDUP:
        return fallback(
            f"fp32: the fastest checked backend, {trial.name}, is only x{speedup:.2f} faster"
        )
    trial.status, fp32_trial.status = "chosen", "fallback"
    return Selection(
        requested,
        backend,
        f"the fastest within tolerance {low.tolerance}, x{speedup:.2f} faster than fp32",
        tolerance,
        trials,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""
