"""Export a trained policy, and the instruction encoder, to ONNX with their sidecars (the
contracts the robot runtime checks). Every export is checked against torch on onnxruntime before
it lands in the folder; ``ExportError`` when they disagree.

``policy.onnx`` inputs (names from lawm_core.contract):
    image_<camera>: uint8 (B, H, W, 3) RGB upright, one per camera in ``cameras`` order
    proprio: float32 (B, 5) raw units (normalised inside the graph)
    lang: float32 (B, 384) sentence embedding (text_encoder.onnx gives it)
output:
    actions: float32 (B, K, 7), normalised action space, clamped to [-1, 1] inside the graph

``policy.json`` (``lawm_core.sidecar.PolicySidecar``) records names, shapes, cameras, image
size, statistics, chunk size, control rate, the action space (what the raw actions physically
are: from the training run's data, or given), opset, the sha256 of policy.onnx and the run it
came from.

``text_encoder.onnx`` (:func:`export_text_encoder`, from ``lawm.language.MiniLM``):
    input_ids, attention_mask: int64 (B, L) -> embedding: float32 (B, 384), L2-normalised
with ``tokenizer.json`` and ``text_encoder.json`` (``lawm_core.sidecar.TextEncoderSidecar``).
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from lawm.checkpoint import load_policy
from lawm.language import MAX_LENGTH, MODEL_NAME, MiniLM, MiniLMTokenizer, find_minilm_dir
from lawm.models.policy import Policy
from lawm_core import contract
from lawm_core.contract import TEXT_INPUT_NAMES, TEXT_OUTPUT_NAME
from lawm_core.files import atomic_path, sha256_file
from lawm_core.sidecar import (
    BATCH,
    SEQUENCE,
    ActionSpace,
    Normalization,
    PolicySidecar,
    TextEncoderSidecar,
)

PARITY_TOLERANCE = 1e-4
# Text-encoder parity inputs: short and long, cased, and one longer than MAX_LENGTH tokens.
_PARITY_SENTENCES = (
    "put the bowl on the plate",
    "Open the top drawer of the cabinet, then put the black bowl inside it.",
    "pick up the alphabet soup and place it in the basket",
    "turn on the stove",
    " ".join(["stack the red block on the blue block"] * 30),  # truncated to MAX_LENGTH
)


class ExportError(RuntimeError):
    """An export that cannot be made: a graph that disagrees with torch beyond
    PARITY_TOLERANCE (it is not written), or a policy whose action space is unknown."""


def resolve_action_space(policy_dir: Path, info: dict, given: str | None) -> ActionSpace:
    """The action space to declare: ``given`` (one of ``contract.ACTION_KINDS``), else the one
    the training run recorded from its data (``info["action_space"]``). ExportError when
    neither says, or for an unknown kind."""
    kind = given or info.get("action_space")
    if kind is None:
        raise ExportError(
            f"{policy_dir}: the training data did not say what its actions are (units, frame), "
            f"so the robot could not turn them into motion; pass --action-space "
            f"{'|'.join(contract.ACTION_KINDS)} (osc_pose_delta: LIBERO/robosuite OSC_POSE "
            "deltas; twist: recorded velocity commands)"
        )
    try:
        return ActionSpace.for_kind(kind)
    except ValueError as err:
        where = "--action-space" if given else f"{policy_dir}/config.json info.action_space"
        raise ExportError(f"{where}: {err}") from err


class OnnxPolicy(nn.Module):
    """The graph we export: HWC uint8 images in, clamped normalised action chunk out."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy
        self.cameras = policy.cfg.cameras

    def forward(self, *args: Tensor) -> Tensor:
        n = len(self.cameras)
        images = {c: args[i].permute(0, 3, 1, 2) for i, c in enumerate(self.cameras)}
        proprio, lang = args[n], args[n + 1]
        return self.policy(images, proprio, lang).clamp(-1.0, 1.0)


def example_inputs(policy: Policy, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    cfg = policy.cfg
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    out = {
        contract.onnx_image_input(c): rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
        for c in cfg.cameras
    }
    out[contract.ONNX_PROPRIO_INPUT] = rng.normal(size=(batch, cfg.proprio_dim)).astype(np.float32)
    lang = rng.normal(size=(batch, cfg.lang_dim)).astype(np.float32)
    out[contract.ONNX_LANG_INPUT] = lang / np.linalg.norm(lang, axis=1, keepdims=True)
    return out


def input_names(policy: Policy) -> list[str]:
    return contract.onnx_input_names(policy.cfg.cameras)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_parity(policy: Policy, onnx_path: Path, seed: int = 0, batch: int = 2) -> float:
    """Max abs difference between torch and onnxruntime on seeded inputs."""
    wrapper = OnnxPolicy(policy).eval()
    inputs = example_inputs(policy, batch=batch, seed=seed)
    names = input_names(policy)
    with torch.no_grad():
        ref = wrapper(*[torch.from_numpy(inputs[n]) for n in names]).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([contract.ONNX_ACTION_OUTPUT], inputs)[0]
    return float(np.abs(ref - got).max())


def export_policy(
    policy_dir: Path,
    out_dir: Path,
    *,
    opset: int = 17,
    text_encoder: bool = True,
    control_rate_hz: float | None = None,
    action_space: str | None = None,
) -> PolicySidecar:
    """Export ``policy_dir`` (model.safetensors + config.json) into ``out_dir``.

    Writes policy.onnx, then (``text_encoder``) the text encoder's files, then policy.json
    last, each atomically. Returns the sidecar written. ``action_space``
    (``contract.ACTION_KINDS``) sets or overrides what the training run recorded.
    ExportError, before anything is written, when the action space is unknown, and when
    onnxruntime and torch disagree by more than PARITY_TOLERANCE (the graph is then not
    written).
    """
    policy, cfg, info = load_policy(policy_dir)
    space = resolve_action_space(Path(policy_dir), info, action_space)
    policy.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = OnnxPolicy(policy).eval()
    names = input_names(policy)
    example = example_inputs(policy, batch=1)
    dynamic = {n: {0: BATCH} for n in names}
    dynamic[contract.ONNX_ACTION_OUTPUT] = {0: BATCH}
    onnx_path = out_dir / contract.ONNX_FILE
    with atomic_path(onnx_path) as tmp, torch.no_grad():
        torch.onnx.export(
            wrapper,
            tuple(torch.from_numpy(example[n]) for n in names),
            str(tmp),
            input_names=names,
            output_names=[contract.ONNX_ACTION_OUTPUT],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
        err = check_parity(policy, tmp)
        if not err <= PARITY_TOLERANCE:
            raise ExportError(f"torch vs onnxruntime max abs error {err:.2e} > {PARITY_TOLERANCE}")

    text_sidecar = export_text_encoder(out_dir) if text_encoder else None
    pc = cfg.policy
    stats = {k: tuple(getattr(policy, k).tolist()) for k in Normalization.KEYS}
    sidecar = PolicySidecar(
        onnx_sha256=sha256_file(onnx_path),
        opset=opset,
        cameras=tuple(pc.cameras),
        image_size=pc.image_size,
        chunk_size=pc.chunk_size,
        action_dim=pc.action_dim,
        action_space=space,
        control_rate_hz=float(control_rate_hz or pc.control_rate_hz),
        proprio_dim=pc.proprio_dim,
        proprio_layout=contract.PROPRIO_LAYOUT,
        lang_dim=pc.lang_dim,
        normalization=Normalization(**stats),
        text_encoder=text_sidecar,
        parity_max_abs_error=err,
        preset=cfg.preset,
        run=info,
        exported_at=_utc_now(),
        torch_version=torch.__version__,
    )
    sidecar.write(out_dir)
    return sidecar


# -- text encoder ---------------------------------------------------------------------------
def onnx_parity(
    model: MiniLM, tokenizer: MiniLMTokenizer, onnx_path: Path, texts: Sequence[str]
) -> float:
    """Max abs difference between torch and onnxruntime embeddings of ``texts``.

    Checked as one padded batch and one text at a time, so both dynamic axes are exercised.
    """
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    err = 0.0
    groups = [list(texts)] + [[t] for t in texts]
    for group in groups:
        feed = tokenizer(group)
        with torch.no_grad():
            ref = model(*(torch.from_numpy(feed[n]) for n in TEXT_INPUT_NAMES)).numpy()
        got = sess.run([TEXT_OUTPUT_NAME], feed)[0]
        if got.shape != ref.shape:
            return math.inf
        err = max(err, float(np.abs(ref - got).max()))
    return err


def export_text_encoder(out_dir: Path, opset: int = 17) -> TextEncoderSidecar:
    """Write text_encoder.onnx, tokenizer.json and text_encoder.json into ``out_dir``.

    ``text_encoder.onnx``: input_ids, attention_mask int64 (batch, sequence) -> embedding
    float32 (batch, 384). The sidecar records hashes, dimensions, max_length and opset; the
    robot runtime refuses files whose sha256 does not match it. Every file is written to a
    temporary name and renamed into place, the sidecar last. ExportError if onnxruntime and
    torch disagree by more than PARITY_TOLERANCE. Returns the sidecar written.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = find_minilm_dir()
    model = MiniLM(model_dir)
    tokenizer = MiniLMTokenizer(model_dir, MAX_LENGTH)
    # Two texts of different lengths: the traced example contains real padding.
    example = tokenizer(list(_PARITY_SENTENCES[:2]))
    dynamic = {n: {0: BATCH, 1: SEQUENCE} for n in TEXT_INPUT_NAMES}
    dynamic[TEXT_OUTPUT_NAME] = {0: BATCH}

    onnx_path = out_dir / TextEncoderSidecar.ONNX_FILE
    with atomic_path(onnx_path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (which needs
            # onnxscript, not installed); it still works and is what export_policy uses too.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                tuple(torch.from_numpy(example[n]) for n in TEXT_INPUT_NAMES),
                str(tmp),
                input_names=list(TEXT_INPUT_NAMES),
                output_names=[TEXT_OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        # Checked before the rename: a graph that disagrees with torch never lands in out_dir.
        err = onnx_parity(model, tokenizer, tmp, _PARITY_SENTENCES)
        if not err <= PARITY_TOLERANCE:
            raise ExportError(
                f"text encoder: torch vs onnxruntime max abs error {err:.2e} > {PARITY_TOLERANCE}"
            )
    tokenizer_path = out_dir / TextEncoderSidecar.TOKENIZER_FILE
    with atomic_path(tokenizer_path) as tmp:
        shutil.copyfile(tokenizer.path, tmp)

    sidecar = TextEncoderSidecar(
        onnx_sha256=sha256_file(onnx_path),
        tokenizer_sha256=sha256_file(tokenizer_path),
        weights_sha256=sha256_file(model_dir / "model.safetensors"),
        model=MODEL_NAME,
        embedding_dim=model.dim,
        max_length=MAX_LENGTH,
        opset=opset,
        parity_max_abs_error=err,
        export_seconds=round(time.perf_counter() - t0, 3),
        exported_at=_utc_now(),
        torch_version=torch.__version__,
    )
    # Written last: while a re-export replaces the files, the old sidecar no longer matches
    # them and the runtime refuses the folder instead of loading a mix of old and new.
    sidecar.write(out_dir)
    return sidecar
