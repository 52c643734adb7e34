"""An exported policy (``policy.onnx`` + ``policy.json``) run with onnxruntime, checked at load.

The folder comes from ``lawm.export.export_policy``::

    policy.json   sidecar (``lawm_core.sidecar.PolicySidecar``): format_version, onnx_sha256,
                  cameras, image_size, chunk_size, action_dim, control_rate_hz, normalization,
                  inputs, outputs, ...
    policy.onnx   image_<camera> uint8 (B, S, S, 3) RGB per sidecar camera, proprio float32
                  (B, P) raw units (only when proprio_dim P > 0), lang float32 (B, 384)
                  -> actions float32 (B, K, A) normalised to [-1, 1]

The cameras and the proprio are those the training data provided: a model trained without
robot state has no proprio input (``has_proprio`` False) and ``predict`` takes ``proprio=None``.

Loading refuses (``ModelLoadError`` naming the file and the reason) a missing folder or file,
a sidecar that ``PolicySidecar.read`` refuses (not JSON, a missing, unknown or malformed field,
another format version), a ``policy.onnx`` whose sha256 is not the sidecar's, and a graph whose
input/output names, dtypes or shapes differ from the sidecar. ``predict`` takes one observation
and refuses malformed input with ``InputError``; it never resizes or converts (``preprocess``
does that).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lawm_core import backends, contract
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.files import verify_file
from lawm_core.model_files import check_onnx_graph, folder_file
from lawm_core.sidecar import PolicySidecar, TensorSpec

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
AUTO_ORDER = (TENSORRT, CUDA, CPU)
PROVIDER_ALIASES = {
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "cuda": CUDA,
    "gpu": CUDA,
    "cpu": CPU,
}
# Short names expand to the provider plus the ones it falls back on for unsupported nodes.
_ALIAS_CHAIN = {TENSORRT: (TENSORRT, CUDA, CPU), CUDA: (CUDA, CPU), CPU: (CPU,)}


def resolve_providers(
    providers: str | Sequence[str], available: Sequence[str] | None = None
) -> list[str]:
    """Execution providers to ask onnxruntime for, in priority order.

    ``"auto"``: TensorRT, CUDA, CPU, keeping those this onnxruntime build has. A short name
    (``"tensorrt"``/``"trt"``, ``"cuda"``/``"gpu"``, ``"cpu"``, case-insensitive; several may
    be comma-separated) or a list of short or full provider names. A short name brings the
    providers after it as fallbacks for nodes it cannot run (``"cuda"`` -> CUDA, CPU), kept
    only if available. ModelLoadError for an unknown name (listing the valid ones) or an
    explicitly named provider this build does not have.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    available = list(available)
    if isinstance(providers, str):
        items = [p.strip() for p in providers.split(",") if p.strip()]
    else:
        items = [str(p).strip() for p in providers]
    if not items:
        raise ModelLoadError(f"no execution provider given ({_valid_names(available)})")
    if [i.lower() for i in items] == ["auto"]:
        return [p for p in AUTO_ORDER if p in available]

    full_names = {p.lower(): p for p in (*AUTO_ORDER, *available)}
    out: list[str] = []
    for item in items:
        key = item.lower()
        if key in PROVIDER_ALIASES:
            first = PROVIDER_ALIASES[key]
            chain = [first] + [p for p in _ALIAS_CHAIN[first][1:] if p in available]
        elif key in full_names:
            chain = [full_names[key]]
        else:
            raise ModelLoadError(
                f"unknown execution provider {item!r} ({_valid_names(available)})"
            )
        if chain[0] not in available:
            raise ModelLoadError(
                f"execution provider {chain[0]} is not available in this onnxruntime build "
                f"(available: {available})"
            )
        out += [p for p in chain if p not in out]
    return out


def _valid_names(available: Sequence[str]) -> str:
    aliases = ", ".join(repr(a) for a in PROVIDER_ALIASES)
    return f"valid: 'auto', {aliases}, or full names such as {list(available)}"


def _onnx_type(spec: TensorSpec) -> str:
    """onnxruntime's name of a spec's element type: float32 -> tensor(float), uint8 ->
    tensor(uint8)."""
    return f"tensor({'float' if spec.dtype == 'float32' else spec.dtype})"


def _dims_match(graph_shape: Sequence[Any], sidecar_shape: Sequence[Any]) -> bool:
    """Fixed sizes must be equal; a symbolic or unknown dimension matches a symbolic one."""
    if len(graph_shape) != len(sidecar_shape):
        return False
    for g, s in zip(graph_shape, sidecar_shape):
        g_fixed = isinstance(g, int) and not isinstance(g, bool)
        s_fixed = isinstance(s, int) and not isinstance(s, bool)
        if g_fixed != s_fixed or (g_fixed and g != s):
            return False
    return True


class PolicyModel:
    """A checked, loaded exported policy.

    Args:
        model_dir: folder holding ``policy.json`` and ``policy.onnx``.
        providers: ``"auto"`` (TensorRT, CUDA, CPU, those available), a short name
            (``"tensorrt"``, ``"cuda"``, ``"cpu"``) or a list of provider names; see
            ``resolve_providers``. ``provider`` is the one onnxruntime actually made active.
        threads: intra-op threads for the CPU provider (and OpenVINO); 0 = their default.
        backend: ``"onnxruntime"`` (fp32, default), ``"auto"`` (the fastest backend whose
            actions match fp32 on the export's reference set) or one of
            ``lawm_core.backends.BACKENDS`` (checked the same way); see
            ``lawm_core.backends.choose``. A backend that fails to load or to match leaves
            fp32 running; ``selection`` says what was tried and why.

    Attributes: ``spec`` (the checked ``PolicySidecar``), ``cameras`` (tuple, input order),
    ``image_size``, ``chunk_size``, ``action_dim``, ``control_rate_hz``, ``lang_dim``,
    ``proprio_dim`` (0: no robot state), ``proprio_layout`` (tuple of contract proprio names,
    empty without robot state), ``has_proprio``, ``provider``, ``providers`` (all active),
    ``action_min``/``action_max`` (float64 (A,)), ``model_dir``, ``onnx_path``,
    ``has_text_encoder``, ``selection`` (``lawm_core.backends.Selection``), ``backend`` and
    ``precision`` (the backend running).

    ``predict`` is safe to call from several threads (onnxruntime sessions are).
    """

    def __init__(
        self,
        model_dir: Path | str,
        providers: str | list[str] = "auto",
        threads: int = 0,
        backend: str = backends.FP32,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelLoadError(f"{self.model_dir}: model directory missing")
        sidecar_path = folder_file(self.model_dir, contract.SIDECAR_FILE)
        self.spec = spec = PolicySidecar.read(sidecar_path)

        # Fixed file name: the sidecar is not trusted to point outside the folder.
        self.onnx_path = folder_file(self.model_dir, contract.ONNX_FILE)
        verify_file(self.onnx_path, spec.onnx_sha256)
        # The graph is checked against the sidecar before onnxruntime reads it.
        check_onnx_graph(self.onnx_path, spec.inputs, spec.outputs, sidecar_path)

        self.cameras: tuple[str, ...] = spec.cameras
        self.image_size = spec.image_size
        self.chunk_size = spec.chunk_size
        self.action_dim = spec.action_dim
        self.control_rate_hz = spec.control_rate_hz
        self.proprio_dim = spec.proprio_dim
        self.proprio_layout: tuple[str, ...] = spec.proprio_layout
        self.lang_dim = spec.lang_dim
        self.action_min = np.asarray(spec.normalization.action_min, np.float64)
        self.action_max = np.asarray(spec.normalization.action_max, np.float64)
        self._image_inputs = {c: contract.onnx_image_input(c) for c in self.cameras}

        self.requested_providers = resolve_providers(providers)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ModelLoadError(f"threads must be an integer >= 0, got {threads!r}")
        if backend not in backends.CHOICES:
            raise ModelLoadError(
                f"unknown backend {backend!r} (valid: {', '.join(backends.CHOICES)})"
            )
        self._fp32 = backends.OrtBackend(
            backends.FP32, self.onnx_path, self.requested_providers, threads
        )
        self._session = self._fp32.session
        self.providers: tuple[str, ...] = self._fp32.providers
        self.provider: str = self.providers[0]
        if self.provider != self.requested_providers[0]:
            log.warning(
                "asked for %s but onnxruntime runs %s", self.requested_providers, self.provider
            )
        self._check_graph(sidecar_path)
        # Every backend but onnxruntime fp32 runs only after matching it on the reference set.
        self.selection = backends.choose(self.model_dir, spec, self._fp32, backend, threads)
        self._backend = self.selection.backend
        level = logging.INFO if backend in ("auto", self._backend.name) else logging.WARNING
        log.log(level, "%s", self.selection.summary())
        log.info(
            "loaded %s (%s, cameras %s, proprio %s, %dx%d, chunk %d, %.1f Hz) on %s",
            self.onnx_path,
            spec.preset,
            list(self.cameras),
            list(self.proprio_layout) or "none",
            self.image_size,
            self.image_size,
            self.chunk_size,
            self.control_rate_hz,
            self.provider,
        )

    # ---------------------------------------------------------------- load-time checks
    def _check_graph(self, sidecar_path: Path) -> None:
        """The ONNX graph's names, dtypes and shapes must be the sidecar's."""
        graph_in = {i.name: i for i in self._session.get_inputs()}
        graph_out = {o.name: o for o in self._session.get_outputs()}
        spec_in = {t.name: t for t in self.spec.inputs}
        spec_out = {t.name: t for t in self.spec.outputs}
        if set(graph_in) != set(spec_in) or not set(spec_out) <= set(graph_out):
            raise ModelLoadError(
                f"{self.onnx_path}: graph inputs {sorted(graph_in)} / outputs "
                f"{sorted(graph_out)} differ from {sidecar_path} (inputs "
                f"{sorted(spec_in)}, outputs {sorted(spec_out)}, cameras "
                f"{list(self.cameras)})"
            )
        for kind, graph, specs in (("input", graph_in, spec_in), ("output", graph_out, spec_out)):
            for name, spec in specs.items():
                node = graph[name]
                if node.type != _onnx_type(spec) or not _dims_match(list(node.shape), spec.shape):
                    raise ModelLoadError(
                        f"{self.onnx_path}: graph {kind} {name} is {node.type} {node.shape}, "
                        f"{sidecar_path} says {spec.dtype} {list(spec.shape)}"
                    )

    # ---------------------------------------------------------------- inference
    @property
    def backend(self) -> str:
        """The backend running the policy (``lawm_core.backends.BACKENDS``)."""
        return self._backend.name

    @property
    def precision(self) -> str:
        """fp32, bf16 or int8: the precision of the backend running."""
        return self._backend.precision

    @property
    def has_proprio(self) -> bool:
        """The model takes robot state (``proprio_layout``); False: trained without it, and
        ``predict`` takes ``proprio=None``."""
        return self.proprio_dim > 0

    @property
    def has_text_encoder(self) -> bool:
        """The export folder also holds text_encoder.* (``TextEncoderRuntime(model_dir)``)."""
        return self.spec.text_encoder is not None

    def _feed(
        self, images: Mapping[str, np.ndarray], proprio: np.ndarray | None, lang: np.ndarray
    ) -> dict[str, np.ndarray]:
        if not isinstance(images, Mapping):
            raise InputError(f"images must be a dict camera -> array, got {type(images).__name__}")
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise InputError(
                f"missing camera image(s) {missing} (model cameras {list(self.cameras)})"
            )
        extra = sorted(str(k) for k in images if k not in self._image_inputs)
        if extra:
            raise InputError(f"unknown camera(s) {extra} (model cameras {list(self.cameras)})")
        s = self.image_size
        feed: dict[str, np.ndarray] = {}
        for cam, name in self._image_inputs.items():
            img = images[cam]
            if not isinstance(img, np.ndarray):
                raise InputError(f"image {cam!r} must be a numpy array, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise InputError(f"image {cam!r} must be uint8, got {img.dtype}")
            if img.shape != (s, s, 3):
                raise InputError(
                    f"image {cam!r} has shape {img.shape}, the model takes ({s}, {s}, 3) "
                    "(use preprocess.fit_image)"
                )
            feed[name] = np.ascontiguousarray(img)[None]
        if self.has_proprio:
            if proprio is None:
                raise InputError(
                    f"proprio missing: the model takes robot state {list(self.proprio_layout)}"
                )
            feed[contract.ONNX_PROPRIO_INPUT] = self._vector_input(
                "proprio", proprio, self.proprio_dim
            )
        elif proprio is not None and np.size(proprio) != 0:
            raise InputError(
                "proprio given, but the model takes no robot state (trained without it): "
                "pass proprio=None"
            )
        feed[contract.ONNX_LANG_INPUT] = self._vector_input("lang", lang, self.lang_dim)
        return feed

    @staticmethod
    def _vector_input(what: str, value: Any, dim: int) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
            raise InputError(f"{what} must be numbers, got dtype {arr.dtype}")
        if arr.shape != (dim,):
            raise InputError(f"{what} has shape {arr.shape}, the model takes ({dim},)")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} has non-finite values: {arr.tolist()}")
        return arr[None]

    def predict(
        self, images: Mapping[str, np.ndarray], proprio: np.ndarray | None, lang: np.ndarray
    ) -> np.ndarray:
        """One observation -> action chunk float32 (K, A), normalised, in [-1, 1].

        ``images``: camera -> uint8 (S, S, 3) RGB at the model's ``image_size`` (one per
        camera of ``cameras``); ``proprio``: (proprio_dim,) raw units in ``proprio_layout``
        order, or None (or empty) for a model without robot state; ``lang``: (lang_dim,)
        embedding. InputError for a missing/unknown camera, a wrong shape or dtype, non-finite
        numbers, a missing proprio, or a proprio given to a model that takes none.
        """
        feed = self._feed(images, proprio, lang)
        out = self._backend.run(feed)
        return np.ascontiguousarray(out[0], dtype=np.float32)

    def denormalize(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., A) -> raw units: (a + 1) / 2 * (max - min) + min."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] != self.action_dim:
            raise InputError(f"actions have shape {a.shape}, expected (..., {self.action_dim})")
        return (a + 1.0) / 2.0 * (self.action_max - self.action_min) + self.action_min

    def warmup(self, n: int = 3) -> list[float]:
        """Run ``n`` predictions on a neutral input (first runs allocate and, on TensorRT,
        build engines); returns their durations in ms."""
        s = self.image_size
        images = {c: np.full((s, s, 3), 127, np.uint8) for c in self.cameras}
        proprio = (
            np.asarray(self.spec.normalization.proprio_mean, np.float32)
            if self.has_proprio
            else None
        )
        lang = np.full(self.lang_dim, 1.0 / math.sqrt(self.lang_dim), np.float32)
        times = []
        for _ in range(max(0, int(n))):
            t0 = time.perf_counter()
            self.predict(images, proprio, lang)
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    def __repr__(self) -> str:
        return (
            f"PolicyModel({str(self.model_dir)!r}, provider={self.provider!r}, "
            f"backend={self.backend!r}, "
            f"cameras={list(self.cameras)}, image_size={self.image_size}, "
            f"chunk_size={self.chunk_size}, action_dim={self.action_dim})"
        )
