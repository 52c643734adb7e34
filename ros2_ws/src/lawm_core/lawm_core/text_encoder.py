"""Instruction text -> 384-d sentence embedding on the robot, with onnxruntime (no torch).

Reads the folder written by ``lawm.export.export_text_encoder``::

    text_encoder.json   sidecar (``lawm_core.sidecar.TextEncoderSidecar``): sha256 of the two
                        files below, embedding_dim, max_length
    text_encoder.onnx   input_ids, attention_mask int64 (batch, sequence) -> embedding (batch, D)
    tokenizer.json      WordPiece tokenizer (``tokenizers``)

Both files are hashed at load and must match the sidecar, so the robot never runs an encoder
other than the one the policy was trained with. Text goes through the same steps as in
training: collapse whitespace, tokenize with truncation to ``max_length``, encode.
"""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path

import numpy as np

from lawm_core.errors import ModelLoadError
from lawm_core.files import verify_file
from lawm_core.model_files import check_onnx_graph, folder_file
from lawm_core.sidecar import TextEncoderSidecar

MAX_INSTRUCTION_CHARS = 1000  # LIBERO's instructions are under 100; the encoder reads 128
# tokens at most, so anything longer is not an instruction anyone meant to give.


def normalize_text(text: str) -> str:
    """Collapse whitespace as training does. ValueError for a blank instruction, one longer
    than MAX_INSTRUCTION_CHARS, or one with control or invisible formatting characters (which
    no instruction needs and which can make text read differently from what it is)."""
    if not isinstance(text, str):
        raise TypeError(f"instruction must be a str, got {type(text).__name__}")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("instruction is empty")
    if len(cleaned) > MAX_INSTRUCTION_CHARS:
        raise ValueError(
            f"instruction has {len(cleaned)} characters, more than {MAX_INSTRUCTION_CHARS}"
        )
    hidden = sorted(
        {f"U+{ord(c):04X}" for c in cleaned if unicodedata.category(c) in ("Cc", "Cf")}
    )
    if hidden:
        raise ValueError(f"instruction has control or formatting characters {hidden[:5]}")
    return cleaned


class TextEncoderRuntime:
    """``embed(text) -> (D,) float32`` unit vector, D = sidecar ``embedding_dim`` (384).

    Args:
        model_dir: folder holding text_encoder.json, text_encoder.onnx and tokenizer.json.
        providers: onnxruntime execution providers, default ["CPUExecutionProvider"] (the
            encoder runs once per new instruction, so the CPU is plenty).
        cache_size: how many distinct instructions to remember (least recently used dropped).

    Raises ModelLoadError (naming the file) for a missing/tampered/unreadable file, a sidecar
    ``TextEncoderSidecar.read`` refuses, or a model whose inputs/outputs differ from the sidecar.
    ``spec`` is the checked sidecar. ``embed`` is safe to call from several
    threads.
    """

    def __init__(
        self, model_dir: Path, providers: list[str] | None = None, cache_size: int = 64
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.spec = spec = TextEncoderSidecar.read(
            folder_file(self.model_dir, TextEncoderSidecar.FILE_NAME)
        )
        # Fixed file names: the sidecar is not trusted to point outside the folder.
        onnx_path = folder_file(self.model_dir, spec.ONNX_FILE)
        tokenizer_path = folder_file(self.model_dir, spec.TOKENIZER_FILE)
        verify_file(onnx_path, spec.onnx_sha256)
        verify_file(tokenizer_path, spec.tokenizer_sha256)
        check_onnx_graph(onnx_path, spec.inputs, spec.outputs, self.model_dir / spec.FILE_NAME)

        self.dim = spec.embedding_dim
        self.max_length = spec.max_length
        self.input_names = list(spec.input_names)
        self.output_name = spec.output_name

        try:
            tok = Tokenizer.from_file(str(tokenizer_path))
        except Exception as err:  # tokenizers raises a bare Exception for bad JSON
            raise ModelLoadError(f"{tokenizer_path}: cannot load tokenizer ({err})") from err
        # One text per call needs no padding; truncation must match training.
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        self._tokenizer = tok

        try:
            self._session = ort.InferenceSession(
                str(onnx_path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's errors have no common public base class
            raise ModelLoadError(f"{onnx_path}: onnxruntime cannot load it ({err})") from err
        got_in = [i.name for i in self._session.get_inputs()]
        got_out = [o.name for o in self._session.get_outputs()]
        if sorted(got_in) != sorted(self.input_names) or self.output_name not in got_out:
            raise ModelLoadError(
                f"{onnx_path}: graph inputs {got_in} / outputs {got_out} differ from the "
                f"sidecar ({self.input_names} -> {self.output_name})"
            )
        out_shape = self._session.get_outputs()[got_out.index(self.output_name)].shape
        if len(out_shape) != 2 or out_shape[1] != self.dim:
            raise ModelLoadError(
                f"{onnx_path}: output shape {out_shape}, sidecar says (batch, {self.dim})"
            )

        self._cache_size = max(0, int(cache_size))
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _encode(self, text: str) -> np.ndarray:
        enc = self._tokenizer.encode(text)
        ids = np.asarray([enc.ids], dtype=np.int64)  # (1, L)
        feed = dict(zip(self.input_names, (ids, np.ones_like(ids))))  # input_ids, attention_mask
        out = self._session.run([self.output_name], feed)[0]
        return np.ascontiguousarray(out[0], dtype=np.float32)  # (D,)

    def embed(self, text: str) -> np.ndarray:
        """text -> (D,) float32 L2-normalised embedding (a fresh array each call).

        ValueError("instruction is empty") for blank text.
        """
        key = normalize_text(text)
        with self._lock:
            vec = self._cache.get(key)
            if vec is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return vec.copy()
        vec = self._encode(key)  # outside the lock: a slow encode must not block cache hits
        with self._lock:
            self.misses += 1
            if self._cache_size:
                self._cache[key] = vec
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vec.copy()
