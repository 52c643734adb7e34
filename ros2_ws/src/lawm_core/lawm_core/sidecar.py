"""The exported model's sidecars, one dataclass each: written by export, checked field by field
before the runtime loads anything.

``policy.json`` (:class:`PolicySidecar`) describes ``policy.onnx``; ``text_encoder.json``
(:class:`TextEncoderSidecar`) describes ``text_encoder.onnx`` + ``tokenizer.json`` and is also
embedded in ``policy.json`` under ``text_encoder`` when the export carries one. The tensor specs
(``inputs``/``outputs``) are derived from the contract's names and the sizes in the sidecar, never
stored separately: the JSON still lists them (for people and other tools), and reading refuses a
file whose lists differ from what its sizes imply.

Reading refuses, with ``ModelLoadError`` naming the file and the field: a missing or non-JSON
file, a JSON value that is not an object, another ``format_version`` (with the advice to export
the model again), a missing or unknown key, any field of the wrong type or out of range, a
proprio layout name outside the contract's vocabulary and an invalid gripper declaration.
The ONNX graph itself is checked against the sidecar by the runtime that loads it
(``lawm_core.model``, ``lawm_core.text_encoder``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from lawm_core import contract
from lawm_core.errors import ModelLoadError
from lawm_core.files import atomic_write_text

# 2: policy.json declares its action space (units, frame, gripper). Within 2, proprio_dim 0
# (a model without robot state: no proprio input) and any contract proprio layout are read.
FORMAT_VERSION = 2
BATCH = "batch"  # symbolic batch dimension of every tensor
SEQUENCE = "sequence"  # symbolic token dimension of the text encoder's inputs

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Upper bounds of the sizes a sidecar may declare: a model folder is untrusted input, and each
# size becomes an allocation (a 10^9-pixel image buffer) before the graph could object.
LIMITS: dict[str, int] = {
    "image_size": 1024,
    "chunk_size": 256,
    "action_dim": 64,
    "proprio_dim": 256,
    "lang_dim": 4096,
    "embedding_dim": 4096,
    "max_length": 8192,
    "opset": 100,
}
MAX_CAMERAS = 8
MAX_CONTROL_RATE_HZ = 1000.0


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (ints and symbolic names) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class _Fields:
    """Typed access to one JSON object; each error names the file and the (dotted) field."""

    def __init__(self, source: Path, data: Mapping[str, Any], prefix: str = "") -> None:
        self.source = source
        self.data = data
        self.prefix = prefix

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ModelLoadError(f"{self.source}: {self.prefix}{key} {problem}")

    def check_keys(self, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        missing = [k for k in required if k not in self.data]
        where = f"{self.prefix.rstrip('.')} " if self.prefix else "sidecar "
        if missing:
            raise ModelLoadError(f"{self.source}: {where}lacks required keys {missing}")
        unknown = sorted(str(k) for k in self.data if k not in required and k not in optional)
        if unknown:
            raise ModelLoadError(
                f"{self.source}: {where}has unknown keys {unknown} (this runtime reads "
                f"format_version {FORMAT_VERSION}: {sorted(required + optional)})"
            )

    def version(self) -> None:
        if "format_version" not in self.data:
            return  # reported with the other missing keys
        value = self.data["format_version"]
        if isinstance(value, bool) or value != FORMAT_VERSION:
            self.fail(
                "format_version",
                f"{value!r}, this runtime reads {FORMAT_VERSION}: export the model again "
                "(python training/train.py export)",
            )

    def constant(self, key: str, want: str, why: str = "this runtime assumes") -> None:
        if self.data[key] != want:
            self.fail(key, f"is {self.data[key]!r}, {why} {want!r}")

    def positive_int(self, key: str) -> int:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.fail(key, f"must be a positive integer, got {value!r}")
        return self._bounded(key, value)

    def count(self, key: str) -> int:
        """An integer >= 0."""
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(key, f"must be an integer >= 0, got {value!r}")
        return self._bounded(key, value)

    def _bounded(self, key: str, value: int) -> int:
        most = LIMITS.get(key)
        if most is not None and value > most:
            self.fail(key, f"is {value}, more than this runtime accepts ({most})")
        return value

    def number(self, key: str, *, positive: bool = False) -> float:
        """A finite number, >= 0 (or > 0 when ``positive``)."""
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            self.fail(key, f"must be finite, got {value!r}")
        if positive and not value > 0:
            self.fail(key, f"must be > 0, got {value!r}")
        if not value >= 0:
            self.fail(key, f"must be >= 0, got {value!r}")
        return float(value)

    def real(self, key: str) -> float:
        """A finite number of either sign."""
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            self.fail(key, f"must be finite, got {value!r}")
        return float(value)

    def text(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def sha256(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            self.fail(key, f"must be a hex string of 64 lowercase digits (sha256), got {value!r}")
        return value

    def timestamp(self, key: str) -> str:
        value = self.text(key)
        try:
            _dt.datetime.fromisoformat(value)
        except ValueError:
            self.fail(key, f"must be an ISO 8601 time, got {value!r}")
        return value

    def names(self, key: str, count: int | None = None, what: str = "names") -> tuple[str, ...]:
        """A list of distinct non-empty strings, of ``count`` items when given (an empty list
        only when ``count`` is 0)."""
        value = self.data[key]
        ok = (
            isinstance(value, list)
            and (bool(value) or count == 0)
            and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value)
        )
        if not ok:
            empty = "" if count == 0 else "non-empty "
            self.fail(key, f"must be a {empty}list of distinct {what}, got {value!r}")
        if count is not None and len(value) != count:
            self.fail(key, f"has {len(value)} names, expected {count}, got {value!r}")
        return tuple(value)

    def obj(self, key: str) -> dict[str, Any]:
        value = self.data[key]
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, got {value!r}")
        return value

    def vector(self, key: str, dim: int) -> tuple[float, ...]:
        value = self.data[key]
        ok = (
            isinstance(value, list)
            and len(value) == dim
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value
            )
        )
        if not ok:
            self.fail(key, f"must be {dim} finite numbers, got {value!r}")
        return tuple(float(v) for v in value)

    def tensors(self, key: str, want: tuple[TensorSpec, ...], derived_from: str) -> None:
        """The stored list of tensor specs must be exactly ``want`` (any order)."""
        items = self.data[key]
        kind = key.rstrip("s")
        if not isinstance(items, list) or not items:
            self.fail(key, f"must be a non-empty list, got {items!r}")
        got: dict[str, TensorSpec] = {}
        for item in items:
            if (
                not isinstance(item, dict)
                or set(item) != {"name", "shape", "dtype"}
                or not isinstance(item["name"], str)
                or not isinstance(item["shape"], list)
                or not isinstance(item["dtype"], str)
            ):
                self.fail(key, f"items need exactly name, shape (list) and dtype, got {item!r}")
            if item["name"] in got:
                self.fail(key, f"names {item['name']!r} twice")
            got[item["name"]] = TensorSpec(item["name"], tuple(item["shape"]), item["dtype"])
        expected = {t.name: t for t in want}
        if set(got) != set(expected):
            self.fail(
                key,
                f"{sorted(got)} do not match {derived_from} (expected {sorted(expected)})",
            )
        for name, spec in got.items():
            exp = expected[name]
            if spec != exp:
                raise ModelLoadError(
                    f"{self.source}: {self.prefix}{kind} {name} is {spec.dtype} "
                    f"{list(spec.shape)}, expected {exp.dtype} {list(exp.shape)} "
                    f"(from {derived_from})"
                )


def _proprio_layout(f: _Fields, proprio_dim: int) -> tuple[str, ...]:
    layout = f.names("proprio_layout", proprio_dim)
    for name in layout:
        problem = contract.proprio_name_problem(name)
        if problem is not None:
            f.fail("proprio_layout", f"entry {problem}")
    return layout


def _read_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"{path}: file missing (the exported {what}'s sidecar)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: not a readable JSON sidecar ({err})") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: sidecar is a JSON {type(data).__name__}, not an object")
    return data


def _to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


class _JsonFile:
    """A sidecar stored as one JSON file in the export folder: ``FILE_NAME``, what it
    describes (``WHAT``, for messages), ``to_dict`` and ``from_dict`` given by the subclass."""

    FILE_NAME: ClassVar[str]
    WHAT: ClassVar[str]

    def to_json(self) -> str:
        return _to_json(self.to_dict())

    def write(self, folder: Path | str) -> Path:
        """Write ``folder/FILE_NAME`` atomically; returns its path."""
        path = Path(folder) / self.FILE_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def read(cls, folder_or_path: Path | str):
        """Read and check the sidecar file (or the folder holding it)."""
        path = Path(folder_or_path)
        if path.is_dir() or path.suffix != ".json":
            path = path / cls.FILE_NAME
        return cls.from_dict(_read_object(path, cls.WHAT), path)


# -- text encoder ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TextEncoderSidecar(_JsonFile):
    """``text_encoder.json``: what ``text_encoder.onnx`` + ``tokenizer.json`` are and how they
    were made. ``inputs``/``outputs`` follow from ``contract.TEXT_INPUT_NAMES``,
    ``contract.TEXT_OUTPUT_NAME`` and ``embedding_dim``; the fixed file names and pipeline
    descriptions are class constants."""

    FILE_NAME: ClassVar[str] = contract.TEXT_ENCODER_SIDECAR_FILE
    WHAT: ClassVar[str] = "text encoder"

    onnx_sha256: str
    tokenizer_sha256: str
    weights_sha256: str  # the torch weights the graph was exported from
    model: str  # the sentence encoder's name, e.g. sentence-transformers/all-MiniLM-L6-v2
    embedding_dim: int
    max_length: int  # tokens, [CLS] and [SEP] included; longer texts are truncated
    opset: int
    parity_max_abs_error: float  # torch vs onnxruntime at export
    export_seconds: float
    exported_at: str  # ISO 8601, UTC
    torch_version: str
    format_version: int = FORMAT_VERSION

    ONNX_FILE: ClassVar[str] = contract.TEXT_ENCODER_ONNX
    TOKENIZER_FILE: ClassVar[str] = contract.TOKENIZER_FILE
    POOLING: ClassVar[str] = "mean over attention_mask, then L2 normalisation"
    TEXT_NORMALIZATION: ClassVar[str] = (
        "collapse whitespace (' '.join(text.split())); empty is an error"
    )
    TOKENIZER_SETTINGS: ClassVar[str] = "truncate to max_length, no padding for one text"
    # Every key of the JSON object (missing ones are listed in this order).
    KEYS: ClassVar[tuple[str, ...]] = (
        "format_version",
        "onnx_sha256",
        "tokenizer_sha256",
        "weights_sha256",
        "model",
        "embedding_dim",
        "max_length",
        "opset",
        "parity_max_abs_error",
        "export_seconds",
        "exported_at",
        "torch_version",
        "onnx_file",
        "tokenizer_file",
        "input_names",
        "output_names",
        "inputs",
        "outputs",
        "pooling",
        "text_normalization",
        "tokenizer_settings",
    )

    @property
    def input_names(self) -> tuple[str, ...]:
        return contract.TEXT_INPUT_NAMES

    @property
    def output_name(self) -> str:
        return contract.TEXT_OUTPUT_NAME

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(n, (BATCH, SEQUENCE), "int64") for n in contract.TEXT_INPUT_NAMES)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec(contract.TEXT_OUTPUT_NAME, (BATCH, self.embedding_dim), "float32"),)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "onnx_sha256": self.onnx_sha256,
            "tokenizer_sha256": self.tokenizer_sha256,
            "weights_sha256": self.weights_sha256,
            "model": self.model,
            "embedding_dim": self.embedding_dim,
            "max_length": self.max_length,
            "opset": self.opset,
            "parity_max_abs_error": self.parity_max_abs_error,
            "export_seconds": self.export_seconds,
            "exported_at": self.exported_at,
            "torch_version": self.torch_version,
            "onnx_file": self.ONNX_FILE,
            "tokenizer_file": self.TOKENIZER_FILE,
            "input_names": list(self.input_names),
            "output_names": [self.output_name],
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "pooling": self.POOLING,
            "text_normalization": self.TEXT_NORMALIZATION,
            "tokenizer_settings": self.TOKENIZER_SETTINGS,
        }

    @classmethod
    def from_dict(
        cls, data: Any, source: Path | str = contract.TEXT_ENCODER_SIDECAR_FILE, prefix: str = ""
    ) -> TextEncoderSidecar:
        """Check every field of a parsed sidecar; ModelLoadError naming ``source`` and the field.

        ``prefix`` names where the object sits when it is nested (``"text_encoder."``).
        """
        source = Path(source)
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "sidecar"
            raise ModelLoadError(
                f"{source}: {where} is a JSON {type(data).__name__}, not an object"
            )
        f = _Fields(source, data, prefix)
        f.version()
        f.check_keys(cls.KEYS)
        f.constant("onnx_file", cls.ONNX_FILE, "this runtime loads")
        f.constant("tokenizer_file", cls.TOKENIZER_FILE, "this runtime loads")
        for key, want in (
            ("pooling", cls.POOLING),
            ("text_normalization", cls.TEXT_NORMALIZATION),
            ("tokenizer_settings", cls.TOKENIZER_SETTINGS),
        ):
            f.constant(key, want)
        for key, want in (
            ("input_names", list(contract.TEXT_INPUT_NAMES)),
            ("output_names", [contract.TEXT_OUTPUT_NAME]),
        ):
            if data[key] != want:
                f.fail(key, f"are {data[key]!r}, expected {want}")
        out = cls(
            onnx_sha256=f.sha256("onnx_sha256"),
            tokenizer_sha256=f.sha256("tokenizer_sha256"),
            weights_sha256=f.sha256("weights_sha256"),
            model=f.text("model"),
            embedding_dim=f.positive_int("embedding_dim"),
            max_length=f.positive_int("max_length"),
            opset=f.positive_int("opset"),
            parity_max_abs_error=f.number("parity_max_abs_error"),
            export_seconds=f.number("export_seconds"),
            exported_at=f.timestamp("exported_at"),
            torch_version=f.text("torch_version"),
        )
        f.tensors("inputs", out.inputs, "input_names")
        f.tensors("outputs", out.outputs, "output_names and embedding_dim")
        return out


# -- low precision --------------------------------------------------------------------------
MAX_REFERENCE_COUNT = 4096  # reference inputs a sidecar may declare (each is a batch-1 feed)


@dataclass(frozen=True)
class Int8Model:
    """``policy.int8.onnx``: the static int8 (QDQ) graph export calibrated on the training
    data's frames. ``op_types``: the operator types quantised (chosen at export by measured
    error); ``max_abs_error``: its actions vs fp32 on the reference set at export (onnxruntime);
    ``calibration_count``: the frames it was calibrated on (other than the reference set's)."""

    sha256: str
    op_types: tuple[str, ...]
    max_abs_error: float
    calibration_count: int

    FILE: ClassVar[str] = contract.INT8_ONNX_FILE
    KEYS: ClassVar[tuple[str, ...]] = (
        "file", "sha256", "op_types", "max_abs_error", "calibration_count",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.FILE,
            "sha256": self.sha256,
            "op_types": list(self.op_types),
            "max_abs_error": self.max_abs_error,
            "calibration_count": self.calibration_count,
        }


@dataclass(frozen=True)
class LowPrecision:
    """What a low-precision backend is checked against before it may run (``low_precision`` in
    ``policy.json``): ``reference.npz`` (``reference_count`` graph inputs drawn from the training
    data, with the fp32 graph's actions for them), the ``tolerance`` every backend's actions
    must keep to on it (max abs, normalised action units, at most
    ``contract.MAX_PARITY_TOLERANCE``), the calibration report and, when export found one within
    tolerance, the int8 graph."""

    tolerance: float
    reference_sha256: str
    reference_count: int
    report_sha256: str
    int8: Int8Model | None

    KEYS: ClassVar[tuple[str, ...]] = ("tolerance", "reference", "report")
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("int8",)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tolerance": self.tolerance,
            "reference": {
                "file": contract.REFERENCE_FILE,
                "sha256": self.reference_sha256,
                "count": self.reference_count,
            },
            "report": {"file": contract.CALIBRATION_REPORT_FILE, "sha256": self.report_sha256},
        }
        if self.int8 is not None:
            out["int8"] = self.int8.to_dict()
        return out

    @classmethod
    def from_fields(cls, f: _Fields) -> LowPrecision:
        """``f``: the ``low_precision`` object. File names are fixed: a sidecar is not trusted
        to point anywhere else."""
        f.check_keys(cls.KEYS, cls.OPTIONAL_KEYS)
        tolerance = f.number("tolerance", positive=True)
        if tolerance > contract.MAX_PARITY_TOLERANCE:
            f.fail("tolerance", f"is {tolerance}, at most {contract.MAX_PARITY_TOLERANCE}")
        ref = _Fields(f.source, f.obj("reference"), f.prefix + "reference.")
        ref.check_keys(("file", "sha256", "count"))
        ref.constant("file", contract.REFERENCE_FILE, "this runtime loads")
        count = ref.positive_int("count")
        if count > MAX_REFERENCE_COUNT:
            ref.fail("count", f"is {count}, more than this runtime reads ({MAX_REFERENCE_COUNT})")
        rep = _Fields(f.source, f.obj("report"), f.prefix + "report.")
        rep.check_keys(("file", "sha256"))
        rep.constant("file", contract.CALIBRATION_REPORT_FILE, "this runtime reads")
        int8 = None
        if "int8" in f.data:
            q = _Fields(f.source, f.obj("int8"), f.prefix + "int8.")
            q.check_keys(Int8Model.KEYS)
            q.constant("file", Int8Model.FILE, "this runtime loads")
            int8 = Int8Model(
                sha256=q.sha256("sha256"),
                op_types=q.names("op_types", what="operator types"),
                max_abs_error=q.number("max_abs_error"),
                calibration_count=q.positive_int("calibration_count"),
            )
        return cls(
            tolerance=tolerance,
            reference_sha256=ref.sha256("sha256"),
            reference_count=count,
            report_sha256=rep.sha256("sha256"),
            int8=int8,
        )


# -- policy ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalization:
    """Statistics baked into the graph, recorded for the runtime: raw action = (a + 1) / 2 *
    (action_max - action_min) + action_min; proprio is normalised inside the graph."""

    action_min: tuple[float, ...]  # (action_dim,)
    action_max: tuple[float, ...]  # (action_dim,)
    proprio_mean: tuple[float, ...]  # (proprio_dim,)
    proprio_std: tuple[float, ...]  # (proprio_dim,)

    KEYS: ClassVar[tuple[str, ...]] = ("action_min", "action_max", "proprio_mean", "proprio_std")

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(getattr(self, k)) for k in self.KEYS}


@dataclass(frozen=True)
class ActionSpace:
    """What a raw (denormalised) action means physically: the robot command it stands for.

    ``kind`` (``contract.ACTION_KINDS``): ``osc_pose_delta`` moves the end effector by
    ``linear_per_unit`` m and turns it by ``angular_per_unit`` rad per unit of dx..dyaw in one
    of the model's control steps (1 / control_rate_hz); ``twist`` is a velocity of
    ``linear_per_unit`` m/s and ``angular_per_unit`` rad/s per unit. ``frame``: the frame of
    both. The gripper dimension follows ``gripper`` (``contract.GRIPPER_CONVENTIONS``): the raw
    value ``gripper_open`` means open and ``gripper_closed`` closed (sign: -1 and +1; width: a
    finger opening in m).
    """

    kind: str
    names: tuple[str, ...]  # (action_dim,) contract.ACTION_LAYOUT
    frame: str
    linear_per_unit: float
    angular_per_unit: float
    gripper: str
    gripper_open: float
    gripper_closed: float

    VALUES: ClassVar[str] = (
        "raw = (a + 1) / 2 * (normalization.action_max - action_min) + action_min, a the "
        "graph's output in [-1, 1]; units apply to raw"
    )
    KEYS: ClassVar[tuple[str, ...]] = (
        "kind",
        "names",
        "units",
        "frame",
        "linear_per_unit",
        "angular_per_unit",
        "gripper",
        "values",
    )
    GRIPPER_KEYS: ClassVar[tuple[str, ...]] = ("convention", "open", "closed")

    @staticmethod
    def gripper_problem(convention: Any, g_open: Any, g_closed: Any) -> tuple[str, str] | None:
        """Why a gripper declaration is invalid, as (field, problem), or None when it is valid:
        a known convention (``contract.GRIPPER_CONVENTIONS``), finite open and closed values
        that differ, and for ``sign`` exactly GRIPPER_OPEN open and GRIPPER_CLOSE closed."""
        if convention not in contract.GRIPPER_CONVENTIONS:
            return (
                "convention",
                f"is {convention!r}, this runtime knows {list(contract.GRIPPER_CONVENTIONS)}",
            )
        for key, value in (("open", g_open), ("closed", g_closed)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return key, f"must be a number, got {value!r}"
            if not math.isfinite(value):
                return key, f"must be finite, got {value!r}"
        if convention == contract.GRIPPER_SIGN and (g_open, g_closed) != (
            contract.GRIPPER_OPEN,
            contract.GRIPPER_CLOSE,
        ):
            return (
                "open",
                f"and closed are {g_open!r} and {g_closed!r}; the sign convention is "
                f"{contract.GRIPPER_OPEN} open, {contract.GRIPPER_CLOSE} closed",
            )
        if g_open == g_closed:
            return "closed", f"equals open ({g_open!r}): open and closed must differ"
        return None

    @classmethod
    def for_kind(
        cls,
        kind: str,
        gripper: str = contract.GRIPPER_SIGN,
        gripper_open: float | None = None,
        gripper_closed: float | None = None,
    ) -> ActionSpace:
        """The standard action space of a kind of training data (``contract.ACTION_KINDS``):
        ``osc_pose_delta`` (LIBERO/robomimic demonstrations) or ``twist`` (recorded
        TwistStamped commands), with the data's gripper convention: ``sign`` (the default;
        open and closed default to GRIPPER_OPEN and GRIPPER_CLOSE) or ``width`` (both values
        required, finite and different, e.g. 0.08 open, 0.0 closed). ValueError naming the
        argument for another kind or an invalid gripper."""
        per_unit = {
            contract.ACTION_OSC_POSE_DELTA: (
                contract.OSC_POSE_LINEAR_M,
                contract.OSC_POSE_ANGULAR_RAD,
            ),
            contract.ACTION_TWIST: (1.0, 1.0),
        }
        if kind not in per_unit:
            raise ValueError(
                f"unknown action space {kind!r}; known: {', '.join(contract.ACTION_KINDS)}"
            )
        linear, angular = per_unit[kind]
        if gripper == contract.GRIPPER_SIGN:
            gripper_open = contract.GRIPPER_OPEN if gripper_open is None else gripper_open
            gripper_closed = contract.GRIPPER_CLOSE if gripper_closed is None else gripper_closed
        elif gripper in contract.GRIPPER_CONVENTIONS and (
            gripper_open is None or gripper_closed is None
        ):
            raise ValueError(
                f"gripper convention {gripper!r} needs its open and closed values "
                f"(got open {gripper_open!r}, closed {gripper_closed!r})"
            )
        problem = cls.gripper_problem(gripper, gripper_open, gripper_closed)
        if problem is not None:
            raise ValueError(f"gripper {problem[0]} {problem[1]}")
        return cls(
            kind=kind,
            names=contract.ACTION_LAYOUT,
            frame=contract.ACTION_FRAME,
            linear_per_unit=linear,
            angular_per_unit=angular,
            gripper=gripper,
            gripper_open=float(gripper_open),
            gripper_closed=float(gripper_closed),
        )

    @property
    def units(self) -> tuple[str, ...]:
        """(action_dim,) the unit of each raw dimension, e.g. "m/step" or "rad/s"."""
        per = "/step" if self.kind == contract.ACTION_OSC_POSE_DELTA else "/s"
        grip = "m" if self.gripper == contract.GRIPPER_WIDTH else "sign"
        return (*(f"m{per}",) * 3, *(f"rad{per}",) * 3, grip)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "names": list(self.names),
            "units": list(self.units),
            "frame": self.frame,
            "linear_per_unit": self.linear_per_unit,
            "angular_per_unit": self.angular_per_unit,
            "gripper": {
                "convention": self.gripper,
                "open": self.gripper_open,
                "closed": self.gripper_closed,
            },
            "values": self.VALUES,
        }

    @classmethod
    def from_fields(cls, f: _Fields, action_dim: int) -> ActionSpace:
        """Check the ``action_space`` object of ``f`` (prefix ``action_space.``)."""
        f.check_keys(cls.KEYS)
        kind = f.data["kind"]
        if kind not in contract.ACTION_KINDS:
            f.fail("kind", f"is {kind!r}, this runtime knows {list(contract.ACTION_KINDS)}")
        names = f.names("names", action_dim)
        if names != contract.ACTION_LAYOUT:
            f.fail("names", f"are {list(names)}, this runtime maps {list(contract.ACTION_LAYOUT)}")
        f.constant("values", cls.VALUES)
        g = _Fields(f.source, f.obj("gripper"), f"{f.prefix}gripper.")
        g.check_keys(cls.GRIPPER_KEYS)
        convention = g.data["convention"]
        problem = cls.gripper_problem(convention, g.data["open"], g.data["closed"])
        if problem is not None:
            g.fail(*problem)
        g_open, g_closed = g.real("open"), g.real("closed")
        out = cls(
            kind=kind,
            names=names,
            frame=f.text("frame"),
            linear_per_unit=f.number("linear_per_unit", positive=True),
            angular_per_unit=f.number("angular_per_unit", positive=True),
            gripper=convention,
            gripper_open=g_open,
            gripper_closed=g_closed,
        )
        if f.data["units"] != list(out.units):
            f.fail("units", f"are {f.data['units']!r}, expected {list(out.units)} (from kind)")
        return out


@dataclass(frozen=True)
class PolicySidecar(_JsonFile):
    """``policy.json``: the contract between an exported ``policy.onnx`` and the runtime.

    ``inputs`` (image_<camera> uint8 (batch, S, S, 3) per camera, proprio float32
    (batch, proprio_dim) when proprio_dim > 0, lang float32 (batch, lang_dim)) and ``outputs``
    (actions float32 (batch, chunk_size, action_dim)) are derived from the contract's names and
    these sizes.

    ``cameras`` and the proprio are the inputs the training data provided (a camera absent
    from every training episode is not an input; a model trained without robot state has
    ``proprio_dim`` 0, an empty ``proprio_layout`` and no proprio input); the graph computes
    the training forward with every one of its inputs present. ``control_rate_hz`` is the rate
    the training episodes were sampled at (one chunk step per control period).
    """

    FILE_NAME: ClassVar[str] = contract.SIDECAR_FILE
    WHAT: ClassVar[str] = "policy"

    onnx_sha256: str
    opset: int
    cameras: tuple[str, ...]  # model input order
    image_size: int  # S: images are (S, S, 3)
    chunk_size: int  # K: actions per prediction
    action_dim: int
    action_space: ActionSpace  # what the raw actions mean: names, units, frame, gripper
    control_rate_hz: float
    proprio_dim: int  # 0: the model takes no robot state (no proprio input)
    proprio_layout: tuple[str, ...]  # (proprio_dim,) names, contract.proprio_name_problem
    lang_dim: int
    normalization: Normalization
    text_encoder: TextEncoderSidecar | None  # None: exported without one
    parity_max_abs_error: float  # torch vs onnxruntime at export
    preset: str  # training preset name
    run: dict[str, Any] = field(hash=False)  # the training run's record (JSON object)
    exported_at: str  # ISO 8601, UTC
    torch_version: str
    # None: exported without training data, so only fp32 may run (no reference to check against)
    low_precision: LowPrecision | None = None
    format_version: int = FORMAT_VERSION

    MODEL: ClassVar[str] = "lawm-policy"
    ONNX_FILE: ClassVar[str] = contract.ONNX_FILE
    IMAGE_FORMAT: ClassVar[str] = "uint8 RGB, upright, (B, H, W, 3)"
    # Every key of the JSON object (missing ones are listed in this order).
    KEYS: ClassVar[tuple[str, ...]] = (
        "format_version",
        "onnx_sha256",
        "model",
        "onnx_file",
        "opset",
        "cameras",
        "image_size",
        "image_format",
        "chunk_size",
        "action_dim",
        "action_space",
        "control_rate_hz",
        "proprio_dim",
        "proprio_layout",
        "lang_dim",
        "normalization",
        "inputs",
        "outputs",
        "parity_max_abs_error",
        "preset",
        "run",
        "exported_at",
        "torch_version",
    )
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("text_encoder", "low_precision")

    @property
    def has_proprio(self) -> bool:
        """The graph takes robot state (a ``proprio`` input of ``proprio_layout``)."""
        return self.proprio_dim > 0

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        s = self.image_size
        images = [
            TensorSpec(contract.onnx_image_input(c), (BATCH, s, s, 3), "uint8")
            for c in self.cameras
        ]
        proprio = [TensorSpec(contract.ONNX_PROPRIO_INPUT, (BATCH, self.proprio_dim), "float32")]
        return (
            *images,
            *(proprio if self.has_proprio else ()),
            TensorSpec(contract.ONNX_LANG_INPUT, (BATCH, self.lang_dim), "float32"),
        )

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        shape = (BATCH, self.chunk_size, self.action_dim)
        return (TensorSpec(contract.ONNX_ACTION_OUTPUT, shape, "float32"),)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``policy.json`` (lists, not tuples)."""
        out = {
            "format_version": self.format_version,
            "onnx_sha256": self.onnx_sha256,
            "model": self.MODEL,
            "onnx_file": self.ONNX_FILE,
            "opset": self.opset,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            "image_format": self.IMAGE_FORMAT,
            "chunk_size": self.chunk_size,
            "action_dim": self.action_dim,
            "action_space": self.action_space.to_dict(),
            "control_rate_hz": self.control_rate_hz,
            "proprio_dim": self.proprio_dim,
            "proprio_layout": list(self.proprio_layout),
            "lang_dim": self.lang_dim,
            "normalization": self.normalization.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parity_max_abs_error": self.parity_max_abs_error,
            "preset": self.preset,
            "run": self.run,
            "exported_at": self.exported_at,
            "torch_version": self.torch_version,
        }
        if self.text_encoder is not None:
            out["text_encoder"] = self.text_encoder.to_dict()
        if self.low_precision is not None:
            out["low_precision"] = self.low_precision.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any, source: Path | str = contract.SIDECAR_FILE) -> PolicySidecar:
        """Check every field of a parsed ``policy.json``; ModelLoadError naming ``source`` and
        the field."""
        source = Path(source)
        if not isinstance(data, dict):
            raise ModelLoadError(
                f"{source}: sidecar is a JSON {type(data).__name__}, not an object"
            )
        f = _Fields(source, data)
        f.version()
        f.check_keys(cls.KEYS, cls.OPTIONAL_KEYS)
        # Fixed file name: the sidecar is not trusted to point outside the folder.
        f.constant("onnx_file", cls.ONNX_FILE, "this runtime loads")
        f.constant("model", cls.MODEL, "this runtime loads")
        f.constant("image_format", cls.IMAGE_FORMAT)
        action_dim = f.positive_int("action_dim")
        proprio_dim = f.count("proprio_dim")
        lang_dim = f.positive_int("lang_dim")
        action_space = ActionSpace.from_fields(
            _Fields(source, f.obj("action_space"), "action_space."), action_dim
        )

        norm = _Fields(source, f.obj("normalization"), "normalization.")
        norm.check_keys(Normalization.KEYS)
        normalization = Normalization(
            action_min=norm.vector("action_min", action_dim),
            action_max=norm.vector("action_max", action_dim),
            proprio_mean=norm.vector("proprio_mean", proprio_dim),
            proprio_std=norm.vector("proprio_std", proprio_dim),
        )
        if not all(hi >= lo for lo, hi in zip(normalization.action_min, normalization.action_max)):
            norm.fail(
                "action_max",
                f"< action_min somewhere ({list(normalization.action_max)} vs "
                f"{list(normalization.action_min)})",
            )

        text_encoder = None
        if "text_encoder" in data:
            text_encoder = TextEncoderSidecar.from_dict(
                data["text_encoder"], source, prefix="text_encoder."
            )
            if text_encoder.embedding_dim != lang_dim:
                f.fail(
                    "text_encoder.embedding_dim",
                    f"is {text_encoder.embedding_dim}, but the policy takes lang_dim {lang_dim}",
                )

        low_precision = None
        if "low_precision" in data:
            low_precision = LowPrecision.from_fields(
                _Fields(source, f.obj("low_precision"), "low_precision.")
            )

        out = cls(
            format_version=FORMAT_VERSION,
            low_precision=low_precision,
            onnx_sha256=f.sha256("onnx_sha256"),
            opset=f.positive_int("opset"),
            cameras=_cameras(f),
            image_size=f.positive_int("image_size"),
            chunk_size=f.positive_int("chunk_size"),
            action_dim=action_dim,
            action_space=action_space,
            control_rate_hz=_control_rate(f),
            proprio_dim=proprio_dim,
            proprio_layout=_proprio_layout(f, proprio_dim),
            lang_dim=lang_dim,
            normalization=normalization,
            text_encoder=text_encoder,
            parity_max_abs_error=f.number("parity_max_abs_error"),
            preset=f.text("preset"),
            run=f.obj("run"),
            exported_at=f.timestamp("exported_at"),
            torch_version=f.text("torch_version"),
        )
        sizes = f"cameras {list(out.cameras)}, image_size, proprio_dim and lang_dim"
        f.tensors("inputs", out.inputs, sizes)
        f.tensors("outputs", out.outputs, "chunk_size and action_dim")
        return out


def _cameras(f: _Fields) -> tuple[str, ...]:
    cameras = f.names("cameras")
    if len(cameras) > MAX_CAMERAS:
        f.fail("cameras", f"lists {len(cameras)}, more than this runtime accepts ({MAX_CAMERAS})")
    return cameras


def _control_rate(f: _Fields) -> float:
    rate = f.number("control_rate_hz", positive=True)
    if rate > MAX_CONTROL_RATE_HZ:
        f.fail("control_rate_hz", f"is {rate}, more than this runtime accepts")
    return rate
